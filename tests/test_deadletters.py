"""The DLQ tooling on real brokers: list says why, replay sends back only what was chosen, purge empties;
and the ``python -m voicelab dlq`` verb does the same from a shell."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from voicelab import cli, deadletters, retry
from voicelab.lab import retries
from voicelab.jobs import VoiceJob
from voicelab.queues import dlq_name, publish_bodies, queue_counts


@pytest.fixture
def filled(any_broker):
    """A work queue whose DLQ holds one poison message, one job that failed 2 attempts and one the broker rejected."""
    queue = "test.dlq.work"
    policy = retry.RetryPolicy("republish", max_attempts=2)
    doomed, rejected = VoiceJob.new("audio/d.wav", 1), VoiceJob.new("audio/r.wav", 2)
    with any_broker.connect() as connection:
        channel = connection.channel()
        retry.delete_retry_queue(channel, queue, policy)
        retry.declare_retry_queue(channel, queue, policy)
        publish_bodies(channel, queue, [b"not json", doomed])

    def handler(job, attempt):
        raise retry.TransientError("speech service down")

    retries.run_retry_worker(any_broker, queue, handler, policy, idle=0.3)
    with any_broker.connect() as connection:   # a message the broker dead-letters itself: reject, no requeue
        channel = connection.channel()
        publish_bodies(channel, queue, [rejected])
        method, _, _ = channel.basic_get(queue)
        channel.basic_reject(method.delivery_tag, requeue=False)
    yield any_broker, queue, doomed, rejected
    with any_broker.connect() as connection:
        retry.delete_retry_queue(connection.channel(), queue, policy)


def test_list_says_why_and_leaves_everything_in_place(filled) -> None:
    broker, queue, doomed, rejected = filled
    with broker.connect() as connection:
        channel = connection.channel()
        for _ in range(50):
            if queue_counts(channel, dlq_name(queue)) == 3:
                break
        frame = deadletters.dead_letter_frame(deadletters.list_dead_letters(channel, queue)).set_index("job")
        assert queue_counts(channel, dlq_name(queue)) == 3, "listing must not remove anything"
    assert frame.loc[doomed.job_id, "reason"].startswith("failed 2 attempts, last: TransientError")
    assert frame.loc[doomed.job_id, "attempts"] == 2 and frame.loc[doomed.job_id, "queue"] == queue
    assert frame.loc[rejected.job_id, "reason"] == "rejected" and frame.loc[rejected.job_id, "queue"] == queue
    assert frame.loc["b'not json'", "reason"].startswith("poison: body is not JSON")
    assert frame["first_failure"].notna().all()


def test_replay_sends_back_only_the_chosen_then_purge_empties(filled) -> None:
    broker, queue, doomed, rejected = filled
    with broker.connect() as connection:
        channel = connection.channel()
        assert deadletters.replay(channel, queue, jobs=[doomed.job_id]) == 1
        method, props, body = channel.basic_get(queue, auto_ack=True)
        assert body == doomed.to_json() and retry.ATTEMPT not in props.headers, "replayed with a fresh count"
        assert props.headers[deadletters.REPLAYED] == 1
        assert queue_counts(channel, dlq_name(queue)) == 2
        assert deadletters.purge(channel, queue) == 2
        assert queue_counts(channel, dlq_name(queue)) == 0


def test_cli_lists_replays_and_purges(filled) -> None:
    broker, queue, doomed, rejected = filled
    env = {**os.environ, "VOICELAB_AMQP_URL": broker.amqp_url}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "voicelab", "dlq", *args], capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = cli("list", queue)
    assert "3 message(s)" in listing and "rejected" in listing and "poison" in listing
    assert "replayed 1 message(s)" in cli("replay", queue, "--job", rejected.job_id)
    assert "purged 2 message(s)" in cli("purge", queue, "--yes")   # purge asks first without --yes (test_cli)
    with broker.connect() as connection:
        assert queue_counts(connection.channel(), queue) == 1


def test_cli_reads_the_dlq_by_either_name(filled) -> None:
    """QUEUE or QUEUE.dlq name the same DLQ, from a shell as from Python."""
    broker, queue, doomed, rejected = filled
    env = {**os.environ, "VOICELAB_AMQP_URL": broker.amqp_url}
    done = subprocess.run([sys.executable, "-m", "voicelab", "dlq", "list", dlq_name(queue)], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0 and f"3 message(s) in {dlq_name(queue)}" in done.stdout, done.stdout + done.stderr
    with broker.connect() as connection:
        assert len(deadletters.list_dead_letters(connection.channel(), dlq_name(queue))) == 3


def _dlq_cli_fails(*args: str, env: dict[str, str]) -> str:
    """Run ``python -m voicelab dlq ARGS``; it must fail with one line on stderr, no traceback. Returns that line."""
    done = subprocess.run([sys.executable, "-m", "voicelab", "dlq", *args], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stderr.startswith("error: "), done.stderr
    return done.stderr


def test_cli_says_in_one_line_when_the_broker_or_the_queue_is_missing(any_broker) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VOICELAB_AMQP_URL"}
    with socket.socket() as s:   # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        nobody = f"amqp://guest:guest@127.0.0.1:{s.getsockname()[1]}/%2F"
        assert "connection refused" in _dlq_cli_fails("list", "voice_jobs", "--url", nobody, env=env)
    assert "not valid" in _dlq_cli_fails("list", "voice_jobs", "--url", "amqp://", env=env)
    missing = "test.dlq.never.declared"
    with any_broker.connect() as connection:
        connection.channel().queue_delete(dlq_name(missing))
    for action in ("list", "replay", "purge"):
        line = _dlq_cli_fails(action, missing, "--url", any_broker.amqp_url, env=env)
        assert "NOT_FOUND" in line and dlq_name(missing) in line, line


def test_bad_arguments_are_named(channel) -> None:
    with pytest.raises(ValueError, match="queue"):
        dlq_name("")
    for call in (deadletters.list_dead_letters, deadletters.purge, deadletters.replay):
        with pytest.raises(ValueError, match="queue"):
            call(channel, "")
    with pytest.raises(ValueError, match="action"):
        cli.dlq("show", "q", "amqp://localhost")


# What these tests check differs between RabbitMQ versions: run them on every image (see conftest).
pytestmark = pytest.mark.all_versions
