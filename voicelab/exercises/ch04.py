"""Exercises of notebook 04 (concurrency).

q1: write ``size_fleet(job_seconds, target_per_s, cores)`` returning
``{"processes": P, "threads": T, "prefetch": F}`` for I/O-bound jobs of
``job_seconds`` each. The checker starts that fleet on the real broker (P
processes, each a thread-pool consumer of T threads at prefetch F; T = 0 means
one job at a time in the callback) and measures two things:

- speed: it must reach ``target_per_s`` jobs per second;
- cost: at most :data:`MAX_CONNECTIONS` worker processes, i.e. broker
  connections (one per process). Every process is a whole interpreter with its
  own copy of pika and its own connection (the broker keeps Erlang processes and
  buffers for each); a thread costs a stack and little else. The checker
  measures the workers' memory (PSS, Linux) and reports it beside the verdict.
  It is not the criterion: what a spawned worker weighs depends on what its
  parent imported (a Jupyter kernel's children carry more than a script's).

At most ``cores`` * 2 processes and 32 threads per process.

Example (in the notebook, after writing ``size_fleet``)::

    from voicelab.exercises import ch04
    ch04.q1.check(size_fleet)     # pass, or what is wrong and a hint
    ch04.q1.hint()
"""

from __future__ import annotations

from typing import Any, Callable

from ..broker import shared_broker
from ..lab.fleet import FleetTimeout, io_jobs, run_fleet, usable_cores
from ..lab.measure import sized
from .core import HEADROOM, Exercise, Wrong, measure_against_target, scratch_queue

JOB_SECONDS = 0.05
TARGET_PER_S = 120.0
MAX_THREADS = 32
MAX_CONNECTIONS = 2  # one per worker process: an interpreter each here, Erlang processes and buffers on the broker


def size_fleet(job_seconds: float, target_per_s: float, cores: int) -> dict[str, int]:
    """Reference solution of q1: I/O-bound jobs wait, so threads are cheap; one process (one connection) is enough."""
    in_flight = target_per_s * job_seconds          # Little's law: jobs that must run at once
    threads = min(MAX_THREADS, int(in_flight * 1.5) + 1)
    return {"processes": 1, "threads": threads, "prefetch": threads}   # prefetch >= threads, or threads idle


def _check_fleet(fn: Callable[..., Any]) -> str:
    cores = usable_cores()
    choice = fn(JOB_SECONDS, TARGET_PER_S, cores)
    if not isinstance(choice, dict) or set(choice) != {"processes", "threads", "prefetch"}:
        raise Wrong(f"return a dict with exactly the keys 'processes', 'threads', 'prefetch', got {choice!r}")
    p, t, f = choice["processes"], choice["threads"], choice["prefetch"]
    if not isinstance(p, int) or not 1 <= p <= 2 * cores:
        raise Wrong(f"processes must be an int from 1 to {2 * cores} on this {cores}-core machine, got {p!r}")
    if not isinstance(t, int) or not 0 <= t <= MAX_THREADS:
        raise Wrong(f"threads must be an int from 0 to {MAX_THREADS}, got {t!r}")
    if not isinstance(f, int) or f < 1:
        raise Wrong(f"prefetch must be an int >= 1, got {f!r}")
    n = sized(240, minimum=120)
    at_once = p * min(max(t, 1), f)
    capacity = at_once / JOB_SECONDS                 # Little's law: the most this design can do
    shape = f"{p} process(es) x {t} thread(s) at prefetch {f}"
    (rate, memory, kind), note = measure_against_target(lambda: _measure(p, t, f, n), capacity, TARGET_PER_S)
    if rate < TARGET_PER_S and not note:
        raise Wrong(f"{shape} did {rate:.0f} jobs/s, target {TARGET_PER_S:.0f}. At most {at_once} job(s) ran at "
                    f"once; each takes {JOB_SECONDS} s, so this design tops out at {capacity:.0f} jobs/s "
                    f"(keep {HEADROOM - 1:.0%} headroom over the target).")
    cost = f"{memory:.0f} MB ({kind})" if kind else "memory not measured on this OS"
    if p > MAX_CONNECTIONS:
        raise Wrong(f"{shape} reached {rate:.0f} jobs/s, but at a cost: {p} worker processes, so {p} connections "
                    f"to the broker (budget {MAX_CONNECTIONS}) and {p} interpreters: {cost}, "
                    f"{memory / p:.0f} MB per process. These jobs wait: threads in one process wait as well as "
                    f"processes, for a stack each.")
    return f"{shape}: {rate:.0f} jobs/s over {n} jobs, with {p} connection(s) and {cost}.{note}"


def _measure(p: int, t: int, f: int, n: int) -> tuple[float, float, str]:
    """Run the fleet on ``n`` jobs: (jobs/s, memory MB, memory kind); a fleet that cannot reach the target is
    stopped at twice the time the target allows."""
    memory, kind = float("nan"), ""
    with scratch_queue("fleet") as queue:
        try:
            run = run_fleet(shared_broker(), queue, io_jobs(n, JOB_SECONDS), p, t, f, timeout=2 * n / TARGET_PER_S)
            rate, memory, kind = run["jobs_per_s"], run["memory_mb"], run["memory_kind"]
        except FleetTimeout as e:
            rate = e.done / e.seconds
    return rate, memory, kind


q1 = Exercise(
    "ch04.q1", "size a worker fleet",
    _check_fleet,
    hints=[
        """Little's law: throughput = jobs running at once / job_seconds. How many jobs must run at the
        same time to reach target_per_s? These jobs wait (I/O): they do not need a core each.""",
        """Cost counts too: every process is a whole Python interpreter (tens of MB) and one more connection to
        the broker; a thread is a stack that mostly waits. The checker allows at most two processes.""",
        """Threads are enough for jobs that wait: one process with T threads, T above
        target_per_s * job_seconds (keep some headroom). Each process runs at most min(threads, prefetch)
        jobs at once, so set prefetch >= threads.""",
    ],
    solution=size_fleet,
)
