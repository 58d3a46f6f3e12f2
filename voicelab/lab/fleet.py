"""A fleet of worker processes, each with a pool of threads: how throughput scales, measured.

Jobs are JSON ``{"kind": "io", "seconds": s}`` (waiting on another service) or
``{"kind": "cpu", "work": w}`` (signal work written in plain Python, which holds
the GIL as much real code does). Workers connect and report ready *before* the
jobs are published, so start-up time is not counted: the clock runs from the
first publish to the last ack.

Example::

    run_fleet(broker, "fleet", jobs=io_jobs(200, 0.02), processes=2, threads=4)
    # {'processes': 2, 'threads': 4, 'prefetch': 4, 'jobs': 200, 'seconds': 0.6, 'jobs_per_s': 330.0, ...}
    runs = sweep(lambda kind, model, level: run_fleet(broker, "fleet", io_jobs(100, 0.02), **{model: level}),
                 {"kind": ["I/O-bound"], "model": ["processes", "threads"], "level": [1, 2, 4]})
    plot_fleet(runs, caption=broker_caption(broker))
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import pika

from ..broker import Broker, UrlBroker
from ..consumers import ThreadPoolConsumer
from ..queues import publish_bodies, reset_queue, wait_for_consumers
from .measure import add_caption, plot_sweep

if TYPE_CHECKING:  # not at run time: worker processes import this module, and their memory is measured
    import matplotlib.pyplot as plt
    import pandas as pd

JOB_PROPERTIES = pika.BasicProperties(content_type="application/json",
                                      delivery_mode=pika.DeliveryMode.Transient)  # a benchmark: no disk writes


def io_jobs(n: int, seconds: float) -> list[dict[str, Any]]:
    """``n`` I/O-bound jobs that each wait ``seconds``."""
    return [{"kind": "io", "seconds": seconds}] * n


def cpu_jobs(n: int, work: int = 200_000) -> list[dict[str, Any]]:
    """``n`` CPU-bound jobs of ``work`` samples of pure-Python signal work each."""
    return [{"kind": "cpu", "work": work}] * n


def python_features(n: int) -> tuple[float, int]:
    """Energy and zero crossings of ``n`` samples of a synthetic tone, in plain Python (holds the GIL).

    >>> python_features(1000)[1] > 0
    True
    """
    energy, crossings, prev = 0.0, 0, 0.0
    for i in range(n):
        x = math.sin(0.05 * i) + 0.3 * math.sin(0.31 * i)
        energy += x * x
        crossings += (x >= 0) != (prev >= 0)
        prev = x
    return energy / max(n, 1), crossings


def do_job(body: bytes) -> None:
    """Run one fleet job (see the module docstring); raises ``ValueError`` on an unknown kind."""
    job = json.loads(body)
    if job["kind"] == "io":
        time.sleep(job["seconds"])
    elif job["kind"] == "cpu":
        python_features(job["work"])
    else:
        raise ValueError(f"unknown job kind {job['kind']!r}")


def _worker_main(url: str, queue: str, threads: int, prefetch: int, ready: Any, stop: Any, done: Any) -> None:
    """Child process: consume with ``threads`` pool threads (0: jobs run in the callback, one at a time)."""

    broker = UrlBroker(url)

    def count_ack(outcome: str = "acked") -> None:  # after the ack, never before: a job is done once acked
        if outcome == "acked":
            with done.get_lock():
                done.value += 1

    if threads == 0:  # the sequential consumer: the job runs inside the callback
        with broker.connect() as connection:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=prefetch)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                do_job(body)
                ch.basic_ack(method.delivery_tag)
                count_ack()

            channel.basic_consume(queue, on_message)
            ready.release()
            while not stop.is_set():
                connection.process_data_events(time_limit=0.05)
        return
    consumer = ThreadPoolConsumer(broker, queue, do_job, threads=threads, prefetch=prefetch, on_settled=count_ack)
    ready.release()

    threading.Thread(target=lambda: (stop.wait(), consumer.stop()), daemon=True).start()
    consumer.run()


class FleetTimeout(TimeoutError):
    """The fleet did not finish its jobs in time; ``done`` of ``total`` were done in ``seconds``."""

    def __init__(self, done: int, total: int, seconds: float) -> None:
        super().__init__(f"{done} of {total} jobs done in {seconds:.1f} s")
        self.done, self.total, self.seconds = done, total, seconds


def memory_mb(pid: int | None) -> tuple[float, str]:
    """Memory of a process in MB and what was measured: ``"PSS"`` or ``"RSS"`` (Linux); ``(nan, "")`` elsewhere.

    PSS (proportional set size, ``/proc/PID/smaps_rollup``) splits each shared page
    between the processes that map it, so the PSS of several processes adds up to
    what they really use. RSS counts a shared page (the interpreter, pika's code)
    once *per process*, so summing RSS overstates a fleet of processes. RSS from
    ``/proc/PID/status`` is the fallback on kernels older than 4.14.

    >>> import os
    >>> mb, kind = memory_mb(os.getpid())
    >>> kind in ("PSS", "RSS", "") and (mb > 1 or kind == "")
    True
    """
    for path, field, kind in ((f"/proc/{pid}/smaps_rollup", "Pss:", "PSS"), (f"/proc/{pid}/status", "VmRSS:", "RSS")):
        try:
            for line in open(path):
                if line.startswith(field):
                    return int(line.split()[1]) / 1024, kind
        except OSError:
            continue
    return float("nan"), ""


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cgroups cpusets), not ``os.cpu_count()``.

    >>> 1 <= usable_cores() <= (os.cpu_count() or 1)
    True
    """
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def core_speedup(processes: int = 2, work: int = 600_000, rounds: int = 3) -> float:
    """How much faster ``processes`` plain-Python processes get through CPU work than one, right now.

    The free cores, measured rather than counted: on an idle machine with 2 usable
    cores, about 2; on one that is busy with something else, less. No broker, no
    pika: :func:`python_features` of ``work`` samples per task (about 0.1 s), timed
    inside a pool of ``processes`` spawned workers, one task against ``processes``
    tasks at once, alternated ``rounds`` times; the medians' ratio, times ``processes``.
    """
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        pool.map(python_features, [1000] * processes)  # start and warm up the workers
        one, many = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            pool.map(python_features, [work], chunksize=1)
            one.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pool.map(python_features, [work] * processes, chunksize=1)
            many.append(time.perf_counter() - t0)
    one.sort()
    many.sort()
    return processes * one[len(one) // 2] / many[len(many) // 2]


def run_fleet(broker: Broker, queue: str, jobs: list[dict[str, Any]], processes: int = 1, threads: int = 0,
              prefetch: int | None = None, timeout: float = 120.0) -> dict[str, Any]:
    """Start ``processes`` workers of ``threads`` threads each (0 = sequential), publish ``jobs``, time them.

    ``prefetch`` defaults to ``max(threads, 1)``. Returns the fleet's shape, its ``jobs_per_s``, the
    memory of its worker processes (``memory_mb``: the sum of their PSS, see :func:`memory_mb`; Linux only)
    and the ``cores`` this process may use (:func:`usable_cores`).
    """
    if processes < 1 or threads < 0:
        raise ValueError(f"processes must be >= 1 and threads >= 0, got {processes}, {threads}")
    prefetch = prefetch or max(threads, 1)
    ctx = multiprocessing.get_context("spawn")
    ready, stop, done = ctx.Semaphore(0), ctx.Event(), ctx.Value("i", 0)
    with broker.connect() as connection:
        channel = connection.channel()
        reset_queue(channel, queue)
        workers = [ctx.Process(target=_worker_main, daemon=True,
                               args=(broker.amqp_url, queue, threads, prefetch, ready, stop, done))
                   for _ in range(processes)]
        for w in workers:
            w.start()
        try:
            for _ in workers:
                if not ready.acquire(timeout=60):
                    raise RuntimeError("a worker process did not start within 60 s")
            wait_for_consumers(channel, queue, processes)
            t0 = time.monotonic()
            publish_bodies(channel, queue, jobs, confirm=False, properties=JOB_PROPERTIES)
            deadline = t0 + timeout
            while done.value < len(jobs):
                if not all(w.is_alive() for w in workers):
                    raise RuntimeError(f"a worker process died after {done.value} of {len(jobs)} jobs")
                if time.monotonic() > deadline:
                    raise FleetTimeout(done.value, len(jobs), time.monotonic() - t0)
                time.sleep(0.002)
            seconds = time.monotonic() - t0
            measured = [memory_mb(w.pid) for w in workers]
        finally:
            stop.set()
            for w in workers:
                w.join(15)
                if w.is_alive():
                    w.kill()
                    w.join()
            channel.queue_delete(queue)
    return {"processes": processes, "threads": threads, "prefetch": prefetch, "jobs": len(jobs),
            "seconds": seconds, "jobs_per_s": len(jobs) / seconds, "memory_mb": sum(mb for mb, _ in measured),
            "memory_kind": measured[0][1], "cores": usable_cores()}


def plot_fleet(runs: "pd.DataFrame", caption: str = "", cores: int | None = None) -> "plt.Figure":
    """Jobs/s against processes or threads, one panel per ``kind`` of job, and the memory the first kind's fleet used.

    ``runs`` is a :func:`voicelab.lab.measure.sweep` of :func:`run_fleet` over ``kind``, ``model``
    (``"processes"`` or ``"threads"``) and ``level``; a dotted line marks the machine's ``cores``.
    """
    cores = cores or usable_cores()
    kinds = list(dict.fromkeys(runs["kind"]))
    levels = sorted(runs["level"].unique())
    xlabel = "processes, or threads in one process"
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(5 * (len(kinds) + 1), 3.8))
    for ax, kind in zip(axes, kinds):
        plot_sweep(runs[runs["kind"] == kind], "level", "jobs_per_s", by="model", xlabel=xlabel, ylabel="jobs/s",
                   title=kind, ax=ax)
        ax.axvline(cores, color="0.5", linestyle=":")
        ax.annotate(f" {cores} cores", (cores, ax.get_ylim()[0]), color="0.4")
    plot_sweep(runs[runs["kind"] == kinds[0]], "level", "memory_mb", by="model", xlabel=xlabel,
               ylabel="memory of the workers (MB, PSS)", title=f"What the {kinds[0].split(' (')[0]} fleet costs",
               ax=axes[-1])
    for ax in axes:
        ax.set_xticks(levels)
    add_caption(fig, caption)
    return fig
