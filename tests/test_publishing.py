"""The reliable publisher on real brokers: confirms, returns, the deadline, and a kill in the middle of a run."""

from __future__ import annotations

import threading
import time
import uuid

import pika
import pytest

from helpers import images, start_backend
from voicelab.lab.durability import wait_metadata_flush
from voicelab.jobs import VoiceJob
from voicelab.publishing import BrokerGone, PublishFailed, ReliablePublisher, publish_confirmed
from voicelab.queues import drain, publish_job


def _queue(channel) -> str:
    name = f"test.pub.{uuid.uuid4().hex[:8]}"
    channel.queue_declare(name, durable=True)
    return name


def _bodies_in(channel, queue: str) -> list[bytes]:
    return [m.body for m in drain(channel, queue)]


def test_every_body_confirmed_and_in_the_queue(any_broker, channel) -> None:
    queue = _queue(channel)
    bodies = [str(i).encode() for i in range(2000)]
    report = ReliablePublisher(any_broker.parameters(), window=50).publish(queue, bodies)
    assert sorted(report.confirmed) == list(range(2000)) and report.unconfirmed == []
    assert sorted(_bodies_in(channel, queue), key=int) == bodies
    channel.queue_delete(queue)


@pytest.mark.parametrize("form", ["url string", "pika.URLParameters"])
def test_an_amqp_url_or_url_parameters_are_accepted(any_broker, channel, form) -> None:
    queue = _queue(channel)
    parameters = any_broker.amqp_url if form == "url string" else pika.URLParameters(any_broker.amqp_url)
    report = ReliablePublisher(parameters).publish(queue, [b"a", b"b"])
    assert report.unconfirmed == [] and _bodies_in(channel, queue) == [b"a", b"b"]
    channel.queue_delete(queue)


@pytest.mark.parametrize("parameters", [("127.0.0.1", 5672), "localhost:5672"])
def test_parameters_of_another_kind_are_refused_naming_them(parameters) -> None:
    with pytest.raises(ValueError, match="parameters"):
        ReliablePublisher(parameters)  # type: ignore[arg-type]


def test_publish_job_refuses_a_channel_without_confirms(any_broker, channel) -> None:
    """Without confirms a job for a missing queue would vanish: publish_job refuses before publishing."""
    job = VoiceJob.new("audio/a.wav", 1)
    with pytest.raises(ValueError, match="confirm_delivery"):
        publish_job(channel, "no.such.queue", job)
    queue = _queue(channel)
    with pytest.raises(ValueError, match="not in confirm mode"):
        publish_job(channel, queue, job)
    assert _bodies_in(channel, queue) == [], "nothing was published"
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        publish_job(channel, "no.such.queue", job)   # in confirm mode: the loss is an error
    publish_job(channel, queue, job)
    assert _bodies_in(channel, queue) == [job.to_json()]
    channel.queue_delete(queue)


def test_batch_mode_never_has_more_than_a_window_outstanding(any_broker, channel) -> None:
    queue = _queue(channel)
    pub = ReliablePublisher(any_broker.parameters(), window=10, batch=True)
    seen = []
    original = pub._pump

    def spy() -> None:
        original()
        seen.append(len(pub._outstanding))

    pub._pump = spy  # type: ignore[method-assign]
    report = pub.publish(queue, [b"x"] * 95)
    assert len(report.confirmed) == 95 and max(seen) <= 10
    channel.queue_delete(queue)


def test_returned_messages_are_republished_then_reported(any_broker) -> None:
    pub = ReliablePublisher(any_broker.parameters(), max_returns=3, retry_delay=0.05)
    with pytest.raises(PublishFailed, match="returned 3 times") as info:
        pub.publish("no.such.queue", [b"x"])
    assert info.value.report.attempts == [3] and info.value.report.returned == 3


def test_publish_confirmed_raises_on_unroutable_with_mandatory(channel) -> None:
    with pytest.raises(pika.exceptions.UnroutableError):
        publish_confirmed(channel, "no.such.queue", b"x", mandatory=True)


@pytest.mark.parametrize("kwargs, word", [({"window": 0}, "window"), ({"deadline": -1}, "deadline"),
                                           ({"window": 2.5}, "window"), ({"max_returns": 0}, "max_returns")])
def test_bad_arguments_name_themselves(kwargs, word) -> None:
    with pytest.raises(ValueError, match=word):
        ReliablePublisher("amqp://guest:guest@127.0.0.1:1/%2F", **kwargs)


def test_killed_mid_run_every_confirmed_message_is_there() -> None:
    """kill -9 during the run; all bodies confirmed, all there, resends counted. The publisher's mechanics, on the
    newest image: test_durability's kill test runs a confirmed publishing run through a kill on every version."""
    broker = start_backend("container", images()[-1])
    try:
        with broker.connect() as connection:
            queue = _queue(connection.channel())
        wait_metadata_flush(time.monotonic())  # the queue itself must survive the kill on 3.10 and 4.0
        n = 10000
        pub = ReliablePublisher(broker.parameters(), window=100, deadline=60)

        def killer() -> None:
            while len(getattr(pub, "report", None).confirmed if hasattr(pub, "report") else []) < n // 4:
                time.sleep(0.001)
            broker.kill()
            time.sleep(0.5)
            broker.start()

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        report = pub.publish(queue, [str(i).encode() for i in range(n)])
        thread.join(60)
        assert report.reconnects >= 1, "the broker was killed: the publisher must have reconnected"
        with broker.connect() as connection:
            got = _bodies_in(connection.channel(), queue)
        assert {int(b) for b in got} >= set(report.confirmed) and len(report.confirmed) == n
        assert len(got) - len(set(got)) <= report.republished, "duplicates come only from resent messages"
    finally:
        broker.stop()


def test_broker_gone_past_the_deadline_raises(any_broker) -> None:
    params = pika.ConnectionParameters(host="127.0.0.1", port=1, connection_attempts=1)  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(BrokerGone, match="deadline=1 s") as info:
        ReliablePublisher(params, deadline=1, retry_delay=0.1).publish("q", [b"x", b"y"])
    assert 1 <= time.monotonic() - t0 < 10 and info.value.report.unconfirmed == [0, 1]


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
