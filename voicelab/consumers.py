"""A thread-pool consumer that is actually thread safe: the one to copy.

pika is not thread safe: a ``BlockingConnection`` and its channels belong to
the thread that made them. The guide's ``ConcurrentProcessor`` (in
:mod:`voicelab.lab.guide_patterns`, to watch it fail) acks from pool threads and
the connection dies within moments. :class:`ThreadPoolConsumer`
runs the work on a pool and hands every ack back to the connection's thread
with ``connection.add_callback_threadsafe``; that thread keeps pumping the
connection (so heartbeats flow even while a job runs for minutes).

Example::

    consumer = ThreadPoolConsumer(broker, "voice_jobs", handler=lambda body: time.sleep(0.1), threads=10)
    stats = consumer.run(idle_timeout=1.0)   # until the queue stays empty for 1 s
    stats.acked
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from .broker import Broker

log = logging.getLogger(__name__)


@dataclass
class ConsumerStats:
    """What a consumer run did: messages received, acked, rejected (dead-lettered) and requeued on stop."""

    received: int = 0
    acked: int = 0
    rejected: int = 0
    requeued: int = 0
    seconds: float = 0.0


class ThreadPoolConsumer:
    """Consume ``queue`` with ``threads`` workers; ack each message from the connection's own thread.

    ``handler(body)`` runs on a pool thread; when it returns the message is
    acked, when it raises the message is rejected without requeue (to the
    queue's dead-letter exchange, if any: a failing job must not loop).
    ``prefetch`` defaults to ``threads``: every thread has one message, none
    hoards. :meth:`stop` (from any thread) stops taking messages, lets running
    jobs finish and ack, and requeues the ones that had not started.
    ``on_settled(outcome)``, if given, runs on the connection's thread right after
    each ack (``"acked"``) or reject (``"rejected"``) has been handed to pika.
    """

    def __init__(self, broker: Broker, queue: str, handler: Callable[[bytes], Any], threads: int = 10,
                 prefetch: int | None = None, heartbeat: int | None = None,
                 on_settled: Callable[[str], Any] | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1 (a pool needs a bound), got {prefetch}")
        self.broker, self.queue, self.handler = broker, queue, handler
        self.threads = threads
        self.prefetch = prefetch or threads
        self.heartbeat = heartbeat
        self.on_settled = on_settled
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._in_flight: dict[int, Future[Any]] = {}

    def stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully; safe to call from any thread or a signal handler."""
        self._stop.set()

    def run(self, idle_timeout: float | None = None, max_messages: int | None = None) -> ConsumerStats:
        """Consume until :meth:`stop`, until ``max_messages`` are settled, or until idle for ``idle_timeout`` s.

        Settling is batched: a pool thread that finishes a job puts it on a
        list and wakes the connection's thread with one
        ``add_callback_threadsafe`` (only if no wake-up is already pending);
        that thread settles every finished job in one go, acking the run of
        finished jobs at the head of the delivery order with a single
        ``basic_ack(multiple=True)`` and the others one by one. A message is
        still acked only after its handler returned, and only from the
        connection's thread.
        """
        overrides: dict[str, Any] = {} if self.heartbeat is None else {"heartbeat": self.heartbeat}
        t0 = time.monotonic()
        last_activity = t0
        finished: deque[tuple[int, Future[Any]]] = deque()  # appended by pool threads, drained by this one
        order: deque[int] = deque()      # unsettled delivery tags, in delivery order
        settled_early: set[int] = set()  # settled out of order: skipped when the head of `order` reaches them
        wake = [False]                   # a wake-up callback is pending on the connection
        with self.broker.connect(**overrides) as connection, \
                ThreadPoolExecutor(self.threads, thread_name_prefix="voicelab-worker") as pool:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)

            def settled(outcome: str, count: int = 1) -> None:
                if self.on_settled:
                    for _ in range(count):
                        self.on_settled(outcome)

            def settle_one(tag: int, future: Future[Any], ack_now: bool) -> bool:
                """Reject or requeue ``tag`` now; ack it now if ``ack_now``. True if it is an ack left to send."""
                if future.cancelled():
                    channel.basic_nack(tag, requeue=True)
                    self.stats.requeued += 1
                elif future.exception() is not None:
                    log.warning("job failed, rejecting it: %r", future.exception())
                    channel.basic_reject(tag, requeue=False)
                    self.stats.rejected += 1
                    settled("rejected")
                elif ack_now:
                    channel.basic_ack(tag)
                    self.stats.acked += 1
                    settled("acked")
                else:
                    return True
                return False

            def settle_finished() -> None:  # runs on the connection's thread
                wake[0] = False  # before draining: a job finishing from now on schedules a new wake-up
                done: dict[int, Future[Any]] = {}
                while finished:
                    tag, future = finished.popleft()
                    done[tag] = future
                if not done:
                    return
                # The head of the delivery order: every tag up to `last` is settled by one multiple ack.
                # Rejects and requeues among them are sent first, so the multiple ack does not cover them.
                last, run = 0, 0
                while order:
                    tag = order[0]
                    if tag in settled_early:
                        settled_early.discard(tag)
                    elif tag in done:
                        self._in_flight.pop(tag, None)
                        if settle_one(tag, done.pop(tag), ack_now=False):
                            last, run = tag, run + 1
                    else:
                        break
                    order.popleft()
                if run:
                    channel.basic_ack(last, multiple=run > 1)
                    self.stats.acked += run
                    settled("acked", run)
                # Finished behind a job still running: settle each now, so that prefetch frees up.
                for tag, future in done.items():
                    self._in_flight.pop(tag, None)
                    settle_one(tag, future, ack_now=True)
                    settled_early.add(tag)

            def on_done(tag: int, future: Future[Any]) -> None:  # runs on a pool thread (or this one, if cancelled)
                finished.append((tag, future))
                if not wake[0]:
                    wake[0] = True
                    try:
                        connection.add_callback_threadsafe(settle_finished)
                    except Exception:  # the connection is closing: run()'s own drain loop settles it
                        wake[0] = False

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                self.stats.received += 1
                tag = method.delivery_tag
                order.append(tag)
                future = pool.submit(self.handler, body)
                self._in_flight[tag] = future
                future.add_done_callback(functools.partial(on_done, tag))

            consumer_tag = channel.basic_consume(self.queue, on_message)
            while not self._stop.is_set():
                before = self.stats.acked + self.stats.rejected
                connection.process_data_events(time_limit=0.05)
                settle_finished()  # a safety net: settles anything a lost wake-up would leave behind
                if self._in_flight or self.stats.acked + self.stats.rejected != before:
                    last_activity = time.monotonic()
                if max_messages is not None and self.stats.acked + self.stats.rejected >= max_messages:
                    break
                if idle_timeout is not None and time.monotonic() - last_activity > idle_timeout:
                    break
            # Graceful shutdown: no new deliveries; jobs not started go back, running ones finish and ack.
            channel.basic_cancel(consumer_tag)
            for future in list(self._in_flight.values()):
                future.cancel()
            while self._in_flight:
                connection.process_data_events(time_limit=0.05)
                settle_finished()
            channel.close()
        self.stats.seconds = time.monotonic() - t0
        return self.stats
