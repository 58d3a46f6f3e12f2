"""RabbitMQ in a Docker container, started with testcontainers, its ports on 127.0.0.1 only.

Example::

    with ContainerBroker("voicelab/rabbitmq:4.0").start() as broker:
        print(broker.version)
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Mapping

from .base import (DEFAULT_IMAGE, STATS_INTERVAL_MS, Broker, BrokerError, erl_args, BrokerUnavailable, PortInUse, free_port,
                   run_id)
from .engine import image_present, pull_image, remove_labelled
from . import tls as _tls
from .tls import TlsFiles

TLS_FOLDER = "/etc/rabbitmq/tls"  # where the container reads its TLS files
TLS_CONF = "/etc/rabbitmq/conf.d/60-voicelab-tls.conf"  # read after the image's own conf.d files
IMAGE_PLUGINS = ("rabbitmq_management", "rabbitmq_prometheus")  # the image's enabled_plugins

PORT_TAKEN = ("port is already allocated", "address already in use")  # what Docker says when a host port is taken


def testcontainers_env() -> None:
    """Settings testcontainers reads at import: no Ryuk (no registry here), client traffic on loopback."""
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    docker_host = os.environ.get("DOCKER_HOST", "")
    if not docker_host or docker_host.startswith("unix://"):
        os.environ.setdefault("TESTCONTAINERS_CONNECTION_MODE", "docker_host")
        os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")


def say(message: str) -> None:
    """Report a slow step on stderr as it starts (a notebook cell would otherwise sit silent)."""
    print(f"voicelab: {message}", file=sys.stderr, flush=True)


def rabbitmq_container_class() -> type:
    """testcontainers' ``RabbitMqContainer``: ``testcontainers.community.rabbitmq`` (4.15 on) or
    ``testcontainers.rabbitmq`` (up to 4.14, e.g. conda-forge's 4.14.1); the same class and arguments.
    Sets :func:`testcontainers_env` first: testcontainers reads it at import.

    >>> rabbitmq_container_class().__name__
    'RabbitMqContainer'
    """
    testcontainers_env()
    try:
        from testcontainers.community.rabbitmq import RabbitMqContainer
    except ImportError:
        from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[no-redef]
    return RabbitMqContainer


def offline_image_help(image: str) -> str:
    """What to do when the Docker engine has no ``image`` and cannot pull it."""
    return (
        f"The Docker engine has no image {image!r} and cannot pull it (no registry reachable?).\n"
        "Build one from Debian packages, no registry needed (root, debootstrap, about a minute):\n"
        "  sudo python -m voicelab build-image trixie voicelab/rabbitmq:4.0\n"
        "  export VOICELAB_RABBITMQ_IMAGE=voicelab/rabbitmq:4.0\n"
        "(suites: bookworm = RabbitMQ 3.10, trixie = 4.0, sid = 4.3), or `docker load` an image saved elsewhere."
    )


class ContainerBroker(Broker):
    """RabbitMQ in a Docker container of ``image`` (default ``$VOICELAB_RABBITMQ_IMAGE`` or the official one).

    Example::

        with ContainerBroker("voicelab/rabbitmq:4.0").start() as broker:
            print(broker.version)
    """

    backend = "container"

    def __init__(self, image: str | None = None, settings: Mapping[str, int] | None = None,
                 tls: TlsFiles | None = None) -> None:
        super().__init__(settings, tls)
        self.image = image or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE
        self._container: Any = None
        self._id = uuid.uuid4().hex  # labels this broker's container, so that stop() finds it in every state
        self._watched = False
        self._tls_root: Path | None = None  # this broker's TLS files and conf.d file (bind-mounted), if any

    def _wrapped(self) -> Any:
        if self._container is None:
            raise BrokerError(f"{self!r} is not started (or was stopped): call start()")
        return self._container.get_wrapped_container()

    def _fresh(self) -> bool:
        return self._container is None

    def _running(self) -> bool:
        if self._container is None:
            return False
        wrapped = self._wrapped()
        wrapped.reload()
        return bool(wrapped.status == "running")

    def _choose_ports(self) -> None:
        self.port, self.management_port, self.prometheus_port = free_port(), free_port(), free_port()
        if self.tls is not None:
            self.tls_port = free_port()

    def _launch(self) -> None:
        if self._container is not None:  # after kill(): the same container, its data and ports
            self._start_wrapped()
            return
        RabbitMqContainer = rabbitmq_container_class()
        if not image_present(self.image):
            say(f"pulling the Docker image {self.image} (once; a few minutes on a slow connection) ...")
            said = pull_image(self.image)
            if said is not None:
                raise BrokerUnavailable(f"{offline_image_help(self.image)}\n(docker said: {said})")
        c = RabbitMqContainer(self.image, port=5672, username="guest", password="guest", vhost="/")
        c.with_exposed_ports(15672, 15692)
        # Loopback only: a guest/guest broker must not be reachable from the network.
        c.ports[5672] = ("127.0.0.1", self.port)
        c.ports[15672] = ("127.0.0.1", self.management_port)
        c.ports[15692] = ("127.0.0.1", self.prometheus_port)
        if self.tls is not None:
            self._mount_tls(c)
        c.with_env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                   erl_args({"collect_statistics_interval": STATS_INTERVAL_MS, **self.settings}))
        labels = {"org.voicelab.owner-pid": str(os.getpid()), "org.voicelab.broker-id": self._id}
        if run_id():
            labels["org.voicelab.run-id"] = run_id()
        c.with_kwargs(labels=labels)
        self._container = c
        try:
            c.start()
        except Exception as e:
            self._raise_if_port_taken(e)
            raise

    def _mount_tls(self, c: Any) -> None:
        """The TLS files and a conf.d file, read-only bind mounts of this broker's own copies (deleted by stop());
        the TLS port on 127.0.0.1 like the others. Bind mounts: the Docker engine must run on this machine."""
        assert self.tls is not None and self.tls_port is not None
        if self._tls_root is None:
            self._tls_root = Path(tempfile.mkdtemp(prefix=f"voicelab-tls-{os.getpid()}-"))
        folder = self._tls_dir = self.tls.copy_to(self._tls_root / "tls")
        conf = self._tls_root / "60-voicelab-tls.conf"
        _tls.write_in_place(conf, self.tls.conf("5671", TLS_FOLDER).encode())
        for name in _tls.FILES:
            c.with_volume_mapping(str(folder / name), f"{TLS_FOLDER}/{name}", "ro")
        c.with_volume_mapping(str(conf), TLS_CONF, "ro")
        c.with_exposed_ports(5671)
        c.ports[5671] = ("127.0.0.1", self.tls_port)
        if self.tls.cert_login:  # replaces the image's enabled_plugins file (RABBITMQ_ENABLED_PLUGINS, rabbit_env)
            c.with_env("RABBITMQ_ENABLED_PLUGINS", ",".join((*IMAGE_PLUGINS, _tls.CERT_LOGIN_PLUGIN)))

    def _start_wrapped(self) -> None:
        try:
            self._wrapped().start()
        except Exception as e:
            self._raise_if_port_taken(e)
            raise

    def _raise_if_port_taken(self, error: Exception) -> None:
        text = str(error).lower()
        if any(s in text for s in PORT_TAKEN):
            taken = [p for p in (self.port, self.management_port, self.prometheus_port, self.tls_port)
                     if p and f":{p}" in text]
            raise PortInUse(taken[0] if taken else self.port, f" (docker said: {error})") from None

    def _watch(self) -> dict[str, Any] | None:
        if self._watched:  # the watchdog of its first start still watches the same container
            return None
        self._watched = True
        watch: dict[str, Any] = {"container_id": self._wrapped().id}
        if self._tls_root is not None:
            watch["path"] = str(self._tls_root)
        return watch

    def _check_alive(self) -> None:
        wrapped = self._wrapped()
        wrapped.reload()
        if wrapped.status == "exited":
            raise BrokerError(f"the RabbitMQ container exited during start-up{self._log_tail()}")

    def _rabbitmqctl(self, *args: str) -> tuple[int, str]:
        result = self._wrapped().exec_run(["rabbitmqctl", *args])
        return int(result.exit_code), result.output.decode(errors="replace")

    def _log_tail(self) -> str:
        with contextlib.suppress(Exception):
            out = self._wrapped().logs(tail=30).decode(errors="replace")
            return "\n--- container log (last lines) ---\n" + out
        return ""

    def stop(self) -> None:
        self._unregister()
        c, self._container = self._container, None
        if c is not None:
            with contextlib.suppress(Exception):
                c.stop()  # removes the container and its volumes
            # a container that was created but never started (a port was taken) is not known to testcontainers
            with contextlib.suppress(Exception):
                remove_labelled(f"org.voicelab.broker-id={self._id}")
        _tls.remove(self._tls_root)
        self._tls_root = self._tls_dir = None
        self._watched = False

    def kill(self) -> None:
        self._wrapped().kill()

    def restart(self) -> None:
        self._wrapped().restart(timeout=60)
        self.wait_ready()
