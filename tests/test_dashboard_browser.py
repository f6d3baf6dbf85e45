"""The dashboard in headless Chromium (Debian's /usr/bin/chromium driven by Playwright): the page loads,
picking two variants and a baseline in the controls shows their deltas, every figure renders.
Screenshots go to $UNIMOE_TEST_ARTIFACTS/dashboard or <repo>/test-artifacts/dashboard."""

import os
import threading
from pathlib import Path

import pytest

import dashboard_fixtures as F
from evaluation.dashboard import make_server
from evaluation.dashboard.charts import fmt

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                                               "(scripts/setup.sh installs it)")
FIGURES = ("radar", "experts-per-token", "experts-heatmap", "task-share", "loss-curves", "nightly")


def artifacts() -> Path:
    base = os.environ.get("UNIMOE_TEST_ARTIFACTS")
    out = Path(base) / "dashboard" if base else ROOT / "test-artifacts" / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    ws = F.make_workspace(tmp_path_factory.mktemp("dashb") / "ws")
    srv = make_server(ws, "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"], headless=True)
        yield b
        b.close()


def test_choose_two_variants_shows_deltas_and_figures(server, browser):
    out = artifacts()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server.url)
    assert page.title() == "UniMoE-Audio ablations"
    page.screenshot(path=str(out / "01-default.png"), full_page=True)
    # The toplines recorded by one of the default runs are columns beside the variants.
    assert [t.split("\n")[0] for t in page.locator("table.metrics th.topline").all_inner_texts()] == \
        ["ground truth", "codec resynthesis"]
    gt = page.locator('td.topline[data-topline="ground_truth"][data-metric="wer_pocketsphinx"]')
    assert gt.inner_text().split(" [")[0] == fmt(F.TOPLINES["ground_truth"][0][0])

    # Pick exactly the baseline and one ablation in the controls, then the baseline in the drop-down.
    for box in page.locator("#pick-variants input[name=variants]").all():
        box.set_checked(box.get_attribute("value") in (F.BASELINE, "wo-init"))
    page.select_option("#baseline", f"variant:{F.BASELINE}")
    with page.expect_navigation():
        page.click("#update")
    assert "variants=" in page.url and "baseline=variant%3A" in page.url

    cols = page.locator("table.metrics thead th").all_inner_texts()
    assert any("wo-init" in c for c in cols) and not any("unimoe-top-p0.7" in c for c in cols)
    expected = F.expected_deltas()
    for bench, task, metric, _, _ in F.METRICS:
        cell = page.locator(f'td.delta[data-series="variant:wo-init"][data-benchmark="{bench}"]'
                            f'[data-task="{task}"][data-metric="{metric}"]')
        delta, regressed = expected[("wo-init", bench, task, metric)]
        assert cell.inner_text().split(" [")[0] == fmt(delta, signed=True), metric
        assert ("regressed" in cell.get_attribute("class")) == regressed, metric
    # The regressed cells are visibly highlighted.
    bg = page.locator("td.delta.regressed").first.evaluate("e => getComputedStyle(e).backgroundColor")
    assert bg not in ("rgba(0, 0, 0, 0)", "transparent")
    page.locator("#metrics").screenshot(path=str(out / "02-metrics-two-variants.png"))

    for fig in FIGURES:
        svg = page.locator(f'svg[data-figure="{fig}"]').first
        box = svg.bounding_box()
        assert box and box["width"] > 100 and box["height"] > 40, fig
        assert svg.locator("rect.bar, rect.cell, polygon.series, path.line").count() > 0, fig
    radar = page.locator('svg[data-figure="radar"] polygon.series')
    assert sorted(radar.evaluate_all("ps => ps.map(p => p.dataset.series)")) == [F.BASELINE, "wo-init"]
    for sid in ("radar", "experts", "task-share", "loss", "nightly"):
        page.locator(f"#{sid}").screenshot(path=str(out / f"03-{sid}.png"))
    page.screenshot(path=str(out / "04-full-two-variants.png"), full_page=True)
    assert errors == []

    # Narrow to one benchmark: only its rows remain.
    page.select_option("#benchmark", "musiccaps")
    with page.expect_navigation():
        page.click("#update")
    assert set(page.locator("table.metrics tbody td:first-child").all_inner_texts()) == {"musiccaps"}
    page.close()


def test_empty_workspace_page_explains(tmp_path, browser):
    srv = make_server(tmp_path / "empty", "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        resp = page.goto(srv.url)
        assert resp.status == 200
        assert "No aggregate results yet" in page.locator("#metrics").inner_text()
        assert "No training metrics yet" in page.locator("#loss").inner_text()
        page.screenshot(path=str(artifacts() / "05-empty-workspace.png"), full_page=True)
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()
