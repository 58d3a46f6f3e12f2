"""The bench's results: a summary per case, ratios within a repeat, the text report, CSV in and out.

Example::

    runs = run_bench(broker)
    print(format_report(runs, report_header(runs, minutes=1.2)))
    ratios(runs)[["ratio", "median", "target", "verdict"]]
    write_csv(runs, "bench.csv")      # later: read_csv("bench.csv")
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from .cases import COLUMNS, RATIOS, Ratio


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


def pair_ratios(runs: pd.DataFrame, numerator: str, denominator: str) -> pd.Series:
    """``numerator``'s rate over ``denominator``'s, repeat by repeat (both measured in the same repeat).

    >>> runs = pd.DataFrame({"case": ["a", "b", "a", "b"], "repeat": [0, 0, 1, 1],
    ...                      "messages_per_s": [100.0, 50.0, 120.0, 40.0]})
    >>> pair_ratios(runs, "a", "b").tolist()
    [2.0, 3.0]
    """
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
        values = pair_ratios(runs, r.numerator, r.denominator)
        if values.empty:
            continue
        med = float(values.median())
        verdict = "" if r.target is None else ("PASS" if med >= r.target else "MISS")
        out.append({"ratio": r.ratio, "median": med, "min": float(values.min()), "max": float(values.max()),
                    "repeats": len(values), "target": r.target, "verdict": verdict,
                    "numerator": r.numerator, "denominator": r.denominator})
    return pd.DataFrame(out, columns=["ratio", "median", "min", "max", "repeats", "target", "verdict",
                                      "numerator", "denominator"])


def report_header(runs: pd.DataFrame, minutes: float, load_before: float | None = None) -> str:
    """The report's first line: broker version, repeats, duration, and the machine's load during the run."""
    load = runs["load_1min"]
    before = "" if load_before is None else f"{load_before:.2f} before, "
    return (f"RabbitMQ {runs['broker_version'].iloc[0]}, {runs['repeat'].nunique()} repeat(s) interleaved, "
            f"{minutes:.1f} min; load average (1 min) on {os.cpu_count()} cores: {before}"
            f"{load.median():.2f} median during, {load.max():.2f} max\n")


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
