"""What the bench times: the library's publish strategies, a bare pika consume loop, the pool consumer.

Each function does one measured run on a queue it is given (see
:func:`fill` to prepare one) and raises ``ValueError`` naming a wrong argument.
Connection set-up is never timed.

Example::

    seconds, counted = publish_strategy(broker, "bench.pub", 1000, "async confirms")
    fill(broker, "bench.q", 1000)
    consume_bare(broker, "bench.q", 1000, prefetch=16)       # messages/s, e.g. 13000.0
    fill(broker, "bench.q", 1000)
    consume_pool(broker, "bench.q", 1000, threads=16)        # (messages/s, acked), e.g. (17000.0, 1000)
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pika

from ..broker import Broker
from ..consumers import ThreadPoolConsumer
from ..lab.measure import PUBLISH_STRATEGIES as MEASURE_STRATEGIES
from ..lab.measure import time_publishes as measured_publishes
from ..queues import queue_counts, refill, reset_queue

BODY_SIZE = 100
POOL_THREADS = 16
"""Threads of the :class:`ThreadPoolConsumer` case (its prefetch is the same: one message per thread)."""
PUBLISH_STRATEGIES = ("no confirms", "confirm per message", "batched confirms", "async confirms")
_MEASURE_NAMES = dict(zip(PUBLISH_STRATEGIES, MEASURE_STRATEGIES))   # the same four, as notebook 05 names them
QUEUE_TYPES: dict[str, dict[str, Any]] = {"classic": {}, "quorum": {"x-queue-type": "quorum"}}
"""The queue types the bench measures, with their declare arguments (every bench queue is durable)."""
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def _positive(name: str, n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name} must be an int >= 1, got {n!r}")


def _arguments(queue_type: str) -> dict[str, Any]:
    if queue_type not in QUEUE_TYPES:
        raise ValueError(f"queue_type must be one of {list(QUEUE_TYPES)}, got {queue_type!r}")
    return QUEUE_TYPES[queue_type]


def _count(channel: Any, queue: str, expect: int | None = None, timeout: float = 5.0) -> int:
    count = queue_counts(channel, queue)
    deadline = time.monotonic() + timeout
    while expect is not None and count < expect and time.monotonic() < deadline:
        time.sleep(0.01)
        count = queue_counts(channel, queue)
    return count


def ready(broker: Broker, queue: str, expect: int | None = None) -> int:
    """Messages ready in ``queue``, as the broker counts them; with ``expect``, once they reach it (at most 5 s).

    A quorum queue appends messages published without confirms to its log
    asynchronously: counted at once, some can be missing (seen on 4.0.5: 206 of 300).
    """
    with broker.connect() as connection:
        return _count(connection.channel(), queue, expect)


def fill(broker: Broker, queue: str, n: int, queue_type: str = "classic", size: int = BODY_SIZE) -> None:
    """Make ``queue`` a fresh durable queue of ``queue_type`` holding ``n`` transient ``size``-byte messages.

    :func:`voicelab.queues.refill` without confirms (one round trip syncs the
    publishes): every message is in the queue when this returns.

    Example::

        fill(broker, "bench.q", 1000, queue_type="quorum")
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    arguments = _arguments(queue_type)
    with broker.connect() as connection:
        channel = connection.channel()
        refill(channel, queue, itertools.repeat(b"x" * size, n), arguments=arguments, confirm=False, persistent=False)
        count = _count(channel, queue, expect=n)
    if count != n:
        raise RuntimeError(f"{queue!r} holds {count} of the {n} messages published to it")


def time_publishes(broker: Broker, queue: str, n: int, strategy: str, size: int = BODY_SIZE) -> float:
    """Seconds to publish ``n`` persistent ``size``-byte messages to the existing ``queue`` with ``strategy``
    (one of :data:`PUBLISH_STRATEGIES`), timed by :func:`voicelab.lab.measure.time_publishes`, which notebook 05
    uses too: ``"confirm per message"`` is its ``"confirm each"``, ``"batched confirms"`` its ``"batches of
    100"``, ``"async confirms"`` its ``"async window 256"``.
    """
    if strategy not in PUBLISH_STRATEGIES:
        raise ValueError(f"strategy must be one of {PUBLISH_STRATEGIES}, got {strategy!r}")
    _positive("n", n)
    return measured_publishes(broker, queue, n, _MEASURE_NAMES[strategy], size=size)


def publish_strategy(broker: Broker, queue: str, n: int, strategy: str, queue_type: str = "classic",
                     size: int = BODY_SIZE) -> tuple[float, int]:
    """Publish ``n`` messages to a fresh ``queue`` with ``strategy`` (:func:`time_publishes`): (seconds, counted).

    ``counted`` is what the broker holds afterwards (:func:`ready`, waiting for ``n``).

    Example::

        seconds, counted = publish_strategy(broker, "bench.pub", 1000, "async confirms", "quorum")
    """
    if strategy not in PUBLISH_STRATEGIES:
        raise ValueError(f"strategy must be one of {PUBLISH_STRATEGIES}, got {strategy!r}")
    _positive("n", n)
    arguments = _arguments(queue_type)
    with broker.connect() as connection:
        reset_queue(connection.channel(), queue, arguments=arguments)
    seconds = time_publishes(broker, queue, n, strategy, size=size)
    return seconds, ready(broker, queue, expect=n)


def consume_bare(broker: Broker, queue: str, n: int, prefetch: int = 1) -> float:
    """The reference consumer: a bare pika ``basic_consume`` loop that acks each message; messages/s.

    No voicelab code between pika and the callback: ``basic_qos``,
    ``basic_consume`` with a callback that calls ``basic_ack``, and pika's
    ``start_consuming`` until ``n`` are acked (the idiom of RabbitMQ's
    tutorials), timed from ``basic_consume`` to the ``n``-th ack. Messages
    delivered beyond ``n`` are not acked: they go back to the queue when the
    connection closes. Raises ``RuntimeError`` if the queue runs dry for 10 s.

    Example::

        fill(broker, "bench.q", 1000)
        consume_bare(broker, "bench.q", 1000, prefetch=100)   # e.g. 15000.0
    """
    _positive("n", n)
    if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an int >= 0 (0 = unlimited), got {prefetch!r}")
    got, t_end = 0, 0.0
    with broker.connect() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            nonlocal got, t_end
            if got >= n:
                return  # beyond n: left unacked, back to the queue on close
            ch.basic_ack(method.delivery_tag)
            got += 1
            if got == n:
                t_end = time.perf_counter()
                ch.stop_consuming()

        dry = {"last": -1, "since": time.monotonic()}

        def watchdog() -> None:  # pika's own timer, on this thread: the queue must not run dry for 10 s
            if got != dry["last"]:
                dry.update(last=got, since=time.monotonic())
            elif time.monotonic() - dry["since"] > 10:
                channel.stop_consuming()
                return
            connection.call_later(1, watchdog)

        connection.call_later(1, watchdog)
        t0 = time.perf_counter()
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    if got < n:
        raise RuntimeError(f"queue {queue!r} ran dry after {got} of {n} messages")
    return n / (t_end - t0)


def consume_pool(broker: Broker, queue: str, n: int, threads: int = POOL_THREADS,
                 prefetch: int | None = None) -> tuple[float, int]:
    """:class:`~voicelab.consumers.ThreadPoolConsumer` with a no-op handler takes ``n`` messages: (messages/s, acked).

    ``queue`` must hold exactly ``n`` messages (a run stops after ``n`` are
    settled; more could be acked by jobs still running). Timed from the first
    handler call to the ``n``-th ack (its ``on_settled`` hook): this leaves out
    connection set-up and the first delivery's round trip (under a
    millisecond), which :func:`consume_bare` counts.

    Example::

        fill(broker, "bench.q", 1000)
        consume_pool(broker, "bench.q", 1000, threads=16)   # (e.g. 14000.0, 1000)
    """
    _positive("n", n)
    first: list[float] = []
    settled, t_end = 0, 0.0

    def handler(body: bytes) -> None:
        if not first:
            first.append(time.perf_counter())

    def on_settled(outcome: str) -> None:
        nonlocal settled, t_end
        settled += 1
        if settled == n:
            t_end = time.perf_counter()

    consumer = ThreadPoolConsumer(broker, queue, handler, threads=threads, prefetch=prefetch,
                                  on_settled=on_settled)
    stats = consumer.run(idle_timeout=10, max_messages=n)
    if stats.acked < n:
        raise RuntimeError(f"queue {queue!r} ran dry: {stats.acked} of {n} messages acked")
    return n / (t_end - first[0]), stats.acked
