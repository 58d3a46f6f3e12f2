"""One real RabbitMQ broker, whatever the machine.

voicelab never mocks a broker. :func:`start_broker` picks, in this order:

1. ``VOICELAB_AMQP_URL`` is set: use that broker (voicelab cannot restart it);
2. a Docker engine answers: a testcontainers container of
   ``VOICELAB_RABBITMQ_IMAGE`` (default ``rabbitmq:4.3-management``);
3. ``rabbitmq-server`` is installed: a private node in a temporary folder;
4. none: :class:`BrokerUnavailable`, naming the three ways to get one.

Every broker voicelab starts binds to 127.0.0.1 only, keeps its ports across
``restart()`` and ``kill()`` + ``start()``, and is stopped at interpreter exit.

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        with broker.connect() as connection:
            print(broker.backend, broker.version)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import uuid
import weakref
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator, Literal

import pika
import pika.exceptions
import requests

from . import reaper

DEFAULT_IMAGE = "rabbitmq:4.3-management"
STATS_INTERVAL_MS = 1000  # event emission interval (default 5000); queue counters still refresh every 5 s
Backend = Literal["auto", "url", "container", "local"]

HOW_TO_GET_A_BROKER = """\
voicelab needs a real RabbitMQ and found none. Any one of these works:
  1. An existing broker: export VOICELAB_AMQP_URL=amqp://guest:guest@localhost:5672/%2F
  2. Docker: start a Docker engine (Docker Desktop, or `sudo apt-get install docker.io`
     then `sudo dockerd`); voicelab runs the image in VOICELAB_RABBITMQ_IMAGE
     (default rabbitmq:4.3-management) with testcontainers.
  3. A local rabbitmq-server: `sudo apt-get install rabbitmq-server` (Debian/Ubuntu),
     `brew install rabbitmq` (macOS) or `conda install -c conda-forge rabbitmq-server`;
     voicelab starts a private node in a temporary folder.
Run `python -m voicelab doctor` to see what this machine has."""


class BrokerError(RuntimeError):
    """Base class of voicelab's broker errors."""


class BrokerUnavailable(BrokerError):
    """No broker could be obtained; the message says how to get one."""


class BrokerControlError(BrokerError):
    """The operation needs a broker that voicelab started (not a ``VOICELAB_AMQP_URL`` one)."""


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    >>> mask_url("amqp://guest:secret@localhost:5672/%2F")
    'amqp://guest:***@localhost:5672/%2F'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_LIVE: "weakref.WeakSet[Broker]" = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for broker in list(_LIVE):
        with contextlib.suppress(Exception):
            broker.stop()


class Broker(ABC):
    """A running RabbitMQ: where it is, how to connect, and (if voicelab owns it) how to crash it.

    Attributes:
        backend: ``"url"``, ``"container"`` or ``"local"``.
        can_control: True when ``restart()``, ``kill()`` and ``start()`` are allowed.
    """

    backend: str = ""
    can_control: bool = True

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.management_port: int | None = None
        self.username = "guest"
        self.password = "guest"
        self.vhost = "/"
        self._version: str | None = None

    # -- where it is ---------------------------------------------------
    @property
    def amqp_url(self) -> str:
        """The AMQP URL, credentials included (``amqp://guest:guest@127.0.0.1:PORT/%2F``)."""
        vhost = urllib.parse.quote(self.vhost, safe="")
        user = urllib.parse.quote(self.username, safe="")
        pw = urllib.parse.quote(self.password, safe="")
        return f"amqp://{user}:{pw}@{self.host}:{self.port}/{vhost}"

    @property
    def management_url(self) -> str | None:
        """Base URL of the management HTTP API and UI, or None when it is not known."""
        if self.management_port is None:
            return None
        return f"http://{self.host}:{self.management_port}"

    def parameters(self, **overrides: Any) -> pika.ConnectionParameters:
        """pika connection parameters; keyword arguments override (e.g. ``heartbeat=5``)."""
        kwargs: dict[str, Any] = dict(
            host=self.host,
            port=self.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.username, self.password),
            connection_attempts=3,
            retry_delay=0.5,
            client_properties={"connection_name": "voicelab"},
        )
        kwargs.update(overrides)
        return pika.ConnectionParameters(**kwargs)

    def connect(self, **overrides: Any) -> pika.BlockingConnection:
        """Open a new ``pika.BlockingConnection``; use it in a ``with`` block so it closes."""
        return pika.BlockingConnection(self.parameters(**overrides))

    @property
    def version(self) -> str:
        """The RabbitMQ server version, as the broker reports it (e.g. ``"4.0.5"``)."""
        if self._version is None:
            connection = self.connect(connection_attempts=1)
            try:
                props = connection._impl.server_properties  # pika has no public accessor
                raw = props.get("version", b"unknown")
                self._version = raw.decode() if isinstance(raw, bytes) else str(raw)
            finally:
                connection.close()
        return self._version

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {mask_url(self.amqp_url)} mgmt={self.management_url}>"

    # -- life cycle -------------------------------------------------------
    @abstractmethod
    def start(self) -> "Broker":
        """Start the broker (again, after ``kill()`` or ``stop()``: data on disk is kept)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the broker and delete everything it started. Safe to call twice."""

    @abstractmethod
    def kill(self) -> None:
        """Crash the broker (SIGKILL): no clean shutdown, data on disk kept for ``start()``."""

    @abstractmethod
    def restart(self) -> None:
        """Graceful restart: durable queues and persistent messages survive, transient ones do not."""

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until the broker accepts an AMQP connection (and its management API answers)."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                connection = self.connect(connection_attempts=1, socket_timeout=2, blocked_connection_timeout=5)
                connection.close()
                if self.management_url:
                    r = requests.get(f"{self.management_url}/api/overview", auth=(self.username, self.password), timeout=2)
                    r.raise_for_status()
                return
            except (pika.exceptions.AMQPError, OSError, requests.RequestException) as e:
                last = e
                time.sleep(0.25)
        raise BrokerError(f"{self!r} was not ready after {timeout:.0f} s (last error: {last!r}){self._log_tail()}")

    def _check_alive(self) -> None:
        """Raise with the broker's log when it died during start-up."""

    def _log_tail(self) -> str:
        return ""


class UrlBroker(Broker):
    """A broker somebody else runs, given by its URL (``VOICELAB_AMQP_URL``).

    >>> b = UrlBroker("amqp://guest:guest@localhost:5672/%2F")
    >>> b.port, b.can_control
    (5672, False)
    """

    backend = "url"
    can_control = False

    def __init__(self, url: str, management_url: str | None = None) -> None:
        super().__init__()
        try:
            params = pika.URLParameters(url)
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
                raise ValueError("it must look like amqp://USER:PASSWORD@HOST:PORT/VHOST")
        except Exception as e:
            raise BrokerError(f"VOICELAB_AMQP_URL={mask_url(url)!r} is not a valid AMQP URL: {e}") from None
        self.host = params.host
        self.port = params.port
        self.vhost = params.virtual_host
        self.username = params.credentials.username
        self.password = params.credentials.password
        mgmt = management_url or os.environ.get("VOICELAB_MANAGEMENT_URL")
        if mgmt:
            self.management_port = urllib.parse.urlsplit(mgmt).port

    def start(self) -> "UrlBroker":
        return self

    def stop(self) -> None:
        """Nothing to stop: voicelab did not start this broker."""

    def _refuse(self, what: str) -> None:
        raise BrokerControlError(
            f"{what}() needs a broker that voicelab started; VOICELAB_AMQP_URL points at "
            f"{mask_url(self.amqp_url)}, which voicelab does not control. Unset it to let voicelab start one."
        )

    def kill(self) -> None:
        self._refuse("kill")

    def restart(self) -> None:
        self._refuse("restart")


# ---------------------------------------------------------------------------
# Docker (testcontainers)
# ---------------------------------------------------------------------------

def _testcontainers_env() -> None:
    """Settings testcontainers reads at import: no Ryuk (no registry), traffic on loopback."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host or docker_host.startswith("unix://"):
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")


def docker_engine() -> tuple[bool, str]:
    """(True, version) when a Docker engine answers within 3 s, else (False, why)."""
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.ping()
            return True, str(client.version().get("Version", "?"))
        finally:
            client.close()
    except Exception as e:  # the docker SDK raises many types here
        return False, f"no Docker engine answers ({type(e).__name__})"


def offline_image_help(image: str) -> str:
    return (
        f"The Docker engine has no image {image!r} and cannot pull it (no registry reachable?).\n"
        "Build one from Debian packages, no registry needed (root, debootstrap, about a minute):\n"
        "  sudo python -m voicelab build-image trixie voicelab/rabbitmq:4.0\n"
        "  export VOICELAB_RABBITMQ_IMAGE=voicelab/rabbitmq:4.0\n"
        "(suites: bookworm = RabbitMQ 3.10, trixie = 4.0, sid = 4.3), or `docker load` an image saved elsewhere."
    )


class ContainerBroker(Broker):
    """RabbitMQ in a Docker container started with testcontainers, ports on 127.0.0.1.

    Example::

        with ContainerBroker("voicelab/rabbitmq:4.0").start() as broker:
            print(broker.version)
    """

    backend = "container"

    def __init__(self, image: str | None = None) -> None:
        super().__init__()
        self.image = image or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE
        self._container: Any = None

    def _ensure_image(self) -> None:
        import docker
        import docker.errors

        client = docker.from_env(timeout=30)
        try:
            try:
                client.images.get(self.image)
            except docker.errors.ImageNotFound:
                try:
                    client.images.pull(self.image)
                except docker.errors.DockerException as e:
                    raise BrokerUnavailable(f"{offline_image_help(self.image)}\n(docker said: {e})") from None
        finally:
            client.close()

    def start(self) -> "ContainerBroker":
        if self._container is not None:  # after kill() or stop of the same container: data kept
            self._container.get_wrapped_container().start()
            self.wait_ready()
            _LIVE.add(self)
            return self
        _testcontainers_env()
        from testcontainers.community.rabbitmq import RabbitMqContainer

        self._ensure_image()
        self.port, self.management_port = free_port(), free_port()
        c = RabbitMqContainer(self.image, port=5672, username="guest", password="guest", vhost="/")
        c.with_exposed_ports(15672)
        # Loopback only: a guest/guest broker must not be reachable from the network.
        c.ports[5672] = ("127.0.0.1", self.port)
        c.ports[15672] = ("127.0.0.1", self.management_port)
        c.with_env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", f"-rabbit collect_statistics_interval {STATS_INTERVAL_MS}")
        c.with_kwargs(labels={"org.voicelab.owner-pid": str(os.getpid())})
        _LIVE.add(self)
        self._container = c
        try:
            c.start()
            reaper.watch(container_id=c.get_wrapped_container().id)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alive(self) -> None:
        if self._container is None:
            raise BrokerError("the container is gone")
        wrapped = self._container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status == "exited":
            raise BrokerError(f"the RabbitMQ container exited during start-up{self._log_tail()}")

    def _log_tail(self) -> str:
        with contextlib.suppress(Exception):
            out = self._container.get_wrapped_container().logs(tail=30).decode(errors="replace")
            return "\n--- container log (last lines) ---\n" + out
        return ""

    def stop(self) -> None:
        _LIVE.discard(self)
        c, self._container = self._container, None
        if c is not None:
            c.stop()  # removes the container and its volumes

    def kill(self) -> None:
        self._container.get_wrapped_container().kill()

    def restart(self) -> None:
        self._container.get_wrapped_container().restart(timeout=60)
        self.wait_ready()


# ---------------------------------------------------------------------------
# A private rabbitmq-server node
# ---------------------------------------------------------------------------

def find_rabbitmq_server() -> str | None:
    """Path of a rabbitmq-server start script, or None.

    As root on Debian the ``/usr/sbin`` wrapper would switch to the ``rabbitmq``
    user, who cannot write our temporary folder, so the real script is used.
    """
    if os.environ.get("VOICELAB_RABBITMQ_SERVER"):
        return os.environ["VOICELAB_RABBITMQ_SERVER"]
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


def _epmd() -> str | None:
    """Path of Erlang's port mapper daemon, or None."""
    found = shutil.which("epmd") or next(iter(sorted(Path("/usr/lib/erlang").glob("erts-*/bin/epmd"))), None)
    return None if found is None else str(found)


def _epmd_names() -> list[str] | None:
    """Nodes registered with a running epmd, or None when no epmd answers."""
    epmd = _epmd()
    if epmd is None:
        return None
    out = subprocess.run([str(epmd), "-names"], capture_output=True, text=True, timeout=5)
    if out.returncode != 0:
        return None
    return [line for line in out.stdout.splitlines() if line.startswith("name ")]


def stop_idle_epmd() -> None:
    """Stop Erlang's port mapper daemon if it runs and no node is registered with it any more."""
    epmd = _epmd()
    if epmd and _epmd_names() == []:
        with contextlib.suppress(Exception):
            subprocess.run([epmd, "-kill"], capture_output=True, timeout=5)


class LocalBroker(Broker):
    """A private RabbitMQ node: own node name, ports, data and logs in a temporary folder.

    Example::

        with LocalBroker().start() as broker:
            print(broker.amqp_url)
    """

    backend = "local"

    def __init__(self, server: str | None = None) -> None:
        super().__init__()
        server = server or find_rabbitmq_server()
        if server is None:
            raise BrokerUnavailable("rabbitmq-server is not installed.\n" + HOW_TO_GET_A_BROKER)
        self.server = server
        self.dir: Path | None = None
        self.node = f"voicelab-{uuid.uuid4().hex[:8]}@localhost"
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_epmd = False

    def _prepare(self) -> dict[str, str]:
        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix=f"voicelab-node-{os.getpid()}-"))
            self.port, self.management_port = free_port(), free_port()
            self.dist_port = free_port()
            (self.dir / "enabled_plugins").write_text("[rabbitmq_management].\n")
            (self.dir / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {self.management_port}\n"
                f"collect_statistics_interval = {STATS_INTERVAL_MS}\n"
            )
            (self.dir / "advanced.config").write_text("[].\n")
            (self.dir / "rabbitmq-env.conf").write_text("")
        d = self.dir
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
        return env

    def start(self) -> "LocalBroker":
        if self._proc is not None and self._proc.poll() is None:
            return self
        if not self._started_epmd and _epmd_names() is None:
            self._started_epmd = True  # no epmd ran before us: stop it again in stop()
        env = self._prepare()
        assert self.dir is not None
        log = open(self.dir / "console.log", "ab")
        self._proc = subprocess.Popen(
            [self.server], env=env, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: Ctrl-C in the notebook does not hit it, stop() kills it all
        )
        log.close()
        reaper.watch(pgid=self._proc.pid, path=str(self.dir), epmd=self._started_epmd)
        _LIVE.add(self)
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _check_alive(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerError(f"rabbitmq-server ({self.server}) exited during start-up{self._log_tail()}")

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
        _LIVE.discard(self)
        self._signal(signal.SIGTERM, 30)
        if self._started_epmd:
            stop_idle_epmd()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ---------------------------------------------------------------------------
# Choosing
# ---------------------------------------------------------------------------

def choose_backend() -> tuple[str, str]:
    """Which backend :func:`start_broker` would use, and why: ``("container", "a Docker engine answers ...")``.

    ``VOICELAB_BACKEND=container`` or ``=local`` skips the search (e.g. to use a local
    rabbitmq-server although Docker runs).
    """
    if os.environ.get("VOICELAB_AMQP_URL"):
        return "url", "VOICELAB_AMQP_URL is set"
    forced = os.environ.get("VOICELAB_BACKEND", "").strip()
    if forced:
        if forced not in ("container", "local"):
            raise ValueError(f"VOICELAB_BACKEND must be 'container' or 'local', not {forced!r}")
        return forced, f"VOICELAB_BACKEND={forced}"
    ok, detail = docker_engine()
    if ok:
        image = os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE
        return "container", f"a Docker engine answers (version {detail}); image {image}"
    server = find_rabbitmq_server()
    if server:
        return "local", f"{detail}; rabbitmq-server found at {server}"
    return "none", f"no VOICELAB_AMQP_URL, {detail}, no rabbitmq-server installed"


def make_broker(backend: Backend = "auto", image: str | None = None) -> Broker:
    """Create (but do not start) a broker of ``backend``; ``"auto"`` follows the order above."""
    if backend not in ("auto", "url", "container", "local"):
        raise ValueError(f"backend must be 'auto', 'url', 'container' or 'local', not {backend!r}")
    if backend == "auto":
        backend, _ = choose_backend()  # type: ignore[assignment]
        if backend == "none":
            raise BrokerUnavailable(HOW_TO_GET_A_BROKER)
    if backend == "url":
        url = os.environ.get("VOICELAB_AMQP_URL")
        if not url:
            raise BrokerUnavailable("backend 'url' needs VOICELAB_AMQP_URL to be set.\n" + HOW_TO_GET_A_BROKER)
        return UrlBroker(url)
    if backend == "container":
        ok, detail = docker_engine()
        if not ok:
            raise BrokerUnavailable(f"backend 'container': {detail}.\n" + HOW_TO_GET_A_BROKER)
        return ContainerBroker(image)
    return LocalBroker()


def start_broker(backend: Backend = "auto", image: str | None = None) -> Broker:
    """Get a running broker (see the module docstring for the order); stop it with ``stop()`` or ``with``.

    Example::

        broker = start_broker()
        try:
            connection = broker.connect()
        finally:
            broker.stop()
    """
    return make_broker(backend, image).start()


@contextlib.contextmanager
def own_broker(image: str | None = None) -> Iterator[Broker]:
    """A broker voicelab controls (for restart and crash demos), even when ``VOICELAB_AMQP_URL`` is set."""
    backend, _ = choose_backend()
    if backend == "url":
        ok, _ = docker_engine()
        backend = "container" if ok else ("local" if find_rabbitmq_server() else "none")
    if backend == "none":
        raise BrokerUnavailable("a restart or crash demo needs a broker voicelab starts itself.\n" + HOW_TO_GET_A_BROKER)
    with start_broker(backend, image) as broker:  # type: ignore[arg-type]
        yield broker


_SHARED: Broker | None = None


def shared_broker() -> Broker:
    """The broker of this Python process, started on first use and stopped at exit.

    Notebooks and exercise checkers call this; under ``pytest --nbval`` the test
    session exports ``VOICELAB_AMQP_URL`` so that every notebook shares one broker.

    Example::

        broker = shared_broker()
        print(broker.amqp_url)
    """
    global _SHARED
    if _SHARED is None or (_SHARED.can_control and _SHARED not in _LIVE):
        _SHARED = start_broker()
    return _SHARED
