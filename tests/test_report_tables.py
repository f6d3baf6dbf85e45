"""Paper tables from the result tables: which benchmark/metric fills which cell, newest run per variant."""

from datetime import datetime, timezone

from evaluation import report as P
from evaluation import results as R
from test_results import agg_row


def _write(root, run_id, day, variant, benchmark, task, metrics):
    rows = [agg_row(run_id, variant=variant, benchmark=benchmark, task=task, metric=m, value=v, ci_low=v - 0.01,
                    ci_high=v + 0.01, higher_is_better=m not in ("wer", "cer", "fad", "kl", "wer_pocketsphinx")) for m, v in metrics.items()]
    R.write_rows(root, "aggregate", rows, run_id=run_id, when=datetime(2024, 1, day, tzinfo=timezone.utc))


def test_tables_cells_and_layouts(tmp_path):
    _write(tmp_path, "old", 1, "moe", "seedtts-en", "en_tts", {"wer": 0.5})
    _write(tmp_path, "r1", 2, "moe", "seedtts-en", "en_tts", {"wer": 0.0215, "sim": 0.61, "utmos": 3.9})
    _write(tmp_path, "r2", 2, "moe", "seedtts-zh", "zh_tts", {"cer": 0.031})
    _write(tmp_path, "r3", 2, "dense", "seedtts-en", "en_tts", {"wer": 0.04})
    _write(tmp_path, "r4", 2, "moe", "musiccaps", "t2m", {"PC": 5.5, "fad": 3.25, "kl": 1.5})
    _write(tmp_path, "r5", 2, "moe", "demo", "en_tts", {"wer_pocketsphinx": 0.7, "dnsmos_ovrl": 2.5})
    t = P.build_tables(tmp_path)
    t3 = {r[0]: r for r in t["table3"]["rows"]}
    hdr = t["table3"]["header"]
    assert set(t3) == {"dense", "moe"}
    assert t3["moe"][hdr.index("Seed-TTS test-en: WER (%) ↓")].startswith("2.15 (")  # newest run, in %
    assert t3["moe"][hdr.index("Seed-TTS test-zh: CER (%) ↓")].startswith("3.10")
    assert t3["dense"][hdr.index("Seed-TTS test-en: SIM ↑")] == "–"
    t4 = {r[0]: r for r in t["table4"]["rows"]}
    assert t4["moe"][t["table4"]["header"].index("T2M (MusicCaps): FAD ↓")].startswith("3.25")
    assert t4["moe"][t["table4"]["header"].index("T2M (MusicCaps): PC ↑")].startswith("5.50")
    assert t4["moe"][t["table4"]["header"].index("V2M (V2M-bench): PC ↑")] == "–"
    # ablations: variants as columns
    assert t["table5"]["header"] == ["metric", "dense", "moe"]
    assert [r[0] for r in t["table5"]["rows"]][:2] == ["Seed-TTS test-en: WER (%) ↓", "Seed-TTS test-en: SIM ↑"]
    # demo metrics keep their own names and never enter a paper column
    assert t["demo"]["header"] == ["model / variant", "en_tts: dnsmos_ovrl ↑", "en_tts: wer_pocketsphinx ↓"]
    assert all("pocketsphinx" not in h for h in t["table3"]["header"] + t["table5"]["header"])
    md = P.render(tmp_path, "md")
    assert "## Table 3" in md and "| moe |" in md and "0.700 (0.690–0.710)" in md
    html = P.render(tmp_path, "html")
    assert html.startswith("<!doctype html>") and "<th>metric</th>" in html and "&lt;" not in html


def _paper_scorer_classes() -> dict:
    """Registered scorer name -> its class: the metric names the paper cells must use come from here."""
    from evaluation.scorers.aesthetics import AudioboxAesthetics
    from evaluation.scorers.clamp3 import ClaMP3Score
    from evaluation.scorers.clap import ClapScore
    from evaluation.scorers.openl3_fad import OpenL3FAD
    from evaluation.scorers.paraformer_cer import ParaformerCER
    from evaluation.scorers.passt import PaSSTKL
    from evaluation.scorers.utmos import UTMOSScorer
    from evaluation.scorers.wavlm_sim import WavLMSim
    from evaluation.scorers.whisper_wer import WhisperWER

    classes = (AudioboxAesthetics, ClaMP3Score, ClapScore, OpenL3FAD, ParaformerCER, PaSSTKL, UTMOSScorer, WavLMSim,
               WhisperWER)
    return {c.name: c for c in classes}


def test_paper_cells_name_the_scorers_metrics():
    """Every Table 3/4 cell looks up a metric its scorer really writes (audiobox-aesthetics writes "PC", not
    "pc": a lower-case lookup left every aesthetics cell empty)."""
    classes = _paper_scorer_classes()
    for c in P.TABLE3 + P.TABLE4:
        assert c.metric in classes[c.scorer].metrics, (c.group, c.label, c.scorer, c.metric)


def test_paper_blocks_and_columns(tmp_path):
    """The paper's (arXiv 2510.13344) blocks: speech on Seed-TTS test-en/zh, LibriSpeech test-clean and
    AISHELL-3; music T2M on MusicCaps and V2M-bench and V2M on V2M-bench, each with PC/PQ/CE, CLAP, CLaMP3,
    FAD, KL and IS. Rows are written under each scorer's OWN metric names (taken from the scorer classes),
    so every cell must be filled."""
    classes = _paper_scorer_classes()
    runs: dict[tuple[str, str], dict[str, float]] = {}  # (benchmark, task) -> {metric: value}
    for c in P.TABLE3 + P.TABLE4:
        got = runs.setdefault((c.benchmark, c.task), {})
        for metric in classes[c.scorer].metrics:  # every metric the scorer writes, e.g. CE, CU, PC, PQ
            got.setdefault(metric, 2.0 + len(runs) + len(got) / 100)  # distinct values
    rows = [agg_row(f"run-{b}", variant="moe", benchmark=b, task=task, metric=m, value=v, higher_is_better=True)
            for (b, task), metrics in runs.items() for m, v in metrics.items()]
    for b in {b for b, _ in runs}:  # one run per benchmark (v2m-bench: its t2m and v2m rows together)
        R.write_rows(tmp_path, "aggregate", [r for r in rows if r["benchmark"] == b], run_id=f"run-{b}",
                     when=datetime(2024, 1, 2, tzinfo=timezone.utc))
    t = P.build_tables(tmp_path)
    for key, cells in (("table3", P.TABLE3), ("table4", P.TABLE4)):
        row = {r[0]: r for r in t[key]["rows"]}["moe"]
        hdr = t[key]["header"]
        for c in cells:
            v = runs[(c.benchmark, c.task)][c.metric] * c.scale
            assert row[hdr.index(f"{c.group}: {c.label}")].startswith(f"{v:.2f} ("), (c.group, c.label)
    h3, h4 = t["table3"]["header"], t["table4"]["header"]
    for block in ("Seed-TTS test-en", "LibriSpeech test-clean"):
        assert {f"{block}: {m}" for m in ("WER (%) ↓", "SIM ↑", "UTMOS ↑")} <= set(h3)
    for block in ("Seed-TTS test-zh", "AISHELL-3 test"):
        assert {f"{block}: {m}" for m in ("CER (%) ↓", "SIM ↑", "UTMOS ↑")} <= set(h3)
    for block in ("T2M (MusicCaps)", "T2M (V2M-bench)", "V2M (V2M-bench)"):
        assert [h for h in h4 if h.startswith(block)] == [f"{block}: {m}" for m in (
            "PC ↑", "PQ ↑", "CE ↑", "CLAP ↑", "CLaMP3 ↑", "FAD ↓", "KL ↓", "IS ↑")]
    assert len(t["table5"]["rows"]) == len(P.TABLE3) + len(P.TABLE4)  # every paper cell is an ablation row


def test_empty_results_render(tmp_path):
    assert "_no results yet_" in P.render(tmp_path, "md")


def test_cli_report_tables(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    _write(tmp_path / "results", "r1", 2, "moe", "seedtts-en", "en_tts", {"wer": 0.02})
    out = tmp_path / "t.html"
    res = CliRunner().invoke(app, ["report", "tables", "--workspace", str(tmp_path), "--format", "html", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "2.00" in out.read_text()
    assert CliRunner().invoke(app, ["report", "tables", "--workspace", str(tmp_path), "--format", "pdf"]).exit_code != 0


def test_topline_rows_beside_the_model_rows(tmp_path):
    """Ground truth and codec resynthesis rows (Table 5: columns) next to the variants, from the toplines
    of the newest runs shown; a variant's row stays its model rows."""
    when = datetime(2024, 1, 3, tzinfo=timezone.utc)
    rows = []
    for system, wer, sim in (("model", 0.30, 0.50), ("ground_truth", 0.02, 0.90), ("codec_resynth", 0.08, 0.80)):
        rows += [agg_row("t1", variant="moe", benchmark="seedtts-en", task="en_tts", metric="wer", value=wer,
                         ci_low=wer - 0.01, ci_high=wer + 0.01, higher_is_better=False, system=system),
                 agg_row("t1", variant="moe", benchmark="seedtts-en", task="en_tts", metric="sim", value=sim,
                         ci_low=sim - 0.01, ci_high=sim + 0.01, higher_is_better=True, system=system)]
    # token NLL is a metric of the model only: no topline rows
    rows.append(agg_row("t2", variant="moe", benchmark="demo", task="t2m", metric="token_nll", value=6.5,
                        higher_is_better=False))
    rows += [agg_row("t2", variant="moe", benchmark="demo", task="en_tts", metric="sim_resemblyzer", value=v,
                     higher_is_better=True, system=s) for s, v in (("model", 0.4), ("ground_truth", 0.85),
                                                                    ("codec_resynth", 0.6))]
    R.write_rows(tmp_path, "aggregate", [r for r in rows if r["run_id"] == "t1"], run_id="t1", when=when)
    R.write_rows(tmp_path, "aggregate", [r for r in rows if r["run_id"] == "t2"], run_id="t2", when=when)
    _write(tmp_path, "d1", 3, "dense", "seedtts-en", "en_tts", {"wer": 0.4})  # no toplines in this run
    t = P.build_tables(tmp_path)
    t3 = {r[0]: r for r in t["table3"]["rows"]}
    hdr = t["table3"]["header"]
    assert list(t3) == ["dense", "moe", "ground truth", "codec resynthesis"]
    wer, sim = hdr.index("Seed-TTS test-en: WER (%) ↓"), hdr.index("Seed-TTS test-en: SIM ↑")
    assert t3["moe"][wer].startswith("30.00 (") and t3["dense"][wer].startswith("40.00 (")
    assert t3["ground truth"][wer].startswith("2.00 (") and t3["codec resynthesis"][wer].startswith("8.00 (")
    assert t3["ground truth"][sim].startswith("0.900") and t3["codec resynthesis"][sim].startswith("0.800")
    assert t3["ground truth"][hdr.index("Seed-TTS test-zh: CER (%) ↓")] == "–"
    assert "ground truth" in t["table3"]["note"]
    assert t["table4"]["rows"] == []  # no music results: no topline rows either
    assert t["table5"]["header"] == ["metric", "dense", "moe", "ground truth", "codec resynthesis"]
    t5 = {r[0]: r for r in t["table5"]["rows"]}
    assert t5["Seed-TTS test-en: WER (%) ↓"][3].startswith("2.00") and t5["Seed-TTS test-en: SIM ↑"][2].startswith("0.500")
    demo = {r[0]: r for r in t["demo"]["rows"]}
    assert list(demo) == ["moe", "ground truth", "codec resynthesis"]
    dh = t["demo"]["header"]
    assert dh == ["model / variant", "en_tts: sim_resemblyzer ↑", "t2m: token_nll ↓"]
    assert demo["moe"][1] == "0.400 (0.390–0.410)" and demo["ground truth"][1].startswith("0.850")
    assert demo["moe"][2].startswith("6.50") and demo["ground truth"][2] == "–"  # token NLL: model only
    md = P.render(tmp_path, "md")
    assert "| ground truth | " in md and "| codec resynthesis | " in md


def test_default_scorers_fill_every_paper_cell():
    """A default `unimoe bench` run of each paper benchmark writes every Table 3/4 cell: the cell's scorer is in
    the runner's DEFAULT_SCORERS for its (benchmark, task) — the T2M (V2M-bench) block needs v2m-bench's t2m
    items scored like MusicCaps' T2M."""
    from evaluation.runner import DEFAULT_SCORERS

    unscored = sorted({(c.benchmark, c.task, c.scorer) for c in P.TABLE3 + P.TABLE4
                       if c.scorer not in DEFAULT_SCORERS.get(c.benchmark, {}).get(c.task, [])})
    assert unscored == []
