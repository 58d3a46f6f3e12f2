"""Retries that really count, and poison messages that go straight to the dead-letter queue.

The guide counts retries by changing ``properties.headers`` of a received
message and calling ``basic_nack(requeue=True)``: the broker redelivers its own
copy, the count stays 0 and the loop never ends (:mod:`voicelab.lab.guide_patterns`
runs it). Three ways that work, one :class:`RetryPolicy` each:

- ``"republish"``: publish a *copy* of the failed message with the header
  ``voicelab-attempt`` incremented, wait for the broker's confirm, *then* ack
  the original. A crash between the two leaves both (at-least-once), never none.
- ``"delayed"``: the same copy goes to a per-tier wait queue
  ``<queue>.retry.<n>`` whose ``x-message-ttl`` is the tier's delay and whose
  dead-letter exchange (the default exchange, routing key ``<queue>``) sends
  it back when it expires: exponential backoff without a timer in the worker.
  The broker records each expiry in the ``x-death`` header (queue, reason
  ``expired``, time), which :func:`deaths` reads.
- ``"quorum"``: a quorum queue with ``x-delivery-limit`` counts deliveries
  itself (``x-delivery-count``) and dead-letters a message after the limit; the
  worker rejects with ``basic_reject(requeue=True)``, which every version
  counts (RabbitMQ 4.3 does not count ``basic_nack``).

Whatever the policy, a **poison** message (not JSON, or not a valid
:class:`voicelab.jobs.VoiceJob`: :class:`voicelab.jobs.BadJob`) is never
retried: it is published to ``<queue>.dlq`` with the reason in the header
``voicelab-reason`` (confirmed), then acked. Header names do not start with
``x-``: since 3.13 RabbitMQ treats ``x-`` headers as the broker's own.

Example::

    from voicelab.broker import shared_broker
    from voicelab.queues import publish_bodies
    broker = shared_broker()
    policy = RetryPolicy("delayed", max_attempts=4, delays=(0.1, 0.2, 0.4))
    with broker.connect() as connection:
        channel = connection.channel()
        declare_retry_queue(channel, "voice_jobs06", policy)
        publish_bodies(channel, "voice_jobs06", [VoiceJob.new("audio/a.wav", 1), b"not json"])
        channel.basic_consume("voice_jobs06", lambda ch, method, props, body: handle_delivery(
            ch, "voice_jobs06", method, props, body, lambda job, attempt: None, policy))
        channel.start_consuming()   # each delivery: done / retry / poison / dead-lettered
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from .jobs import BadJob, VoiceJob, job_id_of
from .queues import confirm_mode, declare_job_queue, delete_job_queue, dlq_name

__all__ = ["ATTEMPT", "FIRST_FAILURE", "ORIGIN", "REASON", "STRATEGIES", "RetryPolicy", "TransientError",
           "attempts_so_far", "backoff", "dead_letter", "deaths", "declare_retry_queue", "delete_retry_queue",
           "handle_delivery", "job_key", "republish", "tier_name"]

ATTEMPT = "voicelab-attempt"             # failed attempts before this delivery (absent: none)
REASON = "voicelab-reason"               # why the last attempt failed, or why the message is in the DLQ
FIRST_FAILURE = "voicelab-first-failure"  # unix time (s) of the first failure
ORIGIN = "voicelab-queue"                # the work queue a dead letter came from
STRATEGIES = ("republish", "delayed", "quorum")
BROKER_HEADERS = ("x-death", "x-first-death-reason", "x-first-death-queue", "x-first-death-exchange",
                  "x-last-death-reason", "x-last-death-queue", "x-last-death-exchange",
                  "x-delivery-count", "x-acquired-count")
"""Headers the broker sets: dropped from a copy the client publishes (the broker owns ``x-`` headers)."""


class TransientError(Exception):
    """A failure worth retrying (a slow service, a timeout). Any exception but :class:`BadJob` is treated so."""


def backoff(base: float, factor: float = 2.0, count: int = 3) -> tuple[float, ...]:
    """Exponential delays: ``base``, ``base*factor``, ... (``count`` of them).

    >>> backoff(0.1, 2, 4)
    (0.1, 0.2, 0.4, 0.8)
    >>> backoff(0, 2, 1)
    Traceback (most recent call last):
    ...
    ValueError: base must be > 0 seconds, got 0
    """
    if not base > 0:
        raise ValueError(f"base must be > 0 seconds, got {base!r}")
    if not factor >= 1:
        raise ValueError(f"factor must be >= 1, got {factor!r}")
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"count must be an int >= 1, got {count!r}")
    return tuple(round(base * factor ** i, 6) for i in range(count))


@dataclass(frozen=True)
class RetryPolicy:
    """How a worker retries: ``strategy`` (one of :data:`STRATEGIES`), at most ``max_attempts`` attempts in all.

    ``delays`` (seconds) are the waits before attempts 2, 3, ... of the
    ``"delayed"`` strategy, one wait queue per tier; the last tier repeats when
    there are more attempts than tiers.

    >>> RetryPolicy("delayed", max_attempts=4, delays=(0.1, 0.2)).delay_before(4)
    0.2
    >>> RetryPolicy("forever")
    Traceback (most recent call last):
    ...
    ValueError: strategy must be one of ('republish', 'delayed', 'quorum'), got 'forever'
    >>> RetryPolicy(max_attempts=0)
    Traceback (most recent call last):
    ...
    ValueError: max_attempts must be an int >= 1, got 0
    """

    strategy: str = "republish"
    max_attempts: int = 4
    delays: tuple[float, ...] = field(default=(0.1, 0.2, 0.4))

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not isinstance(self.max_attempts, int) or isinstance(self.max_attempts, bool) or self.max_attempts < 1:
            raise ValueError(f"max_attempts must be an int >= 1, got {self.max_attempts!r}")
        delays = tuple(self.delays)
        if not delays or any(not (isinstance(d, (int, float)) and d > 0) for d in delays):
            raise ValueError(f"delays must be a non-empty list of seconds > 0, got {self.delays!r}")
        object.__setattr__(self, "delays", delays)

    def delay_before(self, attempt: int) -> float:
        """Seconds the ``"delayed"`` strategy waits before attempt number ``attempt`` (2 or more)."""
        if attempt < 2:
            raise ValueError(f"attempt must be >= 2 (the first attempt does not wait), got {attempt!r}")
        return self.delays[min(attempt - 2, len(self.delays) - 1)]


def tier_name(queue: str, tier: int) -> str:
    """Name of the wait queue of retry tier ``tier`` (0 = the first, shortest delay).

    >>> tier_name("voice_jobs", 0)
    'voice_jobs.retry.0'
    """
    return f"{queue}.retry.{tier}"


# ---------------------------------------------------------------------------
# Topology
# ---------------------------------------------------------------------------

def declare_retry_queue(channel: BlockingChannel, queue: str, policy: RetryPolicy) -> None:
    """Declare ``queue`` and its dead-letter queue ``<queue>.dlq`` for ``policy`` (plus its wait queues).

    - ``"republish"``: a durable classic queue.
    - ``"delayed"``: the same, plus one durable wait queue per tier:
      ``x-message-ttl`` = the tier's delay in ms, ``x-dead-letter-exchange`` = ``""``
      (the default exchange) and ``x-dead-letter-routing-key`` = ``queue``: an expired
      message goes back to the work queue. A queue-wide TTL (not per-message) keeps
      the wait queue in expiry order: RabbitMQ expires messages only at a queue's head.
    - ``"quorum"``: a quorum queue with ``x-delivery-limit`` = ``max_attempts - 1``
      (RabbitMQ dead-letters a message returned more than that many times) and
      the DLQ as its dead-letter target.

    Example::

        declare_retry_queue(channel, "voice_jobs", RetryPolicy("delayed", delays=(1, 5, 25)))
    """
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    if not isinstance(policy, RetryPolicy):
        raise ValueError(f"policy must be a RetryPolicy, got {policy!r}")
    if policy.strategy == "quorum":
        declare_job_queue(channel, queue, arguments={"x-queue-type": "quorum",
                                                     "x-delivery-limit": policy.max_attempts - 1})
        return
    declare_job_queue(channel, queue)
    if policy.strategy == "delayed":
        for tier, delay in enumerate(policy.delays):
            channel.queue_declare(tier_name(queue, tier), durable=True, arguments={
                "x-message-ttl": int(round(delay * 1000)),
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": queue,
            })


def delete_retry_queue(channel: BlockingChannel, queue: str, policy: RetryPolicy | None = None,
                       tiers: int = 8) -> None:
    """Delete ``queue``, its DLQ and its wait queues (``policy``'s tiers, or up to ``tiers`` of them)."""
    delete_job_queue(channel, queue)
    for tier in range(len(policy.delays) if policy else tiers):
        channel.queue_delete(tier_name(queue, tier))


# ---------------------------------------------------------------------------
# Reading what a delivery carries
# ---------------------------------------------------------------------------

def job_key(properties: pika.BasicProperties | None, body: bytes) -> str:
    """A name for the job a message carries: its ``job_id``, else its ``message_id``, else the body's start.

    >>> job_key(None, b'{"job_id": "j1", "blob_key": "k", "user_id": 1}'), job_key(None, b"not json")
    ('j1', "b'not json'")
    """
    job_id = job_id_of(body)
    if job_id is not None:
        return job_id
    if properties is not None and properties.message_id:
        return str(properties.message_id)
    return repr(body[:24])


def _headers(properties: pika.BasicProperties | None) -> dict[str, Any]:
    return dict((properties.headers or {}) if properties is not None else {})


def attempts_so_far(properties: pika.BasicProperties, strategy: str = "republish") -> int:
    """Failed attempts before this delivery: ``voicelab-attempt``, or, on a quorum queue, ``x-delivery-count``.

    >>> attempts_so_far(pika.BasicProperties(headers={"voicelab-attempt": 2}))
    2
    >>> attempts_so_far(pika.BasicProperties(), "quorum")   # 4.x leaves the header out on a first delivery
    0
    """
    headers = _headers(properties)
    raw = headers.get("x-delivery-count" if strategy == "quorum" else ATTEMPT) or 0
    return int(raw)


def _unix(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.replace(tzinfo=value.tzinfo or timezone.utc).timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    return None


def deaths(properties: pika.BasicProperties) -> list[dict[str, Any]]:
    """The broker's ``x-death`` entries: one per (queue, reason), with ``count`` and ``time`` (unix s).

    >>> deaths(pika.BasicProperties(headers={"x-death": [{"queue": "q.retry.0", "reason": "expired", "count": 1}]}))
    [{'queue': 'q.retry.0', 'reason': 'expired', 'count': 1, 'time': None, 'exchange': None}]
    """
    out = []
    for entry in _headers(properties).get("x-death") or []:
        out.append({"queue": _text(entry.get("queue")), "reason": _text(entry.get("reason")),
                    "count": int(entry.get("count") or 0), "time": _unix(entry.get("time")),
                    "exchange": _text(entry.get("exchange"))})
    return out


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _copy_properties(properties: pika.BasicProperties, headers: dict[str, Any]) -> pika.BasicProperties:
    """``properties`` with ``headers`` (the broker's ``x-`` headers removed), persistent."""
    clean = {k: v for k, v in headers.items() if k not in BROKER_HEADERS}
    return pika.BasicProperties(**{**vars(properties), "headers": clean,
                                   "delivery_mode": pika.DeliveryMode.Persistent.value})


# ---------------------------------------------------------------------------
# The moves: republish a copy, dead-letter with a reason (both confirmed before the ack)
# ---------------------------------------------------------------------------

def republish(channel: BlockingChannel, routing_key: str, method: Any, properties: pika.BasicProperties,
              body: bytes, failures: int, reason: str) -> None:
    """Publish a copy of the delivery to ``routing_key`` with ``voicelab-attempt = failures``, confirmed; then ack.

    ``channel`` is put in confirm mode: ``basic_publish`` returns only once the
    broker has the copy (and raises if it refused it or could not route it), so
    the original is acked only when the copy is safe.
    """
    headers = _headers(properties)
    headers[ATTEMPT] = failures
    headers[REASON] = reason[:200]
    headers.setdefault(FIRST_FAILURE, int(time.time()))
    confirm_mode(channel)
    channel.basic_publish("", routing_key, body, _copy_properties(properties, headers), mandatory=True)
    channel.basic_ack(method.delivery_tag)


def dead_letter(channel: BlockingChannel, queue: str, method: Any, properties: pika.BasicProperties, body: bytes,
                reason: str, attempts: int) -> None:
    """Publish the delivery to ``<queue>.dlq`` with ``voicelab-reason``, ``voicelab-queue`` and
    ``voicelab-attempt`` set, confirmed; then ack the original."""
    headers = _headers(properties)
    headers[REASON] = reason[:200]
    headers[ORIGIN] = queue
    headers[ATTEMPT] = attempts
    headers.setdefault(FIRST_FAILURE, int(time.time()))
    confirm_mode(channel)
    channel.basic_publish("", dlq_name(queue), body, _copy_properties(properties, headers), mandatory=True)
    channel.basic_ack(method.delivery_tag)


Handler = Callable[[VoiceJob, int], Any]
"""``handler(job, attempt)`` does the work; raising :class:`BadJob` means poison, any other exception: retry."""


def handle_delivery(channel: BlockingChannel, queue: str, method: Any, properties: pika.BasicProperties,
                    body: bytes, handler: Handler, policy: RetryPolicy) -> dict[str, Any]:
    """Parse, run ``handler``, and settle one delivery according to ``policy``; return what happened.

    Outcomes: ``"done"`` (acked), ``"poison"`` (to the DLQ at once, with its
    reason), ``"retry"`` (a copy republished, or on a quorum queue rejected with
    requeue), ``"dead-lettered"`` (``max_attempts`` used: to the DLQ with the
    last error). On a quorum queue the broker itself dead-letters a message past
    its delivery limit: the worker only ever sees ``"retry"`` for it.
    """
    failures = attempts_so_far(properties, policy.strategy)
    attempt = failures + 1
    event: dict[str, Any] = {"job": job_key(properties, body), "attempt": attempt, "error": ""}
    try:
        job = VoiceJob.from_message(properties, body)
        handler(job, attempt)
    except BadJob as e:
        dead_letter(channel, queue, method, properties, body, f"poison: {e}", attempt)
        return {**event, "outcome": "poison", "error": str(e)}
    except Exception as e:  # noqa: BLE001 - any other failure is worth a retry
        error = f"{type(e).__name__}: {e}"
        event["error"] = error
        if policy.strategy == "quorum":
            channel.basic_reject(method.delivery_tag, requeue=True)   # the broker counts and enforces the limit
            return {**event, "outcome": "retry"}
        if attempt >= policy.max_attempts:
            dead_letter(channel, queue, method, properties, body,
                        f"failed {attempt} attempts, last: {error}", attempt)
            return {**event, "outcome": "dead-lettered"}
        target = queue if policy.strategy == "republish" else tier_name(queue, min(failures, len(policy.delays) - 1))
        republish(channel, target, method, properties, body, attempt, error)
        return {**event, "outcome": "retry", "to": target}
    channel.basic_ack(method.delivery_tag)
    return {**event, "outcome": "done"}
