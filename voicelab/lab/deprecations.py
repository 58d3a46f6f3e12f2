"""The guide's deprecated declarations, tried on the running broker: what each RabbitMQ version does.

Two things the source guide does are *deprecated features* of RabbitMQ
(https://www.rabbitmq.com/docs/deprecated-features), and 4.3.0 moved both to
"denied by default" (4.3.0 release notes, "Deprecated Features are Now Disabled by Default"):

- ``transient_nonexcl_queues``: ``queue_declare(queue="voice_processing")`` makes a non-durable,
  non-exclusive queue. Permitted by default up to 4.2 (accepted, lost on a restart). Upstream 4.3:
  refused with ``541 INTERNAL_ERROR`` and the broker closes the whole *connection*, not just the channel
  (``rabbit_amqqueue.erl``), so a probe needs a connection of its own. A non-durable quorum queue is
  refused on every version: ``406 PRECONDITION_FAILED`` (a channel error) up to 4.2, the same 541
  connection close on 4.3, whose deprecation check runs first. Debian's 4.3 packages patch the feature back
  to permitted (``do-not-deprecate-transient_nonexcl_queues.patch``); voicelab's CI images undo the patch.
- ``global_qos``: ``basic_qos(prefetch_count=N, global_qos=True)``. Up to 4.2 the limit is shared by every
  consumer on the channel (classic queues). On 4.3 it is not refused: with the feature denied the broker
  answers qos-ok and treats it as a per-consumer prefetch (``rabbit_channel.erl``, v4.3.x): each consumer
  may hold N.

:func:`declare_outcome` and :func:`global_qos_holdings` ask the broker; :func:`upstream_transient_queue` and
:func:`upstream_global_qos` say what upstream's defaults make a version do, so that a notebook can assert it.

Example::

    declare_outcome(broker, "guide_transient", durable=False)
    # Outcome(accepted=False, closed='connection', code=541, text='INTERNAL_ERROR - Feature ...') on 4.3
    upstream_transient_queue(broker.version_info)     # 'connection closed 541' on 4.3, 'accepted' before
    global_qos_holdings(broker, prefetch=5)           # {'consumer-1': 5, 'consumer-2': 5} on 4.3
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from ..broker import Broker
from ..queues import publish_bodies, reset_queue, settled

DENIED_SINCE = (4, 3)   # both features denied by default from RabbitMQ 4.3.0 upstream


@dataclass(frozen=True)
class Outcome:
    """What a declaration got: accepted, or refused with the broker's close (channel or connection)."""

    accepted: bool
    closed: str = ""        # "", "channel" or "connection"
    code: int | None = None
    text: str = ""

    def __str__(self) -> str:
        if self.accepted:
            return "accepted"
        return f"{self.closed} closed {self.code}"

    @property
    def reason(self) -> str:
        """The first line of the broker's reply text."""
        return self.text.splitlines()[0] if self.text else ""


def declare_outcome(broker: Broker, queue: str, **declare: Any) -> Outcome:
    """Try ``queue_declare(queue, **declare)`` on a connection of its own; delete the queue if it was made.

    A refusal may close the channel (406 and other channel errors) or the whole connection (541 on 4.3 for
    a deprecated feature): either way the caller's connections are untouched.

    Example::

        declare_outcome(broker, "q", durable=False, arguments={"x-queue-type": "quorum"})  # refused everywhere
    """
    if not queue or not isinstance(queue, str):
        raise ValueError(f"queue must be a non-empty name, got {queue!r}")
    try:
        with broker.connect() as connection:
            channel = connection.channel()
            channel.queue_declare(queue, **declare)
            channel.queue_delete(queue)
            return Outcome(True)
    except pika.exceptions.ConnectionClosedByBroker as e:
        return Outcome(False, "connection", e.reply_code, e.reply_text)
    except pika.exceptions.ChannelClosedByBroker as e:
        return Outcome(False, "channel", e.reply_code, e.reply_text)


def upstream_transient_queue(version_info: tuple[int, int], *, quorum: bool = False) -> str:
    """What upstream RabbitMQ ``version_info`` does by default with a non-durable, non-exclusive queue.

    >>> upstream_transient_queue((3, 10)), upstream_transient_queue((4, 3))
    ('accepted', 'connection closed 541')
    >>> upstream_transient_queue((4, 0), quorum=True)
    'channel closed 406'
    """
    if tuple(version_info) >= DENIED_SINCE:
        return "connection closed 541"
    return "channel closed 406" if quorum else "accepted"


def upstream_global_qos(version_info: tuple[int, int]) -> str:
    """How upstream RabbitMQ ``version_info`` applies ``global_qos=True`` by default: shared or per consumer.

    >>> upstream_global_qos((4, 0)), upstream_global_qos((4, 3))
    ('shared by the channel', 'per consumer')
    """
    return "per consumer" if tuple(version_info) >= DENIED_SINCE else "shared by the channel"


def global_qos_holdings(broker: Broker, queue: str = "global_qos_demo", *, prefetch: int = 5, consumers: int = 2,
                        messages: int = 30, quiet: float = 0.5) -> dict[str, int]:
    """Unacked messages each consumer holds with ``basic_qos(prefetch, global_qos=True)`` on one channel.

    ``consumers`` consumers share one channel of a classic durable ``queue`` holding ``messages`` messages;
    nobody acks. Returns each consumer's count once the counts have stopped changing for ``quiet`` s.
    Shared (before 4.3): the counts add up to ``prefetch``. Per consumer (4.3): each holds ``prefetch``.
    """
    if prefetch < 1 or consumers < 1 or messages < prefetch * consumers:
        raise ValueError(f"need prefetch >= 1, consumers >= 1 and messages >= prefetch * consumers, got "
                         f"prefetch={prefetch}, consumers={consumers}, messages={messages}")
    held = {f"consumer-{i + 1}": 0 for i in range(consumers)}
    with broker.connect() as connection:
        setup = connection.channel()
        reset_queue(setup, queue)
        publish_bodies(setup, queue, [b"job"] * messages)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch, global_qos=True)   # the guide's deprecated global prefetch
        for tag in held:
            channel.basic_consume(queue, lambda ch, method, props, body, tag=tag: held.__setitem__(tag, held[tag] + 1),
                                  consumer_tag=tag)

        def read() -> tuple[int, ...]:
            connection.process_data_events(time_limit=0.05)
            return tuple(held.values())

        settled(read, quiet=quiet, timeout=10.0)
        channel.close()                                               # everything held goes back to the queue
        time.sleep(0.1)
        setup.queue_delete(queue)
    return held
