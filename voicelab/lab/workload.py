"""Background load for notebook 07's experiments: a publisher at a steady rate, consumers doing timed jobs.

Both are a thread's body: they run until ``stop`` is set, on a connection of their own (pika
connections are not shared between threads), and append what went wrong to ``errors`` for the
experiment to raise, instead of dying silently in a thread.

Example::

    stop, errors = threading.Event(), []
    threads = [threading.Thread(target=publish_paced, args=(broker, "demo", 20.0, stop, errors)),
               threading.Thread(target=consume_jobs, args=(broker, "demo", 0.01, stop), kwargs={"errors": errors})]
    for t in threads:
        t.start()
    time.sleep(5)            # about 100 messages published, each consumed in 10 ms
    stop.set()
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Callable

import pika

from ..broker import Broker


def publish_paced(broker: Broker, queue: str, rate: float, stop: threading.Event, errors: list[BaseException], *,
                  start: float | None = None, on_publish: Callable[[], None] | None = None,
                  name: str = "") -> None:
    """Publish persistent messages ``b"0"``, ``b"1"``, ... to ``queue`` at ``rate`` per second until ``stop`` is set,
    each with its ``timestamp`` property (Unix seconds: RabbitMQ reports the head message's as its age).

    Message ``i`` goes out at ``start + i / rate`` (``start``: a ``time.monotonic()``, default now), each
    confirmed, so a slow broker makes it late rather than the rate drift. ``on_publish()`` is called
    after each confirm. The connection is named ``name`` (default ``voicelab publisher <queue>``).
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0 messages/s, got {rate!r}")
    try:
        with broker.connect(client_properties={"connection_name": name or f"voicelab publisher {queue}"}
                            ) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            t0, i = time.monotonic() if start is None else start, 0
            while not stop.is_set():
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                    continue
                props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent,
                                             timestamp=int(time.time()))   # seconds: what the broker reports back
                channel.basic_publish("", queue, str(i).encode(), props)
                if on_publish is not None:
                    on_publish()
                i += 1
    except BaseException as e:  # reported by the experiment that started the thread
        errors.append(e)


def consume_jobs(broker: Broker, queue: str, job_s: float, stop: threading.Event, *, prefetch: int = 1,
                 errors: list[BaseException] | None = None, on_settle: Callable[[], None] | None = None,
                 name: str = "voicelab monitor consumer", reject_every: int = 0, requeue_every: int = 0,
                 hold: bool = False) -> None:
    """A consumer thread's body: take jobs from ``queue``, 'work' ``job_s`` s each, ack; until ``stop`` is set.

    ``reject_every=n`` rejects every n-th message without requeue (to its dead-letter queue);
    ``requeue_every=n`` nacks every n-th delivery with requeue (the broker redelivers it);
    ``hold=True`` never settles anything: the consumer keeps its ``prefetch`` messages unacked (a hung job,
    a forgotten ack) until its channel closes.
    ``on_settle()`` is called after each ack or reject. Without ``errors`` a failure is raised.
    """
    try:
        with broker.connect(client_properties={"connection_name": name}) as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=prefetch)
            n = 0
            for method, _, _ in channel.consume(queue, inactivity_timeout=0.05):
                if stop.is_set():
                    break
                if method is None:
                    continue
                n += 1
                if hold:
                    continue
                if job_s:
                    time.sleep(job_s)
                if requeue_every and n % requeue_every == 0:
                    channel.basic_nack(method.delivery_tag, requeue=True)
                elif reject_every and n % reject_every == 0:
                    channel.basic_reject(method.delivery_tag, requeue=False)
                else:
                    channel.basic_ack(method.delivery_tag)
                if on_settle is not None:
                    on_settle()
            with contextlib.suppress(Exception):
                channel.cancel()
    except BaseException as e:
        if errors is None:
            raise
        errors.append(e)
