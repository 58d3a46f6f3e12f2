"""The capstone: the voice service end to end, every job accounted for.

Glue around what the earlier chapters built, nothing more, in three modules:

- :mod:`~voicelab.pipeline.service`: :class:`VoiceService`. An upload stores the audio in the blob store and
  publishes a job that carries its key (:func:`voicelab.uploads.upload_queued`) to a quorum queue with a
  dead-letter queue, through :class:`voicelab.publishing.ReliablePublisher` (confirmed, persistent, republished
  after a lost connection), and answers at once with the job id. :meth:`VoiceService.status` looks a job up by its
  id; :meth:`VoiceService.upload_and_wait` waits for the result, with a timeout, through Direct Reply-to.
- :mod:`~voicelab.pipeline.workers`: :class:`Fleet`, worker *processes*, each running ``threads``
  :class:`PipelineConsumer` threads. A :class:`PipelineConsumer` is notebook 06b's
  :class:`voicelab.reconnect.ReconnectingConsumer` (backoff, jitter, idempotent results) that also dead-letters what
  can never be done, with its reason (:func:`voicelab.retry.dead_letter`), and answers a caller who waits. A dead
  process is replaced. The workers' event logs (:class:`EventLog`, read back by :class:`LogTail`).
- :mod:`~voicelab.pipeline.results`: :class:`ResultFiles`, the results in the blob store
  (``results/<job_id>.json``, as :func:`voicelab.jobs.load_result` reads them), each applied at most once across
  processes: a hard link either creates the file or fails.

The chaos run that tries it is :mod:`voicelab.lab.chaos`.

Example::

    from voicelab import pipeline
    from voicelab.broker import own_broker
    with own_broker() as broker:
        service = pipeline.VoiceService(broker, BlobStore.temporary(), queue="voice08")
        service.declare()
        with service.fleet(processes=2, threads=2):
            service.upload_and_wait(audio, 7, timeout=5)  # {'status': 'done', 'result': {...}, 'waited_s': ...}
"""

from .results import ResultFiles
from .service import DELIVERY_LIMIT, REPLY_TO, VoiceService, declare_service_queue
from .workers import WORKER_PREFIX, EventLog, Fleet, LogTail, PipelineConsumer

__all__ = ["DELIVERY_LIMIT", "REPLY_TO", "WORKER_PREFIX", "EventLog", "Fleet", "LogTail", "PipelineConsumer",
           "ResultFiles", "VoiceService", "declare_service_queue"]
