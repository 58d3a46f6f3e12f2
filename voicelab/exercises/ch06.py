"""Exercises of notebook 06 (retries and dead letters).

q1: write ``retry_policy(channel, method, properties, body, process, max_attempts)``,
called for every delivery of a work queue ``method.routing_key`` that has a
dead-letter queue ``<queue>.dlq``. It must:

- parse the body (``VoiceJob.from_json``); a poison message (``BadJob``) goes to
  the DLQ at once, with a header whose name contains ``reason``;
- call ``process(job)``; on success, ack;
- on failure (``process`` raises), try again, up to ``max_attempts`` calls of
  ``process`` in all for that job, then put the message in the DLQ with a
  ``reason`` header.

The checker publishes good, transiently failing and poison jobs and one that
always fails, consumes with your function (channel in confirm mode, prefetch 1)
and checks each outcome: done after 1 call; done after exactly N calls; poison
in the DLQ after no call, with its reason; the always-failing job in the DLQ
after exactly ``max_attempts`` calls, with its reason; nothing left, nothing twice.

Example (in the notebook, after writing ``retry_policy``)::

    from voicelab.exercises import ch06
    ch06.q1.check(retry_policy)     # pass, or what is wrong and a hint
    ch06.q1.hint()
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Callable

import pika

from ..broker import shared_broker
from ..jobs import VoiceJob
from ..queues import dlq_name, drain
from ..retry import RetryPolicy, handle_delivery
from .core import Exercise, Wrong, scratch_queue

MAX_ATTEMPTS = 3
CAP = 40   # deliveries after which the checker stops a loop that never ends


def retry_policy(channel: Any, method: Any, properties: pika.BasicProperties, body: bytes,
                 process: Callable[[VoiceJob], Any], max_attempts: int) -> None:
    """Reference solution of q1: republish a copy with an attempt header (confirmed), then ack; see voicelab.retry."""
    queue = method.routing_key
    policy = RetryPolicy("republish", max_attempts=max_attempts)
    handle_delivery(channel, queue, method, properties, body, lambda job, attempt: process(job), policy)


class Flaky(Exception):
    """What the checker's ``process`` raises for a job that is set to fail (a transient error)."""


def _reason(headers: dict[str, Any]) -> str:
    for key, value in headers.items():
        if "reason" in str(key).lower() and not str(key).startswith("x-") and value:   # x-: the broker's, not yours
            return str(value)
    return ""


def _check_retry_policy(fn: Callable[..., Any]) -> str:
    broker = shared_broker()
    good, flaky, doomed = (VoiceJob.new(f"audio/{name}.wav", i) for i, name in enumerate(["good", "flaky", "doomed"]))
    fails = {flaky.job_id: MAX_ATTEMPTS - 1, doomed.job_id: 10 ** 6}
    poison = {b"this is not json": "not JSON", json.dumps({"job_id": "p2", "user_id": "seven"}).encode(): "bad fields"}
    calls: Counter[str] = Counter()

    def process(job: VoiceJob) -> dict[str, Any]:
        calls[job.job_id] += 1
        if calls[job.job_id] <= fails.get(job.job_id, 0):
            raise Flaky(f"the speech service timed out (call {calls[job.job_id]})")
        return {"job_id": job.job_id}

    with scratch_queue("retry", dead_letters=True, broker=broker) as queue, broker.connect() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for body in [good.to_json(), flaky.to_json(), doomed.to_json(), *poison]:
            channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2,
                                                                       content_type="application/json"))
        deliveries = _consume_until_quiet(connection, channel, queue, fn, process)
        reader = connection.channel()
        dead = [(m.body, dict(m.properties.headers or {})) for m in drain(reader, dlq_name(queue))]
        left = reader.queue_declare(queue, passive=True).method.message_count
    if deliveries > CAP:
        raise Wrong(f"the queue delivered more than {CAP} times for 5 jobs and never settled: your retries loop "
                    f"forever. Calls to process per job: {sorted(calls.values(), reverse=True)}. Headers you change "
                    f"on a received message (properties.headers[...] = ...) are your copy: basic_nack(requeue=True) "
                    f"redelivers the broker's unchanged message, so a count kept there stays 0")
    return _judge_retry_policy(calls, dead, left, good, flaky, doomed, poison)


def _consume_until_quiet(connection: Any, channel: Any, queue: str, fn: Callable[..., Any],
                         process: Callable[[VoiceJob], Any]) -> int:
    """Consume ``queue`` at prefetch 1 with ``fn`` until 0.6 s pass without a delivery, 8 s in all, or more than
    :data:`CAP` deliveries (a loop that never ends); how many deliveries came."""
    deliveries = [0]
    channel.basic_qos(prefetch_count=1)

    def on_message(ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        deliveries[0] += 1
        if deliveries[0] > CAP:
            return   # a loop that never ends: stop feeding it
        fn(ch, method, properties, body, process, MAX_ATTEMPTS)

    tag = channel.basic_consume(queue, on_message)
    t0 = last = time.monotonic()
    seen = 0
    while time.monotonic() - t0 < 8 and deliveries[0] <= CAP:
        connection.process_data_events(time_limit=0.05)
        if deliveries[0] != seen:
            seen, last = deliveries[0], time.monotonic()
        elif time.monotonic() - last > 0.6:
            break
    if channel.is_open:
        channel.basic_cancel(tag)
    return deliveries[0]


def _judge_retry_policy(calls: Counter[str], dead: list[tuple[bytes, dict[str, Any]]], left: int, good: VoiceJob,
                        flaky: VoiceJob, doomed: VoiceJob, poison: dict[bytes, str]) -> str:
    """The verdict on a run that settled: the pass message, or :class:`Wrong` with what went wrong."""
    dead_bodies = Counter(body for body, _ in dead)
    twice = [b for b, n in dead_bodies.items() if n > 1]
    if twice:
        raise Wrong(f"{len(twice)} message(s) are in the DLQ more than once: publish each dead letter once")
    for body, what in poison.items():
        if body not in dead_bodies:
            raise Wrong(f"the poison message ({what}: {body[:30]!r}) is not in the DLQ: a body VoiceJob.from_json "
                        f"refuses (BadJob) can never succeed; publish it to <queue>.dlq and ack it")
    for job, name, want in [(good, "good", 1), (flaky, "transiently failing", MAX_ATTEMPTS)]:
        if calls[job.job_id] != want:
            raise Wrong(f"the {name} job was processed {calls[job.job_id]} time(s), expected {want}"
                        + (" (it fails twice, then succeeds)" if want > 1 else ""))
        if job.to_json() in dead_bodies:
            raise Wrong(f"the {name} job ended in the DLQ although it succeeded")
    if calls[doomed.job_id] != MAX_ATTEMPTS:
        raise Wrong(f"the job that always fails was processed {calls[doomed.job_id]} time(s); with max_attempts="
                    f"{MAX_ATTEMPTS} it must be tried exactly {MAX_ATTEMPTS} times, then dead-lettered")
    if doomed.to_json() not in dead_bodies:
        raise Wrong(f"the job that always fails was tried {MAX_ATTEMPTS} times but is not in the DLQ "
                    f"({left} message(s) left in the work queue)")
    no_reason = [body[:30] for body, headers in dead if not _reason(headers)]
    if no_reason:
        raise Wrong(f"{len(no_reason)} dead letter(s) carry no reason (e.g. {no_reason[0]!r}): set a header whose name "
                    f"contains 'reason' (e.g. 'voicelab-reason') when you publish to the DLQ; the broker's "
                    f"x-first-death-reason says only 'rejected', not why the job failed")
    if left:
        raise Wrong(f"{left} message(s) are still in the work queue after the run: every delivery must end acked "
                    f"or in the DLQ")
    reason = next(_reason(headers) for body, headers in dead if body == doomed.to_json())
    return (f"good job done after 1 call, flaky job after {MAX_ATTEMPTS}, the failing one dead-lettered after "
            f"{MAX_ATTEMPTS} with reason {reason!r}, {len(poison)} poison messages dead-lettered at once.")


q1 = Exercise(
    "ch06.q1", "a retry policy that counts",
    _check_retry_policy,
    hints=[
        """A count you write into properties.headers of a message you received never reaches the broker:
        basic_nack(requeue=True) redelivers the broker's own copy. To carry a count, the count has to travel
        in a message the broker stores: a new one you publish.""",
        """On failure: read attempt = (properties.headers or {}).get("attempt", 0) + 1. If attempt < max_attempts,
        channel.basic_publish("", method.routing_key, body, pika.BasicProperties(delivery_mode=2,
        headers={..., "attempt": attempt}), mandatory=True) (the channel is in confirm mode: it returns once the
        broker has the copy; delivery_mode=2 makes the copy persistent, so a retried job survives a broker restart,
        as in notebook 05), then channel.basic_ack(method.delivery_tag). Otherwise publish to
        method.routing_key + ".dlq" with a "reason" header (persistent too), then ack. A BadJob from
        VoiceJob.from_json goes to the DLQ at once.""",
    ],
    solution=retry_policy,
)
