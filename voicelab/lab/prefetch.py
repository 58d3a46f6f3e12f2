"""Several consumers on one queue: who gets which job, and when the last one finishes.

Each consumer is a thread with its *own* connection (a pika connection must
never be shared between threads; separate connections are safe). Jobs carry
their duration, so uneven work is reproducible. The result is a timeline, one
row per job: which consumer did it, when it started and ended.

Example::

    with broker.connect() as connection:   # 50 jobs of 10 ms, persistent, confirmed
        refill(connection.channel(), "fair", timed_jobs([0.01] * 50), purge=True)
    timeline = run_consumers(broker, "fair", consumers=3, prefetch=1)
    timeline.groupby("consumer").size()
    plot_timelines({1: timeline}, caption=broker_caption(broker))
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import pika

from ..broker import Broker
from ..queues import publish_bodies, queue_counts, reset_queue, wait_for_consumers
from .measure import add_caption


def uneven_durations(n: int, short: float = 0.01, long: float = 0.2, every: int = 5) -> list[float]:
    """``n`` job durations in seconds: mostly ``short``, every ``every``-th one ``long``.

    >>> uneven_durations(6, every=3)
    [0.2, 0.01, 0.01, 0.2, 0.01, 0.01]
    """
    return [long if i % every == 0 else short for i in range(n)]


def timed_jobs(durations: list[float]) -> list[dict[str, Any]]:
    """The job messages for ``durations``: ``{"job": i, "seconds": s}``.

    >>> timed_jobs([0.2, 0.01])
    [{'job': 0, 'seconds': 0.2}, {'job': 1, 'seconds': 0.01}]
    """
    return [{"job": i, "seconds": seconds} for i, seconds in enumerate(durations)]


def worker(channel: Any, queue: str, prefetch: int, record: Any, finished: Any) -> None:
    """One consumer of :func:`run_consumers` in plain pika: set the prefetch, consume, do the job, ack."""
    channel.basic_qos(prefetch_count=prefetch)  # at most `prefetch` unacked messages on this consumer (0: no limit)
    for method, properties, body in channel.consume(queue, inactivity_timeout=0.05):
        if finished():
            break
        if method is None:  # nothing arrived for 50 ms: ask finished() again
            continue
        job = json.loads(body)
        start = time.monotonic()
        time.sleep(job["seconds"])  # the work: waiting, like a call to another service
        channel.basic_ack(delivery_tag=method.delivery_tag)  # done: the broker may send one more
        record(job, method, start)
    channel.cancel()


def _consumer(broker: Broker, queue: str, name: str, prefetch: int, total: int, done: list[int],
              lock: threading.Lock, rows: list[dict[str, Any]], t0: float, deadline: float,
              errors: list[BaseException]) -> None:
    try:
        params = broker.parameters(client_properties={"connection_name": f"voicelab {name}"})
        def finished() -> bool:
            with lock:
                return done[0] >= total or time.monotonic() > deadline

        def record(job: dict[str, Any], method: Any, start: float) -> None:
            with lock:
                done[0] += 1
                rows.append({"consumer": name, "job": job["job"], "seconds": job["seconds"],
                             "start": start - t0, "end": time.monotonic() - t0, "redelivered": method.redelivered})

        with pika.BlockingConnection(params) as connection:
            worker(connection.channel(), queue, prefetch, record, finished)
    except BaseException as e:  # reported by run_consumers, never swallowed
        errors.append(e)


def run_consumers(broker: Broker, queue: str, consumers: int, prefetch: int, total: int | None = None,
                  stagger: float = 0.0, timeout: float = 120.0, publish: list[float] | None = None) -> pd.DataFrame:
    """Run ``consumers`` threads on ``queue`` at ``prefetch`` (0 = unlimited) until ``total`` jobs are done.

    ``stagger`` seconds pass between consumer starts, as when workers come up
    one after another on a deploy. With ``publish`` (job durations), the queue
    is emptied and the jobs are published only once every consumer is attached.
    Returns the timeline (see module docstring); its ``start``/``end`` are
    seconds since the first consumer started.
    """
    if consumers < 1 or prefetch < 0:
        raise ValueError(f"consumers must be >= 1 and prefetch >= 0, got {consumers}, {prefetch}")
    if publish is not None:
        with broker.connect() as connection:
            reset_queue(connection.channel(), queue, purge=True)
        total = len(publish)
    if total is None:
        with broker.connect() as connection:
            total = queue_counts(connection.channel(), queue)
    done, lock, rows, errors = [0], threading.Lock(), [], []  # type: ignore[var-annotated]
    t0 = time.monotonic()
    threads = []
    for i in range(consumers):
        t = threading.Thread(target=_consumer, daemon=True, name=f"consumer-{i + 1}",
                             args=(broker, queue, f"consumer {i + 1}", prefetch, total, done, lock, rows, t0,
                                   t0 + timeout, errors))
        t.start()
        threads.append(t)
        if stagger and i < consumers - 1:
            time.sleep(stagger)
    if publish is not None:
        with broker.connect() as connection:
            channel = connection.channel()
            wait_for_consumers(channel, queue, consumers)
            publish_bodies(channel, queue, timed_jobs(publish))
    for t in threads:
        t.join(timeout + 10)
    if errors:
        raise RuntimeError(f"{len(errors)} consumer(s) failed") from errors[0]
    if done[0] < total:
        raise TimeoutError(f"only {done[0]} of {total} jobs done in {timeout} s")
    return pd.DataFrame(rows).sort_values("start", ignore_index=True)


def shares(timeline: pd.DataFrame) -> pd.DataFrame:
    """Per consumer: jobs done, busy seconds, share of all jobs, and when its last job ended."""
    g = timeline.groupby("consumer")
    out = pd.DataFrame({"jobs": g.size(), "busy_s": g["seconds"].sum(), "last_end_s": g["end"].max()})
    out["share"] = out["jobs"] / out["jobs"].sum()
    return out


def plot_timeline(timeline: pd.DataFrame, title: str = "", caption: str = "", ax: plt.Axes | None = None) -> plt.Axes:
    """One row per consumer, one bar per job (long jobs darker); a line where the last job ends."""
    names = sorted(timeline["consumer"].unique())
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 0.6 + 0.5 * len(names)))
    long = timeline["seconds"].max()
    for y, name in enumerate(names):
        part = timeline[timeline["consumer"] == name]
        colours = ["#1f4e99" if s == long else "#8fb3e6" for s in part["seconds"]]
        ax.broken_barh(list(zip(part["start"], part["end"] - part["start"])), (y - 0.35, 0.7),
                       facecolors=colours, edgecolor="white", linewidth=0.3)
    makespan = timeline["end"].max()
    ax.axvline(makespan, color="crimson", linestyle="--", linewidth=1)
    ax.annotate(f" all done: {makespan:.2f} s", (makespan, len(names) - 0.5), color="crimson", fontsize=8,
                annotation_clip=False)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("time since the first consumer started (s)")
    ax.set_title(title, fontsize=10)
    add_caption(ax, caption)
    return ax


def plot_timelines(timelines: dict[int, pd.DataFrame], caption: str = "", title: str = "") -> plt.Figure:
    """:func:`plot_timeline` of each run of :func:`run_consumers`, keyed by its prefetch, stacked on one time axis.

    ``title``, if given, follows the prefetch in each panel's title (e.g. how the consumers started).
    """
    fig, axes = plt.subplots(len(timelines), 1, figsize=(8, 0.6 + 1.7 * len(timelines)), sharex=True, squeeze=False)
    for ax, (prefetch, timeline) in zip(axes[:, 0], timelines.items()):
        plot_timeline(timeline, title=f"prefetch {prefetch or 'unlimited (0)'}" + (f", {title}" if title else ""),
                      ax=ax)
        ax.label_outer()  # one time axis label, under the last panel
    fig.tight_layout()
    add_caption(fig, caption)
    return fig
