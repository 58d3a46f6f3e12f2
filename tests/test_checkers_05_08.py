"""The checkers of chapters 05-08 (confirms through a crash, retries, alert rules, the capstone worker).

Each chapter's reference passes its checker, a stub is reported, not raised, known-wrong answers (the source
guide's among them) fail with a reason, other sound answers pass, and no ``check.*`` queue is left behind.
ch05's checker kills a broker of the test's own; the others run on the shared broker.
"""

from __future__ import annotations

import time

import pika

from helpers import newest_backend, scratch_leftovers
from voicelab.exercises import ch05, ch06, ch08
from voicelab.lab.guide_patterns import guide_retry_callback


def _stub(*args):
    """A learner's unsolved stub (any chapter's signature)."""
    raise NotImplementedError


# -- ch05: a publisher that guarantees delivery (the checker kills a broker of its own) -------

def _publish_without_confirms(broker, queue, bodies):
    """Known wrong: no confirms; reconnects after the crash and believes every publish that returned was sent."""
    sent = []
    connection = broker.connect()
    channel = connection.channel()
    for body in bodies:
        try:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
            sent.append(body)
        except (pika.exceptions.AMQPError, OSError):
            for _ in range(200):
                try:
                    connection = broker.connect(connection_attempts=1)
                    channel = connection.channel()
                    break
                except (pika.exceptions.AMQPError, OSError):
                    time.sleep(0.1)
    connection.close()
    return sent


def test_ch05_reference_passes_stub_unattempted_unconfirmed_fails(fresh_broker) -> None:
    ch05.use_broker(fresh_broker(*newest_backend()))  # one broker for the three runs, killed by each
    try:
        result = ch05.q1.run(ch05.publish_all)
        assert result.passed, result.message
        assert not ch05.q1.run(_stub).attempted
        result = ch05.q1.run(_publish_without_confirms)
        assert not result.passed and "not in the queue after the crash" in result.message, result.message
    finally:
        ch05.use_broker(None)


# -- ch06: a retry policy that counts (good, flaky, doomed and poison jobs on the shared broker) ------------

def _guide_header_counter(channel, method, properties, body, process, max_attempts):
    """Known wrong: the guide's answer, mutating properties.headers and nacking with requeue."""
    guide_retry_callback(channel, method, properties, body)


def _memory_counter(channel, method, properties, body, process, max_attempts, _seen={}):
    """A sound (if fragile: counts die with the process) answer: attempts counted in memory by message body."""
    from voicelab.jobs import BadJob, VoiceJob
    dlq = method.routing_key + ".dlq"
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        channel.basic_publish("", dlq, body, pika.BasicProperties(headers={"reason": f"poison: {e}"}))
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        _seen[body] = _seen.get(body, 0) + 1
        if _seen[body] >= max_attempts:
            channel.basic_publish("", dlq, body, pika.BasicProperties(headers={"Failure-Reason": str(e)}))
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
        return
    channel.basic_ack(method.delivery_tag)


def _no_reason(channel, method, properties, body, process, max_attempts):
    """Known wrong: dead-letters with basic_reject(requeue=False): right place, but no reason header."""
    from voicelab.retry import ATTEMPT
    from voicelab.jobs import BadJob, VoiceJob
    attempt = int((properties.headers or {}).get(ATTEMPT, 0)) + 1
    try:
        process(VoiceJob.from_json(body))
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    except Exception:
        if attempt >= max_attempts:
            channel.basic_reject(method.delivery_tag, requeue=False)
        else:
            channel.basic_publish("", method.routing_key, body, pika.BasicProperties(headers={ATTEMPT: attempt}))
            channel.basic_ack(method.delivery_tag)
        return
    channel.basic_ack(method.delivery_tag)


def test_ch06_reference_and_sound_answers_pass_stub_and_wrong_answers_fail(as_shared) -> None:
    for answer in (ch06.retry_policy, _memory_counter):
        result = ch06.q1.run(answer)
        assert result.passed, result.message
    assert not ch06.q1.run(_stub).attempted
    result = ch06.q1.run(_guide_header_counter)
    assert not result.passed and "loop forever" in result.message and "properties.headers" in result.message, \
        result.message
    result = ch06.q1.run(_no_reason)
    assert not result.passed and "no reason" in result.message, result.message
    assert scratch_leftovers(as_shared) == []


# -- ch08: a worker that loses nothing --------------------------------------------------------------

def _reject_poison(channel, method, properties, body, process, results):
    """Sound: poison rejected without requeue (the queue's dead-letter exchange takes it); ack after apply."""
    from voicelab.jobs import BadJob, VoiceJob
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def _crashes_on_poison(channel, method, properties, body, process, results):
    """Known wrong: acks after apply, but a BadJob escapes and kills the worker at every redelivery."""
    from voicelab.jobs import VoiceJob
    job = VoiceJob.from_json(body)
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def _requeues_poison(channel, method, properties, body, process, results):
    """Known wrong: puts poison back in the queue, where it comes straight back."""
    from voicelab.jobs import BadJob, VoiceJob
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def test_ch08_reference_and_sound_fixes_pass(as_shared) -> None:
    for answer in (ch08.worker, _reject_poison):
        result = ch08.q1.run(answer)
        assert result.passed, result.message
        assert "none lost" in result.message and "2 worker crashes" in result.message, result.message
    assert scratch_leftovers(as_shared) == []


def test_ch08_stub_is_reported_not_raised(as_shared) -> None:
    def worker(channel, method, properties, body, process, results):
        raise NotImplementedError

    assert not ch08.q1.run(worker).attempted
    assert scratch_leftovers(as_shared) == []


def test_ch08_rejects_the_fragile_worker_because_it_loses_jobs(as_shared) -> None:
    result = ch08.q1.run(ch08.fragile_worker)
    assert not result.passed and "2 of 40 jobs were lost" in result.message, result.message
    assert "Ack only after results.apply" in result.message


def test_ch08_rejects_workers_that_mishandle_poison(as_shared) -> None:
    result = ch08.q1.run(_crashes_on_poison)
    assert not result.passed and "died" in result.message and "BadJob" in result.message, result.message
    result = ch08.q1.run(_requeues_poison)
    assert not result.passed and "never settled" in result.message, result.message
    assert scratch_leftovers(as_shared) == []
