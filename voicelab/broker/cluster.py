"""Three RabbitMQ nodes, one cluster, on one machine, whatever the machine has.

:func:`voicelab.broker.start_cluster` (in :mod:`~voicelab.broker.obtain`) picks the backend by the rules of
:func:`~voicelab.broker.start_broker`:

- :class:`~voicelab.broker.container_cluster.ContainerCluster`: containers of one image on a Docker network of
  their own (a Docker engine answers);
- :class:`~voicelab.broker.local_cluster.LocalCluster`: private ``rabbitmq-server`` nodes in temporary folders
  (no Docker engine; or Docker could not provide the image, nothing was forced, and rabbitmq-server is installed:
  then with a :class:`~voicelab.broker.obtain.BackendFallback` warning and ``cluster.notice``).

Either way every node is a :class:`ClusterNode`, a full :class:`~voicelab.broker.base.Broker` (``connect()``,
``parameters()``, ``kill()`` + ``start()``) with its ports on 127.0.0.1; the nodes share one random Erlang cookie
and nodes 2.. are joined to node 1 with ``rabbitmqctl stop_app`` / ``join_cluster`` / ``start_app``
(deterministic on every version, 3.10 to 4.3). Nothing leaks: :meth:`Cluster.stop`, interpreter exit and, when
the owner is killed, watchdogs remove every node; :meth:`Cluster.leftovers` lists what still exists.

Example::

    from voicelab.broker import start_cluster
    with start_cluster() as cluster:
        print(cluster.kind, cluster.running_nodes())   # 3 containers of ..., ['rabbit@voicelab-1a2b3c4d-n1', ...]
        cluster.nodes[0].kill(); cluster.nodes[0].start()
        connection = pika.BlockingConnection(cluster.parameters())   # the first node that answers
"""

from __future__ import annotations

import atexit
import contextlib
import time
import uuid
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import requests

from .base import Broker, BrokerError, check_settings


class ClusterNode(Broker):
    """One node of a :class:`Cluster`: a full broker that knows its place (``cluster``, ``index``, ``node``)."""

    cluster: Cluster
    index: int
    node: str          # the Erlang node name, ``rabbit@voicelab-1a2b3c4d-n1`` or ``voicelab-1a2b3c4d-n1@localhost``
    hostname: str      # the host part a lesson may show (the container's name, or the node's name before the @)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.node} amqp=127.0.0.1:{self.port} mgmt={self.management_url}>"

    @property
    def short(self) -> str:
        """``n1``, ``n2``, ``n3``: how a lesson names the node."""
        return f"n{self.index + 1}"

    @property
    def running(self) -> bool:
        """True while the node's process (or container) runs."""
        with contextlib.suppress(Exception):
            return self._running()
        return False

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` on this node; its output (raises :class:`BrokerError` when it fails)."""
        code, out = self._rabbitmqctl(*args)
        if code != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} on {self.node} failed ({code}): {out.strip()[-800:]}")
        return out

    @abstractmethod
    def kill(self) -> float:  # type: ignore[override]
        """SIGKILL every RabbitMQ process of the node (a crash: the kernel closes its TCP connections, so clients
        and the other nodes see it go at once); ``start()`` brings it back with its ports and data.

        Returns ``time.monotonic()`` just after the SIGKILL was sent (the moment of the crash, for timings).
        """


def _each(nodes: Sequence[ClusterNode], step: Callable[[ClusterNode], object]) -> None:
    """Run ``step`` on every node at once (threads); raise the first error once all are done."""
    if nodes:
        with ThreadPoolExecutor(len(nodes)) as pool:
            for future in [pool.submit(step, node) for node in nodes]:
                future.result()


_CLUSTERS: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def stop_all_clusters() -> None:
    """Stop every cluster this process started and has not stopped (runs at interpreter exit)."""
    for cluster in list(_CLUSTERS):
        with contextlib.suppress(Exception):
            cluster.stop()


class Cluster(ABC):
    """``size`` RabbitMQ nodes joined in one cluster; a backend fills in how a node is made and removed.

    Attributes:
        nodes: the :class:`ClusterNode` objects, ``nodes[0]`` the one the others joined.
        id: the cluster's id (in the names and labels of everything it creates).
        formed_s: seconds :meth:`start` took, from the first node launched to the cluster formed.
        notice: one line on how the backend was chosen when the first choice failed, else ``""``.
    """

    backend: str = ""

    def __init__(self, size: int = 3, settings: Mapping[str, int] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.settings = check_settings(settings)
        self.id = uuid.uuid4().hex
        self.formed_s: float | None = None
        self.notice = ""
        self.nodes: list[ClusterNode] = [self._make_node(i) for i in range(size)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id[:8]} {self.kind} {[n.short for n in self.nodes]}>"

    # -- what a backend provides ---------------------------------------------
    @abstractmethod
    def _make_node(self, index: int) -> ClusterNode:
        """The (not started) node ``index``."""

    def _prepare(self) -> None:
        """Before the nodes start: what they share (an image, a network, a watchdog)."""

    def _cleanup(self) -> None:
        """After every node was stopped: remove what they shared."""

    @abstractmethod
    def leftovers(self) -> list[str]:
        """What of this cluster still exists (containers, networks, processes, folders); ``[]`` once stopped."""

    @property
    @abstractmethod
    def kind(self) -> str:
        """What the nodes are, for a caption: ``"3 containers of voicelab/rabbitmq:4.3"``."""

    # -- life cycle ---------------------------------------------------------
    def start(self) -> Cluster:
        """Start every node at once, join nodes 2.. to ``nodes[0]``, wait until all see all; returns ``self``.

        Anything that fails (or a Ctrl-C) on the way removes what was started. A cluster that has formed is
        returned as it is (running a notebook cell twice must not tear it down).
        """
        if self.formed_s is not None and any(n.running for n in self.nodes):
            return self
        t0 = time.monotonic()
        _CLUSTERS.add(self)
        try:
            self._prepare()
            _each(self.nodes, lambda node: node.start())
            first, others = self.nodes[0], self.nodes[1:]
            _each(others, lambda node: node.ctl("stop_app"))
            for node in others:   # one at a time: each join changes the cluster's membership
                node.ctl("join_cluster", first.node)
            _each(others, lambda node: (node.ctl("start_app"), node.wait_ready()))
            self.wait_formed()
            self.formed_s = time.monotonic() - t0
            return self
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Remove every node (all at once) and what they shared. Safe to call twice."""
        _CLUSTERS.discard(self)

        def stop(node: ClusterNode) -> None:
            with contextlib.suppress(Exception):
                node.stop()

        _each(self.nodes, stop)
        with contextlib.suppress(Exception):   # e.g. Docker is what failed: the caller's error is the one to see
            self._cleanup()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what it is ---------------------------------------------------------
    @property
    def version(self) -> str:
        return self.alive()[0].version

    @property
    def version_info(self) -> tuple[int, int]:
        return self.alive()[0].version_info

    def alive(self) -> list[ClusterNode]:
        """The nodes that run."""
        up = [n for n in self.nodes if n.running]
        if not up:
            raise BrokerError(f"{self!r}: no node runs")
        return up

    def node(self, name: str) -> ClusterNode:
        """The node called ``name`` (its Erlang node name, ``n1``, or its host name)."""
        for n in self.nodes:
            if name in (n.node, n.short, n.hostname):
                return n
        raise KeyError(name)

    def parameters(self, order: Sequence[ClusterNode | int] | None = None,
                   **overrides: Any) -> list[pika.ConnectionParameters]:
        """One ``pika.ConnectionParameters`` per node (in ``order``), each tried once: give the list to
        ``pika.BlockingConnection``, which connects to the first that answers."""
        chosen = [self.nodes[n] if isinstance(n, int) else n for n in (order or self.nodes)]
        opts = {"connection_attempts": 1, "retry_delay": 0.2, "socket_timeout": 2, **overrides}
        return [n.parameters(**opts) for n in chosen]

    def running_nodes(self, via: ClusterNode | None = None) -> list[str]:
        """The cluster's running nodes, as a node (``via``, else the first alive) sees them (its management API,
        ``/api/nodes``: cheaper than ``rabbitmqctl cluster_status``, which starts an Erlang VM each time)."""
        node = via or self.alive()[0]
        try:
            r = requests.get(f"{node.management_url}/api/nodes?columns=name,running",
                             auth=(node.username, node.password), timeout=5)
            r.raise_for_status()
        except requests.RequestException as e:
            raise BrokerError(f"{node.node} did not say which nodes run: {e!r}") from e
        return sorted(n["name"] for n in r.json() if n.get("running"))

    def wait_formed(self, timeout: float = 60.0) -> None:
        """Block until every running node sees every running node."""
        deadline = time.monotonic() + timeout
        want = sorted(n.node for n in self.alive())
        seen: list[str] = []
        while time.monotonic() < deadline:
            with contextlib.suppress(BrokerError, ValueError, KeyError):
                seen = self.running_nodes()
                if seen == want:
                    return
            time.sleep(0.5)
        raise BrokerError(f"{self!r}: running nodes {seen}, expected {want} after {timeout:.0f} s")

    def queue(self, name: str, vhost: str = "/") -> dict[str, Any]:
        """The management API's view of queue ``name`` (asked of a node that runs): type, leader, members..."""
        last: Exception | None = None
        for node in self.alive():
            try:
                r = requests.get(f"{node.management_url}/api/queues/{requests.utils.quote(vhost, safe='')}/{name}",
                                 auth=(node.username, node.password), timeout=5)
                r.raise_for_status()
                return dict(r.json())
            except requests.RequestException as e:
                last = e
        raise BrokerError(f"no running node answered about queue {name!r}: {last!r}")

    def leader(self, queue: str) -> str | None:
        """The node that leads quorum queue ``queue`` (or hosts a classic one), as the management API says."""
        info = self.queue(queue)
        return info.get("leader") or info.get("node")

    def describe(self) -> str:
        """Each node's name, AMQP port and management UI, one per line."""
        return "\n".join(f"  {n.short} {n.node}: amqp 127.0.0.1:{n.port}, management UI {n.management_url} "
                         f"(guest / guest)" for n in self.nodes)
