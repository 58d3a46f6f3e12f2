"""Throughput of publishing and consuming on the real broker, one function per way of doing it.

Every function opens its own connection and closes it, and returns messages per second.

Example::

    with broker.connect() as connection:   # 1000 transient 100-byte messages, published in bulk
        refill(connection.channel(), "bench", [b"x" * 100] * 1000, purge=True, confirm=False, persistent=False)
    consume_push(broker, "bench", 1000, prefetch=50)   # -> e.g. 12000.0 messages/s
    runs = sweep(lambda size: {"messages_per_s": (r := publish_rate(broker, "bench", 500, size)),
                               "MB_per_s": r * size / 1e6}, {"size": [100, 10_000]})
    plot_publish_sizes(runs, caption=broker_caption(broker))
"""

from __future__ import annotations

import itertools
import time

import matplotlib.pyplot as plt
import pandas as pd
import pika

from ..broker import Broker
from ..queues import publish_bodies, reset_queue
from .measure import add_caption, plot_sweep


def publish_rate(broker: Broker, queue: str, n: int, size: int, confirm: bool = False,
                 persistent: bool = False) -> float:
    """Publish ``n`` messages of ``size`` bytes to ``queue``; messages per second (the queue is purged after).

    ``confirm=True`` waits for the broker's confirm of each publish; without,
    the clock stops after one round trip that the broker answers once it has them all.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    mode = pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient
    with broker.connect() as connection:
        channel = connection.channel()
        reset_queue(channel, queue, purge=True)
        t0 = time.perf_counter()
        publish_bodies(channel, queue, itertools.repeat(b"x" * size, n), confirm=confirm,
                       properties=pika.BasicProperties(delivery_mode=mode))
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


def plot_publish_sizes(runs: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Two panels against message size: messages/s and MB/s, from a sweep of :func:`publish_rate` over ``size``.

    The title says what the rates are: unconfirmed publishes (``confirm=False``), which the broker
    accepted but may not have stored yet.

    ``runs`` has columns ``size``, ``messages_per_s``, ``MB_per_s`` and ``repeat``.
    """
    fig, (rate, volume) = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, column, unit, title in [(rate, "messages_per_s", "messages/s", "Publish rate"),
                                    (volume, "MB_per_s", "MB/s", "Bytes moved")]:
        plot_sweep(runs, "size", column, logx=True, logy=True, xlabel="message size (bytes)", ylabel=unit,
                   title=title, ax=ax)
    fig.suptitle("Publishing without confirms: what the broker accepted, not what it stored "
                 "(notebook 05 measures confirmed publishing)", fontsize=10)
    fig.tight_layout()
    add_caption(fig, caption)
    return fig
