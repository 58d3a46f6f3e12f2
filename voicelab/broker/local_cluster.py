"""A cluster of private ``rabbitmq-server`` nodes on this machine: no Docker needed.

Each node is a :class:`~voicelab.broker.local.LocalBroker` (its own temporary folder, node name, ports on
127.0.0.1, process group and watchdog) named ``voicelab-<id>-n<i>@localhost``. The nodes share one random Erlang
cookie, written (mode 0400) to ``$HOME/.erlang.cookie`` in each node's folder, which is its ``HOME`` (so
``rabbitmqctl`` finds it too), and talk over the Erlang distribution on loopback. Nothing leaks: each node's
watchdog kills its process group and deletes its folder when the owner dies, however it dies.

Example::

    with LocalCluster(size=3).start() as cluster:
        print(cluster.kind, cluster.formed_s)   # 3 local rabbitmq-server nodes, 25.3
        print(cluster.running_nodes())          # ['voicelab-1a2b3c4d-n1@localhost', ...]
    assert leftovers(cluster.id) == []
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from .base import HOW_TO_GET_A_BROKER, BrokerError, BrokerUnavailable
from .cluster import Cluster, ClusterNode
from .local import LocalBroker, find_rabbitmq_server


class LocalClusterNode(ClusterNode, LocalBroker):
    """One node of a :class:`LocalCluster`: a private rabbitmq-server node ``voicelab-<id>-n<i>@localhost``."""

    backend = "local"

    def __init__(self, cluster: LocalCluster, index: int) -> None:
        LocalBroker.__init__(self, cluster.server, cluster.settings)
        self.cluster = cluster
        self.index = index
        self.hostname = f"voicelab-{cluster.id[:8]}-n{index + 1}"
        self.node = f"{self.hostname}@localhost"

    def _dir_prefix(self) -> str:
        """``voicelab-node-PID-[rRUN-]c<cluster id>-n<i>-``: :func:`leftovers` finds the node by it."""
        return f"{super()._dir_prefix()}{cluster_tag(self.cluster.id)[1:]}{self.short}-"

    def _write_config(self) -> Path:
        d = super()._write_config()
        fd = os.open(d / ".erlang.cookie", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as f:
            f.write(self.cluster._cookie)  # type: ignore[attr-defined]
        return d

    def kill(self) -> float:
        """SIGKILL the node's process group; the folder (data, ports) stays for ``start()``."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise BrokerError(f"{self!r} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        self._signal(signal.SIGKILL, 10)   # waits until every process of the group is gone
        return killed_at

    def stop(self) -> None:
        """Kill the node and delete its folder (the cluster still lists it as a member)."""
        self._unregister()
        self._signal(signal.SIGKILL, 10)   # its data goes with its folder: no clean shutdown to wait for
        LocalBroker.stop(self)


class LocalCluster(Cluster):
    """``size`` private nodes of the installed rabbitmq-server (``server``: default :func:`find_rabbitmq_server`).

    Example::

        with LocalCluster(size=3).start() as cluster:
            print(cluster.kind)   # 3 local rabbitmq-server nodes
    """

    backend = "local"

    def __init__(self, size: int = 3, settings: Mapping[str, int] | None = None, server: str | None = None) -> None:
        found = server or find_rabbitmq_server()
        if found is None:
            raise BrokerUnavailable("rabbitmq-server is not installed.\n" + HOW_TO_GET_A_BROKER)
        self.server = found
        self._cookie = secrets.token_hex(20).upper()
        super().__init__(size, settings)

    def _make_node(self, index: int) -> LocalClusterNode:
        return LocalClusterNode(self, index)

    @property
    def kind(self) -> str:
        return f"{len(self.nodes)} local rabbitmq-server nodes"

    def leftovers(self) -> list[str]:
        return leftovers(self.id)


def cluster_tag(cluster_id: str) -> str:
    """``-c1a2b3c4d-``: what the folder of each node of cluster ``cluster_id`` has in its name."""
    return f"-c{cluster_id[:8]}-"


def leftovers(cluster_id: str) -> list[str]:
    """Processes (a node's beam, found by its ``-home`` folder in ``ps -ww``) and folders of a local cluster
    that still exist. Watchdogs, which name the folder too and exit by themselves, are not counted."""
    tag = cluster_tag(cluster_id)
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,args="], capture_output=True, text=True, check=False).stdout
    found = []
    for line in out.splitlines():
        if tag in line and "voicelab.broker.reaper" not in line:
            pid, args = line.strip().split(" ", 1)
            home = re.search(r"-home (\S+)", args)
            found.append(f"process {pid} {args.split()[0]} (home {home.group(1) if home else '?'})")
    found += [f"folder {p}" for p in sorted(Path(tempfile.gettempdir()).glob(f"voicelab-node-*{tag}*"))]
    return found
