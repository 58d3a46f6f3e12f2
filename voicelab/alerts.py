"""Alert rules evaluated on data: recorded samples of real queues, not a threshold printed once a minute.

A *rule* is a function ``rule(window) -> str | None``: ``window`` holds the last samples of one
queue (a DataFrame, columns below), and the rule returns why it fires, or None. Rules here:

- :func:`backlog_growing`: depth above a threshold *and* growing (slope of a line fitted to the window);
- :func:`no_consumers`: nobody has consumed the queue for the whole window;
- :func:`dlq_not_empty`: its dead-letter queue holds messages;
- :func:`low_utilisation`: consumer utilisation low while messages wait (consumers cannot take more:
  too few, too slow, or a prefetch too small for the round trip);
- :func:`drain_too_slow`: the backlog will not drain within a deadline at the measured rates
  (the drain estimate ``depth / (ack rate - publish rate)``, see :func:`predicted_drain_s`).

Sample columns (one row per queue per tick, as :func:`voicelab.lab.alert_scenarios.record` records them): ``t`` (s), ``queue``, ``ready``,
``unacked``, ``consumers``, ``dlq_ready`` (Prometheus, per queue), ``publish_rate``, ``ack_rate``
(msg/s), ``utilisation`` (0-1 or NaN) from the management API, which updates them every 5 s.

Example::

    import pandas as pd
    samples = pd.DataFrame({"t": [0.0, 1.0, 2.0, 3.0], "queue": "q", "ready": [60, 80, 100, 120], "unacked": 0,
                            "consumers": 1, "dlq_ready": 0, "publish_rate": 20.0, "ack_rate": 0.0,
                            "utilisation": 1.0})
    evaluate({"growing": backlog_growing(threshold=50)}, samples)   # one row per tick: fired, why
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd


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
    """The drain estimate: seconds until the backlog is gone if the rates hold, ``L / (mu - lambda)``; inf if
    it does not shrink.

    A rate extrapolation, not Little's law: a message arriving now waits about ``L / mu`` (the wait
    estimate, first in first out); with arrivals going on at ``lambda`` the backlog shrinks at
    ``mu - lambda`` only. Little's law (``L = lambda W``) holds for long-run averages of a stable queue
    (average depth = arrival rate x average time queued), not for a backlog while it drains.

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


"""One healthy workload and one built to trip each rule (see the module docstring)."""


