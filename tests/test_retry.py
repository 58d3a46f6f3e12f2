"""Retries on real brokers: each strategy's outcome per job, poison to the DLQ, and what each version does
with ``requeue=True`` (classic loops; quorum counts and limits, differently per version)."""

from __future__ import annotations

import pytest

from voicelab import retry
from voicelab.lab import guide_patterns, retries
from voicelab.jobs import VoiceJob
from voicelab.queues import dlq_name, drain, publish_bodies


def _run(broker, strategy: str, queue: str, max_attempts: int = 4, delays=(0.1, 0.2, 0.4)):
    """Publish good, flaky (fails twice), doomed (always fails) and two poison bodies; run the worker."""
    policy = retry.RetryPolicy(strategy, max_attempts=max_attempts, delays=delays)
    good, flaky, doomed = (VoiceJob.new(f"audio/{i}.wav", i) for i in range(3))
    with broker.connect() as connection:
        channel = connection.channel()
        retry.delete_retry_queue(channel, queue, policy)
        retry.declare_retry_queue(channel, queue, policy)
        publish_bodies(channel, queue, [good, flaky, doomed, b"not json", b'{"job_id": "p", "user_id": 1}'])
    fails = {flaky.job_id: 2, doomed.job_id: 10 ** 6}
    calls: dict[str, int] = {}

    def handler(job: VoiceJob, attempt: int) -> None:
        calls[job.job_id] = calls.get(job.job_id, 0) + 1
        if attempt <= fails.get(job.job_id, 0):
            raise retry.TransientError(f"attempt {attempt}")

    events = retries.run_retry_worker(broker, queue, handler, policy, idle=0.6, timeout=20)
    with broker.connect() as connection:
        channel = connection.channel()
        dead = [(m.body, dict(m.properties.headers or {})) for m in drain(channel, dlq_name(queue))]
        retry.delete_retry_queue(channel, queue, policy)
    return events, calls, dead, (good, flaky, doomed)


@pytest.mark.parametrize("strategy", ["republish", "delayed", "quorum"])
def test_each_strategy_gives_each_job_its_outcome(any_broker, strategy) -> None:
    events, calls, dead, (good, flaky, doomed) = _run(any_broker, strategy, f"test.retry.{strategy}")
    assert calls[good.job_id] == 1 and calls[flaky.job_id] == 3, calls
    assert calls[doomed.job_id] == 4, "the doomed job is tried exactly max_attempts times"
    bodies = [b for b, _ in dead]
    assert sorted(bodies) == sorted([doomed.to_json(), b"not json", b'{"job_id": "p", "user_id": 1}'])
    poison = [h for b, h in dead if b != doomed.to_json()]
    assert all(h[retry.REASON].startswith("poison: ") for h in poison), poison
    doomed_headers = next(h for b, h in dead if b == doomed.to_json())
    if strategy == "quorum":   # the broker dead-lettered it: its reason is the broker's
        assert doomed_headers["x-first-death-reason"] == "delivery_limit"
    else:
        assert doomed_headers[retry.REASON].startswith("failed 4 attempts") and doomed_headers[retry.ATTEMPT] == 4
    done = events[events.outcome == "done"]
    assert sorted(done.job) == sorted([good.job_id, flaky.job_id])


def test_delayed_retries_wait_each_tier_and_carry_x_death(any_broker) -> None:
    events, _, _, (_, _, doomed) = _run(any_broker, "delayed", "test.retry.backoff", delays=(0.2, 0.4, 0.8))
    mine = events[events.job == doomed.job_id].sort_values("attempt")
    waits = mine.t.diff().dropna().tolist()
    for wait, delay in zip(waits, (0.2, 0.4, 0.8)):
        assert delay - 0.02 <= wait <= delay + 0.6, (waits, "each retry waits its tier's TTL")
    tiers = [d[0]["queue"] for d in mine.deaths.iloc[1:]]
    assert tiers == [retry.tier_name("test.retry.backoff", t) for t in range(3)]
    assert all(d[0]["reason"] == "expired" for d in mine.deaths.iloc[1:])


def test_classic_queue_redelivers_a_requeued_message_forever(any_broker) -> None:
    for settle in ("nack", "reject"):
        out = retries.redelivery_loop(any_broker, "classic", settle, max_deliveries=30, queue="test.retry.loop")
        assert out["deliveries"] == 30 and out["ended"] == "still queued", out
        assert set(out["counts"]) == {None}, "classic queues do not count deliveries"


def test_quorum_queue_counts_and_limits_per_version(any_broker) -> None:
    nack = retries.redelivery_loop(any_broker, "quorum", "nack", max_deliveries=25, queue="test.retry.qloop")
    reject = retries.redelivery_loop(any_broker, "quorum", "reject", max_deliveries=25, queue="test.retry.qloop")
    version = any_broker.version_info
    assert [int(c) for c in reject["counts"][1:4]] == [1, 2, 3], reject["counts"][:4]
    if version < (4, 0):      # 3.10: every return counted, no default limit
        assert [int(c) for c in nack["counts"][1:4]] == [1, 2, 3]
        assert nack["ended"] == reject["ended"] == "still queued" and nack["deliveries"] == 25
    elif version < (4, 3):    # 4.0: nack and reject counted, default limit 20: dead-lettered at delivery 21
        assert nack["deliveries"] == reject["deliveries"] == 21
        assert nack["ended"] == reject["ended"] == "dead-lettered"
    else:                     # 4.3: reject counted and limited, nack never counted: loops
        assert set(nack["counts"]) == {None} and nack["ended"] == "still queued" and nack["deliveries"] == 25
        assert reject["deliveries"] == 21 and reject["ended"] == "dead-lettered"


def test_guide_header_counter_stays_zero_and_never_dead_letters(any_broker) -> None:
    out = guide_patterns.run_guide_retry_counter(any_broker, "test.retry.guide", redeliveries=6)
    assert out["x-retry-count seen"] == [0] * 6 and out["in DLQ"] == 0 and out["still in queue"] == 1


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        retry.RetryPolicy("republish", max_attempts=0)
    with pytest.raises(ValueError, match="delays"):
        retry.RetryPolicy("delayed", delays=(0.1, -1))
    with pytest.raises(ValueError, match="strategy"):
        retry.RetryPolicy("header-counter")
    with pytest.raises(ValueError, match="settle"):
        retries.redelivery_loop(None, "classic", "drop")


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
