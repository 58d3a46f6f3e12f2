"""A worker that drains a job queue: ack after the result is stored, dead-letter what it cannot do.

Example::

    report = run_worker(broker, "voice_jobs", store)
    report.value_counts("outcome")
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pandas as pd

from .broker import Broker
from .jobs import BadJob, BlobStore, Kind, VoiceJob, process_job, save_result

log = logging.getLogger(__name__)


def run_worker(broker: Broker, queue: str, store: BlobStore, *, kind: Kind = "cpu", prefetch: int = 1,
               idle_timeout: float = 1.0, max_jobs: int | None = None, effort: int = 4,
               io_seconds: float = 0.05) -> pd.DataFrame:
    """Consume ``queue`` until it stays empty for ``idle_timeout`` s (or ``max_jobs`` are done).

    Each job's result is stored in ``store`` *before* the ack, so a crash in
    between redelivers the job instead of losing it. A malformed message or a
    job that fails is rejected without requeue: the queue's dead-letter
    exchange (see :func:`voicelab.queues.declare_job_queue`) keeps it for a
    human, and it never loops. Returns one row per message: ``job_id``,
    ``outcome`` (``"done"`` or ``"dead-lettered"``), ``seconds`` of work (wall
    time), ``cpu_seconds`` (the CPU time this thread spent on it), ``finished``
    (epoch seconds), ``error``.
    """
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0 (0 = unlimited), got {prefetch}")
    if idle_timeout <= 0:
        raise ValueError(f"idle_timeout must be > 0 seconds, got {idle_timeout}")
    rows: list[dict[str, Any]] = []
    with broker.connect() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)
        for method, properties, body in channel.consume(queue, inactivity_timeout=idle_timeout):
            if method is None:  # idle: the queue is drained
                break
            c0, t0 = time.thread_time(), time.perf_counter()
            row: dict[str, Any] = {"job_id": None, "outcome": "done", "error": ""}
            try:
                job = VoiceJob.from_message(properties, body)
                row["job_id"] = job.job_id
                save_result(store, process_job(job, store, kind=kind, effort=effort, io_seconds=io_seconds))
                channel.basic_ack(method.delivery_tag)
            except (BadJob, KeyError, ValueError) as e:
                log.warning("dead-lettering message %s: %s", method.delivery_tag, e)
                channel.basic_reject(method.delivery_tag, requeue=False)
                row.update(outcome="dead-lettered", error=str(e))
            row.update(seconds=time.perf_counter() - t0, cpu_seconds=time.thread_time() - c0, finished=time.time())
            rows.append(row)
            if max_jobs is not None and len(rows) >= max_jobs:
                break
        channel.cancel()
    return pd.DataFrame(rows, columns=["job_id", "outcome", "seconds", "cpu_seconds", "finished", "error"])
