"""Exercises of notebook 00 (why queues).

q1: write ``enqueue_job(channel, queue, job)`` that publishes a :class:`~voicelab.jobs.VoiceJob`
to ``queue`` through the default exchange as JSON, with content type
``application/json`` and persistent delivery, *safely*: it returns only once the
broker has taken the job, and raises when the broker could not (confirm mode and
``mandatory=True``). The checker gives it a fresh channel at each call, and also
calls it with a queue that does not exist: a safe publish raises there.

Example (in the notebook, after writing ``enqueue_job``)::

    from voicelab.exercises import ch00
    ch00.q1.check(enqueue_job)     # pass, or what is wrong and a hint
    ch00.q1.hint()
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any, Callable

import pika
import pika.exceptions

from ..broker import shared_broker
from ..jobs import VoiceJob
from .core import Exercise, Wrong, scratch_queue


def enqueue_job(channel: Any, queue: str, job: VoiceJob) -> None:
    """Reference solution of q1."""
    channel.confirm_delivery()            # confirm mode: each publish waits for the broker's ack (once per channel)
    channel.basic_publish(
        exchange="",                      # the default exchange routes by queue name
        routing_key=queue,
        body=json.dumps({"job_id": job.job_id, "blob_key": job.blob_key, "user_id": job.user_id}),
        properties=pika.BasicProperties(
            content_type="application/json",
            delivery_mode=pika.DeliveryMode.Persistent,  # written to disk in a durable queue
        ),
        mandatory=True,                   # no queue to route to: the broker returns it and pika raises
    )


def _check_enqueue(fn: Callable[..., Any]) -> str:
    job = VoiceJob.new(blob_key="audio/check.wav", user_id=42)
    with scratch_queue("enqueue") as queue, shared_broker().connect() as connection:
        channel = connection.channel()
        try:
            fn(channel, queue, job)
        except pika.exceptions.UnroutableError:
            raise Wrong(f"the broker could not route your message to queue {queue!r}: no message reached it. "
                        "Publish with exchange='' and routing_key=queue.") from None
        if not channel.is_open:
            raise Wrong("your function closed the channel (or the broker closed it after an error)")
        got = [channel.basic_get(queue, auto_ack=True) for _ in range(2)]
        method, props, body = got[0]
        if method is None:
            raise Wrong(f"no message reached queue {queue!r}. Publish with exchange='' and routing_key=queue.")
        if got[1][0] is not None:
            raise Wrong("more than one message reached the queue: publish the job exactly once.")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise Wrong(f"the body is not JSON: {body[:60]!r}") from None
        if data != asdict(job):
            raise Wrong(f"the body should be the job as a JSON object {asdict(job)}, got {data}")
        if props.content_type != "application/json":
            raise Wrong(f"content_type should be 'application/json', got {props.content_type!r}")
        if props.delivery_mode != 2:
            raise Wrong(f"delivery_mode should be 2 (persistent), got {props.delivery_mode!r}: "
                        "a transient message is lost when the broker restarts")
        # Safety: a job the broker did not take must not look sent. A queue that does not exist is the test.
        missing = f"{queue}.missing"
        unsafe = connection.channel()
        try:
            fn(unsafe, missing, job)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError):
            return (f"The broker received job {job.job_id[:8]}… as persistent JSON on {queue!r}, and your function "
                    f"raised when no queue {missing!r} existed to take it.")
        confirming = getattr(unsafe, "_delivery_confirmation", False)  # pika keeps the mode there
    if not confirming:
        raise Wrong("publishing to a queue that does not exist returned without an error: the broker dropped the job "
                    "and the user got a job id for nothing. The channel is not in confirm mode: call "
                    "channel.confirm_delivery() so that basic_publish waits for the broker's ack, and publish with "
                    "mandatory=True.")
    raise Wrong("publishing to a queue that does not exist returned without an error: the channel is in confirm mode, "
                "but the broker confirms a message that no queue took unless it is published with mandatory=True.")


q1 = Exercise(
    "ch00.q1", "enqueue a voice job",
    _check_enqueue,
    hints=[
        """Publish through the default exchange, whose name is the empty string: it routes a message to
        the queue named by the routing key. The body is text (JSON of the job's job_id, blob_key and
        user_id), and the message's properties say two things: it is JSON, and it must survive a restart.""",
        """Safe means: your function returns only once the broker has the job, and raises if it did not take it.
        Two switches do that: confirm mode on the channel (each publish waits for the broker's ack), and
        mandatory=True (a message no queue takes comes back instead of being dropped and confirmed).""",
        """channel.confirm_delivery(), then channel.basic_publish(exchange="", routing_key=queue,
        body=json.dumps(dataclasses.asdict(job)), properties=pika.BasicProperties(content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent), mandatory=True)""",
    ],
    solution=enqueue_job,
)
