"""Every exercise: its reference passes its checker on the broker; a stub and known-wrong answers fail."""

from __future__ import annotations

import json

import pika
import pytest

from voicelab.exercises import ch00, ch01, ch02, ch03


def _stub(channel, queue, job):
    raise NotImplementedError


def _no_properties(channel, queue, job):
    channel.basic_publish("", queue, job.to_json())


def _transient(channel, queue, job):
    channel.basic_publish("", queue, job.to_json(), pika.BasicProperties(content_type="application/json"))


def _twice(channel, queue, job):
    for _ in range(2):
        ch00.enqueue_job(channel, queue, job)


def _wrong_queue(channel, queue, job):
    ch00.enqueue_job(channel, "elsewhere", job)


def _str_body(channel, queue, job):
    channel.basic_publish("", queue, str(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def _crashes(channel, queue, job):
    json.dumps(job)  # a VoiceJob is not JSON-serializable as is


def test_ch00_reference_passes(as_shared) -> None:
    result = ch00.q1.run(ch00.enqueue_job)
    assert result.passed, result.message


def test_ch00_stub_is_reported_not_raised(as_shared) -> None:
    result = ch00.q1.run(_stub)
    assert not result.passed and not result.attempted and "not solved yet" in result.message


@pytest.mark.parametrize("wrong, says", [
    (_no_properties, "content_type"), (_transient, "delivery_mode"), (_twice, "exactly once"),
    (_wrong_queue, "no message"), (_str_body, "not JSON"), (_crashes, "TypeError"), (42, "pass your function"),
])
def test_ch00_wrong_answers_fail_with_a_reason(as_shared, wrong, says) -> None:
    result = ch00.q1.run(wrong)
    assert not result.passed and says in result.message, result.message


def test_check_prints_the_verdict(as_shared, capsys) -> None:
    ch00.q1.check(ch00.enqueue_job)
    assert "✓" in capsys.readouterr().out
    ch00.q1.hint()
    assert "basic_publish" in capsys.readouterr().out


# -- ch01: topic routing ------------------------------------------------------------------

def _direct_exchange(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="direct", durable=True)
    for queue, key in [("english", "en.high"), ("urgent", "en.high"), ("all", "en.low")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, key)


def _star_for_all(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "*")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, key)


def _missing_queue(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)


# -- ch02: acks ---------------------------------------------------------------------------

def _ack_first(channel, method, properties, body, process):
    channel.basic_ack(method.delivery_tag)
    try:
        process(json.loads(body))
    except Exception:
        pass


def _requeue_failures(channel, method, properties, body, process):
    try:
        process(json.loads(body))
        channel.basic_ack(method.delivery_tag)
    except Exception:
        channel.basic_nack(method.delivery_tag, requeue=True)


def _never_acks(channel, method, properties, body, process):
    try:
        process(json.loads(body))
    except Exception:
        channel.basic_reject(method.delivery_tag, requeue=False)


# -- ch03: prefetch -----------------------------------------------------------------------

@pytest.mark.parametrize("exercise, reference, wrongs", [
    (ch01.q1, ch01.setup_routing, [(_direct_exchange, "did not get"), (_star_for_all, "did not get"),
                                   (_missing_queue, "does not exist")]),
    (ch02.q1, ch02.on_message, [(_ack_first, "dead-letter queue should hold"),
                                (_requeue_failures, "requeued"), (_never_acks, "neither acked")]),
    (ch03.q1, ch03.plan, [(lambda s, t: {"consumers": 4, "prefetch": 0}, "took too much"),
                          (lambda s, t: {"consumers": 1, "prefetch": 1}, "the target is"),
                          (lambda s, t: {"consumers": 20, "prefetch": 1}, "from 1 to 8"),
                          (lambda s, t: (4, 1), "exactly the keys")]),
], ids=["ch01", "ch02", "ch03"])
def test_reference_passes_stub_and_wrong_answers_fail(as_shared, exercise, reference, wrongs) -> None:
    result = exercise.run(reference)
    assert result.passed, result.message
    assert not exercise.run(lambda *args: _stub(None, None, None)).attempted
    for wrong, says in wrongs:
        result = exercise.run(wrong)
        assert not result.passed and says in result.message, result.message
