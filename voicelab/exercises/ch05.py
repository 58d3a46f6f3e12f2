"""Exercises of notebook 05 (durability).

q1: write ``publish_all(broker, queue, bodies)`` that publishes every body to
the durable ``queue`` (default exchange) so that none is lost even if the
broker crashes meanwhile, and returns the list of bodies the broker confirmed.
The checker runs it on a broker of its own, kills that broker (SIGKILL) in the
middle of the run and starts it again, then counts what arrived, what was
confirmed and what was sent twice: every body must be there, every body
returned as confirmed must be there, and duplicates are reported (allowed:
at-least-once) but not refused.

Example (in the notebook, after writing ``publish_all``)::

    from voicelab.exercises import ch05
    ch05.q1.check(publish_all)     # pass, or what is wrong and a hint
    ch05.q1.hint()
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import pika

from ..broker import Broker, own_broker
from ..lab.durability import wait_metadata_flush
from ..lab.measure import sized
from ..publishing import ReliablePublisher
from ..queues import drain
from .core import Exercise, Wrong, scratch_name


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


def _check_publish_all(fn: Callable[..., Any]) -> str:
    n = sized(20000, minimum=10000)
    bodies = [str(i).encode() for i in range(n)]
    with (own_broker() if _BROKER is None else _borrowed(_BROKER)) as b:
        queue = scratch_name("guarantee")
        with b.connect() as connection:
            connection.channel().queue_declare(queue, durable=True)
        wait_metadata_flush(time.monotonic())  # so that the queue itself survives the kill (3.10, 4.0)
        killed, done = threading.Event(), threading.Event()
        thread = threading.Thread(target=_kill_once_filling, args=(b, queue, n // 10, killed, done), daemon=True)
        thread.start()
        try:
            confirmed = fn(b, queue, list(bodies))
            killed_during_run = killed.is_set()
        finally:
            done.set()
            thread.join(120)
            if not killed.is_set():
                with b.connect() as connection:
                    connection.channel().queue_delete(queue)
        if not killed_during_run:
            raise Wrong(f"your function returned before the checker could kill the broker (it kills once the "
                        f"queue holds {n // 10} messages): did it publish to the queue it was given?")
        with b.connect() as connection:
            channel = connection.channel()
            got = [m.body for m in drain(channel, queue)]
            channel.queue_delete(queue)
    return _judge_publish_all(bodies, confirmed, got)


def _kill_once_filling(b: Broker, queue: str, threshold: int, killed: threading.Event,
                       done: threading.Event) -> None:
    """Kill ``b`` once the learner's run has got going (``queue`` holds ``threshold`` messages), then start it
    again; no kill if ``done`` is set first (the learner's function returned or raised)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 30:
        if done.is_set():
            return
        try:
            with b.connect(connection_attempts=1) as c:
                if c.channel().queue_declare(queue, passive=True).method.message_count >= threshold:
                    break
        except Exception:
            pass
        time.sleep(0.02)
    b.kill()
    killed.set()
    time.sleep(0.5)
    b.start()


def _judge_publish_all(bodies: list[bytes], confirmed: Any, got: list[bytes]) -> str:
    """The verdict on a run through a kill: the pass message, or :class:`Wrong` with what went wrong."""
    n = len(bodies)
    present = set(got)
    twice = len(got) - len(present)
    if not isinstance(confirmed, (list, tuple, set)):
        raise Wrong(f"return the list of bodies the broker confirmed, got {type(confirmed).__name__}")
    lost_confirmed = set(confirmed) - present
    if lost_confirmed:
        raise Wrong(f"{len(lost_confirmed)} bodies you returned as confirmed are not in the queue after the crash "
                    f"(e.g. {sorted(lost_confirmed)[:3]}): a message is safe only once the broker confirms it")
    missing = set(bodies) - present
    if missing:
        raise Wrong(f"{len(missing)} of {n} bodies are missing after the broker was killed and started again "
                    f"({len(present)} arrived, {len(set(confirmed))} returned as confirmed, {twice} sent twice): "
                    f"without publisher confirms you cannot know which ones to send again")
    if len(set(confirmed)) < n:
        raise Wrong(f"every body arrived but you returned only {len(set(confirmed))} of {n} as confirmed: "
                    f"return the bodies the broker confirmed")
    return (f"the broker was killed mid-run: {n} of {n} arrived, {len(set(confirmed))} confirmed, "
            f"{twice} sent twice (at-least-once: consumers must deduplicate).")


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
        channel mode makes the broker tell you, message by message, that it has stored one?""",
        """channel.confirm_delivery() on a BlockingConnection makes each basic_publish wait for the broker's
        confirm; when the connection dies (pika.exceptions.AMQPError), reconnect (broker.connect()) and send
        again everything that was not confirmed. Or use voicelab.publishing.ReliablePublisher.""",
    ],
    solution=publish_all,
)
