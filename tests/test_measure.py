"""The measuring kit: run sizes, timings, summaries and plots."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest

from voicelab.lab import measure


def test_scale_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICELAB_SCALE", "0.1")
    assert measure.sized(100) == 10 and measure.sized(10, minimum=5) == 5
    monkeypatch.setenv("VOICELAB_SCALE", "lots")
    with pytest.raises(ValueError, match="VOICELAB_SCALE.*'lots'"):
        measure.scale()
    monkeypatch.setenv("VOICELAB_SCALE", "-1")
    with pytest.raises(ValueError, match="> 0"):
        measure.scale()


def test_time_calls_summary_and_plot() -> None:
    df = measure.time_calls(lambda i: sum(range(1000 * (i + 1))), n=5, label="sum", repeats=2)
    assert list(df.columns) == ["label", "repeat", "i", "ms", "cpu_ms"] and len(df) == 10 and (df["ms"] > 0).all()
    assert (df["cpu_ms"] >= 0).all() and df["cpu_ms"].sum() > 0
    s = measure.summary(df)
    assert s.loc["sum", "n"] == 10 and s.loc["sum", "p10"] <= s.loc["sum", "median"] <= s.loc["sum", "p90"]
    ax = measure.plot_distributions(df, title="t", caption=measure.machine(), ylabel="time")
    assert ax.get_ylabel() == "time (ms)" and "2 repeat(s)" in ax.get_title()
    with pytest.raises(ValueError, match="repeats"):
        measure.time_calls(lambda i: None, n=1, label="x", repeats=0)


def test_one_caption_per_figure() -> None:
    df = measure.sweep(lambda x: x, {"x": [1, 2]}, repeats=2)
    ax = measure.plot_sweep(df, "x", title="t", caption="first")
    measure.add_caption(ax.figure, "second")
    assert [t.get_text() for t in ax.figure.texts] == ["second"]
    assert ax.figure.subplotpars.bottom >= 0.75 / ax.figure.get_figheight() - 1e-9


def test_confirm_claim_measures_again_only_when_the_claim_fails() -> None:
    measured: list[int] = []

    def measure_again() -> int:
        measured.append(1)
        return 10 * len(measured)

    assert measure.confirm_claim(50, lambda r: r > 20, measure_again) == 50 and measured == []
    assert measure.confirm_claim(5, lambda r: r > 20, measure_again) == 10 and len(measured) == 1   # once by default
    assert measure.confirm_claim(5, lambda r: r > 20, measure_again, again=3) == 30 and len(measured) == 3  # 20, 30
    assert measure.confirm_claim(5, lambda r: r > 20, measure_again, again=0) == 5 and len(measured) == 3
    with pytest.raises(ValueError, match="again"):
        measure.confirm_claim(5, bool, measure_again, again=-1)
