"""Three RabbitMQ nodes, one cluster, on one machine: containers of one image on a Docker network of their own.

Each node is a :class:`ClusterNode`, a full :class:`~voicelab.broker.base.Broker` (``connect()``,
``parameters()``, ``kill()`` + ``start()``, ``restart()``), its AMQP and management ports bound to
127.0.0.1 only. The nodes reach each other by name on a user-defined network (Docker's DNS), share an
Erlang cookie (written to ``$HOME/.erlang.cookie`` before the image's own command runs: the mechanism
every RabbitMQ version reads, 3.10 to 4.3) and are joined with ``rabbitmqctl stop_app`` /
``join_cluster`` / ``start_app`` (deterministic on every version; peer discovery at boot would need
settings that differ between 3.10 and 4.x).

Nothing leaks: every container and the network carry ``org.voicelab.cluster-id`` (and
``org.voicelab.run-id`` under a test run); :meth:`Cluster.stop` removes them; so do interpreter exit and,
when the owner is killed, a watchdog (``python -m voicelab.broker.cluster OWNER_PID CLUSTER_ID``).

Example::

    with Cluster("voicelab/rabbitmq:4.3").start() as cluster:
        print(cluster.running_nodes())          # ['rabbit@voicelab-1a2b3c4d-n1', ...]
        cluster.nodes[0].kill(); cluster.nodes[0].start()
        connection = pika.BlockingConnection(cluster.parameters())   # the first node that answers
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
import weakref
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pika
import requests

from .base import (
    DEFAULT_IMAGE,
    STATS_INTERVAL_MS,
    Broker,
    BrokerError,
    BrokerUnavailable,
    PortInUse,
    erl_args,
    free_port,
    run_id,
)
from .container import offline_image_help, say
from .reaper import alive as process_alive
from .engine import docker_client, image_present, pull_image

CLUSTER_LABEL = "org.voicelab.cluster-id"
PORT_TAKEN = ("port is already allocated", "address already in use")

# Runs before the image's own command: the shared cookie, in the one place every version reads it.
COOKIE_SCRIPT = (
    # Always written: an image may carry a cookie of its own (Debian's package creates one when it is installed,
    # so every container of a voicelab image would share the one baked into the image).
    'c="$HOME/.erlang.cookie"; umask 077; rm -f "$c"; printf %s "$VOICELAB_ERLANG_COOKIE" > "$c"; chmod 400 "$c"; '
    'if [ "$(id -u)" = 0 ]; then chown rabbitmq:rabbitmq "$c" 2>/dev/null; fi; '
    # RabbitMQ runs as a child, not as PID 1, so that kill() can SIGKILL it while the container (its network)
    # lives on: the kernel then closes its TCP connections and the other nodes see it go at once, as when a
    # process crashes on a real machine. (A `docker kill` tears the network down with it: the peers noticed
    # only after net_ticktime, about a minute, when tried.) SIGTERM (docker stop) is passed on.
    '"$@" & child=$!; trap \'kill -TERM $child 2>/dev/null\' TERM INT; '
    'wait $child; status=$?; wait $child 2>/dev/null; exit $status'
)


def cluster_labels(cluster_id: str) -> dict[str, str]:
    """Labels of everything a cluster creates: its id, the owner's pid, the test run's id when there is one."""
    labels = {CLUSTER_LABEL: cluster_id, "org.voicelab.owner-pid": str(os.getpid())}
    if run_id():
        labels["org.voicelab.run-id"] = run_id()
    return labels


class ClusterNode(Broker):
    """One node of a :class:`Cluster`: a container named ``voicelab-<id>-n<i>`` on the cluster's network."""

    backend = "cluster"

    def __init__(self, cluster: Cluster, index: int) -> None:
        super().__init__(cluster.settings)
        self.cluster = cluster
        self.index = index
        self.hostname = f"voicelab-{cluster.id[:8]}-n{index + 1}"
        self.node = f"rabbit@{self.hostname}"
        self._container_id: str | None = None

    def __repr__(self) -> str:
        return f"<ClusterNode {self.node} amqp=127.0.0.1:{self.port} mgmt={self.management_url}>"

    @property
    def short(self) -> str:
        """``n1``, ``n2``, ``n3``: how a lesson names the node."""
        return f"n{self.index + 1}"

    def _container(self) -> Any:
        if self._container_id is None:
            raise BrokerError(f"{self!r} is not started (or was removed)")
        with docker_client() as client:
            return client.containers.get(self._container_id)

    def _fresh(self) -> bool:
        return self._container_id is None

    def _running(self) -> bool:
        if self._container_id is None:
            return False
        with contextlib.suppress(Exception):
            return bool(self._container().status == "running")
        return False

    def _choose_ports(self) -> None:
        self.port, self.management_port, self.prometheus_port = free_port(), free_port(), free_port()

    def _launch(self) -> None:
        try:
            if self._container_id is not None:   # after kill(): the same container, its data and ports
                self._container().start()
                return
            entry = self.cluster._command
            with docker_client() as client:
                c = client.containers.create(
                    self.cluster.image, command=["sh", "-c", COOKIE_SCRIPT, "sh", *entry], entrypoint=[],
                    name=self.hostname, hostname=self.hostname, network=self.cluster.network_name,
                    ports={"5672/tcp": ("127.0.0.1", self.port), "15672/tcp": ("127.0.0.1", self.management_port),
                           "15692/tcp": ("127.0.0.1", self.prometheus_port)},
                    environment={"RABBITMQ_NODENAME": self.node,
                                 "VOICELAB_ERLANG_COOKIE": self.cluster._cookie,
                                 "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                                     erl_args({"collect_statistics_interval": STATS_INTERVAL_MS, **self.settings})},
                    labels={**cluster_labels(self.cluster.id), "org.voicelab.broker-id": uuid.uuid4().hex,
                            "org.voicelab.node": self.node},
                    detach=True)
                self._container_id = c.id
                c.start()
        except Exception as e:
            text = str(e).lower()
            if any(s in text for s in PORT_TAKEN):
                raise PortInUse(self.port, f" (docker said: {e})") from None
            raise

    def _check_alive(self) -> None:
        if self._container().status == "exited":
            raise BrokerError(f"node {self.node} exited during start-up{self._log_tail()}")

    def _rabbitmqctl(self, *args: str) -> tuple[int, str]:
        result = self._container().exec_run(["rabbitmqctl", *args])
        return int(result.exit_code), result.output.decode(errors="replace")

    def ctl(self, *args: str) -> str:
        """``rabbitmqctl ARGS`` on this node; its output (raises :class:`BrokerError` when it fails)."""
        code, out = self._rabbitmqctl(*args)
        if code != 0:
            raise BrokerError(f"rabbitmqctl {' '.join(args)} on {self.node} failed ({code}): {out.strip()[-800:]}")
        return out

    def _log_tail(self) -> str:
        with contextlib.suppress(Exception):
            return "\n--- node log (last lines) ---\n" + self._container().logs(tail=30).decode(errors="replace")
        return ""

    def stop(self) -> None:
        """Remove this node's container (the cluster still lists it as a member)."""
        self._unregister()
        cid, self._container_id = self._container_id, None
        if cid is not None:
            with contextlib.suppress(Exception), docker_client() as client:
                client.containers.get(cid).remove(force=True, v=True)

    def kill(self) -> float:  # type: ignore[override]
        """SIGKILL every RabbitMQ process of the node (a crash: the kernel closes its TCP connections, so clients
        and the other nodes see it go at once); the container then exits. ``start()`` brings it back.

        Returns ``time.monotonic()`` just after the SIGKILL was sent (the moment of the crash, for timings).
        """
        c = self._container()
        with contextlib.suppress(Exception):
            c.exec_run(["sh", "-c", "kill -9 -1"])   # every process but PID 1 (the start script), which then exits
        killed_at = time.monotonic()
        deadline = killed_at + 15
        while time.monotonic() < deadline:
            c.reload()
            if c.status != "running":
                return killed_at
            time.sleep(0.1)
        c.kill()
        return time.monotonic()

    def restart(self) -> None:
        self._container().restart(timeout=60)
        self.wait_ready()

    @property
    def running(self) -> bool:
        """True while the node's container runs."""
        return self._running()


_CLUSTERS: weakref.WeakSet[Cluster] = weakref.WeakSet()


@atexit.register
def stop_all_clusters() -> None:
    """Stop every cluster this process started and has not stopped (runs at interpreter exit)."""
    for cluster in list(_CLUSTERS):
        with contextlib.suppress(Exception):
            cluster.stop()


class Cluster:
    """``size`` RabbitMQ nodes (containers of ``image``) joined in one cluster.

    Attributes:
        nodes: the :class:`ClusterNode` objects, ``nodes[0]`` the one the others joined.
        id: the cluster's id (in every container's and the network's ``org.voicelab.cluster-id`` label).
    """

    backend = "cluster"

    def __init__(self, image: str | None = None, size: int = 3, settings: dict[str, int] | None = None) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        self.image = image or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE
        self.settings = dict(settings or {})
        self.id = uuid.uuid4().hex
        self.network_name = f"voicelab-{self.id[:8]}"
        self._cookie = secrets.token_hex(20).upper()
        self._command: list[str] = []
        self._network_id: str | None = None
        self.nodes = [ClusterNode(self, i) for i in range(size)]
        self.formed_s: float | None = None

    def __repr__(self) -> str:
        return f"<Cluster {self.network_name} {self.image} {[n.short for n in self.nodes]}>"

    # -- life cycle ---------------------------------------------------------
    def start(self) -> Cluster:
        """Create the network, start every node at once, join them to ``nodes[0]``; returns ``self``."""
        t0 = time.monotonic()
        _CLUSTERS.add(self)
        try:
            if not image_present(self.image):
                say(f"pulling the Docker image {self.image} ...")
                said = pull_image(self.image)
                if said is not None:
                    raise BrokerUnavailable(f"{offline_image_help(self.image)}\n(docker said: {said})")
            with docker_client() as client:
                config = client.images.get(self.image).attrs.get("Config") or {}
                self._command = list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
                if not self._command:
                    raise BrokerError(f"image {self.image} has no command to start RabbitMQ")
                net = client.networks.create(self.network_name, driver="bridge", labels=cluster_labels(self.id))
                self._network_id = net.id
            self._watchdog()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for future in [pool.submit(node.start) for node in self.nodes]:
                    future.result()
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.node)
                node.ctl("start_app")
                node.wait_ready()
            self.wait_formed()
            self.formed_s = time.monotonic() - t0
            return self
        except BaseException:
            self.stop()
            raise

    def _watchdog(self) -> None:
        subprocess.Popen([sys.executable, "-m", "voicelab.broker.cluster", str(os.getpid()), self.id],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    def stop(self) -> None:
        """Remove every node and the network. Safe to call twice."""
        _CLUSTERS.discard(self)
        for node in self.nodes:
            node.stop()
        remove_cluster(self.id)
        self._network_id = None

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
        """The nodes whose container runs."""
        up = [n for n in self.nodes if n.running]
        if not up:
            raise BrokerError(f"{self!r}: no node runs")
        return up

    def node(self, name: str) -> ClusterNode:
        """The node called ``name`` (``rabbit@...`` or ``n1``)."""
        for n in self.nodes:
            if name in (n.node, n.short, n.hostname):
                return n
        raise KeyError(name)

    def parameters(self, order: Sequence[ClusterNode | int] | None = None, **overrides: Any) -> list[pika.ConnectionParameters]:
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


def remove_cluster(cluster_id: str) -> int:
    """Remove every container and network labelled with ``cluster_id``; how many things were removed."""
    removed = 0
    with docker_client() as client:
        for c in client.containers.list(all=True, filters={"label": f"{CLUSTER_LABEL}={cluster_id}"}):
            with contextlib.suppress(Exception):
                c.remove(force=True, v=True)
                removed += 1
        for net in client.networks.list(filters={"label": f"{CLUSTER_LABEL}={cluster_id}"}):
            with contextlib.suppress(Exception):
                net.remove()
                removed += 1
    return removed


def leftovers(cluster_id: str | None = None, run: str | None = None) -> list[str]:
    """Containers and networks of a cluster (or of any cluster of test run ``run``) that still exist."""
    label = f"{CLUSTER_LABEL}={cluster_id}" if cluster_id else CLUSTER_LABEL
    with docker_client() as client:
        found = [f"container {c.name}" for c in client.containers.list(all=True, filters={"label": label})]
        found += [f"network {n.name}" for n in client.networks.list(filters={"label": label})]
        if run and not cluster_id:
            keep = {c.name for c in client.containers.list(all=True, filters={"label": f"org.voicelab.run-id={run}"})}
            keep |= {n.name for n in client.networks.list(filters={"label": f"org.voicelab.run-id={run}"})}
            found = [f for f in found if f.split(" ", 1)[1] in keep]
    return found


def main(argv: list[str] | None = None) -> int:
    """The watchdog: wait for the owner to exit, then remove the cluster; exit early once it is gone."""
    p = argparse.ArgumentParser(prog="python -m voicelab.broker.cluster")
    p.add_argument("owner", type=int)
    p.add_argument("cluster_id")
    a = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    checks = 0
    while process_alive(a.owner):
        time.sleep(0.5)
        checks += 1
        if checks % 10 == 0:
            with contextlib.suppress(Exception), docker_client() as client:
                if not client.networks.list(filters={"label": f"{CLUSTER_LABEL}={a.cluster_id}"}):
                    return 0
    with contextlib.suppress(Exception):
        remove_cluster(a.cluster_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
