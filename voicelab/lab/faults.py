"""Notebook 06b's faults: jobs sent through forced closes and broker restarts to a reconnecting consumer.

:func:`run_through_faults` sends jobs, force-closes the consumer's connection through the management
API in the middle of a job, optionally restarts the broker, and counts: sent, done once, done twice
but applied once, lost.

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker:
        report = run_through_faults(broker, n=200, faults=("close", "restart"))
        report["lost"]   # 0
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any, Iterable

import matplotlib.pyplot as plt
import pika
import pika.exceptions

from ..jobs import BlobStore, VoiceJob
from ..management import Management
from ..queues import publish_bodies, queue_counts, reset_queue
from ..pipeline.results import ResultFiles
from ..reconnect import CONNECTION_ERRORS, ReconnectingConsumer
from .measure import add_caption


def run_through_faults(broker: Any, n: int = 200, faults: tuple[str, ...] = ("close",), *,
                       queue: str = "survive06", job_seconds: float = 0.005, timeout: float = 60.0,
                       seed: int = 0) -> dict[str, Any]:
    """Send ``n`` jobs to a durable quorum ``queue`` and consume them through ``faults``; count the outcome.

    Faults, spread evenly over the run, each *while a job is in flight* (after
    its result was applied, before its ack): ``"close"`` force-closes the
    consumer's connection through the management API; ``"restart"`` restarts
    the broker gracefully (needs a broker voicelab controls, e.g.
    :func:`voicelab.broker.own_broker`). Results go to a
    :class:`~voicelab.pipeline.ResultFiles` (files: they outlive the worker, as in notebook 08).
    Returns the counts (``sent``, ``done once``, ``done twice but applied once``, ``lost``: no result on
    disk), ``in flight at the faults`` (the job held at each fault) and how many of them were ``done again and
    not applied again``, the reconnect log, the applied-over-time series and the fault times.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    unknown = [f for f in faults if f not in ("close", "restart")]
    if unknown:
        raise ValueError(f"faults must be 'close' or 'restart', got {unknown!r}")
    if "restart" in faults and not broker.can_control:
        raise ValueError("faults=('restart',) needs a broker voicelab started (own_broker()), "
                         "not a VOICELAB_AMQP_URL one")
    jobs = [VoiceJob.new(f"audio/{i}.wav", user_id=i) for i in range(n)]
    with broker.connect() as connection:
        reset_queue(connection.channel(), queue, arguments={"x-queue-type": "quorum"})
    with BlobStore.temporary() as blobs:
        store = _CountedResults(ResultFiles(blobs))
        report = _consume_through_faults(broker, queue, jobs, faults, store, job_seconds, timeout, seed)
        report |= store.counts(j.job_id for j in jobs)
    held = [f["job"] for f in report["faults"]]
    report["in flight at the faults"] = held
    report["of them, done again and not applied again"] = sum(
        1 for j in held if store.handled[j] >= 2 and store.applied_by_call[j] == 1)
    return report


class _CountedResults:
    """A :class:`~voicelab.pipeline.ResultFiles` (results on disk: they survive the worker, as in notebook 08)
    that counts, per job, how often a worker handled it and how many of those calls applied it."""

    def __init__(self, files: ResultFiles) -> None:
        self.files = files
        self.handled: Counter[str] = Counter()
        self.applied_by_call: Counter[str] = Counter()

    def apply(self, job_id: str, result: Any) -> bool:
        applied = self.files.apply(job_id, result)
        self.handled[job_id] += 1
        self.applied_by_call[job_id] += applied
        return applied

    @property
    def applied(self) -> int:
        """Jobs applied by this run's calls (progress; :meth:`counts` reads the files)."""
        return sum(1 for v in self.applied_by_call.values() if v)

    def counts(self, sent: Iterable[str]) -> dict[str, int]:
        """``sent``, ``done once``, ``done twice but applied once``, ``lost`` (no result on disk)."""
        ids = list(sent)
        stored = {j for j in ids if self.files.result(j) is not None}
        return {"sent": len(ids), "done once": sum(1 for j in ids if self.handled[j] == 1 and j in stored),
                "done twice but applied once": sum(1 for j in ids if self.handled[j] >= 2 and j in stored),
                "lost": len(ids) - len(stored)}


def _consume_through_faults(broker: Any, queue: str, jobs: list[VoiceJob], faults: tuple[str, ...],
                            store: _CountedResults, job_seconds: float, timeout: float, seed: int) -> dict[str, Any]:
    """Publish ``jobs`` to ``queue`` and consume them with a :class:`ReconnectingConsumer` through ``faults``."""
    n = len(jobs)
    mgmt = Management(broker)
    name = f"voicelab-survive-{random.Random(seed).randrange(10**6)}"
    injector = _FaultInjector(broker, mgmt, name, store, {round(n * (k + 1) / (len(faults) + 1)): fault
                                                          for k, fault in enumerate(faults)})

    def work(job: VoiceJob) -> dict[str, Any]:
        time.sleep(job_seconds)
        return {"job_id": job.job_id, "user_id": job.user_id}

    consumer = ReconnectingConsumer(broker.parameters(), queue, work, store, name=name, seed=seed,
                                    deadline=timeout, before_ack=injector.before_ack)
    injector.consumer = consumer.start()
    t0 = time.monotonic()
    try:
        _wait_listed(mgmt, name, consumer)
        try:
            with broker.connect() as connection:
                publish_bodies(connection.channel(), queue, jobs)   # confirmed, persistent, message_id = job id
        finally:
            injector.published.set()
        while store.applied < n and time.monotonic() - t0 < timeout and consumer.error is None:
            time.sleep(0.05)
        time.sleep(0.3)   # let the last acks go out
    finally:
        consumer.stop()
        mgmt.close()
        injector.wait_restarts()   # the broker is up again before anything is counted
    with broker.connect() as connection:
        channel = connection.channel()
        left = queue_counts(channel, queue)
        channel.queue_delete(queue)
    if consumer.error is not None:
        raise consumer.error
    return {"left in queue": left, "seconds": round(time.monotonic() - t0, 2),
            "connections": consumer.connections, "reconnects": consumer.reconnects, "faults": injector.log,
            "timeline": injector.timeline}


def _wait_listed(mgmt: Management, name: str, consumer: ReconnectingConsumer, timeout: float = 30.0) -> None:
    """Wait until the management API lists the connection ``name`` (it lists a new one only after a stats
    interval), so that a ``"close"`` fault hits at once rather than seconds later."""
    deadline = time.monotonic() + timeout
    while consumer.error is None and time.monotonic() < deadline and not [
            c for c in mgmt.get("connections")
            if (c.get("client_properties") or {}).get("connection_name") == name]:
        time.sleep(0.1)


class _FaultInjector:
    """The ``before_ack`` of :func:`run_through_faults`: records progress, and at the jobs numbered in ``at``
    injects that fault while the job is in flight (its result applied, its ack not yet sent)."""

    def __init__(self, broker: Any, mgmt: Management, name: str, store: _CountedResults, at: dict[int, str]) -> None:
        self.broker, self.mgmt, self.name, self.store, self.at = broker, mgmt, name, store, at
        self.consumer: ReconnectingConsumer | None = None
        self.started = 0
        self.log: list[dict[str, Any]] = []
        self.timeline: list[tuple[float, int]] = []
        self.restarts: list[threading.Thread] = []
        self.published = threading.Event()   # a restart waits for the publisher: it would kill its connection

    def _now(self) -> float:
        return round(time.monotonic() - (self.consumer.started_at if self.consumer else 0.0), 3)

    def before_ack(self, job: VoiceJob) -> None:
        self.started += 1
        self.timeline.append((self._now(), self.store.applied))
        fault = self.at.pop(self.started, None)
        if fault is None:
            return
        if fault == "close":
            self.mgmt.close_connections(self.name, reason="voicelab fault injection")
            self.log.append({"t": self._now(), "fault": fault, "job": job.job_id})
            time.sleep(0.5)   # the connection dies before this job's ack goes out
            return
        self.published.wait(60)   # the job stays in flight meanwhile: its ack is still lost with the broker
        self.log.append({"t": self._now(), "fault": fault, "job": job.job_id})
        self.restarts.append(threading.Thread(target=self.broker.restart, daemon=True))
        self.restarts[-1].start()
        self._hold_until_down()

    def _hold_until_down(self, timeout: float = 30.0) -> None:
        """Hold this job until the broker is down: its ack is lost with it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                pika.BlockingConnection(self.broker.parameters(connection_attempts=1, socket_timeout=0.5,
                                                               stack_timeout=1)).close()
            except CONNECTION_ERRORS:
                break
            time.sleep(0.1)

    def wait_restarts(self) -> None:
        for thread in self.restarts:
            thread.join(90)


def plot_faults(report: dict[str, Any], caption: str = "") -> Any:
    """Jobs applied against time through the faults of :func:`run_through_faults`; faults as vertical lines,
    reconnect attempts as ticks at the bottom."""
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    t = [p[0] for p in report["timeline"]]
    ax.step(t, [p[1] for p in report["timeline"]], where="post", color="tab:blue", label="results applied")
    for k, fault in enumerate(report["faults"]):
        ax.axvline(fault["t"], color="crimson", linestyle="--", label="fault" if k == 0 else None)
        ax.annotate(fault["fault"], (fault["t"], report["sent"] * 0.95), color="crimson", fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    rt = [r["t"] for r in report["reconnects"]]
    ax.scatter(rt, [0] * len(rt), marker="|", s=200, color="black", label="reconnect attempt (after backoff)")
    ax.set_xlabel("time since the consumer started (s)")
    ax.set_ylabel("jobs applied")
    ax.set_title(f"{report['sent']} jobs through faults: lost {report['lost']}, "
                 f"done twice but applied once {report['done twice but applied once']}", fontsize=10)
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3)
    add_caption(fig, caption)
    return fig


