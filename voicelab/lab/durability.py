"""Durability on the real broker: what survives a restart or a crash, what confirms change, what they cost.

Experiments of notebook 05, each a function that returns numbers counted on the broker:

- :func:`survival_matrix`: queue type (classic durable, classic transient, quorum)
  x message (persistent, transient) x graceful ``restart()`` or ``kill()`` + ``start()``.
- :func:`publish_through_kill`: the broker is killed in the middle of a publishing run,
  with or without publisher confirms; what the publisher believed against what is there.
- :func:`mandatory_demo`: an unroutable message, confirmed and dropped without
  ``mandatory``, returned with it.
- :func:`publish_cost`: messages/s of one publishing strategy on one queue type.
- :func:`declare_outcome`, :func:`delivery_counts`: what this broker version does.

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker:
        matrix = survival_matrix(broker, n=100)
        plot_matrix(matrix, caption=broker_caption(broker))
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any, Callable

import matplotlib.pyplot as plt
import pandas as pd
import pika
import pika.exceptions

from ..broker import Broker
from ..publishing import (
    BrokerGone,
    ReliablePublisher,
    publish_confirmed,
    publish_unconfirmed,
)
from ..queues import drain, settled
from .measure import add_caption

QUEUE_KINDS: dict[str, dict[str, Any]] = {
    "classic durable": {"durable": True},
    "classic transient": {"durable": False},
    "quorum": {"durable": True, "arguments": {"x-queue-type": "quorum"}},
}
"""``queue_declare`` keyword arguments of each queue type the lesson compares."""

MESSAGE_MODES = {"persistent": pika.DeliveryMode.Persistent, "transient": pika.DeliveryMode.Transient}
EVENTS = ("restart", "kill")
STRATEGIES = ("no confirms", "confirm each", "batches of 100", "async window 256")


METADATA_FLUSH_S = 2.5
"""Seconds between declaring a queue and a ``kill -9`` demo.

Seen on RabbitMQ 4.0.5 under load (four test workers on two cores): after ``kill -9`` and ``start()``,
publishes to a durable queue declared moments before the kill came back unroutable, three times in a
row, and the publishing run failed. The cause is not identified: it is not Mnesia's write cache
(RabbitMQ syncs Mnesia's log before a declare returns, ``mnesia_sync``), so it may be the queue still
recovering when the publisher reconnects. Since the demos wait this long after declaring, it has not
been seen again; the wait costs a few seconds and keeps the count about messages, not about that.
"""


def wait_metadata_flush(declared_at: float) -> None:
    """Sleep until :data:`METADATA_FLUSH_S` seconds after ``declared_at`` (``time.monotonic()``)."""
    time.sleep(max(0.0, declared_at + METADATA_FLUSH_S - time.monotonic()))


def _check_kind(kind: str) -> dict[str, Any]:
    if kind not in QUEUE_KINDS:
        raise ValueError(f"kind must be one of {list(QUEUE_KINDS)}, got {kind!r}")
    return QUEUE_KINDS[kind]


def declare_outcome(broker: Broker, queue: str, **declare: Any) -> str:
    """Try ``queue_declare(queue, **declare)`` on a fresh channel: ``"accepted"`` or ``"refused: <reason>"``.

    The queue is deleted again when it was accepted.

    Example::

        declare_outcome(broker, "t", durable=False)      # transient non-exclusive: version-dependent
        declare_outcome(broker, "q", durable=False, arguments={"x-queue-type": "quorum"})  # refused
    """
    with broker.connect() as connection:
        channel = connection.channel()
        try:
            channel.queue_declare(queue, **declare)
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
            return f"refused: {e.args[0]} {e.args[1]}"
        channel.queue_delete(queue)
        return "accepted"


def _count(broker: Broker, queue: str, quiet: float = 1.5, timeout: float = 20.0) -> int | None:
    """Ready messages in ``queue`` once the count has not changed for ``quiet`` s, or None if it does not exist.

    After a restart a quorum queue replays its log in the background: a count read at once can be short
    (seen here: 501 of 2000 confirmed persistent messages on 3.10.8, all 2000 a moment later).
    """
    with broker.connect() as connection:
        def read() -> int | None:
            channel = connection.channel()   # a passive declare of a missing queue closes its channel
            try:
                count = int(channel.queue_declare(queue, passive=True).method.message_count)
            except pika.exceptions.ChannelClosedByBroker:
                return None
            channel.close()
            return count

        return settled(read, quiet=quiet, timeout=timeout, every=0.25)


def _fill_matrix(broker: Broker, n: int, prefix: str) -> dict[tuple[str, str], str]:
    """Declare the six queues afresh and put ``n`` confirmed messages in each; name -> 'refused' if refused.

    All six are declared first and given :data:`METADATA_FLUSH_S` to reach the disk, then filled, so that
    a kill right after the fill tests the messages, not whether the queues' definitions were written yet.
    """
    status = {}
    for kind, mode in itertools.product(QUEUE_KINDS, MESSAGE_MODES):
        queue = f"{prefix}.{kind.replace(' ', '-')}.{mode}"
        with broker.connect() as connection:
            channel = connection.channel()
            channel.queue_delete(queue)
            try:
                channel.queue_declare(queue, **QUEUE_KINDS[kind])
                status[(kind, mode)] = "declared"
            except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
                status[(kind, mode)] = f"refused: {e.args[1]}"
    wait_metadata_flush(time.monotonic())
    for (kind, mode), state in status.items():
        if state != "declared":
            continue
        props = pika.BasicProperties(delivery_mode=MESSAGE_MODES[mode])
        report = ReliablePublisher(broker.parameters(), window=500).publish(
            f"{prefix}.{kind.replace(' ', '-')}.{mode}", (b"x" * 100 for _ in range(n)), properties=props)
        status[(kind, mode)] = "filled" if len(report.confirmed) == n else "short"
    return status


def survival_matrix(broker: Broker, n: int = 100, prefix: str = "durability") -> pd.DataFrame:
    """Fill six queues (3 types x 2 message modes) with ``n`` confirmed messages, restart, count; again with a kill.

    One row per (event, queue, message): ``published``, ``survived`` (ready
    messages after the broker is back; 0 when the queue itself is gone),
    ``queue_kept`` and ``declare`` (``"filled"`` or the broker's refusal).
    Needs a broker voicelab controls (:func:`voicelab.broker.own_broker`).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rows = []
    for event in EVENTS:
        # Fresh names per event: a quorum queue deleted and re-declared under the same name just before a
        # kill -9 came back empty here (4.3.6), while a new name kept all its messages. Do not reuse names.
        status = _fill_matrix(broker, n, f"{prefix}.{event}")
        if event == "restart":
            broker.restart()
        else:
            broker.kill()   # at once: what the confirms promised, not what a few more seconds would have written
            broker.start()
        for (kind, mode), declared in status.items():
            queue = f"{prefix}.{event}.{kind.replace(' ', '-')}.{mode}"
            quiet = 1.5 if kind == "quorum" else 0.0   # a classic queue is recovered before the broker listens
            left = _count(broker, queue, quiet=quiet) if declared == "filled" else None
            rows.append({"event": event, "queue": kind, "message": mode,
                         "published": n if declared == "filled" else 0,
                         "survived": left or 0, "queue_kept": left is not None, "declare": declared})
    with broker.connect() as connection:
        channel = connection.channel()
        for event, kind, mode in itertools.product(EVENTS, QUEUE_KINDS, MESSAGE_MODES):
            channel.queue_delete(f"{prefix}.{event}.{kind.replace(' ', '-')}.{mode}")
    return pd.DataFrame(rows)


def plot_matrix(matrix: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Survivors per queue type and message mode, one panel per event (restart, kill)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, (event, part) in zip(axes, matrix.groupby("event", sort=False)):
        table = part.pivot(index="queue", columns="message", values="survived").reindex(list(QUEUE_KINDS))
        table.plot.bar(ax=ax, rot=0, color={"persistent": "tab:blue", "transient": "tab:orange"})
        ax.set_title(f"after {'a graceful restart' if event == 'restart' else 'kill -9 + start'}", fontsize=10)
        ax.set_xlabel("")
        ax.set_ylabel(f"messages left (of {int(part['published'].max())})")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("What survives the broker going down (one broker, one run, counted on the broker)", fontsize=10)
    add_caption(fig, caption)
    return fig


# ---------------------------------------------------------------------------
# Killing the broker while a publisher runs
# ---------------------------------------------------------------------------

def _drain_bodies(broker: Broker, queue: str) -> list[int]:
    with broker.connect() as connection:
        return [int(m.body) for m in drain(connection.channel(), queue)]


def _reset(broker: Broker, queue: str, kind: str) -> float:
    """Delete and declare ``queue``; return when it was declared (``time.monotonic()``)."""
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, **_check_kind(kind))
    return time.monotonic()


def _killer(broker: Broker, progress: Callable[[], int], kill_after: int, down: float,
            log: dict[str, float]) -> threading.Thread:
    """A thread that kills the broker once ``progress() >= kill_after``, waits ``down`` s, starts it again."""
    def run() -> None:
        t0 = time.monotonic()
        while progress() < kill_after and time.monotonic() - t0 < 60:
            time.sleep(0.001)
        log["killed_at"] = progress()
        try:
            broker.kill()
            time.sleep(down)
            broker.start()
        except BaseException as e:  # reported by _join_killer, never swallowed
            log["error"] = e  # type: ignore[assignment]
        log["down_s"] = time.monotonic() - t0

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _join_killer(thread: threading.Thread, log: dict[str, Any]) -> None:
    """Wait for the killer; raise what went wrong in it (a broker that did not come back)."""
    thread.join()
    if "error" in log:
        raise RuntimeError(f"the broker was killed but did not start again: {log['error']!r}") from log["error"]


def publish_through_kill(broker: Broker, n: int, *, confirms: bool, kill_after: int | None = None,
                         queue: str = "kill_demo", kind: str = "classic durable", down: float = 0.5,
                         window: int = 100) -> dict[str, Any]:
    """Publish ``n`` numbered persistent messages to a durable ``queue`` while the broker is killed and started.

    ``confirms=False``: a ``BlockingConnection`` without confirms; a publish that
    raises is counted as failed, the publisher reconnects and goes on. ``confirms=True``:
    :class:`voicelab.publishing.ReliablePublisher`. The kill comes once the publisher
    has sent (or, with confirms, had confirmed) ``kill_after`` messages (default n/3).

    Returns ``believed_sent`` (publishes that returned without error, or confirmed),
    ``present`` (distinct messages in the queue after the restart), ``lost``
    (believed sent, not there), ``duplicates`` (extra copies), ``unconfirmed_known``
    and ``republished`` (with confirms).
    """
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    kill_after = n // 3 if kill_after is None else kill_after
    if not 0 < kill_after < n:
        raise ValueError(f"kill_after must be between 1 and n-1={n - 1}, got {kill_after}")
    wait_metadata_flush(_reset(broker, queue, kind))  # the queue itself survives the kill: see METADATA_FLUSH_S
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    log: dict[str, float] = {}
    out: dict[str, Any] = {"confirms": confirms, "sent": n}
    if confirms:
        publisher = ReliablePublisher(broker.parameters(), window=window, deadline=120)
        thread = _killer(broker, lambda: len(getattr(publisher, "report", None).confirmed)  # type: ignore[union-attr]
                         if getattr(publisher, "report", None) else 0, kill_after, down, log)
        try:
            report = publisher.publish(queue, (str(i).encode() for i in range(n)), properties=props)
        except BrokerGone:
            _join_killer(thread, log)  # the broker's own failure, if it did not come back, explains this one
            raise
        _join_killer(thread, log)
        believed = set(report.confirmed)
        out.update(republished=report.republished, reconnects=report.reconnects)
    else:
        believed, state = set(), {"i": 0}
        thread = _killer(broker, lambda: state["i"], kill_after, down, log)
        failed = 0
        deadline = time.monotonic() + 120
        connection = broker.connect()
        channel = connection.channel()
        for i in range(n):
            state["i"] = i
            try:
                publish_unconfirmed(channel, queue, [str(i).encode()], properties=props)
                believed.add(i)
            except (pika.exceptions.AMQPError, OSError):
                failed += 1
                while time.monotonic() < deadline:   # reconnect, as any production publisher would
                    try:
                        connection = broker.connect(connection_attempts=1)
                        channel = connection.channel()
                        break
                    except (pika.exceptions.AMQPError, OSError):
                        time.sleep(0.2)
        _join_killer(thread, log)
        channel.queue_declare(queue, passive=True)   # answered after every publish before it
        connection.close()
        out.update(failed_publishes=failed, republished=0, reconnects=None)
    bodies = _drain_bodies(broker, queue)
    with broker.connect() as connection:
        connection.channel().queue_delete(queue)
    present = set(bodies)
    out.update(killed_at=int(log.get("killed_at", -1)), believed_sent=len(believed), present=len(present),
               lost=len(believed - present), duplicates=len(bodies) - len(present),
               unconfirmed_known=n - len(believed) if confirms else None,
               unknown_fate=None if confirms else len(believed - present))
    return out


def plot_kill(runs: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Believed sent, present after the restart, lost and duplicated, with and without confirms (one bar per run)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    cols = ["believed_sent", "present", "lost", "duplicates"]
    table = runs.assign(run=[f"{'confirms' if c else 'no confirms'}\n(run {r})"
                             for c, r in zip(runs["confirms"], runs.get("repeat", range(len(runs))))])
    table.set_index("run")[cols].plot.bar(ax=ax, rot=0, logy=False)
    ax.set_ylabel("messages")
    ax.set_xlabel("")
    ax.set_title(f"Killing the broker while publishing {int(runs['sent'].iloc[0])} persistent messages",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    add_caption(fig, caption)
    return fig


def mandatory_demo(broker: Broker, routing_key: str = "no.such.queue") -> dict[str, str]:
    """Publish one confirmed message no queue takes, without and with ``mandatory=True``; what happened to each."""
    out = {}
    with broker.connect() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for mandatory in (False, True):
            try:
                publish_confirmed(channel, routing_key, b"lost?", mandatory=mandatory)
                out[f"mandatory={mandatory}"] = "confirmed (and dropped: no queue)"
            except pika.exceptions.UnroutableError as e:
                m = e.messages[0]
                out[f"mandatory={mandatory}"] = f"returned: {m.method.reply_code} {m.method.reply_text}"
    return out


def delivery_counts(broker: Broker, requeues: int = 2, queue: str = "quorum_counts") -> list[Any]:
    """``x-delivery-count`` of one message on a quorum queue at each delivery, rejected with requeue in between.

    ``None`` where the header is absent (versions differ, see notebook 05).
    """
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, **QUEUE_KINDS["quorum"])
        publish_confirmed(channel, queue, b"job")
        seen = []
        for i in range(requeues + 1):
            for _ in range(200):
                method, props, _ = channel.basic_get(queue)
                if method is not None:
                    break
                time.sleep(0.01)
            seen.append((props.headers or {}).get("x-delivery-count"))
            channel.basic_reject(method.delivery_tag, requeue=i < requeues)
        channel.queue_delete(queue)
    return seen


# ---------------------------------------------------------------------------
# Costs
# ---------------------------------------------------------------------------

def time_publishes(broker: Broker, queue: str, n: int, strategy: str, *, persistent: bool = True,
                   size: int = 100) -> float:
    """Seconds to publish ``n`` messages of ``size`` bytes to the existing ``queue`` with ``strategy``
    (one of :data:`STRATEGIES`); connection set-up is never timed. The queue is left as it is."""
    props = pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient)
    body = b"x" * size
    if strategy in ("no confirms", "confirm each"):
        with broker.connect() as connection:
            channel = connection.channel()
            t0 = time.perf_counter()
            if strategy == "no confirms":
                publish_unconfirmed(channel, queue, itertools.repeat(body, n), properties=props)
                channel.queue_declare(queue, passive=True)  # answered once every publish before it is enqueued
            else:
                for _ in range(n):
                    publish_confirmed(channel, queue, body, properties=props, mandatory=False)
            return time.perf_counter() - t0
    batch = strategy.startswith("batches")
    publisher = ReliablePublisher(broker.parameters(), window=100 if batch else 256, batch=batch, mandatory=False)
    return publisher.publish(queue, itertools.repeat(body, n), properties=props).seconds


def publish_cost(broker: Broker, strategy: str, n: int, *, kind: str = "classic durable", persistent: bool = True,
                 size: int = 100, queue: str = "cost_demo") -> float:
    """Messages/s publishing ``n`` messages of ``size`` bytes to an empty ``queue`` of ``kind`` with ``strategy``.

    Strategies (:data:`STRATEGIES`, after RabbitMQ's publisher-confirms tutorial):
    ``"no confirms"`` (clock stopped after one round trip the broker answers once
    it has them all), ``"confirm each"`` (``BlockingConnection``, a confirm per
    publish), ``"batches of 100"`` and ``"async window 256"`` (``SelectConnection``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _reset(broker, queue, kind)
    seconds = time_publishes(broker, queue, n, strategy, persistent=persistent, size=size)
    with broker.connect() as connection:
        connection.channel().queue_delete(queue)
    return n / seconds
