"""Dead-letter tooling: what is in a DLQ and why, replay after a fix, purge.

A message reaches ``<queue>.dlq`` two ways, and both are read here:

- published there by a worker (:func:`voicelab.retry.dead_letter`), with the
  headers ``voicelab-reason``, ``voicelab-queue``, ``voicelab-attempt`` and
  ``voicelab-first-failure``;
- dead-lettered by the broker (``basic_reject(requeue=False)``, a TTL, a
  quorum queue's delivery limit), with the broker's ``x-death`` entries and
  ``x-first-death-reason`` / ``x-first-death-queue``.

:func:`list_dead_letters` reads without removing anything (``basic_get``
without ack on a channel of its own, then closing it returns every message to
the DLQ, in order). :func:`replay` sends selected messages back to their work
queue with a fresh attempt count, confirmed before each is removed from the DLQ.
Each takes the work queue or its DLQ (:func:`voicelab.queues.dlq_name`).
From a shell: ``python -m voicelab dlq list|replay|purge QUEUE`` (``VOICELAB_AMQP_URL``).

Example::

    with broker.connect() as connection:
        channel = connection.channel()
        frame = dead_letter_frame(list_dead_letters(channel, "voice_jobs"))
        frame[["job", "reason", "queue", "attempts", "first_failure"]]
        replay(channel, "voice_jobs", jobs=["3f2a..."])   # after the fix: back to voice_jobs
        purge(channel, "voice_jobs")                       # what is left is not worth keeping
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable

import pandas as pd
import pika
from pika.adapters.blocking_connection import BlockingChannel

from .queues import confirm_mode, dlq_name
from .retry import ATTEMPT, BROKER_HEADERS, FIRST_FAILURE, ORIGIN, REASON, deaths, job_key

REPLAYED = "voicelab-replayed"   # how many times a message was replayed from the DLQ


def _work_queue(queue: str) -> str:
    """The work queue named by ``queue``, which may be the work queue or its DLQ (``<queue>.dlq``)."""
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    return queue.removesuffix(".dlq")


@dataclass
class DeadLetter:
    """One message in a DLQ and why it is there.

    ``reason``: the worker's ``voicelab-reason``, else the broker's first death
    reason (``rejected``, ``expired``, ``delivery_limit``, ``maxlen``).
    ``queue``: the work queue it came from. ``attempts``: the worker's count, else
    the broker's (``x-delivery-count`` + 1, or the ``rejected`` deaths).
    ``first_failure``: when it first failed (UTC), if known.
    """

    job: str
    reason: str
    queue: str
    attempts: int | None
    first_failure: datetime | None
    body: bytes = b""
    headers: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_message(cls, properties: pika.BasicProperties, body: bytes) -> "DeadLetter":
        """Read the reason, origin, attempts and first failure from a message's headers."""
        headers = dict(properties.headers or {})
        entries = deaths(properties)
        first = entries[-1] if entries else {}   # x-death: most recent first
        reason = headers.get(REASON) or _text(headers.get("x-first-death-reason")) or first.get("reason") or "unknown"
        queue = headers.get(ORIGIN) or _text(headers.get("x-first-death-queue")) or first.get("queue") or "unknown"
        attempts: int | None
        if headers.get(ATTEMPT) is not None:
            attempts = int(headers[ATTEMPT])
        elif headers.get("x-delivery-count") is not None:
            attempts = int(headers["x-delivery-count"]) + 1
        elif entries:
            attempts = sum(e["count"] for e in entries if e["reason"] == "rejected") or None
        else:
            attempts = None
        stamp = headers.get(FIRST_FAILURE)
        if stamp is None and entries:
            stamp = min((e["time"] for e in entries if e["time"] is not None), default=None)
        when = datetime.fromtimestamp(float(stamp), tz=timezone.utc) if stamp is not None else None
        return cls(job=job_key(properties, body), reason=str(_text(reason)), queue=str(queue),
                   attempts=attempts, first_failure=when, body=body, headers=headers)


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def list_dead_letters(channel: BlockingChannel, queue: str, limit: int = 1000) -> list[DeadLetter]:
    """Every message in the DLQ of ``queue`` (at most ``limit``), left in place.

    Reads on a channel of its own with ``basic_get`` and no ack, then closes
    that channel: the broker returns every message to the DLQ (marked
    redelivered). ``channel`` only provides the connection.
    """
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    dlq = dlq_name(_work_queue(queue))
    reader = channel.connection.channel()
    out: list[DeadLetter] = []
    try:
        while len(out) < limit:
            method, properties, body = reader.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            out.append(DeadLetter.from_message(properties, body))
    finally:
        if reader.is_open:
            reader.close()   # unacked: all go back to the DLQ
    # The broker requeues them after the close, asynchronously (seen: 0 ready just after, on 4.0.5 under load):
    # wait until they are back, so that whoever counts the DLQ next sees them all.
    deadline = time.monotonic() + 10
    while channel.queue_declare(dlq, passive=True).method.message_count < len(out) and time.monotonic() < deadline:
        time.sleep(0.02)
    return out


def dead_letter_frame(letters: Iterable[DeadLetter]) -> pd.DataFrame:
    """One row per dead letter: job, reason, queue, attempts, first_failure, size (bytes)."""
    rows = [{**{k: v for k, v in asdict(d).items() if k not in ("body", "headers")}, "size": len(d.body)}
            for d in letters]
    return pd.DataFrame(rows, columns=["job", "reason", "queue", "attempts", "first_failure", "size"])


def replay(channel: BlockingChannel, queue: str, jobs: Iterable[str] | None = None, *,
           to_queue: str | None = None, limit: int = 1000) -> int:
    """Send dead letters of ``queue`` back to work; return how many were replayed.

    ``jobs``: the job keys to replay (:attr:`DeadLetter.job`); None replays all.
    Each goes to ``to_queue`` (default: the queue it came from, else ``queue``)
    with its attempt count and reason removed and ``voicelab-replayed``
    incremented, confirmed by the broker *before* it is acked (removed) in the
    DLQ. The others stay in the DLQ.
    """
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if isinstance(jobs, str):
        raise ValueError(f"jobs must be a list of job keys, not one string: got {jobs!r}")
    wanted = None if jobs is None else set(jobs)
    home = _work_queue(queue)
    dlq = dlq_name(home)
    worker = channel.connection.channel()
    confirm_mode(worker)
    replayed = seen = 0
    try:
        while seen < limit:
            method, properties, body = worker.basic_get(dlq, auto_ack=False)
            if method is None:
                break
            seen += 1
            letter = DeadLetter.from_message(properties, body)
            if wanted is not None and letter.job not in wanted:
                continue   # stays unacked: back to the DLQ when this channel closes
            target = to_queue or (letter.queue if letter.queue != "unknown" else home)
            headers = {k: v for k, v in letter.headers.items()
                       if k not in (ATTEMPT, REASON, ORIGIN, FIRST_FAILURE) and k not in BROKER_HEADERS}
            headers[REPLAYED] = int(letter.headers.get(REPLAYED) or 0) + 1
            props = pika.BasicProperties(**{**vars(properties), "headers": headers,
                                            "delivery_mode": pika.DeliveryMode.Persistent.value})
            worker.basic_publish("", target, body, props, mandatory=True)   # confirmed (or raises) ...
            worker.basic_ack(method.delivery_tag)                            # ... before it leaves the DLQ
            replayed += 1
    finally:
        if worker.is_open:
            worker.close()
    return replayed


def purge(channel: BlockingChannel, queue: str) -> int:
    """Remove every ready message from the DLQ of ``queue``; return how many were removed."""
    ok = channel.queue_purge(dlq_name(_work_queue(queue)))
    return int(ok.method.message_count)
