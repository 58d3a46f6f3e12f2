"""A thread-pool consumer that is actually thread safe, and the guide's one that is not.

pika is not thread safe: a ``BlockingConnection`` and its channels belong to
the thread that made them. The guide's ``ConcurrentProcessor`` acks from pool
threads and the connection dies within moments. :class:`ThreadPoolConsumer`
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
import json
import logging
import threading
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pika
import pika.exceptions

from .broker import Broker
from .queues import refill, wait_stable

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
    """

    def __init__(self, broker: Broker, queue: str, handler: Callable[[bytes], Any], threads: int = 10,
                 prefetch: int | None = None, heartbeat: int | None = None) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if prefetch is not None and prefetch < 1:
            raise ValueError(f"prefetch must be >= 1 (a pool needs a bound), got {prefetch}")
        self.broker, self.queue, self.handler = broker, queue, handler
        self.threads = threads
        self.prefetch = prefetch or threads
        self.heartbeat = heartbeat
        self.stats = ConsumerStats()
        self._stop = threading.Event()
        self._in_flight: dict[int, Future[Any]] = {}

    def stop(self) -> None:
        """Ask :meth:`run` to shut down gracefully; safe to call from any thread or a signal handler."""
        self._stop.set()

    def run(self, idle_timeout: float | None = None, max_messages: int | None = None) -> ConsumerStats:
        """Consume until :meth:`stop`, until ``max_messages`` are settled, or until idle for ``idle_timeout`` s."""
        overrides: dict[str, Any] = {} if self.heartbeat is None else {"heartbeat": self.heartbeat}
        t0 = time.monotonic()
        last_activity = t0
        with self.broker.connect(**overrides) as connection, \
                ThreadPoolExecutor(self.threads, thread_name_prefix="voicelab-worker") as pool:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)

            def settle(tag: int, future: Future[Any]) -> None:  # runs on the connection's thread
                self._in_flight.pop(tag, None)
                if future.cancelled():
                    channel.basic_nack(tag, requeue=True)
                    self.stats.requeued += 1
                elif future.exception() is not None:
                    log.warning("job failed, rejecting it: %r", future.exception())
                    channel.basic_reject(tag, requeue=False)
                    self.stats.rejected += 1
                else:
                    channel.basic_ack(tag)
                    self.stats.acked += 1

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                self.stats.received += 1
                future = pool.submit(self.handler, body)
                self._in_flight[method.delivery_tag] = future
                future.add_done_callback(
                    lambda f, tag=method.delivery_tag: connection.add_callback_threadsafe(
                        functools.partial(settle, tag, f)))

            tag = channel.basic_consume(self.queue, on_message)
            while not self._stop.is_set():
                settled = self.stats.acked + self.stats.rejected
                connection.process_data_events(time_limit=0.05)
                if self._in_flight or self.stats.acked + self.stats.rejected != settled:
                    last_activity = time.monotonic()
                if max_messages is not None and self.stats.acked + self.stats.rejected >= max_messages:
                    break
                if idle_timeout is not None and time.monotonic() - last_activity > idle_timeout:
                    break
            # Graceful shutdown: no new deliveries; jobs not started go back, running ones finish and ack.
            channel.basic_cancel(tag)
            for future in list(self._in_flight.values()):
                future.cancel()
            while self._in_flight:
                connection.process_data_events(time_limit=0.05)
            channel.close()
        self.stats.seconds = time.monotonic() - t0
        return self.stats


# ---------------------------------------------------------------------------
# The guide's ConcurrentProcessor, as written (acks from pool threads), run in a child process.
# ---------------------------------------------------------------------------

class GuideConcurrentProcessor:
    """The guide's pattern, unchanged in substance: **do not use**. It acks from ThreadPoolExecutor threads."""

    def __init__(self, url: str, queue: str, max_workers: int = 10, job_seconds: float = 0.001) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max_workers)
        self.url, self.queue, self.job_seconds = url, queue, job_seconds
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=queue, durable=True)
        self.channel.basic_qos(prefetch_count=max_workers)

    def process_message(self, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        message = json.loads(body)
        future = self.executor.submit(self.process_job, message)
        future.add_done_callback(lambda f, ch=ch, method=method: self.handle_completion(f, ch, method))

    def process_job(self, message: Any) -> Any:
        time.sleep(self.job_seconds)
        return message

    def handle_completion(self, future: Future[Any], ch: Any, method: Any) -> None:
        try:
            future.result()
            ch.basic_ack(delivery_tag=method.delivery_tag)  # called on a pool thread: not thread safe
        except Exception:
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)

    def start(self) -> None:
        self.channel.basic_consume(queue=self.queue, on_message_callback=self.process_message)
        self.channel.start_consuming()


def _guide_main(url: str, queue: str, max_workers: int, report: str) -> None:
    """Child process: run the guide's processor and write how it ended to ``report``."""
    import os
    import sys

    sys.stderr = open(os.devnull, "w")  # pool threads print their own tracebacks; the report has the one that matters
    try:
        GuideConcurrentProcessor(url, queue, max_workers).start()
        outcome = "start_consuming returned"
    except BaseException as e:  # noqa: BLE001 - the point is to see what it raises
        outcome = f"{type(e).__name__}: {e}".strip()
        tb = traceback.format_exc().strip().splitlines()
        outcome += "\n" + "\n".join(tb[-6:])
    Path(report).write_text(outcome)


def run_guide_processor(broker: Broker, queue: str, n: int, max_workers: int = 10,
                        timeout: float = 15.0) -> dict[str, Any]:
    """Fill ``queue`` with ``n`` jobs, run the guide's ConcurrentProcessor in a child process for at most
    ``timeout`` s, and report how many messages it acked and how it ended. The child is always killed."""
    import multiprocessing
    import tempfile

    with broker.connect() as connection:
        refill(connection.channel(), queue, [json.dumps({"job": i}).encode() for i in range(n)])
    with tempfile.TemporaryDirectory(prefix="voicelab-guide-") as tmp:
        report = Path(tmp, "report.txt")
        child = multiprocessing.get_context("spawn").Process(
            target=_guide_main, args=(broker.amqp_url, queue, max_workers, str(report)), daemon=True)
        t0 = time.monotonic()
        child.start()
        try:
            child.join(timeout)
        finally:  # also on Ctrl-C: the child never outlives this call
            alive = child.is_alive()
            if alive:
                child.kill()
                child.join(5)
        seconds = time.monotonic() - t0
        outcome = report.read_text() if report.exists() else ("still running after "
                                                              f"{timeout:.0f} s (killed)" if alive else "died")
    with broker.connect() as connection:
        channel = connection.channel()
        deadline = time.monotonic() + 10
        while channel.queue_declare(queue, passive=True).method.consumer_count and time.monotonic() < deadline:
            time.sleep(0.05)
        left = wait_stable(channel, queue)[queue]  # the dead child's messages are requeued asynchronously
        channel.queue_delete(queue)
    return {"sent": n, "acked": n - left, "left in queue": left, "seconds": round(seconds, 1),
            "how it ended": outcome.splitlines()[0], "traceback tail": "\n".join(outcome.splitlines()[1:])}
