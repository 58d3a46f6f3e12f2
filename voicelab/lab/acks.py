"""Acknowledgements on the real broker: what a crash loses, what ack, nack and reject do.

:func:`crash_consumer` runs a real consumer *process*, kills it with SIGKILL in
the middle of a batch and accounts for every message: processed, still in the
queue, or lost. The child's code lives here, not in a notebook, so that it can
be started with ``spawn`` (macOS, Windows) as well as ``fork``.

Example::

    crash_consumer(broker, "crash_demo", n=300, auto_ack=True, kill_after=30)
    # {'mode': 'auto-ack', 'processed': 30, 'requeued': 0, 'lost': 270, ...}
    plot_crashes(pd.DataFrame([crash_consumer(broker, "crash_demo", 300, auto_ack=a) for a in (True, False)]))
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # not at run time: the consumer child process imports this module
    import matplotlib.pyplot as plt
    import pandas as pd

import matplotlib.pyplot as plt
import pandas as pd
import pika
import pika.exceptions

from ..broker import Broker, UrlBroker
from ..management import Management
from ..queues import delete_job_queue, dlq_name, drain, refill, settled, wait_for_consumers, wait_stable
from .measure import add_caption


def consumer_main(url: str, queue: str, auto_ack: bool, prefetch: int, job_seconds: float, log_path: str) -> None:
    """Child process: consume ``queue``, 'process' each message, log its id, ack after (manual mode)."""
    connection = UrlBroker(url).connect()  # the one way a child process finds its broker again
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    with open(log_path, "a", buffering=1) as log:
        def on_message(ch, method, properties, body):  # type: ignore[no-untyped-def]
            time.sleep(job_seconds)
            log.write(body.decode() + "\n")
            if not auto_ack:  # manual ack: the broker keeps the message until this arrives
                ch.basic_ack(delivery_tag=method.delivery_tag)

        # auto_ack=True: the broker counts a message done as soon as it sends it
        channel.basic_consume(queue=queue, on_message_callback=on_message, auto_ack=auto_ack)
        channel.start_consuming()


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def crash_consumer(broker: Broker, queue: str, n: int, *, auto_ack: bool, prefetch: int = 10,
                   job_seconds: float = 0.005, kill_after: int = 20, timeout: float = 60) -> dict[str, Any]:
    """Fill ``queue`` with ``n`` numbered messages, let a consumer process handle ``kill_after``, SIGKILL it.

    Returns counts the broker and the child's log agree on: ``processed`` (by the
    child), ``requeued`` (back in the queue), ``redelivered`` (of those, flagged
    as delivered before), ``lost`` (neither processed nor in the queue) and
    ``twice`` (processed, but back in the queue because the ack never left: at-least-once).
    """
    if not 0 < kill_after < n:
        raise ValueError(f"kill_after must be between 1 and n-1={n - 1}, got {kill_after}")
    with broker.connect() as connection:
        refill(connection.channel(), queue, range(n))
    with tempfile.TemporaryDirectory(prefix="voicelab-crash-") as tmp:
        log = Path(tmp, "processed.log")
        log.touch()
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=consumer_main, daemon=True,
                            args=(broker.amqp_url, queue, auto_ack, prefetch, job_seconds, str(log)))
        child.start()
        try:
            deadline = time.monotonic() + timeout
            while len(_lines(log)) < kill_after:
                if not child.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError(f"the consumer process processed {len(_lines(log))} messages, then "
                                       f"{'died' if not child.is_alive() else 'timed out'}")
                time.sleep(0.002)
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        finally:
            child.join(10)
            if child.is_alive():
                child.kill()
        processed = _lines(log)
    with broker.connect() as connection:
        channel = connection.channel()
        wait_for_consumers(channel, queue, 0, timeout)  # the broker notices the dead connection, then requeues
        wait_stable(channel, queue)
        back = {m.body.decode(): m.method.redelivered for m in drain(channel, queue)}
        channel.queue_delete(queue)
    everything = {str(i) for i in range(n)}
    return {
        "mode": "auto-ack" if auto_ack else "manual ack",
        "prefetch": prefetch,
        "sent": n,
        "processed": len(set(processed)),
        "requeued": len(back),
        "redelivered": sum(back.values()),
        "lost": len(everything - set(processed) - set(back)),
        "twice": len(set(processed) & set(back)),
    }


SETTLEMENTS = ("ack", "nack requeue=True", "nack requeue=False", "reject requeue=True", "reject requeue=False",
               "no ack, channel closed")


def settle_one(channel: Any, queue: str, how: str) -> None:
    """Take one message from ``queue`` with a manual ack and settle it ``how``: the pika call for each way."""
    method, properties, body = channel.basic_get(queue, auto_ack=False)  # the broker waits for our answer
    tag = method.delivery_tag
    if how == "ack":
        channel.basic_ack(delivery_tag=tag)                  # done: the broker deletes it
    elif how == "nack requeue=True":
        channel.basic_nack(delivery_tag=tag, requeue=True)   # back in the queue, flagged redelivered
    elif how == "nack requeue=False":
        channel.basic_nack(delivery_tag=tag, requeue=False)  # to the dead-letter exchange, or dropped
    elif how == "reject requeue=True":
        channel.basic_reject(delivery_tag=tag, requeue=True)
    elif how == "reject requeue=False":
        channel.basic_reject(delivery_tag=tag, requeue=False)
    else:  # "no ack, channel closed": the broker requeues what the channel held
        channel.close()


def settle(broker: Broker, how: str, queue: str = "settle_demo") -> dict[str, Any]:
    """Deliver one message, settle it ``how`` (one of :data:`SETTLEMENTS`), and report where it went.

    The queue has a dead-letter queue, so ``requeue=False`` shows where rejected messages go.
    """
    if how not in SETTLEMENTS:
        raise ValueError(f"how must be one of {SETTLEMENTS}, got {how!r}")
    with broker.connect() as connection:
        channel = connection.channel()
        refill(channel, queue, [b"job"], dead_letters=True)
        settle_one(connection.channel(), queue, how)
        wait_stable(channel, queue, dlq_name(queue))  # requeue and dead-lettering are asynchronous
        again, dead = drain(channel, queue), drain(channel, dlq_name(queue))
        reason = (dead[0].properties.headers or {}).get("x-death", [{}])[0].get("reason") if dead else None
        delete_job_queue(channel, queue)
    return {
        "settled with": how,
        "back in queue": bool(again),
        "redelivered flag": bool(again and again[0].method.redelivered),
        "in dead-letter queue": bool(dead),
        "x-death reason": reason or "",
    }


def forgotten_acks(broker: Broker, queue: str, n: int, hold: float = 8.0, after: float = 8.0,
                   every: float = 0.5) -> tuple["pd.DataFrame", int]:
    """A consumer that never acks: sample the broker's counters while it runs and after its channel closes.

    Returns the samples (``t`` seconds, ``phase``, ``ready``, ``unacked`` from the
    management API) and how many of the ``n`` messages came back flagged ``redelivered``.
    The management API's queue counters refresh every 5 s, so each phase lasts longer than that.
    """
    mgmt = Management(broker)
    with broker.connect() as connection:
        channel = connection.channel()
        refill(channel, queue, range(n))
        mgmt.wait_for(queue, lambda q: q.get("messages_ready") == n)
        samples = []
        t0 = time.monotonic()

        def sample(phase: str) -> None:
            q = mgmt.queue(queue)
            samples.append({"t": time.monotonic() - t0, "phase": phase, "ready": q.get("messages_ready", 0),
                            "unacked": q.get("messages_unacknowledged", 0)})

        forgetful = connection.channel()
        forgetful.basic_consume(queue, lambda ch, method, properties, body: None)  # receives, never acks
        while time.monotonic() - t0 < hold:
            connection.process_data_events(time_limit=every)
            sample("consumer running, no acks")
        forgetful.close()
        while time.monotonic() - t0 < hold + after:
            time.sleep(every)
            sample("its channel closed")
        redelivered = sum(m.method.redelivered for m in drain(channel, queue))
        channel.queue_delete(queue)
    mgmt.close()
    return pd.DataFrame(samples), redelivered


TIMEOUT_DEMO_SETTINGS = {"consumer_timeout": 2000, "channel_tick_interval": 500}
"""Settings of a broker that shows ``consumer_timeout`` in seconds instead of 30 minutes.

3.10 and 4.0 check the timeout when the channel ticks (``channel_tick_interval``, 60 s by
default), so the tick is shortened too; 4.3's quorum queues evaluate it themselves.
"""


def hold_unacked(broker: Broker, queue: str, *, kind: str = "classic", hold_s: float = 8.0) -> dict[str, Any]:
    """Consume one message and never ack it for ``hold_s`` s: what does the broker do about it?

    Run it on a broker started with a short ``consumer_timeout`` (:data:`TIMEOUT_DEMO_SETTINGS`,
    :func:`voicelab.broker.own_broker`). ``kind`` is ``"classic"`` or ``"quorum"``. Returns
    ``deliveries`` (seconds after the first, and whether flagged redelivered), ``closed_after_s``,
    ``close_code`` and ``close_text`` when the broker closed the channel, ``cancelled_after_s``
    when it cancelled the consumer, and ``ready_after`` and ``consumers_after``: the queue at the end,
    while the consumer's connection was still open (a message the consumer still holds is not ready).
    """
    if kind not in ("classic", "quorum"):
        raise ValueError(f"kind must be 'classic' or 'quorum', got {kind!r}")
    if hold_s <= 0:
        raise ValueError(f"hold_s must be > 0, got {hold_s!r}")
    out: dict[str, Any] = {"kind": kind, "deliveries": [], "closed_after_s": None, "close_code": None,
                           "close_text": "", "cancelled_after_s": None}
    arguments = {"x-queue-type": "quorum"} if kind == "quorum" else None
    first: list[float] = []

    def since_first() -> float:
        return round(time.monotonic() - first[0], 2) if first else 0.0

    with broker.connect() as watcher:
        admin = watcher.channel()
        admin.queue_delete(queue)
        admin.queue_declare(queue, durable=True, arguments=arguments)
        admin.basic_publish("", queue, b"a job that takes too long")
        connection = broker.connect()
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                if not first:
                    first.append(time.monotonic())
                out["deliveries"].append((since_first(), bool(method.redelivered)))  # and never ack it

            channel.basic_consume(queue, on_message)
            channel.add_on_cancel_callback(lambda frame: out.update(cancelled_after_s=since_first()))
            connection.call_later(hold_s, channel.stop_consuming)
            try:
                channel.start_consuming()   # returns at stop_consuming(), or when the broker cancels us
            except pika.exceptions.ChannelClosedByBroker as e:
                out.update(closed_after_s=since_first(), close_code=e.reply_code, close_text=e.reply_text)
            # a quorum queue applies a close or a cancel later: read the queue once it settles
            def counts() -> tuple[int, int]:
                ok = admin.queue_declare(queue, passive=True).method
                return ok.message_count, ok.consumer_count

            out["ready_after"], out["consumers_after"] = settled(counts, quiet=1.0, timeout=6.0, every=0.1)
        finally:
            if connection.is_open:
                connection.close()
        admin.queue_delete(queue)
    return out


def crash_parts(crashes: "pd.DataFrame") -> "pd.DataFrame":
    """Split each :func:`crash_consumer` row into disjoint parts that add up to ``sent``.

    ``processed`` and ``requeued`` overlap by ``twice`` (done, but the ack never left), so
    stacking them would count those messages twice.

    >>> import pandas as pd
    >>> crash_parts(pd.DataFrame([{"processed": 31, "requeued": 570, "twice": 1, "lost": 0}])).iloc[0].tolist()
    [30, 1, 569, 0]
    """

    return pd.DataFrame({"processed": crashes["processed"] - crashes["twice"],
                         "processed, then requeued (runs twice)": crashes["twice"],
                         "requeued, not processed": crashes["requeued"] - crashes["twice"],
                         "lost": crashes["lost"]})


def plot_crashes(crashes: "pd.DataFrame", title: str = "A consumer process killed mid-batch", caption: str = "",
                 ax: "plt.Axes | None" = None) -> "plt.Axes":
    """Stacked bars per ack mode: where each message of :func:`crash_consumer` ended, median over the runs.

    Each message is counted once: processed only; processed *and* back in the queue (its ack never
    left: it will run twice); back in the queue unprocessed; lost. The parts add up to the messages sent.
    ``crashes`` has one row per run (its ``repeat`` column counts the repeats).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 2.6))
    parts = crash_parts(crashes)
    medians = parts.groupby(crashes["mode"]).median()
    medians.plot.barh(stacked=True, color=["#4c9a2a", "#e0a526", "#2b6cb0", "#c0392b"], ax=ax)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    repeats = crashes["repeat"].nunique() if "repeat" in crashes else 1
    ax.set_xlabel(f"messages (of {crashes['sent'].max()}; median of {repeats} repeats)")
    ax.set_ylabel("")
    ax.set_title(title, fontsize=10)
    add_caption(ax, caption)
    return ax


def plot_forgotten_acks(samples: "pd.DataFrame", caption: str = "", ax: "plt.Axes | None" = None) -> "plt.Axes":
    """The ready and unacked counters of :func:`forgotten_acks` over time; a dashed line where the channel closed."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    samples.plot(x="t", y=["ready", "unacked"], drawstyle="steps-post", ax=ax)
    ax.axvline(samples.loc[samples["phase"] != samples["phase"][0], "t"].min(), color="0.5", linestyle="--")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("messages")
    ax.set_title("A consumer that never acks, then its channel closes (dashed)\n"
                 "counters from the management API, which refreshes them every 5 s", fontsize=10)
    add_caption(ax, caption)
    return ax
