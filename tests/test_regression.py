"""Regression check: direction, threshold AND CI, baseline resolution, report, rows written."""

from datetime import datetime, timezone

import pytest

from evaluation import regression as G
from evaluation import results as R
from test_results import agg_row


def test_direction_threshold_and_ci_logic():
    # higher is better: worse by 0.2 > threshold 0.1, baseline above the CI -> regression
    assert G.is_regression(0.5, 0.7, True, 0.1, 0.45, 0.55)
    # same move, but the baseline lies inside the current CI -> noise, not a regression
    assert not G.is_regression(0.5, 0.7, True, 0.1, 0.3, 0.75)
    # outside the CI but not beyond the threshold -> not a regression
    assert not G.is_regression(0.5, 0.55, True, 0.1, 0.49, 0.51)
    # better -> never
    assert not G.is_regression(0.9, 0.7, True, 0.0, 0.89, 0.91)
    # lower is better: an increase is worse
    assert G.is_regression(0.30, 0.10, False, 0.05, 0.25, 0.35)
    assert not G.is_regression(0.05, 0.10, False, 0.0, 0.04, 0.06)
    assert not G.is_regression(float("nan"), 0.1, False, 0.0, 0, 1)


def test_thresholds_absolute_relative_and_prefix(tmp_path):
    t = G.load_thresholds(overrides={"sim": {"abs": 0.03}, "dnsmos": {"rel": 0.1}})
    assert G.threshold_for("sim", 0.5, t) == pytest.approx(0.03)
    assert G.threshold_for("dnsmos_ovrl", 3.0, t) == pytest.approx(0.3)  # prefix match, relative
    assert G.threshold_for("wer_corpus", 0.2, t) == pytest.approx(0.01)
    assert G.threshold_for("anything", -2.0, t) == pytest.approx(0.04)  # "*" default, relative to |baseline|
    cfg = tmp_path / "thr.yaml"
    cfg.write_text("wer: {rel: 0.5}\n")
    assert G.threshold_for("wer", 0.2, G.load_thresholds(cfg)) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        G.load_thresholds(overrides={"x": {"pct": 1}})


def _run(root, run_id, day, rows, kind="adhoc", variant="v"):
    R.write_rows(root, "aggregate", [agg_row(run_id, kind=kind, variant=variant, **r) for r in rows], run_id=run_id,
                 when=datetime(2024, 1, day, tzinfo=timezone.utc))


def test_compare_runs_writes_rows_and_report(tmp_path):
    _run(tmp_path, "base", 1, [dict(metric="wer", value=0.10, ci_low=0.09, ci_high=0.11),
                               dict(metric="sim", value=0.60, higher_is_better=True, ci_low=0.5, ci_high=0.7),
                               dict(metric="gone", value=1.0)])
    _run(tmp_path, "cur", 2, [dict(metric="wer", value=0.20, ci_low=0.18, ci_high=0.22),  # worse beyond both
                              dict(metric="sim", value=0.55, higher_is_better=True, ci_low=0.45, ci_high=0.65),
                              dict(metric="fresh", value=1.0)])
    s = G.compare_runs(tmp_path, "cur")
    assert s.baseline_run_id == "base" and s.regressed
    assert [r["metric"] for r in s.regressions] == ["wer"]
    assert s.new == ["demo/en_tts/fresh"] and s.missing == ["demo/en_tts/gone"]
    rows = R.read_table(tmp_path, "regression", run_id="cur")
    assert len(rows) == 2 and rows.set_index("metric").loc["wer", "regressed"]
    assert rows.set_index("metric").loc["wer", "delta"] == pytest.approx(0.1)
    assert not rows.set_index("metric").loc["sim", "regressed"]  # baseline inside the CI
    assert "REGRESSED" in s.report and "| ❌ | demo | en_tts | wer |" in s.report and "gone" in s.report


def test_baseline_resolution(tmp_path):
    _run(tmp_path, "n1", 1, [dict()], kind="nightly", variant="dense")
    _run(tmp_path, "a1", 2, [dict()], kind="adhoc", variant="moe")
    _run(tmp_path, "n2", 3, [dict()], kind="nightly", variant="moe")
    _run(tmp_path, "n3", 4, [dict()], kind="nightly", variant="moe")
    assert G.resolve_baseline(tmp_path, "n3") == "n2"  # previous run of the same benchmark, kind and variant
    assert G.resolve_baseline(tmp_path, "n2") is None  # n1 is another variant, a1 another kind
    assert G.resolve_baseline(tmp_path, "n2", "a1") == "a1"  # by run id
    assert G.resolve_baseline(tmp_path, "n2", "dense") == "n1"  # by variant name
    assert G.resolve_baseline(tmp_path, "n1") is None
    with pytest.raises(G.BaselineNotFound):
        G.resolve_baseline(tmp_path, "n2", "no-such-thing")
    s = G.compare_runs(tmp_path, "n1")
    assert not s.regressed and s.baseline_run_id is None and "No baseline" in s.report
    assert R.read_table(tmp_path, "regression").empty
