"""A thread-pool consumer that is actually thread safe: the one to copy.

pika is not thread safe: a ``BlockingConnection`` and its channels belong to
the thread that made them. The guide's ``ConcurrentProcessor`` (in
:mod:`voicelab.lab.guide_patterns`, to watch it fail) acks from pool threads and
the connection dies within moments. :class:`ThreadPoolConsumer`
runs the work on a pool and hands every finished job back to the connection's
thread, where :class:`BatchedSettler` acks it (``connection.add_callback_threadsafe``);
that thread keeps pumping the connection (so heartbeats flow even while a job
runs for minutes).

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

from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

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

    def stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully; safe to call from any thread or a signal handler."""
        self._stop.set()

    def run(self, idle_timeout: float | None = None, max_messages: int | None = None) -> ConsumerStats:
        """Consume until :meth:`stop`, until ``max_messages`` are settled, or until idle for ``idle_timeout`` s.

        A message is acked only after its handler returned, and only from the
        connection's thread, in batches (see :class:`BatchedSettler`).
        """
        overrides: dict[str, Any] = {} if self.heartbeat is None else {"heartbeat": self.heartbeat}
        t0 = last_activity = time.monotonic()
        with self.broker.connect(**overrides) as connection, \
                ThreadPoolExecutor(self.threads, thread_name_prefix="voicelab-worker") as pool:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            settler = BatchedSettler(connection, channel, self.stats, self.on_settled)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                self.stats.received += 1
                settler.track(method.delivery_tag, pool.submit(self.handler, body))

            consumer_tag = channel.basic_consume(self.queue, on_message)
            while not self._stop.is_set():
                before = settler.settled
                connection.process_data_events(time_limit=0.05)
                settler.settle()  # a safety net: settles anything a lost wake-up would leave behind
                if settler.running or settler.settled != before:
                    last_activity = time.monotonic()
                if max_messages is not None and settler.settled >= max_messages:
                    break
                if idle_timeout is not None and time.monotonic() - last_activity > idle_timeout:
                    break
            channel.basic_cancel(consumer_tag)  # graceful: no new deliveries ...
            settler.finish()                    # ... jobs not started go back, running ones finish and ack
            channel.close()
        self.stats.seconds = time.monotonic() - t0
        return self.stats


class BatchedSettler:
    """Acks, rejects or requeues a pool's jobs on the connection's thread, many at a time.

    The connection's thread calls :meth:`track` for each delivery. A pool
    thread that finishes a job puts it on a list and wakes the connection's
    thread with one ``add_callback_threadsafe`` (only if no wake-up is already
    pending); there :meth:`settle` settles every finished job in one go: the
    run of finished jobs at the head of the delivery order with a single
    ``basic_ack(multiple=True)``, the others one by one (so that prefetch frees
    up behind a long job). A job that raised is rejected without requeue, a
    cancelled one requeued. Every count goes to ``stats``; ``on_settled(outcome)``
    runs after each ack (``"acked"``) or reject (``"rejected"``).

    Example::

        settler = BatchedSettler(connection, channel, ConsumerStats())
        channel.basic_consume("jobs", lambda ch, m, p, body: settler.track(m.delivery_tag, pool.submit(work, body)))
        while settler.settled < 100:
            connection.process_data_events(time_limit=0.05)
        settler.finish()
    """

    def __init__(self, connection: BlockingConnection, channel: BlockingChannel, stats: ConsumerStats,
                 on_settled: Callable[[str], Any] | None = None) -> None:
        self.connection, self.channel, self.stats, self.on_settled = connection, channel, stats, on_settled
        self.in_flight: dict[int, Future[Any]] = {}                  # delivered, not settled yet
        self._finished: deque[tuple[int, Future[Any]]] = deque()  # appended by pool threads, drained by settle
        self._order: deque[int] = deque()                          # unsettled delivery tags, in delivery order
        self._settled_early: set[int] = set()  # settled out of order: skipped when the head of _order reaches them
        self._wake_pending = False

    @property
    def settled(self) -> int:
        """Messages acked or rejected so far."""
        return self.stats.acked + self.stats.rejected

    @property
    def running(self) -> bool:
        """True while a delivered job is not settled yet."""
        return bool(self.in_flight)

    def track(self, tag: int, future: Future[Any]) -> None:
        """Settle delivery ``tag`` once ``future`` (its job on the pool) is done. Connection's thread only."""
        self._order.append(tag)
        self.in_flight[tag] = future
        future.add_done_callback(functools.partial(self._on_done, tag))

    def _on_done(self, tag: int, future: Future[Any]) -> None:  # a pool thread (or this one, if cancelled)
        self._finished.append((tag, future))
        if not self._wake_pending:
            self._wake_pending = True
            try:
                self.connection.add_callback_threadsafe(self.settle)
            except Exception:  # the connection is closing: finish()'s loop settles it
                self._wake_pending = False

    def settle(self) -> None:
        """Settle every job finished so far. Connection's thread only."""
        self._wake_pending = False  # before draining: a job finishing from now on schedules a new wake-up
        finished, done = self._finished, {}
        while finished:
            tag, future = finished.popleft()
            done[tag] = future
        if not done:
            return
        # The head of the delivery order: every tag up to `last` is settled by one multiple ack.
        # Rejects and requeues among them are sent first, so the multiple ack does not cover them.
        order, early, in_flight = self._order, self._settled_early, self.in_flight
        last = run = 0
        while order:
            tag = order[0]
            if tag in early:
                early.discard(tag)
            elif tag in done:
                in_flight.pop(tag, None)
                if self._settle_one(tag, done.pop(tag), ack_now=False):
                    last, run = tag, run + 1
            else:
                break
            order.popleft()
        if run:
            self.channel.basic_ack(last, multiple=run > 1)
            self.stats.acked += run
            self._report("acked", run)
        for tag, future in done.items():  # finished behind a job still running
            in_flight.pop(tag, None)
            self._settle_one(tag, future, ack_now=True)
            early.add(tag)

    def finish(self) -> None:
        """Requeue the jobs not started, wait for the running ones and settle them. Connection's thread only."""
        for future in list(self.in_flight.values()):
            future.cancel()
        while self.in_flight:
            self.connection.process_data_events(time_limit=0.05)
            self.settle()

    def _settle_one(self, tag: int, future: Future[Any], ack_now: bool) -> bool:
        """Reject or requeue ``tag`` now; ack it now if ``ack_now``. True if it is an ack left to send."""
        if future.cancelled():
            self.channel.basic_nack(tag, requeue=True)
            self.stats.requeued += 1
        elif future.exception() is not None:
            log.warning("job failed, rejecting it: %r", future.exception())
            self.channel.basic_reject(tag, requeue=False)
            self.stats.rejected += 1
            self._report("rejected")
        elif ack_now:
            self.channel.basic_ack(tag)
            self.stats.acked += 1
            self._report("acked")
        else:
            return True
        return False

    def _report(self, outcome: str, count: int = 1) -> None:
        if self.on_settled:
            for _ in range(count):
                self.on_settled(outcome)
