"""The three-node cluster of notebook 09 (voicelab.broker.cluster): start, join, kill, restart, teardown, no leaks.

Each container test starts real nodes (Docker), so there are few of them, all on the newest image (like every test
of voicelab's own mechanics; ``VOICELAB_ALL_VERSIONS=1`` runs the life cycle on every image): a life cycle, an
interrupted start, an owner killed with SIGKILL (the watchdog's case). Notebook 09 runs the same module on the
image of ``VOICELAB_RABBITMQ_IMAGE`` (CI: run it once on 3.10 as well).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pika
import pytest
from helpers import images, require

from voicelab.broker import cluster as vc
from voicelab.broker.base import run_id


def test_parameters_list_every_node_in_order_each_tried_once() -> None:
    c = vc.Cluster("some/image", size=3)
    for i, node in enumerate(c.nodes):
        node.port = 10001 + i
    params = c.parameters()
    assert [p.port for p in params] == [10001, 10002, 10003]
    assert all(p.host == "127.0.0.1" and p.connection_attempts == 1 for p in params)
    assert [p.port for p in c.parameters([c.nodes[2], 0], heartbeat=5)] == [10003, 10001]
    assert c.parameters(heartbeat=5)[0].heartbeat == 5
    assert [n.node for n in c.nodes] == [f"rabbit@voicelab-{c.id[:8]}-n{i}" for i in (1, 2, 3)]
    assert c.node("n2") is c.nodes[1] and c.node(c.nodes[2].node) is c.nodes[2]
    with pytest.raises(ValueError):
        vc.Cluster("some/image", size=0)


def test_labels_carry_the_cluster_and_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_RUN_ID", "abc123")
    labels = vc.cluster_labels("cid")
    assert labels == {vc.CLUSTER_LABEL: "cid", "org.voicelab.owner-pid": str(os.getpid()),
                      "org.voicelab.run-id": "abc123"}


def _host_ports(node: vc.ClusterNode) -> list[tuple[str, str]]:
    bound = node._container().attrs["HostConfig"]["PortBindings"]
    return [(b["HostIp"], b["HostPort"]) for spec in bound.values() for b in spec]


def _lifecycle_images() -> list[str]:
    return images() if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" else images()[-1:]


@pytest.mark.parametrize("image", _lifecycle_images())
def test_three_nodes_join_lose_one_get_it_back_and_leave_nothing(image: str) -> None:
    require("container")
    cluster = vc.Cluster(image).start()
    try:
        names = sorted(n.node for n in cluster.nodes)
        for node in cluster.nodes:   # one cluster: every node sees all three
            assert cluster.running_nodes(via=node) == names
            assert all(ip == "127.0.0.1" for ip, _ in _host_ports(node)), "ports on loopback only"
            labels = node._container().labels
            assert labels[vc.CLUSTER_LABEL] == cluster.id and labels.get("org.voicelab.run-id", "") == run_id()
        with cluster.nodes[0].connect() as connection:
            connection.channel().queue_declare("t.quorum", durable=True, arguments={"x-queue-type": "quorum"})
        assert sorted(cluster.queue("t.quorum")["members"]) == names, "a quorum queue has a member on each node"

        victim = cluster.nodes[2]
        victim.kill()
        assert not victim.running
        deadline = time.monotonic() + 30
        while cluster.running_nodes(via=cluster.nodes[0]) != names[:2] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cluster.running_nodes(via=cluster.nodes[0]) == names[:2], "the others see it gone"
        with pytest.raises(pika.exceptions.AMQPConnectionError):
            victim.connect(connection_attempts=1, socket_timeout=2)
        with cluster.nodes[1].connect() as connection:   # the survivors serve the queue
            ch = connection.channel()
            ch.confirm_delivery()
            ch.basic_publish("", "t.quorum", b"while n3 is down", pika.BasicProperties(delivery_mode=2))

        port = victim.port
        victim.start()
        assert victim.port == port, "a node keeps its port across kill() + start()"
        cluster.wait_formed()
        assert cluster.running_nodes(via=victim) == names, "the restarted node is in the cluster again"
        with victim.connect() as connection:
            assert connection.channel().queue_declare("t.quorum", passive=True).method.message_count == 1
    finally:
        cluster.stop()
    assert vc.leftovers(cluster.id) == [], "no container or network left"
    cluster.stop()   # twice is fine


def test_an_interrupted_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    require("container")
    cluster = vc.Cluster(images()[-1], size=1)

    def interrupted(self: vc.Cluster, timeout: float = 60.0) -> None:
        assert vc.leftovers(cluster.id), "the node and the network exist by now"
        raise KeyboardInterrupt   # Ctrl-C while the nodes form the cluster

    monkeypatch.setattr(vc.Cluster, "wait_formed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cluster.start()
    assert vc.leftovers(cluster.id) == []


def test_the_watchdog_removes_the_cluster_of_a_killed_owner() -> None:
    require("container")
    code = textwrap.dedent(f"""
        import sys, time
        from voicelab.broker.cluster import Cluster
        c = Cluster({images()[-1]!r}, size=1).start()
        print(c.id, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        cluster_id = (proc.stdout.readline() if proc.stdout else "").strip()
        assert cluster_id, "the owner started its cluster"
        assert any(x.startswith("container") for x in vc.leftovers(cluster_id))
        assert any(x.startswith("network") for x in vc.leftovers(cluster_id))
    finally:
        proc.send_signal(signal.SIGKILL)   # no atexit: only the watchdog can clean up
        proc.wait(10)
    deadline = time.monotonic() + 60
    while vc.leftovers(cluster_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vc.leftovers(cluster_id) == [], "the watchdog removed the nodes and the network"
