"""The ch08 checker (a worker that loses nothing) on the shared broker, at both ends of the versions (3.10 and
4.3 in CI): sound workers pass, known-wrong ones fail with a reason naming their mistake.
The learners' answers are in ``answers_05_08.py``.
"""

from __future__ import annotations

import pytest

import answers_05_08 as answers
from helpers import scratch_leftovers
from voicelab.exercises import ch08


# -- ch08: a worker that loses nothing --------------------------------------------------------------

# On the newest image every answer; on the oldest too (ends_versions), the reference and the answers whose
# verdict rests on what the broker does with a message it gets back (nack, requeue): the others would only
# repeat a run of the same checker on the same queue.
BOTH_ENDS = pytest.mark.ends_versions


@pytest.mark.parametrize("answer", [pytest.param(ch08.worker, marks=BOTH_ENDS), answers.ch08_reject_poison,
                                    answers.ch08_batched_acks, answers.ch08_envelope,
                                    pytest.param(answers.ch08_nack_on_failure, marks=BOTH_ENDS)])
def test_ch08_sound_workers_pass(as_shared, answer) -> None:
    message = answers.passes(ch08.q1, answer)
    assert "none lost" in message and "2 worker crashes" in message and "3 passing failures" in message, message
    assert scratch_leftovers(as_shared) == []


@pytest.mark.parametrize("answer, words", [
    pytest.param(ch08.fragile_worker, ("jobs were lost", "acked the message before storing its result",
                                       "Ack only after results.apply"), marks=BOTH_ENDS),
    (answers.ch08_process_ack_store, ("lost", "killed just before its results.apply", "acked the message before")),
    (answers.ch08_ack_first_republish, ("lost", "acked the message before storing")),
    (answers.ch08_dead_letter_failures, ("good job(s) ended in the DLQ after process(job) failed once",)),
    (answers.ch08_drops_failures, ("lost", "failed once for 3 of them")),
    (answers.ch08_never_acks, ("stopped getting messages", "prefetch")),
    (answers.ch08_acks_poison, ("poison message(s) are not in the DLQ", "acked and dropped")),
    (answers.ch08_crashes_on_poison, ("died", "BadJob")),
    pytest.param(answers.ch08_requeues_poison, ("never settled",), marks=BOTH_ENDS),
])
def test_ch08_wrong_workers_fail_with_their_reason(as_shared, answer, words) -> None:
    answers.fails(ch08.q1, answer, *words)
    assert scratch_leftovers(as_shared) == []


def test_ch08_stub_is_reported_not_raised(as_shared) -> None:
    def worker(channel, method, properties, body, process, results):
        raise NotImplementedError

    assert not ch08.q1.run(worker).attempted
    assert scratch_leftovers(as_shared) == []
