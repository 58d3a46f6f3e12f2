"""The capstone's service: uploads that answer at once, status by job id, and a caller who waits.

:class:`VoiceService` declares its quorum job queue (:func:`declare_service_queue`), publishes through
:class:`voicelab.publishing.ReliablePublisher` and starts its :class:`~voicelab.pipeline.workers.Fleet`.

Example::

    service = VoiceService(broker, blobs, queue="voice08")
    service.declare(fresh=True)                      # voice08 (quorum, delivery limit 20) and voice08.dlq
    jobs, report = service.upload_many((audio, user) for user in range(100))
    with service.fleet(processes=2, threads=2):
        ...
    [service.status(j.job_id)["status"] for j in jobs]   # ['done', 'done', ...]
    service.delete()
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

import pika

from ..broker import Broker
from ..jobs import BlobStore, VoiceJob
from ..publishing import PublishReport, ReliablePublisher
from ..queues import confirm_mode, declare_job_queue, delete_job_queue, job_properties
from ..uploads import upload_queued
from .results import ResultFiles
from .workers import Fleet

REPLY_TO = "amq.rabbitmq.reply-to"
"""Direct Reply-to's pseudo-queue: consume it (auto-ack) and publish on the same channel; no queue is declared."""
DELIVERY_LIMIT = 20
"""``x-delivery-limit`` of the job queue: the 4.x default, set so that 3.10 stops a crash loop too."""


def declare_service_queue(channel: Any, queue: str) -> int:
    """The job queue: a quorum queue (durable, replicated log) with ``<queue>.dlq`` and a delivery limit."""
    return declare_job_queue(channel, queue, arguments={"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT})


class VoiceService:
    """Uploads, status by job id, and waiting for a result: the service a user talks to.

    Example::

        service = VoiceService(broker, BlobStore.temporary(), queue="voice08")
        service.declare()
        with service.fleet(processes=2, threads=2):
            reply = service.upload(audio, user_id=7)      # {'status': 'processing', 'job_id': ..., ...}
            service.status(reply["job_id"])               # {'status': 'pending'} ... then {'status': 'done', ...}
            service.upload_and_wait(audio, 7, timeout=5)  # {'status': 'done', 'result': {...}, 'waited_s': ...}
    """

    def __init__(self, broker: Broker, blobs: BlobStore, queue: str = "voice08", *, effort: int = 2,
                 publish_deadline: float = 90.0) -> None:
        self.broker, self.blobs, self.queue, self.effort = broker, blobs, queue, effort
        self.publish_deadline = publish_deadline
        self.results = ResultFiles(blobs)

    def declare(self, fresh: bool = False) -> None:
        """Declare the quorum job queue and its DLQ (deleted first if ``fresh``)."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            if fresh:
                delete_job_queue(channel, self.queue)
            declare_service_queue(channel, self.queue)

    def delete(self) -> None:
        """Delete the job queue and its DLQ."""
        with self.broker.connect() as connection:
            delete_job_queue(connection.channel(), self.queue)

    def fleet(self, **kwargs: Any) -> Fleet:
        """A :class:`~voicelab.pipeline.workers.Fleet` on this service's queue and blob store (start it, or use it
        in ``with``)."""
        return Fleet(self.broker, self.queue, self.blobs, effort=self.effort, **kwargs)

    def _publisher(self) -> ReliablePublisher:
        return ReliablePublisher(self.broker.parameters(), window=256, deadline=self.publish_deadline)

    def _enqueue(self, channel: Any, queue: str, job: VoiceJob) -> PublishReport:
        return self._publisher().publish(queue, [job.to_json()], properties=job_properties())

    def upload(self, audio: bytes, user_id: int) -> dict[str, Any]:
        """Store the audio, publish the job (confirmed), answer with its id: notebook 00's queued upload."""
        # no channel: the reliable publisher opens its own connection
        return upload_queued(audio, self.blobs, None, self.queue, user_id,  # type: ignore[arg-type]
                             enqueue=self._enqueue)

    def upload_many(self, uploads: Iterable[tuple[bytes, int]]) -> tuple[list[VoiceJob], PublishReport]:
        """Many uploads in one publishing run (a window of confirms); the jobs and the publisher's report."""
        jobs = [VoiceJob.new(self.blobs.put(audio), user_id) for audio, user_id in uploads]
        report = self._publisher().publish(self.queue, [j.to_json() for j in jobs], properties=job_properties())
        return jobs, report

    def status(self, job_id: str) -> dict[str, Any]:
        """``{'status': 'done', 'result': ...}`` once a worker stored the result; ``{'status': 'failed', 'reason':
        ...}`` once it dead-lettered the job (the DLQ has it, for a replay after a fix); else ``'pending'``."""
        result = self.results.result(job_id)
        if result is not None:
            return {"job_id": job_id, "status": "done", "result": result}
        reason = self.results.failure(job_id)
        if reason is not None:
            return {"job_id": job_id, "status": "failed", "reason": reason}
        return {"job_id": job_id, "status": "pending"}

    def upload_and_wait(self, audio: bytes, user_id: int, timeout: float = 10.0) -> dict[str, Any]:
        """Upload, then wait up to ``timeout`` s for the result: the RPC pattern with Direct Reply-to.

        Consume ``amq.rabbitmq.reply-to`` (auto-ack) *before* publishing, and publish the job on the same
        channel with ``reply_to`` and ``correlation_id``: the worker's reply comes straight to this channel.
        On timeout the job goes on; the answer is ``{'status': 'pending', 'job_id': ...}`` for :meth:`status`.
        """
        job = VoiceJob.new(self.blobs.put(audio), user_id)
        t0 = time.perf_counter()
        replies: list[bytes] = []
        with self.broker.connect() as connection:
            channel = connection.channel()

            def on_reply(ch: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
                if properties.correlation_id == job.job_id:
                    replies.append(body)

            channel.basic_consume(REPLY_TO, on_reply, auto_ack=True)
            confirm_mode(channel)
            channel.basic_publish("", self.queue, job.to_json(),
                                  job_properties(reply_to=REPLY_TO, correlation_id=job.job_id), mandatory=True)
            deadline = t0 + timeout
            while not replies and time.perf_counter() < deadline:
                connection.process_data_events(time_limit=min(0.05, max(0.0, deadline - time.perf_counter())))
        waited = time.perf_counter() - t0
        if not replies:
            return {"job_id": job.job_id, "status": "pending", "waited_s": waited}
        return {"job_id": job.job_id, "status": "done", "result": json.loads(replies[0]), "waited_s": waited}
