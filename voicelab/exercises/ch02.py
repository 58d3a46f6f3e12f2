"""Exercises of notebook 02 (acknowledgements).

q1: write ``on_message(channel, method, properties, body, process)``, the
callback of a consumer with manual acks:

- a body that is not valid JSON: reject it *without* requeue (the queue's
  dead-letter queue keeps it; requeueing it would loop forever);
- otherwise call ``process(job)`` with the decoded JSON; when it returns,
  ack the message; when it raises, reject it without requeue.

The checker also crashes the worker in the middle of a job (``process`` never
returns, the connection drops, as when the process is killed): that job must
come back to the queue for another worker, so it must not have been acked yet.

Example (in the notebook, after writing ``on_message``)::

    from voicelab.exercises import ch02
    ch02.q1.check(on_message)     # pass, or what is wrong and a hint
    ch02.q1.hint()
"""

from __future__ import annotations

import json
from typing import Any, Callable

import pika

from ..broker import shared_broker
from ..queues import dlq_name, drain, wait_stable
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


class _WorkerCrash(BaseException):
    """The worker process dies in the middle of a job: no ``except Exception`` sees it, nothing runs after it."""


def _check_callback(fn: Callable[..., Any]) -> str:
    good = [{"job_id": f"good-{i}"} for i in range(4)]
    messages = [json.dumps(j).encode() for j in good[:2]] + [b"{oops", json.dumps({"job_id": "poison"}).encode(),
                                                           b"\xff\xfe", *[json.dumps(j).encode() for j in good[2:]]]
    processed: list[str] = []

    def process(job: Any) -> None:
        processed.append(job["job_id"])
        if job["job_id"] == "poison":
            raise _Poison("this job always fails")
        if job["job_id"] == "crash":
            raise _WorkerCrash("the worker died during this job")

    broker = shared_broker()
    with scratch_queue("acks", dead_letters=True) as queue, broker.connect() as connection:
        admin = connection.channel()
        admin.confirm_delivery()
        for body in messages:
            admin.basic_publish("", queue, body, _PERSISTENT)
        calls, crashed = _run_until_crash(broker, admin, queue, fn, process, len(messages), processed)
        wait_stable(admin, queue, dlq_name(queue))  # requeues and dead-lettering settle inside the broker
        back = [m.body for m in drain(admin, queue)]
        dead = [m.body for m in drain(admin, dlq_name(queue))]
    return _judge_callback(calls, len(messages), processed, [j["job_id"] for j in good], crashed, back, dead)


_PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
_CRASH_BODY = json.dumps({"job_id": "crash"}).encode()


def _run_until_crash(broker: Any, admin: Any, queue: str, fn: Callable[..., Any], process: Callable[[Any], None],
                     published: int, processed: list[str]) -> tuple[int, bool]:
    """Run ``fn`` as the callback of a worker with its own connection on the ``published`` messages; then, unless
    nothing looped, publish one job that crashes the worker in ``process``. Returns (callback calls before that
    job, whether the crash reached the worker)."""
    calls = [0]
    worker = broker.connect()  # the worker's own connection: its crash closes it
    first_phase, crashed = 0, False
    try:
        channel = worker.channel()
        channel.basic_qos(prefetch_count=10)

        def callback(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            calls[0] += 1
            fn(ch, method, properties, body, process)

        channel.basic_consume(queue, callback)
        for _ in range(40):
            worker.process_data_events(time_limit=0.05)
            if calls[0] > 3 * published:
                break
        first_phase = calls[0]
        if first_phase <= published and channel.is_open:
            # Phase 2: one more job, and the worker dies while doing it.
            admin.basic_publish("", queue, _CRASH_BODY, _PERSISTENT)
            try:
                for _ in range(60):
                    worker.process_data_events(time_limit=0.05)
                    if "crash" in processed:
                        break
            except _WorkerCrash:
                crashed = True
    finally:
        try:
            worker.close()  # like a killed process: the broker requeues what the worker had not settled
        except Exception:
            pass
    return first_phase, crashed


def _judge_callback(calls: int, published: int, processed: list[str], good: list[str], crashed: bool,
                    back: list[bytes], dead: list[bytes]) -> str:
    """The verdict on what :func:`_check_callback` saw: the pass message, or :class:`Wrong` with what went wrong."""
    if calls > published:
        raise Wrong(f"your callback ran {calls} times for {published} messages: something was requeued and "
                    "came back. Reject malformed or failing messages with requeue=False.")
    if sorted(p for p in processed if p != "crash") != sorted(good + ["poison"]):
        raise Wrong(f"process() should be called once per valid JSON message; it was called for {processed}")
    if not crashed:
        raise Wrong("the checker's last job crashes the worker inside process(), but your callback never called "
                    "process() for it, or caught the crash and went on: let exceptions that are not the job's "
                    "failure (e.g. BaseException) propagate.")
    left = [b for b in back if b != _CRASH_BODY]
    if left:
        raise Wrong(f"{len(left)} message(s) were neither acked nor rejected, so they went back to the queue "
                    "when the worker's connection closed. Ack every job that succeeded.")
    if _CRASH_BODY not in back:
        where = ("was rejected to the dead-letter queue" if _CRASH_BODY in dead else
                 "was acked before process() finished, so the broker forgot it")
        raise Wrong(f"the worker crashed in the middle of a job, and that job {where}: it is lost, never done. "
                    "Ack only after process(job) has returned, so that an unfinished job goes back to the queue.")
    want_dead = sorted([b"{oops", b"\xff\xfe", json.dumps({"job_id": "poison"}).encode()])
    if sorted(dead) != want_dead:
        raise Wrong(f"the dead-letter queue should hold the 2 malformed messages and the failing job, "
                    f"it holds {sorted(dead)}")
    return ("4 jobs acked after processing; 2 malformed and 1 failing message dead-lettered, none looped; "
            "the job running when the worker crashed went back to the queue.")


q1 = Exercise(
    "ch02.q1", "ack after success, dead-letter the rest",
    _check_callback,
    hints=[
        """Three outcomes: a body that is not JSON, a job whose process() raises, a job that succeeded.
        Only the last is acked, and only once process() has returned. The other two can never succeed:
        requeued, they would come straight back forever; rejected without requeue, the broker moves
        them to the queue's dead-letter queue.""",
        """Think of a worker that dies in the middle of a job (killed, out of memory): the broker gives the job
        to another worker only if it was never acked. So the ack comes last, after the work, never before it.""",
        """json.loads(body) raises json.JSONDecodeError (or UnicodeDecodeError) on a malformed body:
        catch it and call channel.basic_reject(method.delivery_tag, requeue=False). Call process(job) in a
        try block; ack with channel.basic_ack(method.delivery_tag) only after it returned.""",
    ],
    solution=on_message,
)
