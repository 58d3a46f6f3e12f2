"""Durability on the real broker: what survives a restart or a crash, what confirms change, what they cost.

Experiments of notebook 05, each a function that returns numbers counted on the broker:

- :func:`survival_matrix`: queue type (classic durable, classic transient, quorum)
  x message (persistent, transient) x graceful ``restart()`` or ``kill()`` + ``start()``.
- :func:`publish_through_kill`: the broker is killed in the middle of a publishing run,
  with or without publisher confirms; what the publisher believed against what is there.
- :func:`mandatory_demo`: an unroutable message, confirmed and dropped without ``mandatory``, returned with it.
- :func:`publish_cost`: messages/s of one publishing strategy on one queue type.
- :func:`delivery_counts`: what this broker version does (:mod:`voicelab.lab.deprecations` has the rest).

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker:
        matrix = survival_matrix(broker, n=100)
        plot_matrix(matrix, caption=broker_caption(broker))
"""

from __future__ import annotations

import contextlib
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
from ..queues import drain, reset_queue, settled
from .measure import PUBLISH_STRATEGIES, add_caption, time_publishes

QUEUE_KINDS: dict[str, dict[str, Any]] = {
    "classic durable": {"durable": True},
    "classic transient": {"durable": False},
    "quorum": {"durable": True, "arguments": {"x-queue-type": "quorum"}},
}
"""``queue_declare`` keyword arguments of each queue type the lesson compares."""

MESSAGE_MODES = {"persistent": pika.DeliveryMode.Persistent, "transient": pika.DeliveryMode.Transient}
EVENTS = ("restart", "kill")
STRATEGIES = PUBLISH_STRATEGIES

METADATA_FLUSH_S = 2.5
"""Seconds between declaring a queue and a ``kill -9`` demo.

Seen on RabbitMQ 4.0.5 under load (four test workers on two cores): after ``kill -9`` and ``start()``,
publishes to a durable queue declared moments before the kill came back unroutable, three times in a row.
Not Mnesia's write cache (RabbitMQ syncs its log before a declare returns, ``mnesia_sync``): perhaps the
queue still recovering when the publisher reconnects. Not seen since the demos wait this long after declaring.
"""


def wait_metadata_flush(declared_at: float) -> None:
    """Sleep until :data:`METADATA_FLUSH_S` seconds after ``declared_at`` (``time.monotonic()``)."""
    time.sleep(max(0.0, declared_at + METADATA_FLUSH_S - time.monotonic()))


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


def _matrix_queue(prefix: str, kind: str, mode: str) -> str:
    return f"{prefix}.{kind.replace(' ', '-')}.{mode}"


def _fill_matrix(broker: Broker, n: int, prefix: str) -> dict[tuple[str, str], str]:
    """Declare the six queues afresh and put ``n`` confirmed messages in each; name -> 'refused' if refused.

    All six are declared first and given :data:`METADATA_FLUSH_S` to reach the disk. Then they are filled
    together, one message to each queue in turn, each confirmed before the next is sent: the last confirm of
    every queue comes within a few round trips of the end of the fill, so a kill right after it tests every
    queue type alike (filled one after another, only the last queue would die right after its confirms).
    """
    status = {}
    for kind, mode in itertools.product(QUEUE_KINDS, MESSAGE_MODES):
        with broker.connect() as connection:
            channel = connection.channel()
            channel.queue_delete(_matrix_queue(prefix, kind, mode))
            try:
                channel.queue_declare(_matrix_queue(prefix, kind, mode), **QUEUE_KINDS[kind])
                status[(kind, mode)] = "declared"
            except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ConnectionClosedByBroker) as e:
                status[(kind, mode)] = f"refused: {e.args[1]}"
    wait_metadata_flush(time.monotonic())
    targets = [(key, _matrix_queue(prefix, *key), pika.BasicProperties(delivery_mode=MESSAGE_MODES[key[1]]))
               for key, state in status.items() if state == "declared"]
    confirmed = dict.fromkeys(status, 0)
    with broker.connect() as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        for _ in range(n):
            for key, queue, props in targets:
                publish_confirmed(channel, queue, b"x" * 100, properties=props)   # returns once confirmed
                confirmed[key] += 1
    for key, _, _ in targets:
        status[key] = "filled" if confirmed[key] == n else "short"
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
            quiet = 1.5 if kind == "quorum" else 0.0   # a classic queue is recovered before the broker listens
            left = _count(broker, _matrix_queue(f"{prefix}.{event}", kind, mode), quiet=quiet) \
                if declared == "filled" else None
            rows.append({"event": event, "queue": kind, "message": mode,
                         "published": n if declared == "filled" else 0,
                         "survived": left or 0, "queue_kept": left is not None, "declare": declared})
    with broker.connect() as connection:
        channel = connection.channel()
        for event, kind, mode in itertools.product(EVENTS, QUEUE_KINDS, MESSAGE_MODES):
            channel.queue_delete(_matrix_queue(f"{prefix}.{event}", kind, mode))
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


# --- Killing the broker while a publisher runs ------------------------------------------------------------

def _reset(broker: Broker, queue: str, kind: str) -> float:
    """Delete and declare ``queue`` of ``kind`` (see :data:`QUEUE_KINDS`); return when (``time.monotonic()``)."""
    if kind not in QUEUE_KINDS:
        raise ValueError(f"kind must be one of {list(QUEUE_KINDS)}, got {kind!r}")
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, **QUEUE_KINDS[kind])
    return time.monotonic()


class _Killer(threading.Thread):
    """Kills the broker once ``progress() >= kill_after``, waits ``down`` s and starts it again."""

    def __init__(self, broker: Broker, progress: Callable[[], int], kill_after: int, down: float) -> None:
        super().__init__(daemon=True)
        self.broker, self.progress, self.kill_after, self.down = broker, progress, kill_after, down
        self.killed_at = -1
        self.dead = threading.Event()   # set once the kill has been sent
        self.cancel = threading.Event()   # set by a publisher that failed before the kill: no kill then
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        t0 = time.monotonic()
        while self.progress() < self.kill_after and time.monotonic() - t0 < 60:
            if self.cancel.wait(0.001):
                return
        self.killed_at = self.progress()
        try:
            self.broker.kill()
            self.dead.set()
            time.sleep(self.down)
            self.broker.start()
        except BaseException as e:  # raised by finish(), never swallowed
            self.error = e

    def finish(self) -> None:
        """Wait for the kill and the start; raise what went wrong (a broker that did not come back)."""
        self.join()
        if self.error is not None:
            raise RuntimeError(f"the broker was killed but did not start again: {self.error!r}") from self.error


def publish_through_kill(broker: Broker, n: int, *, confirms: bool, kill_after: int | None = None,
                         queue: str = "kill_demo", kind: str = "classic durable", down: float = 0.5,
                         window: int = 100) -> dict[str, Any]:
    """Publish ``n`` numbered persistent messages to a durable ``queue`` while the broker is killed and started.

    ``confirms=False``: a ``BlockingConnection`` without confirms; a publish that
    raises is counted as failed, the publisher reconnects and goes on; it sends more
    than ``n`` if the kill has not been sent by then (``sent`` says how many). ``confirms=True``:
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
    if confirms:
        believed, out = _publish_confirmed_through_kill(broker, queue, n, kill_after, down, window)
    else:
        believed, out = _publish_unconfirmed_through_kill(broker, queue, n, kill_after, down)
    with broker.connect() as connection:
        bodies = [int(m.body) for m in drain(connection.channel(), queue)]
        connection.channel().queue_delete(queue)
    present = set(bodies)
    return {"confirms": confirms, "sent": n, **out, "believed_sent": len(believed), "present": len(present),
            "lost": len(believed - present), "duplicates": len(bodies) - len(present),
            "unconfirmed_known": n - len(believed) if confirms else None,
            "unknown_fate": None if confirms else len(believed - present)}


def _publish_confirmed_through_kill(broker: Broker, queue: str, n: int, kill_after: int, down: float,
                                    window: int) -> tuple[set[int], dict[str, Any]]:
    """:func:`publish_through_kill` with a :class:`ReliablePublisher`: the messages it had confirmed, its counts."""
    publisher = ReliablePublisher(broker.parameters(), window=window, deadline=120)
    killer = _Killer(broker, lambda: len(publisher.report.confirmed) if getattr(publisher, "report", None) else 0,
                     kill_after, down)
    try:
        report = publisher.publish(queue, (str(i).encode() for i in range(n)),
                                   properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    except BrokerGone:
        killer.finish()  # the broker's own failure, if it did not come back, explains this one
        raise
    killer.finish()
    return set(report.confirmed), {"republished": report.republished, "reconnects": report.reconnects,
                                   "killed_at": killer.killed_at}


def _publish_unconfirmed_through_kill(broker: Broker, queue: str, n: int, kill_after: int,
                                      down: float) -> tuple[set[int], dict[str, Any]]:
    """:func:`publish_through_kill` on a plain channel, reconnecting after a failure: what went out, what failed."""
    believed, sending, failed = set(), [0], 0
    props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    killer = _Killer(broker, lambda: sending[0], kill_after, down)
    deadline = time.monotonic() + 120
    connection: pika.BlockingConnection | None = None
    i, since_kill = -1, 0
    try:
        connection = broker.connect()
        channel = connection.channel()

        def going_on() -> bool:
            """n messages, and more until the kill has been sent and the publisher has gone on 200 more or
            failed (a busy machine can take longer to kill the broker than the publisher takes to send the
            rest): the kill lands while the publisher publishes, as in production."""
            if i < n:
                return True
            if time.monotonic() > deadline or not (killer.is_alive() or killer.dead.is_set()):
                return False
            return not killer.dead.is_set() or (since_kill < 200 and failed == 0)

        while (i := i + 1) < n or going_on():
            sending[0] = i
            since_kill += killer.dead.is_set()
            try:
                publish_unconfirmed(channel, queue, [str(i).encode()], properties=props)
                believed.add(i)
            except (pika.exceptions.AMQPError, OSError):
                failed += 1
                while time.monotonic() < deadline:   # reconnect, as any production publisher would
                    with contextlib.suppress(pika.exceptions.AMQPError, OSError):
                        connection.close()
                    try:
                        connection = broker.connect(connection_attempts=1)
                        channel = connection.channel()
                        break
                    except (pika.exceptions.AMQPError, OSError):
                        time.sleep(0.2)
    except BaseException:
        killer.cancel.set()   # not killed yet: not now either (a started kill still ends with a start)
        raise
    finally:
        killer.finish()   # the broker is up again before anything else happens (a Ctrl-C included)
        if connection is not None:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):   # one opened before the kill is dead
                connection.close()   # the broker handles a connection's frames in order: publishes, then close
    return believed, {"sent": i, "failed_publishes": failed, "republished": 0, "reconnects": None,
                      "killed_at": killer.killed_at}


def plot_kill(runs: pd.DataFrame, caption: str = "") -> plt.Figure:
    """Believed sent, present after the restart, lost and duplicated, with and without confirms (one bar per run)."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    cols = ["believed_sent", "present", "lost", "duplicates"]
    table = runs.assign(run=[f"{'confirms' if c else 'no confirms'}\n(run {r})"
                             for c, r in zip(runs["confirms"], runs.get("repeat", range(len(runs))))])
    table.set_index("run")[cols].plot.bar(ax=ax, rot=0, logy=False)
    ax.set_ylabel("messages")
    ax.set_xlabel("")
    ax.set_title(f"Killing the broker while publishing {int(runs['sent'].iloc[0])} persistent messages", fontsize=10)
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
        reset_queue(channel, queue, arguments={"x-queue-type": "quorum"})
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


# --- Costs ---------------------------------------------------------------------------------------------------

def publish_cost(broker: Broker, strategy: str, n: int, *, kind: str = "classic durable", persistent: bool = True,
                 size: int = 100, queue: str = "cost_demo", counted: bool = False) -> float | dict[str, float]:
    """Messages/s publishing ``n`` messages of ``size`` bytes to an empty ``queue`` of ``kind`` with ``strategy``.

    With ``counted=True``, returns ``{"value": rate, "in_queue": n}`` where ``in_queue`` is the ready count
    the broker reports once the publisher is done (read before the queue is deleted).

    Strategies (:data:`STRATEGIES`, after RabbitMQ's publisher-confirms tutorial):
    ``"no confirms"`` (clock stopped once the queue counts them all: for a quorum queue, a count of
    committed entries), ``"confirm each"`` (``BlockingConnection``, a confirm per
    publish), ``"batches of 100"`` and ``"async window 256"`` (``SelectConnection``).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _reset(broker, queue, kind)
    seconds = time_publishes(broker, queue, n, strategy, persistent=persistent, size=size)
    with broker.connect() as connection:
        channel = connection.channel()
        in_queue = int(channel.queue_declare(queue, passive=True).method.message_count)
        channel.queue_delete(queue)
    return {"value": n / seconds, "in_queue": in_queue} if counted else n / seconds
