"""Declaring job queues, publishing jobs, and the queue chores every lesson repeats.

Production code: :func:`declare_job_queue`, :func:`job_properties`, :func:`publish_job`,
:func:`delete_job_queue`.
Chores for starting and reading a demo from a known state: :func:`refill`
(:func:`reset_queue` then :func:`publish_bodies`), :func:`wait_for_consumers`,
:func:`wait_stable`, :func:`drain`.

Example::

    from voicelab.broker import start_broker
    from voicelab.jobs import VoiceJob
    with start_broker() as broker, broker.connect() as connection:
        channel = connection.channel()
        declare_job_queue(channel, "voice_jobs")
        channel.confirm_delivery()
        publish_job(channel, "voice_jobs", VoiceJob.new("audio/x.wav", 1))
        refill(channel, "demo", range(3))          # an empty durable queue with b"0", b"1", b"2"
        [m.body for m in drain(channel, "demo")]   # [b'0', b'1', b'2']
        delete_job_queue(channel, "voice_jobs")    # and its dead-letter queue
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Iterable, NamedTuple, TypeVar

import pika
import pika.spec
from pika.adapters.blocking_connection import BlockingChannel

from .jobs import JOB_TYPE, VoiceJob, job_id_of

T = TypeVar("T")

Body = bytes | str | int | dict[str, Any] | list[Any] | VoiceJob


def dlq_name(queue: str) -> str:
    """Name of the dead-letter queue that :func:`declare_job_queue` pairs with ``queue``.

    >>> dlq_name("voice_jobs")
    'voice_jobs.dlq'
    """
    _check_queue(queue)
    return f"{queue}.dlq"


def _check_queue(queue: Any) -> None:
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")


def declare_job_queue(channel: BlockingChannel, queue: str, dead_letters: bool = True,
                      arguments: dict[str, Any] | None = None) -> int:
    """Declare a durable job queue (and, by default, its dead-letter queue ``<queue>.dlq``).

    Durable, because a voice job must survive a broker restart, and because RabbitMQ
    deprecates transient *non-exclusive* queues (``transient_nonexcl_queues``: denied by
    default from 4.3.0 per its release notes, yet accepted by Debian's 3.10.8, 4.0.5 and
    4.3.6 with their default configuration). Exclusive server-named queues are not affected. A message
    rejected without requeue goes to the DLQ instead of vanishing.
    Returns the number of messages ready in ``queue``.
    """
    _check_queue(queue)
    args = dict(arguments or {})
    if dead_letters:
        channel.queue_declare(dlq_name(queue), durable=True)
        args.setdefault("x-dead-letter-exchange", "")
        args.setdefault("x-dead-letter-routing-key", dlq_name(queue))
    ok = channel.queue_declare(queue, durable=True, arguments=args or None)
    return int(ok.method.message_count)


def delete_job_queue(channel: BlockingChannel, queue: str) -> None:
    """Delete ``queue`` and its dead-letter queue ``<queue>.dlq`` (see :func:`declare_job_queue`), messages and all.

    Either may be missing: deleting a queue that does not exist succeeds. The
    broker cancels the consumers of a deleted queue.

    Example::

        declare_job_queue(channel, "voice_jobs")
        delete_job_queue(channel, "voice_jobs")   # voice_jobs and voice_jobs.dlq are gone
    """
    _check_queue(queue)
    channel.queue_delete(queue)
    channel.queue_delete(dlq_name(queue))


def job_properties(**extra: Any) -> pika.BasicProperties:
    """Properties of a job message: JSON, of type :data:`~voicelab.jobs.JOB_TYPE`, persistent (written to disk
    by a durable queue); ``extra`` adds or overrides.

    >>> job_properties().delivery_mode == pika.DeliveryMode.Persistent.value
    True
    """
    return pika.BasicProperties(**{"content_type": "application/json", "type": JOB_TYPE,
                                   "delivery_mode": pika.DeliveryMode.Persistent, **extra})


def publish_job(channel: BlockingChannel, queue: str, job: VoiceJob | dict[str, Any]) -> None:
    """Publish ``job`` to ``queue`` through the default exchange as persistent JSON, ``mandatory``, confirmed.

    Persistence alone does not make a publish safe: the channel must be in
    confirm mode (``channel.confirm_delivery()``, once), so that this call waits
    for the broker's confirm and raises ``pika.exceptions.UnroutableError`` when
    no queue ``queue`` took the job, or ``NackError`` when the broker refused it.
    On a channel without confirms it raises ``ValueError`` before publishing: the
    job could be dropped without a word (the course's first lesson).
    """
    if not getattr(channel, "_delivery_confirmation", False):  # pika keeps the mode there
        raise ValueError("channel is not in confirm mode: a job no queue takes would be lost without an error. "
                         "Call channel.confirm_delivery() once on this channel, then publish_job")
    body = job.to_json() if isinstance(job, VoiceJob) else json.dumps(job).encode()
    channel.basic_publish(exchange="", routing_key=queue, body=body, properties=job_properties(), mandatory=True)


def queue_counts(channel: BlockingChannel, queue: str) -> int:
    """Messages ready in ``queue`` (not counting unacknowledged ones), read with a passive declare."""
    return int(channel.queue_declare(queue, passive=True).method.message_count)


# ---------------------------------------------------------------------------
# Chores: start a demo from a known queue, wait for the broker, read what is left.
# ---------------------------------------------------------------------------

def encode_body(body: Body) -> bytes:
    """The bytes :func:`publish_bodies` sends for ``body``: bytes as they are, text as UTF-8,
    an int as its decimal digits, a :class:`~voicelab.jobs.VoiceJob` as its JSON, anything else as JSON.

    >>> [encode_body(b) for b in (b"raw", "text", 7, {"job": 1})]
    [b'raw', b'text', b'7', b'{"job": 1}']
    """
    if isinstance(body, bytes):
        return body
    if isinstance(body, VoiceJob):
        return body.to_json()
    if isinstance(body, str):
        return body.encode()
    if isinstance(body, int):
        return str(body).encode()
    return json.dumps(body).encode()


def confirm_mode(channel: BlockingChannel) -> None:
    """Put ``channel`` in publisher-confirm mode, unless it already is (pika logs an error on a second call).

    From then on each ``basic_publish`` waits for the broker's confirm and
    raises if the broker refused the message (or, with ``mandatory=True``, could not route it).
    """
    if not getattr(channel, "_delivery_confirmation", False):
        channel.confirm_delivery()


def reset_queue(channel: BlockingChannel, queue: str, *, purge: bool = False, dead_letters: bool = False,
                arguments: dict[str, Any] | None = None) -> None:
    """Make ``queue`` an empty durable queue (with its dead-letter queue ``<queue>.dlq`` if ``dead_letters``).

    By default the queue is deleted and declared afresh: its consumers are
    cancelled, its arguments and its management counters start over.
    ``purge=True`` removes only its ready messages: attached consumers stay
    attached, and the messages they hold unacknowledged stay theirs (the
    queue must then already have the same ``arguments``, e.g. its
    ``x-queue-type``, or be missing).

    Example::

        reset_queue(channel, "voice_jobs", dead_letters=True)
        queue_counts(channel, "voice_jobs")   # 0
        reset_queue(channel, "bench.quorum", arguments={"x-queue-type": "quorum"})
    """
    if not purge:
        if dead_letters:
            delete_job_queue(channel, queue)
        else:
            channel.queue_delete(queue)
    declare_job_queue(channel, queue, dead_letters=dead_letters, arguments=arguments)
    if purge:
        for q in [queue, dlq_name(queue)] if dead_letters else [queue]:
            channel.queue_purge(q)


def _job_message_id(properties: pika.BasicProperties, body: bytes) -> pika.BasicProperties:
    """``properties`` with the job id ``body`` carries as ``message_id``, if it carries one (else as they are)."""
    job_id = job_id_of(body) if body[:1] == b"{" else None
    return pika.BasicProperties(**{**vars(properties), "message_id": job_id}) if job_id else properties


def publish_bodies(channel: BlockingChannel, queue: str, bodies: Iterable[Body], *, confirm: bool = True,
                   persistent: bool = True, properties: pika.BasicProperties | None = None) -> int:
    """Publish each of ``bodies`` (see :func:`encode_body`) to ``queue``; return how many were sent.

    Every message is in the queue when this returns. ``confirm=True`` puts
    the channel in confirm mode and each publish waits for the broker's
    confirm (safe, a round trip each); ``confirm=False`` publishes in bulk, in
    one transaction on a channel of its own (``tx.commit-ok`` comes once every
    queue has taken every message: one round trip in all; for benchmarks and
    demos that prepare a queue). A passive declare would not do: the queue
    answers it ahead of deliveries still in its mailbox. By default each message has :func:`job_properties` (persistent
    JSON), and a body that carries a job id (a :class:`~voicelab.jobs.VoiceJob`,
    or JSON with a string ``job_id``) has it as ``message_id``;
    ``persistent=False`` sends transient messages with no other property;
    ``properties``, if given, is used for every message as it is.

    Example::

        publish_bodies(channel, "voice_jobs", [VoiceJob.new("audio/a.wav", 1), b"not json"])
        publish_bodies(channel, "bench", [b"x" * 100] * 1000, confirm=False, persistent=False)
    """
    if properties is not None and not persistent:
        raise ValueError("give properties or persistent=False, not both: persistent=False chooses transient "
                         "default properties, properties are sent as they are")
    props = properties if properties is not None else (
        job_properties() if persistent else pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient))
    job_ids = properties is None and persistent
    if confirm:
        confirm_mode(channel)   # mandatory publishes: a missing queue comes back as UnroutableError
        publisher = channel
    else:  # a transaction on a side channel: the caller's channel stays as it was (not transactional)
        publisher = channel.connection.channel()
    sent = 0
    try:
        if not confirm:
            publisher.queue_declare(queue, passive=True)   # a missing queue: 404 here, not messages dropped
            publisher.tx_select()
        for body in bodies:
            raw = encode_body(body)
            publisher.basic_publish("", queue, raw, _job_message_id(props, raw) if job_ids else props,
                                    mandatory=confirm)
            sent += 1
        if not confirm:
            publisher.tx_commit()  # answered once every queue has confirmed every message: all enqueued
    finally:
        if publisher is not channel and publisher.is_open:
            publisher.close()
    return sent


def refill(channel: BlockingChannel, queue: str, bodies: Iterable[Body] = (), *, purge: bool = False,
           dead_letters: bool = False, arguments: dict[str, Any] | None = None, confirm: bool = True,
           persistent: bool = True, properties: pika.BasicProperties | None = None) -> int:
    """Start a demo from a known queue: :func:`reset_queue`, then :func:`publish_bodies`; how many were sent.

    ``purge``, ``dead_letters`` and ``arguments`` go to :func:`reset_queue`
    (delete by default, purge to keep attached consumers), ``confirm``,
    ``persistent`` and ``properties`` to :func:`publish_bodies` (confirmed
    persistent JSON by default).

    Example::

        refill(channel, "crash_demo", range(300))                 # b"0" .. b"299", confirmed, persistent
        refill(channel, "settle_demo", [b"job"], dead_letters=True)
        refill(channel, "bench", [b"x" * 100] * 5000, purge=True, confirm=False, persistent=False)
    """
    reset_queue(channel, queue, purge=purge, dead_letters=dead_letters, arguments=arguments)
    return publish_bodies(channel, queue, bodies, confirm=confirm, persistent=persistent, properties=properties)


def wait_for_consumers(channel: BlockingChannel, queue: str, count: int, timeout: float = 10.0,
                       poll: float = 0.02) -> int:
    """Wait until at least ``count`` consumers are attached to ``queue``, or, with ``count=0``, none is.

    Attach: publish only once every consumer is listening, so that the
    broker's round-robin, not start-up order, decides who gets what. Detach:
    after a consumer dies, the broker requeues its unacked messages only once
    it has noticed; count the queue after that (then :func:`wait_stable`).
    Returns the consumer count; raises ``TimeoutError`` after ``timeout`` s.

    Example::

        wait_for_consumers(channel, "fair", 3)   # 3 threads have called basic_consume
        os.kill(pid, signal.SIGKILL)
        wait_for_consumers(channel, "fair", 0)   # the broker has dropped the dead one's consumer
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    deadline = time.monotonic() + timeout
    while True:
        now = int(channel.queue_declare(queue, passive=True).method.consumer_count)
        if (now >= count) if count else now == 0:
            return now
        if time.monotonic() > deadline:
            want = f"{count} consumer(s) to attach" if count else "its consumers to detach"
            raise TimeoutError(f"queue {queue!r} waited {timeout:g} s for {want}; it has {now}")
        time.sleep(poll)


def settled(read: Callable[[], T], *, quiet: float = 0.3, timeout: float = 5.0, every: float = 0.05) -> T:
    """What ``read()`` returns once it has not changed for ``quiet`` seconds (or after ``timeout``).

    The broker applies requeues, dead-lettering, a closed channel's returns and a restarted quorum
    queue's log replay asynchronously: read a figure only once it settles. ``quiet <= 0``: the first read.

    >>> settled(lambda: 3, quiet=0.1)
    3
    """
    last, since = read(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(every)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def wait_stable(channel: BlockingChannel, *queues: str, quiet: float = 0.3, timeout: float = 5.0) -> dict[str, int]:
    """Ready counts of ``queues`` once they have not changed for ``quiet`` seconds (see :func:`settled`).

    Example::

        wait_stable(channel, "settle_demo", "settle_demo.dlq")   # {'settle_demo': 0, 'settle_demo.dlq': 1}
    """
    return settled(lambda: {q: queue_counts(channel, q) for q in queues}, quiet=quiet, timeout=timeout)


class Message(NamedTuple):
    """One message taken with ``basic_get``: unpacks as ``method, properties, body``."""

    method: pika.spec.Basic.GetOk
    properties: pika.BasicProperties
    body: bytes


def drain(channel: BlockingChannel, queue: str, limit: int | None = None) -> list[Message]:
    """Take every ready message out of ``queue`` (at most ``limit``) with ``basic_get``, auto-acked, in order.

    For reading what a demo left behind (``method.redelivered``,
    ``method.routing_key``, headers, body); a consumer uses ``basic_consume``.

    Example::

        refill(channel, "demo", range(3))
        [(m.body, m.method.redelivered) for m in drain(channel, "demo")]   # [(b'0', False), (b'1', False), ...]
    """
    out: list[Message] = []
    while limit is None or len(out) < limit:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        out.append(Message(method, properties, body))
    return out
