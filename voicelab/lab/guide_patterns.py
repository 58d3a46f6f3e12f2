"""The source guide's patterns as written, kept to run them and watch them fail. DO NOT COPY.

Each one names the section of the guide (``docs/guide.md`` in the repository)
it comes from, what is wrong with it, and where the course does it right.
The course runs them on the real broker, in a child process where the
failure must not take the notebook down, to show the failure rather than
assert it.

- :class:`ConcurrentProcessor` ("Thread Pool with RabbitMQ", "The Pattern We
  Use"): acks from ``ThreadPoolExecutor`` threads on a ``BlockingConnection``,
  which is not thread safe. Do instead: :class:`voicelab.consumers.ThreadPoolConsumer`.

Example::

    run_guide_processor(broker, "guide_pool", n=3000)
    # {'sent': 3000, 'acked': 3, 'left in queue': 2997, 'how it ended': 'AssertionError: ...', ...}
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import pika

from ..broker import Broker, free_port
from ..queues import delete_job_queue, dlq_name, refill, wait_for_consumers, wait_stable


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
        # the dead child's messages are requeued asynchronously, and on a busy machine slowly: a 0.3 s pause
        # once left one uncounted (1999 of 2000 read, the broker's own count had no ack)
        left = wait_stable(channel, queue, quiet=1.0)[queue]
        channel.queue_delete(queue)
    return {"sent": n, "acked": n - left, "left in queue": left, "seconds": round(seconds, 1),
            "how it ended": outcome.splitlines()[0], "traceback tail": "\n".join(outcome.splitlines()[1:])}


# ---------------------------------------------------------------------------
# Guide, "Monitoring and Metrics": "Queue Monitoring" and "Consumer Health Check". DO NOT COPY.
# Do instead: voicelab.monitoring (three sources), voicelab.alerts (rules on data), voicelab.health.
# ---------------------------------------------------------------------------

GUIDE_DEPTH_WARNING = 100
"""Guide, "Monitoring and Metrics" / "Queue Monitoring": ``if info['message_count'] > 100: WARNING``."""


def guide_get_queue_info(channel: Any, queue: str) -> dict[str, int]:
    """Guide, "Queue Monitoring" ``get_queue_info``: a passive declare; ready messages and consumers only."""
    method = channel.queue_declare(queue=queue, passive=True)  # Don't create if doesn't exist
    return {"message_count": method.method.message_count, "consumer_count": method.method.consumer_count}


def guide_backing_up(info: dict[str, int]) -> bool:
    """Guide, "Queue Monitoring" ``monitor_queue``: the fixed-depth warning, once a minute in the guide.

    Wrong both ways: a burst of 150 jobs that drains in a second warns; 60 jobs growing on a queue
    nobody consumes never do, and unacked (in-flight) messages are not even counted.
    """
    return info["message_count"] > GUIDE_DEPTH_WARNING


class GuideHealthyConsumer:
    """Guide, "Monitoring and Metrics" / "Consumer Health Check" ``HealthyConsumer``: **do not use**.

    Unchanged in substance: ``last_message_time`` is set when a message *arrives*, and
    ``health_check`` says unhealthy after ``window_s`` without one (300 s in the guide; a
    parameter here so that a notebook can wait seconds, not minutes). So an idle consumer on an
    empty queue is "unhealthy", and a consumer stuck inside a job it received less than
    ``window_s`` ago is "healthy" however many messages pile up. ``process_job`` stands in for the
    guide's job function.
    """

    def __init__(self, process_job: Callable[[Any], Any] = lambda job: None, window_s: float = 300.0) -> None:
        self.last_message_time = time.time()
        self.processed_count = 0
        self.process_job = process_job
        self.window_s = window_s

    def process_message(self, ch: Any, method: Any, properties: Any, body: bytes) -> None:
        self.last_message_time = time.time()
        try:
            self.process_job(json.loads(body))
            self.processed_count += 1
            ch.basic_ack(delivery_tag=method.delivery_tag)
        except Exception:
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)

    def health_check(self) -> bool:
        time_since_last = time.time() - self.last_message_time
        if time_since_last > self.window_s:  # 5 minutes in the guide
            print(f"WARNING: No messages processed in {self.window_s:g} s")
            return False
        return True


# ---------------------------------------------------------------------------
# Guide, "Dead Letter Queues" / "Using Dead Letter Queue": the header retry counter. DO NOT COPY.
# ---------------------------------------------------------------------------

def guide_retry_callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
    """Guide, "Dead Letter Queues" / "Using Dead Letter Queue": **do not use**.

    Unchanged in substance (the guide's thread pool is left out: the job simply
    fails). It raises ``x-retry-count`` in ``properties.headers`` and calls
    ``basic_nack(requeue=True)``: those headers are the client's copy, nothing
    sends them back, the broker redelivers its own unchanged message, the count
    reads 0 at every delivery and the ``>= 3`` branch never runs. Do instead:
    :mod:`voicelab.retry` (republish a copy, TTL tiers with ``x-death``, or a
    quorum queue's ``x-delivery-limit``).
    """
    try:
        json.loads(body)
        if properties.headers and properties.headers.get('x-retry-count', 0) >= 3:
            ch.basic_nack(delivery_tag=method.delivery_tag, requeue=False)   # to the dead letter queue
            return
        raise RuntimeError("process_voice_job failed")   # stands in for a job that keeps failing
    except Exception:
        if not properties.headers:
            properties.headers = {}
        properties.headers['x-retry-count'] = properties.headers.get('x-retry-count', 0) + 1
        ch.basic_nack(delivery_tag=method.delivery_tag, requeue=True)


def run_guide_retry_counter(broker: Broker, queue: str = "guide_retry", redeliveries: int = 5,
                            timeout: float = 10.0) -> dict[str, Any]:
    """Run :func:`guide_retry_callback` on one failing job for ``redeliveries`` deliveries (bounded: the loop
    would never end) and report the ``x-retry-count`` the broker delivered each time and what reached the DLQ.

    Example::

        run_guide_retry_counter(broker)   # {'x-retry-count seen': [0, 0, 0, 0, 0], 'in DLQ': 0, ...}
    """

    if not isinstance(redeliveries, int) or redeliveries < 1:
        raise ValueError(f"redeliveries must be an int >= 1, got {redeliveries!r}")
    seen: list[int] = []
    with broker.connect() as connection:
        channel = connection.channel()
        refill(channel, queue, [{"job_id": "guide-1", "blob_key": "audio/x.wav", "user_id": 1}], dead_letters=True)
        worker = connection.channel()
        worker.basic_qos(prefetch_count=1)

        def counting(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            seen.append(int((properties.headers or {}).get("x-retry-count", 0)))
            if len(seen) < redeliveries:
                guide_retry_callback(ch, method, properties, body)

        worker.basic_consume(queue, counting)
        t0 = time.monotonic()
        while len(seen) < redeliveries and time.monotonic() - t0 < timeout:
            connection.process_data_events(time_limit=0.05)
        worker.close()   # the last delivery goes back to the queue
        left = wait_stable(channel, queue, dlq_name(queue))
        delete_job_queue(channel, queue)
    return {"x-retry-count seen": seen, "deliveries": len(seen), "in DLQ": left[dlq_name(queue)],
            "still in queue": left[queue]}


# ---------------------------------------------------------------------------
# Guide, "Best Practices" / "3. Handle Connection Failures": robust_consumer. DO NOT COPY.
# ---------------------------------------------------------------------------

def robust_consumer(parameters: pika.ConnectionParameters, queue: str = "voice_processing",
                    callback: Callable[..., Any] | None = None, retry_seconds: float = 5) -> None:
    """Guide, "Best Practices" / "3. Handle Connection Failures": **do not use**.

    Unchanged in substance; the connection parameters, the queue, the callback
    and the guide's 5 s pause are parameters. When the very first
    ``BlockingConnection(...)`` fails, ``connection`` is never bound: the
    ``except`` prints and sleeps, then the ``finally`` reads ``connection`` and
    raises ``UnboundLocalError`` (a ``NameError``): the "robust" loop dies on
    its first failure, the only trace of the real error is a misleading
    "Connection lost" (it never connected), and the ``NameError`` is what the
    caller sees.
    Do instead: :class:`voicelab.reconnect.ReconnectingConsumer`.
    """
    while True:
        try:
            connection = pika.BlockingConnection(parameters)
            channel = connection.channel()

            # Set up consumer
            channel.basic_consume(queue=queue, on_message_callback=callback)
            channel.start_consuming()

        except pika.exceptions.AMQPConnectionError:
            print(f"Connection lost, retrying in {retry_seconds:g} seconds...")
            time.sleep(retry_seconds)
        except KeyboardInterrupt:
            break
        finally:
            if connection and not connection.is_closed:  # noqa: F821 - the guide's bug: unbound on a first failure
                connection.close()


def run_guide_robust_consumer(host: str = "127.0.0.1", port: int | None = None) -> dict[str, Any]:
    """Run :func:`robust_consumer` against a port where no broker listens; report what it raised and what it hid.

    Example::

        run_guide_robust_consumer()
        # {'raised': 'UnboundLocalError', 'is a NameError': True, 'connect attempts': 1,
        #  'real error (never shown)': 'AMQPConnectionError: ...', ...}
    """
    params = pika.ConnectionParameters(host=host, port=port or free_port(), connection_attempts=1, socket_timeout=1)
    out = io.StringIO()
    t0 = time.monotonic()
    try:
        with contextlib.redirect_stdout(out):
            robust_consumer(params, retry_seconds=0.1)
        raised: BaseException | None = None
    except BaseException as e:  # noqa: BLE001 - the point is to see what it raises
        raised = e
    seconds = round(time.monotonic() - t0, 2)
    try:  # the same connect, outside the guide's code: the error its except swallowed
        pika.BlockingConnection(params).close()
        real = "none: the connect succeeded"
    except Exception as e:  # noqa: BLE001
        real = f"{type(e).__name__}: {e!r}"[:200]
    printed = out.getvalue().strip()
    return {"raised": type(raised).__name__ if raised else "nothing",
            "message": str(raised) if raised else "",
            "is a NameError": isinstance(raised, NameError),
            "connect attempts": printed.count("retrying"),
            "printed": printed, "real error (never shown)": real, "seconds": seconds}
