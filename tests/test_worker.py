"""Queue, upload handlers and worker on the real broker: every job done once, malformed ones dead-lettered."""

from __future__ import annotations

import uuid

import pika

from voicelab import broker as vb
from voicelab.jobs import BlobStore, VoiceJob, expected_result, load_result, synth_speech, wav_bytes
from voicelab.queues import declare_job_queue, delete_job_queue, dlq_name, queue_counts
from voicelab.uploads import upload_blocking, upload_queued
from voicelab.worker import run_worker


def test_worker_processes_jobs_and_dead_letters_malformed(any_broker: vb.Broker, channel) -> None:
    queue = f"jobs.{uuid.uuid4().hex[:6]}"
    declare_job_queue(channel, queue)
    channel.confirm_delivery()
    with BlobStore.temporary() as store:
        replies = [upload_queued(wav_bytes(synth_speech(0.5, seed=i)), store, channel, queue, user_id=i)
                   for i in range(6)]
        assert {r["status"] for r in replies} == {"processing"}
        channel.basic_publish("", queue, b"{oops", pika.BasicProperties(delivery_mode=2))
        channel.basic_publish("", queue, VoiceJob.new("audio/missing.wav", 1).to_json())
        assert queue_counts(channel, queue) == 8
        report = run_worker(any_broker, queue, store, prefetch=2, idle_timeout=0.5)
        assert report["outcome"].value_counts().to_dict() == {"done": 6, "dead-lettered": 2}
        for user_id, r in enumerate(replies):
            job = VoiceJob(r["job_id"], r["blob_key"], user_id)
            assert load_result(store, job.job_id) == expected_result(job, store)
        assert queue_counts(channel, queue) == 0
        assert queue_counts(channel, dlq_name(queue)) == 2
        blocking = upload_blocking(wav_bytes(synth_speech(0.5, seed=0)), store, user_id=0)
        assert blocking["status"] == "done" and blocking["pitch_hz"] == load_result(store, replies[0]["job_id"])["pitch_hz"]
    delete_job_queue(channel, queue)
