"""Exercises of notebook 07 (monitoring).

q1: write an alert rule ``alert(window) -> bool``: True when a job queue needs a human because work is
not getting done (its backlog grows, or messages wait and nobody consumes them), False for a healthy
queue, for a burst that drains by itself, and for an empty queue that nobody consumes (no work waits).

``window`` holds the last 5 s of samples of one queue, oldest first, one row every 0.5 s (a DataFrame with
the columns of :data:`voicelab.alerts.COLUMNS`). Every figure comes from one scrape of the Prometheus
plugin's ``/metrics/detailed``; the broker refreshes them every ``collect_statistics_interval`` (1 s on
voicelab's brokers), so each is up to about 1 s old when read:

- ``t`` (s since the recording started), ``ready``, ``unacked``, ``consumers``, ``dlq_ready``;
- ``utilisation`` (consumer capacity, 0-1; 0 without consumers);
- the counters ``published``, ``acked``, ``redelivered`` (messages since the queue's channels opened);
- ``oldest_age_s``: age of the oldest message from its ``timestamp`` property (whole seconds; NaN when
  the queue is empty or its messages carry none, as the prefilled ones here);
- ``publish_rate`` and ``ack_rate``: msg/s over the last 2 s of those counters (NaN in the first 2 s).

The checker runs six queues at once on the broker for 10 s (:data:`LIVE`): a healthy one, a burst that
drains, a growing backlog, a queue fed 5 jobs/s that nobody consumes, a backlog of 40 that nobody
consumes and that does not grow, and an empty queue without consumers. Your rule must fire on the three
that need a human and never on the other three.

Example (in the notebook, after writing ``alert``)::

    from voicelab.exercises import ch07
    ch07.q1.check(alert)     # pass, or what is wrong and a hint
    ch07.q1.hint()
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from ..alerts import COLUMNS, evaluate
from ..broker import Broker, shared_broker
from ..lab.alert_scenarios import SCENARIOS, run_scenarios
from .core import Exercise, Wrong

MUST_FIRE = ("growing backlog", "no consumers", "stalled backlog")
MUST_NOT_FIRE = ("healthy", "burst that drains", "idle, no consumers")
LIVE = MUST_NOT_FIRE + MUST_FIRE
LIVE_SECONDS = 10.0


def alert(window: pd.DataFrame) -> bool:
    """Reference solution of q1: a backlog above 20 that grows, or messages waiting with no consumer for 2 s."""
    depth = window["ready"] + window["unacked"]
    recent = window[window["t"] >= window["t"].iloc[-1] - 3.0]
    if len(recent) < 3:
        return False                                               # too little data to judge a trend
    growth = np.polyfit(recent["t"], depth.loc[recent.index], 1)[0]  # msg/s, least squares
    last2 = window[window["t"] >= window["t"].iloc[-1] - 2.0]
    nobody = ((last2["consumers"] == 0).all() and (depth.loc[last2.index] > 0).all()
              and window["t"].iloc[-1] - window["t"].iloc[0] >= 2.0)
    return bool((depth.iloc[-1] > 20 and growth > 1.0) or nobody)


def record(broker: Broker | None = None, seconds: float = LIVE_SECONDS) -> pd.DataFrame:
    """Run the :data:`LIVE` scenarios on ``broker`` (default: the shared one) and return their samples."""
    return run_scenarios(broker or shared_broker(), [s for s in SCENARIOS if s.name in LIVE], seconds=seconds)


def _describe(samples: pd.DataFrame, name: str, t: float | None = None) -> str:
    s = samples[samples["scenario"] == name]
    d = s["ready"] + s["unacked"]
    at = s.loc[(s["t"] - t).abs().idxmin()] if t is not None else s.iloc[-1]
    return (f"depth {d.min():.0f} to {d.max():.0f} over the run ({at['ready'] + at['unacked']:.0f} then), "
            f"{at['consumers']:.0f} consumer(s), {s['acked'].max():.0f} acked in all")


WHY_QUIET = {
    "healthy": "that queue is healthy: its consumers ack as fast as jobs arrive, nothing waits for long",
    "burst that drains": ("a burst that drains by itself in seconds needs no human; a fixed depth threshold "
                          "cannot tell it from a backlog, the trend can"),
    "idle, no consumers": ("that queue is empty and nobody consumes it: no work waits, so nobody needs waking; "
                           "a missing consumer matters while messages wait"),
}
WHY_FIRE = {
    "growing backlog": "jobs arrive faster than the consumer acks them: the backlog grows",
    "no consumers": "jobs arrive and nobody consumes them",
    "stalled backlog": ("messages wait, nobody consumes them, and the depth does not change (nothing new "
                        "arrives): a rule that watches only growth or publish rates misses it"),
}


def judge(fn: Callable[..., Any], samples: pd.DataFrame) -> str:
    """Judge the rule ``fn`` on ``samples`` recorded by :func:`record`: raise :class:`Wrong` naming its mistake,
    or return what it got right."""
    ev = evaluate({"yours": lambda w: "fires" if fn(w.reset_index(drop=True)) else None}, samples)
    names = dict(zip(samples["queue"], samples["scenario"]))
    verdicts = {names[q]: part for q, part in ev.groupby("queue")}
    seen = []
    for name in MUST_NOT_FIRE:
        part = verdicts[name]
        if part["firing"].any():
            t = float(part.loc[part["firing"], "t"].iloc[0])
            raise Wrong(f"your rule fired on the live '{name}' queue at t={t:.1f} s ({_describe(samples, name, t)}): "
                        f"{WHY_QUIET[name]}.")
        seen.append(f"quiet on live '{name}'")
    for name in MUST_FIRE:
        part = verdicts[name]
        if not part["firing"].any():
            raise Wrong(f"your rule never fired on the live '{name}' queue ({_describe(samples, name)}): "
                        f"{WHY_FIRE[name]}.")
        seen.append(f"fired on live '{name}' at t={part.loc[part['firing'], 't'].iloc[0]:.1f} s")
    return "; ".join(seen) + "."


def _check_alert(fn: Callable[..., Any]) -> str:
    try:   # an unsolved stub says so at once, before 10 s of recording
        fn(pd.DataFrame([{c: 0.0 for c in COLUMNS} | {"queue": "probe"}]))
    except NotImplementedError:
        raise
    except Exception:  # noqa: BLE001, S110 - judged on real windows below
        pass
    return judge(fn, record())


q1 = Exercise(
    "ch07.q1", "an alert rule that is right",
    _check_alert,
    hints=[
        """A depth alone says little: 600 messages that drain in two seconds are fine, 40 messages on a queue
        nobody consumes are not, and an empty queue nobody consumes needs nobody. Look at how the depth changes
        over the window, and at the consumers while messages wait.""",
        """Fit a line to depth = ready + unacked against t over the last few seconds (np.polyfit(t, depth, 1)[0]
        is the slope in msg/s): fire when the depth is above a small threshold and the slope is positive, or
        when consumers has been 0 for the last 2 s while the depth stayed above 0. Return False on a window too
        short to judge.""",
    ],
    solution=alert,
)
