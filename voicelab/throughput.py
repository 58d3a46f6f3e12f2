"""Throughput of publishing and consuming on the real broker, one function per way of doing it.

Every function opens its own connection and closes it, and returns messages per second.

Example::

    fill_queue(broker, "bench", 1000)
    consume_push(broker, "bench", 1000, prefetch=50)   # -> e.g. 12000.0 messages/s
"""

from __future__ import annotations

import time

import pika

from .broker import Broker


def _declare(channel, queue: str) -> None:  # type: ignore[no-untyped-def]
    channel.queue_declare(queue, durable=True)


def fill_queue(broker: Broker, queue: str, n: int, size: int = 100, purge: bool = True) -> None:
    """Declare ``queue`` durable, empty it (unless ``purge=False``), and put ``n`` messages of ``size`` bytes in it.

    Publishes are not confirmed one by one (that would take longer than the runs it prepares); a round trip
    on the same channel afterwards guarantees the broker has enqueued them all before this returns.
    """
    if n < 0 or size < 0:
        raise ValueError(f"n and size must be >= 0, got n={n}, size={size}")
    body = b"x" * size
    with broker.connect() as connection:
        channel = connection.channel()
        _declare(channel, queue)
        if purge:
            channel.queue_purge(queue)
        for _ in range(n):
            channel.basic_publish("", queue, body)
        channel.queue_declare(queue, durable=True, passive=True)  # in order after the publishes: all enqueued


def publish_rate(broker: Broker, queue: str, n: int, size: int, confirm: bool = False,
                 persistent: bool = False) -> float:
    """Publish ``n`` messages of ``size`` bytes to ``queue``; messages per second (the queue is purged after)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2 if persistent else 1)
    with broker.connect() as connection:
        channel = connection.channel()
        _declare(channel, queue)
        channel.queue_purge(queue)
        if confirm:
            channel.confirm_delivery()
        t0 = time.perf_counter()
        for _ in range(n):
            channel.basic_publish("", queue, body, props)
        if not confirm:  # a round trip so the clock stops when the broker has the messages
            channel.queue_declare(queue, durable=True, passive=True)
        seconds = time.perf_counter() - t0
        channel.queue_purge(queue)
    return n / seconds


def consume_pull(broker: Broker, queue: str, n: int) -> float:
    """Fetch ``n`` messages one ``basic_get`` at a time (one round trip each), acking each; messages/s."""
    with broker.connect() as connection:
        channel = connection.channel()
        got = 0
        t0 = time.perf_counter()
        while got < n:
            method, _, _ = channel.basic_get(queue)
            if method is None:
                raise RuntimeError(f"queue {queue!r} ran dry after {got} of {n} messages")
            channel.basic_ack(method.delivery_tag)
            got += 1
        return n / (time.perf_counter() - t0)


def consume_push(broker: Broker, queue: str, n: int, prefetch: int = 1, ack_every: int = 1) -> float:
    """Receive ``n`` messages with ``basic_consume`` at ``prefetch`` (0 = unlimited); messages/s.

    ``ack_every=k`` acks with ``multiple=True`` every k messages instead of one by one.
    """
    if prefetch < 0 or ack_every < 1:
        raise ValueError(f"prefetch must be >= 0 and ack_every >= 1, got {prefetch}, {ack_every}")
    if prefetch and ack_every > prefetch:
        raise ValueError(f"ack_every={ack_every} > prefetch={prefetch} would stall: the broker stops at prefetch")
    with broker.connect() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        got = 0
        t0 = time.perf_counter()
        for method, _, _ in channel.consume(queue, inactivity_timeout=10):
            if method is None:
                raise RuntimeError(f"queue {queue!r} ran dry after {got} of {n} messages")
            got += 1
            if got % ack_every == 0 or got == n:
                channel.basic_ack(method.delivery_tag, multiple=ack_every > 1)
            if got == n:
                break
        seconds = time.perf_counter() - t0
        channel.cancel()
    return n / seconds
