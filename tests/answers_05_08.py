"""Learners' answers to the exercises of chapters 05, 06 and 08: sound ones and wrong ones, as people write them.

Each function is an answer a learner could paste into the notebook; ``tests/test_checkers_05_08.py`` runs the
checkers on them. The docstring says why it is sound or what is wrong with it.
"""

from __future__ import annotations

import time

import pika
import pika.exceptions

from voicelab.jobs import BadJob, VoiceJob

# -- ch06: retry_policy(channel, method, properties, body, process, max_attempts) ---------------------------


def _dlq(channel, method, body, reason, headers=None, key="reason"):
    channel.basic_publish("", method.routing_key + ".dlq", body,
                          pika.BasicProperties(delivery_mode=2, headers={**(headers or {}), key: reason}))


def ch06_republish_own_header(channel, method, properties, body, process, max_attempts):
    """Sound: the count travels in a header of a copy it publishes (its own name), copy first, then ack."""
    attempt = int((properties.headers or {}).get("tries", 0)) + 1
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, f"gave up after {attempt}: {e}")
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"tries": attempt}))
        channel.basic_ack(method.delivery_tag)
        return
    channel.basic_ack(method.delivery_tag)


def ch06_x_reason(channel, method, properties, body, process, max_attempts):
    """Sound: as above, but the dead letter's reason header is called ``x-reason`` (the text asks for a name that
    contains "reason")."""
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    try:
        job = VoiceJob.from_json(body)
        process(job)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}", key="x-reason")
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, str(e), key="x-reason")
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))
    channel.basic_ack(method.delivery_tag)


def ch06_delayed(channel, method, properties, body, process, max_attempts, delays=(0.7, 1.4)):
    """Sound: the chapter's "delayed" strategy, TTL wait queues named after the work queue (0.7 s, then 1.4 s),
    declared on first use; the broker dead-letters an expired copy back to the work queue."""
    queue = method.routing_key
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, f"failed {attempt} times: {e}")
        else:
            tier = min(attempt - 1, len(delays) - 1)
            wait = f"{queue}.wait.{tier}"
            channel.queue_declare(wait, durable=True, arguments={
                "x-message-ttl": int(delays[tier] * 1000), "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue})
            channel.basic_publish("", wait, body, pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))
        channel.basic_ack(method.delivery_tag)
        return
    channel.basic_ack(method.delivery_tag)


def ch06_ack_then_republish(channel, method, properties, body, process, max_attempts):
    """Wrong: acks first, then publishes the retry copy: a crash between the two loses the job."""
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    channel.basic_ack(method.delivery_tag)
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        return
    try:
        process(job)
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, str(e))
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))


def ch06_retries_poison(channel, method, properties, body, process, max_attempts):
    """Wrong: treats a BadJob like any failure: the poison message is retried max_attempts times first."""
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    try:
        process(VoiceJob.from_json(body))
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, str(e))
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))
    channel.basic_ack(method.delivery_tag)


def ch06_memory_counter(channel, method, properties, body, process, max_attempts, _seen={}):
    """Wrong: attempts counted in the worker's memory (a default-argument dict) with nack/requeue: right with one
    worker, lost at a restart and not shared by a fleet."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        _seen[body] = _seen.get(body, 0) + 1
        if _seen[body] >= max_attempts:
            _dlq(channel, method, body, str(e), key="Failure-Reason")
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_nack(method.delivery_tag, requeue=True)
        return
    channel.basic_ack(method.delivery_tag)


ATTEMPTS_SEEN: dict[str, int] = {}


def ch06_global_counter(channel, method, properties, body, process, max_attempts):
    """Wrong: attempts counted in a module-level dict by job id, retried by republishing an unchanged copy."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        ATTEMPTS_SEEN[job.job_id] = ATTEMPTS_SEEN.get(job.job_id, 0) + 1
        if ATTEMPTS_SEEN[job.job_id] >= max_attempts:
            _dlq(channel, method, body, str(e))
        else:
            channel.basic_publish("", method.routing_key, body, pika.BasicProperties(delivery_mode=2))
    channel.basic_ack(method.delivery_tag)


def ch06_nack_requeue(channel, method, properties, body, process, max_attempts):
    """Wrong: basic_nack(requeue=True) on every failure, no count at all."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception:
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    channel.basic_ack(method.delivery_tag)


def ch06_quorum_count(channel, method, properties, body, process, max_attempts):
    """Wrong here: the quorum strategy (x-delivery-count, reject with requeue) on the checker's classic queue,
    which has no delivery count: the job that always fails is retried forever."""
    failures = int((properties.headers or {}).get("x-delivery-count", 0))
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        if failures + 1 >= max_attempts:
            _dlq(channel, method, body, str(e))
            channel.basic_ack(method.delivery_tag)
        else:
            channel.basic_reject(method.delivery_tag, requeue=True)
        return
    channel.basic_ack(method.delivery_tag)


def ch06_one_too_many(channel, method, properties, body, process, max_attempts):
    """Wrong: off by one, gives up only after max_attempts *failures* plus one more try."""
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        _dlq(channel, method, body, f"poison: {e}")
        channel.basic_ack(method.delivery_tag)
        return
    try:
        process(job)
    except Exception as e:
        if attempt > max_attempts:
            _dlq(channel, method, body, str(e))
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))
    channel.basic_ack(method.delivery_tag)


def ch06_ack_then_dead_letter(channel, method, properties, body, process, max_attempts):
    """Wrong: right retries (copy, then ack), but a poison message is acked before its dead letter is published."""
    attempt = int((properties.headers or {}).get("attempt", 0)) + 1
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        channel.basic_ack(method.delivery_tag)
        _dlq(channel, method, body, f"poison: {e}")
        return
    try:
        process(job)
    except Exception as e:
        if attempt >= max_attempts:
            _dlq(channel, method, body, str(e))
        else:
            channel.basic_publish("", method.routing_key, body,
                                  pika.BasicProperties(delivery_mode=2, headers={"attempt": attempt}))
    channel.basic_ack(method.delivery_tag)


def ch06_bare_except_ack(channel, method, properties, body, process, max_attempts):
    """Sound: copy first, then ack; a bare ``except:`` acks whatever escaped (a kill too), but a killed worker's
    later calls have no effect, as for a real killed process."""
    try:
        ch06_republish_own_header(channel, method, properties, body, process, max_attempts)
    except:  # noqa: E722 - the learner's bare except
        channel.basic_ack(method.delivery_tag)


# -- ch08: worker(channel, method, properties, body, process, results) --------------------------------------


def ch08_reject_poison(channel, method, properties, body, process, results):
    """Sound: poison rejected without requeue (the queue's dead-letter exchange takes it); ack after apply."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


_BATCH = {"n": 0}


def ch08_batched_acks(channel, method, properties, body, process, results):
    """Sound: acks every third delivery at once (multiple=True, a batch smaller than the prefetch of 5); the
    last partial batch is unacked when the checker stops: redelivered, it would be applied once."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, process(job))
    _BATCH["n"] += 1
    if _BATCH["n"] % 3 == 0:
        channel.basic_ack(method.delivery_tag, multiple=True)


def ch08_envelope(channel, method, properties, body, process, results):
    """Sound: poison dead-lettered inside a JSON envelope that records the reason and the body (base64)."""
    import base64
    import json
    try:
        job = VoiceJob.from_json(body)
    except BadJob as e:
        envelope = {"reason": str(e), "queue": method.routing_key, "body_b64": base64.b64encode(body).decode()}
        channel.confirm_delivery()
        channel.basic_publish("", method.routing_key + ".dlq", json.dumps(envelope).encode(),
                              pika.BasicProperties(delivery_mode=2, content_type="application/json"))
        channel.basic_ack(method.delivery_tag)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def ch08_nack_on_failure(channel, method, properties, body, process, results):
    """Sound: a failure of process is requeued (nack), poison rejected to the DLQ, ack after apply."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    try:
        result = process(job)
    except Exception:
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    results.apply(job.job_id, result)
    channel.basic_ack(method.delivery_tag)


def ch08_process_ack_store(channel, method, properties, body, process, results):
    """Wrong: processes, acks, *then* stores the result: a crash between the ack and the store loses the job."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    result = process(job)
    channel.basic_ack(method.delivery_tag)
    results.apply(job.job_id, result)


def ch08_ack_first_republish(channel, method, properties, body, process, results):
    """Wrong: acks first, then republishes the job in a bare ``except:`` if anything goes wrong (a kill too)."""
    channel.basic_ack(method.delivery_tag)
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_publish("", method.routing_key + ".dlq", body)
        return
    try:
        results.apply(job.job_id, process(job))
    except:  # noqa: E722 - the learner's bare except, which catches a kill too
        channel.basic_publish("", method.routing_key, body, pika.BasicProperties(delivery_mode=2))


def ch08_dead_letter_failures(channel, method, properties, body, process, results):
    """Wrong: every job whose processing raised goes to the DLQ: a passing failure kills a good job."""
    try:
        job = VoiceJob.from_json(body)
        result = process(job)
    except Exception:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, result)
    channel.basic_ack(method.delivery_tag)


def ch08_drops_failures(channel, method, properties, body, process, results):
    """Wrong: a failure of process is logged and the message acked: the job is never done."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    try:
        results.apply(job.job_id, process(job))
    except Exception:
        pass
    channel.basic_ack(method.delivery_tag)


def ch08_never_acks(channel, method, properties, body, process, results):
    """Wrong: stores every result but never acks (forgot): the worker stalls at the prefetch."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    results.apply(job.job_id, process(job))


def ch08_acks_poison(channel, method, properties, body, process, results):
    """Wrong: acks a poison message (drops it) instead of dead-lettering it."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_ack(method.delivery_tag)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def ch08_crashes_on_poison(channel, method, properties, body, process, results):
    """Wrong: acks after apply, but a BadJob escapes and kills the worker at every redelivery."""
    job = VoiceJob.from_json(body)
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


def ch08_requeues_poison(channel, method, properties, body, process, results):
    """Wrong: puts poison back in the queue, where it comes straight back."""
    try:
        job = VoiceJob.from_json(body)
    except BadJob:
        channel.basic_nack(method.delivery_tag, requeue=True)
        return
    results.apply(job.job_id, process(job))
    channel.basic_ack(method.delivery_tag)


# -- ch05: publish_all(broker, queue, bodies) -> the bodies the broker confirmed ------------------------------

PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
LOST = (pika.exceptions.AMQPError, OSError)


def _reconnect(broker, confirm=True):
    """A new connection and channel, retried while the broker is down."""
    for _ in range(300):
        try:
            connection = broker.connect(connection_attempts=1)
            channel = connection.channel()
            if confirm:
                channel.confirm_delivery()
            return connection, channel
        except LOST:
            time.sleep(0.1)
    raise RuntimeError("broker unreachable")


def ch05_confirm_each(broker, queue, bodies):
    """Sound: a confirm per message on a BlockingConnection; a nack is sent again; reconnects after the crash."""
    connection, channel = _reconnect(broker)
    confirmed = []
    for body in bodies:
        while True:
            try:
                channel.basic_publish("", queue, body, PERSISTENT, mandatory=True)
                confirmed.append(body)
                break
            except pika.exceptions.NackError:
                time.sleep(0.01)
            except (pika.exceptions.UnroutableError, *LOST):
                connection, channel = _reconnect(broker)
    connection.close()
    return confirmed


def ch05_transient(broker, queue, bodies):
    """Wrong: confirms and nacks handled, but the messages are transient: a crash loses the confirmed ones."""
    connection, channel = _reconnect(broker)
    confirmed = []
    for body in bodies:
        while True:
            try:
                channel.basic_publish("", queue, body)
                confirmed.append(body)
                break
            except pika.exceptions.NackError:
                time.sleep(0.01)
            except LOST:
                connection, channel = _reconnect(broker)
    connection.close()
    return confirmed


def ch05_ignores_nacks(broker, queue, bodies):
    """Wrong: confirms, but a nack is ignored and the body counted as sent."""
    connection, channel = _reconnect(broker)
    sent = []
    for body in bodies:
        while True:
            try:
                channel.basic_publish("", queue, body, PERSISTENT)
            except pika.exceptions.NackError:
                pass   # "it went out"
            except LOST:
                connection, channel = _reconnect(broker)
                continue
            sent.append(body)
            break
    connection.close()
    return sent


def ch05_drops_nacked(broker, queue, bodies):
    """Wrong: returns only what was acked, but never sends a nacked body again."""
    connection, channel = _reconnect(broker)
    confirmed = []
    for body in bodies:
        while True:
            try:
                channel.basic_publish("", queue, body, PERSISTENT)
                confirmed.append(body)
            except pika.exceptions.NackError:
                pass
            except LOST:
                connection, channel = _reconnect(broker)
                continue
            break
    connection.close()
    return confirmed


def ch05_forgets_confirm_after_reconnect(broker, queue, bodies):
    """Wrong: confirms on the first channel; the channel it opens after the crash is not in confirm mode."""
    connection, channel = _reconnect(broker)
    confirmed = []
    for body in bodies:
        while True:
            try:
                channel.basic_publish("", queue, body, PERSISTENT)
                confirmed.append(body)
                break
            except pika.exceptions.NackError:
                time.sleep(0.01)
            except LOST:
                connection, channel = _reconnect(broker, confirm=False)   # forgot confirm_delivery()
    connection.close()
    return confirmed


def ch05_without_confirms(broker, queue, bodies):
    """Wrong: no confirms; reconnects after the crash and believes every publish that returned was sent."""
    connection, channel = _reconnect(broker, confirm=False)
    sent = []
    for body in bodies:
        try:
            channel.basic_publish("", queue, body, PERSISTENT)
            sent.append(body)
        except LOST:
            connection, channel = _reconnect(broker, confirm=False)
    try:
        connection.close()
    except LOST:
        pass
    return sent


def ch05_fast_window(broker, queue, bodies):
    """Sound and fast: voicelab's asynchronous publisher with a window of 1000 unconfirmed messages."""
    from voicelab.publishing import ReliablePublisher
    report = ReliablePublisher(broker.parameters(), window=1000, deadline=60).publish(queue, bodies,
                                                                                    properties=PERSISTENT)
    return [bodies[i] for i in report.confirmed]


# -- how the tests judge a checker's verdict ---------------------------------------------------------

def stub(*args):
    """A learner's unsolved stub (any chapter's signature)."""
    raise NotImplementedError


def fails(exercise, answer, *words):
    """Run ``answer``; it must fail, and its message must contain every one of ``words``."""
    result = exercise.run(answer)
    assert not result.passed and result.attempted, result.message
    missing = [w for w in words if w not in result.message]
    assert not missing, f"{answer.__name__}: {missing} not in: {result.message}"


def passes(exercise, answer):
    result = exercise.run(answer)
    assert result.passed, f"{getattr(answer, '__name__', answer)}: {result.message}"
    return result.message
