"""The bench's cases and ratios, and :func:`run_bench`, which runs every case, interleaved.

A :class:`Case` is one row of the report: a run of ``n`` messages that returns
(seconds, counted on the broker). A :class:`Ratio` divides one case's rate by
another's, within one repeat.

Example::

    runs = run_bench(broker, repeats=3, scale=0.2)     # one row per measurement, columns COLUMNS
    runs.groupby("case", sort=False)["messages_per_s"].median()
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Callable

import pandas as pd
import pika.exceptions

from ..broker import Broker
from ..lab.measure import progress, scale as scale_knob
from .clients import (POOL_THREADS, PUBLISH_STRATEGIES, consume_bare, consume_pool, fill, publish_strategy,
                      ready)

PUBLISH_N = 3000
"""Messages per publishing case at scale 1."""
CONSUME_N = 10000
"""Messages per consuming case at scale 1."""

COLUMNS = ["case", "group", "queue_type", "prefetch", "threads", "repeat", "n", "counted", "seconds",
           "messages_per_s", "load_1min", "broker_version"]
"""Columns of :func:`run_bench`'s DataFrame and of the CSV, in order."""


@dataclass(frozen=True)
class Case:
    """One row of the table: ``run(broker, queue, n) -> (seconds, counted)`` on ``n`` messages."""

    case: str
    group: str                       # "publish" or "consume"
    run: Callable[[Broker, str, int], tuple[float, int]] = field(repr=False)
    queue_type: str = "classic"
    prefetch: int | None = None
    threads: int | None = None


def _publish_case(strategy: str, queue_type: str = "classic") -> Case:
    name = f"publish {queue_type}, {strategy}"
    return Case(name, "publish", lambda b, q, n: publish_strategy(b, q, n, strategy, queue_type), queue_type)


def _consume_case(client: str, prefetch: int, queue_type: str = "classic") -> Case:
    def run(broker: Broker, queue: str, n: int) -> tuple[float, int]:
        fill(broker, queue, n, queue_type)
        if client == "pool":
            rate, _ = consume_pool(broker, queue, n, threads=POOL_THREADS, prefetch=prefetch)
        else:
            rate = consume_bare(broker, queue, n, prefetch=prefetch)
        return n / rate, n - ready(broker, queue)

    label = "bare pika loop" if client == "bare" else f"ThreadPoolConsumer {POOL_THREADS} threads, no-op"
    return Case(f"consume {queue_type}, {label}, prefetch {prefetch}", "consume", run, queue_type, prefetch,
                POOL_THREADS if client == "pool" else None)


CASES: tuple[Case, ...] = (
    *(_publish_case(s) for s in PUBLISH_STRATEGIES),
    _publish_case("async confirms", "quorum"),
    _consume_case("bare", 1),
    _consume_case("bare", POOL_THREADS), _consume_case("pool", POOL_THREADS),
    _consume_case("bare", 100), _consume_case("bare", 100, "quorum"),
)
"""Every case, in the order one repeat runs them (pairs that a ratio compares run next to each other)."""


@dataclass(frozen=True)
class Ratio:
    """``numerator`` over ``denominator`` (case names), per repeat; ``target``: the least it should be."""

    ratio: str
    numerator: str
    denominator: str
    target: float | None = None


def _case(name: str) -> str:
    if name not in {c.case for c in CASES}:
        raise ValueError(f"no such case {name!r}")
    return name


_PUB, _BARE = "publish classic, ", "consume classic, bare pika loop, prefetch "
RATIOS: tuple[Ratio, ...] = (
    Ratio("async confirms / confirm per message", _case(_PUB + "async confirms"),
          _case(_PUB + "confirm per message"), 5.0),
    Ratio("batched confirms / confirm per message", _case(_PUB + "batched confirms"),
          _case(_PUB + "confirm per message")),
    Ratio("async confirms / no confirms", _case(_PUB + "async confirms"), _case(_PUB + "no confirms")),
    Ratio(f"ThreadPoolConsumer ({POOL_THREADS} threads, no-op) / bare pika loop, prefetch {POOL_THREADS}",
          _case(f"consume classic, ThreadPoolConsumer {POOL_THREADS} threads, no-op, prefetch {POOL_THREADS}"),
          _case(f"{_BARE}{POOL_THREADS}"), 0.7),
    Ratio("bare pika loop, prefetch 100 / prefetch 1", _case(f"{_BARE}100"), _case(f"{_BARE}1")),
    Ratio("quorum / classic, publish with async confirms", _case("publish quorum, async confirms"),
          _case(_PUB + "async confirms")),
    Ratio("quorum / classic, bare pika loop prefetch 100", _case("consume quorum, bare pika loop, prefetch 100"),
          _case(f"{_BARE}100")),
)
"""The ratios the report prints; those with a target are marked PASS or MISS."""


def sizes(scale: float | None = None) -> tuple[int, int]:
    """Messages per publishing and per consuming case at ``scale`` (default: the ``VOICELAB_SCALE`` knob).

    >>> sizes(0.01)
    (30, 100)
    """
    if scale is None:
        scale = scale_knob()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")
    return max(20, round(PUBLISH_N * scale)), max(2 * POOL_THREADS, round(CONSUME_N * scale))


def check_repeats(repeats: int) -> int:
    """``repeats`` if it is an int >= 1, else a ``ValueError`` naming it.

    >>> check_repeats(3)
    3
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    return repeats


def run_bench(broker: Broker, repeats: int = 3, scale: float | None = None, cases: tuple[Case, ...] = CASES,
              queue: str = "voicelab.bench", show_progress: bool = False,
              stop: threading.Event | None = None) -> pd.DataFrame:
    """Run every case ``repeats`` times, interleaved; one row per measurement (columns :data:`COLUMNS`).

    ``stop``, once set (e.g. by a signal handler), ends the run after the case
    in progress: the rows measured so far are returned.

    Sizes: :data:`PUBLISH_N` and :data:`CONSUME_N` messages times ``scale``
    (default: the ``VOICELAB_SCALE`` knob). ``queue`` (and nothing else) is
    deleted and declared afresh for each case, and deleted at the end.
    ``load_1min`` is the machine's 1-minute load average when the case ran.
    """
    check_repeats(repeats)
    if not cases:
        raise ValueError("cases must not be empty")
    n_publish, n_consume = sizes(scale)
    version = broker.version
    rows = []
    steps = [(r, c) for r in range(repeats) for c in cases]
    try:
        for r, case in (progress(steps, desc="voicelab bench") if show_progress else steps):
            if stop is not None and stop.is_set():
                break
            n = n_publish if case.group == "publish" else n_consume
            seconds, counted = case.run(broker, queue, n)
            rows.append({"case": case.case, "group": case.group, "queue_type": case.queue_type,
                         "prefetch": case.prefetch, "threads": case.threads, "repeat": r, "n": n,
                         "counted": counted, "seconds": seconds, "messages_per_s": n / seconds,
                         "load_1min": os.getloadavg()[0], "broker_version": version})
    finally:
        try:
            with broker.connect() as connection:
                connection.channel().queue_delete(queue)
        except (pika.exceptions.AMQPError, OSError):
            pass  # the broker is gone (interrupted): nothing to tidy
    runs = pd.DataFrame(rows, columns=COLUMNS)
    return runs.astype({"prefetch": "Int64", "threads": "Int64"})
