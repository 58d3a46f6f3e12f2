"""What a chaos drill (:mod:`voicelab.lab.chaos`) shows: the workers' ledger, every job accounted for, the dashboard.

- :class:`Ledger`: what the worker processes' event logs say, read as they write them: jobs finished, results
  applied, messages dead-lettered, connections made and lost.
- :func:`job_table` and :func:`job_counts`: one row per upload and per poison message (done, dead-lettered with its
  reason, or lost), and the run in numbers.
- :class:`ChaosRun`: all of it, as :func:`voicelab.lab.chaos.run_chaos` returns it; :func:`plot_dashboard` draws it.

Example::

    run = chaos.run_chaos(broker, blobs, n=2000)
    run.jobs.groupby(["kind", "outcome"]).size()
    plot_dashboard(run, caption=broker_caption(broker))
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import matplotlib.pyplot as plt
import pandas as pd

from ..jobs import VoiceJob
from ..pipeline import LogTail
from .measure import add_caption

BROKER_EVENTS = ("restart the broker", "kill -9 the broker, start it")
"""The chaos events that take the broker down (they need a broker voicelab controls; the dashboard shades them)."""
JOB_COLUMNS = ["job", "kind", "outcome", "handled", "applied", "right", "reason"]
EVENT_COLUMNS = ["event", "t", "t_end", "seconds", "at_sent", "at_done", "detail"]


@dataclass
class ChaosRun:
    """What a chaos drill did: samples over time, the chaos events, one row per job, and the counts."""

    samples: pd.DataFrame
    events: pd.DataFrame
    jobs: pd.DataFrame
    counts: dict[str, int]
    seconds: float
    publisher: dict[str, int] = field(default_factory=dict)


class Ledger:
    """The worker processes' event logs (:class:`voicelab.pipeline.EventLog`), counted as they grow.

    ``tallies`` counts lines by event; ``finished`` holds the jobs a worker finished (applied or duplicate),
    ``dead_keys`` the messages it dead-lettered; per job, ``handled`` counts every finish and ``applied`` the
    finishes whose link created the result.
    """

    def __init__(self, tail: LogTail) -> None:
        self.tail = tail
        self.tallies: Counter[str] = Counter()
        self.finished: set[str] = set()
        self.dead_keys: set[str] = set()
        self.handled: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()

    def read(self) -> None:
        """Count the lines the workers wrote since the last read."""
        for _, event, key in self.tail.read():
            self.tallies[event] += 1
            if event in ("applied", "duplicate"):
                self.finished.add(key)
                self.handled[key] += 1
                self.applied[key] += event == "applied"
            elif event == "dead-lettered":
                self.dead_keys.add(key)


def job_table(uploaded: Iterable[VoiceJob], status: Callable[[str], dict[str, Any]],
              expected: Callable[[VoiceJob], dict[str, Any]], poison: dict[str, str], reasons: dict[str, str],
              ledger: Ledger) -> pd.DataFrame:
    """One row per upload (done, with its result checked against ``expected``; dead-lettered, with the reason
    from the DLQ; or lost) and per poison message (its key -> kind in ``poison``)."""
    rows = []
    for job in uploaded:
        result = status(job.job_id)
        outcome = "done" if result["status"] == "done" else "dead-lettered" if job.job_id in reasons else "lost"
        rows.append({"job": job.job_id, "kind": "upload", "outcome": outcome, "handled": ledger.handled[job.job_id],
                     "applied": ledger.applied[job.job_id],
                     "right": result.get("result") == expected(job) if outcome == "done" else None,
                     "reason": reasons.get(job.job_id, "")})
    for key, kind in poison.items():
        rows.append({"job": key, "kind": f"poison: {kind}", "outcome": "dead-lettered" if key in reasons else "lost",
                     "handled": 0, "applied": 0, "right": None, "reason": reasons.get(key, "")})
    return pd.DataFrame(rows, columns=JOB_COLUMNS)


def job_counts(jobs: pd.DataFrame, *, uploads: int, confirmed: int, left: int,
               dead_letters: Counter[str]) -> dict[str, int]:
    """The run in numbers, from :func:`job_table`'s rows: ``uploads`` asked for, ``confirmed`` by the broker,
    ``left`` in the job queue at the end, ``dead_letters`` per message key (a key twice: dead-lettered twice)."""
    up = jobs[jobs["kind"] == "upload"]
    poison = jobs[jobs["kind"] != "upload"]
    done = up["outcome"] == "done"
    return {
        "uploads": uploads,
        "uploads confirmed": int(confirmed),
        "never uploaded": uploads - len(up),
        "done": int(done.sum()),
        "done, applied once": int((done & (up["applied"] == 1)).sum()),
        "handled twice or more, applied once": int((done & (up["handled"] >= 2) & (up["applied"] <= 1)).sum()),
        "applied twice": int((up["applied"] >= 2).sum()),
        "wrong results": int((up["right"] == False).sum()),  # noqa: E712
        "uploads dead-lettered": int((up["outcome"] == "dead-lettered").sum()),
        "poison sent": len(poison),
        "poison in DLQ with reason": int(((poison["outcome"] == "dead-lettered") & (poison["reason"] != "")).sum()),
        "dead-lettered twice": sum(1 for c in dead_letters.values() if c > 1),
        "lost": int((jobs["outcome"] == "lost").sum()) + (uploads - len(up)),
        "left in queue": left,
    }


def plot_dashboard(run: ChaosRun, caption: str = "") -> "plt.Figure":
    """Throughput, queue depth, failures and recoveries against time; chaos events as vertical lines,
    broker outages shaded."""
    s = run.samples
    k = max(1, round(1.0 / float(s["t"].diff().median())))   # rates over about one second
    dt = s["t"] - s["t"].shift(k)
    legend = "; ".join(f"{i + 1}: {ev['event']}" for i, ev in run.events.iterrows())
    fig, axes = plt.subplots(3, 1, figsize=(9, 8.2), sharex=True)
    ax = axes[0]
    ax.plot(s["t"], (s["done"] - s["done"].shift(k)) / dt, color="tab:blue", label="jobs done (results stored) /s")
    ax.plot(s["t"], (s["confirmed"] - s["confirmed"].shift(k)) / dt, color="tab:gray", alpha=0.7,
            label="uploads confirmed /s")
    ax.set_ylabel("jobs/s (over 1 s)")
    ax.set_title(f"{run.counts['uploads']} uploads through chaos: done {run.counts['done']}, "
                 f"poison in DLQ {run.counts['poison in DLQ with reason']}, lost {run.counts['lost']}\n"
                 f"chaos: {legend}", fontsize=9)
    ax = axes[1]
    ax.plot(s["t"], s["ready"], color="tab:orange", label="job queue: ready")
    ax.plot(s["t"], s["dlq"], color="crimson", label="DLQ: ready")
    ax.set_ylabel("messages")
    ax = axes[2]
    ax.step(s["t"], s["connection errors"], where="post", color="crimson", label="connection errors (workers)")
    ax.step(s["t"], s["connections"], where="post", color="tab:green", label="connections made (workers)")
    ax.step(s["t"], s["workers lost"], where="post", color="black", linewidth=2, label="worker processes lost")
    ax.step(s["t"], s["workers replaced"], where="post", color="tab:olive", linestyle="--", linewidth=2,
            label="worker processes replaced")
    ax.set_ylabel("count (cumulative)")
    ax.set_xlabel("time since the fleet started (s); broker down: shaded; queue depth: a gap when it could not be read")
    for i, ev in run.events.iterrows():
        for a in axes:
            a.axvline(ev["t"], color="0.3", linestyle="--", linewidth=0.9)
            if ev["event"] in BROKER_EVENTS:
                a.axvspan(ev["t"], ev["t_end"], color="0.85", zorder=0)
        axes[0].annotate(f"{i + 1}", (ev["t"], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                         textcoords="offset points", fontsize=8, color="0.2")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7.5, loc="upper right")
    add_caption(fig, caption)
    return fig
