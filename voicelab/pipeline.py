"""The capstone: the voice service end to end, run through chaos, every job accounted for.

Glue around what the earlier chapters built, nothing more:

- :class:`VoiceService`: an upload stores the audio in the blob store and publishes a job that carries its key
  (:func:`voicelab.uploads.upload_queued`) to a quorum queue with a dead-letter queue, through
  :class:`voicelab.publishing.ReliablePublisher` (confirmed, persistent, republished after a lost connection),
  and answers at once with the job id. :meth:`VoiceService.status` looks a job up by its id;
  :meth:`VoiceService.upload_and_wait` waits for the result, with a timeout, through Direct Reply-to.
- :class:`Fleet`: worker *processes*, each running ``threads`` :class:`PipelineConsumer` threads. A
  :class:`PipelineConsumer` is notebook 06's :class:`voicelab.reconnect.ReconnectingConsumer` (backoff,
  jitter, idempotent results) that also dead-letters what can never be done, with its reason
  (:func:`voicelab.retry.dead_letter`), and answers a caller who waits. A dead process is replaced.
- :class:`ResultFiles`: the results in the blob store (``results/<job_id>.json``, as :func:`voicelab.jobs.load_result`
  reads them), each applied at most once across processes: a hard link either creates the file or fails.

The chaos run that tries it is :mod:`voicelab.lab.chaos`.

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker:
        service = VoiceService(broker, BlobStore.temporary(), queue="voice08")
        service.declare()
        with service.fleet(processes=2, threads=2):
            service.upload_and_wait(audio, 7, timeout=5)  # {'status': 'done', 'result': {...}, 'waited_s': ...}
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import pika
import pika.exceptions

from .broker import Broker, UrlBroker
from .jobs import BadJob, BlobStore, VoiceJob, load_result, process_job
from .publishing import PublishReport, ReliablePublisher
from .queues import confirm_mode, declare_job_queue, dlq_name, job_properties
from .reconnect import ReconnectingConsumer
from .retry import dead_letter, job_key
from .uploads import upload_queued

if TYPE_CHECKING:  # not at run time: worker processes import this module
    pass

REPLY_TO = "amq.rabbitmq.reply-to"
"""Direct Reply-to's pseudo-queue: consume it (auto-ack) and publish on the same channel; no queue is declared."""
WORKER_PREFIX = "voicelab-pipeline-worker"
"""``connection_name`` prefix of every worker connection (the management API finds them by it)."""
DELIVERY_LIMIT = 20
"""``x-delivery-limit`` of the job queue: the 4.x default, set so that 3.10 stops a crash loop too."""

"""The chaos schedule of :func:`run_chaos`: each event once the given fraction of the uploads is sent."""


def declare_service_queue(channel: Any, queue: str) -> int:
    """The job queue: a quorum queue (durable, replicated log) with ``<queue>.dlq`` and a delivery limit."""
    return declare_job_queue(channel, queue, arguments={"x-queue-type": "quorum", "x-delivery-limit": DELIVERY_LIMIT})


# ---------------------------------------------------------------------------
# Results, applied at most once across processes; and the workers' event logs
# ---------------------------------------------------------------------------

class ResultFiles:
    """Results by ``job_id`` in a :class:`~voicelab.jobs.BlobStore`, applied at most once, from any process.

    :meth:`apply` writes the result to a temporary file and hard-links it to
    ``results/<job_id>.json``: the link is atomic and fails when the file
    exists, so of two workers that finish the same job (a redelivery) exactly
    one applies it, and a reader never sees half a result. The same interface
    as :class:`voicelab.reconnect.ResultStore`, which holds results in one process only.

    >>> blobs = BlobStore.temporary()
    >>> results = ResultFiles(blobs)
    >>> results.apply("j1", {"ok": 1}), results.apply("j1", {"ok": 2}), results.result("j1"), results.applied
    (True, False, {'ok': 1}, 1)
    >>> blobs.close()
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.folder = blobs.root / "results"
        self.folder.mkdir(parents=True, exist_ok=True)
        (blobs.root / "failures").mkdir(exist_ok=True)

    def apply(self, job_id: str, result: Any) -> bool:
        """Store ``result`` for ``job_id`` unless one is there; True if this call applied it."""
        return self._link_once(f"results/{job_id}.json", json.dumps(result, sort_keys=True).encode())

    def _link_once(self, key: str, data: bytes) -> bool:
        """Write ``data`` at ``key`` unless a file is there (atomic hard link); True if this call wrote it."""
        path = self.blobs._path(key)   # refuses a key that escapes the store
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def result(self, job_id: str) -> Any:
        """The result applied for ``job_id``, or None."""
        return load_result(self.blobs, job_id)

    def fail(self, job_id: str, reason: str) -> None:
        """Record that ``job_id`` was dead-lettered and why (the first reason stays)."""
        self._link_once(f"failures/{job_id}.txt", reason.encode())

    def failure(self, job_id: str) -> str | None:
        """Why ``job_id`` was dead-lettered, or None."""
        path = self.blobs._path(f"failures/{job_id}.txt")
        return path.read_text() if path.exists() else None

    @property
    def applied(self) -> int:
        """How many results are stored."""
        return sum(1 for _ in self.folder.glob("*.json"))


class EventLog:
    """Lines ``<unix time> <event> <key>`` appended by the threads of one worker process (one write per line)."""

    def __init__(self, path: str | Path) -> None:
        self._file = open(path, "a", buffering=1)
        self._lock = threading.Lock()

    def write(self, event: str, key: str = "") -> None:
        with self._lock:
            self._file.write(f"{time.time():.3f} {event} {key}\n")

    def close(self) -> None:
        self._file.close()


class LogTail:
    """Reads the complete new lines of every ``*.log`` in a folder, file by file; a killed writer's last,
    half-written line is skipped."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._offsets: dict[Path, int] = {}

    def read(self) -> list[tuple[float, str, str]]:
        out = []
        for path in sorted(self.folder.glob("*.log")):
            start = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = start + end
            for line in data[:end].decode(errors="replace").splitlines():
                parts = line.split(" ", 2)
                try:
                    out.append((float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
                except (IndexError, ValueError):
                    continue
        return out


# ---------------------------------------------------------------------------
# The worker: notebook 06's reconnecting consumer, plus dead letters with a reason and replies
# ---------------------------------------------------------------------------

class PipelineConsumer(ReconnectingConsumer):
    """A :class:`~voicelab.reconnect.ReconnectingConsumer` for the service.

    For each delivery: parse the job and do it; a message that can never be
    done (not a job: :class:`~voicelab.jobs.BadJob`; its audio missing:
    ``KeyError``; audio that is not 16-bit mono WAV: ``ValueError``) goes to
    ``<queue>.dlq`` with the reason, confirmed, then acked
    (:func:`voicelab.retry.dead_letter`). A result is applied to the store
    (idempotent on ``job_id``), sent to the caller if one waits (``reply_to``),
    and only then the message is acked. ``log`` gets one line per outcome.
    """

    def __init__(self, *args: Any, log: EventLog | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self._replies: Any = None

    def _event(self, event: str, key: str) -> None:
        if self.log is not None:
            self.log.write(event, key)

    def _on_message(self, channel: Any, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        try:
            job = VoiceJob.from_message(properties, body)
            result = self.work(job)
        except (BadJob, KeyError, ValueError) as e:
            reason = f"poison: {e}" if isinstance(e, BadJob) else f"cannot be done: {type(e).__name__}: {e}"
            dead_letter(channel, self.queue, method, properties, body, reason, attempts=1)  # confirmed, then acked
            key = job_key(properties, body)
            self._event("dead-lettered", key)
            if isinstance(self.store, ResultFiles):
                self.store.fail(key, reason)   # so that status() says "failed", not "pending" forever
            return
        applied = self.store.apply(job.job_id, result)   # a redelivered job is done again, not applied again
        self._event("applied" if applied else "duplicate", job.job_id)
        if properties.reply_to:
            self._reply(channel, properties, result)
        if self.before_ack is not None:
            self.before_ack(job)
        channel.basic_ack(method.delivery_tag)

    def _reply(self, channel: Any, properties: pika.BasicProperties, result: Any) -> None:
        """Send the result to the caller's Direct Reply-to address, on a channel of its own: a caller that gave
        up and left makes that address invalid, and whatever the broker does about it must not hit the
        channel that holds the unacked jobs."""
        try:
            if self._replies is None or not self._replies.is_open or self._replies.connection is not channel.connection:
                self._replies = channel.connection.channel()
            self._replies.basic_publish("", properties.reply_to, json.dumps(result).encode(),
                                        pika.BasicProperties(correlation_id=properties.correlation_id,
                                                             content_type="application/json"))
        except (pika.exceptions.ChannelClosedByBroker, pika.exceptions.ChannelWrongStateError):
            self._replies = None
            self._event("reply-failed", str(properties.correlation_id))


def _worker_main(url: str, queue: str, blob_root: str, log_path: str, slot: int, threads: int, prefetch: int,
                 effort: int, ready: Any, stop_path: str, hold_path: str) -> None:
    """Child process: ``threads`` consumers; log their connections and errors.

    It stops when the file ``stop_path`` exists, or when its parent is gone. (Not a ``multiprocessing.Event``:
    setting one waits for every process that ever waited on it, and a process killed while waiting never answers.)
    While the file ``hold_path`` exists, a consumer holds its job between storing the result and the ack (fault
    injection: :meth:`Fleet.holding`).
    """
    parent = os.getppid()
    broker = UrlBroker(url)
    blobs = BlobStore(blob_root)
    results = ResultFiles(blobs)
    log = EventLog(log_path)

    def work(job: VoiceJob) -> dict[str, Any]:
        return process_job(job, blobs, effort=effort)

    def before_ack(job: VoiceJob) -> None:
        if os.path.exists(hold_path):
            log.write("holding", job.job_id)
            deadline = time.monotonic() + 10
            while os.path.exists(hold_path) and time.monotonic() < deadline:
                time.sleep(0.01)

    consumers = [PipelineConsumer(broker.parameters(), queue, work, results, name=f"{WORKER_PREFIX}-{slot}-{t}",
                                  prefetch=prefetch, deadline=120, log=log, before_ack=before_ack).start()
                 for t in range(threads)]
    seen = [(0, 0)] * threads
    announced = False
    while not os.path.exists(stop_path) and os.getppid() == parent:
        for i, c in enumerate(consumers):
            connections, errors = c.connections, len(c.reconnects)
            for _ in range(errors - seen[i][1]):
                log.write("connection-error", c.name)
            for _ in range(connections - seen[i][0]):
                log.write("connected", c.name)
            seen[i] = (connections, errors)
        if not announced and all(c.connected.is_set() for c in consumers):
            ready.release()
            announced = True
        time.sleep(0.05)
    for c in consumers:
        c.stop()
    log.close()


class Fleet:
    """``processes`` worker processes of ``threads`` consumers each; :meth:`supervise` replaces dead ones.

    Example::

        with Fleet(broker, "voice08", blobs, processes=2, threads=2) as fleet:
            fleet.kill(0)          # SIGKILL worker process 0
            fleet.supervise()      # [0]: replaced
    """

    def __init__(self, broker: Broker, queue: str, blobs: BlobStore, *, processes: int = 2, threads: int = 2,
                 prefetch: int = 10, effort: int = 2, log_dir: str | Path | None = None) -> None:
        if processes < 1 or threads < 1 or prefetch < 1:
            raise ValueError(f"processes, threads and prefetch must be >= 1, got {processes}, {threads}, {prefetch}")
        self.broker, self.queue, self.blobs = broker, queue, blobs
        self.processes, self.threads, self.prefetch, self.effort = processes, threads, prefetch, effort
        self.log_dir = Path(log_dir) if log_dir else blobs.root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._ctx = multiprocessing.get_context("spawn")
        tag = uuid.uuid4().hex[:8]
        self._stop_path = self.log_dir / f"stop-{tag}"
        self._hold_path = self.log_dir / f"hold-{tag}"
        self._stopping = False
        self._ready = self._ctx.Semaphore(0)
        self.workers: dict[int, Any] = {}
        self.incarnations: Counter[int] = Counter()
        self.replaced: list[dict[str, Any]] = []   # {"time": unix s, "slot", "exitcode"}

    def _spawn(self, slot: int) -> None:
        n = self.incarnations[slot]
        self.incarnations[slot] += 1
        path = self.log_dir / f"worker-{slot}-{n}.log"
        p = self._ctx.Process(target=_worker_main, daemon=True, name=f"voicelab-worker-{slot}",
                              args=(self.broker.amqp_url, self.queue, str(self.blobs.root), str(path), slot,
                                    self.threads, self.prefetch, self.effort, self._ready, str(self._stop_path),
                                    str(self._hold_path)))
        p.start()
        self.workers[slot] = p

    def start(self, timeout: float = 60.0) -> "Fleet":
        """Start every worker process and wait until all their consumers are connected."""
        for slot in range(self.processes):
            self._spawn(slot)
        for _ in range(self.processes):
            if not self._ready.acquire(timeout=timeout):
                self.stop()
                raise RuntimeError(f"a worker process did not connect within {timeout:g} s")
        return self

    def kill(self, slot: int = 0) -> int:
        """SIGKILL worker process ``slot`` (no clean-up, no goodbye to the broker); return its pid."""
        pid = self.workers[slot].pid
        os.kill(pid, signal.SIGKILL)
        return int(pid)

    @contextlib.contextmanager
    def holding(self, timeout: float = 5.0) -> Iterator[int]:
        """Inside the block, consumers hold each job between storing its result and acking it: a fault injected
        there hits a job whose effect is applied and whose ack is not sent. Waits until one holds (up to
        ``timeout`` s) and yields how many hold."""
        before = self._count("holding")
        self._hold_path.touch()
        try:
            deadline = time.monotonic() + timeout
            while self._count("holding") == before and time.monotonic() < deadline:
                time.sleep(0.01)
            yield self._count("holding") - before
        finally:
            self._hold_path.unlink(missing_ok=True)

    def _count(self, event: str) -> int:
        return sum(line.split(" ", 2)[1:2] == [event] for path in self.log_dir.glob("*.log")
                   for line in path.read_text(errors="replace").splitlines())

    def supervise(self) -> list[int]:
        """Replace every worker process that died; return their slots."""
        if self._stopping:
            return []
        out = []
        for slot, p in list(self.workers.items()):
            if not p.is_alive():
                p.join(1)
                self.replaced.append({"time": time.time(), "slot": slot, "exitcode": p.exitcode})
                self._spawn(slot)
                out.append(slot)
        return out

    def stop(self, timeout: float = 15.0) -> None:
        """Ask every worker to finish its current job and leave; kill those that do not within ``timeout``."""
        self._stopping = True
        self._stop_path.touch()
        for p in self.workers.values():
            p.join(timeout)
            if p.is_alive():
                p.kill()
                p.join()

    def __enter__(self) -> "Fleet":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------

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
                channel.queue_delete(self.queue)
                channel.queue_delete(dlq_name(self.queue))
            declare_service_queue(channel, self.queue)

    def delete(self) -> None:
        """Delete the job queue and its DLQ."""
        with self.broker.connect() as connection:
            channel = connection.channel()
            channel.queue_delete(self.queue)
            channel.queue_delete(dlq_name(self.queue))

    def fleet(self, **kwargs: Any) -> Fleet:
        """A :class:`Fleet` on this service's queue and blob store (start it, or use it in ``with``)."""
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


# ---------------------------------------------------------------------------
# Chaos, sampled and accounted for
# ---------------------------------------------------------------------------

"""The poison :func:`run_chaos` injects: kind, and the body of the ``i``-th of that kind."""


