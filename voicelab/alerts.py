"""Alert rules evaluated on data: recorded samples of real queues, not a threshold printed once a minute.

A *rule* is a function ``rule(window) -> str | None``: ``window`` holds the last samples of one
queue (a DataFrame, columns below), and the rule returns why it fires, or None. Rules here:

- :func:`backlog_growing`: depth above a threshold *and* growing (slope of a line fitted to the window);
- :func:`no_consumers`: nobody has consumed the queue for the whole window;
- :func:`dlq_not_empty`: its dead-letter queue holds messages;
- :func:`low_utilisation`: consumer utilisation low while messages wait (consumers cannot take more:
  too few, too slow, or a prefetch too small for the round trip);
- :func:`drain_too_slow`: the backlog will not drain within a deadline at the measured rates
  (``depth / (ack rate - publish rate)``, see :func:`predicted_drain_s`).

Sample columns (one row per queue per tick, from :func:`record`): ``t`` (s), ``queue``, ``ready``,
``unacked``, ``consumers``, ``dlq_ready`` (Prometheus, per queue), ``publish_rate``, ``ack_rate``
(msg/s), ``utilisation`` (0-1 or NaN) from the management API, which updates them every 5 s.

Example::

    samples = run_scenarios(broker, SCENARIOS, seconds=9)
    fired = evaluate(default_rules(), samples)
    matrix(fired)     # scenario x rule: did it fire?
"""

from __future__ import annotations

import math
import urllib.parse
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import pika

from .broker import Broker
from .guide_patterns import GUIDE_DEPTH_WARNING
from .management import Management
from .monitoring import Prometheus, consume_jobs
from .queues import dlq_name, publish_bodies, reset_queue

Rule = Callable[[pd.DataFrame], "str | None"]
COLUMNS = ["t", "queue", "ready", "unacked", "consumers", "dlq_ready", "publish_rate", "ack_rate", "utilisation"]


def depth(window: pd.DataFrame) -> pd.Series:
    """Messages in the queue: ready + unacked (in flight count too: they are not done)."""
    return window["ready"] + window["unacked"]


def slope(window: pd.DataFrame, over_s: float) -> float:
    """Growth of the depth in msg/s over the last ``over_s`` s (least-squares line); NaN with too few points."""
    w = window[window["t"] >= window["t"].iloc[-1] - over_s]
    if len(w) < 3 or w["t"].iloc[-1] - w["t"].iloc[0] < over_s / 2:
        return float("nan")
    return float(np.polyfit(w["t"], depth(w), 1)[0])


def predicted_drain_s(ready_plus_unacked: float, ack_rate: float, publish_rate: float) -> float:
    """Seconds until the backlog is gone if the rates hold: ``L / (mu - lambda)``; inf if it does not shrink.

    Little's law gives the wait of a message that arrives now, ``L / mu``; with arrivals going on at
    ``lambda``, the backlog shrinks at ``mu - lambda`` only.

    >>> predicted_drain_s(100, ack_rate=30, publish_rate=10)
    5.0
    >>> predicted_drain_s(100, ack_rate=10, publish_rate=10)
    inf
    >>> predicted_drain_s(0, ack_rate=0, publish_rate=0)
    0.0
    """
    if ready_plus_unacked <= 0:
        return 0.0
    net = ack_rate - publish_rate
    return ready_plus_unacked / net if net > 0 else math.inf


def backlog_growing(threshold: int = 50, min_growth: float = 2.0, over_s: float = 3.0) -> Rule:
    """Fires when the depth is above ``threshold`` and grew by more than ``min_growth`` msg/s over ``over_s`` s."""
    def rule(window: pd.DataFrame) -> str | None:
        d, g = float(depth(window).iloc[-1]), slope(window, over_s)
        if d > threshold and g > min_growth:
            return f"{d:.0f} messages (> {threshold}) and growing {g:.1f} msg/s"
        return None
    rule.__name__ = "backlog growing"
    return rule


def no_consumers(for_s: float = 2.0) -> Rule:
    """Fires when the queue has had no consumer for at least ``for_s`` s (a job queue must always have one)."""
    def rule(window: pd.DataFrame) -> str | None:
        w = window[window["t"] >= window["t"].iloc[-1] - for_s]
        if window["t"].iloc[-1] - window["t"].iloc[0] >= for_s and (w["consumers"] == 0).all():
            return f"no consumer for {for_s:g} s; {depth(w).iloc[-1]:.0f} messages waiting"
        return None
    rule.__name__ = "no consumers"
    return rule


def dlq_not_empty() -> Rule:
    """Fires when the dead-letter queue holds messages: each is a job that failed for good."""
    def rule(window: pd.DataFrame) -> str | None:
        n = float(window["dlq_ready"].iloc[-1])
        return f"{n:.0f} message(s) in the dead-letter queue" if n > 0 else None  # NaN > 0 is False
    rule.__name__ = "DLQ not empty"
    return rule


def low_utilisation(below: float = 0.6, min_ready: int = 20, for_s: float = 3.0) -> Rule:
    """Fires when consumer utilisation stayed below ``below`` while at least ``min_ready`` messages waited,
    for ``for_s`` s (a burst saturates the consumers for a moment: that is what consumers are for)."""
    def rule(window: pd.DataFrame) -> str | None:
        if window["t"].iloc[-1] - window["t"].iloc[0] < for_s:
            return None
        w = window[window["t"] >= window["t"].iloc[-1] - for_s]
        low = (w["ready"] >= min_ready) & (w["consumers"] > 0) & (w["utilisation"] < below)  # NaN: not low
        if low.all():
            last = w.iloc[-1]
            return (f"consumer utilisation {last['utilisation']:.0%} with {last['ready']:.0f} ready for {for_s:g} s: "
                    "consumers cannot take more")
        return None
    rule.__name__ = "low utilisation"
    return rule


def drain_too_slow(deadline_s: float = 30.0, min_depth: int = 10, over_s: float = 4.0) -> Rule:
    """Fires when the backlog (at least ``min_depth``) will not drain within ``deadline_s`` at the rate it
    shrank over the last ``over_s`` s (:func:`predicted_drain_s` with the net rate ``mu - lambda`` = minus the
    depth's slope). Not the management API's ack and publish rates: they lag 5 to 10 s (measured in notebook 07).
    """
    def rule(window: pd.DataFrame) -> str | None:
        d, g = float(depth(window).iloc[-1]), slope(window, over_s)
        if d < min_depth or math.isnan(g):
            return None
        eta = predicted_drain_s(d, ack_rate=-g, publish_rate=0.0)
        if eta > deadline_s:
            return (f"{d:.0f} messages, changing {g:+.1f} msg/s: drained "
                    f"{'never' if math.isinf(eta) else f'in {eta:.0f} s'} (deadline {deadline_s:g} s)")
        return None
    rule.__name__ = "drain too slow"
    return rule


def guide_rule() -> Rule:
    """The guide's ``monitor_queue`` check as a rule: ready > 100 (:data:`GUIDE_DEPTH_WARNING`)."""
    def rule(window: pd.DataFrame) -> str | None:
        r = float(window["ready"].iloc[-1])
        return f"ready {r:.0f} > {GUIDE_DEPTH_WARNING}" if r > GUIDE_DEPTH_WARNING else None
    rule.__name__ = "guide: ready > 100"
    return rule


def default_rules() -> dict[str, Rule]:
    rules = [backlog_growing(), no_consumers(), dlq_not_empty(), low_utilisation(), drain_too_slow()]
    return {r.__name__: r for r in rules}


# ---------------------------------------------------------------------------
# Evaluating rules on samples
# ---------------------------------------------------------------------------

def evaluate(rules: dict[str, Rule], samples: pd.DataFrame, window_s: float = 5.0) -> pd.DataFrame:
    """Run every rule at every sample of every queue on the last ``window_s`` s: one row per (t, queue, rule)."""
    rows = []
    samples = samples.dropna(subset=["ready", "unacked", "consumers"])  # no figure yet: nothing to judge
    for queue, part in samples.groupby("queue", sort=False):
        part = part.sort_values("t").reset_index(drop=True)
        for i in range(len(part)):
            t = part["t"].iloc[i]
            window = part.iloc[: i + 1]
            window = window[window["t"] > t - window_s]
            for name, rule in rules.items():
                reason = rule(window)
                rows.append({"t": t, "queue": queue, "rule": name, "firing": bool(reason), "reason": reason or ""})
    return pd.DataFrame(rows)


def matrix(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Queue x rule: True if the rule fired at any time in the run."""
    return evaluations.pivot_table(index="queue", columns="rule", values="firing", aggfunc="any", sort=False)


# ---------------------------------------------------------------------------
# Scenarios built to trip each rule, and a healthy one
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Scenario:
    """A workload on its own queue ``alerts.<name>`` (with a DLQ): a publisher, a prefill, consumers."""

    name: str
    publish_rate: float = 0.0       # msg/s during the run
    prefill: int = 0                # messages already there when the run starts
    consumers: int = 0
    job_s: float = 0.0
    prefetch: int = 1
    reject_every: int = 0           # every n-th message rejected (to the DLQ)

    @property
    def queue(self) -> str:
        return f"alerts.{self.name}"


SCENARIOS = [
    Scenario("healthy", publish_rate=20, consumers=2, job_s=0.01, prefetch=5),
    Scenario("burst that drains", publish_rate=5, prefill=600, consumers=2, job_s=0.005, prefetch=10),
    Scenario("growing backlog", publish_rate=30, consumers=1, job_s=0.06, prefetch=1),
    Scenario("no consumers", publish_rate=5),
    Scenario("dead letters", publish_rate=10, consumers=1, job_s=0.005, prefetch=5, reject_every=4),
    Scenario("slow consumers", publish_rate=0, prefill=400, consumers=1, job_s=0.02, prefetch=1),
]
"""One healthy workload and one built to trip each rule (see the module docstring)."""


def _publish_at(broker: Broker, queue: str, rate: float, stop: threading.Event, errors: list[BaseException]) -> None:
    try:
        with broker.connect(client_properties={"connection_name": f"voicelab publisher {queue}"}) as connection:
            channel = connection.channel()
            channel.confirm_delivery()
            props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            t0, i = time.monotonic(), 0
            while not stop.is_set():
                delay = t0 + i / rate - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
                    continue
                channel.basic_publish("", queue, str(i).encode(), props)
                i += 1
    except BaseException as e:
        errors.append(e)


def _queue_rows(mgmt: Management, prom: Prometheus, queues: list[str], t: float) -> list[dict[str, Any]]:
    table = prom.queues(mgmt_vhost(mgmt))
    listing = {q["name"]: q for q in mgmt.get(f"queues/{mgmt.vhost}")}
    rows = []
    for name in queues:
        nan = float("nan")  # Prometheus has no figure for a queue until its first stats emission (about 1 s)
        p = table.loc[name].to_dict() if name in table.index else {"ready": nan, "unacked": nan, "consumers": nan}
        dlq = table.loc[dlq_name(name)].to_dict() if dlq_name(name) in table.index else {"ready": nan}
        m = listing.get(name, {})
        stats = m.get("message_stats") or {}
        util = m.get("consumer_utilisation", m.get("consumer_capacity"))
        rows.append({"t": t, "queue": name, "ready": p["ready"], "unacked": p["unacked"], "consumers": p["consumers"],
                     "dlq_ready": dlq["ready"],
                     "publish_rate": float(stats.get("publish_details", {}).get("rate", 0.0)),
                     "ack_rate": float(stats.get("ack_details", {}).get("rate", 0.0)),
                     "utilisation": float("nan") if util in (None, "") else float(util)})
    return rows


def mgmt_vhost(mgmt: Management) -> str:
    return urllib.parse.unquote(mgmt.vhost)


def record(broker: Broker, queues: list[str], seconds: float, every: float = 0.5,
           on_tick: Callable[[float], None] | None = None) -> pd.DataFrame:
    """Sample ``queues`` for ``seconds``: Prometheus (depths, consumers, DLQ depth) and the management API
    (rates, utilisation), one scrape and one listing per tick for all queues at once."""
    mgmt, prom = Management(broker), Prometheus.of(broker)
    rows: list[dict[str, Any]] = []
    try:
        t0, tick = time.monotonic(), 0
        while True:
            t = time.monotonic() - t0
            rows += _queue_rows(mgmt, prom, queues, t)
            if on_tick is not None:
                on_tick(t)
            tick += 1
            if t >= seconds:
                break
            time.sleep(max(0.0, t0 + tick * every - time.monotonic()))
    finally:
        mgmt.close()
        prom.close()
    return pd.DataFrame(rows, columns=COLUMNS)


def _wait_visible(broker: Broker, expected: dict[str, int], timeout: float = 10.0) -> None:
    """Wait until Prometheus shows each prefill: the rules then start from a system already running,
    not from the stale 0 Prometheus reports for a queue until its next stats emission."""
    if not expected:
        return
    prom = Prometheus.of(broker)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            table = prom.queues()
            if all(q in table.index and table.loc[q, "ready"] >= n for q, n in expected.items()):
                return
            time.sleep(0.1)
        raise TimeoutError(f"Prometheus did not show the prefilled queues {expected} within {timeout} s")
    finally:
        prom.close()


def run_scenarios(broker: Broker, scenarios: list[Scenario] | None = None, seconds: float = 9.0,
                  every: float = 0.5, keep_queues: bool = False) -> pd.DataFrame:
    """Run every scenario at once on its own queue for ``seconds`` s and :func:`record` them; returns the samples
    with a ``scenario`` column. Every thread is stopped, and the queues deleted unless ``keep_queues``."""
    scenarios = SCENARIOS if scenarios is None else scenarios
    stop, errors, threads = threading.Event(), [], []  # type: ignore[var-annotated]
    with broker.connect() as connection:
        channel = connection.channel()
        for s in scenarios:
            reset_queue(channel, s.queue, dead_letters=True)
            if s.prefill:
                publish_bodies(channel, s.queue, [b"x"] * s.prefill, confirm=False)
    _wait_visible(broker, {s.queue: s.prefill for s in scenarios if s.prefill})
    try:
        for s in scenarios:
            for i in range(s.consumers):
                threads.append(threading.Thread(
                    target=consume_jobs, args=(broker, s.queue, s.job_s, stop), daemon=True,
                    kwargs=dict(prefetch=s.prefetch, errors=errors, reject_every=s.reject_every,
                                name=f"voicelab consumer {s.queue} {i + 1}")))
            if s.publish_rate:
                threads.append(threading.Thread(target=_publish_at, args=(broker, s.queue, s.publish_rate, stop, errors),
                                                daemon=True))
        for t in threads:
            t.start()

        def check(_: float) -> None:
            if errors:
                raise RuntimeError("a scenario's publisher or consumer failed") from errors[0]

        samples = record(broker, [s.queue for s in scenarios], seconds, every, on_tick=check)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        if not keep_queues:
            with broker.connect() as connection:
                channel = connection.channel()
                for s in scenarios:
                    channel.queue_delete(s.queue)
                    channel.queue_delete(dlq_name(s.queue))
    names = {s.queue: s.name for s in scenarios}
    samples.insert(1, "scenario", samples["queue"].map(names))
    return samples


def fired(evaluations: pd.DataFrame) -> pd.DataFrame:
    """Scenario (queue) x rule matrix of whether each rule fired; columns in rule order."""
    m = matrix(evaluations)
    return m.rename(index=lambda q: q.removeprefix("alerts."))


def plot_scenarios(samples: pd.DataFrame, evaluations: pd.DataFrame, *, title: str = "", caption: str = "") -> Any:
    """One panel per scenario: depth (ready + unacked, from Prometheus) against time, a mark for each rule
    at every sample where it fired."""
    import matplotlib.pyplot as plt

    from .measure import add_caption

    names = list(dict.fromkeys(samples["scenario"]))
    rules = list(dict.fromkeys(evaluations["rule"]))
    fig, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names) + 1, 3.4), sharex=True, squeeze=False)
    for ax, name in zip(axes[0], names):
        s = samples[samples["scenario"] == name]
        ax.plot(s["t"], s["ready"] + s["unacked"], ".-", color="0.3", markersize=3)
        top = max(1.0, float((s["ready"] + s["unacked"]).max()))
        ev = evaluations[(evaluations["queue"] == s["queue"].iloc[0]) & evaluations["firing"]]
        for k, rule in enumerate(rules):
            hits = ev[ev["rule"] == rule]
            ax.scatter(hits["t"], [top * (1.08 + 0.09 * k)] * len(hits), s=9, marker="s", label=rule)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("t (s)")
        ax.set_ylim(0, top * (1.15 + 0.09 * len(rules)))
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("messages (ready + unacked)")
    handles, labels = [], []
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.93))
    fig.suptitle(title or "Each rule, on every sample: squares mark where it fired", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    add_caption(fig, caption)
    return fig
