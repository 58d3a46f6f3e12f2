"""A private RabbitMQ node from an installed rabbitmq-server: own node name, ports, data and logs.

Everything lives in a temporary folder that :meth:`LocalBroker.stop` deletes;
the node runs in its own process group, so a Ctrl-C in a notebook does not hit
it and ``stop()`` (or the watchdog) ends all of it.

Example::

    with LocalBroker().start() as broker:
        print(broker.amqp_url)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

from . import reaper
from .base import (HOW_TO_GET_A_BROKER, STATS_INTERVAL_MS, Broker, BrokerError, erl_args, BrokerUnavailable, PortInUse,
                   free_port, run_id)
from .epmd import epmd_names, stop_idle_epmd
from .tls import CERT_LOGIN_PLUGIN, TlsFiles

PLUGINS = "[rabbitmq_management,rabbitmq_prometheus]."
PORT_TAKEN = ("eaddrinuse", "dist_port_already_used")  # a listener's port, or the Erlang distribution port


def find_rabbitmq_server() -> str | None:
    """Path of a rabbitmq-server start script, or None.

    As root on Debian the ``/usr/sbin`` wrapper would switch to the ``rabbitmq``
    user, who cannot write our temporary folder, so the real script is used.
    ``VOICELAB_RABBITMQ_SERVER`` names another one; ``none`` hides any installed one (to see what a
    machine without it gets).
    """
    if os.environ.get("VOICELAB_RABBITMQ_SERVER"):
        named = os.environ["VOICELAB_RABBITMQ_SERVER"]
        return None if named == "none" else named
    debian = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
    if hasattr(os, "geteuid") and os.geteuid() == 0 and debian.exists():
        return str(debian)
    found = shutil.which("rabbitmq-server")
    if found is None:
        for extra in ("/usr/lib/rabbitmq/bin", "/usr/local/sbin", "/opt/homebrew/sbin"):
            candidate = Path(extra, "rabbitmq-server")
            if candidate.exists():
                return str(candidate)
    return found


def server_version(server: str) -> tuple[int, int] | None:
    """``(major, minor)`` of the RabbitMQ that ``server`` starts, read from its install folder, before it runs.

    Debian, Homebrew and generic-unix installs keep ``lib/rabbitmq_server-X.Y.Z`` beside ``bin`` (or ``sbin``).
    None when the layout is another one.
    """
    script = Path(server)
    candidates = [*script.resolve().parents, *sorted(script.parent.parent.glob("lib/rabbitmq_server-*")),
                  *sorted(script.resolve().parent.parent.glob("lib/rabbitmq_server-*"))]
    for folder in candidates:
        name = folder.name
        parts = name.removeprefix("rabbitmq_server-").split(".") if name.startswith("rabbitmq_server-") else []
        if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
            return int(parts[0]), int(parts[1])
    return None


def _advanced_config(version: tuple[int, int] | None) -> str:
    """Erlang terms for the node's advanced.config: upstream's defaults where a distribution patches them.

    Debian's 4.3 packages permit transient non-exclusive queues again (do-not-deprecate-transient_nonexcl_queues
    .patch), which upstream 4.3.0 denies by default: from 4.3 on, the node is told upstream's default, so that
    a learner's local node does what the official image does. Older versions keep their own defaults.
    """
    if version is not None and version >= (4, 3):
        return "[{rabbit, [{permit_deprecated_features, #{transient_nonexcl_queues => false}}]}].\n"
    return "[].\n"


class LocalBroker(Broker):
    """A private RabbitMQ node started from ``server`` (default: :func:`find_rabbitmq_server`).

    Example::

        with LocalBroker().start() as broker:
            print(broker.amqp_url)
    """

    backend = "local"

    def __init__(self, server: str | None = None, settings: Mapping[str, int] | None = None,
                 tls: TlsFiles | None = None) -> None:
        super().__init__(settings, tls)
        server = server or find_rabbitmq_server()
        if server is None:
            raise BrokerUnavailable("rabbitmq-server is not installed.\n" + HOW_TO_GET_A_BROKER)
        self.server = server
        self.dir: Path | None = None
        self.dist_port = 0
        self.node = f"voicelab-{uuid.uuid4().hex[:8]}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_epmd = False

    def _fresh(self) -> bool:
        return self.dir is None

    def _running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _choose_ports(self) -> None:
        self.port, self.management_port = free_port(), free_port()
        self.prometheus_port, self.dist_port = free_port(), free_port()
        if self.tls is not None:
            self.tls_port = free_port()

    def _dir_prefix(self) -> str:
        """The temporary folder's name before its random part: the owner's pid and the test run's id, which
        leak checks look for in command lines (``-home /tmp/voicelab-node-PID-rRUN-...``)."""
        tag = f"r{run_id()}-" if run_id() else ""
        return f"voicelab-node-{os.getpid()}-{tag}"

    def _write_config(self) -> Path:
        d = Path(tempfile.mkdtemp(prefix=self._dir_prefix()))
        plugins = PLUGINS
        if self.tls is not None and self.tls.cert_login:
            plugins = PLUGINS.replace("]", f",{CERT_LOGIN_PLUGIN}]")
        (d / "enabled_plugins").write_text(plugins + "\n")
        tls_conf = ""
        if self.tls is not None:  # the node's own copy of the files, in its folder (deleted by stop())
            self._tls_dir = self.tls.copy_to(d / "tls")
            tls_conf = self.tls.conf(f"127.0.0.1:{self.tls_port}", str(self._tls_dir))
        (d / "rabbitmq.conf").write_text(tls_conf +
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
            f"prometheus.tcp.ip = 127.0.0.1\nprometheus.tcp.port = {self.prometheus_port}\n"
            f"collect_statistics_interval = {STATS_INTERVAL_MS}\n"
        )
        (d / "advanced.config").write_text(_advanced_config(server_version(self.server)))
        (d / "rabbitmq-env.conf").write_text("")
        return d

    def _env(self, d: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(d),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_PID_FILE=str(d / "rabbitmq.pid"),
        )
        # Loopback only, like every other port of this node: the Erlang distribution port (used by rabbitmqctl,
        # guarded by the cookie) would otherwise listen on all interfaces, and so would an epmd this node starts.
        env["RABBITMQ_SERVER_START_ARGS"] = "-kernel inet_dist_use_interface {127,0,0,1}"
        env["ERL_EPMD_ADDRESS"] = "127.0.0.1"
        if self.settings:
            env["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"] = erl_args(self.settings)
        return env

    def _launch(self) -> None:
        if self.dir is None:
            self.dir = self._write_config()
        if not self._started_epmd and epmd_names() is None:
            self._started_epmd = True  # no epmd ran before us: stop it again in stop()
        with open(self.dir / "console.log", "ab") as log:
            self._proc = subprocess.Popen(
                [self.server], env=self._env(self.dir), cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C in a notebook does not hit it
            )

    def _watch(self) -> dict[str, Any] | None:
        assert self._proc is not None and self.dir is not None
        return {"pgid": self._proc.pid, "path": str(self.dir), "epmd": self._started_epmd}

    def _check_alive(self) -> None:
        tail = self._log_tail()
        logs = tail + self._node_log()
        if any(sign in logs for sign in PORT_TAKEN):  # the node may take 15 s more to crash: give up on it now
            raise PortInUse(self._taken_port(logs), f"; rabbitmq-server said:{tail}")
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"rabbitmq-server ({self.server}) exited during start-up{tail}")

    def _rabbitmqctl(self, *args: str) -> tuple[int, str]:
        assert self.dir is not None
        ctl = Path(self.server).with_name("rabbitmqctl")
        done = subprocess.run([str(ctl) if ctl.exists() else "rabbitmqctl", "-n", self.node, *args],
                              env=self._env(self.dir), cwd=self.dir, capture_output=True, text=True, timeout=60,
                              check=False)
        return done.returncode, done.stdout + done.stderr

    def _taken_port(self, log: str) -> int:
        """Which of the node's ports its log says it could not bind (the AMQP port when it does not say)."""
        for port in (self.port, self.management_port, self.prometheus_port, self.dist_port, self.tls_port):
            if port and re.search(rf"\b{port}\b", log):
                return port
        return self.port

    def _node_log(self) -> str:
        """The node's own log files (where RabbitMQ writes why a listener failed)."""
        if self.dir is None:
            return ""
        return "".join(p.read_text(errors="replace") for p in sorted((self.dir / "log").glob("*.log")))

    def _log_tail(self) -> str:
        if self.dir is None:
            return ""
        with contextlib.suppress(OSError):
            lines = (self.dir / "console.log").read_text(errors="replace").splitlines()[-30:]
            return "\n--- rabbitmq-server output (last lines) ---\n" + "\n".join(lines)
        return ""

    def _signal(self, sig: int, wait: float) -> None:
        proc = self._proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # beam may outlive the start script: wait for the whole group to go
        deadline = time.monotonic() + wait
        while reaper.alive(proc.pid, group=True) and time.monotonic() < deadline:
            time.sleep(0.1)
        if reaper.alive(proc.pid, group=True):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        self._proc = None

    def kill(self) -> None:
        self._signal(signal.SIGKILL, 10)

    def restart(self) -> None:
        self._signal(signal.SIGTERM, 60)
        self.start()

    def stop(self) -> None:
        self._unregister()
        self._signal(signal.SIGTERM, 30)
        if self._started_epmd:
            stop_idle_epmd()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
            self._tls_dir = None
