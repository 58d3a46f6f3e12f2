"""``python -m voicelab bench``: the library's publish and consume rates on a real broker, with repeats and ratios.

The bench measures the library against bare pika, nothing from the lessons:
publishing without confirms (:func:`voicelab.publishing.publish_unconfirmed`),
with a confirm per message (:func:`voicelab.publishing.publish_confirmed`),
batched and asynchronous confirms (:class:`voicelab.publishing.ReliablePublisher`);
consuming with :class:`voicelab.consumers.ThreadPoolConsumer` (no-op handler)
against a bare pika ``basic_consume`` + ``basic_ack`` loop at the same prefetch,
and that bare loop by prefetch; a classic queue against a quorum queue. Every
measurement is also counted on the broker (``counted``: messages left in the
queue after publishing, gone from it after consuming), which must equal ``n``.

:func:`run_bench` runs every case of :data:`CASES` ``repeats`` times,
interleaved (every case once, then again, as :func:`voicelab.lab.measure.sweep`
does, so that a load spike from something else on the machine spreads over all
cases instead of biasing one); :func:`format_report` gives the medians and
spreads, then the ratios of :data:`RATIOS`, each computed within one repeat from
cases measured moments apart, the ones with a target marked PASS or MISS (a
report, not a test). ``--csv PATH`` writes one row per measurement that a
notebook loads with :func:`read_csv`.

The modules: :mod:`~voicelab.bench.clients` (what is timed),
:mod:`~voicelab.bench.cases` (the cases, the ratios, :func:`run_bench`),
:mod:`~voicelab.bench.report` (summary, ratios, text, CSV). The command is
:func:`voicelab.cli.bench`.

Example::

    from voicelab.broker import start_broker
    with start_broker() as broker:
        runs = run_bench(broker, repeats=3, scale=0.2)
    print(format_report(runs))
    ratios(runs)[["ratio", "median", "target", "verdict"]]
    write_csv(runs, "bench.csv")      # later: read_csv("bench.csv")

>>> [r.ratio for r in RATIOS if r.target]
['async confirms / confirm per message', 'ThreadPoolConsumer (16 threads, no-op) / bare pika loop, prefetch 16']
"""

from .cases import (CASES, COLUMNS, CONSUME_N, PUBLISH_N, RATIOS, Case, Ratio, check_repeats, run_bench,
                    sizes)
from .clients import (BODY_SIZE, POOL_THREADS, PUBLISH_STRATEGIES, QUEUE_TYPES, consume_bare, consume_pool, fill,
                      publish_strategy, ready, time_publishes)
from .report import format_report, pair_ratios, ratios, read_csv, report_header, summarize, write_csv

__all__ = ["BODY_SIZE", "CASES", "COLUMNS", "CONSUME_N", "POOL_THREADS", "PUBLISH_N", "PUBLISH_STRATEGIES",
           "QUEUE_TYPES", "RATIOS", "Case", "Ratio", "check_repeats", "consume_bare", "consume_pool", "fill",
           "format_report", "pair_ratios", "publish_strategy", "ratios", "read_csv", "ready",
           "report_header", "run_bench", "sizes", "summarize", "time_publishes", "write_csv"]
