"""A cluster of containers: ``size`` containers of one image on a Docker network of their own.

The nodes reach each other by name on a user-defined network (Docker's DNS), their AMQP, management and
Prometheus ports bound to 127.0.0.1 only, and share an Erlang cookie, written to ``$HOME/.erlang.cookie`` before
the image's own command runs (the mechanism every RabbitMQ version reads, 3.10 to 4.3).

Nothing leaks: every container and the network carry ``org.voicelab.cluster-id`` (and ``org.voicelab.run-id``
under a test run); :meth:`~voicelab.broker.cluster.Cluster.stop` removes them; so do interpreter exit and, when
the owner is killed, a watchdog (``python -m voicelab.broker.container_cluster OWNER_PID CLUSTER_ID``).

Example::

    with ContainerCluster("voicelab/rabbitmq:4.3").start() as cluster:
        print(cluster.running_nodes())          # ['rabbit@voicelab-1a2b3c4d-n1', ...]
        print(leftovers(cluster.id))            # the three containers and the network
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from typing import Any

from .base import (DEFAULT_IMAGE, STATS_INTERVAL_MS, BrokerError, BrokerUnavailable, PortInUse, erl_args, free_port,
                   run_id)
from .cluster import Cluster, ClusterNode
from .container import offline_image_help, say
from .engine import docker_client, image_present, pull_image
from .reaper import alive as process_alive

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


class ContainerClusterNode(ClusterNode):
    """One node of a :class:`ContainerCluster`: a container named ``voicelab-<id>-n<i>`` on the cluster's network."""

    backend = "container"

    def __init__(self, cluster: ContainerCluster, index: int) -> None:
        super().__init__(cluster.settings)
        self.cluster = cluster
        self.index = index
        self.hostname = f"voicelab-{cluster.id[:8]}-n{index + 1}"
        self.node = f"rabbit@{self.hostname}"
        self._container_id: str | None = None

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
        cluster: ContainerCluster = self.cluster  # type: ignore[assignment]
        try:
            if self._container_id is not None:   # after kill(): the same container, its data and ports
                self._container().start()
                return
            with docker_client() as client:
                c = client.containers.create(
                    cluster.image, command=["sh", "-c", COOKIE_SCRIPT, "sh", *cluster._command], entrypoint=[],
                    name=self.hostname, hostname=self.hostname, network=cluster.network_name,
                    ports={"5672/tcp": ("127.0.0.1", self.port), "15672/tcp": ("127.0.0.1", self.management_port),
                           "15692/tcp": ("127.0.0.1", self.prometheus_port)},
                    environment={"RABBITMQ_NODENAME": self.node,
                                 "VOICELAB_ERLANG_COOKIE": cluster._cookie,
                                 "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                                     erl_args({"collect_statistics_interval": STATS_INTERVAL_MS, **self.settings})},
                    labels={**cluster_labels(cluster.id), "org.voicelab.broker-id": uuid.uuid4().hex,
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

    def kill(self) -> float:
        """SIGKILL every RabbitMQ process of the node; the container then exits (its start script is PID 1)."""
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


class ContainerCluster(Cluster):
    """``size`` containers of ``image`` (default: ``VOICELAB_RABBITMQ_IMAGE``, else the official one), one cluster.

    Example::

        with ContainerCluster("voicelab/rabbitmq:4.3", size=3).start() as cluster:
            print(cluster.kind)   # 3 containers of voicelab/rabbitmq:4.3
    """

    backend = "container"

    def __init__(self, image: str | None = None, size: int = 3, settings: Mapping[str, int] | None = None) -> None:
        self.image = image or os.environ.get("VOICELAB_RABBITMQ_IMAGE") or DEFAULT_IMAGE
        self._cookie = secrets.token_hex(20).upper()
        self._command: list[str] = []
        super().__init__(size, settings)

    def _make_node(self, index: int) -> ContainerClusterNode:
        return ContainerClusterNode(self, index)

    @property
    def network_name(self) -> str:
        return f"voicelab-{self.id[:8]}"

    @property
    def kind(self) -> str:
        return f"{len(self.nodes)} containers of {self.image}"

    def _prepare(self) -> None:
        """The image (pulled if missing), its command, the network, and the watchdog."""
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
            client.networks.create(self.network_name, driver="bridge", labels=cluster_labels(self.id))
        subprocess.Popen([sys.executable, "-m", "voicelab.broker.container_cluster", str(os.getpid()), self.id],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)

    def _cleanup(self) -> None:
        remove_cluster(self.id)

    def leftovers(self) -> list[str]:
        return leftovers(self.id)


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
    p = argparse.ArgumentParser(prog="python -m voicelab.broker.container_cluster")
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
