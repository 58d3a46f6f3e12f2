"""The checkers of chapters 00-04 (enqueue, topic routing, acks, prefetch, fleet) on the shared broker.

Each chapter's reference passes its checker, a stub is reported, not raised, known-wrong answers fail with a
reason, other sound answers pass, and no checker leaves a ``check.*`` queue or exchange behind.
"""

from __future__ import annotations

import json

import pika
import pytest

from helpers import scratch_leftovers
from voicelab.exercises import ch00, ch01, ch02, ch03, ch04


class _Boom(Exception):
    pass


# -- ch00: enqueue a job ------------------------------------------------------------------

def _stub(*args):
    """A learner's unsolved stub (any chapter's signature)."""
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


def _closes_channel(channel, queue, job):
    ch00.enqueue_job(channel, queue, job)
    channel.close()


def _unconfirmed(channel, queue, job):
    """Known wrong: right body and properties, but no confirm mode and not mandatory (notebook 00 c06: unsafe)."""
    channel.basic_publish("", queue, json.dumps(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def _confirmed_not_mandatory(channel, queue, job):
    """Known wrong: confirm mode, but a message no queue takes is confirmed and dropped without mandatory=True."""
    channel.confirm_delivery()
    _unconfirmed(channel, queue, job)


def _mandatory_unconfirmed(channel, queue, job):
    """Known wrong: mandatory, but without confirm mode the returned message never reaches the caller."""
    channel.basic_publish("", queue, json.dumps(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2), mandatory=True)


def test_ch00_reference_passes(as_shared) -> None:
    result = ch00.q1.run(ch00.enqueue_job)
    assert result.passed, result.message


def test_ch00_stub_is_reported_not_raised(as_shared) -> None:
    result = ch00.q1.run(_stub)
    assert not result.passed and not result.attempted and "not solved yet" in result.message


@pytest.mark.parametrize("wrong, says", [
    (_no_properties, "content_type"), (_transient, "delivery_mode"), (_twice, "exactly once"),
    (_wrong_queue, "no message"), (_str_body, "not JSON"), (_crashes, "TypeError"), (42, "pass your function"),
    (_closes_channel, "closed the channel"), (_unconfirmed, "not in confirm mode"),
    (_confirmed_not_mandatory, "mandatory=True"), (_mandatory_unconfirmed, "not in confirm mode"),
])
def test_ch00_wrong_answers_fail_with_a_reason(as_shared, wrong, says) -> None:
    result = ch00.q1.run(wrong)
    assert not result.passed and says in result.message, result.message


def test_check_prints_the_verdict_and_hint_prints_a_hint(as_shared, capsys) -> None:
    ch00.q1.check(ch00.enqueue_job)
    assert "✓" in capsys.readouterr().out
    ch00.q1.hint(1)
    assert "default exchange" in capsys.readouterr().out
    ch00.q1.hint(len(ch00.q1.hints))
    assert "basic_publish" in capsys.readouterr().out, "the last hint gives the key call"


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


def _transient_queues(channel, exchange):
    """Known wrong: the right routing, on queues a restart deletes."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "#")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=False)
        channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


def _transient_exchange(channel, exchange):
    channel.exchange_declare(exchange, exchange_type="topic", durable=False)
    for queue, key in [("english", "en.*"), ("urgent", "*.high"), ("all", "#")]:
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


def _explicit_keys(channel, exchange):
    """Known wrong: every key the notebook ever showed, bound by name instead of with wildcards."""
    channel.exchange_declare(exchange, exchange_type="topic", durable=True)
    langs, prios = ("en", "de", "fr", "es", "pt-br"), ("high", "low")
    bindings = {"english": [f"en.{p}" for p in prios], "urgent": [f"{lang}.high" for lang in langs],
                "all": [f"{lang}.{p}" for lang in langs for p in prios]}
    for queue, keys in bindings.items():
        channel.queue_declare(f"{exchange}.{queue}", durable=True)
        for key in keys:
            channel.queue_bind(f"{exchange}.{queue}", exchange, routing_key=key)


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


def _raises_in_callback(channel, method, properties, body, process):
    raise _Boom("the callback crashed")


# -- ch01-ch04: reference, stub, known-wrong answers (ch03: prefetch, ch04: fleet, inline) ---

@pytest.mark.parametrize("exercise, reference, wrongs", [
    (ch01.q1, ch01.setup_routing, [(_direct_exchange, "did not get"), (_star_for_all, "did not get"),
                                   (_missing_queue, "does not exist"), (_transient_queues, "not durable"),
                                   (_transient_exchange, "not durable"), (_explicit_keys, "made up the language")]),
    (ch02.q1, ch02.on_message, [(_ack_first, "acked before process() finished"),
                                (_requeue_failures, "requeued"), (_never_acks, "neither acked"),
                                (_raises_in_callback, "_Boom")]),
    (ch03.q1, ch03.plan, [(lambda s, t: {"consumers": 4, "prefetch": 0}, "handed it its share"),
                          (lambda s, t: {"consumers": 4, "prefetch": 30}, "handed it its share"),
                          (lambda s, t: {"consumers": 6, "prefetch": 40}, "handed it its share"),
                          (lambda s, t: {"consumers": 1, "prefetch": 1}, "the target is"),
                          (lambda s, t: {"consumers": 20, "prefetch": 1}, "from 1 to 8"),
                          (lambda s, t: (4, 1), "exactly the keys")]),
    (ch04.q1, ch04.size_fleet, [(lambda s, t, c: {"processes": 1, "threads": 10, "prefetch": 1}, "At most 1 job"),
                                (lambda s, t, c: {"processes": min(8, 2 * c), "threads": 4, "prefetch": 4},
                                 "connections to the broker"),
                                (lambda s, t, c: {"processes": 1, "threads": 0, "prefetch": 1}, "target"),
                                (lambda s, t, c: {"processes": 99, "threads": 1, "prefetch": 1},
                                 "processes must be")]),
], ids=["ch01", "ch02", "ch03", "ch04"])
def test_reference_passes_stub_and_wrong_answers_fail(as_shared, exercise, reference, wrongs) -> None:
    result = exercise.run(reference)
    assert result.passed, result.message
    assert not exercise.run(_stub).attempted
    for wrong, says in wrongs:
        result = exercise.run(wrong)
        assert not result.passed and says in result.message, result.message


@pytest.mark.parametrize("exercise, sound", [
    (ch03.q1, lambda s, t: {"consumers": 6, "prefetch": 1}),   # all attached before publishing: none starved
    (ch03.q1, lambda s, t: {"consumers": 8, "prefetch": 1}),
    (ch03.q1, lambda s, t: {"consumers": 3, "prefetch": 1}),
    (ch04.q1, lambda s, t, c: {"processes": 2, "threads": 5, "prefetch": 5}),
    (ch04.q1, lambda s, t, c: {"processes": 1, "threads": 32, "prefetch": 40}),
], ids=["ch03-6x1", "ch03-8x1", "ch03-3x1", "ch04-2x5", "ch04-1x32"])
def test_other_sound_answers_pass(as_shared, exercise, sound) -> None:
    result = exercise.run(sound)
    assert result.passed, result.message


def test_checkers_leave_no_scratch_queue_or_exchange_behind(as_shared) -> None:
    """Right, wrong and crashing answers to chapters 00-03: nothing named ``check.*`` remains afterwards."""
    assert scratch_leftovers(as_shared) == []
    for exercise, answer in [(ch00.q1, ch00.enqueue_job), (ch00.q1, _crashes), (ch00.q1, _closes_channel),
                             (ch01.q1, _direct_exchange), (ch01.q1, lambda c, e: (_direct_exchange(c, e), 1 / 0)),
                             (ch02.q1, _raises_in_callback), (ch02.q1, _never_acks),
                             (ch03.q1, lambda s, t: {"consumers": 2, "prefetch": 1})]:
        result = exercise.run(answer)
        assert scratch_leftovers(as_shared) == [], (exercise.key, result.message)
