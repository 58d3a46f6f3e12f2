"""``voicelab bench`` on real brokers: every case runs and is counted on the broker, the CSV round-trips,
the reference consumers ack exactly what they say, the CLI reports and cleans up, and the bench measures the
library, not a lesson. No timing assertions: the rates depend on the machine; only the counts and the shape of
the report are checked."""

from __future__ import annotations

import ast
import doctest
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import images, interrupt_after, left_behind, require
from voicelab import bench
from voicelab import broker as vb
from voicelab.management import Management

TINY = 0.01  # 30 messages per publishing case, 100 per consuming case


@pytest.fixture(scope="module")
def tiny_runs(any_broker: vb.Broker) -> pd.DataFrame:
    return bench.run_bench(any_broker, repeats=2, scale=TINY)


def test_every_case_runs_and_is_counted_on_the_broker(tiny_runs: pd.DataFrame, any_broker: vb.Broker) -> None:
    runs = tiny_runs
    assert list(runs.columns) == bench.COLUMNS
    assert len(runs) == 2 * len(bench.CASES)
    assert runs.groupby("case", sort=False).size().to_dict() == {c.case: 2 for c in bench.CASES}
    assert set(runs.loc[runs.group == "publish", "n"]) == {30}
    assert set(runs.loc[runs.group == "consume", "n"]) == {100}
    wrong = runs[runs.counted != runs.n]
    assert wrong.empty, f"the broker did not count n messages for:\n{wrong[['case', 'repeat', 'n', 'counted']]}"
    assert (runs.messages_per_s > 0).all() and (runs.seconds > 0).all()
    assert set(runs.broker_version) == {any_broker.version}
    pool = runs[runs.case.str.contains("ThreadPoolConsumer")]
    assert set(pool.threads) == {bench.POOL_THREADS} and set(pool.prefetch) == {bench.POOL_THREADS}
    with any_broker.connect() as connection, pytest.raises(Exception, match="NOT_FOUND"):
        connection.channel().queue_declare("voicelab.bench", passive=True)  # tidied up


def test_ratios_pair_cases_of_the_same_repeat(tiny_runs: pd.DataFrame) -> None:
    r = bench.ratios(tiny_runs)
    assert list(r["ratio"]) == [x.ratio for x in bench.RATIOS]
    assert (r["repeats"] == 2).all()
    rates = tiny_runs.set_index(["repeat", "case"])["messages_per_s"]
    for _, row in r.iterrows():
        per_repeat = [rates[(k, row["numerator"])] / rates[(k, row["denominator"])] for k in (0, 1)]
        assert row["min"] == pytest.approx(min(per_repeat)) and row["max"] == pytest.approx(max(per_repeat))
    targets = r[r["target"].notna()]
    assert len(targets) == 2 and set(targets["verdict"]) <= {"PASS", "MISS"}
    assert (r.loc[r["target"].isna(), "verdict"] == "").all()
    text = bench.format_report(tiny_runs, "header line")
    assert text.startswith("header line")
    for case in tiny_runs["case"].unique():
        assert case in text
    assert text.count("PASS") + text.count("MISS") == 2 and "WRONG" not in text


def test_csv_round_trips(tiny_runs: pd.DataFrame, tmp_path: Path) -> None:
    path = bench.write_csv(tiny_runs, tmp_path / "bench.csv")
    back = bench.read_csv(path)
    pd.testing.assert_frame_equal(back, tiny_runs, check_dtype=False)
    pd.testing.assert_frame_equal(bench.ratios(back), bench.ratios(tiny_runs))
    with pytest.raises(ValueError, match="columns"):
        bench.write_csv(tiny_runs.drop(columns=["counted"]), tmp_path / "x.csv")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a voicelab bench CSV"):
        bench.read_csv(tmp_path / "other.csv")


def test_reference_consumers_ack_exactly_n(any_broker: vb.Broker) -> None:
    """The bare loop acks n of n + 50 (the rest is back in the queue); the pool acks all n, from a quorum queue too.

    Counted twice on the broker: messages left in the queue, and the queue's own ack counter.
    """
    n, extra = 300, 50
    bench.fill(any_broker, "t.bench.bare", n + extra)
    assert bench.consume_bare(any_broker, "t.bench.bare", n, prefetch=20) > 0
    assert bench.ready(any_broker, "t.bench.bare") == extra
    for queue, queue_type in [("t.bench.pool", "classic"), ("t.bench.quorum", "quorum")]:
        bench.fill(any_broker, queue, n, queue_type)
        assert bench.ready(any_broker, queue) == n, queue
        rate, acked = bench.consume_pool(any_broker, queue, n, threads=4)
        assert rate > 0 and acked == n and bench.ready(any_broker, queue) == 0, queue
    queues = ("t.bench.bare", "t.bench.pool", "t.bench.quorum")
    mgmt = Management(any_broker)
    try:
        for queue in queues:
            mgmt.wait_for(queue, lambda q: q.get("message_stats", {}).get("ack") == n, timeout=60)  # lags under load
    finally:
        mgmt.close()
    with any_broker.connect() as connection:
        for queue in queues:
            connection.channel().queue_delete(queue)


def test_publish_strategies_count_every_message(any_broker: vb.Broker) -> None:
    for strategy in bench.PUBLISH_STRATEGIES:
        seconds, counted = bench.publish_strategy(any_broker, "t.bench.pub", 30, strategy, "quorum")
        assert seconds > 0 and counted == 30, strategy
    with any_broker.connect() as connection:
        connection.channel().queue_delete("t.bench.pub")


def test_wrong_arguments_are_named(any_broker: vb.Broker) -> None:
    with pytest.raises(ValueError, match="repeats"):
        bench.run_bench(any_broker, repeats=0)
    with pytest.raises(ValueError, match="scale"):
        bench.run_bench(any_broker, scale=0)
    with pytest.raises(ValueError, match="strategy"):
        bench.publish_strategy(any_broker, "q", 10, "fire and forget")
    with pytest.raises(ValueError, match="queue_type"):
        bench.fill(any_broker, "q", 10, queue_type="stream")
    with pytest.raises(ValueError, match="prefetch"):
        bench.consume_bare(any_broker, "q", 10, prefetch=-1)
    with pytest.raises(ValueError, match="n must be"):
        bench.consume_pool(any_broker, "q", 0)


def test_docstring_examples() -> None:
    results = [doctest.testmod(m) for m in (bench, bench.cases, bench.report, bench.clients)]
    assert sum(r.attempted for r in results) >= 6 and sum(r.failed for r in results) == 0


def test_the_bench_imports_no_lesson_experiment() -> None:
    """It measures the library: from the lab it may use run sizes, progress bars and captions, nothing else."""
    imported = []
    for path in Path(bench.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                imported += [f"{node.module or ''}.{alias.name}".split(".") for alias in node.names]
            elif isinstance(node, ast.Import):
                imported += [alias.name.split(".") for alias in node.names]
    from_lab = {".".join(parts[parts.index("lab"):]) for parts in imported if "lab" in parts}
    assert all(name.startswith("lab.measure.") for name in from_lab), from_lab


def _cli(*args: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "voicelab", "bench", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**env, "PYTHONUNBUFFERED": "1"}, **kw)


def test_cli_prints_the_table_and_writes_csv(any_broker: vb.Broker, tmp_path: Path) -> None:
    env = {**os.environ, "VOICELAB_AMQP_URL": any_broker.amqp_url}
    proc = _cli("--backend", "url", "--repeats", "1", "--scale", str(TINY), "--csv", str(tmp_path / "b.csv"),
                env=env)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert f"RabbitMQ {any_broker.version}" in out and "load average" in out
    assert "msg/s median" in out and out.count("PASS") + out.count("MISS") == 2, out
    runs = bench.read_csv(tmp_path / "b.csv")
    assert len(runs) == len(bench.CASES) and (runs.counted == runs.n).all()


def test_cli_refuses_wrong_arguments_without_starting_a_broker() -> None:
    env = {k: v for k, v in os.environ.items() if k != "VOICELAB_AMQP_URL"}
    proc = _cli("--repeats", "0", env=env)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2 and "repeats" in out, out
    proc = _cli("--scale", "-1", env=env)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 2 and "scale" in out, out


def test_ctrl_c_stops_the_bench_and_its_broker() -> None:
    """SIGINT in the middle of a run: exit 130, no container left, even when launched with SIGINT ignored."""
    require("container")
    env = {k: v for k, v in os.environ.items() if k != "VOICELAB_AMQP_URL"}
    proc = _cli("--backend", "container", "--image", images()[0], env=env,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    before, out = interrupt_after(proc, lambda line: line.startswith("voicelab bench on"))
    assert proc.returncode == 130, before + out
    assert "interrupted" in out
    assert left_behind(proc.pid) == []
