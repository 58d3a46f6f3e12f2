"""Exercises of notebook 03 (prefetch).

q1: write ``plan(job_seconds, target_per_s)`` returning ``{"consumers": C, "prefetch": P}``
for a queue of I/O-bound jobs of ``job_seconds`` each. The checker fills a queue,
starts your C consumers one after another (0.1 s apart, like a deploy) at
prefetch P, and measures: the whole batch must go at ``target_per_s`` jobs per
second or faster, and no consumer may be starved (each must do at least half
of its fair share). At most 8 consumers.
"""

from __future__ import annotations

from typing import Any, Callable

from ..broker import shared_broker
from ..fairness import fill_jobs, run_consumers, shares
from .core import Exercise, Wrong, scratch_queue

JOB_SECONDS = 0.02
TARGET_PER_S = 100.0
JOBS = 120
MAX_CONSUMERS = 8


def plan(job_seconds: float, target_per_s: float) -> dict[str, int]:
    """Reference solution of q1: enough consumers for the target, with a small prefetch."""
    per_consumer = 1 / job_seconds                       # jobs/s one consumer can do at best
    consumers = min(MAX_CONSUMERS, int(target_per_s / per_consumer * 1.5) + 1)  # 50 % headroom
    return {"consumers": consumers, "prefetch": 2}       # 2: no idle round trip, little hoarding


def _check_plan(fn: Callable[..., Any]) -> str:
    choice = fn(JOB_SECONDS, TARGET_PER_S)
    if not isinstance(choice, dict) or set(choice) != {"consumers", "prefetch"}:
        raise Wrong(f"return a dict with exactly the keys 'consumers' and 'prefetch', got {choice!r}")
    consumers, prefetch = choice["consumers"], choice["prefetch"]
    if not isinstance(consumers, int) or not 1 <= consumers <= MAX_CONSUMERS:
        raise Wrong(f"consumers must be an int from 1 to {MAX_CONSUMERS}, got {consumers!r}")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise Wrong(f"prefetch must be an int >= 0 (0 = unlimited), got {prefetch!r}")
    broker = shared_broker()
    with scratch_queue("prefetch", broker=broker) as queue:
        fill_jobs(broker, queue, [JOB_SECONDS] * JOBS)
        timeline = run_consumers(broker, queue, consumers, prefetch, total=JOBS, stagger=0.1, timeout=60)
    rate = JOBS / timeline["end"].max()
    s = shares(timeline).reindex([f"consumer {i + 1}" for i in range(consumers)], fill_value=0)
    fair = 1 / consumers
    starved = s[s["share"] < fair / 2]
    if len(starved):
        who = ", ".join(f"{name} did {share:.0%}" for name, share in starved["share"].items())
        raise Wrong(f"{who} of the jobs (fair share {fair:.0%}): the first consumers took too much. "
                    f"Jobs per consumer: {s['jobs'].to_dict()}")
    if rate < TARGET_PER_S:
        raise Wrong(f"{consumers} consumer(s) at prefetch {prefetch} did {rate:.0f} jobs/s; the target is "
                    f"{TARGET_PER_S:.0f}/s. One consumer does at most {1 / JOB_SECONDS:.0f} jobs/s of these jobs.")
    return f"{consumers} consumers at prefetch {prefetch}: {rate:.0f} jobs/s, shares {s['jobs'].tolist()}."


q1 = Exercise(
    "ch03.q1", "size consumers and prefetch for a target",
    _check_plan,
    hints=[
        """Two questions. Speed: how many jobs per second can one consumer do, if each job takes
        job_seconds? Fairness: the first consumer starts 0.1 s before the next, on a full queue, and the
        broker sends it up to prefetch unacked jobs at once; what does it grab at prefetch 0 (unlimited)?""",
        """One consumer does at most 1/job_seconds jobs per second, so you need more than
        target_per_s * job_seconds consumers (keep some headroom). A prefetch of 0 (unlimited) or a large one
        lets the first consumer to start hoard the queue; 1 or 2 shares it.""",
    ],
    solution=plan,
)
