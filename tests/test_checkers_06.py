"""The ch06 checker (a retry policy that counts) on the shared broker, at both ends of the versions (3.10 and 4.3
in CI): sound policies pass, known-wrong ones (the guide's among them) fail with a reason naming their mistake.
The learners' answers are in ``answers_05_08.py``.
"""

from __future__ import annotations

import pytest

import answers_05_08 as answers
from helpers import scratch_leftovers
from voicelab.exercises import ch06
from voicelab.lab.guide_patterns import guide_retry_callback


# -- ch06: a retry policy that counts (good, flaky, doomed and poison jobs on the shared broker) ------------

def _guide_header_counter(channel, method, properties, body, process, max_attempts):
    """Known wrong: the guide's answer, mutating properties.headers and nacking with requeue."""
    guide_retry_callback(channel, method, properties, body)


# On the newest image every answer; on the oldest too (ends_versions), the reference and the answers whose
# verdict rests on what the broker does (requeue, TTL and dead-lettering, delivery counts): the others would
# only repeat a run of the same checker on the same kind of queue.
BOTH_ENDS = pytest.mark.ends_versions


@pytest.mark.parametrize("answer", [pytest.param(ch06.retry_policy, marks=BOTH_ENDS), answers.ch06_republish_own_header,
                                    answers.ch06_x_reason, pytest.param(answers.ch06_delayed, marks=BOTH_ENDS),
                                    answers.ch06_bare_except_ack])
def test_ch06_sound_policies_pass(as_shared, answer) -> None:
    assert "no job lost when the worker was killed" in answers.passes(ch06.q1, answer)
    assert scratch_leftovers(as_shared) == []   # the delayed answer's wait queues too


@pytest.mark.parametrize("answer, words", [
    pytest.param(_guide_header_counter, ("loop forever", "properties.headers"), marks=BOTH_ENDS),
    (answers.ch06_ack_then_republish, ("killed just before its basic_publish", "lost", "acked before the copy")),
    (answers.ch06_ack_then_dead_letter, ("poison message", "lost", "acked before")),
    (answers.ch06_retries_poison, ("poison message", "delivered 3 times", "retried")),
    (answers.ch06_memory_counter, ("freshly started worker", "memory")),
    (answers.ch06_global_counter, ("freshly started worker", "memory")),
    pytest.param(answers.ch06_nack_requeue, ("loop forever", "classic queue", "requeue=True"), marks=BOTH_ENDS),
    pytest.param(answers.ch06_quorum_count, ("classic queue", "x-delivery-count"), marks=BOTH_ENDS),
    (answers.ch06_one_too_many, ("always fails was processed 4 time(s)",)),
])
def test_ch06_wrong_policies_fail_with_their_reason(as_shared, answer, words) -> None:
    answers.fails(ch06.q1, answer, *words)
    assert scratch_leftovers(as_shared) == []


def test_ch06_no_reason_fails(as_shared) -> None:
    def no_reason(channel, method, properties, body, process, max_attempts):
        """Dead-letters with basic_reject(requeue=False): right place, but no reason header."""
        from voicelab.jobs import BadJob, VoiceJob
        import pika
        attempt = int((properties.headers or {}).get("attempt", 0)) + 1
        try:
            process(VoiceJob.from_json(body))
        except BadJob:
            channel.basic_reject(method.delivery_tag, requeue=False)
            return
        except Exception:
            if attempt >= max_attempts:
                channel.basic_reject(method.delivery_tag, requeue=False)
            else:
                channel.basic_publish("", method.routing_key, body, pika.BasicProperties(headers={"attempt": attempt}))
                channel.basic_ack(method.delivery_tag)
            return
        channel.basic_ack(method.delivery_tag)

    answers.fails(ch06.q1, no_reason, "no reason")
    assert not ch06.q1.run(answers.stub).attempted
    assert scratch_leftovers(as_shared) == []
