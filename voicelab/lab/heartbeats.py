"""Long jobs against heartbeats: a blocking callback starves them, a worker thread does not.

A ``BlockingConnection`` only talks to the broker while the application calls
into pika. A callback that works for a long time sends no heartbeats. The broker
checks once per heartbeat timeout whether any bytes arrived and closes the
connection after two checks in a row with none (``rabbit_heartbeat.erl``): between
2 and 3 timeouts after the client's last frame, depending on where its timer
stands. It then requeues the unacked message, which is processed again. Measured
with a 2 s heartbeat on 3.10.8 and 4.3.6: the cut came 3.0, 2.5 and 2.1 intervals
after the last frame for jobs started 0, 0.5 and 0.9 of an interval after
connecting. The negotiated default is 60 s, so a 30 s job survives it; only short
heartbeats cut it. pika checks the broker's side every timeout + 5 s.

:func:`consume_in_callback` and :func:`consume_on_a_thread` are the two patterns
in plain pika, short enough to read on a notebook page.

Example::

    long_job(broker, "long", job_seconds=8, heartbeat=2, style="blocking callback")
    # {'style': 'blocking callback', 'acked': False, 'error': 'StreamLostError: ...', 'redelivered': True, ...}
    runs = heartbeat_sweep(broker, job_seconds=[2, 4, 6, 8], heartbeat=2, off_thread=[8])  # at once: ~10 s
    threshold_intervals(runs)    # (2.0, 3.0): 4 s survived, 6 s was cut
    plot_heartbeats(runs, caption=broker_caption(broker))
"""

from __future__ import annotations

import functools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Literal, get_args

import matplotlib.pyplot as plt
import pandas as pd
import pika
import pika.exceptions

from ..broker import Broker
from ..consumers import ThreadPoolConsumer
from ..queues import drain, refill, wait_for_consumers, wait_stable
from .measure import add_caption

if TYPE_CHECKING:
    import matplotlib.pyplot as plt
    import pandas as pd

Style = Literal["blocking callback", "worker thread", "thread-pool consumer"]


def consume_in_callback(connection: pika.BlockingConnection, queue: str, work: Callable[[bytes], Any]) -> None:
    """The guide's worker in plain pika: the job runs inside the callback, on the connection's thread."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)

    def on_message(ch, method, properties, body):  # noqa: ANN001 (pika's callback signature)
        work(body)  # pika does not run meanwhile: no heartbeat goes out, no frame comes in
        ch.basic_ack(delivery_tag=method.delivery_tag)
        ch.stop_consuming()  # one job is enough for the demo

    channel.basic_consume(queue=queue, on_message_callback=on_message)
    channel.start_consuming()


def consume_on_a_thread(connection: pika.BlockingConnection, queue: str, work: Callable[[bytes], Any]) -> None:
    """The fix in plain pika: the job runs on a worker thread; only the connection's thread touches pika."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    done = threading.Event()

    def ack(tag: int) -> None:  # runs on the connection's thread, inside process_data_events
        channel.basic_ack(delivery_tag=tag)
        done.set()

    def on_message(ch, method, properties, body):  # noqa: ANN001 (pika's callback signature)
        def job() -> None:  # runs on the worker thread: no pika call here, except the one made for that
            work(body)
            connection.add_callback_threadsafe(functools.partial(ack, method.delivery_tag))
        threading.Thread(target=job, daemon=True).start()

    channel.basic_consume(queue=queue, on_message_callback=on_message)
    while not done.is_set():
        connection.process_data_events(time_limit=0.2)  # heartbeats go out here, and the ack when it is due


def _watch_consumers(broker: Broker, queue: str, since: threading.Event, done: threading.Event,
                     out: dict[str, float]) -> None:
    """From its own connection: when did ``queue`` lose its consumer, counted from ``since`` being set?"""
    with broker.connect() as connection:
        channel = connection.channel()
        if not since.wait(30):
            return
        t0 = time.monotonic()
        while not done.is_set():
            if channel.queue_declare(queue, passive=True).method.consumer_count == 0:
                out["cut_after_s"] = time.monotonic() - t0
                return
            time.sleep(POLL_S)


POLL_S = 0.05  # how often the watcher asks the broker for the consumer count: the cut time's resolution


def long_job(broker: Broker, queue: str, job_seconds: float, heartbeat: int,
             style: Style = "blocking callback", phase: float = 0.5) -> dict[str, Any]:
    """Publish one job that takes ``job_seconds``; consume it in ``style`` with a ``heartbeat`` (s); report.

    The report says whether the ack reached the broker, the error the consumer
    saw, whether the message was back in the queue (``redelivered``) afterwards,
    and, when the broker dropped the connection first, ``cut_after_s``: how long
    after the job started (the client's last frame) the broker closed it, as seen
    from another connection polling the queue's consumer count every ``POLL_S`` s.

    ``phase`` (in heartbeat intervals) delays the start of the job after connecting.
    The broker checks for incoming bytes once per interval, counted from the
    connection's start, and closes after two checks with none: between 2 and 3
    intervals after the last frame, depending on where its timer stands. At 0.5 the
    timer is mid-way, the cut comes about 2.5 intervals after the job starts, and a
    job of exactly 2 or 3 intervals is not a coin toss.
    """
    if heartbeat < 1 or job_seconds <= 0:
        raise ValueError(f"heartbeat must be >= 1 s and job_seconds > 0, got {heartbeat}, {job_seconds}")
    if style not in get_args(Style):
        raise ValueError(f"style must be one of {get_args(Style)}, not {style!r}")
    with broker.connect() as connection:
        refill(connection.channel(), queue, [b"long job"])
    t0 = time.monotonic()
    if style == "thread-pool consumer":
        acked, error, cut = _long_job_in_pool(broker, queue, job_seconds, heartbeat)
    else:
        acked, error, cut = _long_job_in_plain_pika(broker, queue, job_seconds, heartbeat, style, phase)
    seconds = time.monotonic() - t0
    with broker.connect() as connection:
        channel = connection.channel()
        wait_for_consumers(channel, queue, 0, timeout=3 * heartbeat + 5)  # until the broker gives up on it
        wait_stable(channel, queue)
        back = drain(channel, queue)
        channel.queue_delete(queue)
    return {"style": style, "job_s": job_seconds, "heartbeat_s": heartbeat, "acked": acked,
            "error": error or "none", "back in queue": bool(back),
            "redelivered": bool(back and back[0].method.redelivered),
            "cut_after_s": round(cut, 2) if cut is not None else float("nan"),
            "seconds": round(seconds, 1)}


def _long_job_in_plain_pika(broker: Broker, queue: str, job_seconds: float, heartbeat: int, style: Style,
                            phase: float) -> tuple[bool, str, float | None]:
    """:func:`long_job` with :func:`consume_in_callback` or :func:`consume_on_a_thread`, watched from another
    connection: (acked, the error the consumer saw, seconds from the job's start to the broker's cut)."""
    consume = consume_in_callback if style == "blocking callback" else consume_on_a_thread
    started, finished = threading.Event(), threading.Event()
    cut: dict[str, float] = {}
    watcher = threading.Thread(target=_watch_consumers, args=(broker, queue, started, finished, cut), daemon=True)
    watcher.start()

    def work(body: bytes) -> None:
        started.set()
        time.sleep(job_seconds)  # the work (in a blocking callback, nothing answers the broker meanwhile)
        finished.set()

    acked, error = False, ""
    try:
        with broker.connect(heartbeat=heartbeat, connection_attempts=1) as connection:
            time.sleep(phase * heartbeat)  # silent, before the last frame: moves the broker's timer phase
            consume(connection, queue, work)
            acked = True
    except pika.exceptions.AMQPError as e:
        error = f"{type(e).__name__}: {e}"
    finally:
        started.set()
        finished.set()
        watcher.join(10)
    return acked, error, cut.get("cut_after_s")


def _long_job_in_pool(broker: Broker, queue: str, job_seconds: float,
                      heartbeat: int) -> tuple[bool, str, float | None]:
    """:func:`long_job` with a one-thread :class:`ThreadPoolConsumer`: (acked, the error it saw, None)."""
    consumer = ThreadPoolConsumer(broker, queue, lambda body: time.sleep(job_seconds), threads=1, heartbeat=heartbeat)
    try:
        return consumer.run(max_messages=1).acked == 1, "", None
    except pika.exceptions.AMQPError as e:
        return False, f"{type(e).__name__}: {e}", None


def heartbeat_sweep(broker: Broker, job_seconds: Iterable[float] = (2, 4, 6, 8), heartbeat: int = 2,
                    off_thread: Iterable[float] = (), queue: str = "heartbeat_sweep",
                    off_thread_style: Style = "worker thread") -> "pd.DataFrame":
    """:func:`long_job` for each of ``job_seconds`` in a blocking callback (and each of ``off_thread`` in
    ``off_thread_style``), all at the same time: one thread, connection and queue each, so the sweep
    takes about as long as its longest job.

    One row per job, with ``intervals`` (the job's length in heartbeat timeouts) and ``outcome``:
    ``"survived"`` when the broker got the ack (the message is gone), ``"dropped"`` when it closed the
    connection first and the message was back in the queue.
    """

    cases = [("blocking callback", s) for s in job_seconds] + [(off_thread_style, s) for s in off_thread]
    with ThreadPoolExecutor(len(cases), thread_name_prefix="voicelab-heartbeat") as pool:
        futures = [pool.submit(long_job, broker, f"{queue}.{i}", s, heartbeat, style)
                   for i, (style, s) in enumerate(cases)]
        runs = pd.DataFrame([f.result() for f in futures])
    runs["intervals"] = runs["job_s"] / heartbeat
    runs["outcome"] = runs["back in queue"].map({False: "survived", True: "dropped"})
    return runs


def threshold_intervals(runs: "pd.DataFrame", style: Style = "blocking callback") -> tuple[float, float]:
    """The longest ``style`` job that survived and the shortest that was dropped, in heartbeat intervals.

    ``nan`` when no job survived (or none was dropped). The broker's threshold lies between the two
    when the first is smaller than the second.

    >>> import pandas as pd
    >>> threshold_intervals(pd.DataFrame({"style": ["blocking callback"] * 4, "intervals": [1, 2, 3, 4],
    ...                                   "outcome": ["survived", "survived", "dropped", "dropped"]}))
    (2.0, 3.0)
    """
    part = runs[runs["style"] == style]
    survived = part.loc[part["outcome"] == "survived", "intervals"]
    dropped = part.loc[part["outcome"] == "dropped", "intervals"]
    return (float(survived.max()) if len(survived) else float("nan"),
            float(dropped.min()) if len(dropped) else float("nan"))


def plot_heartbeats(runs: "pd.DataFrame", caption: str = "") -> "plt.Axes":
    """Each job of a :func:`heartbeat_sweep` at its length: survived (green) or dropped (red), per consumer style,
    a bar where the broker closed the connection; the band marks 2 to 3 heartbeat intervals."""
    heartbeat = float(runs["heartbeat_s"].iloc[0])
    styles = list(dict.fromkeys(runs["style"]))
    _, ax = plt.subplots(figsize=(7, 1.6 + 0.5 * len(styles)))
    ax.axvspan(2 * heartbeat, 3 * heartbeat, color="0.9", zorder=0, label="2-3 heartbeat intervals")
    for outcome, marker, colour in (("survived", "o", "tab:green"), ("dropped", "X", "tab:red")):
        part = runs[runs["outcome"] == outcome]
        ax.scatter(part["job_s"], [styles.index(s) for s in part["style"]], marker=marker, s=90, color=colour,
                   zorder=2, label=f"{outcome} ({'ack reached the broker' if outcome == 'survived' else 'requeued'})")
    cut = runs.dropna(subset=["cut_after_s"])
    ax.scatter(cut["cut_after_s"], [styles.index(s) for s in cut["style"]], marker="|", s=400, color="black",
               zorder=3, label="the broker closed the connection")
    ax.set_yticks(range(len(styles)), styles)
    ax.set_ylim(-0.6, len(styles) - 0.4)
    ax.set_xlim(0, runs["job_s"].max() + heartbeat)
    ax.set_xlabel("job length, or time since the job started (s)")
    top = ax.secondary_xaxis("top", functions=(lambda s: s / heartbeat, lambda i: i * heartbeat))
    top.set_xlabel(f"heartbeat intervals ({heartbeat:g} s each)")
    ax.set_title(f"Long jobs against a {heartbeat:g} s heartbeat, one run each", fontsize=10, pad=8)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(axis="x", alpha=0.3)
    add_caption(ax, caption)
    return ax
