"""Notebook 06's faults: jobs sent through forced closes and broker restarts to a reconnecting consumer.

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
from typing import Any

import matplotlib.pyplot as plt
import pika
import pika.exceptions

from ..jobs import VoiceJob
from ..management import Management
from ..queues import confirm_mode, job_properties
from ..reconnect import CONNECTION_ERRORS, ReconnectingConsumer, ResultStore
from .measure import add_caption


def run_through_faults(broker: Any, n: int = 200, faults: tuple[str, ...] = ("close",), *,
                       queue: str = "survive06", job_seconds: float = 0.005, timeout: float = 60.0,
                       seed: int = 0) -> dict[str, Any]:
    """Send ``n`` jobs to a durable quorum ``queue`` and consume them through ``faults``; count the outcome.

    Faults, spread evenly over the run, each *while a job is in flight* (after
    its result was applied, before its ack): ``"close"`` force-closes the
    consumer's connection through the management API; ``"restart"`` restarts
    the broker gracefully (needs a broker voicelab controls, e.g.
    :func:`voicelab.broker.own_broker`). Returns the :meth:`ResultStore.counts`,
    the reconnect log, the applied-over-time series and the fault times.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    unknown = [f for f in faults if f not in ("close", "restart")]
    if unknown:
        raise ValueError(f"faults must be 'close' or 'restart', got {unknown!r}")
    if "restart" in faults and not broker.can_control:
        raise ValueError("faults=('restart',) needs a broker voicelab started (own_broker()), not a VOICELAB_AMQP_URL one")
    jobs = [VoiceJob.new(f"audio/{i}.wav", user_id=i) for i in range(n)]
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    store = ResultStore()
    mgmt = Management(broker)
    name = f"voicelab-survive-{random.Random(seed).randrange(10**6)}"
    at = {round(n * (k + 1) / (len(faults) + 1)): fault for k, fault in enumerate(faults)}
    log: list[dict[str, Any]] = []
    timeline: list[tuple[float, int]] = []
    started = [0]
    restarts: list[threading.Thread] = []

    def work(job: VoiceJob) -> dict[str, Any]:
        time.sleep(job_seconds)
        return {"job_id": job.job_id, "user_id": job.user_id}

    def before_ack(job: VoiceJob) -> None:
        started[0] += 1
        timeline.append((round(time.monotonic() - consumer._t0, 3), store.applied))
        fault = at.pop(started[0], None)
        if fault is None:
            return
        # the fault hits while this job is in flight: its result is applied, its ack will be lost
        if fault == "close":
            mgmt.close_connections(name, reason="voicelab fault injection")
            log.append({"t": round(time.monotonic() - consumer._t0, 3), "fault": fault, "job": job.job_id})
            time.sleep(0.5)   # the connection dies before this job's ack goes out
            return
        log.append({"t": round(time.monotonic() - consumer._t0, 3), "fault": fault, "job": job.job_id})
        restarts.append(threading.Thread(target=broker.restart, daemon=True))
        restarts[-1].start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:   # hold this job until the broker is down: its ack is lost with it
            try:
                pika.BlockingConnection(broker.parameters(connection_attempts=1, socket_timeout=0.5,
                                                          stack_timeout=1)).close()
            except CONNECTION_ERRORS:
                break
            time.sleep(0.1)

    consumer = ReconnectingConsumer(broker.parameters(), queue, work, store, name=name, seed=seed,
                                    deadline=timeout, before_ack=before_ack)
    consumer.start()
    t0 = time.monotonic()
    try:
        # the management API lists a new connection only after a stats interval: wait for it before the jobs go
        # out, so that a "close" fault hits at once rather than seconds later
        while consumer.error is None and time.monotonic() - t0 < 30 and not [
                c for c in mgmt.get("connections")
                if (c.get("client_properties") or {}).get("connection_name") == name]:
            time.sleep(0.1)
        with broker.connect() as connection:
            channel = connection.channel()
            confirm_mode(channel)
            for job in jobs:
                channel.basic_publish("", queue, job.to_json(), job_properties(message_id=job.job_id), mandatory=True)
        while store.applied < n and time.monotonic() - t0 < timeout and consumer.error is None:
            time.sleep(0.05)
        time.sleep(0.3)   # let the last acks go out
    finally:
        consumer.stop()
        mgmt.close()
        for thread in restarts:
            thread.join(90)   # the broker is up again before anything is counted
    with broker.connect() as connection:
        channel = connection.channel()
        left = int(channel.queue_declare(queue, passive=True).method.message_count)
        channel.queue_delete(queue)
    if consumer.error is not None:
        raise consumer.error
    return {**store.counts(j.job_id for j in jobs), "left in queue": left, "seconds": round(time.monotonic() - t0, 2),
            "connections": consumer.connections, "reconnects": consumer.reconnects, "faults": log,
            "timeline": timeline}


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


