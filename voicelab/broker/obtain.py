"""Which broker voicelab uses, and the broker a whole process shares.

:func:`start_broker` takes the first way that works:

1. ``VOICELAB_AMQP_URL`` is set: that broker (voicelab cannot restart it);
2. a Docker engine answers: a container of ``VOICELAB_RABBITMQ_IMAGE``
   (default ``rabbitmq:4.3-management``); when Docker cannot provide it (no image
   and no registry, the engine refuses, the container never gets ready) and
3. ``rabbitmq-server`` is installed: a private node in a temporary folder,
   with a one-line :class:`BackendFallback` warning that says why;
4. none: :class:`~voicelab.broker.base.BrokerUnavailable`, naming the ways to get one.

An explicit choice (``VOICELAB_BACKEND``, ``backend=``, or ``VOICELAB_RABBITMQ_IMAGE``
set) never falls back: you asked for that one, and get its error. :func:`start_cluster` starts a
cluster of nodes by the same rules (containers, or local rabbitmq-server nodes).

Example::

    broker = start_broker()
    try:
        print(broker.backend, broker.version)
    finally:
        broker.stop()
"""

from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator, Literal, Mapping

from .base import DEFAULT_IMAGE, HOW_TO_GET_A_BROKER, Broker, BrokerError, BrokerUnavailable, check_settings, is_live
from .cluster import Cluster
from .container import ContainerBroker
from .container_cluster import ContainerCluster
from .engine import docker_engine
from .local import LocalBroker, find_rabbitmq_server
from .local_cluster import LocalCluster
from .tls import TlsFiles
from .url import UrlBroker

Backend = Literal["auto", "url", "container", "local"]
BACKENDS = ("auto", "url", "container", "local")


class BackendFallback(UserWarning):
    """Docker could not provide a broker, so the local rabbitmq-server is used instead."""


def _image() -> str:
    return os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE


def choose_backend() -> tuple[str, str]:
    """Which backend :func:`start_broker` tries first, and why: ``("container", "a Docker engine answers ...")``.

    ``VOICELAB_BACKEND=container`` or ``=local`` skips the search (e.g. to use a local
    rabbitmq-server although Docker runs). Returns ``("none", why)`` when there is none.
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
        return "container", f"a Docker engine answers (version {detail}); image {_image()}"
    server = find_rabbitmq_server()
    if server:
        return "local", f"{detail}; rabbitmq-server found at {server}"
    return "none", f"no VOICELAB_AMQP_URL, {detail}, no rabbitmq-server installed"


def may_fall_back() -> bool:
    """True when the container backend was chosen automatically and a local rabbitmq-server can stand in."""
    explicit = os.environ.get("VOICELAB_BACKEND", "").strip() or os.environ.get("VOICELAB_RABBITMQ_IMAGE")
    return not explicit and find_rabbitmq_server() is not None


def make_broker(backend: Backend = "auto", image: str | None = None,
                settings: Mapping[str, int] | None = None, tls: TlsFiles | None = None) -> Broker:
    """Create (but do not start) a broker of ``backend``; ``"auto"`` takes :func:`choose_backend`'s choice.

    ``settings``: RabbitMQ settings for a broker voicelab starts (see :func:`own_broker`); ``tls``: a TLS
    listener for it (:class:`~voicelab.broker.tls.TlsFiles`).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, not {backend!r}")
    if backend == "auto":
        backend, _ = choose_backend()  # type: ignore[assignment]
        if backend == "none":
            raise BrokerUnavailable(HOW_TO_GET_A_BROKER)
    if backend == "url":
        if settings or tls:
            raise ValueError("settings and tls apply to a broker voicelab starts, not to VOICELAB_AMQP_URL's: "
                             "use backend 'container' or 'local'")
        url = os.environ.get("VOICELAB_AMQP_URL")
        if not url:
            raise BrokerUnavailable("backend 'url' needs VOICELAB_AMQP_URL to be set.\n" + HOW_TO_GET_A_BROKER)
        try:
            return UrlBroker(url)
        except BrokerError as e:
            raise BrokerError(f"VOICELAB_AMQP_URL: {e}") from None
    if backend == "container":
        ok, detail = docker_engine()
        if not ok:
            raise BrokerUnavailable(f"backend 'container': {detail}.\n" + HOW_TO_GET_A_BROKER)
        return ContainerBroker(image, settings, tls)
    return LocalBroker(settings=settings, tls=tls)


def start_broker(backend: Backend = "auto", image: str | None = None) -> Broker:
    """Get a running broker (see the module docstring for the order); stop it with ``stop()`` or ``with``.

    With ``backend="auto"`` and no explicit image, a container that Docker cannot
    provide gives way to a local rabbitmq-server node, with a :class:`BackendFallback`
    warning; the broker's ``notice`` keeps that line. When neither works, the error
    lists what each backend said.
    """
    if backend == "auto" and not os.environ.get("VOICELAB_AMQP_URL"):
        return _start_on_this_machine(image)
    return make_broker(backend, image).start()


def _start_on_this_machine(image: str | None, settings: Mapping[str, int] | None = None,
                           tls: TlsFiles | None = None) -> Broker:
    """A container (or, when Docker cannot provide one and nothing was forced, a local node)."""
    backend, _ = choose_backend() if os.environ.get("VOICELAB_BACKEND") else ("auto", "")
    if backend != "auto":
        return make_broker(backend, image, settings, tls).start()  # type: ignore[arg-type]
    ok, detail = docker_engine()
    if not ok:
        if find_rabbitmq_server() is None:
            raise BrokerUnavailable(HOW_TO_GET_A_BROKER)
        return LocalBroker(settings=settings, tls=tls).start()
    container = ContainerBroker(image, settings, tls)
    if image is not None or not may_fall_back():
        return container.start()
    try:
        return container.start()
    except BrokerError as container_error:
        first = str(container_error).splitlines()[0]
        try:
            local = LocalBroker(settings=settings, tls=tls).start()
        except BrokerError as local_error:
            raise BrokerUnavailable(
                f"No backend could start a broker.\n- Docker ({container.image}): {container_error}\n"
                f"- local rabbitmq-server: {local_error}\n{HOW_TO_GET_A_BROKER}") from None
    local.notice = (f"Docker could not provide {container.image} ({first}); "
                    f"using the local rabbitmq-server {local.version} instead")
    warnings.warn(local.notice, BackendFallback, stacklevel=3)
    return local


# -- a cluster: the same rules ---------------------------------------------------------------------------

ClusterBackend = Literal["auto", "container", "local"]
CLUSTER_BACKENDS = ("auto", "container", "local")


def choose_cluster_backend(backend: ClusterBackend = "auto", image: str | None = None) -> tuple[str, bool]:
    """``(backend, may_fall_back)`` for :func:`start_cluster`: ``("container", True)`` means containers, and a
    local cluster if Docker cannot provide them. The rules of :func:`voicelab.broker.start_broker`:

    an explicit ``backend`` or ``VOICELAB_BACKEND``: that one, no fallback; no Docker engine: local nodes (or
    :class:`BrokerUnavailable` saying how to get a broker); Docker answers: containers, falling back to local
    nodes only when no image was named (``image`` or ``VOICELAB_RABBITMQ_IMAGE``) and rabbitmq-server is
    installed. ``VOICELAB_AMQP_URL`` plays no part: a cluster is always one voicelab starts.
    """
    if backend not in CLUSTER_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, CLUSTER_BACKENDS))}, not {backend!r}")
    if backend != "auto":
        return backend, False
    forced = os.environ.get("VOICELAB_BACKEND", "").strip()
    if forced:
        if forced not in ("container", "local"):
            raise ValueError(f"VOICELAB_BACKEND must be 'container' or 'local', not {forced!r}")
        return forced, False
    if not docker_engine()[0]:
        if find_rabbitmq_server() is None:
            raise BrokerUnavailable("a cluster needs nodes voicelab starts itself.\n" + HOW_TO_GET_A_BROKER)
        return "local", False
    named = image is not None or bool(os.environ.get("VOICELAB_RABBITMQ_IMAGE"))
    return "container", not named and find_rabbitmq_server() is not None


def start_cluster(size: int = 3, backend: ClusterBackend = "auto", image: str | None = None,
                  settings: Mapping[str, int] | None = None) -> Cluster:
    """A started cluster of ``size`` nodes on this machine (see :func:`choose_cluster_backend`); stop it with
    ``stop()`` or ``with``.

    Example::

        with start_cluster() as cluster:
            print(cluster.kind, cluster.formed_s)
    """
    chosen, fall_back = choose_cluster_backend(backend, image)
    if chosen == "local":
        return LocalCluster(size, settings).start()
    ok, detail = docker_engine()
    if not ok:
        raise BrokerUnavailable(f"backend 'container': {detail}.\n" + HOW_TO_GET_A_BROKER)
    containers = ContainerCluster(image, size, settings)
    if not fall_back:
        return containers.start()
    try:
        return containers.start()
    except ValueError:   # a wrong argument (an unknown setting): the local nodes would refuse it too
        raise
    except Exception as container_error:  # noqa: BLE001 - whatever Docker said (BrokerError, the engine's errors)
        first = str(container_error).splitlines()[0]
        try:
            local = LocalCluster(size, settings).start()
        except BrokerError as local_error:
            raise BrokerUnavailable(
                f"No backend could start a cluster.\n- Docker ({containers.image}): {container_error}\n"
                f"- local rabbitmq-server: {local_error}\n{HOW_TO_GET_A_BROKER}") from None
    try:
        local.notice = (f"Docker could not provide {containers.image} ({first}); "
                        f"using {local.kind} (RabbitMQ {local.version}) instead")
        warnings.warn(local.notice, BackendFallback, stacklevel=2)
    except BaseException:   # e.g. warnings as errors: the nodes must not outlive the call
        local.stop()
        raise
    return local


@contextlib.contextmanager
def own_broker(image: str | None = None, *, settings: Mapping[str, int] | None = None,
               tls: TlsFiles | None = None) -> Iterator[Broker]:
    """A broker voicelab controls (for restart and crash demos), even when ``VOICELAB_AMQP_URL`` is set.

    ``settings``: RabbitMQ ``rabbit`` application settings (``advanced.config`` names, integers), e.g.
    ``{"consumer_timeout": 3000}``, for a lesson about a setting (see :func:`check_settings`).
    ``tls``: start it with a TLS listener too (:class:`~voicelab.broker.tls.TlsFiles`; ``broker.tls_parameters()``).

    Example::

        with own_broker(settings={"consumer_timeout": 3000}) as broker:
            broker.kill()
            broker.start()
    """
    check_settings(settings)  # a wrong name or value says so before a broker starts
    try:
        broker = _start_on_this_machine(image, settings, tls)
    except BrokerUnavailable as e:
        raise BrokerUnavailable(f"a restart or crash demo needs a broker voicelab starts itself.\n{e}") from None
    with broker:
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
    if _SHARED is None or (_SHARED.can_control and not is_live(_SHARED)):
        _SHARED = start_broker()
    return _SHARED


@contextlib.contextmanager
def sharing(broker: Broker) -> Iterator[Broker]:
    """Make :func:`shared_broker` return ``broker`` inside the block (tests run checkers on each broker).

    Example::

        with start_broker() as mine, sharing(mine):
            assert shared_broker() is mine
    """
    global _SHARED
    before, _SHARED = _SHARED, broker
    try:
        yield broker
    finally:
        _SHARED = before
