"""The checkers of chapters 05-08 (confirms through a crash, retries, alert rules, the capstone worker).

Each chapter's reference passes its checker, a stub is reported, not raised, known-wrong answers (the source
guide's among them) fail with a reason that names their mistake, other sound answers pass, and no ``check.*``
queue is left behind. The learners' answers are in ``answers_05_08.py``. ch05's checker kills a broker of the
test's own; the others run on the shared broker. The checkers of 05, 06 and 08 run on every RabbitMQ version
(``all_versions``): their faults (a length limit, dead-lettering, requeues, kills) are the broker's.
"""

from __future__ import annotations

import pytest

import answers_05_08 as answers
from helpers import scratch_leftovers, start_backend, version_params
from voicelab.exercises import ch05, ch06, ch08
from voicelab.lab.guide_patterns import guide_retry_callback


def _stub(*args):
    """A learner's unsolved stub (any chapter's signature)."""
    raise NotImplementedError


def _fails(exercise, answer, *words):
    """Run ``answer``; it must fail, and its message must contain every one of ``words``."""
    result = exercise.run(answer)
    assert not result.passed and result.attempted, result.message
    missing = [w for w in words if w not in result.message]
    assert not missing, f"{answer.__name__}: {missing} not in: {result.message}"


def _passes(exercise, answer):
    result = exercise.run(answer)
    assert result.passed, f"{getattr(answer, '__name__', answer)}: {result.message}"
    return result.message


# -- ch05: a publisher that guarantees delivery (the checker kills a broker of the test's own) --------------

@pytest.fixture(scope="module")
def ch05_broker(request):
    """One broker per version for ch05's runs (each run kills and starts it); stopped after the module."""
    broker = start_backend(*request.param)
    ch05.use_broker(broker)
    yield broker
    ch05.use_broker(None)
    broker.stop()


CH05 = pytest.mark.parametrize("ch05_broker", version_params(), indirect=True)


@CH05
@pytest.mark.parametrize("answer", [ch05.publish_all, answers.ch05_confirm_each, answers.ch05_fast_window])
def test_ch05_sound_publishers_pass(ch05_broker, answer) -> None:
    assert "arrived" in _passes(ch05.q1, answer)
    assert scratch_leftovers(ch05_broker) == []


@CH05
@pytest.mark.parametrize("answer, words", [
    (answers.ch05_ignores_nacks, ("refused", "before the crash", "nacked", "send the rest again")),
    (answers.ch05_drops_nacked, ("refused by the broker", "never sent again", "nack")),
    (answers.ch05_forgets_confirm_after_reconnect, ("after the crash", "confirm_delivery() on every new channel")),
    (answers.ch05_transient, ("transient", "persistent", "delivery_mode=2")),
    (answers.ch05_without_confirms, ("returned as confirmed", "confirm")),
])
def test_ch05_wrong_publishers_fail_with_their_reason(ch05_broker, answer, words) -> None:
    _fails(ch05.q1, answer, *words)
    assert scratch_leftovers(ch05_broker) == []


@CH05
def test_ch05_stub_is_reported_not_raised(ch05_broker) -> None:
    assert not ch05.q1.run(_stub).attempted
    assert scratch_leftovers(ch05_broker) == []


# -- ch06: a retry policy that counts (good, flaky, doomed and poison jobs on the shared broker) ------------

def _guide_header_counter(channel, method, properties, body, process, max_attempts):
    """Known wrong: the guide's answer, mutating properties.headers and nacking with requeue."""
    guide_retry_callback(channel, method, properties, body)


@pytest.mark.all_versions
@pytest.mark.parametrize("answer", [ch06.retry_policy, answers.ch06_republish_own_header, answers.ch06_x_reason,
                                    answers.ch06_delayed, answers.ch06_bare_except_ack])
def test_ch06_sound_policies_pass(as_shared, answer) -> None:
    assert "no job lost when the worker was killed" in _passes(ch06.q1, answer)
    assert scratch_leftovers(as_shared) == []   # the delayed answer's wait queues too


@pytest.mark.all_versions
@pytest.mark.parametrize("answer, words", [
    (_guide_header_counter, ("loop forever", "properties.headers")),
    (answers.ch06_ack_then_republish, ("killed just before its basic_publish", "lost", "acked before the copy")),
    (answers.ch06_ack_then_dead_letter, ("poison message", "lost", "acked before")),
    (answers.ch06_retries_poison, ("poison message", "delivered 3 times", "retried")),
    (answers.ch06_memory_counter, ("freshly started worker", "memory")),
    (answers.ch06_global_counter, ("freshly started worker", "memory")),
    (answers.ch06_nack_requeue, ("loop forever", "classic queue", "requeue=True")),
    (answers.ch06_quorum_count, ("classic queue", "x-delivery-count")),
    (answers.ch06_one_too_many, ("always fails was processed 4 time(s)",)),
])
def test_ch06_wrong_policies_fail_with_their_reason(as_shared, answer, words) -> None:
    _fails(ch06.q1, answer, *words)
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

    _fails(ch06.q1, no_reason, "no reason")
    assert not ch06.q1.run(_stub).attempted
    assert scratch_leftovers(as_shared) == []


# -- ch08: a worker that loses nothing --------------------------------------------------------------

@pytest.mark.all_versions
@pytest.mark.parametrize("answer", [ch08.worker, answers.ch08_reject_poison, answers.ch08_batched_acks,
                                    answers.ch08_envelope, answers.ch08_nack_on_failure])
def test_ch08_sound_workers_pass(as_shared, answer) -> None:
    message = _passes(ch08.q1, answer)
    assert "none lost" in message and "2 worker crashes" in message and "3 passing failures" in message, message
    assert scratch_leftovers(as_shared) == []


@pytest.mark.all_versions
@pytest.mark.parametrize("answer, words", [
    (ch08.fragile_worker, ("jobs were lost", "acked the message before storing its result",
                           "Ack only after results.apply")),
    (answers.ch08_process_ack_store, ("lost", "killed just before its results.apply", "acked the message before")),
    (answers.ch08_ack_first_republish, ("lost", "acked the message before storing")),
    (answers.ch08_dead_letter_failures, ("good job(s) ended in the DLQ after process(job) failed once",)),
    (answers.ch08_drops_failures, ("lost", "failed once for 3 of them")),
    (answers.ch08_never_acks, ("stopped getting messages", "prefetch")),
    (answers.ch08_acks_poison, ("poison message(s) are not in the DLQ", "acked and dropped")),
    (answers.ch08_crashes_on_poison, ("died", "BadJob")),
    (answers.ch08_requeues_poison, ("never settled",)),
])
def test_ch08_wrong_workers_fail_with_their_reason(as_shared, answer, words) -> None:
    _fails(ch08.q1, answer, *words)
    assert scratch_leftovers(as_shared) == []


def test_ch08_stub_is_reported_not_raised(as_shared) -> None:
    def worker(channel, method, properties, body, process, results):
        raise NotImplementedError

    assert not ch08.q1.run(worker).attempted
    assert scratch_leftovers(as_shared) == []
