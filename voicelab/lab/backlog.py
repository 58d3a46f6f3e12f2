"""Notebook 07's backlog experiment: the same backlog watched through three sources.

:func:`run_backlog` builds a backlog on purpose (a publisher alone, then consumers that drain it
while it still publishes), samples the three sources of :mod:`voicelab.monitoring` and the truth
(what the client published and acked) every ``every`` s, and hands each sample to ``on_sample``
(the :class:`LiveView`). :func:`staleness` then says how long each figure had already been wrong
when it was read; :func:`drain_prediction` compares a predicted drain time with the measured one.

Example::

    views = three_views(broker, "voice_jobs")          # one row per source
    run = run_backlog(broker, "monitor_demo", on_sample=LiveView())
    staleness(run).groupby("source")["staleness_s"].median()
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..broker import Broker
from ..management import Management
from ..monitoring import Prometheus, connection_totals, management_view, passive_view
from ..queues import reset_queue
from .measure import add_caption
from .workload import consume_jobs, publish_paced


def three_views(broker: Broker, queue: str) -> pd.DataFrame:
    """One row per source for ``queue``: what each reports now (NaN where a source has no such figure)."""
    mgmt, prom = Management(broker), Prometheus.of(broker)
    try:
        with broker.connect() as connection:
            p = passive_view(connection.channel(), queue)
        m = management_view(mgmt, queue)
        m.update(connection_totals(mgmt))
        pr = prom.queue(queue)
        agg = prom.samples("/metrics")
        gauges = agg.set_index("name")["value"]
        pr.update({"connections": gauges.get("rabbitmq_connections"), "channels": gauges.get("rabbitmq_channels")})
    finally:
        mgmt.close()
        prom.close()
    rows = {"passive declare": p, "management API": m, "Prometheus": pr}
    cols = ["ready", "unacked", "consumers", "publish_rate", "deliver_rate", "ack_rate", "utilisation",
            "connections", "channels"]
    return pd.DataFrame.from_dict(rows, orient="index").reindex(columns=cols).astype(float)


@dataclass
class Truth:
    """What the client side knows for sure: when each message was confirmed, and when each was acked
    (seconds since ``t0``, a ``time.monotonic()``)."""

    t0: float = field(default_factory=time.monotonic)
    published: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def depth(self) -> int:
        with self.lock:
            return len(self.published) - len(self.acked)

    def mark_published(self) -> None:
        with self.lock:
            self.published.append(time.monotonic() - self.t0)

    def mark_acked(self) -> None:
        with self.lock:
            self.acked.append(time.monotonic() - self.t0)


@dataclass
class BacklogRun:
    """What :func:`run_backlog` recorded: ``samples`` (one row per tick), ``truth`` and the phase times."""

    samples: pd.DataFrame
    truth: Truth
    consumers_at: float
    empty_at: float | None
    publish_rate: float
    consumers: int
    job_s: float
    notes: list[str] = field(default_factory=list)   # what :func:`run_backlog_fairly` sized or re-ran, and why


def sample_sources(channel: Any, mgmt: Management, prom: Prometheus, queue: str) -> dict[str, Any]:
    """One reading of ``queue`` from all three sources, each timed: ``<source>_<figure>`` columns."""
    row: dict[str, Any] = {}
    p = passive_view(channel, queue)
    row.update({f"passive_{k}": v for k, v in p.items()})
    m = management_view(mgmt, queue)
    row.update({f"mgmt_{k}": v for k, v in m.items()})
    pr = prom.queue(queue)
    row.update({f"prom_{k}": v for k, v in pr.items()})
    return row


def run_backlog(broker: Broker, queue: str, *, publish_rate: float = 40.0, ramp_s: float = 5.0,
                consumers: int = 2, job_s: float = 0.02, tail_s: float = 5.5, every: float = 0.2,
                max_s: float = 60.0, on_sample: Callable[[pd.DataFrame, "BacklogRun | None"], None] | None = None
                ) -> BacklogRun:
    """Build a backlog, drain it, and sample every ``every`` s the passive declare, the management API,
    Prometheus and the truth (published minus acked, counted by the client).

    Phases: a publisher alone at ``publish_rate`` msg/s for ``ramp_s`` s (the backlog grows); then
    ``consumers`` consumers doing ``job_s`` s jobs at prefetch 1 while the publisher goes on (it drains
    if they are faster); once the queue is empty the publisher stops, and sampling goes on ``tail_s`` s
    so that the slowest source catches up. ``on_sample(samples_so_far, None)`` is called after each tick.
    """
    if publish_rate <= 0 or ramp_s <= 0 or consumers < 1 or every <= 0:
        raise ValueError("publish_rate, ramp_s, every must be > 0 and consumers >= 1")
    mgmt, prom = Management(broker), Prometheus.of(broker)
    load = _Load(broker, queue)
    rows: list[dict[str, Any]] = []
    consumers_at, empty_at, stopped_at = ramp_s, None, float("inf")
    try:
        with broker.connect() as connection:
            channel = connection.channel()
            reset_queue(channel, queue)
            load.start_publisher(publish_rate)
            tick = 0
            while True:
                tick += 1
                now = time.monotonic() - load.truth.t0
                if now >= ramp_s and not load.consumers:
                    consumers_at = now
                    load.start_consumers(consumers, job_s)
                row = _sample_row(channel, mgmt, prom, queue, load.truth)
                rows.append(row)
                # drained: nothing waits, at most one job in each consumer's hands (prefetch 1); exactly 0 in
                # flight is a moment a sample can miss while the publisher goes on, the more so on a busy machine
                if (empty_at is None and now > consumers_at + 0.5 and row["passive_ready"] == 0
                        and row["truth"] <= consumers):
                    empty_at, stopped_at = row["t"], now
                    load.stop_publisher.set()
                load.raise_failure()
                if on_sample is not None:
                    on_sample(pd.DataFrame(rows), None)
                if now > stopped_at + tail_s or now > max_s:
                    break
                time.sleep(max(0.0, load.truth.t0 + tick * every - time.monotonic()))
    finally:
        load.stop()
        mgmt.close()
        prom.close()
    run = BacklogRun(pd.DataFrame(rows), load.truth, consumers_at, empty_at, publish_rate, consumers, job_s)
    if on_sample is not None:
        on_sample(run.samples, run)
    return run


def consumer_capacity(broker: Broker, queue: str, consumers: int = 2, job_s: float = 0.02, n: int = 100,
                      timeout: float = 30.0, prefetch: int = 1) -> float:
    """How many messages/s ``consumers`` consumers doing ``job_s`` s jobs at ``prefetch`` (1: those of
    :func:`run_backlog`) ack on this machine now: once all of them are attached to ``queue`` (the passive
    declare counts them), ``n`` messages are put in it at once, and the rate is measured from the first ack
    to the last. The queue is deleted again; 0.0 if fewer than two acks came within ``timeout`` s.

    On an idle 2-core machine two 25 ms consumers ack about 75/s; on one shared with other brokers and test
    workers, a fraction of that.
    """
    acks: list[float] = []
    lock = threading.Lock()

    def acked() -> None:
        with lock:
            acks.append(time.monotonic())

    stop, errors = threading.Event(), []  # type: ignore[var-annotated]
    with broker.connect() as connection:
        channel = connection.channel()
        reset_queue(channel, queue)
        threads = [threading.Thread(target=consume_jobs, args=(broker, queue, job_s, stop), daemon=True,
                                    kwargs={"on_settle": acked, "errors": errors, "prefetch": prefetch,
                                            "name": f"voicelab capacity consumer {k + 1}"})
                   for k in range(consumers)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + timeout
            while (passive_view(channel, queue)["consumers"] < consumers and time.monotonic() < deadline
                   and not errors):
                time.sleep(0.05)
            for i in range(n):
                channel.basic_publish("", queue, str(i).encode())
            while len(acks) < n and time.monotonic() < deadline and not errors:
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            channel.queue_delete(queue)
    if errors:
        raise RuntimeError("a capacity consumer failed") from errors[0]
    with lock:
        return (len(acks) - 1) / (acks[-1] - acks[0]) if len(acks) >= 2 and acks[-1] > acks[0] else 0.0


def run_backlog_fairly(broker: Broker, queue: str, attempts: int = 2, publish_rate: float = 40.0,
                       share: float = 0.5, **kwargs: Any) -> BacklogRun:
    """:func:`run_backlog` with an arrival rate the consumers can beat on this machine, run once more when the
    machine, not the broker, spoiled the run. Returns the last run; its ``notes`` say what was sized or re-run.

    Before each attempt the consumers' capacity is measured (:func:`consumer_capacity`, the same consumers and
    jobs): the publisher runs at ``publish_rate``, or at ``share`` of that capacity if that is lower, so that
    the backlog drains however busy the machine is (a backlog that drains is the experiment). A run is
    repeated when the sampler was too starved to take three samples in the drain window
    (:func:`drain_prediction` raises ValueError), or the consumers too starved to outrun the publisher
    even so (the machine got busier after the measurement). ``attempts`` runs at most.
    """
    consumers, job_s = kwargs.get("consumers", 2), kwargs.get("job_s", 0.02)
    notes: list[str] = []
    for attempt in range(1, attempts + 1):
        capacity = consumer_capacity(broker, queue, consumers=consumers, job_s=job_s)
        rate = min(publish_rate, share * capacity) if capacity > 0 else publish_rate
        if rate < publish_rate:
            notes.append(f"attempt {attempt}: the consumers acked {capacity:.0f} msg/s on this machine: "
                         f"publishing at {rate:.1f}/s instead of {publish_rate:g}/s")
        run = run_backlog(broker, queue, publish_rate=rate, **kwargs)
        run.notes = notes
        try:
            pred = drain_prediction(run)
        except ValueError as e:
            notes.append(f"attempt {attempt} spoiled by a busy machine: {e}")
            continue
        if pred["departures_per_s"] > pred["arrivals_per_s"]:
            return run
        notes.append(f"attempt {attempt} spoiled by a busy machine: the consumers left at "
                     f"{pred['departures_per_s']:.1f}/s, arrivals came at {pred['arrivals_per_s']:.1f}/s")
    return run


class _Load:
    """The threads of :func:`run_backlog`: a paced publisher, then consumers; what they do is counted in ``truth``."""

    def __init__(self, broker: Broker, queue: str) -> None:
        self.broker, self.queue = broker, queue
        self.truth = Truth()
        self.errors: list[BaseException] = []
        self.stop_publisher, self.stop_consumers = threading.Event(), threading.Event()
        self.threads: list[threading.Thread] = []
        self.consumers: list[threading.Thread] = []

    def start_publisher(self, rate: float) -> None:
        """Start the clock (``truth.t0``) and the publisher."""
        self.truth = Truth()
        self._start(threading.Thread(
            target=publish_paced, args=(self.broker, self.queue, rate, self.stop_publisher, self.errors),
            kwargs=dict(start=self.truth.t0, on_publish=self.truth.mark_published, name="voicelab monitor publisher"),
            daemon=True, name="monitor-publisher"))

    def start_consumers(self, consumers: int, job_s: float) -> None:
        for i in range(consumers):
            self.consumers.append(self._start(threading.Thread(
                target=consume_jobs, args=(self.broker, self.queue, job_s, self.stop_consumers),
                kwargs=dict(on_settle=self.truth.mark_acked, errors=self.errors,
                            name=f"voicelab monitor consumer {i + 1}"),
                daemon=True, name=f"monitor-consumer-{i}")))

    def _start(self, thread: threading.Thread) -> threading.Thread:
        thread.start()
        self.threads.append(thread)
        return thread

    def raise_failure(self) -> None:
        if self.errors:
            raise RuntimeError("a publisher or consumer thread failed") from self.errors[0]

    def stop(self) -> None:
        self.stop_publisher.set()
        self.stop_consumers.set()
        for thread in self.threads:
            thread.join(10)


def _sample_row(channel: Any, mgmt: Management, prom: Prometheus, queue: str, truth: Truth) -> dict[str, Any]:
    """One tick of :func:`run_backlog`: the truth, then :func:`sample_sources`, timed (``t``, ``t_end``)."""
    row: dict[str, Any] = {"t": time.monotonic() - truth.t0, "truth": truth.depth()}
    row.update(sample_sources(channel, mgmt, prom, queue))
    row["t_end"] = time.monotonic() - truth.t0
    return row


def staleness(run: BacklogRun) -> pd.DataFrame:
    """How long each source's depth had been wrong when it was read, during the ramp (publisher alone).

    While only the publisher runs, the depth is the number of confirmed messages, so a source that
    reads ``v`` shows the truth of the moment the ``v+1``-th message was confirmed: its figure has
    been stale since then (0 if no message came since). One row per sample and source.
    """
    pub = np.array(run.truth.published)
    rows = []
    ramp = run.samples[run.samples["t_end"] < run.consumers_at]
    for _, s in ramp.iterrows():
        for source, col in (("passive declare", "passive_ready"), ("management API", "mgmt_ready"),
                            ("Prometheus", "prom_ready")):
            if pd.isna(s[col]):
                continue  # no figure at all yet (the management API, just after the queue was declared)
            v = int(s[col])
            moved_on = pub[v] if v < len(pub) else np.inf  # when the (v+1)-th message was confirmed
            age = max(0.0, s["t"] - moved_on) if moved_on <= s["t_end"] else 0.0
            rows.append({"source": source, "t": s["t"], "shown": v, "staleness_s": age})
    return pd.DataFrame(rows)


def drain_prediction(run: BacklogRun, after_s: float = 1.0, span_s: float = 1.5) -> dict[str, float]:
    """Rate estimates on the drain: the predicted time to empty the queue against the measured one.

    From ``after_s`` to ``after_s + span_s`` s after the consumers started (or to the third sample after
    ``after_s``, when a busy machine spaced the samples out), the net rate at which the
    backlog shrinks (``mu - lambda``) is the slope of the depth the passive declare read (the fresh
    source: the other two lag, see :func:`staleness`), and ``lambda`` is the publish rate the
    publisher's confirms show. A message arriving then waits about ``L / mu`` (the wait estimate: ``L``
    messages ahead of it, leaving at ``mu`` per s); the backlog is gone after about ``L / (mu - lambda)``
    (the drain estimate). Both extrapolate the rates of the moment; they are not Little's law
    (``L = lambda W``, for long-run averages of a stable queue). The
    measured drain ends when the passive declare and the client both read 0.

    ``arrivals_after_per_s`` and ``departures_after_per_s`` are the rates over the rest of the drain:
    the prediction is as good as the rates held (a busy machine slows the consumers).
    """
    s = run.samples
    start, end = run.consumers_at + after_s, run.consumers_at + after_s + span_s
    later = s[s["t"] >= start]
    window = later[later["t"] <= end]
    if len(window) < 3:   # a busy machine spaced the samples out: the window extends to the third one
        window = later.iloc[:3]
    if len(window) < 3:
        raise ValueError(f"{len(window)} sample(s) after {start:.1f} s: too few (a starved sampler)")
    end = max(end, float(window["t"].iloc[-1]))
    if run.empty_at is None or run.empty_at <= end:
        raise ValueError("the queue never emptied" if run.empty_at is None else
                         f"the queue emptied at {run.empty_at:.1f} s, before the prediction at {end:.1f} s")
    net_out = -float(np.polyfit(window["t"], window["passive_ready"], 1)[0])      # mu - lambda, msg/s
    pub = np.array(run.truth.published)
    t_a, t_b = float(window["t"].iloc[0]), float(window["t"].iloc[-1])
    lam = float(((pub > t_a) & (pub <= t_b)).sum() / (t_b - t_a))
    mu = net_out + lam
    depth_then = float(window["passive_ready"].iloc[-1])
    measured = float(run.empty_at - t_b)
    lam_after = float(((pub > t_b) & (pub <= run.empty_at)).sum() / measured)
    return {"at_s": t_b, "depth": depth_then, "arrivals_per_s": lam, "departures_per_s": mu,
            "wait_s": depth_then / mu if mu > 0 else float("inf"),
            "predicted_drain_s": depth_then / net_out if net_out > 0 else float("inf"),
            "measured_drain_s": measured,
            "arrivals_after_per_s": lam_after, "departures_after_per_s": depth_then / measured + lam_after}


def plot_backlog(samples: pd.DataFrame, run: BacklogRun | None = None, *, title: str = "", caption: str = "",
                 fig: plt.Figure | None = None) -> plt.Figure:
    """Depth over time from the truth and the three sources (top), rates from the management API (bottom)."""
    if fig is None:
        fig = plt.figure(figsize=(8, 5.2))
    fig.clf()
    ax, ax2 = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    t = samples["t"]
    ax.plot(t, samples["truth"], color="black", linewidth=2.5, alpha=0.35, label="truth (client: published - acked)")
    ax.plot(t, samples["passive_ready"], ".-", markersize=3, label="passive declare (ready)")
    ax.step(t, samples["prom_ready"] + samples["prom_unacked"], where="post", label="Prometheus (ready + unacked)")
    ax.step(t, samples["mgmt_ready"].fillna(0) + samples["mgmt_unacked"].fillna(0), where="post",
            label="management API (ready + unacked)")
    ax.set_ylabel("messages in queue")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    ax2.step(t, samples["mgmt_publish_rate"], where="post", label="publish rate")
    ax2.step(t, samples["mgmt_ack_rate"], where="post", label="ack rate")
    ax2.set_ylabel("msg/s (management)")
    ax2.set_xlabel("time since the publisher started (s)")
    ax2.legend(fontsize=7, loc="upper left")
    ax2.grid(alpha=0.3)
    if run is not None:
        for a in (ax, ax2):
            a.axvline(run.consumers_at, color="0.5", linestyle=":", linewidth=1)
            if run.empty_at is not None:
                a.axvline(run.empty_at, color="crimson", linestyle="--", linewidth=1)
        ax.annotate(" consumers start", (run.consumers_at, ax.get_ylim()[1] * 0.92), fontsize=7, color="0.4")
        if run.empty_at is not None:
            ax.annotate(" empty", (run.empty_at, ax.get_ylim()[1] * 0.8), fontsize=7, color="crimson")
    ax.set_title(title or "A backlog builds and drains: the same queue seen three ways", fontsize=10)
    fig.tight_layout()
    add_caption(fig, caption)
    return fig


class LiveView:
    """Redraw :func:`plot_backlog` in place in JupyterLab while :func:`run_backlog` samples.

    Pass it as ``on_sample``. It redraws at most every ``every`` s through an IPython display
    handle (one output that changes, not a new figure per tick), and draws the final figure when
    the run ends. Outside IPython it only keeps the last figure. The loop is run_backlog's,
    bounded by the run's phases and ``max_s``.
    """

    def __init__(self, every: float = 1.0, title: str = "", caption: str = "") -> None:
        self.every, self.title, self.caption = every, title, caption
        self.fig = plt.figure(figsize=(8, 5.2))
        plt.close(self.fig)  # shown only through the handle, not again at the end of the cell
        self.handle: Any = None
        self.last = 0.0
        self.redraws = 0
        try:
            from IPython import get_ipython
            from IPython.display import display
            if get_ipython() is not None:
                self.handle = display(self.fig, display_id=True)
        except ImportError:
            pass

    def __call__(self, samples: pd.DataFrame, run: BacklogRun | None) -> None:
        final = run is not None
        if not final and time.monotonic() - self.last < self.every:
            return
        self.last = time.monotonic()
        plot_backlog(samples, run, title=self.title, caption=self.caption, fig=self.fig)
        self.redraws += 1
        if self.handle is not None:
            self.handle.update(self.fig)


