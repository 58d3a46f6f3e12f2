"""The source guide's patterns as written, kept to run them and watch them fail. DO NOT COPY.

Each one names the section of the guide (``shared/seed/rabbitmq-guide.md``)
it comes from, what is wrong with it, and where the course does it right.
The course runs them on the real broker, in a child process where the
failure must not take the notebook down, to show the failure rather than
assert it.

- :class:`ConcurrentProcessor` ("Thread Pool with RabbitMQ", "The Pattern We
  Use"): acks from ``ThreadPoolExecutor`` threads on a ``BlockingConnection``,
  which is not thread safe. Do instead: :class:`voicelab.concurrency.ThreadPoolConsumer`.

Example::

    run_guide_processor(broker, "guide_pool", n=3000)
    # {'sent': 3000, 'acked': 3, 'left in queue': 2997, 'how it ended': 'AssertionError: ...', ...}
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pika

from .broker import Broker
from .queues import refill, wait_for_consumers, wait_stable


class ConcurrentProcessor:
    """Guide, "Thread Pool with RabbitMQ" / "The Pattern We Use": **do not use**.

    Unchanged in substance: ``handle_completion`` runs on a pool thread and
    calls ``ch.basic_ack`` there, on a connection that belongs to another
    thread; the connection dies within moments. Only the broker URL, the
    queue name and a stand-in job (``time.sleep(job_seconds)`` for the
    guide's ``process_voice_job``) are parameters here.
    """

    def __init__(self, url: str, queue: str, max_workers: int = 10, job_seconds: float = 0.001) -> None:
        self.executor = ThreadPoolExecutor(max_workers=max_workers)
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None
        self.url, self.queue, self.max_workers, self.job_seconds = url, queue, max_workers, job_seconds

    def connect(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        self.channel = self.connection.channel()
        self.channel.queue_declare(queue=self.queue, durable=True)
        self.channel.basic_qos(prefetch_count=self.max_workers)  # prefetch to match the worker count

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


def _processor_main(url: str, queue: str, max_workers: int, report: str) -> None:
    """Child process: run the guide's :class:`ConcurrentProcessor` and write how it ended to ``report``."""
    sys.stderr = open(os.devnull, "w")  # pool threads print their own tracebacks; the report has the one that matters
    try:
        processor = ConcurrentProcessor(url, queue, max_workers)
        processor.connect()
        processor.start()
        outcome = "start_consuming returned"
    except BaseException as e:  # noqa: BLE001 - the point is to see what it raises
        outcome = f"{type(e).__name__}: {e}".strip()
        tb = traceback.format_exc().strip().splitlines()
        outcome += "\n" + "\n".join(tb[-6:])
    Path(report).write_text(outcome)


def run_guide_processor(broker: Broker, queue: str, n: int, max_workers: int = 10,
                        timeout: float = 15.0) -> dict[str, Any]:
    """Guide, "Thread Pool with RabbitMQ": fill ``queue`` with ``n`` jobs, run :class:`ConcurrentProcessor`
    in a child process for at most ``timeout`` s, and report how many messages it acked and how it ended.

    The child is always killed; its unacked messages go back to the queue and are counted there.
    """
    with broker.connect() as connection:
        refill(connection.channel(), queue, [{"job": i} for i in range(n)])
    with tempfile.TemporaryDirectory(prefix="voicelab-guide-") as tmp:
        report = Path(tmp, "report.txt")
        child = multiprocessing.get_context("spawn").Process(
            target=_processor_main, args=(broker.amqp_url, queue, max_workers, str(report)), daemon=True)
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
        wait_for_consumers(channel, queue, 0)
        left = wait_stable(channel, queue)[queue]  # the dead child's messages are requeued asynchronously
        channel.queue_delete(queue)
    return {"sent": n, "acked": n - left, "left in queue": left, "seconds": round(seconds, 1),
            "how it ended": outcome.splitlines()[0], "traceback tail": "\n".join(outcome.splitlines()[1:])}
