"""Notebook 07's alert scenarios: queues put in known states on the broker, recorded, every rule judged.

Each :class:`Scenario` (a healthy queue, a growing backlog, no consumers, dead letters, a slow
consumer, ...) is staged on a real broker; :func:`record` samples every queue through the management
API and Prometheus; :func:`voicelab.alerts.evaluate` judges the rules on the samples.

Example::

    samples = run_scenarios(broker, SCENARIOS, seconds=9)
    fired = evaluate(default_rules(), samples)
    matrix(fired)     # scenario x rule: did it fire?
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, Callable

import matplotlib.pyplot as plt
import pandas as pd

from ..alerts import COLUMNS, Rule, matrix
from ..broker import Broker
from ..management import Management
from ..monitoring import Prometheus
from ..queues import delete_job_queue, dlq_name, publish_bodies, reset_queue
from .guide_patterns import GUIDE_DEPTH_WARNING
from .measure import add_caption
from .workload import consume_jobs, publish_paced


def guide_rule() -> Rule:
    """The guide's ``monitor_queue`` check as a rule: ready > 100 (:data:`GUIDE_DEPTH_WARNING`)."""
    def rule(window: pd.DataFrame) -> str | None:
        r = float(window["ready"].iloc[-1])
        return f"ready {r:.0f} > {GUIDE_DEPTH_WARNING}" if r > GUIDE_DEPTH_WARNING else None
    rule.__name__ = "guide: ready > 100"
    return rule


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
                threads.append(threading.Thread(target=publish_paced, args=(broker, s.queue, s.publish_rate, stop, errors),
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
                    delete_job_queue(channel, s.queue)
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


