"""Exercises of notebook 02 (acknowledgements).

q1: write ``on_message(channel, method, properties, body, process)``, the
callback of a consumer with manual acks:

- a body that is not valid JSON: reject it *without* requeue (the queue's
  dead-letter queue keeps it; requeueing it would loop forever);
- otherwise call ``process(job)`` with the decoded JSON; when it returns,
  ack the message; when it raises, reject it without requeue.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pika

from ..broker import shared_broker
from ..queues import dlq_name, wait_stable
from .core import Exercise, Wrong, scratch_queue


def on_message(channel: Any, method: Any, properties: Any, body: bytes, process: Callable[[Any], Any]) -> None:
    """Reference solution of q1."""
    try:
        job = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        channel.basic_reject(method.delivery_tag, requeue=False)  # poison: to the dead-letter queue
        return
    try:
        process(job)
    except Exception:
        channel.basic_reject(method.delivery_tag, requeue=False)
        return
    channel.basic_ack(method.delivery_tag)  # only now: the job is done


class _Poison(Exception):
    pass


def _check_callback(fn: Callable[..., Any]) -> str:
    good = [{"job_id": f"good-{i}"} for i in range(4)]
    messages = [json.dumps(j).encode() for j in good[:2]] + [b"{oops", json.dumps({"job_id": "poison"}).encode(),
                                                           b"\xff\xfe", *[json.dumps(j).encode() for j in good[2:]]]
    processed: list[str] = []
    calls = [0]

    def process(job: Any) -> None:
        processed.append(job["job_id"])
        if job["job_id"] == "poison":
            raise _Poison("this job always fails")

    with scratch_queue("acks", dead_letters=True) as queue, shared_broker().connect() as connection:
        admin = connection.channel()
        admin.confirm_delivery()
        for body in messages:
            admin.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=10)

        def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            calls[0] += 1
            fn(ch, method, properties, body, process)

        channel.basic_consume(queue, callback)
        for _ in range(40):
            connection.process_data_events(time_limit=0.05)
            if calls[0] > 3 * len(messages):
                break
        redelivery_loop = calls[0] > len(messages)
        if channel.is_open:
            channel.close()  # unacked messages go back to the queue now
        left = wait_stable(admin, queue, dlq_name(queue))[queue]
        dead = []
        while True:
            m, _, body = admin.basic_get(dlq_name(queue), auto_ack=True)
            if m is None:
                break
            dead.append(body)
    if redelivery_loop:
        raise Wrong(f"your callback ran {calls[0]} times for {len(messages)} messages: something was requeued and "
                    "came back. Reject malformed or failing messages with requeue=False.")
    if sorted(processed) != sorted([j["job_id"] for j in good] + ["poison"]):
        raise Wrong(f"process() should be called once per valid JSON message; it was called for {processed}")
    if left:
        raise Wrong(f"{left} message(s) were neither acked nor rejected, so they went back to the queue "
                    "when the channel closed. Ack every job that succeeded.")
    want_dead = sorted([b"{oops", b"\xff\xfe", json.dumps({"job_id": "poison"}).encode()])
    if sorted(dead) != want_dead:
        raise Wrong(f"the dead-letter queue should hold the 2 malformed messages and the failing job, "
                    f"it holds {sorted(dead)}")
    return "4 jobs acked after processing; 2 malformed and 1 failing message dead-lettered, none looped."


q1 = Exercise(
    "ch02.q1", "ack after success, dead-letter the rest",
    _check_callback,
    hints=[
        """Three outcomes: a body that is not JSON, a job whose process() raises, a job that succeeded.
        Only the last is acked, and only once process() has returned. The other two can never succeed:
        requeued, they would come straight back forever; rejected without requeue, the broker moves
        them to the queue's dead-letter queue.""",
        """json.loads(body) raises json.JSONDecodeError (or UnicodeDecodeError) on a malformed body:
        catch it and call channel.basic_reject(method.delivery_tag, requeue=False). Call process(job) in a
        try block; ack with channel.basic_ack(method.delivery_tag) only after it returned.""",
    ],
    solution=on_message,
)
