"""Exercises of notebook 05 (durability).

q1: write ``publish_all(broker, queue, bodies)`` that publishes every body to the durable
classic ``queue`` (default exchange) as persistent messages so that none is lost even if
the broker crashes meanwhile, and returns the list of bodies the broker confirmed.

The checker runs it on a broker of its own. The queue has a length limit for a while
(a policy: ``max-length`` with ``overflow: reject-publish``, as a queue under load
shedding has), so the broker refuses some publishes: on a channel in confirm mode it
nacks them, on a channel without confirms it drops them silently. Once the queue is
full, the checker kills the broker (SIGKILL) and starts it again; after the learner
has reconnected and been refused again, it lifts the limit. If the function returns
before the queue fills, the kill comes after it returned: a confirmed message must
survive a crash at any time. Then it counts what arrived, what was returned as
confirmed and what was sent twice: every body must be there, every body returned as
confirmed must be there, and duplicates are reported (allowed: at-least-once) but
not refused. The refused messages themselves go to a queue of the checker's, which
tells a nack ignored from a message lost in the crash.

Example (in the notebook, after writing ``publish_all``)::

    from voicelab.exercises import ch05
    ch05.q1.check(publish_all)     # pass, or what is wrong and a hint
    ch05.q1.hint()
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Callable

import pika

from ..broker import Broker, own_broker
from ..lab.durability import wait_metadata_flush
from ..lab.measure import sized
from ..management import Management
from ..publishing import ReliablePublisher
from ..retry import deaths
from ..reconnect import CONNECTION_ERRORS
from .core import Exercise, Wrong, scratch_name

REFUSALS = 20   # refusals after the restart before the checker lifts the length limit
WAIT_S = 30.0   # a safety net only: each phase ends on a count, or when the learner's function returns


def publish_all(broker: Broker, queue: str, bodies: list[bytes]) -> list[bytes]:
    """Reference solution of q1: asynchronous confirms, reconnect and republish until all are confirmed."""
    report = ReliablePublisher(broker.parameters(), window=100, deadline=60).publish(
        queue, bodies, properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    return [bodies[i] for i in report.confirmed]


_BROKER: Broker | None = None


def use_broker(broker: Broker | None) -> None:
    """Let the checker kill and start ``broker`` (one the notebook owns) instead of starting a broker per check."""
    global _BROKER
    _BROKER = broker


@dataclass
class _Faults:
    """The checker's side of a run: the length limit, the kill, and the queue where refused publishes go.

    The refused messages are consumed as they come (dead-lettered copies are not confirmed to anyone: a kill
    can lose them) and kept by body with the time the broker refused them first (``x-death``).
    """

    broker: Broker
    queue: str
    limit: int
    done: threading.Event = field(default_factory=threading.Event)
    killed_at: float = 0.0   # time.time() of the kill: refused messages carry the broker's time in x-death
    refusals: dict[bytes, tuple[int, float, float]] = field(default_factory=dict)   # body -> (mode, first, last)
    refused_count: int = 0
    killed_after_return: bool = False
    abort: bool = False   # the learner's function raised (an unsolved stub, say): no kill, nothing to judge
    error: BaseException | None = None
    _connection: Any = None
    _ch: Any = None
    _baseline: int | None = None

    @property
    def refused(self) -> str:
        return f"{self.queue}.refused"

    def setup(self, mgmt: Management, bound: int) -> None:
        """Declare the queue and the checker's queue of refused messages (at most ``bound``: a retry loop's
        oldest are dropped); put the length limit on the queue."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True)
            channel.queue_declare(self.refused, durable=True, arguments={"x-max-length": bound})
        mgmt.session.put(f"{mgmt.base}/policies/{mgmt.vhost}/{urllib.parse.quote(self.queue, safe='')}", json={
            "pattern": f"^{re.escape(self.queue)}$", "apply-to": "queues", "priority": 100, "definition": {
                "max-length": self.limit, "overflow": "reject-publish-dlx", "dead-letter-exchange": "",
                "dead-letter-routing-key": self.refused}}, timeout=mgmt.timeout).raise_for_status()
        mgmt.wait_for(self.queue, lambda q: q.get("policy") == self.queue, timeout=10)

    def lift(self, mgmt: Management) -> None:
        """Remove the length limit (a policy delete: the queue takes everything again), retried while the
        management API is still starting after the restart (a publisher that retries refusals waits for it)."""
        url = f"{mgmt.base}/policies/{mgmt.vhost}/{urllib.parse.quote(self.queue, safe='')}"
        t0 = time.monotonic()
        while True:
            try:
                if mgmt.session.delete(url, timeout=mgmt.timeout).status_code in (204, 404):
                    return
            except OSError:
                pass   # requests' ConnectionError and timeouts are OSErrors
            if time.monotonic() - t0 > WAIT_S:
                raise RuntimeError(f"could not remove the checker's length limit on {self.queue}")
            time.sleep(0.2)

    def run(self, mgmt: Management) -> None:
        """In a thread: kill the broker once the queue is full and a refused publish has come back (or the
        function returned), start it again, wait
        for :data:`REFUSALS` more refusals after the restart (or the return), then lift the limit."""
        try:
            self._until(lambda: self._ready(self.queue) >= self.limit and bool(self.refusals))
            if self.abort:
                return
            self._close()
            self.killed_at = time.time()
            self.killed_after_return = self.done.is_set()
            self.broker.kill()
            time.sleep(0.5)
            self.broker.start()
            self._until(self._refused_again)
        except BaseException as e:  # noqa: BLE001 - reported by the checker, not lost in a thread
            self.error = e
        finally:
            self._close()
            with contextlib.suppress(Exception):
                self.lift(mgmt)

    def _refused_again(self) -> bool:
        """True once :data:`REFUSALS` more refused messages came back than at the first call (after the restart)."""
        self._ready(self.queue)   # (re)connects, with the consumer of refused messages
        if self._baseline is None:
            self._baseline = self.refused_count
        return self.refused_count >= self._baseline + REFUSALS

    def _until(self, condition: Callable[[], bool]) -> None:
        """Poll until ``condition()`` holds or the learner's function returned (or :data:`WAIT_S`)."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < WAIT_S and not self.done.is_set():
            try:
                if condition():
                    return
                self._connection.process_data_events(time_limit=0)   # the refused messages, as they come
            except CONNECTION_ERRORS:
                self._close()
            time.sleep(0.02)

    def _ready(self, queue: str) -> int:
        if self._connection is None or not self._connection.is_open:
            self._connection, self._ch = self.broker.connect(connection_attempts=1), None
            self._connection.channel().basic_consume(self.refused, self._on_refused, auto_ack=True)
        if self._ch is None or not self._ch.is_open:
            self._ch = self._connection.channel()
        return int(self._ch.queue_declare(queue, passive=True).method.message_count)

    def _on_refused(self, ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        self.refused_count += 1
        self.note_refused(body, properties)

    def note_refused(self, body: bytes, properties: pika.BasicProperties) -> None:
        """Keep a refused message: its delivery mode and the first and last time the broker refused it."""
        at = _refused_at(properties)
        mode, first, last = self.refusals.get(body, (int(properties.delivery_mode or 1), at, at))
        self.refusals[body] = (mode, min(first, at), max(last, at))

    def _close(self) -> None:
        with contextlib.suppress(Exception):
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        self._connection = None


def _check_publish_all(fn: Callable[..., Any]) -> str:
    n = sized(4000, minimum=2000)
    bodies = [str(i).encode() for i in range(n)]
    with (own_broker() if _BROKER is None else _borrowed(_BROKER)) as b:
        mgmt = Management(b)
        faults = _Faults(b, scratch_name("guarantee"), limit=n // 4)
        try:
            declared = time.monotonic()
            faults.setup(mgmt, bound=4 * n)
            wait_metadata_flush(declared)  # so that the queue itself survives the kill (3.10, 4.0)
            thread = threading.Thread(target=faults.run, args=(mgmt,), daemon=True)
            thread.start()
            try:
                confirmed = fn(b, faults.queue, list(bodies))
            except BaseException:
                faults.abort = True
                raise
            finally:
                faults.done.set()
                thread.join(120)
            if faults.error is not None:
                raise faults.error
            with b.connect() as connection:
                channel = connection.channel()
                got = [(body, int(props.delivery_mode or 1)) for body, props in _take_all(channel, faults.queue)]
                present = {body for body, _ in got}
                needed = not isinstance(confirmed, (list, tuple, set)) or not present >= set(confirmed) | set(bodies)
                for body, props in _take_all(channel, faults.refused) if needed else []:
                    faults.note_refused(body, props)
        finally:
            _cleanup(b, mgmt, faults)
    # x-death times are whole seconds; the broker takes seconds to start again: 1 s after the kill splits them
    split = faults.killed_at + 1
    before = [(body, mode) for body, (mode, first, _) in faults.refusals.items() if first < split]
    after = [(body, mode) for body, (mode, _, last) in faults.refusals.items() if last >= split]
    return _judge_publish_all(bodies, confirmed, got, before, after, faults.killed_after_return)


def _refused_at(properties: pika.BasicProperties) -> float:
    """When the broker refused a message (its x-death time, unix seconds); 0 if unknown."""
    times = [d["time"] for d in deaths(properties) if d["time"] is not None]
    return min(times) if times else 0.0


def _take_all(channel: Any, queue: str) -> list[tuple[bytes, pika.BasicProperties]]:
    """Every message ready in ``queue``, consumed (auto-ack, no prefetch limit: faster than basic_get)."""
    expected = int(channel.queue_declare(queue, passive=True).method.message_count)
    out: list[tuple[bytes, pika.BasicProperties]] = []
    if expected:
        tag = channel.basic_consume(queue, lambda ch, m, props, body: out.append((body, props)), auto_ack=True)
        while len(out) < expected:
            before = len(out)
            channel.connection.process_data_events(time_limit=1)
            if len(out) == before:
                break   # nothing more came in a second: the queue had fewer than it said
        channel.basic_cancel(tag)
    return out


def _cleanup(b: Broker, mgmt: Management, faults: _Faults) -> None:
    with contextlib.suppress(Exception):
        faults.lift(mgmt)
    mgmt.close()
    with contextlib.suppress(*CONNECTION_ERRORS), b.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(faults.queue)
        channel.queue_delete(faults.refused)


def _judge_publish_all(bodies: list[bytes], confirmed: Any, got: list[tuple[bytes, int]],
                       refused_before: list[tuple[bytes, int]], refused_after: list[tuple[bytes, int]],
                       killed_after_return: bool) -> str:
    """The verdict on a run through a kill: the pass message, or :class:`Wrong` with what went wrong.

    ``got``: (body, delivery_mode) in the queue at the end; ``refused_before``/``_after``: the publishes the
    full queue refused before the kill and after it (read only when a body is missing or falsely confirmed).
    """
    n = len(bodies)
    if not isinstance(confirmed, (list, tuple, set)):
        raise Wrong(f"return the list of bodies the broker confirmed, got {type(confirmed).__name__}")
    present = {body for body, _ in got}
    twice = len(got) - len(present)
    before = {body for body, _ in refused_before}
    after = {body for body, _ in refused_after}
    _refuse_false_confirms(set(confirmed) - present, before, after, got + refused_before)
    missing = set(bodies) - present
    if missing & (before | after):
        raise Wrong(f"{len(missing)} of {n} bodies never reached the queue, {len(missing & (before | after))} of them "
                    f"refused by the broker (the queue was full for a while) and never sent again: a nack (NackError "
                    f"from basic_publish, or Basic.Nack in your confirm callback) means the broker did not take the "
                    f"message: send it again until it is acked")
    if missing:
        raise Wrong(f"{len(missing)} of {n} bodies are missing after the broker was killed and started again "
                    f"({len(present)} arrived, {len(set(confirmed))} returned as confirmed, {twice} sent twice)"
                    + (": did it publish to the queue it was given?" if not present else
                       ": without publisher confirms you cannot know which ones to send again"))
    if len(set(confirmed)) < n:
        raise Wrong(f"every body arrived but you returned only {len(set(confirmed))} of {n} as confirmed: "
                    f"return the bodies the broker confirmed")
    when = "after your function returned" if killed_after_return else "mid-run, once the queue was full"
    return (f"the queue refused publishes while it was full, and the broker was killed {when}: "
            f"{n} of {n} arrived, {len(set(confirmed))} confirmed, {twice} sent twice (at-least-once: consumers "
            f"must deduplicate).")


def _refuse_false_confirms(lost: set[bytes], before: set[bytes], after: set[bytes],
                           seen: list[tuple[bytes, int]]) -> None:
    """Bodies returned as confirmed that are not in the queue: refused (a nack ignored), transient, or unconfirmed."""
    if not lost:
        return
    e = sorted(lost)[:3]
    if lost & before - after:
        raise Wrong(f"{len(lost)} bodies you returned as confirmed never reached the queue; the broker refused "
                    f"{len(lost & before)} of them before the crash (e.g. {sorted(lost & before)[:3]}; the "
                    f"queue was full for a while: max-length, overflow reject-publish). On a channel in confirm "
                    f"mode a refused message is nacked (basic_publish raises NackError; a confirm callback gets "
                    f"Basic.Nack); on a channel without confirm_delivery() it is dropped without a word. Return only "
                    f"what the broker acked, and send the rest again")
    if lost & after:
        raise Wrong(f"{len(lost)} bodies you returned as confirmed never reached the queue; the broker refused "
                    f"{len(lost & after)} of them after the crash (e.g. {sorted(lost & after)[:3]}), though before "
                    f"it you handled refusals: is the channel you opened after "
                    f"reconnecting in confirm mode? Call confirm_delivery() on every new channel: without it "
                    f"basic_publish returns at once and a refused message is dropped without a word")
    if any(mode != 2 for _, mode in seen):
        raise Wrong(f"{len(lost)} bodies you returned as confirmed are not in the queue after the crash (e.g. {e}): "
                    f"your messages are transient (delivery_mode 1), and a durable classic queue keeps only "
                    f"persistent messages through a crash, confirmed or not. Publish them with delivery_mode=2 "
                    f"(pika.DeliveryMode.Persistent)")
    raise Wrong(f"{len(lost)} bodies you returned as confirmed are not in the queue after the crash (e.g. {e}): a "
                f"message is safe only once the broker confirms it")


class _borrowed:
    """Use a broker the caller owns (tests) without stopping it."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def __enter__(self) -> Broker:
        return self.broker

    def __exit__(self, *exc: object) -> None:
        pass


q1 = Exercise(
    "ch05.q1", "a publisher that guarantees delivery",
    _check_publish_all,
    hints=[
        """basic_publish returning means the bytes left your process, not that the broker has them. Which
        channel mode makes the broker tell you, message by message, that it has stored one (ack) or refused it
        (nack)? And which messages does a durable classic queue keep through a crash?""",
        """channel.confirm_delivery() on a BlockingConnection makes each basic_publish wait for the broker's
        confirm; it raises pika.exceptions.NackError when the broker refuses the message: send that one again.
        Publish with pika.BasicProperties(delivery_mode=2) (persistent). When the connection dies
        (pika.exceptions.AMQPError), reconnect (broker.connect()), call confirm_delivery() on the new channel too,
        and send again everything that was not confirmed. Or use voicelab.publishing.ReliablePublisher.""",
    ],
    solution=publish_all,
)
