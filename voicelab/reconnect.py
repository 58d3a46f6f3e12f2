"""A consumer that survives: reconnect with exponential backoff and jitter, idempotent on ``job_id``.

When the broker force-closes a connection (an operator, a ``consumer_timeout``,
a node going down) or restarts, pika raises out of ``process_data_events``
and the consumer's messages that were not acked go back to the queue. A
consumer that survives therefore needs two things:

- :class:`ReconnectingConsumer`: catch the error, wait a backoff that doubles
  after each failed attempt (capped) with random jitter (so that a fleet does
  not reconnect in lockstep), connect again, and give up only after ``deadline``
  seconds without a connection.
- :class:`ResultStore`: the message being processed when the connection died
  is delivered again and processed again. Applying a result is idempotent on
  ``job_id``: the store keeps the first result and says whether a call applied
  anything, so "done twice" never means "applied twice".

Example::

    consumer = ReconnectingConsumer(broker.parameters(), "voice_jobs", work=lambda job: job.duration_s,
                                    store=ResultStore())
    consumer.start()   # a thread: reconnects after a forced close or a broker restart
    backoff_delay(3, base=0.1, cap=2.0, rng=random.Random(1))   # between 0.2 and 0.4 s
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable

import pika
import pika.exceptions

from .jobs import BadJob, VoiceJob

__all__ = ["BrokerUnreachable", "ReconnectingConsumer", "ResultStore", "backoff_delay"]

CONNECTION_ERRORS = (pika.exceptions.AMQPError, OSError)
"""What a lost or refused connection raises in pika (``ConnectionClosedByBroker``, ``StreamLostError``, ...)."""


class ConsumerCancelled(pika.exceptions.AMQPError):
    """The broker cancelled our consumer (``basic.cancel``): its queue was deleted, or on 4.3 a quorum queue
    timed out a delivery held past ``consumer_timeout``. The channel stays open and pika raises nothing, so the
    consumer raises this itself and reconnects like after a lost connection."""


class BrokerUnreachable(ConnectionError):
    """The consumer could not reconnect within its ``deadline``."""


def backoff_delay(failures: int, base: float = 0.1, cap: float = 5.0, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``failures`` failed attempts in a row: ``base * 2**(failures-1)``, capped at
    ``cap``, then jittered to between half and all of it ("equal jitter").

    >>> d = backoff_delay(3, base=0.1, cap=2.0, rng=random.Random(1))
    >>> 0.2 <= d <= 0.4
    True
    >>> backoff_delay(50, base=0.1, cap=2.0, rng=random.Random(1)) <= 2.0
    True
    >>> backoff_delay(0)
    Traceback (most recent call last):
    ...
    ValueError: failures must be an int >= 1, got 0
    """
    if not isinstance(failures, int) or failures < 1:
        raise ValueError(f"failures must be an int >= 1, got {failures!r}")
    if not base > 0:
        raise ValueError(f"base must be > 0 seconds, got {base!r}")
    if not cap >= base:
        raise ValueError(f"cap must be >= base ({base}), got {cap!r}")
    ceiling = min(cap, base * 2 ** min(failures - 1, 30))
    return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class ResultStore:
    """Results by ``job_id``, applied at most once; counts how often each job was handled.

    >>> store = ResultStore()
    >>> store.apply("j1", {"ok": 1}), store.apply("j1", {"ok": 2}), store.result("j1")
    (True, False, {'ok': 1})
    >>> store.handled["j1"], store.applied
    (2, 1)
    """

    def __init__(self) -> None:
        self._results: dict[str, Any] = {}
        self.handled: Counter[str] = Counter()
        self._lock = threading.Lock()

    def apply(self, job_id: str, result: Any) -> bool:
        """Store ``result`` for ``job_id`` unless one is there; True if this call applied it."""
        with self._lock:
            self.handled[job_id] += 1
            if job_id in self._results:
                return False
            self._results[job_id] = result
            return True

    def result(self, job_id: str) -> Any:
        """The result applied for ``job_id``, or None."""
        return self._results.get(job_id)

    @property
    def applied(self) -> int:
        """Jobs whose result is stored."""
        return len(self._results)

    def counts(self, sent: Iterable[str]) -> dict[str, int]:
        """``sent``, ``done once``, ``done twice but applied once`` (handled 2+ times), ``lost`` (never applied)."""
        ids = list(sent)
        return {"sent": len(ids),
                "done once": sum(1 for j in ids if self.handled[j] == 1),
                "done twice but applied once": sum(1 for j in ids if self.handled[j] >= 2 and j in self._results),
                "lost": sum(1 for j in ids if j not in self._results)}


class ReconnectingConsumer:
    """Consume ``queue`` in a thread of its own; reconnect with backoff and jitter whenever the connection is lost.

    Args:
        parameters: pika connection parameters (``broker.parameters()``); the consumer
            sets its ``connection_name`` to ``name`` so that it can be found in the management API.
        queue: a durable queue that exists (after a restart it must still be there).
        work: ``work(job) -> result``; its result goes to ``store`` (idempotent on ``job_id``),
            then the message is acked. A body that is not a job is rejected without requeue. If ``work``
            (or ``before_ack``) raises, the consumer restarts as after a lost connection: its connection
            closes, so the job and the others it held go back to the queue, and it reconnects after a backoff
            (logged in :attr:`crashes`). It never dies of it; a job that fails every time comes back every
            time, so bound it with the queue's ``x-delivery-limit`` and a dead-letter exchange (notebook 08).
        store: the :class:`ResultStore`.
        prefetch: unacked messages the broker may hand over at once.
        base_delay, max_delay: the backoff (see :func:`backoff_delay`).
        deadline: seconds without a connection before the thread gives up (:class:`BrokerUnreachable`,
            kept in :attr:`error`).
        before_ack: called with the job after its result is applied and before its ack (tests and
            demos inject faults there).

    Example::

        consumer = ReconnectingConsumer(broker.parameters(), "jobs", work, store).start()
        ...
        consumer.stop()
        consumer.reconnects   # [{'t': 2.31, 'error': 'ConnectionClosedByBroker: ...', 'delay': 0.07}, ...]
                              # t: seconds since consumer.started_at (the time.monotonic() of start())
    """

    def __init__(self, parameters: pika.ConnectionParameters, queue: str, work: Callable[[VoiceJob], Any],
                 store: ResultStore, *, name: str = "voicelab-reconnect", prefetch: int = 10,
                 base_delay: float = 0.1, max_delay: float = 2.0, deadline: float = 60.0,
                 seed: int | None = None, before_ack: Callable[[VoiceJob], None] | None = None) -> None:
        if not isinstance(parameters, pika.ConnectionParameters):
            raise ValueError(f"parameters must be pika.ConnectionParameters (broker.parameters()), got {parameters!r}")
        if not queue or not isinstance(queue, str):
            raise ValueError(f"queue must be a non-empty name, got {queue!r}")
        if not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        backoff_delay(1, base_delay, max_delay)   # validates base_delay and max_delay
        client = dict(parameters.client_properties or {})
        client["connection_name"] = name
        self.parameters = pika.ConnectionParameters(
            host=parameters.host, port=parameters.port, virtual_host=parameters.virtual_host,
            credentials=parameters.credentials, connection_attempts=1, socket_timeout=2, heartbeat=10,
            client_properties=client)
        self.queue, self.work, self.store, self.name, self.prefetch = queue, work, store, name, prefetch
        self.before_ack = before_ack
        self.base_delay, self.max_delay, self.deadline = base_delay, max_delay, deadline
        self.rng = random.Random(seed)
        self.reconnects: list[dict[str, Any]] = []
        self.crashes: list[dict[str, Any]] = []   # work() or before_ack() raised: the consumer restarted
        self.connections = 0
        self.error: BaseException | None = None
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = time.monotonic()   # set again by start(); the ``t`` of each reconnect counts from it

    def start(self) -> "ReconnectingConsumer":
        """Start consuming in a daemon thread; returns ``self``."""
        self.started_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the thread (it closes its connection) and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_message(self, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        try:
            job = VoiceJob.from_message(properties, body)
        except BadJob:
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        result = self.work(job)
        self.store.apply(job.job_id, result)   # idempotent: a redelivered job is not applied twice
        if self.before_ack is not None:
            self.before_ack(job)               # (fault injection: the connection dies right here)
        channel.basic_ack(method.delivery_tag)  # raises if the connection died meanwhile: redelivered later

    def _back_off(self, failures: int, error: BaseException, log: list[dict[str, Any]]) -> None:
        """Record ``error`` in ``log`` and wait the backoff for ``failures`` failures in a row."""
        delay = backoff_delay(failures, self.base_delay, self.max_delay, self.rng)
        log.append({"t": round(time.monotonic() - self.started_at, 3), "failures": failures,
                    "delay": round(delay, 3), "error": f"{type(error).__name__}: {error}"[:160]})
        self._stop.wait(delay)

    def _run(self) -> None:
        failures = 0
        down_since: float | None = None
        while not self._stop.is_set():
            connection = None
            try:
                connection = pika.BlockingConnection(self.parameters)
                channel = connection.channel()
                channel.basic_qos(prefetch_count=self.prefetch)
                channel.basic_consume(self.queue, self._on_message)
                cancelled: list[Any] = []
                channel.add_on_cancel_callback(cancelled.append)   # a broker-sent basic.cancel raises nothing
                self.connections += 1
                failures, down_since = 0, None
                self.connected.set()
                while not self._stop.is_set():
                    connection.process_data_events(time_limit=0.1)
                    if cancelled:
                        raise ConsumerCancelled(f"the broker cancelled the consumer on {self.queue!r}")
            except CONNECTION_ERRORS as e:
                self.connected.clear()
                failures += 1
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > self.deadline:
                    self.error = BrokerUnreachable(f"no connection to {self.parameters.host}:{self.parameters.port} "
                                                   f"for {self.deadline:g} s; last error: {type(e).__name__}: {e}")
                    return
                self._back_off(failures, e, self.reconnects)
            except Exception as e:   # work() or before_ack() raised: restart, never die (capacity lost silently)
                self.connected.clear()
                failures += 1
                self._back_off(failures, e, self.crashes)   # the connection closes below: its unacked jobs return
            finally:
                if connection is not None and connection.is_open:
                    try:
                        connection.close()
                    except CONNECTION_ERRORS:
                        pass


