"""Notebook 07's alert scenarios: queues put in known states on the broker, recorded, every rule judged.

Each :class:`Scenario` (a healthy queue, a growing backlog, no consumers, dead letters, a slow
consumer, ...) is staged on a real broker; :func:`record` samples every queue with one scrape of the
Prometheus plugin per tick (not the management API: see :func:`record`); :func:`voicelab.alerts.evaluate`
judges the rules on the samples.

Example::

    samples = run_scenarios(broker, SCENARIOS, seconds=9)
    fired = evaluate(default_rules(), samples)
    matrix(fired)     # scenario x rule: did it fire?
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import matplotlib.pyplot as plt
import pandas as pd

from ..alerts import COLUMNS, Rule, matrix
from ..broker import Broker
from ..management import Management
from ..monitoring import Prometheus
from ..queues import delete_job_queue, dlq_name, publish_bodies, reset_queue, wait_for_consumers
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
    requeue_every: int = 0          # every n-th delivery nacked with requeue (redelivered)
    hold: bool = False              # consumers never ack: they hold ``prefetch`` messages each
    dlq_prefill: int = 0            # dead letters already in the DLQ when the run starts

    @property
    def queue(self) -> str:
        return f"alerts.{self.name}"


SCENARIOS = [
    Scenario("healthy", publish_rate=20, consumers=2, job_s=0.01, prefetch=5),
    Scenario("burst that drains", publish_rate=5, prefill=600, consumers=2, job_s=0.005, prefetch=10),
    Scenario("growing backlog", publish_rate=30, consumers=1, job_s=0.06, prefetch=1),
    Scenario("no consumers", publish_rate=5),
    Scenario("stalled backlog", prefill=40),                   # nobody consumes, nothing arrives: flat
    Scenario("idle, no consumers"),                            # empty, nobody attached: nothing to do
    Scenario("dead letters", publish_rate=10, consumers=1, job_s=0.005, prefetch=5, reject_every=4),
    Scenario("old dead letters", publish_rate=10, consumers=1, job_s=0.005, prefetch=5, dlq_prefill=10),
    Scenario("slow consumers", publish_rate=0, prefill=400, consumers=1, job_s=0.02, prefetch=1),
    Scenario("redeliveries", publish_rate=10, consumers=1, job_s=0.005, prefetch=5, requeue_every=3),
    Scenario("unacked stuck", publish_rate=2, consumers=1, prefetch=5, hold=True),
]
"""Each rule of :func:`voicelab.alerts.default_rules` has a scenario built to trip it (:data:`TRIPS`)."""

TRIPS = {"backlog growing": "growing backlog", "no consumers": "no consumers", "DLQ growing": "dead letters",
         "low utilisation": "slow consumers", "drain too slow": "growing backlog", "redelivering": "redeliveries",
         "unacked stuck": "unacked stuck", "oldest message": "no consumers"}
"""Rule -> the scenario made to trip it."""

RATE_S = 2.0
"""``publish_rate`` and ``ack_rate`` are computed over this many seconds of counters."""


def _queue_rows(prom: Prometheus, queues: list[str], t: float, vhost: str) -> list[dict[str, Any]]:
    table, now = prom.queue_stats(vhost), time.time()
    rows = []
    for name in queues:
        nan = float("nan")  # Prometheus has no figure for a queue until its first stats emission (about 1 s)
        p = table.loc[name].to_dict() if name in table.index else {}
        dlq = table.loc[dlq_name(name), "ready"] if dlq_name(name) in table.index else nan
        head = p.get("head_timestamp", nan)    # Unix seconds of the oldest message's timestamp property
        rows.append({"t": t, "queue": name, **{c: p.get(c, nan) for c in ("ready", "unacked", "consumers")},
                     "dlq_ready": dlq, "utilisation": p.get("utilisation", nan),
                     **{c: p.get(c, nan) for c in ("published", "acked", "redelivered")},
                     "oldest_age_s": now - head if head > 0 else nan})
    return rows


def with_rates(samples: pd.DataFrame, over_s: float = RATE_S) -> pd.DataFrame:
    """Add ``publish_rate`` and ``ack_rate`` (msg/s): each counter's growth over the last ``over_s`` s, per queue,
    as Prometheus's ``rate()`` would (NaN until ``over_s`` s of samples exist, or across a counter reset)."""
    out = []
    for _, part in samples.groupby("queue", sort=False):
        part = part.sort_values("t").copy()
        back = pd.merge_asof(part[["t"]].assign(t_back=part["t"] - over_s), part.rename(columns={"t": "t0"}),
                             left_on="t_back", right_on="t0", direction="backward")
        dt = part["t"].to_numpy() - back["t0"].to_numpy()
        for counter, rate in (("published", "publish_rate"), ("acked", "ack_rate")):
            r = (part[counter].to_numpy() - back[counter].to_numpy()) / dt
            part[rate] = pd.Series(r, index=part.index).where(lambda x: x >= 0)
        out.append(part)
    return pd.concat(out).sort_index() if out else samples.assign(publish_rate=[], ack_rate=[])


def record(broker: Broker, queues: list[str], seconds: float, every: float = 0.5,
           on_tick: Callable[[float], None] | None = None) -> pd.DataFrame:
    """Sample ``queues`` for ``seconds``: one scrape of ``/metrics/detailed`` per tick for all queues at once
    (:meth:`voicelab.monitoring.Prometheus.queue_stats`: depths, consumers, DLQ depth, consumer capacity,
    publish, ack and redelivery counters), then the rates (:func:`with_rates`).

    Not the management API: its figures change only every 5 s (its sample granularity, measured in
    notebook 07), so a 0.5 s poll of ``/api/queues`` would fetch the same figures ten times, and its rates
    lag 5 to 10 s; one scrape per tick also halves the requests (this recorder used to make both).
    """
    prom = Prometheus.of(broker)
    vhost = broker.vhost
    rows: list[dict[str, Any]] = []
    try:
        t0, tick = time.monotonic(), 0
        while True:
            t = time.monotonic() - t0
            rows += _queue_rows(prom, queues, t, vhost)
            if on_tick is not None:
                on_tick(t)
            tick += 1
            if t >= seconds:
                break
            time.sleep(max(0.0, t0 + tick * every - time.monotonic()))
    finally:
        prom.close()
    return with_rates(pd.DataFrame(rows, columns=[c for c in COLUMNS if not c.endswith("_rate")]))[COLUMNS]


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
            if s.dlq_prefill:
                publish_bodies(channel, dlq_name(s.queue), [b"dead"] * s.dlq_prefill, confirm=False)
    _wait_visible(broker, {**{s.queue: s.prefill for s in scenarios if s.prefill},
                           **{dlq_name(s.queue): s.dlq_prefill for s in scenarios if s.dlq_prefill}})
    try:
        for s in scenarios:
            for i in range(s.consumers):
                threads.append(threading.Thread(
                    target=consume_jobs, args=(broker, s.queue, s.job_s, stop), daemon=True,
                    kwargs=dict(prefetch=s.prefetch, errors=errors, reject_every=s.reject_every,
                                requeue_every=s.requeue_every, hold=s.hold,
                                name=f"voicelab consumer {s.queue} {i + 1}")))
            if s.publish_rate:
                threads.append(threading.Thread(target=publish_paced, args=(broker, s.queue, s.publish_rate, stop, errors),
                                                daemon=True))
        for t in threads:
            t.start()
        with broker.connect() as connection:   # record from the moment every consumer listens: on a starved
            channel = connection.channel()      # machine one attached seconds late, and 'no consumers' fired
            for s in scenarios:
                if s.consumers:
                    wait_for_consumers(channel, s.queue, s.consumers, timeout=60)

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


BURST_WITHIN_S = 3.0
"""A burst "drains by itself" when it is gone within the 3 s the default rules hold a condition for (what stands
for the minutes of production rules): :func:`low_utilisation` fires on any backlog that outlasts them, since
consumers working through a backlog are busy, which is what a low consumer capacity means."""


def burst_drain_s(samples: pd.DataFrame, scenario: str = "burst that drains", below: int = 20) -> float:
    """How long the burst scenario's backlog lasted once its consumers were attached: from the first sample
    with a consumer to the first with fewer than ``below`` messages ready (inf if it never got there)."""
    s = samples[samples["scenario"] == scenario].sort_values("t")
    attached = s.loc[s["consumers"] > 0, "t"]
    if attached.empty:
        return math.inf
    drained = s.loc[(s["t"] >= attached.iloc[0]) & (s["ready"] < below), "t"]
    return float(drained.iloc[0] - attached.iloc[0]) if not drained.empty else math.inf


def spoiled(samples: pd.DataFrame) -> list[str]:
    """Why a :func:`run_scenarios` run does not show what its scenarios are built to show on this machine
    (empty if it does): a starved machine slows the burst's consumers until the burst outlasts the rules'
    hold time, and then it is a backlog, not a burst."""
    reasons = []
    if "burst that drains" in set(samples["scenario"]):
        took = burst_drain_s(samples)
        if took >= BURST_WITHIN_S:
            reasons.append(f"the burst took {took:.1f} s to drain, not less than {BURST_WITHIN_S:g} s: the machine "
                           "starved its consumers (a backlog that lasts as long as the rules hold a condition is "
                           "not a burst)")
    return reasons


BURST_TARGET_S = 1.5
"""How long the burst should take to drain at its consumers' measured rate (:func:`size_burst`): half the rules'
hold time, the other half for the consumers' start and figures up to 1 s old."""


def size_burst(broker: Broker, scenarios: list[Scenario]) -> tuple[list[Scenario], str]:
    """``scenarios`` with the burst's prefill sized to drain in about :data:`BURST_TARGET_S` s at the rate its
    consumers ack on this machine now (measured first, :func:`voicelab.lab.backlog.consumer_capacity`), at most
    its 600 and at least 150 (well above the guide's 100); and what was measured."""
    from .backlog import consumer_capacity   # backlog's measurement, with the burst's consumers

    out, said = [], ""
    for s in scenarios:
        if s.name == "burst that drains" and s.prefill:
            rate = consumer_capacity(broker, "alerts.capacity", consumers=s.consumers, job_s=s.job_s,
                                     prefetch=s.prefetch, n=200)
            prefill = int(min(s.prefill, max(150, rate * BURST_TARGET_S)))
            said = f"the burst's consumers acked {rate:.0f} msg/s on this machine: a burst of {prefill}"
            s = replace(s, prefill=prefill)
        out.append(s)
    return out, said


def run_scenarios_fairly(broker: Broker, scenarios: list[Scenario] | None = None, seconds: float = 9.0,
                         attempts: int = 2, **kwargs: Any) -> pd.DataFrame:
    """:func:`run_scenarios` with the burst sized for this machine (:func:`size_burst`), run once more when the
    machine, not the rules, spoiled the run anyway (:func:`spoiled`). Returns the last run;
    ``samples.attrs["notes"]`` says what was measured and why an earlier run was discarded."""
    notes: list[str] = []
    for attempt in range(1, attempts + 1):
        sized, said = size_burst(broker, SCENARIOS if scenarios is None else scenarios)
        notes += [f"attempt {attempt}: {said}"] if said else []
        samples = run_scenarios(broker, sized, seconds, **kwargs)
        reasons = spoiled(samples)
        notes += [f"attempt {attempt} spoiled: {r}" for r in reasons]
        if not reasons:
            break
    samples.attrs["notes"] = notes
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
    ncols = min(len(names), 6)
    nrows = -(-len(names) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.1 * ncols + 1, 3.0 * nrows + 0.6), sharex=True, squeeze=False)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
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
    for row in axes:
        row[0].set_ylabel("messages (ready + unacked)")
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 8), fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.35 / fig.get_figheight()))
    fig.suptitle(title or "Each rule, on every sample: squares mark where it fired", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.9 / fig.get_figheight()))
    add_caption(fig, caption)
    return fig




# ---------------------------------------------------------------------------
# The node: quiet, unroutable messages, connection churn; a memory alarm on a broker of its own
# ---------------------------------------------------------------------------

NODE_TRIPS = {"unroutable": "unroutable", "connection churn": "connection churn",
              "resource alarm": "memory alarm", "publishers blocked": "memory alarm"}
"""Node rule -> the phase made to trip it (:func:`run_node_phases`, :func:`run_alarm_phases`; the disk alarm
phase trips "resource alarm" too)."""


def record_node(broker: Broker, phases: list[tuple[str, float, Callable[[threading.Event], None] | None]],
                every: float = 0.25) -> pd.DataFrame:
    """Run ``phases`` one after the other (``(name, seconds, action)``: ``action(stop)`` runs in a thread for the
    phase, until ``stop`` is set) and sample the node every ``every`` s: one scrape of ``/metrics``
    (:meth:`voicelab.monitoring.Prometheus.node_stats`) and the connections' states from the management
    API. One row per sample (:data:`voicelab.alerts.NODE_COLUMNS`, ``queue`` = ``"node"``) with its ``phase``."""
    prom, mgmt = Prometheus.of(broker), Management(broker)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    try:
        for name, seconds, action in phases:
            stop, errors = threading.Event(), []  # type: ignore[var-annotated]

            def run(action=action, stop=stop, errors=errors) -> None:
                try:
                    action(stop)
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)

            thread = threading.Thread(target=run, daemon=True) if action else None
            if thread:
                thread.start()
            end = time.monotonic() + seconds
            try:
                while time.monotonic() < end:
                    tick = time.monotonic()
                    states = mgmt.connection_states()
                    rows.append({"t": tick - t0, "queue": "node", "phase": name, **prom.node_stats(),
                                 "blocked": states.get("blocked", 0) + states.get("blocking", 0)})
                    if errors:
                        raise RuntimeError(f"the {name!r} phase failed") from errors[0]
                    time.sleep(max(0.0, tick + every - time.monotonic()))
            finally:
                stop.set()
                if thread:
                    thread.join(10)
    finally:
        prom.close()
        mgmt.close()
    return pd.DataFrame(rows)


def publish_unroutable(broker: Broker, rate: float = 20.0) -> Callable[[threading.Event], None]:
    """An action: publish ``rate`` messages/s to ``amq.direct`` with a routing key no queue is bound with
    (message ``i`` at ``i / rate`` s: a slow publish makes the next one late, not the rate lower)."""
    def action(stop: threading.Event) -> None:
        with broker.connect() as connection:
            channel = connection.channel()
            t0, i = time.monotonic(), 0
            while not stop.wait(max(0.0, t0 + i / rate - time.monotonic())):
                channel.basic_publish("amq.direct", "voice.jobs.typo", b"lost")
                i += 1
    return action


def connect_seconds(broker: Broker, n: int = 3) -> float:
    """How long opening a connection and a channel, then closing them, takes on this machine now (the slowest
    of ``n``): a loaded machine takes far longer than the few milliseconds of an idle one."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        with broker.connect() as connection:
            connection.channel()
        times.append(time.monotonic() - t0)
    return max(times)


def churn_connections(broker: Broker, rate: float = 15.0, clients: int = 1) -> Callable[[threading.Event], None]:
    """An action: ``clients`` clients that open and close ``rate`` connections/s in all, each with a channel
    (clients that connect per publish). Client ``k`` opens its ``i``-th connection at ``(k + i * clients) / rate``
    s; one client alone cannot open more than one connection per connect time (:func:`connect_seconds`), so
    :func:`run_node_phases` runs as many clients as the rate needs on this machine."""
    def client(k: int, stop: threading.Event, errors: list[BaseException]) -> None:
        try:
            t0, i = time.monotonic(), 0
            while not stop.wait(max(0.0, t0 + (k + i * clients) / rate - time.monotonic())):
                with broker.connect() as connection:
                    connection.channel()
                i += 1
        except BaseException as e:  # noqa: BLE001 - raised by the action
            errors.append(e)

    def action(stop: threading.Event) -> None:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=client, args=(k, stop, errors), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    return action


def run_node_phases(broker: Broker, phase_s: float = 2.5, churn_rate: float = 15.0, attempts: int = 2) -> pd.DataFrame:
    """Three phases of ``phase_s`` s on ``broker``: quiet, unroutable messages (20/s), connection churn
    (``churn_rate`` connections/s, three times what :func:`voicelab.alerts.connection_churn` fires at).

    The churn needs enough clients: one client opens a connection per connect time, a few milliseconds
    on an idle machine, a few hundred on a loaded one (measured here first, :func:`connect_seconds`), and
    more while the sampler's threads take their share of the interpreter, so the phase runs four times the
    clients that time calls for, at least four. Run once more if the machine spoiled the run
    anyway (:func:`node_spoiled`); ``samples.attrs["notes"]`` says what was measured and why."""
    notes: list[str] = []
    for attempt in range(1, attempts + 1):
        connect_s = connect_seconds(broker)
        clients = max(4, min(20, math.ceil(4 * churn_rate * connect_s)))
        notes.append(f"attempt {attempt}: a connection took {1000 * connect_s:.0f} ms: {clients} churning client(s)")
        samples = record_node(broker, [("quiet", phase_s, None), ("unroutable", phase_s, publish_unroutable(broker)),
                                       ("connection churn", phase_s, churn_connections(broker, churn_rate, clients))])
        reasons = node_spoiled(samples, churn_at_least=churn_rate * 2 / 3)
        notes += [f"attempt {attempt} spoiled: {r}" for r in reasons]
        if not reasons:
            break
    samples.attrs["notes"] = notes
    return samples


def node_spoiled(samples: pd.DataFrame, churn_at_least: float = 10.0, max_gap_s: float = 1.5) -> list[str]:
    """Why node samples of :func:`run_node_phases` do not show what the phases are built to show on this
    machine (empty if they do): samples of a busy phase more than ``max_gap_s`` apart (a starved sampler: the
    node rules judge a rate over a 2 s window, so they need two samples well inside it), or a churn phase that opened fewer than ``churn_at_least`` connections/s by the broker's
    count (a starved client; the rule fires above 5/s)."""
    reasons = []
    busy = samples[samples["phase"] != "quiet"]   # the phases whose rules must fire (quiet asks for silence)
    gaps = busy.groupby("phase", sort=False)["t"].apply(lambda t: t.diff().max())
    for phase, gap in gaps.items():
        if gap > max_gap_s:
            reasons.append(f"samples of the {phase!r} phase came up to {gap:.1f} s apart (a starved sampler)")
    churn = samples[samples["phase"] == "connection churn"]
    if len(churn) >= 2:
        rate = (churn["connections_opened"].iloc[-1] - churn["connections_opened"].iloc[0]) / (
            churn["t"].iloc[-1] - churn["t"].iloc[0])
        if rate < churn_at_least:
            reasons.append(f"the churn phase opened {rate:.1f} connections/s, not {churn_at_least:g} (starved clients)")
    return reasons


def blocked_publisher(broker: Broker, seen: dict[str, Any]) -> Callable[[threading.Event], None]:
    """An action: a publisher that tries to publish once a second; ``seen["blocked"]`` is set to the reason of
    the ``connection.blocked`` the broker sends it."""
    def action(stop: threading.Event) -> None:
        with broker.connect(client_properties={"connection_name": "voicelab blocked publisher"}) as connection:
            connection.add_on_connection_blocked_callback(
                lambda conn, frame: seen.setdefault("blocked", frame.method.reason))
            channel = connection.channel()
            channel.queue_declare("voicelab.alarm_demo", durable=True)
            while not stop.is_set():
                channel.basic_publish("", "voicelab.alarm_demo", b"job")
                connection.process_data_events(0.2)
    return action


def run_alarm_phases(broker: Broker, quiet_s: float = 1.5, alarm_s: float = 10.0, disk_s: float = 5.0,
                     watermark: str = "0.0001") -> tuple[pd.DataFrame, dict[str, Any]]:
    """On a broker voicelab controls (it changes node-wide settings), with a publisher running throughout:

    1. ``quiet`` for ``quiet_s`` s;
    2. ``memory alarm`` for ``alarm_s`` s: ``rabbitmqctl set_vm_memory_high_watermark <watermark>``, far below
       what the node uses (``alarm_s`` covers the management API's 5 s granularity: it lists a connection's
       new state that late);
    3. ``disk alarm`` for ``disk_s`` s: the watermark back to the version's default, and
       ``rabbitmqctl set_disk_free_limit`` to twice the free disk space;

    then the disk limit back to what it was. Returns the node samples and ``seen``: the reason of the
    ``connection.blocked`` the publisher was sent (``"blocked"``), and the status of
    ``/api/health/checks/alarms`` in each alarm (``"memory alarms check"``, ``"disk alarms check"``).
    """
    seen: dict[str, Any] = {}
    default = "0.4" if broker.version_info < (4, 0) else "0.6"   # rabbit's defaults (deps/rabbit/Makefile)
    publisher_stop, errors = threading.Event(), []  # type: ignore[var-annotated]
    prom = Prometheus.of(broker)
    try:
        before = prom.node_stats()
    finally:
        prom.close()

    def ctl(*args: str) -> None:
        code, out = broker._rabbitmqctl(*args)
        if code != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {out}")

    def alarms_check(key: str) -> None:
        mgmt = Management(broker)
        try:
            seen[key] = mgmt.session.get(f"{mgmt.base}/health/checks/alarms", timeout=mgmt.timeout).status_code
        finally:
            mgmt.close()

    def publisher() -> None:
        try:
            blocked_publisher(broker, seen)(publisher_stop)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def memory_alarm(stop: threading.Event) -> None:
        ctl("set_vm_memory_high_watermark", watermark)
        alarms_check("memory alarms check")

    def disk_alarm(stop: threading.Event) -> None:
        ctl("set_vm_memory_high_watermark", default)
        ctl("set_disk_free_limit", str(int(2 * before["disk_free"])))
        alarms_check("disk alarms check")

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        samples = record_node(broker, [("quiet", quiet_s, None), ("memory alarm", alarm_s, memory_alarm),
                                       ("disk alarm", disk_s, disk_alarm)])
    finally:
        broker._rabbitmqctl("set_vm_memory_high_watermark", default)
        broker._rabbitmqctl("set_disk_free_limit", str(int(before["disk_free_limit"])))
        publisher_stop.set()
        thread.join(10)
    if errors:
        raise RuntimeError("the publisher failed") from errors[0]
    return samples, seen


def fired_in_phase(evaluations: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Phase x rule: True if the rule fired at a sample of that phase."""
    phase = dict(zip(samples["t"], samples["phase"]))
    ev = evaluations.assign(phase=evaluations["t"].map(phase))
    return ev.pivot_table(index="phase", columns="rule", values="firing", aggfunc="any", sort=False)
