"""Two upload handlers for the same voice job: one that makes the user wait, one that queues.

The guide's "problems without queues / solution with queues", runnable.

Example::

    store = BlobStore.temporary()
    audio = wav_bytes(synth_speech(seed=1))
    result = upload_blocking(audio, store, user_id=7)               # the user waits for the analysis
    with broker.connect() as connection:
        channel = connection.channel()
        declare_job_queue(channel, "voice_jobs")
        channel.confirm_delivery()                                  # publish_job refuses a channel without
        reply = upload_queued(audio, store, channel, "voice_jobs", user_id=7)   # answers at once
"""

from __future__ import annotations

from typing import Any, Callable

from pika.adapters.blocking_connection import BlockingChannel

from .jobs import BlobStore, VoiceJob, process_job
from .queues import publish_job

Enqueue = Callable[[BlockingChannel, str, VoiceJob], Any]


def upload_blocking(audio: bytes, store: BlobStore, user_id: int, effort: int = 4) -> dict[str, Any]:
    """Store the audio, process it, *then* answer: the user waits for the whole job."""
    job = VoiceJob.new(store.put(audio), user_id)
    return {"status": "done", **process_job(job, store, effort=effort)}


def upload_queued(audio: bytes, store: BlobStore, channel: BlockingChannel, queue: str, user_id: int,
                  enqueue: Enqueue = publish_job) -> dict[str, Any]:
    """Store the audio, enqueue a job that carries only its key, answer at once with the job id."""
    job = VoiceJob.new(store.put(audio), user_id)
    enqueue(channel, queue, job)
    return {"status": "processing", "job_id": job.job_id, "blob_key": job.blob_key}
