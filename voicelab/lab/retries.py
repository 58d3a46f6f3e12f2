"""Notebook 06's retry experiments: a retry policy run and recorded delivery by delivery, the redelivery loop.

:func:`run_retry_worker` consumes a queue with :func:`voicelab.retry.handle_delivery` until nothing is left
and returns one row per delivery; :func:`redelivery_loop` measures what ``requeue=True`` does on each
queue type and RabbitMQ version; :func:`plot_storm` and :func:`plot_attempts` draw them.

Example::

    policy = RetryPolicy("delayed", max_attempts=4, delays=(0.1, 0.2, 0.4))
    events = run_retry_worker(broker, "voice_jobs06", lambda job, attempt: None, policy)
    events[["job", "attempt", "outcome"]]   # one row per delivery: done / retry / poison / dead-lettered
    redelivery_loop(broker, "quorum", "reject", max_deliveries=25)
"""

from __future__ import annotations

import time
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from ..queues import (
    confirm_mode,
    declare_job_queue,
    delete_job_queue,
    dlq_name,
    publish_bodies,
    queue_counts,
    wait_stable,
)
from ..retry import Handler, RetryPolicy, deaths, handle_delivery, tier_name
from .measure import add_caption


def run_retry_worker(broker: Any, queue: str, handler: Handler, policy: RetryPolicy, *, idle: float = 0.5,
               timeout: float = 30.0, prefetch: int = 1) -> pd.DataFrame:
    """Consume ``queue`` with :func:`handle_delivery` until nothing is left to do; one row per delivery.

    Stops once no message arrived for ``idle`` s and the work queue and its wait
    queues have then stayed empty for another ``idle`` s (a message between a wait
    queue and the work queue is in neither for a moment, longer on a busy machine),
    or after ``timeout`` s (then raises ``TimeoutError``).
    Columns: ``t`` (s since start), ``job``, ``attempt``, ``outcome``, ``error``,
    ``to`` (where a retry went) and ``deaths`` (the ``x-death`` entries it carried).
    """
    if not isinstance(policy, RetryPolicy):
        raise ValueError(f"policy must be a RetryPolicy, got {policy!r}")
    if not idle > 0:
        raise ValueError(f"idle must be > 0 seconds, got {idle!r}")
    events: list[dict[str, Any]] = []
    t0 = time.monotonic()
    waits = [tier_name(queue, t) for t in range(len(policy.delays))] if policy.strategy == "delayed" else []

    def on_message(ch: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        seen = time.monotonic() - t0
        event = handle_delivery(ch, queue, method, properties, body, handler, policy)
        events.append({"t": round(seen, 4), **event, "deaths": deaths(properties)})

    with broker.connect() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        confirm_mode(channel)
        tag = channel.basic_consume(queue, on_message)
        last = time.monotonic()
        empty_since: float | None = None   # a message moving from a wait queue back to the work queue is in
        while True:                        # neither for a moment: the queues must stay empty for `idle` s
            before = len(events)
            connection.process_data_events(time_limit=0.05)
            now = time.monotonic()
            if len(events) != before:
                last, empty_since = now, None
            elif now - last >= idle:
                if any(queue_counts(channel, q) for q in [queue, *waits]):
                    empty_since = None
                elif empty_since is None:
                    empty_since = now
                elif now - empty_since >= idle:
                    break
            if now - t0 > timeout:
                channel.basic_cancel(tag)
                raise TimeoutError(f"run_retry_worker: {queue!r} still had work after {timeout:g} s "
                                   f"({len(events)} deliveries handled)")
        channel.basic_cancel(tag)
    frame = pd.DataFrame(events, columns=["t", "job", "attempt", "outcome", "error", "to", "deaths"])
    return frame


def redelivery_loop(broker: Any, kind: str, settle: str, *, max_deliveries: int = 25, seconds: float = 5.0,
                    quiet: float = 0.5, queue: str = "loop06") -> dict[str, Any]:
    """One message that always fails, settled with ``basic_nack`` or ``basic_reject`` (``requeue=True``).

    ``kind`` is ``"classic"`` or ``"quorum"`` (declared without ``x-delivery-limit``:
    the version's default applies), both with a dead-letter queue. The loop
    stops after ``max_deliveries``, after ``seconds``, or when no delivery came
    for ``quiet`` s (the broker dropped or dead-lettered the message). Returns
    the deliveries seen, the ``x-delivery-count`` of each (None when absent),
    the rate, and where the message ended: ``"still queued"``, ``"dead-lettered"``
    or ``"gone"``.

    Example::

        redelivery_loop(broker, "quorum", "nack")["ended"]   # 'dead-lettered' on 4.0, 'still queued' on 4.3
    """
    if kind not in ("classic", "quorum"):
        raise ValueError(f"kind must be 'classic' or 'quorum', got {kind!r}")
    if settle not in ("nack", "reject"):
        raise ValueError(f"settle must be 'nack' or 'reject', got {settle!r}")
    if not isinstance(max_deliveries, int) or max_deliveries < 1:
        raise ValueError(f"max_deliveries must be an int >= 1, got {max_deliveries!r}")
    with broker.connect() as connection:
        channel = connection.channel()
        delete_job_queue(channel, queue)
        declare_job_queue(channel, queue, arguments={"x-queue-type": "quorum"} if kind == "quorum" else None)
        publish_bodies(channel, queue, [b'{"job_id": "always-fails"}'])
        worker = connection.channel()
        counts, times, elapsed = _requeue_until_quiet(connection, worker, queue, settle, max_deliveries, seconds,
                                                      quiet)
        worker.close()   # returns the last delivery, left unacked
        left = wait_stable(channel, queue, dlq_name(queue))
        delete_job_queue(channel, queue)
    ended = "still queued" if left[queue] else "dead-lettered" if left[dlq_name(queue)] else "gone"
    return {"kind": kind, "settle": settle, "deliveries": len(counts), "seconds": round(elapsed, 3),
            "per_second": round((len(times) - 1) / (times[-1] - times[0]), 1) if len(times) > 1 and times[-1] > times[0]
            else 0.0,   # between the first and the last delivery (the quiet wait at the end not counted)
            "counts": counts, "times": times, "ended": ended}


def _requeue_until_quiet(connection: pika.BlockingConnection, worker: BlockingChannel, queue: str, settle: str,
                         max_deliveries: int, seconds: float, quiet: float) -> tuple[list[Any], list[float], float]:
    """Consume ``queue`` on ``worker`` at prefetch 1, settling each delivery with ``settle`` and ``requeue=True``,
    until ``max_deliveries`` (the last stays unacked), ``seconds``, or ``quiet`` s without a delivery.

    Returns the ``x-delivery-count`` of each delivery (None when absent), the time of each, the seconds spent.
    """
    counts: list[Any] = []
    times: list[float] = []
    worker.basic_qos(prefetch_count=1)

    def on_message(ch: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        times.append(time.monotonic() - t0)
        counts.append((properties.headers or {}).get("x-delivery-count"))
        if len(counts) >= max_deliveries:
            return   # the last one stays unacked; the channel's close returns it
        if settle == "nack":
            ch.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch.basic_reject(method.delivery_tag, requeue=True)

    t0 = time.monotonic()
    worker.basic_consume(queue, on_message)
    while len(counts) < max_deliveries and time.monotonic() - t0 < seconds:
        connection.process_data_events(time_limit=0.02)
        if time.monotonic() - t0 - (times[-1] if times else 0.0) > quiet:
            break
    return counts, times, time.monotonic() - t0


def plot_storm(storms: pd.DataFrame, backoff_events: pd.DataFrame, caption: str = "") -> Any:
    """Cumulative deliveries of one failing job against time: ``requeue=True`` storms (one line per repeat,
    from :func:`redelivery_loop` ``times``: columns ``repeat``, ``t``) against delayed retries (the
    :func:`run_retry_worker` rows of one job: ``t``)."""
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for repeat, part in storms.groupby("repeat"):
        ax.step(part["t"], range(1, len(part) + 1), where="post", color="crimson", alpha=0.7,
                label="requeue=True, no delay" if repeat == 0 else None)
    for repeat, part in backoff_events.groupby("repeat"):
        ax.step(part["t"], range(1, len(part) + 1), where="post", color="tab:blue", marker="o", alpha=0.8,
                label="TTL tiers (delayed retries)" if repeat == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("time since the first delivery (s)")
    ax.set_ylabel("deliveries of one failing job (log)")
    n = storms["repeat"].nunique()
    ax.set_title(f"A redelivery storm against backoff ({n} repeats each)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    add_caption(fig, caption)
    return fig


def plot_attempts(events: pd.DataFrame, caption: str = "") -> Any:
    """One row per (strategy, job): each delivery as a marker at its time, shaped by outcome.

    ``events``: :func:`run_retry_worker` rows with the columns ``strategy`` and ``label`` added.
    """
    markers = {"done": ("o", "tab:green"), "retry": ("x", "tab:orange"), "dead-lettered": ("s", "black"),
               "poison": ("D", "crimson")}
    rows = list(dict.fromkeys(zip(events["strategy"], events["label"])))
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.6))
    for y, (strategy, label) in enumerate(rows):
        part = events[(events["strategy"] == strategy) & (events["label"] == label)]
        ax.plot(part["t"], [y] * len(part), color="0.8", zorder=1)
        for outcome, (marker, colour) in markers.items():
            hit = part[part["outcome"] == outcome]
            ax.scatter(hit["t"], [y] * len(hit), marker=marker, color=colour, zorder=2,
                       label=outcome if y == 0 or outcome not in ax.get_legend_handles_labels()[1] else None)
    ax.set_yticks(range(len(rows)), [f"{s}: {lab}" for s, lab in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("time since the worker started (s)")
    ax.set_title("Every delivery of each job, per retry strategy (one run each)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    add_caption(fig, caption)
    return fig


