"""The three-node cluster of notebook 09 (voicelab.broker.cluster): start, join, kill, restart, teardown, no leaks.

Both backends: containers of one image on a Docker network (``container_cluster``), and private rabbitmq-server
nodes (``local_cluster``), which ``start_cluster`` falls back to by the rules of ``start_broker``.

Each test that starts nodes is slow, so there are few of them. Containers, on the newest image (like every test of
voicelab's own mechanics; ``VOICELAB_ALL_VERSIONS=1`` runs the life cycle on every image): a life cycle, an
interrupted start, an owner killed with SIGKILL (the watchdog's case). Local nodes: a life cycle started through
``start_cluster``'s fallback (when Docker answers), and the watchdog's case. Notebook 09 runs the same modules on
the image of ``VOICELAB_RABBITMQ_IMAGE`` (CI: run it once on 3.10 as well), or on local nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pika
import pytest
from helpers import images, require

from voicelab import broker as vb
from voicelab.broker import cluster as vc
from voicelab.broker import container_cluster as vcc
from voicelab.broker import local_cluster as vlc
from voicelab.broker import obtain, reaper
from voicelab.broker.base import run_id


def test_parameters_list_every_node_in_order_each_tried_once() -> None:
    c = vcc.ContainerCluster("some/image", size=3)
    for i, node in enumerate(c.nodes):
        node.port = 10001 + i
    params = c.parameters()
    assert [p.port for p in params] == [10001, 10002, 10003]
    assert all(p.host == "127.0.0.1" and p.connection_attempts == 1 for p in params)
    assert [p.port for p in c.parameters([c.nodes[2], 0], heartbeat=5)] == [10003, 10001]
    assert c.parameters(heartbeat=5)[0].heartbeat == 5
    assert [n.node for n in c.nodes] == [f"rabbit@voicelab-{c.id[:8]}-n{i}" for i in (1, 2, 3)]
    assert c.node("n2") is c.nodes[1] and c.node(c.nodes[2].node) is c.nodes[2]
    assert c.kind == "3 containers of some/image"
    with pytest.raises(ValueError):
        vcc.ContainerCluster("some/image", size=0)
    local = vlc.LocalCluster(size=2, server="/nowhere/rabbitmq-server")   # nothing starts
    assert [n.node for n in local.nodes] == [f"voicelab-{local.id[:8]}-n{i}@localhost" for i in (1, 2)]
    assert local.node("n2") is local.nodes[1] and local.kind == "2 local rabbitmq-server nodes"


def test_labels_carry_the_cluster_and_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_RUN_ID", "abc123")
    labels = vcc.cluster_labels("cid")
    assert labels == {vcc.CLUSTER_LABEL: "cid", "org.voicelab.owner-pid": str(os.getpid()),
                      "org.voicelab.run-id": "abc123"}


@pytest.mark.parametrize("docker, server, env, image, want", [
    (True, True, {}, None, ("container", True)),                    # Docker answers: containers, local if need be
    (True, False, {}, None, ("container", False)),                  # nothing to fall back to
    (True, True, {}, "voicelab/rabbitmq:4.3", ("container", False)),            # an image named: that one
    (True, True, {"VOICELAB_RABBITMQ_IMAGE": "x/y:1"}, None, ("container", False)),
    (False, True, {}, None, ("local", False)),                      # no Docker: local nodes
    (False, True, {"VOICELAB_RABBITMQ_IMAGE": "x/y:1"}, None, ("local", False)),  # as start_broker does
    (True, True, {"VOICELAB_BACKEND": "local"}, None, ("local", False)),          # forced: that one
    (False, True, {"VOICELAB_BACKEND": "container"}, None, ("container", False)),
    (True, True, {"VOICELAB_AMQP_URL": "amqp://x"}, None, ("container", True)),   # a cluster is always started
])
def test_start_cluster_chooses_like_start_broker(docker: bool, server: bool, env: dict[str, str], image: str | None,
                                                 want: tuple[str, bool], monkeypatch: pytest.MonkeyPatch) -> None:
    """The choice only (no broker): the Docker probe and the rabbitmq-server search are faked."""
    for name in ("VOICELAB_AMQP_URL", "VOICELAB_BACKEND", "VOICELAB_RABBITMQ_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(obtain, "docker_engine", lambda: (docker, "28.0" if docker else "no Docker engine answers"))
    monkeypatch.setattr(obtain, "find_rabbitmq_server", lambda: "/usr/sbin/rabbitmq-server" if server else None)
    assert vb.choose_cluster_backend("auto", image) == want
    assert vb.choose_cluster_backend("local") == ("local", False)


def test_start_cluster_without_any_backend_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VOICELAB_BACKEND", raising=False)
    monkeypatch.setattr(obtain, "docker_engine", lambda: (False, "no Docker engine answers"))
    monkeypatch.setattr(obtain, "find_rabbitmq_server", lambda: None)
    with pytest.raises(vb.BrokerUnavailable) as e:
        vb.start_cluster()
    assert all(way in str(e.value) for way in ("VOICELAB_AMQP_URL", "Docker", "rabbitmq-server"))
    monkeypatch.setenv("VOICELAB_BACKEND", "rabbit")
    with pytest.raises(ValueError, match="'rabbit'"):
        vb.start_cluster()
    with pytest.raises(ValueError, match="'url'"):
        vb.start_cluster(backend="url")


def _host_ports(node: vcc.ContainerClusterNode) -> list[tuple[str, str]]:
    bound = node._container().attrs["HostConfig"]["PortBindings"]
    return [(b["HostIp"], b["HostPort"]) for spec in bound.values() for b in spec]


def _lifecycle_images() -> list[str]:
    return images() if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" else images()[-1:]


@pytest.mark.parametrize("image", _lifecycle_images())
def test_three_nodes_join_lose_one_get_it_back_and_leave_nothing(image: str) -> None:
    require("container")
    cluster = vcc.ContainerCluster(image).start()
    try:
        names = sorted(n.node for n in cluster.nodes)
        for node in cluster.nodes:   # one cluster: every node sees all three
            assert cluster.running_nodes(via=node) == names
            assert all(ip == "127.0.0.1" for ip, _ in _host_ports(node)), "ports on loopback only"
            labels = node._container().labels
            assert labels[vcc.CLUSTER_LABEL] == cluster.id and labels.get("org.voicelab.run-id", "") == run_id()
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
    assert cluster.leftovers() == [] and vcc.leftovers(cluster.id) == [], "no container or network left"
    cluster.stop()   # twice is fine


def test_an_interrupted_start_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    require("container")
    cluster = vcc.ContainerCluster(images()[-1], size=1)

    def interrupted(self: vc.Cluster, timeout: float = 60.0) -> None:
        assert cluster.leftovers(), "the node and the network exist by now"
        raise KeyboardInterrupt   # Ctrl-C while the nodes form the cluster

    monkeypatch.setattr(vc.Cluster, "wait_formed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cluster.start()
    assert cluster.leftovers() == []


def test_the_watchdog_removes_the_cluster_of_a_killed_owner() -> None:
    require("container")
    code = textwrap.dedent(f"""
        import sys, time
        from voicelab.broker.container_cluster import ContainerCluster
        c = ContainerCluster({images()[-1]!r}, size=1).start()
        print(c.id, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        cluster_id = (proc.stdout.readline() if proc.stdout else "").strip()
        assert cluster_id, "the owner started its cluster"
        assert any(x.startswith("container") for x in vcc.leftovers(cluster_id))
        assert any(x.startswith("network") for x in vcc.leftovers(cluster_id))
    finally:
        proc.send_signal(signal.SIGKILL)   # no atexit: only the watchdog can clean up
        proc.wait(10)
    deadline = time.monotonic() + 60
    while vcc.leftovers(cluster_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vcc.leftovers(cluster_id) == [], "the watchdog removed the nodes and the network"


def _bound_addresses(node: vlc.LocalClusterNode) -> set[str]:
    """The addresses the node's AMQP, management, Prometheus and Erlang distribution ports listen on (``ss``; the
    management API reports ``::`` for HTTP listeners bound to 127.0.0.1 on 3.10)."""
    ports = {node.port, node.management_port, node.prometheus_port, node.dist_port}
    out = subprocess.run(["ss", "-Htln"], capture_output=True, text=True, check=True).stdout
    local = [line.split()[3] for line in out.splitlines() if len(line.split()) > 3]
    found = {addr.rsplit(":", 1)[0] for addr in local if int(addr.rsplit(":", 1)[1]) in ports}
    return found


def test_local_nodes_join_lose_one_get_it_back_and_leave_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """start_cluster() as a learner without a usable image calls it: Docker (when it answers) cannot provide the
    default image, so three local nodes stand in, with a warning; then the container test's life cycle."""
    require("local")
    for name in ("VOICELAB_AMQP_URL", "VOICELAB_BACKEND", "VOICELAB_RABBITMQ_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(vcc, "DEFAULT_IMAGE", "voicelab/no-such-image:0.0")   # missing, and no registry has it
    docker = vb.docker_engine()[0]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        cluster = vb.start_cluster()
    fallbacks = [str(w.message) for w in said if issubclass(w.category, vb.BackendFallback)]
    try:
        assert isinstance(cluster, vlc.LocalCluster) and cluster.kind == "3 local rabbitmq-server nodes"
        if docker:
            assert fallbacks == [cluster.notice], "said once, and kept"
            assert cluster.notice.startswith("Docker could not provide voicelab/no-such-image:0.0 (")
        else:
            assert fallbacks == [] and cluster.notice == ""
        assert cluster.formed_s is not None and cluster.formed_s < 120
        names = sorted(n.node for n in cluster.nodes)
        assert names == [f"voicelab-{cluster.id[:8]}-n{i}@localhost" for i in (1, 2, 3)]
        for node in cluster.nodes:   # one cluster: every node sees all three
            assert cluster.running_nodes(via=node) == names
            if shutil.which("ss"):
                assert _bound_addresses(node) == {"127.0.0.1"}, "every port (Erlang distribution too) on loopback"
            cookie = Path(node.dir or "", ".erlang.cookie")
            assert cookie.stat().st_mode & 0o777 == 0o400 and cookie.read_text() == cluster._cookie
        with cluster.nodes[0].connect() as connection:
            connection.channel().queue_declare("t.quorum", durable=True, arguments={"x-queue-type": "quorum"})
        assert sorted(cluster.queue("t.quorum")["members"]) == names, "a quorum queue has a member on each node"

        victim = cluster.nodes[2]
        group = victim._proc.pid if victim._proc else 0
        killed_at = victim.kill()
        assert killed_at <= time.monotonic() and not victim.running and not reaper.alive(group, group=True)
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
        groups = [n._proc.pid for n in cluster.nodes if n._proc]
        folders = [n.dir for n in cluster.nodes if n.dir]
        t0 = time.monotonic()
        cluster.stop()
        stop_s = time.monotonic() - t0
    assert cluster.leftovers() == [], "no node process or folder left"
    assert len(groups) == 3 and not any(reaper.alive(g, group=True) for g in groups), "every process group ended"
    assert len(folders) == 3 and not any(f.exists() for f in folders), "every node's folder deleted"
    cluster.stop()   # twice is fine
    print(f"3 local nodes: formed in {cluster.formed_s:.1f} s, stopped in {stop_s:.1f} s")   # -rP shows it


def test_the_watchdogs_remove_the_local_nodes_of_a_killed_owner() -> None:
    require("local")
    code = textwrap.dedent("""
        import time
        from voicelab.broker.local_cluster import LocalCluster
        c = LocalCluster(size=2).start()
        print(c.id, flush=True)
        time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        cluster_id = (proc.stdout.readline() if proc.stdout else "").strip()
        assert cluster_id, "the owner started its cluster"
        found = vlc.leftovers(cluster_id)
        assert len([x for x in found if x.startswith("process")]) == 2, found
        assert len([x for x in found if x.startswith("folder")]) == 2, found
    finally:
        proc.send_signal(signal.SIGKILL)   # no atexit: only the watchdogs can clean up
        proc.wait(10)
    deadline = time.monotonic() + 60
    while vlc.leftovers(cluster_id) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert vlc.leftovers(cluster_id) == [], "the watchdogs killed both nodes and deleted their folders"
