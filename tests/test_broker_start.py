"""A broker starts every time: ports taken by other programs are retried, and Docker gives way to a local node."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import warnings
from typing import Iterator

import pytest

from helpers import images, require
from voicelab import broker as vb
from voicelab.broker import container, local

MODULES = {"container": container, "local": local}


def _listen() -> socket.socket:
    """A socket that holds a port on 127.0.0.1, as another program would."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _ports(first: list[int]) -> Iterator[int]:
    yield from first
    while True:
        yield vb.free_port()


def _make(backend: str) -> vb.Broker:
    return vb.ContainerBroker(images()[0]) if backend == "container" else vb.LocalBroker()


# The AMQP port on the container, Erlang's distribution port (a local node's own) on the local node: a taken
# AMQP port on a local node goes through the same retry (PortInUse from the node's log) and took 50-84 s of CI.
@pytest.mark.parametrize("backend, which", [("container", 0), ("local", 3)],
                         ids=["container-amqp", "local-erlang-distribution"])
def test_a_taken_port_is_retried_with_fresh_ports(backend: str, which: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port chosen for the broker (AMQP; for a local node also Erlang's distribution port, the 4th chosen)
    is taken before the broker binds it: the start retries with fresh ports and works."""
    require(backend)
    with _listen() as holder:
        taken = holder.getsockname()[1]
        ports = _ports([vb.free_port() for _ in range(which)] + [taken])
        monkeypatch.setattr(MODULES[backend], "free_port", lambda: next(ports))
        with _make(backend).start() as broker:
            assert taken not in (broker.port, broker.management_port, broker.prometheus_port)
            with broker.connect():
                pass
            url = broker.amqp_url
            broker.kill()
            broker.start()
            assert broker.amqp_url == url, "once started, the ports stay fixed across kill() + start()"


def test_ports_taken_every_time_give_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    require("container")
    with _listen() as holder:
        taken = holder.getsockname()[1]
        monkeypatch.setattr(container, "free_port", lambda: taken)
        with pytest.raises(vb.BrokerUnavailable) as e:
            vb.ContainerBroker(images()[0]).start()
    text = str(e.value)
    assert f"port {taken}" in text and f"{vb.PORT_ATTEMPTS} sets of ports" in text, text
    # ss (Debian's iproute2, here) names the holder: this very process; without ss the error says so
    assert f"pid={os.getpid()}" in text or "`ss`" in text, f"the error should say what holds the port: {text}"


GRABBED = range(9000, 10000)   # below the range free_port() chooses from (10000 up): no other broker's port


@pytest.mark.parametrize("backend", ["container"])   # a local node: test_a_taken_port_is_retried_with_fresh_ports
def test_brokers_start_while_other_programs_grab_ports(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another program binds and releases ports all the time, in the very range the brokers choose theirs from
    (and, for containers, takes the first port chosen before Docker binds it); two brokers still start, the
    first container after a retry with fresh ports. (A local node binds its ports late in its boot: a stolen
    one costs a whole boot, tested once in test_a_taken_port_is_retried_with_fresh_ports.)

    Brokers and grabber stay in 9000-9999, where nothing else of the suite chooses: grabbing ephemeral ports
    (``bind(0)``) would race every program beside the test that takes one, the Jupyter kernels of the notebook
    lanes included (a kernel's ports are chosen before it binds them: one died in CI), and grabbing in
    free_port()'s range would take ports that other tests' brokers keep across a restart."""
    require(backend)
    chosen: list[int] = []

    def pick() -> int:
        for _ in range(200):
            port = random.choice(GRABBED)
            with socket.socket() as s, contextlib.suppress(OSError):
                s.bind(("127.0.0.1", port))
                chosen.append(port)
                return port
        raise RuntimeError(f"no free port in {GRABBED}")

    monkeypatch.setattr(MODULES[backend], "free_port", pick)
    stop = threading.Event()
    stole: list[int] = []
    steal = backend == "container"

    def grab() -> None:
        held: list[socket.socket] = []
        while not stop.is_set():
            s = socket.socket()
            try:   # the first port a broker chose, as soon as it is chosen; then any port of the range
                port = chosen[0] if steal and chosen and not stole else random.choice(GRABBED)
                s.bind(("127.0.0.1", port))
                s.listen()
                held.append(s)
                if steal and chosen and port == chosen[0] and not stole:
                    stole.append(port)
            except OSError:   # taken: by a broker of this test, or by the grabber itself
                s.close()
            if len(held) > 30:
                held.pop(0).close()
            stop.wait(0.001 if steal and chosen and not stole else 0.005)
        for s in held:
            s.close()

    grabber = threading.Thread(target=grab, daemon=True)
    grabber.start()
    try:
        with _make(backend).start() as one, _make(backend).start() as two:
            for broker in (one, two):
                with broker.connect():
                    pass
            if steal:
                assert stole and stole[0] not in (one.port, one.management_port, one.prometheus_port), \
                    "the grabber took a chosen port first: the broker started on fresh ones"
    finally:
        stop.set()
        grabber.join()


def _unpullable_default(monkeypatch: pytest.MonkeyPatch) -> str:
    """The default image when this machine cannot have it (no registry), else one that exists nowhere."""
    for name in ("VOICELAB_AMQP_URL", "VOICELAB_BACKEND", "VOICELAB_RABBITMQ_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    if vb.image_present(vb.DEFAULT_IMAGE):
        monkeypatch.setattr(container, "DEFAULT_IMAGE", "voicelab/no-such-image:0.0")
        return "voicelab/no-such-image:0.0"
    return vb.DEFAULT_IMAGE


def test_auto_falls_back_to_local_when_docker_cannot_provide_the_image(monkeypatch: pytest.MonkeyPatch,
                                                                       fresh_broker) -> None:
    require("container")
    require("local")
    image = _unpullable_default(monkeypatch)
    with pytest.warns(vb.BackendFallback) as said:
        broker = fresh_broker("auto")
    assert broker.backend == "local"
    with broker.connect():
        pass
    fallbacks = [w for w in said if issubclass(w.category, vb.BackendFallback)]
    assert len(fallbacks) == 1, "say it once"
    line = str(fallbacks[0].message)
    assert "\n" not in line and line == broker.notice
    assert line.startswith(f"Docker could not provide {image}") and \
        line.endswith(f"using the local rabbitmq-server {broker.version} instead"), line


@pytest.mark.parametrize("explicit", ["VOICELAB_BACKEND=container", "VOICELAB_RABBITMQ_IMAGE", "backend argument"])
def test_an_explicit_container_choice_never_falls_back(explicit: str, monkeypatch: pytest.MonkeyPatch) -> None:
    require("container")
    image = _unpullable_default(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", vb.BackendFallback)
        with pytest.raises(vb.BrokerUnavailable, match="build-image"):
            if explicit == "VOICELAB_BACKEND=container":
                monkeypatch.setenv("VOICELAB_BACKEND", "container")
                vb.start_broker()
            elif explicit == "VOICELAB_RABBITMQ_IMAGE":
                monkeypatch.setenv("VOICELAB_RABBITMQ_IMAGE", "voicelab/no-such-image:0.0")
                vb.start_broker()
            else:
                vb.start_broker("container", image)
