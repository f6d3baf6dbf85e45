"""The ablation dashboard: DuckDB queries on a fixture workspace, SVG charts, page rendering and escaping,
the HTTP routes and the ``unimoe dashboard`` command."""

import json
import math
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import dashboard_fixtures as F
from evaluation.dashboard import charts
from evaluation.dashboard.app import compare_json, make_server, render_page
from evaluation.dashboard.queries import DashboardData, Series, delta_status, split_list
from evaluation.results import SCHEMAS, write_rows

ROOT = Path(__file__).resolve().parents[1]
SVG_NS = "{http://www.w3.org/2000/svg}"
V = [Series("variant", v) for v in F.VARIANTS]
BASE = Series("variant", F.BASELINE)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return F.make_workspace(tmp_path_factory.mktemp("dash") / "ws")


@pytest.fixture(scope="module")
def data(ws):
    return DashboardData(ws)


def svgs(html: str) -> list[ET.Element]:
    """Every inline SVG of a page, parsed as XML (so each must be well-formed)."""
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", html, flags=re.S)]


# -- queries ------------------------------------------------------------------------------------
def test_pickers(data):
    assert data.variants() == sorted([F.BASELINE, *F.VARIANTS])
    assert data.benchmarks() == ["demo", "musiccaps"]
    runs = data.runs().df
    assert set(runs["run_id"]) == set(F.RUN_IDS.values()) | {f"nightly-{d:%Y%m%d}" for d in F.NIGHTLY_DATES}
    assert runs.set_index("run_id").loc["run-topp", "kind"] == "adhoc"
    tr = data.train_runs().df.set_index("run_id")
    assert tr.loc["train-topp", "stages"] == "1,2,3" and tr.loc["train-woinit", "stages"] == "3"
    assert split_list(["a,b", " c ", "a", ""]) == ["a", "b", "c"]


def test_compare_deltas_and_regressions(data):
    cmp = data.compare(V, BASE)
    assert cmp.message is None and len(cmp.df) == len(F.METRICS)
    expected = F.expected_deltas()
    seen = 0
    for r in cmp.df.itertuples():
        assert r.cells[BASE.key]["delta"] is None  # the baseline has no delta against itself
        for s in V:
            cell = r.cells[s.key]
            delta, regressed = expected[(s.name, r.benchmark, r.task, r.metric)]
            assert cell["delta"] == pytest.approx(delta, abs=1e-12)
            assert (cell["status"] == "regressed") == regressed
            lo, hi = cell["delta_ci"]
            assert lo == pytest.approx(cell["ci_low"] - r.cells[BASE.key]["value"])
            assert hi == pytest.approx(cell["ci_high"] - r.cells[BASE.key]["value"])
            seen += 1
    assert seen == 2 * len(F.METRICS)
    # wo-init regresses on WER (lower is better) and FAD; within-CI changes are not flagged.
    by = {(r.benchmark, r.metric): r.cells["variant:wo-init"]["status"] for r in cmp.df.itertuples()}
    assert by[("demo", "wer_pocketsphinx")] == "regressed" and by[("musiccaps", "fad")] == "regressed"
    assert by[("demo", "key_adherence")] == "same" and by[("demo", "dnsmos_ovrl")] == "improved"


def test_compare_latest_result_per_variant_and_run_series(data):
    # unimoe-top-p0.7 also has nightly rows (earlier): its latest en_tts WER is the ablation run's.
    cmp = data.compare(V, BASE, benchmark="demo")
    assert set(cmp.df["benchmark"]) == {"demo"}
    wer = cmp.df[cmp.df["metric"] == "wer_pocketsphinx"].iloc[0].cells
    assert wer["variant:unimoe-top-p0.7"]["run_id"] == "run-topp"
    # A run as the series and a run as the baseline.
    night = Series("run", "nightly-20250305")
    cmp = data.compare([night], Series("run", "nightly-20250301"), benchmark="demo")
    wer = cmp.df[cmp.df["metric"] == "wer_pocketsphinx"].iloc[0].cells[night.key]
    assert wer["delta"] == pytest.approx(F.NIGHTLY_WER[4] - F.NIGHTLY_WER[0]) and wer["status"] == "regressed"


def test_threshold_suppresses_small_regressions(data):
    cmp = data.compare(V, BASE, threshold=0.5)  # no change in the fixture exceeds 50% of its baseline
    statuses = {c["status"] for r in cmp.df.itertuples() for k, c in r.cells.items() if k != BASE.key}
    assert "regressed" not in statuses


def test_delta_status_rule():
    assert delta_status(0.4, 0.38, 0.42, 0.3, higher_is_better=False) == "regressed"
    assert delta_status(0.4, 0.38, 0.42, 0.3, higher_is_better=True) == "improved"
    assert delta_status(0.31, 0.28, 0.34, 0.3, higher_is_better=False) == "same"  # baseline inside the CI
    assert delta_status(0.31, math.nan, math.nan, 0.3, higher_is_better=False) == "regressed"  # no CI: any change
    assert delta_status(0.31, math.nan, math.nan, 0.3, False, threshold=0.02) == "same"  # within the threshold
    assert delta_status(0.4, 0.38, 0.42, 0.3, False, threshold=0.2) == "same"
    assert delta_status(math.nan, 0, 1, 0.3, True) == "same"


def test_default_thresholds_are_the_regression_checks(data):
    # clap 0.30 -> 0.32 (CI 0.31-0.33) is beyond the CI; a 10% blanket threshold hides it, the default 2% does not.
    cell = lambda cmp: next(r for r in cmp.df.itertuples() if r.metric == "clap").cells["variant:unimoe-top-p0.7"]  # noqa: E731
    assert cell(data.compare(V, BASE))["status"] == "improved"
    assert cell(data.compare(V, BASE))["threshold"] == pytest.approx(0.02 * 0.3)
    assert cell(data.compare(V, BASE, threshold=0.1))["status"] == "same"


def test_nightly_history_flags_recorded_regressions(data):
    s = data.nightly("demo")
    wer = s.df[s.df["metric"] == "wer_pocketsphinx"]
    assert list(wer["value"]) == F.NIGHTLY_WER
    assert list(wer["regressed"]) == [False] * 4 + [True]
    # Variants without nightly runs fall back to every nightly series, with a note.
    s = data.nightly(None, ["wo-init"])
    assert not s.empty and "showing all" in s.message


def test_experts_per_token(data):
    s = data.experts_per_token(V)
    assert s.meta["stage"] == 3
    mean = s.meta["mean"]
    for series in ("train-topp · unimoe-top-p0.7", "train-woinit · wo-init"):
        for layer in F.MOE_LAYERS:
            got = mean[(mean["series"] == series) & (mean["layer"] == layer)]["mean"].item()
            assert got == pytest.approx(F.mean_experts(layer))
    s2 = data.experts_per_token(V, stage=2)
    assert set(s2.df["series"]) == {"train-topp · unimoe-top-p0.7"}
    # Token counts are summed over the logging windows.
    tok = s2.df[(s2.df["layer"] == 3) & (s2.df["num_experts"] == 2)]["tokens"].item()
    assert tok == pytest.approx(0.5 * F.TOKENS_PER_WINDOW * len(F.STEPS))


def test_task_share(data):
    s = data.task_share(V, layer=F.MOE_LAYERS[0])
    df = s.df
    assert s.meta == {"stage": 3, "layer": F.MOE_LAYERS[0]}
    sums = df.groupby(["series", "expert"])["share"].sum()
    assert all(x == pytest.approx(1.0) for x in sums)
    topp = df[df["series"] == "train-topp · unimoe-top-p0.7"]
    # Expert e prefers task e % 4 (30 of 60 selections); experts 4, 5 are null experts.
    assert topp[(topp["expert"] == 1) & (topp["task"] == "en_tts")]["share"].item() == pytest.approx(0.5)
    assert set(topp[topp["is_null"]]["expert"]) == {4, 5}
    woinit = df[df["series"] == "train-woinit · wo-init"]
    assert woinit[(woinit["expert"] == 3) & (woinit["task"] == "zh_tts")]["share"].item() == pytest.approx(0.5)


def test_loss_curves_by_stage(data):
    df = data.loss_curves(V).df
    topp = df[df["series"] == "train-topp · unimoe-top-p0.7"]
    assert set(topp[topp["stage"] == 1]["curve"]) == {f"loss_{t}" for t in ("zh_tts", "en_tts", "t2m", "v2m")}
    assert "loss" in set(topp[topp["stage"] == 3]["curve"])
    row = topp[(topp["stage"] == 2) & (topp["curve"] == "loss") & (topp["step"] == 20)]
    assert row["value"].item() == pytest.approx(8.0 / (1 + 0.05 * 20) + 0.2)
    # Only the selected variants' runs; an unknown selection shows all with a note.
    only = data.loss_curves([Series("variant", "wo-init")])
    assert set(only.df["series"]) == {"train-woinit · wo-init"} and only.message is None
    other = data.loss_curves([Series("variant", "nope")])
    assert len(set(other.df["series"])) == 2 and "showing every training run" in other.message


def test_missing_and_broken_tables_give_messages(tmp_path):
    empty = DashboardData(tmp_path / "nothing")
    assert "unimoe benchmark" in empty.compare(V, BASE).message
    assert "unimoe train" in empty.loss_curves(V).message
    assert empty.experts_per_token(V).message and empty.task_share(V).message and empty.nightly().message
    html = render_page(empty, {})
    assert "No aggregate results yet" in html and "No training metrics yet" in html
    # A damaged part file: the section says so, the page still renders.
    bad = tmp_path / "bad"
    (bad / "results" / "aggregate" / "date=2025-01-01").mkdir(parents=True)
    (bad / "results" / "aggregate" / "date=2025-01-01" / "part-x.parquet").write_bytes(b"not parquet")
    s = DashboardData(bad).compare(V, BASE)
    assert s.empty and "Could not read the aggregate table" in s.message
    assert "Could not read the aggregate table" in render_page(DashboardData(bad), {"variants": ["a"]})
    # In-flight temporary files of atomic writes are never read.
    (bad / "results" / "aggregate" / "date=2025-01-01" / "part-x.parquet").unlink()
    (bad / "results" / "aggregate" / "date=2025-01-01" / ".part-y.parquet.abc.tmp").write_bytes(b"partial")
    assert DashboardData(bad).files("aggregate") == []


# -- charts ------------------------------------------------------------------------------------
def test_radar_geometry_and_normalisation():
    assert charts.normalise([1.0, 2.0, 3.0], higher_is_better=True) == [0.2, pytest.approx(0.6), 1.0]
    assert charts.normalise([1.0, 2.0, 3.0], higher_is_better=False) == [1.0, pytest.approx(0.6), 0.2]
    assert charts.normalise([5.0, 5.0, None], True) == [1.0, 1.0, None]
    x, y = charts.radar_point(1.0, 0, 4, 100, 100, 50)
    assert (x, y) == pytest.approx((100, 50))  # first axis at 12 o'clock
    x, y = charts.radar_point(0.5, 1, 4, 100, 100, 50)
    assert (x, y) == pytest.approx((125, 100))  # clockwise
    svg = charts.radar(["a", "b", "c", "d"], [("s1", [1.0, 1.0, 1.0, 1.0]), ("s2", [0.5, None, 0.5, 0.5])],
                       raw=[[1, 2, 3, 4], [5, None, 7, 8]], title="t")
    root = ET.fromstring(svg)
    polys = {p.get("data-series"): p.get("points") for p in root.iter(SVG_NS + "polygon") if p.get("data-series")}
    assert set(polys) == {"s1", "s2"}
    w = float(root.get("width"))
    cx = w / 2
    pts = [tuple(map(float, p.split(","))) for p in polys["s2"].split()]
    cy = pts[1][1]  # the missing value sits at the centre
    assert pts[1] == pytest.approx((cx, cy), abs=0.01)
    r = cy - pts[0][1]  # s2's first vertex: half the radius above the centre
    s1 = [tuple(map(float, p.split(","))) for p in polys["s1"].split()]
    assert cy - s1[0][1] == pytest.approx(2 * r, abs=0.02)
    assert s1[1][0] - cx == pytest.approx(2 * r, abs=0.02)
    assert "need at least three" not in svg
    assert "at least three" in charts.radar(["a", "b"], [("s", [1, 1])])


def test_bars_heatmap_stacked_lines_are_wellformed_and_exact():
    svg = charts.grouped_bars(["L1", "L3"], [("a", [1.5, 2.0]), ("b", [1.0, None])], title="m", figure="experts-per-token")
    root = ET.fromstring(svg)
    bars = [(b.get("data-series"), b.get("data-category"), float(b.get("data-value"))) for b in root.iter(SVG_NS + "rect")
            if b.get("class") == "bar"]
    assert bars == [("a", "L1", 1.5), ("b", "L1", 1.0), ("a", "L3", 2.0)]
    h = {(b.get("data-series"), b.get("data-category")): float(b.get("height")) for b in root.iter(SVG_NS + "rect")
         if b.get("class") == "bar"}
    assert h[("a", "L3")] == pytest.approx(2 * h[("b", "L1")], rel=0.01)

    root = ET.fromstring(charts.stacked_bars(["E0", "E1"], [("x", [0.25, 1.0]), ("y", [0.75, 0.0])]))
    rects = [r for r in root.iter(SVG_NS + "rect") if r.get("class") == "bar"]
    assert len(rects) == 3
    e0 = [float(r.get("height")) for r in rects if r.get("data-category") == "E0"]
    assert e0[1] == pytest.approx(3 * e0[0], rel=0.01)

    root = ET.fromstring(charts.heatmap(["L1"], ["0", "1"], [[0.25, 0.75]]))
    cells = [(c.get("data-col"), float(c.get("data-value"))) for c in root.iter(SVG_NS + "rect") if c.get("class") == "cell"]
    assert cells == [("0", 0.25), ("1", 0.75)]

    root = ET.fromstring(charts.line_chart([{"name": "l", "xs": [0, 1, 2], "ys": [3, 2, 1], "flags": [0, 0, 1],
                                             "lo": [2.5, 1.5, 0.5], "hi": [3.5, 2.5, 1.5]}]))
    path = next(p for p in root.iter(SVG_NS + "path") if p.get("class") == "line")
    pts = [tuple(map(float, m)) for m in re.findall(r"[ML]([-\d.]+),([-\d.]+)", path.get("d"))]
    assert len(pts) == 3 and pts[0][0] < pts[1][0] < pts[2][0] and pts[0][1] < pts[1][1] < pts[2][1]
    assert pts[1][1] - pts[0][1] == pytest.approx(pts[2][1] - pts[1][1], abs=0.02)  # linear in y
    assert len([c for c in root.iter(SVG_NS + "circle") if c.get("class") == "flag"]) == 1
    assert len([p for p in root.iter(SVG_NS + "polygon") if p.get("class") == "band"]) == 1
    assert charts.nice_ticks(0, 1) == [0, 0.25, 0.5, 0.75, 1.0]


def test_chart_text_is_escaped():
    nasty = '<script>alert("x")</script>&'
    for svg in (charts.radar([nasty, "b", "c"], [(nasty, [1, 1, 1])], title=nasty),
                charts.grouped_bars([nasty], [(nasty, [1.0])], title=nasty),
                charts.stacked_bars([nasty], [(nasty, [1.0])], title=nasty),
                charts.heatmap([nasty], [nasty], [[1.0]], title=nasty),
                charts.line_chart([{"name": nasty, "xs": [0, 1], "ys": [0, 1]}], title=nasty)):
        root = ET.fromstring(svg)  # raises if anything broke the markup
        assert "<script>" not in svg
        assert nasty in "".join(root.itertext()) or any(nasty in (e.get("data-series") or "") for e in root.iter())


# -- page, HTTP, CLI -----------------------------------------------------------------------------
def test_page_renders_every_figure(data):
    html = render_page(data, {"variants": ["unimoe-top-p0.7,wo-init"], "baseline": ["unify-dense"]})
    figures = [s.get("data-figure") for s in svgs(html)]
    for fig in ("radar", "experts-per-token", "experts-heatmap", "task-share", "loss-curves", "nightly"):
        assert fig in figures, fig
    assert figures.count("loss-curves") == 3  # one per stage
    delta, _ = F.expected_deltas()[("wo-init", "musiccaps", "t2m", "fad")]
    cell = re.search(r'<td class="delta regressed" data-series="variant:wo-init" data-metric="fad"[^>]*>([^<]*)<', html)
    assert cell and cell.group(1).strip() == charts.fmt(delta, signed=True)
    api = compare_json(data, {"variants": ["wo-init"], "baseline": ["variant:unify-dense"], "benchmark": ["musiccaps"]})
    assert api["series"] == ["variant:unify-dense", "variant:wo-init"]
    fad = next(r for r in api["rows"] if r["metric"] == "fad")["cells"]["variant:wo-init"]
    assert fad["delta"] == pytest.approx(delta) and fad["status"] == "regressed"


def test_toplines_beside_the_model_rows(data):
    """Ground truth and codec resynthesis are shown beside the series (from the runs shown), never as a
    series: the deltas, the radar and the nightly history are the model rows only."""
    cmp = data.compare(V, BASE)
    assert cmp.meta["toplines"] == ["ground_truth", "codec_resynth"]
    assert len(cmp.df) == len(F.METRICS)  # toplines add no rows
    for spec, (gt, _), (rs, _) in zip(F.METRICS, F.TOPLINES["ground_truth"], F.TOPLINES["codec_resynth"]):
        r = next(r for r in cmp.df.itertuples() if (r.benchmark, r.task, r.metric) == spec[:3])
        assert r.toplines["ground_truth"]["value"] == pytest.approx(gt)
        assert r.toplines["codec_resynth"]["value"] == pytest.approx(rs)
        assert r.toplines["ground_truth"]["run_id"] == F.TOPLINE_RUN
        # the variant that recorded the toplines keeps its own (model) value
        assert r.cells["variant:unimoe-top-p0.7"]["value"] == pytest.approx(F.VALUES["unimoe-top-p0.7"][F.METRICS.index(spec)][0])
    fad = next(r for r in cmp.df.itertuples() if r.metric == "fad")
    assert fad.toplines == {}
    html = render_page(data, {"variants": ["unimoe-top-p0.7,wo-init"], "baseline": ["unify-dense"]})
    gt_wer = F.TOPLINES["ground_truth"][0][0]
    cell = re.search(r'<td class="value topline" data-topline="ground_truth" data-metric="wer_pocketsphinx"[^>]*>([^<]*)<',
                     html)
    assert cell and cell.group(1).strip() == charts.fmt(gt_wer)
    assert ">ground truth<br><small>topline</small></th>" in html and ">codec resynthesis<br>" in html
    assert re.search(r'<td class="value topline missing" data-topline="codec_resynth" data-metric="fad"', html)
    radar = next(e for e in svgs(html) if e.get("data-figure") == "radar")
    assert {p.get("data-series") for p in radar.iter(f"{SVG_NS}polygon") if p.get("data-series")} == \
        {"unify-dense", "unimoe-top-p0.7", "wo-init"}
    api = compare_json(data, {"variants": ["unimoe-top-p0.7"], "benchmark": ["demo"]})
    wer = next(r for r in api["rows"] if r["metric"] == "wer_pocketsphinx")
    assert wer["toplines"]["codec_resynth"]["value"] == pytest.approx(F.TOPLINES["codec_resynth"][0][0])
    night = data.nightly("demo")
    assert len(night.df) == 2 * len(F.NIGHTLY_DATES)  # model rows only


def test_parts_without_system_column_read_as_model_rows(tmp_path):
    """Aggregate parts written before the system/n_asked columns existed read as model rows."""
    import pyarrow as pa

    old_schema = pa.schema([f for f in SCHEMAS["aggregate"] if f.name not in ("system", "n_asked")])
    row = F._agg_row("old-run", "adhoc", "old-variant", F.METRICS[0], 0.3, 0.01, F.RUN_DATE)
    part = tmp_path / "results" / "aggregate" / f"date={F.RUN_DATE:%Y-%m-%d}" / "part-old-run.parquet"
    part.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{k: v for k, v in row.items() if k in old_schema.names}], schema=old_schema),
                   part)
    data = DashboardData(tmp_path)
    cmp = data.compare([Series("variant", "old-variant")], None)
    assert cmp.message is None and len(cmp.df) == 1 and cmp.meta["toplines"] == []
    cell = cmp.df.iloc[0]["cells"]["variant:old-variant"]
    assert cell["value"] == pytest.approx(0.3) and cell["n_asked"] is None
    # mixed with a new part holding toplines
    new = [F._agg_row("new-run", "adhoc", "new-variant", F.METRICS[0], 0.2, 0.01, F.RUN_DATE),
           F._agg_row("new-run", "adhoc", "new-variant", F.METRICS[0], 0.05, 0.01, F.RUN_DATE, system="ground_truth")]
    write_rows(tmp_path / "results", "aggregate", new, run_id="new-run", when=F.RUN_DATE)
    cmp = data.compare([Series("variant", "old-variant"), Series("variant", "new-variant")], None)
    r = cmp.df.iloc[0]
    assert r["cells"]["variant:old-variant"]["value"] == pytest.approx(0.3)
    assert r["cells"]["variant:new-variant"]["value"] == pytest.approx(0.2)
    assert r["toplines"]["ground_truth"]["value"] == pytest.approx(0.05)
    assert "old-variant" in render_page(data, {})


def test_html_injection_is_escaped(ws, tmp_path):
    evil = '"><img src=x onerror=alert(1)><script>alert(2)</script>'
    data = DashboardData(ws)
    html = render_page(data, {"variants": [evil], "runs": [evil], "baseline": [evil], "benchmark": [evil],
                              "threshold": [evil], "stage": [evil], "layer": [evil]})
    assert "<img src=x" not in html and "<script>alert" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    # Names stored in the tables are escaped too.
    rows = [{**F._agg_row("evil-run", "adhoc", evil, F.METRICS[0], 0.3, 0.01, F.RUN_DATE), "task": evil, "metric": evil}]
    ws2 = tmp_path / "ws2"
    write_rows(ws2 / "results", "aggregate", rows, run_id="evil", when=F.RUN_DATE)
    html = render_page(DashboardData(ws2), {})
    assert "<img src=x" not in html and "<script>alert" not in html and "&lt;img src=x" in html
    figs = svgs(html)  # each parses as XML: the names did not break the markup
    assert [f.get("data-figure") for f in figs] == ["radar"]  # one metric: the radar's "needs three" notice
    assert not [e for f in figs for e in f.iter() if e.tag.split("}")[-1] in ("script", "img")]


HOSTILE = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


class _Parsed(HTMLParser):
    """A page's elements and the text and attribute values they carry (entities decoded)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.values: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.values += [v for _, v in attrs if v is not None]

    def handle_data(self, data):
        self.values.append(data)


def test_hostile_run_and_variant_names_appear_only_escaped(tmp_path):
    """Run ids and variant names are data: in the page and its SVG figures they are escaped text or attribute
    values (a parser gives them back unchanged), never elements."""
    script, img = HOSTILE
    rows = [F._agg_row(run, "adhoc", variant, spec, 0.3 + 0.1 * i, 0.01, F.RUN_DATE)
            for i, (run, variant) in enumerate([(script, img), (img, script)]) for spec in F.METRICS]
    write_rows(tmp_path / "results", "aggregate", rows, run_id="hostile", when=F.RUN_DATE)
    html = render_page(DashboardData(tmp_path), {"variants": [script, img], "runs": [script, img],
                                                 "baseline": [f"variant:{img}"]})
    for name in HOSTILE:
        assert name not in html
    page = _Parsed(html)
    assert "img" not in page.tags and page.tags.count("script") == 1  # the page's own script only
    for name in HOSTILE:
        # a variant checkbox and its label, a run checkbox, baseline options, metric-table headers ...
        assert sum(name in v for v in page.values) >= 6, name
    radar = next(f for f in svgs(html) if f.get("data-figure") == "radar")
    drawn = {p.get("data-series") for p in radar.iter(SVG_NS + "polygon") if p.get("class") == "series"}
    assert drawn == {img, script, f"run {img}", f"run {script}"}
    assert not [e for e in radar.iter() if e.tag.split("}")[-1] in ("script", "img")]


def test_http_routes(ws):
    server = make_server(ws, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        get = lambda path: urllib.request.urlopen(server.url.rstrip("/") + path, timeout=20)  # noqa: E731
        assert json.load(get("/healthz"))["status"] == "ok"
        assert json.load(get("/api/status.json"))["files"]["routing_tasks"] == 12
        api = json.load(get("/api/compare.json?variants=wo-init&baseline=unify-dense&benchmark=demo"))
        assert {r["metric"] for r in api["rows"]} == {m for b, _, m, _, _ in F.METRICS if b == "demo"}
        page = get("/?variants=wo-init&variants=unimoe-top-p0.7&baseline=variant:unify-dense")
        assert page.status == 200 and "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert 'data-series="variant:wo-init"' in page.read().decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            get("/nope%3Cscript%3E")
        assert e.value.code == 404 and "<script>" not in e.value.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_cli_dashboard_serves(ws):
    from typer.testing import CliRunner

    from flows.cli import app

    out = CliRunner().invoke(app, ["dashboard", "--help"])
    assert out.exit_code == 0 and "--no-open" in out.output and "--port" in out.output
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "dashboard", "--workspace", str(ws), "--port", "0",
                             "--no-open"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert json.load(urllib.request.urlopen(url.group(0) + "healthz", timeout=20))["workspace"] == str(ws.resolve())
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()
        proc.stderr.close()


def test_schema_of_fixture_matches_the_result_tables(ws):
    """The fixture's part files have exactly the result tables' schemas (evaluation.results.SCHEMAS)."""
    for name in ("aggregate", "items", "regression"):
        part = next((ws / "results" / name).glob("*/part-*.parquet"))
        assert pq.read_schema(part).remove_metadata().equals(SCHEMAS[name]), name
