"""Notebook 08's chaos run: the capstone service under load while things break, every job accounted for.

:class:`ChaosDrill` makes N uploads while :data:`CHAOS` happens (workers killed, connections forced
closed, poison sent, the broker restarted), samples the queues for :func:`plot_dashboard`, then
accounts: every job done with its effect applied once, or in the DLQ with its reason; lost counted.
:func:`run_chaos` is the one call that runs a drill and returns its :class:`ChaosRun`.

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker, BlobStore.temporary() as blobs:
        run = run_chaos(broker, blobs, n=2000)        # ChaosDrill(broker, blobs, n=2000).run()
        run.counts["lost"]            # 0
        plot_dashboard(run, caption=broker_caption(broker))
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from typing import Any, Callable

import pandas as pd
import pika

from ..broker import Broker
from ..deadletters import list_dead_letters
from ..jobs import BlobStore, VoiceJob, process_job, synth_speech, wav_bytes
from ..management import Management
from ..pipeline import WORKER_PREFIX, LogTail, VoiceService
from ..queues import confirm_mode, dlq_name, job_properties
from ..retry import job_key
from .chaos_report import BROKER_EVENTS, EVENT_COLUMNS, ChaosRun, Ledger, job_counts, job_table, plot_dashboard
from .measure import progress as bar

__all__ = ["CHAOS", "POISON_BODIES", "ChaosDrill", "ChaosRun", "plot_dashboard", "run_chaos"]

CHAOS: tuple[tuple[float, str], ...] = (
    (0.10, "kill a worker process"),
    (0.25, "force-close connections"),
    (0.40, "inject poison messages"),
    (0.55, "restart the broker"),
    (0.75, "kill -9 the broker, start it"),
)
"""The chaos schedule of :class:`ChaosDrill`: each event once the given fraction of the uploads is sent."""

POISON_BODIES: tuple[tuple[str, Callable[[int], bytes]], ...] = (
    ("not JSON", lambda i: b"\x00\xffnot json at all"),
    ("a field missing", lambda i: json.dumps({"job_id": f"poison-field-{i}", "user_id": i}).encode()),
    ("audio missing", lambda i: VoiceJob(f"poison-audio-{i}", "audio/never-uploaded.wav", i).to_json()),
)
"""The poison a drill injects: kind, and the body of the ``i``-th of that kind."""


def _poison(broker: Broker, queue: str, per_kind: int) -> dict[str, str]:
    """Publish ``per_kind`` messages of each poison kind, confirmed; their keys (message ids) -> kind."""
    keys = {}
    with broker.connect() as connection:
        channel = connection.channel()
        confirm_mode(channel)
        for kind, body in POISON_BODIES:
            for i in range(per_kind):
                raw = body(i)
                key = f"poison-{kind.replace(' ', '-')}-{i}"
                channel.basic_publish("", queue, raw, job_properties(message_id=key), mandatory=True)
                keys[job_key(pika.BasicProperties(message_id=key), raw)] = kind
    return keys


def _wait_listed(mgmt: Any, prefix: str, count: int, timeout: float = 10.0) -> int:
    """Wait until the management API lists ``count`` connections named ``prefix...`` (it lists a new
    connection only after its next statistics); return how many it lists."""
    deadline = time.monotonic() + timeout
    while True:
        listed = sum(1 for c in mgmt.get("connections")
                     if str((c.get("client_properties") or {}).get("connection_name", "")).startswith(prefix))
        if listed >= count or time.monotonic() > deadline:
            return listed
        time.sleep(0.1)


class ChaosDrill:
    """Upload ``n`` jobs to the service while ``schedule`` happens to it; account for every job.

    Uploads arrive at ``rate`` per second (default ``n / 20``: a 20 s stream) in batches of a fifth of a
    second through the reliable publisher; after an outage the uploads held up go out at once. The fleet
    (``processes`` x ``threads`` consumers) does the real signal work on ``clips`` distinct recordings. Each
    chaos event fires once the given fraction of the uploads is sent, so it hits work in flight; the forced close
    hits consumers that hold a job between storing its result and its ack (:meth:`Fleet.holding`). A dead worker
    process is replaced at once. Sampled every ``every`` s: jobs done, uploads confirmed,
    queue depths (passive declare; none while the broker is down), connection errors, reconnections, worker
    processes lost and replaced. Needs a broker voicelab controls (:func:`voicelab.broker.own_broker`).

    The steps of :meth:`run`: :meth:`prepare` (queue, recordings, their expected results), :meth:`start` (the
    fleet, the uploads and the chaos, each in a thread), :meth:`watch` (supervise and sample until every job is
    done or ``timeout``), :meth:`stop`, :meth:`account`. Each chaos event is a method: :meth:`kill_worker`,
    :meth:`force_close`, :meth:`inject_poison`, :meth:`restart_broker`, :meth:`crash_broker`.

    The accounting (``jobs``, ``counts``): every uploaded job is ``done`` (its result stored once, equal to the
    result computed without any queue) or ``dead-lettered`` (with the reason from the DLQ) or ``lost``; every
    poison message is in the DLQ or lost; ``applied`` counts the workers' "applied" lines per job (a link
    that created the result), ``handled`` every time a worker finished it.

    Example::

        drill = ChaosDrill(broker, blobs, n=2000, schedule=CHAOS[:2])
        run = drill.run()           # a ChaosRun
        run.counts["lost"]          # 0
    """

    def __init__(self, broker: Broker, blobs: BlobStore, n: int = 2000, *, rate: float | None = None,
                 queue: str = "chaos08", processes: int = 2, threads: int = 2, prefetch: int = 10, effort: int = 2,
                 clips: int = 12, clip_seconds: float = 0.5, poison_per_kind: int = 3,
                 schedule: tuple[tuple[float, str], ...] = CHAOS, every: float = 0.25, timeout: float | None = None,
                 progress: bool = True) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        known = {name for _, name in CHAOS}
        if any(name not in known for _, name in schedule):
            raise ValueError(f"schedule events must be among {sorted(known)}, got {schedule!r}")
        if any(name in BROKER_EVENTS for _, name in schedule) and not broker.can_control:
            raise ValueError("restarting or killing the broker needs a broker voicelab started (own_broker())")
        rate = rate or max(10.0, n / 20)
        if not rate > 0:
            raise ValueError(f"rate must be > 0 uploads/s, got {rate!r}")
        self.broker, self.blobs, self.n, self.rate, self.queue = broker, blobs, n, rate, queue
        self.processes, self.threads, self.prefetch, self.effort = processes, threads, prefetch, effort
        self.clips, self.clip_seconds, self.poison_per_kind = clips, clip_seconds, poison_per_kind
        self.schedule, self.every, self.progress = schedule, every, progress
        self.timeout = timeout if timeout is not None else 120 + 2 * n / rate
        self.actions: dict[str, Callable[[], str]] = {
            "kill a worker process": self.kill_worker, "force-close connections": self.force_close,
            "inject poison messages": self.inject_poison, "restart the broker": self.restart_broker,
            "kill -9 the broker, start it": self.crash_broker}
        # shared by the threads: what the uploads, the chaos and the workers did so far
        self.sent = self.confirmed = self.republished = self.publisher_reconnects = self.done = 0
        self.error: BaseException | None = None
        self.poison: dict[str, str] = {}
        self.held: dict[str, list[str]] = {}   # chaos event -> the jobs in hand (result stored, not acked) it hit
        self.uploaded: list[VoiceJob] = []
        self.events: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._probe: Any = None
        self._bar: Any = None
        self.t0 = 0.0

    def run(self) -> ChaosRun:
        """Every step in order; what happened, accounted for."""
        self.prepare()
        self.start()
        try:
            self.watch()
        finally:
            self.stop()
        seconds = time.time() - self.t0
        self.ledger.read()   # what the workers wrote while they stopped
        return self.account(seconds)

    # -- the steps -----------------------------------------------------------------------------------------

    def prepare(self) -> None:
        """A fresh job queue; the recordings and, for each, the result computed without any queue; the fleet."""
        self.service = VoiceService(self.broker, self.blobs, self.queue, effort=self.effort)
        self.service.declare(fresh=True)
        audio = [wav_bytes(synth_speech(self.clip_seconds, seed=s)) for s in range(self.clips)]
        self.features: dict[str, dict[str, Any]] = {}
        for a in audio:
            probe = VoiceJob("probe", self.blobs.put(a), 0)
            self.features[probe.blob_key] = {k: v for k, v in process_job(probe, self.blobs, effort=self.effort).items()
                                             if k not in ("job_id", "user_id")}
        self.uploads = [(audio[i % self.clips], i) for i in range(self.n)]
        log_dir = self.blobs.root / f"logs-{self.queue}"
        self.fleet = self.service.fleet(processes=self.processes, threads=self.threads, prefetch=self.prefetch,
                                        log_dir=log_dir)
        self.mgmt = Management(self.broker)
        self.ledger = Ledger(LogTail(log_dir))

    def start(self) -> None:
        """Start the fleet, then the uploads and the chaos, each in a thread; the clock starts with the fleet."""
        self.fleet.start()
        self.t0 = time.time()
        self._threads = [threading.Thread(target=self._publish_uploads, daemon=True, name="voicelab-uploads"),
                         threading.Thread(target=self._fire_schedule, daemon=True, name="voicelab-chaos")]
        for th in self._threads:
            th.start()

    def _publish_uploads(self) -> None:
        """Thread: upload at ``rate`` per second, in batches of a fifth of a second, until ``n`` are sent."""
        batch = max(1, round(self.rate / 5))
        try:
            while self.sent < self.n and not self._stop.is_set():
                due = (time.time() - self.t0) * self.rate   # uploads the users have made by now
                if self.sent >= due:
                    time.sleep(min(0.2, (self.sent - due) / self.rate + 0.001))
                    continue
                chunk = self.uploads[self.sent:self.sent + batch]
                jobs, report = self.service.upload_many(chunk)
                self.uploaded.extend(jobs)
                self.sent += len(chunk)
                self.confirmed += len(report.confirmed)
                self.republished += report.republished
                self.publisher_reconnects += report.reconnects
        except Exception as e:   # BrokerGone, PublishFailed: counted as jobs never uploaded
            self.error = e

    def _fire_schedule(self) -> None:
        """Thread: each chaos event of the schedule once its fraction of the uploads is sent; record it."""
        try:
            for fraction, name in self.schedule:
                while self.sent < fraction * self.n:
                    if self._stop.wait(0.02):
                        return
                start = time.time()
                detail = self.actions[name]()
                end = time.time()
                self.events.append({"event": name, "t": start - self.t0, "t_end": end - self.t0,
                                    "seconds": end - start, "at_sent": self.sent, "at_done": self.done,
                                    "detail": detail})
        except Exception as e:
            self.error = e

    # -- the chaos events: each does it and says what it did -------------------------------------------------

    def kill_worker(self) -> str:
        """SIGKILL worker process 0 (the fleet replaces it) while its consumers hold a job before its ack."""
        with self.fleet.holding(slot=0) as held:
            pid = self.fleet.kill(0)
        self.held["kill a worker process"] = held
        return f"SIGKILL worker process {pid}, {len(held)} job(s) in hand (result stored, not acked)"

    def force_close(self) -> str:
        """Close every worker connection from the broker while the consumers hold a job before its ack."""
        _wait_listed(self.mgmt, WORKER_PREFIX, self.processes * self.threads)
        with self.fleet.holding() as held:
            closed = self.mgmt.close_connections(WORKER_PREFIX, reason="voicelab chaos")
            time.sleep(0.3)   # the close reaches the consumers before their acks go out
        self.held["force-close connections"] = held
        return f"{closed} worker connections closed by the broker, {len(held)} job(s) in hand"

    def inject_poison(self) -> str:
        """Publish :data:`POISON_BODIES`, ``poison_per_kind`` of each kind, confirmed."""
        self.poison = _poison(self.broker, self.queue, self.poison_per_kind)
        return f"{len(self.poison)} poison messages"

    def restart_broker(self) -> str:
        """A graceful broker restart (queues and persistent messages kept)."""
        self.broker.restart()
        return "graceful restart"

    def crash_broker(self) -> str:
        """``kill -9`` the broker, then start it (data kept on disk)."""
        self.broker.kill()
        self.broker.start()
        return "SIGKILL, then start"

    # -- watching the run ----------------------------------------------------------------------------------

    def watch(self) -> None:
        """Until every job is done, the chaos over and the poison dead-lettered (or an error, or ``timeout``):
        replace dead workers, read their logs, sample, show progress; every ``every`` s."""
        self._bar = bar(range(self.n), desc="chaos run", total=self.n) if self.progress else None
        shown = 0
        while True:
            self.ledger.tallies["worker processes replaced"] += len(self.fleet.supervise())
            self.ledger.read()
            self.done = len(self.ledger.finished)
            self._sample()
            if self._bar is not None:
                self._bar.update(self.done - shown)
                shown = self.done
            if self._finished() or time.time() - self.t0 > self.timeout:
                break
            time.sleep(self.every)

    def _finished(self) -> bool:
        """Every upload done, the chaos over, the poison dead-lettered; or a thread failed."""
        chaos_over = not self._threads[1].is_alive()
        poison_done = set(self.poison) <= self.ledger.dead_keys
        return (self.done >= self.n and chaos_over and poison_done) or self.error is not None

    def _depths(self) -> tuple[float, float]:
        """The job queue's and the DLQ's ready messages (passive declare), or NaN while the broker is away."""
        try:
            if self._probe is None or not self._probe.is_open:
                self._probe = self.broker.connect(connection_attempts=1, socket_timeout=0.5, stack_timeout=1)
            ch = self._probe.channel()
            depth = ch.queue_declare(self.queue, passive=True).method.message_count
            dlq = ch.queue_declare(dlq_name(self.queue), passive=True).method.message_count
            ch.close()
            return depth, dlq
        except Exception:   # the broker is down or restarting: no figure this time
            self._probe = None
            return float("nan"), float("nan")

    def _sample(self) -> None:
        """One row of :attr:`ChaosRun.samples`: progress, queue depths, failures and recoveries so far."""
        depth, dlq = self._depths()
        tallies = self.ledger.tallies
        self.samples.append({"t": time.time() - self.t0, "done": self.done, "confirmed": self.confirmed,
                             "ready": depth, "dlq": dlq, "dead-lettered": len(self.ledger.dead_keys),
                             "connection errors": tallies["connection-error"], "connections": tallies["connected"],
                             "workers lost": len(self.fleet.replaced),
                             "workers replaced": tallies["worker processes replaced"]})

    def stop(self) -> None:
        """Stop the uploads and the chaos, then the fleet; close what the drill opened."""
        self._stop.set()
        for th in self._threads:
            th.join(120)
        self.fleet.stop()
        self.mgmt.close()
        if self._bar is not None:
            self._bar.close()
        if self._probe is not None and self._probe.is_open:
            self._probe.close()

    # -- the accounting ------------------------------------------------------------------------------------

    def account(self, seconds: float) -> ChaosRun:
        """Every job and poison message, one row each, and the counts; what the broker holds is read last."""
        left, letters = self._read_queues()
        reasons: dict[str, str] = {}
        dead_letters: Counter[str] = Counter()
        for d in letters:
            reasons.setdefault(d.job, d.reason)
            dead_letters[d.job] += 1
        jobs = job_table(self.uploaded, self.service.status, self._expected, self.poison, reasons, self.ledger)
        counts = job_counts(jobs, uploads=self.n, confirmed=self.confirmed, left=left, dead_letters=dead_letters)
        held = [key for keys in self.held.values() for key in keys]
        counts["in hand at the worker kill and the forced close"] = len(held)
        counts["of them, done again and not applied again"] = sum(
            1 for key in held if self.ledger.handled[key] >= 2 and self.ledger.applied[key] == 1)
        if self.error is not None and counts["lost"]:
            counts["error"] = f"{type(self.error).__name__}: {self.error}"   # type: ignore[assignment]
        publisher = {"sent": self.sent, "confirmed": self.confirmed, "republished": self.republished,
                     "publisher reconnects": self.publisher_reconnects}
        return ChaosRun(samples=pd.DataFrame(self.samples), events=pd.DataFrame(self.events, columns=EVENT_COLUMNS),
                        jobs=jobs, counts=counts, seconds=seconds, publisher=publisher)

    def _expected(self, job: VoiceJob) -> dict[str, Any]:
        """The result of ``job`` computed without any queue (its recording's features, with its ids)."""
        return {"job_id": job.job_id, "user_id": job.user_id, **self.features[job.blob_key]}

    def _read_queues(self) -> tuple[int, list[Any]]:
        """Messages left in the job queue, and the dead letters (each with its reason)."""
        try:
            connection = self.broker.connect()
        except Exception as e:
            raise RuntimeError(f"the broker is unreachable after the chaos run ({type(e).__name__}); what went wrong "
                               f"during the run: {self.error!r}") from self.error or e
        with connection:
            channel = connection.channel()
            left = int(channel.queue_declare(self.queue, passive=True).method.message_count)
            return left, list_dead_letters(channel, self.queue, limit=10 ** 6)


def run_chaos(broker: Broker, blobs: BlobStore, n: int = 2000, **options: Any) -> ChaosRun:
    """Run a :class:`ChaosDrill` of ``n`` uploads (``options``: its keyword arguments) and return what it did.

    Example::

        run = run_chaos(broker, blobs, n=600, queue="test.chaos", poison_per_kind=2, progress=False)
        run.counts["lost"], list(run.events["event"])   # (0, ['kill a worker process', ...])
    """
    return ChaosDrill(broker, blobs, n, **options).run()
