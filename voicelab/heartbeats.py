"""Long jobs against heartbeats: a blocking callback starves them, a pool consumer does not.

A ``BlockingConnection`` only talks to the broker while the application calls
into pika. A callback that works for a long time sends no heartbeats; once the
broker has heard nothing for about two heartbeat timeouts (not one: it sends and
expects a frame every half timeout and gives up after two missed ones; measured
with a 2 s heartbeat on 3.10.8 and 4.3.6: jobs of 2 and 4 s survived, 6 and 8 s
were cut, so the threshold lies between 2 and 3 intervals), it decides the client
is dead, closes the connection and requeues the unacked message, which is then
processed again. The negotiated default is 60 s, so a 30 s job survives it; only
short heartbeats cut it. pika checks the broker's side every timeout + 5 s.

Example::

    long_job(broker, "long", job_seconds=8, heartbeat=2, style="blocking callback")
    # {'style': 'blocking callback', 'acked': False, 'error': 'StreamLostError: ...', 'redelivered': True, ...}
"""

from __future__ import annotations

import time
from typing import Any, Literal

import pika
import pika.exceptions

from .broker import Broker
from .concurrency import ThreadPoolConsumer
from .queues import drain, refill, wait_for_consumers, wait_stable

Style = Literal["blocking callback", "thread-pool consumer"]


def long_job(broker: Broker, queue: str, job_seconds: float, heartbeat: int,
             style: Style = "blocking callback") -> dict[str, Any]:
    """Publish one job that takes ``job_seconds``; consume it in ``style`` with a ``heartbeat`` (s); report.

    The report says whether the ack reached the broker, the error the consumer
    saw, and whether the message was back in the queue (``redelivered``) afterwards.
    """
    if heartbeat < 1 or job_seconds <= 0:
        raise ValueError(f"heartbeat must be >= 1 s and job_seconds > 0, got {heartbeat}, {job_seconds}")
    with broker.connect() as connection:
        refill(connection.channel(), queue, [b"long job"])
    error = ""
    acked = False
    t0 = time.monotonic()
    if style == "blocking callback":
        try:
            with broker.connect(heartbeat=heartbeat, connection_attempts=1) as connection:
                channel = connection.channel()
                method, _, _ = next(channel.consume(queue, inactivity_timeout=5))
                time.sleep(job_seconds)  # the work, inside pika's thread: nothing answers the broker meanwhile
                channel.basic_ack(method.delivery_tag)
                connection.process_data_events(time_limit=0.5)  # flush the ack
                channel.cancel()
                acked = True
        except pika.exceptions.AMQPError as e:
            error = f"{type(e).__name__}: {e}"
    elif style == "thread-pool consumer":
        consumer = ThreadPoolConsumer(broker, queue, lambda body: time.sleep(job_seconds), threads=1,
                                      heartbeat=heartbeat)
        try:
            acked = consumer.run(max_messages=1).acked == 1
        except pika.exceptions.AMQPError as e:
            error = f"{type(e).__name__}: {e}"
    else:
        raise ValueError(f"style must be 'blocking callback' or 'thread-pool consumer', not {style!r}")
    seconds = time.monotonic() - t0
    with broker.connect() as connection:
        channel = connection.channel()
        wait_for_consumers(channel, queue, 0, timeout=3 * heartbeat + 5)  # until the broker gives up on it
        wait_stable(channel, queue)
        back = drain(channel, queue)
        channel.queue_delete(queue)
    return {"style": style, "job_s": job_seconds, "heartbeat_s": heartbeat, "acked": acked,
            "error": error or "none", "back in queue": bool(back),
            "redelivered": bool(back and back[0].method.redelivered), "seconds": round(seconds, 1)}
