"""ch07's checker (an alert rule that is right) on live scenarios: wrong rules fail with a reason that names
their mistake, sound ones pass, on every RabbitMQ version.

The scenarios are recorded once per broker (:func:`voicelab.exercises.ch07.record`, 10 s on the real broker)
and every rule is judged on that recording; the whole checker (recording included) runs for the reference
and one wrong rule.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from voicelab import alerts
from voicelab import broker as vb
from voicelab.exercises import ch07
from voicelab.exercises.core import Wrong


@pytest.fixture(scope="module")
def samples(any_broker: vb.Broker) -> pd.DataFrame:
    return ch07.record(any_broker)


def _growing(window: pd.DataFrame) -> bool:
    g = alerts.slope(window, 3.0)
    return bool(alerts.depth(window).iloc[-1] > 20 and g > 1.0)


def fixed_depth(window):
    """The guide's rule: more than 100 ready."""
    return window["ready"].iloc[-1] > 100


def growth_only(window):
    """Wrong: a growing backlog only; a queue nobody consumes that does not grow is missed."""
    return _growing(window)


def consumers_missing(window):
    """Wrong: no consumer for 2 s, whatever waits (an empty queue pages someone)."""
    last = window[window["t"] >= window["t"].iloc[-1] - 2.0]
    return bool((last["consumers"] == 0).all()) and window["t"].iloc[-1] - window["t"].iloc[0] >= 2.0


def publish_over_ack(window):
    """Wrong: arrivals above acks for 2 s; misses a stalled backlog (nothing arrives, nothing acked)."""
    last = window[window["t"] >= window["t"].iloc[-1] - 2.0]
    return len(last) >= 4 and bool((last["publish_rate"] > last["ack_rate"] + 2).all())


def ready_above_50(window):
    """Wrong: a lower fixed threshold, 50 ready: the burst still pages."""
    return bool(window["ready"].iloc[-1] > 50)


WRONG = {
    fixed_depth: ("burst that drains", "fixed depth threshold"),
    ready_above_50: ("burst that drains", "fixed depth threshold"),
    growth_only: ("never fired", "stalled backlog", "does not change"),
    consumers_missing: ("fired on the live 'idle, no consumers'", "no work waits"),
    publish_over_ack: ("never fired", "stalled backlog", "publish rates"),
}


def sound_rates(window):
    """Sound: arrivals above acks by 2/s for 2 s, or messages waiting with no consumer for 2 s."""
    last = window[window["t"] >= window["t"].iloc[-1] - 2.0]
    if window["t"].iloc[-1] - window["t"].iloc[0] < 2.0:
        return False
    nobody = bool((last["consumers"] == 0).all() and (alerts.depth(last) > 0).all())
    return nobody or (len(last) >= 4 and bool((last["publish_rate"] > last["ack_rate"] + 2).all()))


def sound_acks_at_zero(window):
    """Sound: a growing backlog, or ready messages and no ack for 2 s (the issue's 'acks at 0')."""
    if window["t"].iloc[-1] - window["t"].iloc[0] < 2.0:
        return False
    acked = alerts.increase(window, "acked", 2.0)
    return _growing(window) or bool(window["ready"].iloc[-1] > 0 and acked == 0)


def sound_library(window):
    """Sound: voicelab's own rules, composed."""
    return bool(alerts.backlog_growing()(window) or alerts.no_consumers()(window))


def sound_drain_time(window):
    """Sound: more than 10 waiting that will not drain in 20 s at the rate the depth changes."""
    g = alerts.slope(window, 3.0)
    d = alerts.depth(window).iloc[-1]
    return bool(not np.isnan(g) and d > 10 and alerts.predicted_drain_s(d, -g, 0) > 20)


SOUND = [ch07.alert, sound_rates, sound_acks_at_zero, sound_library, sound_drain_time]


@pytest.mark.parametrize("rule", list(WRONG), ids=lambda r: r.__name__)
def test_wrong_rule_fails_with_its_mistake_named(samples: pd.DataFrame, rule) -> None:
    with pytest.raises(Wrong) as failed:
        ch07.judge(rule, samples)
    for words in WRONG[rule]:
        assert words in str(failed.value), str(failed.value)


@pytest.mark.parametrize("rule", SOUND, ids=lambda r: r.__name__)
def test_sound_rule_passes(samples: pd.DataFrame, rule) -> None:
    ch07.judge(rule, samples)


def test_the_scenarios_are_what_the_exercise_says(samples: pd.DataFrame) -> None:
    last = samples.groupby("scenario").last()
    first = samples[samples["t"] > 1.5].groupby("scenario").first()
    assert last.loc["stalled backlog", "ready"] == first.loc["stalled backlog", "ready"] == 40
    assert last.loc["stalled backlog", "consumers"] == 0
    assert last.loc["idle, no consumers", ["ready", "unacked", "consumers"]].sum() == 0
    assert last.loc["no consumers", "ready"] > first.loc["no consumers", "ready"]


def test_the_whole_check_passes_the_reference(as_shared: vb.Broker) -> None:
    result = ch07.q1.run(ch07.alert)
    assert result.passed, result.message
    assert "fired on live 'stalled backlog'" in result.message and "quiet on live 'idle, no consumers'" in result.message


def test_stub_is_reported_not_raised(as_shared: vb.Broker) -> None:
    def alert(window):
        raise NotImplementedError

    assert not ch07.q1.run(alert).attempted


pytestmark = pytest.mark.ends_versions
