"""The ch05 checker (a publisher that guarantees delivery): the reference and other sound publishers pass,
known-wrong ones fail with a reason naming their mistake, a stub is reported, nothing is left behind. The
checker kills a broker of the test's own; it runs on the oldest and the newest image (3.10 and 4.3 in CI).
The learners' answers are in ``answers_05_08.py``.
"""

from __future__ import annotations

import os

import pytest

import answers_05_08 as answers
from helpers import end_version_params, scratch_leftovers, start_backend
from voicelab.exercises import ch05


# -- ch05: a publisher that guarantees delivery (the checker kills a broker of the test's own) --------------

@pytest.fixture(scope="module")
def ch05_broker(request):
    """One broker per version for ch05's runs (each run kills and starts it); stopped after the module."""
    broker = start_backend(*request.param)
    ch05.use_broker(broker)
    yield broker
    ch05.use_broker(None)
    broker.stop()


# Every answer on the newest image; on the oldest, the reference and the answers whose verdict rests on what
# the broker does there (its nack of a refused publish, its classic queue dropping transient messages at a
# crash). Each check kills and restarts the broker (12 to 45 s under load): the rest would only repeat them.
# VOICELAB_ALL_VERSIONS=1: every answer on every image.
ENDS = end_version_params()   # [oldest, newest, skipped images as skips]
CH05 = pytest.mark.parametrize("ch05_broker", ENDS, indirect=True)
CH05_NEWEST = pytest.mark.parametrize(
    "ch05_broker", ENDS if os.environ.get("VOICELAB_ALL_VERSIONS") == "1" or len(ENDS) == 1 else ENDS[1:],
    indirect=True)


@CH05
def test_ch05_reference_passes(ch05_broker) -> None:
    assert "arrived" in answers.passes(ch05.q1, ch05.publish_all)
    assert scratch_leftovers(ch05_broker) == []


@CH05_NEWEST
@pytest.mark.parametrize("answer", [answers.ch05_confirm_each, answers.ch05_fast_window])
def test_ch05_other_sound_publishers_pass(ch05_broker, answer) -> None:
    assert "arrived" in answers.passes(ch05.q1, answer)
    assert scratch_leftovers(ch05_broker) == []


IGNORES_NACKS = (answers.ch05_ignores_nacks, ("refused", "before the crash", "nacked", "send the rest again"))
TRANSIENT = (answers.ch05_transient, ("transient", "persistent", "delivery_mode=2"))


@CH05
@pytest.mark.parametrize("answer, words", [IGNORES_NACKS, TRANSIENT])
def test_ch05_wrong_publishers_fail_with_their_reason(ch05_broker, answer, words) -> None:
    answers.fails(ch05.q1, answer, *words)
    assert scratch_leftovers(ch05_broker) == []


@CH05_NEWEST
@pytest.mark.parametrize("answer, words", [
    (answers.ch05_drops_nacked, ("refused by the broker", "never sent again", "nack")),
    (answers.ch05_forgets_confirm_after_reconnect, ("after the crash", "confirm_delivery() on every new channel")),
    (answers.ch05_without_confirms, ("returned as confirmed", "confirm")),
])
def test_ch05_more_wrong_publishers_fail_with_their_reason(ch05_broker, answer, words) -> None:
    answers.fails(ch05.q1, answer, *words)
    assert scratch_leftovers(ch05_broker) == []


@CH05
def test_ch05_stub_is_reported_not_raised(ch05_broker) -> None:
    assert not ch05.q1.run(answers.stub).attempted
    assert scratch_leftovers(ch05_broker) == []
