"""Streams over AMQP 0-9-1: a log that a new consumer replays from an offset, which a queue cannot do.

Experiments of notebook 09, on any broker or cluster node (``node.connect()``):

- :func:`declare_stream`: ``x-queue-type: stream``, with optional retention (``x-max-length-bytes``,
  ``x-max-age``) and segment size (``x-stream-max-segment-size-bytes``: retention drops whole segments).
- :func:`publish_confirmed`: ``n`` messages, ``b"0"`` .. ``b"n-1"``, confirmed.
- :func:`read_stream`: a new consumer from ``x-stream-offset`` (``"first"``, ``"last"``, ``"next"``, a number,
  a timestamp); what it got, with each message's ``x-stream-offset`` header.
- :func:`consume_refused`: what the broker answers to a stream consumer without prefetch, or with ``auto_ack``.
- :func:`queue_replay`: the same replay tried on a quorum queue: the second consumer gets nothing.

Example::

    with broker.connect() as connection:
        declare_stream(connection.channel(), "jobs.log")
    publish_confirmed(broker, "jobs.log", 100)
    read_stream(broker, "jobs.log", offset=50).bodies[:3]     # [50, 51, 52]
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions

PERSISTENT = pika.BasicProperties(delivery_mode=2)


def declare_stream(channel: Any, name: str, *, max_length_bytes: int | None = None, max_age: str | None = None,
                   segment_bytes: int | None = None, fresh: bool = True) -> None:
    """Declare stream ``name`` (durable: a stream must be) with the retention given."""
    args: dict[str, Any] = {"x-queue-type": "stream"}
    if max_length_bytes is not None:
        args["x-max-length-bytes"] = max_length_bytes
    if max_age is not None:
        args["x-max-age"] = max_age
    if segment_bytes is not None:
        args["x-stream-max-segment-size-bytes"] = segment_bytes
    if fresh:
        channel.queue_delete(name)
    channel.queue_declare(name, durable=True, arguments=args)


def publish_confirmed(broker: Any, queue: str, n: int, start: int = 0, pad: int = 0) -> float:
    """Publish ``start .. start+n-1`` (each body padded with spaces to ``pad`` bytes), confirmed; messages/s."""
    with broker.connect() as connection:
        ch = connection.channel()
        ch.confirm_delivery()
        t0 = time.perf_counter()
        for i in range(start, start + n):
            ch.basic_publish("", queue, str(i).encode().ljust(pad), PERSISTENT)
        return n / (time.perf_counter() - t0)


@dataclass
class Read:
    """What one stream consumer got."""

    offset: Any
    bodies: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)   # each message's x-stream-offset header
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.bodies) / self.seconds if self.seconds else float("nan")


def read_stream(broker: Any, stream: str, offset: Any = "first", prefetch: int = 100, expect: int | None = None,
                idle_s: float = 1.0, timeout: float = 30.0) -> Read:
    """A new consumer of ``stream`` from ``offset``: read until ``expect`` messages arrived (or ``timeout`` s
    passed), or, without ``expect``, until nothing came for ``idle_s`` seconds (a stream never ends: a consumer
    waits for more). A stream's first delivery to a new consumer can take over a second on a busy machine: with
    ``expect``, a pause is not the end."""
    out = Read(offset)
    with broker.connect() as connection:
        ch = connection.channel()
        ch.basic_qos(prefetch_count=prefetch)                       # required for a stream consumer
        t0 = last = time.perf_counter()
        deadline = time.monotonic() + timeout
        for method, props, body in ch.consume(stream, arguments={"x-stream-offset": offset},
                                              inactivity_timeout=idle_s):
            if time.monotonic() > deadline:
                break
            if method is None:
                if expect is None:
                    break
                continue
            last = time.perf_counter()
            out.bodies.append(int(body))
            out.offsets.append(int((props.headers or {}).get("x-stream-offset", -1)))
            ch.basic_ack(method.delivery_tag)                          # acks give the consumer credit
            if expect is not None and len(out.bodies) >= expect:
                break
        out.seconds = last - t0 if out.bodies else 0.0   # to the last message: no waiting after it counted
        ch.cancel()
    return out


def consume_refused(broker: Any, stream: str, prefetch: int = 0, auto_ack: bool = False) -> str:
    """``basic.consume`` on a stream with ``prefetch`` (0: no ``basic.qos``) and ``auto_ack``: the broker's answer
    (``"accepted"``, or the reply of the channel, or the connection, it closed)."""
    with broker.connect() as connection:
        ch = connection.channel()
        if prefetch:
            ch.basic_qos(prefetch_count=prefetch)
        try:
            ch.basic_consume(stream, lambda *a: None, auto_ack=auto_ack, arguments={"x-stream-offset": "first"})
            connection.process_data_events(time_limit=0.5)
            return "accepted"
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
            return f"{e.reply_code} {e.reply_text}"   # 540 NOT_IMPLEMENTED closes the whole connection


def queue_replay(broker: Any, queue: str, n: int) -> tuple[int, int]:
    """Fill quorum queue ``queue`` with ``n`` messages; a first consumer reads and acks them all; then a second,
    new consumer: how many each got."""
    with broker.connect() as connection:
        ch = connection.channel()
        ch.queue_delete(queue)
        ch.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    publish_confirmed(broker, queue, n)
    got = []
    for first in (True, False):   # the first reads all n (up to 30 s: a busy machine pauses); the second waits 1 s
        count, deadline = 0, time.monotonic() + 30
        with broker.connect() as connection:
            ch = connection.channel()
            ch.basic_qos(prefetch_count=100)
            for method, _props, _body in ch.consume(queue, inactivity_timeout=1.0):
                if method is None:
                    if first and count < n and time.monotonic() < deadline:
                        continue
                    break
                ch.basic_ack(method.delivery_tag)
                count += 1
                if first and count == n:
                    break
            ch.cancel()
        got.append(count)
    with broker.connect() as connection:
        connection.channel().queue_delete(queue)
    return got[0], got[1]


def stream_info(broker: Any, stream: str) -> dict[str, Any]:
    """``messages`` and the first offset still in ``stream`` (after retention), as a new consumer from ``first``
    sees them."""
    r = read_stream(broker, stream, "first", idle_s=3.0)
    return {"messages": len(r.bodies), "first offset": r.offsets[0] if r.offsets else None,
            "first body": r.bodies[0] if r.bodies else None, "last body": r.bodies[-1] if r.bodies else None}
