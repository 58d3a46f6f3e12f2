"""Monitoring on the real endpoints: the passive declare, the management API and Prometheus (the library), and
how fresh each is (notebook 07's backlog experiment, in the lab)."""

from __future__ import annotations

import pytest

import time

import pandas as pd

from voicelab import broker as vb
from voicelab import monitoring as mon
from voicelab.lab import backlog
from voicelab.management import Management
from voicelab.queues import refill


def test_passive_view_reports_ready_and_consumers_only(channel) -> None:
    refill(channel, "mon_passive", range(5))
    assert mon.passive_view(channel, "mon_passive") == {"ready": 5, "consumers": 0}
    channel.queue_delete("mon_passive")


def test_prometheus_is_aggregated_on_metrics_and_per_queue_on_detailed(any_broker: vb.Broker) -> None:
    with any_broker.connect() as connection:
        refill(connection.channel(), "mon_prom", range(7))
    prom = mon.Prometheus.of(any_broker)
    try:
        deadline = time.monotonic() + 10
        while prom.queue("mon_prom")["ready"] != 7:
            assert time.monotonic() < deadline, f"Prometheus never showed 7 ready: {prom.queue('mon_prom')}"
            time.sleep(0.2)
        agg = prom.samples("/metrics")
        ready = agg[agg["name"] == "rabbitmq_queue_messages_ready"]
        assert len(ready) == 1 and ("queue" not in ready or ready["queue"].isna().all())
    finally:
        prom.close()
        with any_broker.connect() as connection:
            connection.channel().queue_delete("mon_prom")


def _settled(views: pd.DataFrame) -> bool:
    both = views.loc[["management API", "Prometheus"], ["unacked", "consumers"]].values.tolist() == [[4, 1], [4, 1]]
    return both and views.loc["management API", "connections"] >= 1 and views.loc["Prometheus", "channels"] >= 1


def test_three_views_agree_once_settled_and_passive_misses_unacked(any_broker: vb.Broker) -> None:
    with any_broker.connect() as connection:
        refill(connection.channel(), "mon_views", range(12))
    try:
        with any_broker.connect() as holder:   # a consumer holds 4 messages unacked
            hold = holder.channel()
            hold.basic_qos(prefetch_count=4)
            hold.basic_consume("mon_views", lambda ch, method, props, body: None)
            # consumers and unacked come from separate statistics (seen: unacked 4 with consumers still 0)
            Management(any_broker).wait_for(
                "mon_views", lambda q: q.get("messages_unacknowledged") == 4 and q.get("consumers") == 1, timeout=20)
            deadline = time.monotonic() + 30
            # each figure from its own statistics, refreshed on its own (seen: the overview's connection count
            # still 0 with the queue's figures in): wait until every one has caught up
            while not _settled(views := backlog.three_views(any_broker, "mon_views")):
                assert time.monotonic() < deadline, views
                time.sleep(0.2)
        assert views.loc["passive declare", "ready"] == 8, "the passive declare counts ready messages only"
        for source in ("management API", "Prometheus"):
            assert views.loc[source, ["ready", "unacked", "consumers"]].tolist() == [8, 4, 1], views
        assert views.loc["management API", "connections"] >= 1 and views.loc["Prometheus", "channels"] >= 1
    finally:
        with any_broker.connect() as connection:
            connection.channel().queue_delete("mon_views")


def _change_intervals(samples: pd.DataFrame, col: str) -> pd.Series:
    changed = samples.loc[samples[col].ne(samples[col].shift()) & samples[col].notna(), "t"]
    return changed.diff().dropna()


def _backlog(broker: vb.Broker) -> tuple[backlog.BacklogRun, backlog.LiveView, dict[str, float]]:
    """A backlog run and its drain estimate, as notebook 07 runs it: the publish rate sized from the consumers'
    measured capacity, and run again once if a busy machine starved the sampler or the consumers anyway
    (:func:`backlog.run_backlog_fairly`; ``run.notes`` says what happened)."""
    live = backlog.LiveView(every=1.0)   # as the notebook: each redraw takes CPU from the consumers' threads
    run = backlog.run_backlog_fairly(broker, "mon_backlog", publish_rate=30, ramp_s=6.0, consumers=2, job_s=0.025,
                                     tail_s=5.2, on_sample=live)
    try:
        pred = backlog.drain_prediction(run)   # how close it came: notebook 07 shows it
    except ValueError as e:
        raise AssertionError(f"{e}; {run.notes}") from e
    return run, live, pred


@pytest.mark.ends_versions   # the management API's and Prometheus' freshness on 3.x and 4.x (4.0 is 4.3's twin here)
def test_backlog_freshness_drain_prediction_and_live_view(any_broker: vb.Broker) -> None:
    run, live, pred = _backlog(any_broker)
    try:
        assert run.empty_at is not None and run.empty_at > run.consumers_at
        assert live.redraws >= 2 and live.fig.axes, "the view redrew during the run and drew the final figure"
        stale = backlog.staleness(run).groupby("source")["staleness_s"]
        # bounds that separate the sources (current / about 1 s / 5 s), with room for a busy machine: notebook 07
        # shows the measured figures
        assert stale.median()["passive declare"] <= 0.25
        assert stale.max()["Prometheus"] < min(4.0, stale.max()["management API"]), stale.max()
        assert _change_intervals(run.samples, "prom_ready").median() < 2.0
        assert _change_intervals(run.samples, "mgmt_ready").median() >= 4.0, "management figures step every 5 s"
        assert pred["departures_per_s"] > pred["arrivals_per_s"] > 0, (pred, run.notes)
        net = pred["departures_per_s"] - pred["arrivals_per_s"]
        assert pred["predicted_drain_s"] == pytest.approx(pred["depth"] / net), pred
        assert pred["wait_s"] == pytest.approx(pred["depth"] / pred["departures_per_s"]), pred
        net_after = pred["departures_after_per_s"] - pred["arrivals_after_per_s"]
        assert net_after * pred["measured_drain_s"] == pytest.approx(pred["depth"]), "the rest of the drain adds up"
    finally:
        with any_broker.connect() as connection:
            connection.channel().queue_delete("mon_backlog")


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
