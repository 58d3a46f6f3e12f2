"""Consumer health on the real broker: the guide's check is wrong both ways, voicelab's judge is right;
and the broker's own health-check endpoints."""

from __future__ import annotations

import pytest

from voicelab import broker as vb
from voicelab import health
from voicelab.lab import health_scenarios


def test_guide_check_calls_idle_dead_and_stuck_alive_judge_does_not(any_broker: vb.Broker) -> None:
    checks = health_scenarios.health_scenarios(any_broker, "health_test", window_s=1.0)
    idle, stuck = checks.loc["idle consumer, empty queue"], checks.loc["consumer stuck in a job"]
    assert not idle["guide says healthy"] and idle["voicelab says healthy"], idle.to_dict()
    assert stuck["guide says healthy"] and not stuck["voicelab says healthy"], stuck.to_dict()
    assert stuck["ready"] == 20 and "stuck" in stuck["voicelab's reason"]
    assert idle["probe done in s"] < 1.0, "the consumer the guide calls dead did the next job at once"
    assert stuck["done later"] == 0 and stuck["ready later"] == 20, "the one it calls healthy did nothing"


def test_broker_health_checks_pass_and_a_missing_listener_fails(any_broker: vb.Broker) -> None:
    checks = health.broker_checks(any_broker, extra={"nobody": "health/checks/port-listener/1"})
    core = ["alarms", "local-alarms", "virtual-hosts", "port-listener", "protocol-listener"]
    assert (checks.loc[core, "status"] == 200).all(), checks
    assert checks.loc["nobody", "status"] == 503
    if any_broker.version_info < (4, 1):
        assert checks.loc["ready-to-serve-clients", "status"] == 404, "added in 4.1"
    else:
        assert checks.loc["ready-to-serve-clients", "status"] == 200


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions


def test_aliveness_test_is_real_before_4_0_6_only() -> None:
    assert health.aliveness_test_is_real("3.10.8") and health.aliveness_test_is_real("4.0.5")
    assert not health.aliveness_test_is_real("4.0.6") and not health.aliveness_test_is_real("4.1.0")
    assert not health.aliveness_test_is_real("4.3.6")
    assert health.version_tuple("4.1.0-rc.1") == (4, 1, 0)


def test_aliveness_test_leaves_its_queue_where_it_is_real(any_broker: vb.Broker) -> None:
    from voicelab.management import Management
    mgmt = Management(any_broker)
    try:
        queue = f"{mgmt.base}/queues/%2F/aliveness-test"
        mgmt.session.delete(queue, timeout=mgmt.timeout)
        assert mgmt.session.get(f"{mgmt.base}/aliveness-test/%2F", timeout=mgmt.timeout).status_code == 200
        left = mgmt.session.get(queue, timeout=mgmt.timeout).status_code == 200
        assert left == health.aliveness_test_is_real(any_broker.version), any_broker.version
        mgmt.session.delete(queue, timeout=mgmt.timeout)
    finally:
        mgmt.close()
