"""Every exercise: its reference passes its checker on the broker; a stub and known-wrong answers fail."""

from __future__ import annotations

import json

import pika
import pytest

from voicelab.exercises import ch00


def _stub(channel, queue, job):
    raise NotImplementedError


def _no_properties(channel, queue, job):
    channel.basic_publish("", queue, job.to_json())


def _transient(channel, queue, job):
    channel.basic_publish("", queue, job.to_json(), pika.BasicProperties(content_type="application/json"))


def _twice(channel, queue, job):
    for _ in range(2):
        ch00.enqueue_job(channel, queue, job)


def _wrong_queue(channel, queue, job):
    ch00.enqueue_job(channel, "elsewhere", job)


def _str_body(channel, queue, job):
    channel.basic_publish("", queue, str(job.__dict__),
                          pika.BasicProperties(content_type="application/json", delivery_mode=2))


def _crashes(channel, queue, job):
    json.dumps(job)  # a VoiceJob is not JSON-serializable as is


def test_ch00_reference_passes(as_shared) -> None:
    result = ch00.q1.run(ch00.enqueue_job)
    assert result.passed, result.message


def test_ch00_stub_is_reported_not_raised(as_shared) -> None:
    result = ch00.q1.run(_stub)
    assert not result.passed and not result.attempted and "not solved yet" in result.message


@pytest.mark.parametrize("wrong, says", [
    (_no_properties, "content_type"), (_transient, "delivery_mode"), (_twice, "exactly once"),
    (_wrong_queue, "no message"), (_str_body, "not JSON"), (_crashes, "TypeError"), (42, "pass your function"),
])
def test_ch00_wrong_answers_fail_with_a_reason(as_shared, wrong, says) -> None:
    result = ch00.q1.run(wrong)
    assert not result.passed and says in result.message, result.message


def test_check_prints_the_verdict(as_shared, capsys) -> None:
    ch00.q1.check(ch00.enqueue_job)
    assert "✓" in capsys.readouterr().out
    ch00.q1.hint()
    assert "basic_publish" in capsys.readouterr().out
