"""Exercises of notebook 07 (monitoring).

q1: write an alert rule ``alert(window) -> bool``: True when a job queue needs a human because work is
not getting done (its backlog grows, or nobody consumes it), False for a healthy queue and for a burst
that drains by itself. ``window`` holds the last 5 s of samples of one queue (a DataFrame with the
columns of :data:`voicelab.alerts.COLUMNS`: ``t`` in s, ``ready``, ``unacked``, ``consumers``,
``dlq_ready``, ``publish_rate``, ``ack_rate``, ``utilisation``), oldest first.

The checker replays scenarios recorded on a real broker (``voicelab/data/alert_scenarios.csv``), then
runs two live ones on the broker (a healthy queue and a growing backlog): your rule must fire on each
scenario that needs a human, and never on the healthy ones.

Example (in the notebook, after writing ``alert``)::

    from voicelab.exercises import ch07
    ch07.q1.check(alert)     # pass, or what is wrong and a hint
    ch07.q1.hint()
"""

from __future__ import annotations

from importlib import resources
from io import StringIO
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..alerts import evaluate
from ..broker import shared_broker
from ..lab.alert_scenarios import SCENARIOS, run_scenarios
from .core import Exercise, Wrong

MUST_FIRE = ("growing backlog", "no consumers")
MUST_NOT_FIRE = ("healthy", "burst that drains")
LIVE = ("healthy", "growing backlog")
LIVE_SECONDS = 8.0


def alert(window: pd.DataFrame) -> bool:
    """Reference solution of q1: a backlog above 20 that grows, or a queue nobody has consumed for 2 s."""
    depth = window["ready"] + window["unacked"]
    recent = window[window["t"] >= window["t"].iloc[-1] - 3.0]
    if len(recent) < 3:
        return False                                               # too little data to judge a trend
    growth = np.polyfit(recent["t"], depth.loc[recent.index], 1)[0]  # msg/s, least squares
    nobody = (recent["consumers"] == 0).all() and recent["t"].iloc[-1] - recent["t"].iloc[0] >= 2.0
    return bool((depth.iloc[-1] > 20 and growth > 1.0) or (nobody and depth.iloc[-1] > 0))


def recorded() -> pd.DataFrame:
    """The recorded scenarios (one row per queue per 0.5 s tick), as :func:`voicelab.alert_scenarios.run_scenarios` returns."""
    text = resources.files("voicelab").joinpath("data/alert_scenarios.csv").read_text()
    return pd.read_csv(StringIO(text), comment="#")


def _verdicts(fn: Callable[..., Any], samples: pd.DataFrame, origin: str) -> dict[str, pd.DataFrame]:
    ev = evaluate({"yours": lambda w: "fires" if fn(w.reset_index(drop=True)) else None}, samples)
    names = dict(zip(samples["queue"], samples["scenario"]))
    return {names[q]: part for q, part in ev.groupby("queue")}


def _judge(fn: Callable[..., Any], samples: pd.DataFrame, origin: str, must_fire: tuple[str, ...],
           must_not: tuple[str, ...]) -> list[str]:
    seen = []
    verdicts = _verdicts(fn, samples, origin)
    for name in must_not:
        part = verdicts[name]
        if part["firing"].any():
            t = part.loc[part["firing"], "t"].iloc[0]
            depth = samples[(samples["scenario"] == name) & (samples["t"] == t)][["ready", "unacked"]].sum(axis=1)
            raise Wrong(f"your rule fired on the {origin} '{name}' scenario at t={t:.1f} s (depth "
                        f"{depth.iloc[0]:.0f}): " + ("a burst that drains by itself in seconds needs no human; a "
                                                      "fixed depth threshold cannot tell it from a backlog"
                                                      if "burst" in name else "that queue is healthy"))
        seen.append(f"quiet on {origin} '{name}'")
    for name in must_fire:
        part = verdicts[name]
        if not part["firing"].any():
            s = samples[samples["scenario"] == name]
            raise Wrong(f"your rule never fired on the {origin} '{name}' scenario: its depth went from "
                        f"{(s['ready'] + s['unacked']).min():.0f} to {(s['ready'] + s['unacked']).iloc[-1]:.0f} "
                        f"with {s['consumers'].iloc[-1]:.0f} consumer(s)")
        seen.append(f"fired on {origin} '{name}' at t={part.loc[part['firing'], 't'].iloc[0]:.1f} s")
    return seen


def _check_alert(fn: Callable[..., Any]) -> str:
    seen = _judge(fn, recorded(), "recorded", MUST_FIRE, MUST_NOT_FIRE)
    live = run_scenarios(shared_broker(), [s for s in SCENARIOS if s.name in LIVE], seconds=LIVE_SECONDS)
    seen += _judge(fn, live, "live", ("growing backlog",), ("healthy",))
    return "; ".join(seen) + "."


q1 = Exercise(
    "ch07.q1", "an alert rule that is right",
    _check_alert,
    hints=[
        """A depth alone says little: 600 messages that drain in two seconds are fine, 40 messages on a queue
        nobody consumes are not. Look at how the depth changes over the window, and at the consumers.""",
        """Fit a line to depth = ready + unacked against t over the last few seconds (np.polyfit(t, depth, 1)[0]
        is the slope in msg/s): fire when the depth is above a small threshold and the slope is positive, or
        when consumers has been 0 for the whole window while messages wait. Return False on a window too short
        to judge.""",
    ],
    solution=alert,
)
