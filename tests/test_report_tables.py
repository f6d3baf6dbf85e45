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
    _write(tmp_path, "r4", 2, "moe", "musiccaps", "t2m", {"pc": 5.5, "fad": 3.25, "kl": 1.5})
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
