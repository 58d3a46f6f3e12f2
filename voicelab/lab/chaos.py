"""Notebook 08's chaos run: the capstone service under load while things break, every job accounted for.

:func:`run_chaos` makes N uploads while :data:`CHAOS` happens (workers killed, connections forced
closed, poison sent, the broker restarted), samples the queues for :func:`plot_dashboard`, then
accounts: every job done with its effect applied once, or in the DLQ with its reason; lost counted.

Example::

    from voicelab.broker import own_broker
    with own_broker() as broker, BlobStore.temporary() as blobs:
        run = run_chaos(broker, blobs, n=2000)
        run.counts["lost"]            # 0
        plot_dashboard(run, caption=broker_caption(broker))
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import pika
import pika.exceptions

from ..broker import Broker
from ..jobs import BlobStore, VoiceJob, process_job, synth_speech, wav_bytes
from ..queues import confirm_mode, dlq_name, job_properties
from ..retry import job_key

if TYPE_CHECKING:  # not at run time: worker processes import this module
    import matplotlib.pyplot as plt
    import pandas as pd
import matplotlib.pyplot as plt
import pandas as pd

from ..deadletters import list_dead_letters
from ..management import Management
from ..pipeline import WORKER_PREFIX, LogTail, VoiceService
from .measure import add_caption
from .measure import progress as bar

CHAOS: tuple[tuple[float, str], ...] = (
    (0.10, "kill a worker process"),
    (0.25, "force-close connections"),
    (0.40, "inject poison messages"),
    (0.55, "restart the broker"),
    (0.75, "kill -9 the broker, start it"),
)


POISON_BODIES: tuple[tuple[str, Callable[[int], bytes]], ...] = (
    ("not JSON", lambda i: b"\x00\xffnot json at all"),
    ("a field missing", lambda i: json.dumps({"job_id": f"poison-field-{i}", "user_id": i}).encode()),
    ("audio missing", lambda i: VoiceJob(f"poison-audio-{i}", "audio/never-uploaded.wav", i).to_json()),
)


@dataclass
class ChaosRun:
    """What :func:`run_chaos` did: samples over time, the chaos events, one row per job, and the counts."""

    samples: "pd.DataFrame"
    events: "pd.DataFrame"
    jobs: "pd.DataFrame"
    counts: dict[str, int]
    seconds: float
    publisher: dict[str, int] = field(default_factory=dict)


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


def run_chaos(broker: Broker, blobs: BlobStore, n: int = 2000, *, rate: float | None = None, queue: str = "chaos08",
              processes: int = 2, threads: int = 2, prefetch: int = 10, effort: int = 2, clips: int = 12,
              clip_seconds: float = 0.5, poison_per_kind: int = 3, schedule: tuple[tuple[float, str], ...] = CHAOS,
              every: float = 0.25, timeout: float | None = None, progress: bool = True) -> ChaosRun:
    """Upload ``n`` jobs to the service while ``schedule`` happens to it; account for every job.

    Uploads arrive at ``rate`` per second (default ``n / 20``: a 20 s stream) in batches of a fifth of a
    second through the reliable publisher; after an outage the uploads held up go out at once. The fleet
    (``processes`` x ``threads`` consumers) does the real signal work on ``clips`` distinct recordings. Each
    chaos event fires once the given fraction of the uploads is sent, so it hits work in flight; the forced close
    hits consumers that hold a job between storing its result and its ack (:meth:`Fleet.holding`). A dead worker
    process is replaced at once. Sampled every ``every`` s: jobs done, uploads confirmed,
    queue depths (passive declare; none while the broker is down), connection errors, reconnections, worker
    processes lost and replaced. Needs a broker voicelab controls (:func:`voicelab.broker.own_broker`).

    The accounting (``jobs``, ``counts``): every uploaded job is ``done`` (its result stored once, equal to the
    result computed without any queue) or ``dead-lettered`` (with the reason from the DLQ) or ``lost``; every
    poison message is in the DLQ or lost; ``applied`` counts the workers' "applied" lines per job (a link
    that created the result), ``handled`` every time a worker finished it.
    """


    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    known = {name for _, name in CHAOS}
    if any(name not in known for _, name in schedule):
        raise ValueError(f"schedule events must be among {sorted(known)}, got {schedule!r}")
    if any(name in ("restart the broker", "kill -9 the broker, start it") for _, name in schedule) \
            and not broker.can_control:
        raise ValueError("restarting or killing the broker needs a broker voicelab started (own_broker())")
    rate = rate or max(10.0, n / 20)
    if not rate > 0:
        raise ValueError(f"rate must be > 0 uploads/s, got {rate!r}")
    timeout = timeout if timeout is not None else 120 + 2 * n / rate
    service = VoiceService(broker, blobs, queue, effort=effort)
    service.declare(fresh=True)
    audio = [wav_bytes(synth_speech(clip_seconds, seed=s)) for s in range(clips)]
    features = {}
    for a in audio:
        probe = VoiceJob("probe", blobs.put(a), 0)
        features[probe.blob_key] = {k: v for k, v in process_job(probe, blobs, effort=effort).items()
                                    if k not in ("job_id", "user_id")}
    uploads = [(audio[i % clips], i) for i in range(n)]
    batch = max(1, round(rate / 5))
    log_dir = blobs.root / f"logs-{queue}"
    fleet = service.fleet(processes=processes, threads=threads, prefetch=prefetch, log_dir=log_dir)
    mgmt = Management(broker)
    tail = LogTail(log_dir)
    stop = threading.Event()
    state: dict[str, Any] = {"done": 0, "sent": 0, "confirmed": 0, "republished": 0, "publisher reconnects": 0,
                             "error": None, "poison": {}}
    uploaded: list[VoiceJob] = []
    events: list[dict[str, Any]] = []

    fleet.start()
    t0 = time.time()

    def publish_loop() -> None:
        try:
            while state["sent"] < n and not stop.is_set():
                due = (time.time() - t0) * rate   # uploads the users have made by now
                if state["sent"] >= due:
                    time.sleep(min(0.2, (state["sent"] - due) / rate + 0.001))
                    continue
                chunk = uploads[state["sent"]:state["sent"] + batch]
                jobs, report = service.upload_many(chunk)
                uploaded.extend(jobs)
                state["sent"] += len(chunk)
                state["confirmed"] += len(report.confirmed)
                state["republished"] += report.republished
                state["publisher reconnects"] += report.reconnects
        except Exception as e:   # BrokerGone, PublishFailed: counted below as jobs never uploaded
            state["error"] = e

    def chaos_loop() -> None:
        try:
            for fraction, name in schedule:
                while state["sent"] < fraction * n:
                    if stop.wait(0.02):
                        return
                start = time.time()
                if name == "kill a worker process":
                    detail = f"SIGKILL worker process {fleet.kill(0)}"
                elif name == "force-close connections":
                    _wait_listed(mgmt, WORKER_PREFIX, processes * threads)
                    with fleet.holding() as held:
                        closed = mgmt.close_connections(WORKER_PREFIX, reason="voicelab chaos")
                        time.sleep(0.3)   # the close reaches the consumers before their acks go out
                    detail = f"{closed} worker connections closed by the broker, {held} holding a job"
                elif name == "inject poison messages":
                    state["poison"] = _poison(broker, queue, poison_per_kind)
                    detail = f"{len(state['poison'])} poison messages"
                elif name == "restart the broker":
                    broker.restart()
                    detail = "graceful restart"
                else:
                    broker.kill()
                    broker.start()
                    detail = "SIGKILL, then start"
                end = time.time()
                events.append({"event": name, "t": start - t0, "t_end": end - t0, "seconds": end - start,
                               "at_sent": state["sent"], "at_done": state["done"], "detail": detail})
        except Exception as e:
            state["error"] = e

    threads_ = [threading.Thread(target=publish_loop, daemon=True, name="voicelab-uploads"),
                threading.Thread(target=chaos_loop, daemon=True, name="voicelab-chaos")]
    for th in threads_:
        th.start()

    finished: set[str] = set()
    dead_keys: set[str] = set()
    tallies: Counter[str] = Counter()
    handled: Counter[str] = Counter()
    applied: Counter[str] = Counter()
    samples: list[dict[str, Any]] = []
    probe_conn: Any = None
    progress_bar = bar(range(n), desc="chaos run", total=n) if progress else None
    shown = 0
    try:
        while True:
            for slot in fleet.supervise():
                tallies["worker processes replaced"] += 1
            for stamp, event, key in tail.read():
                tallies[event] += 1
                if event in ("applied", "duplicate"):
                    finished.add(key)
                    handled[key] += 1
                    if event == "applied":
                        applied[key] += 1
                elif event == "dead-lettered":
                    dead_keys.add(key)
            state["done"] = len(finished)
            depth = dlq = float("nan")
            try:
                if probe_conn is None or not probe_conn.is_open:
                    probe_conn = broker.connect(connection_attempts=1, socket_timeout=0.5, stack_timeout=1)
                ch = probe_conn.channel()
                depth = ch.queue_declare(queue, passive=True).method.message_count
                dlq = ch.queue_declare(dlq_name(queue), passive=True).method.message_count
                ch.close()
            except Exception:   # the broker is down or restarting: no figure this time
                probe_conn = None
            samples.append({"t": time.time() - t0, "done": state["done"], "confirmed": state["confirmed"],
                            "ready": depth, "dlq": dlq, "dead-lettered": len(dead_keys),
                            "connection errors": tallies["connection-error"],
                            "connections": tallies["connected"],
                            "workers lost": len(fleet.replaced),
                            "workers replaced": tallies["worker processes replaced"]})
            if progress_bar is not None:
                progress_bar.update(state["done"] - shown)   # type: ignore[attr-defined]
                shown = state["done"]
            chaos_over = not threads_[1].is_alive()
            poison_done = set(state["poison"]) <= dead_keys
            if (state["done"] >= n and chaos_over and poison_done) or state["error"] is not None:
                break
            if time.time() - t0 > timeout:
                break
            time.sleep(every)
    finally:
        stop.set()
        for th in threads_:
            th.join(120)
        fleet.stop()
        mgmt.close()
        if progress_bar is not None:
            progress_bar.close()   # type: ignore[attr-defined]
        if probe_conn is not None and probe_conn.is_open:
            probe_conn.close()
    seconds = time.time() - t0
    for stamp, event, key in tail.read():   # what the workers wrote while they stopped
        if event in ("applied", "duplicate"):
            handled[key] += 1
            applied[key] += event == "applied"
        elif event == "dead-lettered":
            dead_keys.add(key)

    try:
        connection = broker.connect()
    except Exception as e:
        raise RuntimeError(f"the broker is unreachable after the chaos run ({type(e).__name__}); what went wrong "
                           f"during the run: {state['error']!r}") from state["error"] or e
    with connection:
        channel = connection.channel()
        left = int(channel.queue_declare(queue, passive=True).method.message_count)
        letters = list_dead_letters(channel, queue, limit=10 ** 6)
    reasons: dict[str, str] = {}
    dead_twice: Counter[str] = Counter()
    for d in letters:
        reasons.setdefault(d.job, d.reason)
        dead_twice[d.job] += 1
    rows = []
    for job in uploaded:
        status = service.status(job.job_id)
        expected = {"job_id": job.job_id, "user_id": job.user_id, **features[job.blob_key]}
        outcome = "done" if status["status"] == "done" else "dead-lettered" if job.job_id in reasons else "lost"
        rows.append({"job": job.job_id, "kind": "upload", "outcome": outcome, "handled": handled[job.job_id],
                     "applied": applied[job.job_id], "right": status.get("result") == expected if outcome == "done"
                     else None, "reason": reasons.get(job.job_id, "")})
    for key, kind in state["poison"].items():
        rows.append({"job": key, "kind": f"poison: {kind}", "outcome": "dead-lettered" if key in reasons else "lost",
                     "handled": 0, "applied": 0, "right": None, "reason": reasons.get(key, "")})
    jobs = pd.DataFrame(rows, columns=["job", "kind", "outcome", "handled", "applied", "right", "reason"])
    up = jobs[jobs["kind"] == "upload"]
    poison = jobs[jobs["kind"] != "upload"]
    counts = {
        "uploads": n,
        "uploads confirmed": int(state["confirmed"]),
        "never uploaded": n - len(uploaded),
        "done": int((up["outcome"] == "done").sum()),
        "done, applied once": int(((up["outcome"] == "done") & (up["applied"] <= 1)).sum()),
        "handled twice or more, applied once": int(((up["outcome"] == "done") & (up["handled"] >= 2)
                                                    & (up["applied"] <= 1)).sum()),
        "applied twice": int((up["applied"] >= 2).sum()),
        "wrong results": int((up["right"] == False).sum()),  # noqa: E712
        "uploads dead-lettered": int((up["outcome"] == "dead-lettered").sum()),
        "poison sent": len(poison),
        "poison in DLQ with reason": int(((poison["outcome"] == "dead-lettered") & (poison["reason"] != "")).sum()),
        "dead-lettered twice": sum(1 for c in dead_twice.values() if c > 1),
        "lost": int((jobs["outcome"] == "lost").sum()) + (n - len(uploaded)),
        "left in queue": left,
    }
    if state["error"] is not None and counts["lost"]:
        counts["error"] = f"{type(state['error']).__name__}: {state['error']}"   # type: ignore[assignment]
    publisher = {k: int(state[k]) for k in ("sent", "confirmed", "republished", "publisher reconnects")}
    return ChaosRun(samples=pd.DataFrame(samples), events=pd.DataFrame(events, columns=[
        "event", "t", "t_end", "seconds", "at_sent", "at_done", "detail"]), jobs=jobs, counts=counts, seconds=seconds,
        publisher=publisher)


def plot_dashboard(run: ChaosRun, caption: str = "") -> "plt.Figure":
    """Throughput, queue depth, failures and recoveries against time; chaos events as vertical lines,
    broker outages shaded."""


    s = run.samples
    k = max(1, round(1.0 / float(s["t"].diff().median())))   # rates over about one second
    dt = s["t"] - s["t"].shift(k)
    legend = "; ".join(f"{i + 1}: {ev['event']}" for i, ev in run.events.iterrows())
    fig, axes = plt.subplots(3, 1, figsize=(9, 8.2), sharex=True)
    ax = axes[0]
    ax.plot(s["t"], (s["done"] - s["done"].shift(k)) / dt, color="tab:blue", label="jobs done (results stored) /s")
    ax.plot(s["t"], (s["confirmed"] - s["confirmed"].shift(k)) / dt, color="tab:gray", alpha=0.7,
            label="uploads confirmed /s")
    ax.set_ylabel("jobs/s (over 1 s)")
    ax.set_title(f"{run.counts['uploads']} uploads through chaos: done {run.counts['done']}, "
                 f"poison in DLQ {run.counts['poison in DLQ with reason']}, lost {run.counts['lost']}\n"
                 f"chaos: {legend}", fontsize=9)
    ax = axes[1]
    ax.plot(s["t"], s["ready"], color="tab:orange", label="job queue: ready")
    ax.plot(s["t"], s["dlq"], color="crimson", label="DLQ: ready")
    ax.set_ylabel("messages")
    ax = axes[2]
    ax.step(s["t"], s["connection errors"], where="post", color="crimson", label="connection errors (workers)")
    ax.step(s["t"], s["connections"], where="post", color="tab:green", label="connections made (workers)")
    ax.step(s["t"], s["workers lost"], where="post", color="black", linewidth=2, label="worker processes lost")
    ax.step(s["t"], s["workers replaced"], where="post", color="tab:olive", linestyle="--", linewidth=2,
            label="worker processes replaced")
    ax.set_ylabel("count (cumulative)")
    ax.set_xlabel("time since the fleet started (s); broker down: shaded; queue depth: a gap when it could not be read")
    for i, ev in run.events.iterrows():
        for a in axes:
            a.axvline(ev["t"], color="0.3", linestyle="--", linewidth=0.9)
            if ev["event"] in ("restart the broker", "kill -9 the broker, start it"):
                a.axvspan(ev["t"], ev["t_end"], color="0.85", zorder=0)
        axes[0].annotate(f"{i + 1}", (ev["t"], 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                         textcoords="offset points", fontsize=8, color="0.2")
    for a in axes:
        a.grid(alpha=0.3)
        a.legend(fontsize=7.5, loc="upper right")
    add_caption(fig, caption)
    return fig


