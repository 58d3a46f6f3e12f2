"""The durability experiments on real brokers (the matrix and the kill demo on brokers of their own)."""

from __future__ import annotations

import os

import pytest

from helpers import images, start_backend
from voicelab.lab import deprecations, durability


def test_mandatory_returns_what_is_otherwise_confirmed_and_dropped(any_broker) -> None:
    out = durability.mandatory_demo(any_broker)
    assert out["mandatory=False"].startswith("confirmed") and out["mandatory=True"].startswith("returned: 312")


def test_quorum_queue_has_no_transient_flavour(any_broker) -> None:
    out = deprecations.declare_outcome(any_broker, "test.dur.q", durable=False, arguments={"x-queue-type": "quorum"})
    # 406 (a channel error): a quorum queue must be durable. Upstream 4.3 denies transient non-exclusive queues
    # and checks that first: 541, and the broker closes the connection.
    assert not out.accepted, out
    assert str(out) == deprecations.upstream_transient_queue(any_broker.version_info, quorum=True), out


def test_delivery_count_header_by_version(any_broker) -> None:
    counts = durability.delivery_counts(any_broker, requeues=2, queue="test.dur.counts")
    assert [int(c) for c in counts[1:]] == [1, 2]
    assert counts[0] == (0 if any_broker.version_info < (4, 0) else None)


@pytest.mark.parametrize("strategy", durability.STRATEGIES)
def test_publish_cost_is_a_positive_rate(any_broker, strategy) -> None:
    assert durability.publish_cost(any_broker, strategy, 200, queue="test.dur.cost") > 0


@pytest.mark.parametrize("strategy", durability.STRATEGIES)
def test_each_timed_strategy_puts_exactly_n_messages_in_the_queue(any_broker, strategy) -> None:
    """What the cost figures time is real work: every strategy's n publishes are in the queue when the clock stops."""
    queue = "test.dur.timed"
    with any_broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True)
        try:
            assert durability.time_publishes(any_broker, queue, 200, strategy) > 0
            assert channel.queue_declare(queue, passive=True).method.message_count == 200
        finally:
            channel.queue_delete(queue)


def test_publish_cost_rejects_unknown_strategy(any_broker) -> None:
    with pytest.raises(ValueError, match="strategy"):
        durability.publish_cost(any_broker, "fast", 10)


def _matrix_images() -> list[str]:
    """Notebook 05 asserts the matrix on the newest image and on the local 3.10 node in every CI run; here the
    versions in between (VOICELAB_ALL_VERSIONS=1: every image)."""
    every = images()
    if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" or len(every) < 3:
        return every
    return every[1:-1]


@pytest.mark.parametrize("image", _matrix_images())
def test_matrix_durable_persistent_survives_restart_and_kill(image) -> None:
    broker = start_backend("container", image)
    try:
        m = durability.survival_matrix(broker, 50, prefix="test.matrix").set_index(["event", "queue", "message"])
        for event in durability.EVENTS:
            assert m.loc[(event, "classic durable", "persistent"), "survived"] == 50
            assert m.loc[(event, "classic durable", "transient"), "survived"] == 0
            assert m.loc[(event, "quorum", "persistent"), "survived"] == 50
            assert m.loc[(event, "quorum", "transient"), "survived"] == 50, "quorum queues store every message"
    finally:
        broker.stop()


@pytest.mark.parametrize("image", images())
def test_kill_with_confirms_loses_nothing_confirmed(image) -> None:
    broker = start_backend("container", image)
    try:
        out = durability.publish_through_kill(broker, 8000, confirms=True)
        assert out["lost"] == 0 and out["present"] == 8000
    finally:
        broker.stop()


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
