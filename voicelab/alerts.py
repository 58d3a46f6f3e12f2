"""Alert rules evaluated on data: recorded samples of real queues, not a threshold printed once a minute.

A *rule* is a function ``rule(window) -> str | None``: ``window`` holds the last samples of one
queue (a DataFrame, columns below), and the rule returns why it fires, or None. Rules here:

- :func:`backlog_growing`: depth above a threshold *and* growing (slope of a line fitted to the window);
- :func:`no_consumers`: messages wait and nobody has consumed the queue for the whole window
  (an empty queue without consumers needs nobody);
- :func:`dlq_growing`: its dead-letter queue grew: new jobs failed for good (old dead letters that an
  operator has seen already do not page again);
- :func:`low_utilisation`: consumer utilisation low while messages wait (consumers cannot take more:
  too few, too slow, or a prefetch too small for the round trip);
- :func:`drain_too_slow`: the backlog will not drain within a deadline at the measured rates
  (the drain estimate ``depth / (ack rate - publish rate)``, see :func:`predicted_drain_s`);
- :func:`redelivering`: messages come back to consumers (nacked or requeued, or their consumer died);
- :func:`unacked_stuck`: consumers hold messages and acknowledge none (hung jobs, a forgotten ack);
- :func:`oldest_message`: the oldest message has waited longer than a deadline (what a user waits for).

Sample columns (one row per queue per tick, as :func:`voicelab.lab.alert_scenarios.record` records them
from one scrape of the Prometheus plugin's ``/metrics/detailed``): ``t`` (s), ``queue``, ``ready``,
``unacked``, ``consumers``, ``dlq_ready``, ``utilisation`` (``consumer_capacity``, 0-1, 0 without
consumers), the counters ``published``, ``acked``, ``redelivered`` (messages since the queue's channels opened),
``oldest_age_s`` (age of the oldest message, ready or unacked, from its ``timestamp`` property; NaN when
the queue is empty or its messages carry none), and
``publish_rate``, ``ack_rate`` (msg/s over the last 2 s of those counters). The broker emits these
figures every ``collect_statistics_interval`` (1 s on voicelab's brokers, 5 s by default): each is up to
that old when read.

Rules here are judged on windows of seconds so that notebook 07 runs in seconds. Production rules hold
a condition for minutes (``for: 10m`` in RabbitMQ's cluster-operator Prometheus rules): a Prometheus
server scrapes every 15-60 s and computes rates over minutes, so a condition must hold over several
scrapes before anyone is paged, and a burst that drains by itself never pages.

Example::

    import pandas as pd
    samples = pd.DataFrame({"t": [0.0, 1.0, 2.0, 3.0], "queue": "q", "ready": [60, 80, 100, 120], "unacked": 0,
                            "consumers": 1, "dlq_ready": 0, "utilisation": 1.0, "published": [0, 20, 40, 60],
                            "acked": 0, "redelivered": 0, "publish_rate": 20.0, "ack_rate": 0.0})
    evaluate({"growing": backlog_growing(threshold=50)}, samples)   # one row per tick: fired, why
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd


Rule = Callable[[pd.DataFrame], "str | None"]
COLUMNS = ["t", "queue", "ready", "unacked", "consumers", "dlq_ready", "utilisation", "published", "acked",
           "redelivered", "oldest_age_s", "publish_rate", "ack_rate"]


def depth(window: pd.DataFrame) -> pd.Series:
    """Messages in the queue: ready + unacked (in flight count too: they are not done)."""
    return window["ready"] + window["unacked"]


def slope(window: pd.DataFrame, over_s: float) -> float:
    """Growth of the depth in msg/s over the last ``over_s`` s (least-squares line); NaN with too few points."""
    w = window[window["t"] >= window["t"].iloc[-1] - over_s]
    if len(w) < 3 or w["t"].iloc[-1] - w["t"].iloc[0] < over_s / 2:
        return float("nan")
    return float(np.polyfit(w["t"], depth(w), 1)[0])


def increase(window: pd.DataFrame, column: str, over_s: float) -> float:
    """How much counter ``column`` grew over the last ``over_s`` s of the window (a drop, when a channel closed
    and its counter went with it, counts as a restart from 0, as Prometheus's ``increase()`` does);
    NaN when the window spans less than ``over_s / 2``.

    >>> w = pd.DataFrame({"t": [0.0, 1.0, 2.0, 3.0], "acked": [5, 9, 2, 4]})
    >>> increase(w, "acked", over_s=3.0)   # +4, then a reset (+2), then +2
    8.0
    """
    w = window[window["t"] >= window["t"].iloc[-1] - over_s]
    if len(w) < 2 or w["t"].iloc[-1] - w["t"].iloc[0] < over_s / 2:
        return float("nan")
    values = w[column].astype(float).ffill().fillna(0.0).to_numpy()
    steps = np.diff(values)
    return float(np.where(steps >= 0, steps, values[1:]).sum())


def held(window: pd.DataFrame, condition: pd.Series, for_s: float) -> bool:
    """Whether ``condition`` (one bool per sample of ``window``) has held for ``for_s`` s: at every sample from
    the last one taken ``for_s`` s ago or earlier up to now, as Prometheus's ``for:`` means it. False when no
    sample is that old. (Only the samples of the last ``for_s`` s would let it fire up to one sample interval
    early: samples 0.5 s apart would show 2.5 s as 3.)

    >>> w = pd.DataFrame({"t": [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]})
    >>> held(w, pd.Series([False, True, True, True, True, True, True]), for_s=3.0)
    False
    >>> held(w, pd.Series([True] * 7), for_s=3.0), held(w, pd.Series([True] * 7), for_s=3.5)
    (True, False)
    """
    t = window["t"].to_numpy()
    old = t <= t[-1] - for_s
    if not old.any():
        return False
    since = t >= t[old][-1]
    return bool(condition.to_numpy()[since].all())


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
    """Fires when messages have waited on a queue without any consumer for at least ``for_s`` s.

    An empty queue without consumers fires nothing: no work waits, nobody needs waking (a job queue
    whose consumers should always be attached is better watched by the fleet's own health check).
    """
    def rule(window: pd.DataFrame) -> str | None:
        if held(window, (window["consumers"] == 0) & (depth(window) > 0), for_s):
            return f"no consumer for {for_s:g} s while {depth(window).iloc[-1]:.0f} messages wait"
        return None
    rule.__name__ = "no consumers"
    return rule


def dlq_growing(over_s: float = 3.0) -> Rule:
    """Fires when the dead-letter queue grew over the last ``over_s`` s: jobs are failing for good *now*.

    Not "the DLQ is not empty": one dead letter would then page forever, until someone empties the DLQ,
    and the alert says nothing new about the next failure. Dead letters already there are a ticket, not
    a page (the DLQ's depth belongs on a dashboard).
    """
    def rule(window: pd.DataFrame) -> str | None:
        w = window[window["t"] >= window["t"].iloc[-1] - over_s].dropna(subset=["dlq_ready"])
        if len(w) < 2 or w["t"].iloc[-1] - w["t"].iloc[0] < over_s / 2:
            return None
        grew = float(w["dlq_ready"].iloc[-1] - w["dlq_ready"].iloc[0])
        if grew > 0:
            return (f"{grew:.0f} new dead letter(s) in {over_s:g} s "
                    f"({w['dlq_ready'].iloc[-1]:.0f} in the dead-letter queue)")
        return None
    rule.__name__ = "DLQ growing"
    return rule


def low_utilisation(below: float = 0.6, min_ready: int = 20, for_s: float = 3.0) -> Rule:
    """Fires when consumer utilisation stayed below ``below`` while at least ``min_ready`` messages waited,
    for ``for_s`` s (a burst saturates the consumers for a moment: that is what consumers are for)."""
    def rule(window: pd.DataFrame) -> str | None:
        # a NaN utilisation (no figure yet) is not low
        low = (window["ready"] >= min_ready) & (window["consumers"] > 0) & (window["utilisation"] < below)
        if held(window, low, for_s):
            last = window.iloc[-1]
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


def redelivering(per_s: float = 1.0, over_s: float = 3.0) -> Rule:
    """Fires when more than ``per_s`` messages/s were redelivered over the last ``over_s`` s: consumers nack
    with requeue, or die holding messages. Each redelivery is work done again, and a message that always
    comes back may loop forever (a classic queue never stops it; quorum queues' delivery limits differ by
    version, see notebook 06)."""
    def rule(window: pd.DataFrame) -> str | None:
        n = increase(window, "redelivered", over_s)
        if n / over_s > per_s:   # NaN > x is False
            return f"{n:.0f} redeliveries in {over_s:g} s ({n / over_s:.1f}/s)"
        return None
    rule.__name__ = "redelivering"
    return rule


def unacked_stuck(for_s: float = 3.0) -> Rule:
    """Fires when consumers have held unacked messages for ``for_s`` s and acknowledged none meanwhile:
    jobs hang, or a consumer forgot to ack. The broker redelivers them only when the channel closes (or
    after ``consumer_timeout``, 30 minutes by default, where it applies: 4.3 no longer evaluates it for
    classic queues). A busy consumer acks: it never fires that."""
    def rule(window: pd.DataFrame) -> str | None:
        acked = increase(window, "acked", for_s)
        if acked == 0 and held(window, window["unacked"] > 0, for_s):
            return f"{window['unacked'].iloc[-1]:.0f} message(s) unacked and none acked for {for_s:g} s"
        return None
    rule.__name__ = "unacked stuck"
    return rule


def oldest_message(above_s: float = 5.0) -> Rule:
    """Fires when the oldest message in the queue (ready or unacked) is more than ``above_s`` s old: the
    wait a user sees, whatever the depth. RabbitMQ reports the head message's ``timestamp`` property
    (``head_message_timestamp``, classic queues, whole seconds, set by the publisher), so the age is
    known only for messages published with one, and only to about a second."""
    def rule(window: pd.DataFrame) -> str | None:
        age = float(window["oldest_age_s"].iloc[-1])
        if age > above_s:   # NaN > x is False
            return f"oldest message {age:.0f} s old (> {above_s:g} s)"
        return None
    rule.__name__ = "oldest message"
    return rule


# ---------------------------------------------------------------------------
# Rules on the node: alarms, blocked publishers, unroutable messages, connection churn, file descriptors
# ---------------------------------------------------------------------------

NODE_COLUMNS = ["t", "queue", "memory_alarm", "disk_alarm", "memory_used", "memory_limit", "disk_free",
                "disk_free_limit", "fds_used", "fds_limit", "sockets_used", "sockets_limit", "connections",
                "connections_opened", "connections_closed", "unroutable_dropped", "unroutable_returned", "blocked"]
"""Columns of node samples (:meth:`voicelab.monitoring.Prometheus.node_stats`, and ``blocked``: connections the
management API lists as blocked or blocking)."""


def resource_alarm() -> Rule:
    """Fires while a memory or disk alarm is in effect: the broker blocks every publishing connection of the
    cluster until it clears (https://www.rabbitmq.com/docs/alarms). Page at once: publishers hang."""
    def rule(window: pd.DataFrame) -> str | None:
        last = window.iloc[-1]
        said = []
        if last["memory_alarm"] == 1:
            said.append(f"memory alarm (memory {last['memory_used'] / 2**20:.0f} MiB, "
                        f"watermark {last['memory_limit'] / 2**20:.0f} MiB)")
        if last["disk_alarm"] == 1:
            said.append(f"disk alarm (free {last['disk_free'] / 1e9:.0f} GB, limit "
                        f"{last['disk_free_limit'] / 1e9:.0f} GB)")
        return " and ".join(said) + ": publishers are blocked" if said else None
    rule.__name__ = "resource alarm"
    return rule


def publishers_blocked(for_s: float = 1.0) -> Rule:
    """Fires when connections have been blocked (or blocking) for ``for_s`` s: the publishers' side of an alarm,
    as the management API lists it; a client sees it as ``connection.blocked``."""
    def rule(window: pd.DataFrame) -> str | None:
        if held(window, window["blocked"] > 0, for_s):
            return f"{window['blocked'].iloc[-1]:.0f} connection(s) blocked for {for_s:g} s"
        return None
    rule.__name__ = "publishers blocked"
    return rule


def unroutable(per_s: float = 1.0, over_s: float = 2.0) -> Rule:
    """Fires when more than ``per_s`` messages/s reached an exchange that routed them to no queue (dropped,
    or returned to a ``mandatory`` publisher): a missing binding or a typo in a routing key loses jobs silently."""
    def rule(window: pd.DataFrame) -> str | None:
        n = increase(window, "unroutable_dropped", over_s) + increase(window, "unroutable_returned", over_s)
        if n / over_s > per_s:
            return f"{n:.0f} unroutable message(s) in {over_s:g} s: routed to no queue"
        return None
    rule.__name__ = "unroutable"
    return rule


def connection_churn(per_s: float = 5.0, over_s: float = 2.0) -> Rule:
    """Fires when more than ``per_s`` connections/s were opened: clients that connect per message, or
    reconnect in a loop, cost the broker far more than the messages they carry
    (https://www.rabbitmq.com/docs/connections#high-connection-churn)."""
    def rule(window: pd.DataFrame) -> str | None:
        n = increase(window, "connections_opened", over_s)
        if n / over_s > per_s:
            return f"{n:.0f} connections opened in {over_s:g} s ({n / over_s:.0f}/s)"
        return None
    rule.__name__ = "connection churn"
    return rule


def fds_high(above: float = 0.8) -> Rule:
    """Fires when the node uses more than ``above`` of its file-descriptor limit (every connection and open
    file takes one; at the limit new connections are refused). 3.x also limits sockets (``sockets_used``)."""
    def rule(window: pd.DataFrame) -> str | None:
        last = window.iloc[-1]
        for used, limit in (("fds_used", "fds_limit"), ("sockets_used", "sockets_limit")):
            if last[limit] > 0 and last[used] / last[limit] > above:
                return f"{used.split('_')[0]}: {last[used]:.0f} of {last[limit]:.0f} in use"
        return None
    rule.__name__ = "file descriptors"
    return rule


def node_rules() -> dict[str, Rule]:
    """The node rules of this module with their default thresholds, by name.

    >>> list(node_rules())
    ['resource alarm', 'publishers blocked', 'unroutable', 'connection churn', 'file descriptors']
    """
    rules = [resource_alarm(), publishers_blocked(), unroutable(), connection_churn(), fds_high()]
    return {r.__name__: r for r in rules}


def default_rules() -> dict[str, Rule]:
    """Every rule of this module with its default thresholds, by name.

    >>> list(default_rules())[-3:]
    ['redelivering', 'unacked stuck', 'oldest message']
    """
    rules = [backlog_growing(), no_consumers(), dlq_growing(), low_utilisation(), drain_too_slow(), redelivering(),
             unacked_stuck(), oldest_message()]
    return {r.__name__: r for r in rules}


# ---------------------------------------------------------------------------
# Evaluating rules on samples
# ---------------------------------------------------------------------------

def evaluate(rules: dict[str, Rule], samples: pd.DataFrame, window_s: float = 5.0,
             required: tuple[str, ...] = ("ready", "unacked", "consumers")) -> pd.DataFrame:
    """Run every rule at every sample of every queue on the last ``window_s`` s: one row per (t, queue, rule).

    Samples without the ``required`` figures are skipped (no figure yet: nothing to judge). Node samples
    (:data:`NODE_COLUMNS`) have a ``queue`` column too (``"node"``) and no required figures.
    """
    rows = []
    samples = samples.dropna(subset=list(required))
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
