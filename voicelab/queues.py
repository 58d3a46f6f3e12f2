"""Declaring the job queue and publishing jobs to it, the way production code should.

Example::

    from voicelab.broker import start_broker
    from voicelab.jobs import VoiceJob
    with start_broker() as broker, broker.connect() as connection:
        channel = connection.channel()
        declare_job_queue(channel, "voice_jobs")
        publish_job(channel, "voice_jobs", VoiceJob.new("audio/x.wav", 1))
"""

from __future__ import annotations

import json
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel

from .jobs import VoiceJob

PERSISTENT = 2  # delivery_mode 2 = persistent (pika.DeliveryMode.Persistent.value)


def dlq_name(queue: str) -> str:
    """Name of the dead-letter queue that :func:`declare_job_queue` pairs with ``queue``."""
    return f"{queue}.dlq"


def declare_job_queue(channel: BlockingChannel, queue: str, dead_letters: bool = True,
                      arguments: dict[str, Any] | None = None) -> int:
    """Declare a durable job queue (and, by default, its dead-letter queue ``<queue>.dlq``).

    Durable, because RabbitMQ deprecates transient non-exclusive queues (4.3 may
    refuse them) and a voice job must survive a broker restart. A message
    rejected without requeue goes to the DLQ instead of vanishing.
    Returns the number of messages ready in ``queue``.
    """
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    args = dict(arguments or {})
    if dead_letters:
        channel.queue_declare(dlq_name(queue), durable=True)
        args.setdefault("x-dead-letter-exchange", "")
        args.setdefault("x-dead-letter-routing-key", dlq_name(queue))
    ok = channel.queue_declare(queue, durable=True, arguments=args or None)
    return int(ok.method.message_count)


def job_properties(**extra: Any) -> pika.BasicProperties:
    """Properties of a job message: JSON, persistent (written to disk by a durable queue)."""
    return pika.BasicProperties(content_type="application/json", delivery_mode=PERSISTENT, **extra)


def publish_job(channel: BlockingChannel, queue: str, job: VoiceJob | dict[str, Any]) -> None:
    """Publish ``job`` to ``queue`` through the default exchange as persistent JSON.

    Persistence alone does not make a publish safe: call
    ``channel.confirm_delivery()`` once on the channel so that this call waits
    for the broker's confirm and raises if the broker refused the message.
    """
    body = job.to_json() if isinstance(job, VoiceJob) else json.dumps(job).encode()
    channel.basic_publish(exchange="", routing_key=queue, body=body, properties=job_properties(), mandatory=True)


def queue_counts(channel: BlockingChannel, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones), read with a passive declare."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)



def wait_stable(channel: BlockingChannel, *queues: str, quiet: float = 0.3, timeout: float = 5.0) -> dict[str, int]:
    """Ready counts of ``queues`` once they have not changed for ``quiet`` seconds.

    Requeues and dead-lettering happen asynchronously inside the broker, after
    the nack, reject or channel close that caused them has been sent: read the
    counts only once they settle.
    """
    import time

    deadline = time.monotonic() + timeout
    last = {q: queue_counts(channel, q) for q in queues}
    since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = {q: queue_counts(channel, q) for q in queues}
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return last


def refill(channel: BlockingChannel, queue: str, bodies: list[bytes] | range, dead_letters: bool = False) -> None:
    """Start a demo from a known state: delete ``queue`` (and its DLQ), declare it durable, publish ``bodies``.

    A ``range`` publishes the numbers as text (``b"0"``, ``b"1"``, ...). Publishes are
    persistent and confirmed, so every message is in the queue when this returns.
    """
    channel.queue_delete(queue)
    if dead_letters:
        channel.queue_delete(dlq_name(queue))
        declare_job_queue(channel, queue)
    else:
        channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    for body in bodies:
        data = str(body).encode() if isinstance(body, int) else body
        channel.basic_publish("", queue, data, job_properties())
