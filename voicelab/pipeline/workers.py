"""The capstone's workers: reconnecting consumers in worker processes, a fleet that replaces dead ones.

- :class:`PipelineConsumer`: notebook 06b's :class:`~voicelab.reconnect.ReconnectingConsumer`, plus dead letters
  with a reason and replies to a caller who waits.
- :func:`_pipeline_worker_process`: the body of one worker process (``threads`` consumers).
- :class:`Fleet`: ``processes`` worker processes; :meth:`Fleet.supervise` replaces the dead ones.
- :class:`EventLog` and :class:`LogTail`: each process writes one line per outcome, a watcher reads them back.

Example::

    with Fleet(broker, "voice08", blobs, processes=2, threads=2) as fleet:
        fleet.kill(0)                     # SIGKILL worker process 0
        fleet.supervise()                 # [0]: replaced
    LogTail(fleet.log_dir).read()         # [(1718000000.123, 'applied', '<job id>'), ...]
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

import pika
import pika.exceptions

from ..broker import Broker, UrlBroker
from ..jobs import BadJob, BlobStore, VoiceJob, process_job
from ..reconnect import ReconnectingConsumer
from ..retry import dead_letter, job_key
from .results import ResultFiles

WORKER_PREFIX = "voicelab-pipeline-worker"
"""``connection_name`` prefix of every worker connection (the management API finds them by it)."""


# ---------------------------------------------------------------------------
# The workers' event logs
# ---------------------------------------------------------------------------

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


def _parse_events(text: str) -> list[tuple[float, str, str]]:
    """The ``(time, event, key)`` of each line :class:`EventLog` wrote; a malformed line is skipped."""
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        try:
            out.append((float(parts[0]), parts[1], parts[2] if len(parts) > 2 else ""))
        except (IndexError, ValueError):
            continue
    return out


class LogTail:
    """Reads the complete new lines of every ``*.log`` in a folder, file by file; a killed writer's last,
    half-written line is skipped."""

    def __init__(self, folder: Path, pattern: str = "*.log") -> None:
        self.folder = folder
        self.pattern = pattern
        self._offsets: dict[Path, int] = {}

    def read(self) -> list[tuple[float, str, str]]:
        """The ``(time, event, key)`` lines written since the last call."""
        out = []
        for path in sorted(self.folder.glob(self.pattern)):
            start = self._offsets.get(path, 0)
            with open(path, "rb") as f:
                f.seek(start)
                data = f.read()
            end = data.rfind(b"\n") + 1
            self._offsets[path] = start + end
            out.extend(_parse_events(data[:end].decode(errors="replace")))
        return out


# ---------------------------------------------------------------------------
# The consumer: notebook 06b's reconnecting consumer, plus dead letters with a reason and replies
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


# ---------------------------------------------------------------------------
# A worker process, and the fleet of them
# ---------------------------------------------------------------------------

def _hold_before_ack(hold_paths: tuple[str, ...], log: EventLog, job: VoiceJob) -> None:
    """While one of the files ``hold_paths`` exists (up to 10 s), hold ``job`` between its stored result and its
    ack."""
    if any(os.path.exists(p) for p in hold_paths):
        log.write("holding", job.job_id)
        deadline = time.monotonic() + 10
        while any(os.path.exists(p) for p in hold_paths) and time.monotonic() < deadline:
            time.sleep(0.01)


def _log_connections(consumers: list[PipelineConsumer], seen: list[tuple[int, int, int]], log: EventLog) -> None:
    """Log each connection made and lost, and each crash (a consumer restarted after an unexpected error), since
    ``seen`` (per consumer: connections, errors, crashes), then update it."""
    for i, c in enumerate(consumers):
        connections, errors, crashes = c.connections, len(c.reconnects), len(c.crashes)
        for _ in range(errors - seen[i][1]):
            log.write("connection-error", c.name)
        for crash in c.crashes[seen[i][2]:crashes]:
            log.write("crashed", f"{c.name} {crash['error']}")
        for _ in range(connections - seen[i][0]):
            log.write("connected", c.name)
        seen[i] = (connections, errors, crashes)


def _pipeline_worker_process(url: str, queue: str, blob_root: str, log_path: str, slot: int, threads: int,
                             prefetch: int, effort: int, ready: Any, stop_path: str, hold_path: str) -> None:
    """Child process of a :class:`Fleet`: ``threads`` consumers; log their connections and errors.

    It stops when the file ``stop_path`` exists, or when its parent is gone. (Not a ``multiprocessing.Event``:
    setting one waits for every process that ever waited on it, and a process killed while waiting never answers.)
    While the file ``hold_path`` (every process) or ``<hold_path>-<slot>`` (this one) exists, a consumer holds its
    job between storing the result and the ack (fault injection: :meth:`Fleet.holding`). ``ready`` is released
    once every consumer is connected.
    """
    parent = os.getppid()
    broker = UrlBroker(url)
    blobs = BlobStore(blob_root)
    results = ResultFiles(blobs)
    log = EventLog(log_path)
    work = functools.partial(process_job, store=blobs, effort=effort)
    before_ack = functools.partial(_hold_before_ack, (hold_path, f"{hold_path}-{slot}"), log)
    consumers = [PipelineConsumer(broker.parameters(), queue, work, results, name=f"{WORKER_PREFIX}-{slot}-{t}",
                                  prefetch=prefetch, deadline=120, log=log, before_ack=before_ack).start()
                 for t in range(threads)]
    seen = [(0, 0, 0)] * threads
    announced = False
    while not os.path.exists(stop_path) and os.getppid() == parent:
        _log_connections(consumers, seen, log)
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
        p = self._ctx.Process(target=_pipeline_worker_process, daemon=True, name=f"voicelab-worker-{slot}",
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
    def holding(self, slot: int | None = None, timeout: float = 5.0) -> Iterator[list[str]]:
        """Inside the block, consumers (of every process, or of process ``slot`` only) hold each job between
        storing its result and acking it: a fault injected there hits a job whose effect is applied and whose ack
        is not sent. Waits until one holds (up to ``timeout`` s) and yields the ids of the jobs held so far."""
        tail = LogTail(self.log_dir, f"worker-{slot}-*.log" if slot is not None else "*.log")
        tail.read()   # what was logged before: not this block's
        path = self._hold_path if slot is None else self._hold_path.with_name(f"{self._hold_path.name}-{slot}")
        path.touch()
        try:
            held: list[str] = []
            deadline = time.monotonic() + timeout
            while True:
                held += [key for _, event, key in tail.read() if event == "holding"]
                if held or time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            yield held
        finally:
            path.unlink(missing_ok=True)

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
