"""Publishing that survives a broker crash: publisher confirms, a bounded window, republish, a deadline.

Two ways, both real pika:

- :func:`publish_confirmed`: the simple path. ``BlockingConnection`` with
  ``channel.confirm_delivery()``: each ``basic_publish`` waits for the broker's
  confirm and raises if the broker refused the message (``NackError``) or could
  not route it (``UnroutableError``, with ``mandatory=True``). One round trip
  per message: safe and slow.
- :class:`ReliablePublisher`: the asynchronous-confirm strategy of RabbitMQ's
  publisher-confirms tutorial on pika's ``SelectConnection``. Up to ``window``
  messages are outstanding (published, not yet confirmed); a nacked or
  returned (unroutable, ``mandatory=True``) message is published again; when
  the connection is lost it reconnects and republishes every unconfirmed
  message, and raises :class:`BrokerGone` if the broker stays unreachable for
  longer than ``deadline`` seconds. ``batch=True`` waits for a whole window to
  be confirmed before publishing the next (the tutorial's "batches" strategy).

**At-least-once, not exactly-once.** A message whose confirm was lost with the
connection is published again: if the broker had already stored it, the queue
now holds it twice. Consumers must be idempotent (deduplicate on the
``message_id`` this publisher sets, ``<run>-<index>`` unless you set one).

Example::

    from voicelab.broker import shared_broker
    broker = shared_broker()
    with broker.connect() as connection:
        connection.channel().queue_declare("jobs", durable=True)
    report = ReliablePublisher(broker.parameters(), window=100, deadline=30).publish("jobs", [b"a", b"b"])
    report.confirmed            # [0, 1]: the indexes of the bodies the broker confirmed
    ReliablePublisher(broker.amqp_url).publish("jobs", [b"c"])   # an AMQP URL works as well
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

import pika
import pika.connection
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

__all__ = ["BrokerGone", "PublishFailed", "PublishReport", "ReliablePublisher", "publish_confirmed",
           "publish_unconfirmed"]


class BrokerGone(ConnectionError):
    """The broker was unreachable for longer than the publisher's ``deadline``; ``report`` says what was confirmed."""

    def __init__(self, message: str, report: "PublishReport") -> None:
        super().__init__(message)
        self.report = report


class PublishFailed(RuntimeError):
    """The broker closed the channel (e.g. the exchange does not exist) or kept returning a message."""

    def __init__(self, message: str, report: "PublishReport") -> None:
        super().__init__(message)
        self.report = report


@dataclass
class PublishReport:
    """What a publishing run did. Indexes refer to the position of each body in the input.

    ``attempts[i]`` counts the ``basic_publish`` calls for body ``i``; a body
    with ``attempts > 1`` may be in the queue twice (at-least-once).
    """

    total: int
    confirmed: list[int] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    nacked: int = 0
    returned: int = 0
    reconnects: int = 0
    seconds: float = 0.0   # from the first open channel (connection set-up excluded) to the last confirm

    @property
    def republished(self) -> int:
        """Bodies published more than once (possible duplicates in the queue)."""
        return sum(1 for a in self.attempts if a > 1)

    @property
    def unconfirmed(self) -> list[int]:
        """Indexes of the bodies the broker has not confirmed."""
        done = set(self.confirmed)
        return [i for i in range(self.total) if i not in done]

    @property
    def rate(self) -> float:
        """Confirmed messages per second."""
        return len(self.confirmed) / self.seconds if self.seconds > 0 else 0.0


def _positive(name: str, value: float, integer: bool = False) -> None:
    if integer and (not isinstance(value, int) or isinstance(value, bool)):
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def _props(properties: pika.BasicProperties | None, message_id: str, index: int | None) -> pika.BasicProperties:
    """A copy of ``properties`` (persistent by default) with ``message_id`` set unless the caller set one,
    and, for ``mandatory`` publishing, the header ``x-voicelab-index`` that tells which message came back."""
    p = properties or pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    extra: dict[str, Any] = {"message_id": p.message_id or message_id}
    if index is not None:
        extra["headers"] = {**(p.headers or {}), "x-voicelab-index": index}
    return pika.BasicProperties(**{**vars(p), **extra})


def publish_confirmed(channel: BlockingChannel, routing_key: str, body: bytes, *, exchange: str = "",
                      properties: pika.BasicProperties | None = None, mandatory: bool = True) -> None:
    """Publish one message and wait for the broker's confirm (the simple, one-round-trip-each path).

    Puts ``channel`` in confirm mode on first use. Raises ``pika.exceptions.NackError``
    if the broker refused it and ``pika.exceptions.UnroutableError`` if ``mandatory``
    and no queue took it.

    Example::

        with broker.connect() as connection:
            channel = connection.channel()
            channel.queue_declare("jobs", durable=True)
            publish_confirmed(channel, "jobs", b"job 1")   # returns once the broker has it
    """
    if not getattr(channel, "_delivery_confirmation", False):
        channel.confirm_delivery()
    props = properties or pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    channel.basic_publish(exchange, routing_key, body, props, mandatory=mandatory)


def publish_unconfirmed(channel: BlockingChannel, routing_key: str, bodies: Iterable[bytes], *,
                        exchange: str = "", properties: pika.BasicProperties | None = None) -> int:
    """Publish ``bodies`` without confirms and return how many ``basic_publish`` calls returned.

    That number is what a publisher without confirms *believes* it sent; the
    broker may have lost any of them (see notebook 05).
    """
    props = properties or pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    sent = 0
    for body in bodies:
        channel.basic_publish(exchange, routing_key, body, props)
        sent += 1
    return sent


class ReliablePublisher:
    """Publish with asynchronous confirms on ``SelectConnection``; reconnect and republish until confirmed.

    Args:
        parameters: pika connection parameters (``broker.parameters()``), ``pika.URLParameters``, or an AMQP
            URL string (``broker.amqp_url``, ``"amqp://guest:guest@localhost:5672/%2F"``).
        window: most messages outstanding (published, not yet confirmed) at once.
        deadline: seconds the broker may stay unreachable before :class:`BrokerGone`.
        retry_delay: seconds between reconnection attempts.
        batch: wait for all ``window`` messages to be confirmed before the next batch.
        mandatory: ask the broker to return messages no queue takes; they are published
            again (``max_returns`` times, ``retry_delay`` apart), then :class:`PublishFailed`.
        max_returns: returns of one message tolerated before giving up.

    Example::

        pub = ReliablePublisher(broker.parameters(), window=200, deadline=30)
        report = pub.publish("jobs", (f"job {i}".encode() for i in range(1000)))
        assert not report.unconfirmed
    """

    def __init__(self, parameters: pika.ConnectionParameters | str, *, window: int = 256, deadline: float = 30.0,
                 retry_delay: float = 0.25, batch: bool = False, mandatory: bool = True,
                 max_returns: int = 3) -> None:
        _positive("window", window, integer=True)
        _positive("deadline", deadline)
        _positive("retry_delay", retry_delay)
        _positive("max_returns", max_returns, integer=True)
        if isinstance(parameters, str):
            if not parameters.startswith(("amqp://", "amqps://")):
                raise ValueError(f"parameters: an AMQP URL starts with amqp:// or amqps://, got {parameters!r}")
            parameters = pika.URLParameters(parameters)
        if not isinstance(parameters, pika.connection.Parameters):  # ConnectionParameters or URLParameters
            raise ValueError("parameters must be pika.ConnectionParameters, pika.URLParameters or an AMQP URL "
                             f"string, got {type(parameters).__name__}: {parameters!r}")
        self.parameters = parameters
        self.window, self.deadline, self.retry_delay = window, deadline, retry_delay
        self.batch, self.mandatory, self.max_returns = batch, mandatory, max_returns

    # -- the run ------------------------------------------------------------
    def publish(self, routing_key: str, bodies: Iterable[bytes], *, exchange: str = "",
                properties: pika.BasicProperties | None = None) -> PublishReport:
        """Publish every body until the broker confirms it; return a :class:`PublishReport`.

        Raises :class:`BrokerGone` (broker unreachable longer than ``deadline``)
        or :class:`PublishFailed` (channel closed by the broker, or a message
        returned ``max_returns`` times); both carry the report so far.
        """
        if not isinstance(routing_key, str):
            raise ValueError(f"routing_key must be a str, got {routing_key!r}")
        self._bodies = [bytes(b) for b in bodies]
        run = uuid.uuid4().hex[:8]
        self._props = [_props(properties, f"{run}-{i}", i if self.mandatory else None)
                       for i in range(len(self._bodies))]
        self._key, self._exchange = routing_key, exchange
        n = len(self._bodies)
        self.report = PublishReport(total=n, attempts=[0] * n)
        self._pending: deque[int] = deque(range(n))
        self._returns = [0] * n
        self._confirmed = [False] * n
        self._left = n
        self._fatal: Exception | None = None
        self._t0: float | None = None   # set when the first channel is ready: connection set-up is not timed
        lost_since: float | None = None
        first = True
        while self._left and self._fatal is None:
            self._outstanding: dict[int, int] = {}   # delivery tag -> body index, for this channel
            self._returned: set[int] = set()
            self._tag = 0
            self._ready = False
            if not first:
                time.sleep(self.retry_delay)
            first = False
            self._connection = pika.SelectConnection(
                self.parameters, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
                on_close_callback=self._on_closed)
            self._connection.ioloop.start()
            # the loop stopped: everything done, a fatal error, or the connection was lost
            for index in sorted(self._outstanding.values(), reverse=True):
                self._pending.appendleft(index)        # unconfirmed: publish again (possible duplicate)
            if self._ready:
                lost_since = None
            if self._left and self._fatal is None:
                lost_since = lost_since or time.monotonic()
                self.report.reconnects += 1
                if time.monotonic() - lost_since > self.deadline:
                    self.report.seconds = time.perf_counter() - (self._t0 or time.perf_counter())
                    raise BrokerGone(f"the broker at {self.parameters.host}:{self.parameters.port} was unreachable "
                                     f"for more than deadline={self.deadline:g} s; {len(self.report.confirmed)} of "
                                     f"{n} messages confirmed, {self._left} not", self.report)
        self.report.seconds = time.perf_counter() - (self._t0 or time.perf_counter())
        if self._fatal is not None:
            raise PublishFailed(str(self._fatal), self.report) from self._fatal
        return self.report

    # -- callbacks (all on the ioloop's thread) --------------------------------
    def _on_open(self, connection: pika.SelectConnection) -> None:
        connection.channel(on_open_callback=self._on_channel)

    def _on_open_error(self, connection: pika.SelectConnection, error: BaseException) -> None:
        connection.ioloop.stop()

    def _on_closed(self, connection: pika.SelectConnection, reason: BaseException) -> None:
        connection.ioloop.stop()

    def _on_channel(self, channel: Any) -> None:
        self._channel = channel
        channel.add_on_close_callback(self._on_channel_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(ack_nack_callback=self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, frame: Any) -> None:
        self._ready = True
        if self._t0 is None:
            self._t0 = time.perf_counter()
        self._pump()

    def _on_channel_closed(self, channel: Any, reason: BaseException) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):  # e.g. 404 no such exchange: retrying won't help
            self._fatal = reason
        if self._connection.is_open:
            self._connection.close()

    def _on_return(self, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        index = int(str(properties.headers.get("x-voicelab-index")))  # type: ignore[union-attr]
        self._returned.add(index)   # its ack follows: then it is queued again, not counted as confirmed
        self.report.returned += 1

    def _on_confirm(self, frame: Any) -> None:
        method = frame.method
        ack = isinstance(method, pika.spec.Basic.Ack)
        tags = [t for t in self._outstanding if t <= method.delivery_tag] if method.multiple else [method.delivery_tag]
        for tag in tags:
            index = self._outstanding.pop(tag, None)
            if index is None:
                continue
            if not ack:
                self.report.nacked += 1
                self._pending.append(index)
            elif index in self._returned:
                self._returned.discard(index)
                self._returns[index] += 1
                if self._returns[index] >= self.max_returns:
                    self._fatal = PublishFailed(
                        f"message {index} was returned {self._returns[index]} times: no queue is bound for "
                        f"exchange={self._exchange!r} routing_key={self._key!r}", self.report)
                    self._connection.close()
                    return
                self._connection.ioloop.call_later(self.retry_delay, functools.partial(self._requeue, index))
            elif not self._confirmed[index]:
                self._confirmed[index] = True
                self.report.confirmed.append(index)
                self._left -= 1
        if self._left == 0:
            self._connection.close()
        else:
            self._pump()

    def _requeue(self, index: int) -> None:
        self._pending.append(index)
        self._pump()

    def _pump(self) -> None:
        if not self._ready or not self._channel.is_open:
            return
        if self.batch and self._outstanding:
            return
        while self._pending and len(self._outstanding) < self.window:
            index = self._pending.popleft()
            if self._confirmed[index]:
                continue
            self._channel.basic_publish(self._exchange, self._key, self._bodies[index], self._props[index],
                                        mandatory=self.mandatory)
            self._tag += 1
            self._outstanding[self._tag] = index
            self.report.attempts[index] += 1
