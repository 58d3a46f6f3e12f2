"""Bad input, all through: each mistake on the real broker, a clear outcome, nothing lost.

- :func:`message_tour`: a body that is not JSON, a job with a field missing, a job labelled
  ``text/plain``, a job of a type the worker does not do, and a good job go through the course's
  worker (:func:`voicelab.retry.handle_delivery`): the good one is done, each bad one is in the
  dead-letter queue after one attempt, with its reason.
- :func:`oversized`: a message one byte over the broker's ``max_message_size`` is refused when it
  is published (the channel is closed with 406); the publisher gets the reason, the queue holds nothing.
- :func:`connect_tour`: a malformed URL, a port nothing listens on, a wrong password, a virtual
  host that does not exist: each refused with a one-line reason (:class:`voicelab.broker.ConnectFailed`).

Example::

    from voicelab.broker import shared_broker
    message_tour(shared_broker())     # a DataFrame: input, outcome, attempts, reason
"""

from __future__ import annotations

import json
import re
from typing import Any

import pandas as pd
import pika

from ..broker import Broker, BrokerError, UrlBroker, free_port, mask_url
from ..deadletters import list_dead_letters
from ..publishing import PublishFailed, ReliablePublisher
from ..queues import confirm_mode, delete_job_queue, job_properties
from ..retry import RetryPolicy, declare_retry_queue
from .retries import run_retry_worker

MAX_MESSAGE_SIZE_DEFAULT = {(3, 10): 134_217_728, (4, 0): 16_777_216}
"""``max_message_size`` by default: 128 MiB up to 3.13, 16 MiB from 4.0 (``deps/rabbit/Makefile`` of v3.10.8,
v4.0.5 and main). The hard limit is 512 MiB."""


def default_max_message_size(version_info: tuple[int, int]) -> int:
    """The broker's default ``max_message_size`` in bytes for RabbitMQ ``version_info`` (major, minor).

    >>> default_max_message_size((3, 10)), default_max_message_size((4, 3))
    (134217728, 16777216)
    """
    return MAX_MESSAGE_SIZE_DEFAULT[(4, 0)] if tuple(version_info) >= (4, 0) else MAX_MESSAGE_SIZE_DEFAULT[(3, 10)]


def bad_messages() -> dict[str, tuple[bytes, pika.BasicProperties]]:
    """The messages of the tour, by label: body and properties (each with ``message_id`` = its label)."""
    def job(label: str) -> bytes:
        return json.dumps({"job_id": label, "blob_key": f"audio/{label}.wav", "user_id": 7}).encode()

    def props(label: str, **extra: Any) -> pika.BasicProperties:
        return job_properties(message_id=label, **extra)

    return {
        "a good job": (job("a good job"), props("a good job")),
        "not JSON": (b"\x89PNG... an image uploaded by mistake", props("not JSON")),
        "a field missing": (json.dumps({"job_id": "a field missing", "user_id": 7}).encode(), props("a field missing")),
        "wrong content type": (job("wrong content type"), props("wrong content type", content_type="text/plain")),
        "unknown job type": (job("unknown job type"), props("unknown job type", type="voice.transcribe")),
    }


def message_tour(broker: Broker, queue: str = "bad_input") -> pd.DataFrame:
    """Publish :func:`bad_messages` (confirmed) and run the course's worker on them once.

    One row per message: ``input``, ``outcome`` (``done`` or ``poison``), ``attempts`` and ``reason`` (as the
    dead-letter queue tells it, empty for a job that was done), plus ``in queue`` / ``in DLQ`` at the end.
    """
    done: list[str] = []
    messages = bad_messages()
    policy = RetryPolicy("republish", max_attempts=3)
    with broker.connect() as connection:
        channel = connection.channel()
        delete_job_queue(channel, queue)
        declare_retry_queue(channel, queue, policy)
        confirm_mode(channel)
        for body, properties in messages.values():
            channel.basic_publish("", queue, body, properties, mandatory=True)
    events = run_retry_worker(broker, queue, lambda job, attempt: done.append(job.job_id), policy, timeout=30)
    with broker.connect() as connection:
        channel = connection.channel()
        dead = {d.job: d for d in list_dead_letters(channel, queue)}
        left = channel.queue_declare(queue, passive=True).method.message_count
        delete_job_queue(channel, queue)
    rows = []
    for label in messages:
        mine = events[events["job"] == label]
        letter = dead.get(label)
        rows.append({"input": label, "outcome": mine["outcome"].iloc[-1] if len(mine) else "never delivered",
                     "attempts": len(mine), "done": label in done,
                     "reason": letter.reason if letter else "", "in DLQ": letter is not None})
    out = pd.DataFrame(rows).set_index("input")
    out.attrs["left in queue"] = left
    return out


def oversized(broker: Broker, queue: str = "bad_input.size", size: int | None = None) -> dict[str, Any]:
    """Publish one message of ``size`` bytes (default: one over this version's default limit) with confirms.

    Returns ``size``, ``refused`` (the broker closed the channel), ``reason`` (its text, which names the
    configured limit), ``limit`` (read from that text, else None) and ``in queue`` (messages there after).
    """
    size = default_max_message_size(broker.version_info) + 1 if size is None else size
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive number of bytes, got {size!r}")
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True)
    out: dict[str, Any] = {"size": size, "refused": False, "reason": "", "limit": None}
    try:
        ReliablePublisher(broker.parameters(), deadline=30).publish(queue, [bytes(size)])
    except PublishFailed as e:
        out.update(refused=True, reason=str(e))
        found = re.search(r"max size (\d+)", str(e))
        out["limit"] = int(found.group(1)) if found else None
    with broker.connect() as connection:
        channel = connection.channel()
        out["in queue"] = channel.queue_declare(queue, passive=True).method.message_count
        channel.queue_delete(queue)
    return out


def connect_outcome(url: str) -> str:
    """Try to connect to ``url`` once: ``"connected"``, or the one-line reason voicelab gives."""
    try:
        broker = UrlBroker(url)
        with broker.connect(connection_attempts=1, socket_timeout=3):
            return "connected"
    except BrokerError as e:   # ConnectFailed is one, so is a malformed URL
        return str(e)


def connect_tour(broker: Broker) -> pd.DataFrame:
    """A malformed URL, a port nothing listens on, a wrong password, a missing virtual host, the right URL.

    One row per case: ``url`` (password masked) and ``outcome``.
    """

    good = broker.amqp_url
    base = f"{broker.host}:{broker.port}"
    cases = {
        "the right URL": good,
        "malformed URL": good.replace("amqp://", "amqp//"),
        "nothing listens there": f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F",
        "wrong password": f"amqp://{broker.username}:not-the-password@{base}/%2F",
        "no such virtual host": f"amqp://{broker.username}:{broker.password}@{base}/no-such-vhost",
    }
    return pd.DataFrame([{"case": k, "url": mask_url(v), "outcome": connect_outcome(v)} for k, v in cases.items()]
                        ).set_index("case")


__all__ = ["MAX_MESSAGE_SIZE_DEFAULT", "bad_messages", "connect_outcome", "connect_tour", "default_max_message_size",
           "message_tour", "oversized"]
