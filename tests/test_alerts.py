"""Alert rules evaluated on data recorded from real queues: each fires on the workload built to trip it,
none fires on a healthy queue or a burst that drains; the guide's fixed depth gets both wrong."""

from __future__ import annotations

import pandas as pd
import pytest

from voicelab import alerts
from voicelab import broker as vb
from voicelab.lab import alert_scenarios


@pytest.fixture(scope="module")
def samples(any_broker: vb.Broker) -> pd.DataFrame:
    # the burst sized from its consumers' measured rate, and run once more if a starved machine made it outlast
    # the rules' hold time anyway (then it is a backlog, not a burst)
    return alert_scenarios.run_scenarios_fairly(any_broker, seconds=9.0)


@pytest.fixture(scope="module")
def fired(samples: pd.DataFrame) -> pd.DataFrame:
    rules = {**alerts.default_rules(), "guide": alert_scenarios.guide_rule()}
    return alert_scenarios.fired(alerts.evaluate(rules, samples))


def test_each_rule_fires_on_its_scenario_and_stays_quiet_when_healthy(samples: pd.DataFrame,
                                                                       fired: pd.DataFrame) -> None:
    assert set(alert_scenarios.TRIPS) == set(alerts.default_rules())
    for rule, scenario in alert_scenarios.TRIPS.items():
        assert fired.loc[scenario, rule], (rule, fired)
        assert not fired.loc["healthy", rule], (rule, fired)
    # the burst must have been one on this machine (drained within the rules' hold time) for the rules to owe silence
    assert not alert_scenarios.spoiled(samples), (alert_scenarios.spoiled(samples), samples.attrs["notes"])
    for rule in alert_scenarios.TRIPS:
        assert not fired.loc["burst that drains", rule], (rule, fired)
    assert fired.loc["burst that drains", "guide"] and not fired.loc["no consumers", "guide"]


def test_no_consumers_needs_waiting_messages_and_dlq_alerts_on_growth(fired: pd.DataFrame) -> None:
    assert fired.loc["stalled backlog", "no consumers"] and not fired.loc["stalled backlog", "backlog growing"]
    assert not fired.loc["idle, no consumers"].any(), fired.loc["idle, no consumers"]
    assert not fired.loc["old dead letters", "DLQ growing"]


def test_node_rules_fire_on_their_phase_only(any_broker: vb.Broker) -> None:
    node = alert_scenarios.run_node_phases(any_broker)   # once more if the machine starved the sampler or the churn
    fired = alert_scenarios.fired_in_phase(alerts.evaluate(alerts.node_rules(), node, window_s=2.0, required=()), node)
    assert not alert_scenarios.node_spoiled(node, churn_at_least=10.0), node.attrs["notes"]
    for rule in ("unroutable", "connection churn"):
        assert fired.loc[rule, rule] and not fired.loc["quiet", rule], (fired.to_dict(), node.attrs["notes"])
    assert not fired[["resource alarm", "publishers blocked", "file descriptors"]].any().any(), fired
    last = node.iloc[-1]
    assert 0 < last["fds_used"] < last["fds_limit"]
    assert (last["sockets_limit"] > 0) if any_broker.version_info < (4, 0) else pd.isna(last["sockets_limit"])


# What these tests check differs between RabbitMQ 3.x and 4.x (4.0 does what 4.3 does here): run them at both
# ends, 3.10 and 4.3 (see conftest; VOICELAB_ALL_VERSIONS=1 adds 4.0).
pytestmark = pytest.mark.ends_versions
