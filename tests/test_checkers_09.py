"""The checker of chapter 09 (a pipeline that survives the loss of a node), on a three-node cluster of its own.

The reference passes, a stub is reported as not attempted, and each known-wrong design fails for its own reason:
a classic queue, clients that know one address, a publisher without confirms. Each run kills a node; the cluster
is whole again after each (the checker starts the node again) and no ``check.*`` queue is left behind.
"""

from __future__ import annotations

import time

import pika
import pytest
import requests
from helpers import images, require

from voicelab.broker.cluster import Cluster
from voicelab.broker.container_cluster import ContainerCluster
from voicelab.exercises import ch09

LOST = (pika.exceptions.AMQPError, OSError)


@pytest.fixture(scope="module")
def cluster():
    require("container")
    c = ContainerCluster(images()[-1]).start()
    ch09.use_cluster(c)
    try:
        yield c
    finally:
        ch09.use_cluster(None)
        c.stop()
        assert c.leftovers() == []


def _scratch(cluster: Cluster) -> list[str]:
    node = cluster.nodes[1]
    r = requests.get(f"{node.management_url}/api/queues?columns=name", auth=("guest", "guest"), timeout=5)
    return [q["name"] for q in r.json() if q["name"].startswith("check.")]


def _whole(cluster: Cluster) -> bool:
    return all(n.running for n in cluster.nodes) and len(cluster.running_nodes()) == 3


class OneAddress(ch09.Pipeline):
    """Known wrong: quorum queue and confirms, but every connection to addresses[0] only (retried forever)."""

    def publish(self, addresses, queue, jobs):
        super().publish(addresses[:1], queue, jobs)

    def work(self, addresses, queue, results, process, stop):
        super().work(addresses[:1], queue, results, process, stop)


class NoConfirms(ch09.Pipeline):
    """Known wrong: quorum queue and failover, but publishes never confirmed (it believes each sent one)."""

    def publish(self, addresses, queue, jobs):
        todo = iter(jobs)
        body = next(todo, None)
        while body is not None:
            try:
                with pika.BlockingConnection(addresses) as connection:
                    ch = connection.channel()
                    while body is not None:
                        ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                        body = next(todo, None)
            except LOST:
                addresses = addresses[1:] + addresses[:1]
                time.sleep(0.2)


class Stub:
    def declare(self, channel, queue):
        raise NotImplementedError

    def publish(self, addresses, queue, jobs):
        raise NotImplementedError

    def work(self, addresses, queue, results, process, stop):
        raise NotImplementedError


def test_reference_passes_and_stub_is_not_attempted(cluster: Cluster) -> None:
    result = ch09.q1.run(ch09.Pipeline)
    assert result.passed, result.message
    assert "every job applied once" in result.message
    assert _whole(cluster) and _scratch(cluster) == []
    stub = ch09.q1.run(Stub)
    assert not stub.passed and not stub.attempted


def test_a_classic_queue_fails(cluster: Cluster) -> None:
    result = ch09.q1.run(ch09.FragilePipeline)
    assert not result.passed and "classic queue" in result.message, result.message
    assert _whole(cluster) and _scratch(cluster) == []


def test_clients_with_one_address_fail(cluster: Cluster) -> None:
    result = ch09.q1.run(OneAddress)
    assert not result.passed and "did not reconnect to another node" in result.message, result.message
    assert _whole(cluster) and _scratch(cluster) == []


def test_a_publisher_without_confirms_fails(cluster: Cluster) -> None:
    result = ch09.q1.run(NoConfirms)
    assert not result.passed and "confirm mode" in result.message, result.message
    assert _whole(cluster) and _scratch(cluster) == []


def test_without_a_cluster_the_checker_says_so() -> None:
    ch09.use_cluster(None)
    result = ch09.q1.run(ch09.Pipeline)
    assert not result.passed and "use_cluster" in result.message
