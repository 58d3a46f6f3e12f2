"""Alert rules evaluated on data recorded from real queues: each fires on the workload built to trip it,
none fires on a healthy queue or a burst that drains; the guide's fixed depth gets both wrong."""

from __future__ import annotations

import pytest

from voicelab import alerts
from voicelab.lab import alert_scenarios
from voicelab import broker as vb
from voicelab.exercises import ch07

EXPECTED = {"backlog growing": "growing backlog", "no consumers": "no consumers", "DLQ not empty": "dead letters",
            "low utilisation": "slow consumers", "drain too slow": "growing backlog"}


def test_each_rule_fires_on_its_scenario_and_stays_quiet_when_healthy(any_broker: vb.Broker) -> None:
    samples = alert_scenarios.run_scenarios(any_broker, seconds=9.0)
    rules = {**alerts.default_rules(), "guide": alert_scenarios.guide_rule()}
    fired = alert_scenarios.fired(alerts.evaluate(rules, samples))
    for rule, scenario in EXPECTED.items():
        assert fired.loc[scenario, rule], (rule, fired)
        assert not fired.loc["healthy", rule], (rule, fired)
        assert not fired.loc["burst that drains", rule], (rule, fired)
    assert fired.loc["burst that drains", "guide"] and not fired.loc["no consumers", "guide"]


def test_rules_on_the_recorded_scenarios() -> None:
    fired = alert_scenarios.fired(alerts.evaluate(alerts.default_rules(), ch07.recorded()))
    assert fired.loc["growing backlog", "backlog growing"] and fired.loc["no consumers", "no consumers"]
    assert not fired.loc["healthy"].any() and not fired.loc["burst that drains"].any(), fired


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
