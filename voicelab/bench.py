"""``python -m voicelab bench``: publish and consume rates on a real broker, with repeats and ratios.

One command, a few minutes: it starts its own broker, runs every case of
:data:`CASES` ``repeats`` times, interleaved (every case once, then again, as
:func:`voicelab.lab.measure.sweep` does, so that a load spike from something else
on the machine spreads over all cases instead of biasing one), prints a table
of medians and spreads, then the ratios of :data:`RATIOS`, each computed
within one repeat from cases measured moments apart, and marks the ones that
have a target PASS or MISS (a report, not a test). ``--csv PATH`` writes one
row per measurement that a notebook loads with :func:`read_csv`.

The cases: publishing without confirms, with a confirm per message
(:func:`voicelab.publishing.publish_confirmed`), batched and asynchronous
confirms (:class:`voicelab.publishing.ReliablePublisher`); consuming by
prefetch with voicelab's plain consumer (:func:`voicelab.lab.throughput.consume_push`)
against a bare pika ``basic_consume`` + ``basic_ack`` loop (:func:`consume_bare`);
:class:`voicelab.consumers.ThreadPoolConsumer` with a no-op handler against
that bare loop at the same prefetch; a classic queue against a quorum queue.
Every measurement is also counted on the broker (``counted``: messages left in
the queue after publishing; messages gone from the queue after consuming),
which must equal ``n``.

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        runs = run_bench(broker, repeats=3, scale=0.2)
    print(format_report(runs))
    ratios(runs)[["ratio", "median", "target", "verdict"]]
    write_csv(runs, "bench.csv")      # later: read_csv("bench.csv")

>>> runs = pd.DataFrame({"case": ["a", "b", "a", "b"], "repeat": [0, 0, 1, 1],
...                      "messages_per_s": [100.0, 50.0, 120.0, 40.0]})
>>> _pair_ratios(runs, "a", "b").tolist()
[2.0, 3.0]
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pika
import pika.exceptions

from .broker import Broker
from .consumers import ThreadPoolConsumer
from .lab.durability import QUEUE_KINDS, STRATEGIES, time_publishes
from .lab.measure import broker_caption, progress, scale as scale_knob
from .queues import publish_bodies
from .lab.throughput import consume_push

__all__ = ["CASES", "COLUMNS", "RATIOS", "Case", "Ratio", "consume_bare", "consume_pool", "format_report",
           "fill", "publish_strategy", "ratios", "read_csv", "run_bench", "summarize", "write_csv", "cli"]

PUBLISH_N = 3000
"""Messages per publishing case at scale 1."""
CONSUME_N = 10000
"""Messages per consuming case at scale 1."""
BODY_SIZE = 100
POOL_THREADS = 16
"""Threads of the :class:`ThreadPoolConsumer` case (its prefetch is the same: one message per thread)."""
PUBLISH_STRATEGIES = ("no confirms", "confirm per message", "batched confirms", "async confirms")
_DURABILITY_NAMES = dict(zip(PUBLISH_STRATEGIES, STRATEGIES))  # the same four strategies, notebook 05's names

COLUMNS = ["case", "group", "queue_type", "prefetch", "threads", "repeat", "n", "counted", "seconds",
           "messages_per_s", "load_1min", "broker_version"]
"""Columns of :func:`run_bench`'s DataFrame and of the CSV, in order."""


# ---------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------

def _queue_type(kind: str) -> dict[str, Any]:
    if kind not in ("classic", "quorum"):
        raise ValueError(f"queue_type must be 'classic' or 'quorum', got {kind!r}")
    return QUEUE_KINDS["classic durable" if kind == "classic" else "quorum"]


def _ready(broker: Broker, queue: str) -> int:
    with broker.connect() as connection:
        return int(connection.channel().queue_declare(queue, passive=True).method.message_count)


def _fresh_queue(broker: Broker, queue: str, queue_type: str) -> None:
    declare = _queue_type(queue_type)
    with broker.connect() as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.queue_declare(queue, **declare)


def fill(broker: Broker, queue: str, n: int, queue_type: str = "classic", size: int = BODY_SIZE) -> None:
    """Make ``queue`` a fresh durable queue of ``queue_type`` holding ``n`` transient ``size``-byte messages.

    Not confirmed one by one (that would take longer than the runs it
    prepares): the publishes are synced with one round trip, so every message
    is in the queue when this returns.

    Example::

        fill(broker, "bench.q", 1000, queue_type="quorum")
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    _fresh_queue(broker, queue, queue_type)
    with broker.connect() as connection:
        publish_bodies(connection.channel(), queue, itertools.repeat(b"x" * size, n), confirm=False,
                       properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Transient))


def publish_strategy(broker: Broker, queue: str, n: int, strategy: str, queue_type: str = "classic",
                     size: int = BODY_SIZE) -> tuple[float, int]:
    """Publish ``n`` persistent ``size``-byte messages to a fresh ``queue`` with ``strategy``: (seconds, counted).

    ``counted`` is what the broker holds afterwards. Strategies
    (:data:`PUBLISH_STRATEGIES`): ``"no confirms"`` (:func:`~voicelab.publishing.publish_unconfirmed`, the clock
    stops after one round trip the broker answers once it has them all), ``"confirm per message"``
    (:func:`~voicelab.publishing.publish_confirmed`, a round trip each), ``"batched confirms"``
    (``ReliablePublisher(batch=True, window=100)``) and ``"async confirms"``
    (``ReliablePublisher(window=256)``). Connection set-up is never timed.

    Example::

        seconds, counted = publish_strategy(broker, "bench.pub", 1000, "async confirms")
    """
    if strategy not in PUBLISH_STRATEGIES:
        raise ValueError(f"strategy must be one of {PUBLISH_STRATEGIES}, got {strategy!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _fresh_queue(broker, queue, queue_type)
    seconds = time_publishes(broker, queue, n, _DURABILITY_NAMES[strategy], size=size)
    return seconds, _ready(broker, queue)


def consume_bare(broker: Broker, queue: str, n: int, prefetch: int = 1) -> float:
    """The reference consumer: a bare pika ``basic_consume`` loop that acks each message; messages/s.

    No voicelab code between pika and the callback: ``basic_qos``,
    ``basic_consume`` with a callback that calls ``basic_ack``, and pika's
    ``start_consuming`` until ``n`` are acked (the idiom of RabbitMQ's tutorials). Timed like
    :func:`voicelab.lab.throughput.consume_push`: from ``basic_consume`` to the
    ``n``-th ack. Messages delivered beyond ``n`` are not acked: they go back
    to the queue when the connection closes. Raises ``RuntimeError`` if the
    queue runs dry for 10 s.

    Example::

        fill(broker, "bench.q", 1000)
        consume_bare(broker, "bench.q", 1000, prefetch=100)   # e.g. 15000.0
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if prefetch < 0:
        raise ValueError(f"prefetch must be >= 0 (0 = unlimited), got {prefetch}")
    got = 0
    t_end = 0.0
    with broker.connect() as connection:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=prefetch)

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            nonlocal got, t_end
            if got >= n:
                return  # beyond n: left unacked, back to the queue on close
            ch.basic_ack(method.delivery_tag)
            got += 1
            if got == n:
                t_end = time.perf_counter()
                ch.stop_consuming()

        dry = {"last": -1, "since": time.monotonic()}

        def watchdog() -> None:  # pika's own timer, on this thread: the queue must not run dry for 10 s
            if got != dry["last"]:
                dry.update(last=got, since=time.monotonic())
            elif time.monotonic() - dry["since"] > 10:
                channel.stop_consuming()
                return
            connection.call_later(1, watchdog)

        connection.call_later(1, watchdog)
        t0 = time.perf_counter()
        channel.basic_consume(queue, on_message)
        channel.start_consuming()
    if got < n:
        raise RuntimeError(f"queue {queue!r} ran dry after {got} of {n} messages")
    return n / (t_end - t0)


def consume_pool(broker: Broker, queue: str, n: int, threads: int = POOL_THREADS,
                 prefetch: int | None = None) -> tuple[float, int]:
    """:class:`ThreadPoolConsumer` with a no-op handler takes exactly ``n`` messages: (messages/s, acked).

    ``queue`` must hold exactly ``n`` messages (a run stops after ``n`` are
    settled; more could be acked by jobs still running). Timed from the first
    handler call to the ``n``-th ack (its ``on_settled`` hook): this leaves out
    connection set-up and the first delivery's round trip (under a
    millisecond), which :func:`consume_bare` counts.

    Example::

        fill(broker, "bench.q", 1000)
        consume_pool(broker, "bench.q", 1000, threads=16)   # (e.g. 14000.0, 1000)
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    first: list[float] = []
    settled = 0
    t_end = 0.0

    def handler(body: bytes) -> None:
        if not first:
            first.append(time.perf_counter())

    def on_settled(outcome: str) -> None:
        nonlocal settled, t_end
        settled += 1
        if settled == n:
            t_end = time.perf_counter()

    consumer = ThreadPoolConsumer(broker, queue, handler, threads=threads, prefetch=prefetch,
                                  on_settled=on_settled)
    stats = consumer.run(idle_timeout=10, max_messages=n)
    if stats.acked < n:
        raise RuntimeError(f"queue {queue!r} ran dry: {stats.acked} of {n} messages acked")
    return n / (t_end - first[0]), stats.acked


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


def _consumed(broker: Broker, queue: str, n: int, rate: float) -> tuple[float, int]:
    return n / rate, n - _ready(broker, queue)


def _consume_case(client: str, prefetch: int, queue_type: str = "classic") -> Case:
    def run(broker: Broker, queue: str, n: int) -> tuple[float, int]:
        fill(broker, queue, n, queue_type)
        if client == "voicelab":
            return _consumed(broker, queue, n, consume_push(broker, queue, n, prefetch=prefetch))
        if client == "bare pika":
            return _consumed(broker, queue, n, consume_bare(broker, queue, n, prefetch=prefetch))
        rate, _ = consume_pool(broker, queue, n, threads=POOL_THREADS, prefetch=prefetch)
        return _consumed(broker, queue, n, rate)

    label = {"voicelab": "voicelab consume_push", "bare pika": "bare pika loop",
             "pool": f"ThreadPoolConsumer {POOL_THREADS} threads, no-op"}[client]
    return Case(f"consume {queue_type}, {label}, prefetch {prefetch}", "consume", run, queue_type, prefetch,
                POOL_THREADS if client == "pool" else None)


CASES: tuple[Case, ...] = (
    *(_publish_case(s) for s in PUBLISH_STRATEGIES),
    _publish_case("async confirms", "quorum"),
    _consume_case("bare pika", 1), _consume_case("voicelab", 1),
    _consume_case("bare pika", POOL_THREADS), _consume_case("pool", POOL_THREADS),
    _consume_case("voicelab", POOL_THREADS),
    _consume_case("bare pika", 100), _consume_case("voicelab", 100),
    _consume_case("voicelab", 100, "quorum"),
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


_PUB, _POOL = "publish classic, ", f"consume classic, ThreadPoolConsumer {POOL_THREADS} threads, no-op"
RATIOS: tuple[Ratio, ...] = (
    Ratio("async confirms / confirm per message", _case(_PUB + "async confirms"),
          _case(_PUB + "confirm per message"), 5.0),
    Ratio("batched confirms / confirm per message", _case(_PUB + "batched confirms"),
          _case(_PUB + "confirm per message")),
    Ratio("async confirms / no confirms", _case(_PUB + "async confirms"), _case(_PUB + "no confirms")),
    *(Ratio(f"voicelab consume_push / bare pika loop, prefetch {p}",
            _case(f"consume classic, voicelab consume_push, prefetch {p}"),
            _case(f"consume classic, bare pika loop, prefetch {p}"), 0.95) for p in (1, POOL_THREADS, 100)),
    Ratio(f"ThreadPoolConsumer ({POOL_THREADS} threads, no-op) / bare pika loop, prefetch {POOL_THREADS}",
          _case(f"{_POOL}, prefetch {POOL_THREADS}"),
          _case(f"consume classic, bare pika loop, prefetch {POOL_THREADS}"), 0.7),
    Ratio("voicelab consume_push, prefetch 100 / prefetch 1",
          _case("consume classic, voicelab consume_push, prefetch 100"),
          _case("consume classic, voicelab consume_push, prefetch 1")),
    Ratio("quorum / classic, publish with async confirms", _case("publish quorum, async confirms"),
          _case(_PUB + "async confirms")),
    Ratio("quorum / classic, consume_push prefetch 100", _case("consume quorum, voicelab consume_push, prefetch 100"),
          _case("consume classic, voicelab consume_push, prefetch 100")),
)
"""The ratios the report prints; those with a target are marked PASS or MISS."""


# ---------------------------------------------------------------------------
# Running and summarizing
# ---------------------------------------------------------------------------

def _sizes(scale: float | None) -> tuple[int, int]:
    if scale is None:
        scale = scale_knob()
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a number > 0, got {scale!r}")
    return max(20, round(PUBLISH_N * scale)), max(2 * POOL_THREADS, round(CONSUME_N * scale))


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
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if not cases:
        raise ValueError("cases must not be empty")
    n_publish, n_consume = _sizes(scale)
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


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per case, in run order: ``median``, ``min`` and ``max`` messages/s, ``repeats``, ``n`` and ``counted_ok``.

    >>> runs = pd.DataFrame({"case": ["a", "a", "a"], "group": "publish", "n": 10, "counted": 10,
    ...                      "messages_per_s": [90.0, 100.0, 130.0]})
    >>> summarize(runs)[["median", "min", "max", "repeats", "counted_ok"]].values.tolist()
    [[100.0, 90.0, 130.0, 3, True]]
    """
    g = runs.groupby("case", sort=False)
    return pd.DataFrame({
        "group": g["group"].first(), "median": g["messages_per_s"].median(), "min": g["messages_per_s"].min(),
        "max": g["messages_per_s"].max(), "repeats": g.size(), "n": g["n"].first(),
        "counted_ok": (runs["counted"] == runs["n"]).groupby(runs["case"], sort=False).all(),
    })


def _pair_ratios(runs: pd.DataFrame, numerator: str, denominator: str) -> pd.Series:
    """``numerator``'s rate over ``denominator``'s, repeat by repeat (both measured in the same repeat)."""
    by = runs.pivot_table(index="repeat", columns="case", values="messages_per_s", aggfunc="first")
    if numerator not in by or denominator not in by:
        return pd.Series(dtype=float)
    return (by[numerator] / by[denominator]).dropna()


def ratios(runs: pd.DataFrame, which: tuple[Ratio, ...] = RATIOS) -> pd.DataFrame:
    """Each ratio of ``which`` whose two cases are in ``runs``: per-repeat ratios, their median, min, max, verdict.

    ``verdict`` is ``"PASS"`` when the median reaches ``target``, ``"MISS"``
    when it does not, ``""`` for a ratio without a target.
    """
    out = []
    for r in which:
        values = _pair_ratios(runs, r.numerator, r.denominator)
        if values.empty:
            continue
        med = float(values.median())
        verdict = "" if r.target is None else ("PASS" if med >= r.target else "MISS")
        out.append({"ratio": r.ratio, "median": med, "min": float(values.min()), "max": float(values.max()),
                    "repeats": len(values), "target": r.target, "verdict": verdict,
                    "numerator": r.numerator, "denominator": r.denominator})
    return pd.DataFrame(out, columns=["ratio", "median", "min", "max", "repeats", "target", "verdict",
                                      "numerator", "denominator"])


def format_report(runs: pd.DataFrame, header: str = "") -> str:
    """The table of rates and the table of ratios, as text (``header`` first, if given).

    Rates in messages/s: median of the repeats, and the spread (min-max).
    """
    lines = [header] if header else []
    s = summarize(runs)
    width = max(len(c) for c in s.index) + 2
    lines.append(f"{'case':{width}s}{'msg/s median':>13s}  {'spread (min-max)':>18s}  {'n':>6s}  counted")
    for case, row in s.iterrows():
        spread = f"{row['min']:,.0f}-{row['max']:,.0f}"
        lines.append(f"{case:{width}s}{row['median']:13,.0f}  {spread:>18s}  {row['n']:6d}  "
                     f"{'ok' if row['counted_ok'] else 'WRONG'}")
    r = ratios(runs)
    if not r.empty:
        width = max(len(x) for x in r["ratio"]) + 2
        lines += ["", f"{'ratio (same repeat)':{width}s}{'median':>7s}  {'min-max':>11s}  target"]
        for _, row in r.iterrows():
            target = "" if pd.isna(row["target"]) else f">= {row['target']:g}x  {row['verdict']}"
            lines.append(f"{row['ratio']:{width}s}{row['median']:6.2f}x  "
                         f"{row['min']:4.2f}-{row['max']:<6.2f}  {target}".rstrip())
    return "\n".join(lines)


def write_csv(runs: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``runs`` (one row per measurement) to ``path``; returns the path.

    Example::

        write_csv(run_bench(broker), "bench.csv")
    """
    missing = [c for c in COLUMNS if c not in runs]
    if missing:
        raise ValueError(f"runs lacks the columns {missing}: pass what run_bench returned")
    out = Path(path)
    runs[COLUMNS].to_csv(out, index=False)
    return out


def read_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a CSV written by :func:`write_csv` (or ``voicelab bench --csv``) with the same dtypes.

    Example::

        runs = read_csv("bench.csv")
        ratios(runs)
    """
    runs = pd.read_csv(path, dtype={"broker_version": str})
    missing = [c for c in COLUMNS if c not in runs]
    if missing:
        raise ValueError(f"{path} is not a voicelab bench CSV: it lacks the columns {missing}")
    for column in ("prefetch", "threads"):
        runs[column] = runs[column].astype("Int64")
    return runs[COLUMNS]


# ---------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------

def cli(backend: str = "auto", image: str | None = None, repeats: int = 3, scale: float | None = None,
        csv: str | None = None) -> int:
    """``python -m voicelab bench``: start a broker, run :func:`run_bench`, print the report, stop the broker.

    Ctrl-C (or SIGTERM) ends the run after the case in progress (seconds) and
    stops the broker; a second Ctrl-C interrupts at once. The first one raises
    nothing: an exception thrown into pika or a thread pool at an arbitrary
    point can leave a lock held and hang the clean-up. The handlers are
    installed here, not inherited (a shell starts background jobs with SIGINT
    ignored), and restored on return. Returns the exit status: 0, 1 when no
    broker could be had, 2 on a wrong argument, 130 when interrupted.
    """
    from . import broker as vb

    try:
        _sizes(scale)
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def interrupt(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt(signal.Signals(signum).name)
        stop.set()
        print(f"\n{signal.Signals(signum).name}: stopping after the current case (again to stop at once)",
              file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    load_before = os.getloadavg()
    broker = None
    try:
        try:
            broker = vb.start_broker(backend, image)  # type: ignore[arg-type]
            if not stop.is_set():
                print(f"voicelab bench on {broker_caption(broker)}", flush=True)
            t0 = time.monotonic()
            runs = run_bench(broker, repeats=repeats, scale=scale, show_progress=True, stop=stop)
            minutes = (time.monotonic() - t0) / 60
        finally:
            if broker is not None:
                broker.stop()
    except KeyboardInterrupt:
        print("interrupted; the broker is stopped", file=sys.stderr)
        return 130
    except vb.BrokerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop.is_set():
        print(f"interrupted after {len(runs)} of {repeats * len(CASES)} measurements; the broker is stopped",
              file=sys.stderr)
        return 130
    load = runs["load_1min"]
    header = (f"RabbitMQ {runs['broker_version'].iloc[0]}, {repeats} repeat(s) interleaved, {minutes:.1f} min; "
              f"load average (1 min) on {os.cpu_count()} cores: {load_before[0]:.2f} before, "
              f"{load.median():.2f} median during, {load.max():.2f} max\n")
    print(format_report(runs, header))
    if csv:
        print(f"\nwrote {write_csv(runs, csv)} ({len(runs)} rows; load it with voicelab.bench.read_csv)")
    return 0
