"""The paper's result tables rendered from the Parquet results (``unimoe report tables``), and the
markdown report of one benchmark run (``render_run_report``).

Which benchmark/metric fills which cell (the newest run of each variant on each benchmark; one row
per variant; a cell is ``value (95% CI)``, or ``–`` when that variant has no such result):

Table 3 (speech)   four blocks, as in the paper (arXiv 2510.13344): Seed-TTS test-en (benchmark ``seedtts-en``)
                   and LibriSpeech test-clean (``librispeech-test-clean``), task en_tts: WER (``wer`` of
                   whisper_wer, x100 = %), SIM (``sim`` of wavlm_sim), UTMOS (``utmos`` of utmos22_strong);
                   Seed-TTS test-zh (``seedtts-zh``) and AISHELL-3 test (``aishell3-test``), task zh_tts: CER
                   (``cer`` of paraformer_cer, %), SIM, UTMOS.
Table 4 (music)    three blocks: T2M on MusicCaps (``musiccaps``/t2m), T2M on V2M-bench (``v2m-bench``/t2m) and
                   V2M on V2M-bench (``v2m-bench``/v2m), each with PC, PQ, CE (audiobox_aesthetics' ``PC``,
                   ``PQ``, ``CE``), CLAP (``clap``), CLaMP3 (``clamp3``), FAD (``fad`` of openl3_fad), KL and IS
                   (``kl_gen_ref`` = KL(gen‖ref) as stable-audio-metrics computes it, ``is`` of passt). The
                   T2M (V2M-bench) block is filled by the t2m rows of benchmark ``v2m-bench`` (each
                   captioned clip's caption as the text prompt, ids ``t2m/<clip>``).
Cell metric names are the scorers' own (``Cell.scorer``'s ``metrics``); tests/test_report_tables.py checks
every paper cell against the scorer classes, so a renamed metric fails there instead of leaving cells empty.
Table 5 (ablation) variants side by side (columns), one row per cell of Tables 3 and 4 that any variant has.
Demo               the offline ``demo`` benchmark, one row per variant, columns ``task/metric`` under the
                   demo metrics' OWN names (wer_pocketsphinx, sim_resemblyzer, dnsmos_*, tempo/key
                   adherence, token_nll): they never fill a paper column.

Toplines: the variants' rows are the model rows (``system`` = ``model``). Every table also has a row
"ground truth" (the benchmark's real recordings, scored by the same scorers) and a row "codec
resynthesis" (them encoded and decoded by the checkpoint's codec) where those were scored (Table 5:
columns): the ceiling, and how much of the gap to it the codec alone accounts for. A topline cell is the
newest such row among the runs the table shows (the newest run per variant).
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from evaluation import results as R
from evaluation.bench.config import SPEECH, BenchConfig


@dataclass(frozen=True)
class Cell:
    group: str
    label: str
    benchmark: str
    task: str
    metric: str   # the metric name exactly as ``scorer`` writes it (its ``metrics`` / ``compare`` keys)
    scale: float = 1.0
    scorer: str = ""  # the registered scorer that writes ``metric`` (tests check the name against it)


def _speech(group: str, benchmark: str, task: str) -> list[Cell]:
    err = ("WER (%) ↓", "wer", "whisper_wer") if task == "en_tts" else ("CER (%) ↓", "cer", "paraformer_cer")
    return [Cell(group, err[0], benchmark, task, err[1], 100.0, err[2]),
            Cell(group, "SIM ↑", benchmark, task, "sim", scorer="wavlm_sim"),
            Cell(group, "UTMOS ↑", benchmark, task, "utmos", scorer="utmos22_strong")]


# Table 3: the paper's English (Seed-TTS test-en, LibriSpeech test-clean) and Mandarin (Seed-TTS test-zh,
# AISHELL-3) blocks.
TABLE3 = (_speech("Seed-TTS test-en", "seedtts-en", "en_tts")
          + _speech("LibriSpeech test-clean", "librispeech-test-clean", "en_tts")
          + _speech("Seed-TTS test-zh", "seedtts-zh", "zh_tts")
          + _speech("AISHELL-3 test", "aishell3-test", "zh_tts"))
# Table 4 columns: (label, metric, scorer). audiobox-aesthetics writes its axes in upper case (CE/CU/PC/PQ).
MUSIC_COLUMNS = [("PC ↑", "PC", "audiobox_aesthetics"), ("PQ ↑", "PQ", "audiobox_aesthetics"),
                 ("CE ↑", "CE", "audiobox_aesthetics"), ("CLAP ↑", "clap", "clap"),
                 ("CLaMP3 ↑", "clamp3", "clamp3"), ("FAD ↓", "fad", "openl3_fad"),
                 ("KL ↓", "kl_gen_ref", "passt"), ("IS ↑", "is", "passt")]
# Table 4 blocks: T2M on MusicCaps and on V2M-bench (its captions as prompts), V2M on V2M-bench.
MUSIC_BLOCKS = [("T2M (MusicCaps)", "musiccaps", "t2m"), ("T2M (V2M-bench)", "v2m-bench", "t2m"),
                ("V2M (V2M-bench)", "v2m-bench", "v2m")]
TABLE4 = [Cell(group, lab, bench, task, m, scorer=sc) for group, bench, task in MUSIC_BLOCKS
          for lab, m, sc in MUSIC_COLUMNS]
DEMO = "demo"


TOPLINES = (R.GROUND_TRUTH, R.CODEC_RESYNTH)


def latest_per_variant(agg: pd.DataFrame) -> pd.DataFrame:
    """For each (variant, benchmark), the rows of its newest run (newest row per system and metric within it)."""
    if agg.empty:
        return agg
    agg = R.fill_defaults(agg.copy(), "aggregate")
    first = agg.groupby("run_id")["timestamp"].min().rename("run_start")
    agg = agg.join(first, on="run_id")
    newest = agg.sort_values(["run_start", "run_id"]).groupby(["variant", "benchmark"])["run_id"].last().to_dict()
    keep = agg[[newest[(v, b)] == r for v, b, r in zip(agg["variant"], agg["benchmark"], agg["run_id"])]]
    return keep.sort_values("timestamp", kind="stable").drop_duplicates(
        ["variant", "benchmark", "system", "task", "metric"], keep="last")


def topline_lookup(latest: pd.DataFrame) -> dict:
    """(system, benchmark, task, metric) -> the newest topline row among ``latest``."""
    if latest.empty:
        return {}
    top = latest[latest["system"].isin(TOPLINES)].sort_values("timestamp", kind="stable")
    return {(r.system, r.benchmark, r.task, r.metric): r for r in top.itertuples(index=False)}


def fmt_value(x: Any) -> str:
    """A number in a run or regression report: 4 significant digits; "nan" for a missing or non-finite one."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "nan"
    return f"{v:.4g}" if math.isfinite(v) else "nan"


def _fmt_cell(x: float, scale: float = 1.0) -> str:
    """A number in a paper table: 2 decimals (3 below 1), "–" for a missing one."""
    if x is None or not math.isfinite(float(x)):
        return "–"
    v = float(x) * scale
    return f"{v:.2f}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"


def _cell_text(row, scale: float) -> str:
    if row is None:
        return "–"
    ci = "" if not (math.isfinite(row.ci_low) and math.isfinite(row.ci_high)) else \
        f" ({_fmt_cell(row.ci_low, scale)}–{_fmt_cell(row.ci_high, scale)})"
    return _fmt_cell(row.value, scale) + ci


def _lookup(latest: pd.DataFrame) -> dict:
    """(variant, benchmark, task, metric) -> the variant's model row."""
    model = latest[latest["system"] == R.MODEL]
    return {(r.variant, r.benchmark, r.task, r.metric): r for r in model.itertuples(index=False)}


_TOPLINE_NOTE = (" Rows \"ground truth\" (the real recordings) and \"codec resynthesis\" (them through the checkpoint's "
                 "codec): the same scorers on the toplines, newest run shown.")


def build_tables(root: str | Path) -> dict[str, dict]:
    """Every table as {"title", "header": [..], "rows": [[..]], "note"}."""
    agg = R.read_table(root, "aggregate")
    latest = latest_per_variant(agg)
    look = _lookup(latest) if not latest.empty else {}
    tops = topline_lookup(latest)
    variants = sorted(latest.loc[latest["system"] == R.MODEL, "variant"].unique()) if not latest.empty else []
    tables = {}

    def topline_rows(cells: list[tuple[str, str, str, float]]) -> list[list[str]]:
        """One row per topline system that has any of ``cells`` ((benchmark, task, metric, scale))."""
        return [[R.SYSTEM_LABELS[sys_]] + [_cell_text(tops.get((sys_, b, t, m)), sc) for b, t, m, sc in cells]
                for sys_ in TOPLINES if any((sys_, b, t, m) in tops for b, t, m, _ in cells)]

    for key, title, cells in (("table3", "Table 3: speech generation (Seed-TTS eval, LibriSpeech test-clean, AISHELL-3)", TABLE3),
                              ("table4", "Table 4: music generation (T2M on MusicCaps and V2M-bench, V2M on V2M-bench)", TABLE4)):
        have = [v for v in variants if any((v, c.benchmark, c.task, c.metric) in look for c in cells)]
        rows = [[v] + [_cell_text(look.get((v, c.benchmark, c.task, c.metric)), c.scale) for c in cells] for v in have]
        top = topline_rows([(c.benchmark, c.task, c.metric, c.scale) for c in cells]) if rows else []
        tables[key] = {"title": title, "header": ["model / variant"] + [f"{c.group}: {c.label}" for c in cells],
                       "rows": rows + top,
                       "note": "Cells: value (95% bootstrap CI over items), mean over seeds; newest run per variant."
                               + (_TOPLINE_NOTE if top else "")}
    cells = [c for c in TABLE3 + TABLE4 if any((v, c.benchmark, c.task, c.metric) in look for v in variants)]
    top5 = [s for s in TOPLINES if any((s, c.benchmark, c.task, c.metric) in tops for c in cells)]
    tables["table5"] = {"title": "Table 5: ablations (variants side by side)",
                        "header": ["metric"] + variants + [R.SYSTEM_LABELS[s] for s in top5],
                        "rows": [[f"{c.group}: {c.label}"]
                                 + [_cell_text(look.get((v, c.benchmark, c.task, c.metric)), c.scale) for v in variants]
                                 + [_cell_text(tops.get((s, c.benchmark, c.task, c.metric)), c.scale) for s in top5]
                                 for c in cells],
                        "note": "Paper benchmarks only; see the demo table for the offline demo benchmark."
                                + (" Columns \"ground truth\" and \"codec resynthesis\": the toplines." if top5 else "")}
    demo = latest[latest["benchmark"] == DEMO] if not latest.empty else latest
    demo_model = demo[demo["system"] == R.MODEL] if not demo.empty else demo
    demo_cols = sorted({(r.task, r.metric, bool(r.higher_is_better)) for r in demo_model.itertuples(index=False)})
    rows = [[v] + [_cell_text(look.get((v, DEMO, t, m)), 1.0) for t, m, _ in demo_cols]
            for v in sorted(demo_model["variant"].unique())] if not demo_model.empty else []
    top = topline_rows([(DEMO, t, m, 1.0) for t, m, _ in demo_cols]) if rows else []
    tables["demo"] = {"title": "Demo benchmark (offline demo scorers; NOT paper metrics)",
                      "header": ["model / variant"] + [f"{t}: {m} {'↑' if h else '↓'}" for t, m, h in demo_cols],
                      "rows": rows + top,
                      "note": "Demo metrics under their own names; they are not comparable with the paper's."
                              + (_TOPLINE_NOTE if top else "")}
    return tables


def render_markdown(tables: dict[str, dict]) -> str:
    out = []
    for t in tables.values():
        out += [f"## {t['title']}", ""]
        if not t["rows"]:
            out += ["_no results yet_", ""]
            continue
        out += ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
        out += ["| " + " | ".join(r) + " |" for r in t["rows"]]
        out += ["", f"_{t['note']}_", ""]
    return "\n".join(out)


def render_html(tables: dict[str, dict]) -> str:
    e = html.escape
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>UniMoE-Audio results</title>",
           "<style>table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #999;padding:3px 6px}"
           "td{text-align:right}td:first-child{text-align:left}</style></head><body>"]
    for t in tables.values():
        out.append(f"<h2>{e(t['title'])}</h2>")
        if not t["rows"]:
            out.append("<p><em>no results yet</em></p>")
            continue
        out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in t["header"]) + "</tr></thead><tbody>")
        out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in t["rows"]]
        out.append(f"</tbody></table><p><em>{e(t['note'])}</em></p>")
    out.append("</body></html>")
    return "\n".join(out)


def render(root: str | Path, fmt: str = "md") -> str:
    if fmt not in ("md", "html"):
        raise ValueError(f"format must be md or html, got {fmt!r}")
    tables = build_tables(root)
    return render_markdown(tables) if fmt == "md" else render_html(tables)


# --------------------------------------------------------------------------------------------------
# The report of one benchmark run

def failure_lines(failed: Iterable[dict]) -> list[str]:
    """One line per (scorer, task, system) that failed on every item, with its first failing item's reason."""
    return [f"scorer `{f['scorer']}` failed on all {f['n_asked']} items of task {f['task']} (system {f['system']}); "
            f"first failure (item `{f['item']}`): {f['reason']}" for f in failed]


_SYSTEM_ORDER = {s: i for i, s in enumerate(R.SYSTEMS)}


def render_run_report(rec: dict, agg_rows: list[dict], skipped: list[dict], failed: list[dict] | None = None) -> str:
    """The markdown report of one benchmark run (``evaluation.bench.record``): its record, the scorers that
    failed on every item, one line per aggregate row (model and toplines), and the skipped scorers."""
    failed = failed or []
    lines = [f"# Benchmark run `{rec['run_id']}`", "",
             f"- benchmark **{rec['benchmark']}** ({rec['n_items']} items; tasks {', '.join(rec['tasks'])}), "
             f"seeds {','.join(str(s) for s in rec['config']['seeds'])}",
             f"- checkpoint `{rec['checkpoint']}` (weights sha256 {rec['checkpoint_hash'][:12]}), variant `{rec['variant']}`",
             f"- kind {rec['kind']}, git {rec['git_commit']}, config hash {rec['config_hash']}"
             + (f", manifest hash {rec['manifest_hash']}" if rec.get("manifest_hash") else ""),
             f"- decoding: {BenchConfig.from_dict(rec['config']).decoding_label()}"]
    prompts = rec.get("voice_prompts") or {}
    if prompts:
        lines.append("- voice prompts: WER/CER and MOS on clips from the predefined voice prompt ("
                     + "; ".join(f"{t}: `{Path(v['audio']).name}`, {v['source']}" for t, v in sorted(prompts.items()))
                     + "), speaker similarity on clips from each item's own prompt")
    elif any(t in SPEECH for t in rec["tasks"]):
        lines.append("- voice prompts: every speech metric on clips from each item's own prompt")
    lines.append("")
    if failed:
        lines += ["## ERRORS: scorers that failed on every item", ""]
        lines += [f"- **ERROR** {line}" for line in failure_lines(failed)]
        lines += [""]
    bad = {(f["scorer"], f["task"], f["system"]) for f in failed}
    lines += ["Systems: `model` = the checkpoint's generations (and metrics of the checkpoint itself, e.g. "
              "token NLL); toplines `ground_truth` = the real recordings, `codec_resynth` = them encoded and "
              "decoded by the checkpoint's codec.", "",
              "| task | metric | system | better | value | 95% CI | n / asked | scorer |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(agg_rows, key=lambda r: (r["task"], r["metric"], _SYSTEM_ORDER.get(r.get("system"), 9))):
        err = " **ERROR**" if (r["scorer"], r["task"], r.get("system", R.MODEL)) in bad else ""
        asked = "" if r.get("n_asked") is None else f" / {r['n_asked']}"
        lines.append(f"| {r['task']} | {r['metric']} | {r.get('system', R.MODEL)} | "
                     f"{'higher' if r['higher_is_better'] else 'lower'} | {fmt_value(r['value'])}{err} | "
                     f"[{fmt_value(r['ci_low'])}, {fmt_value(r['ci_high'])}] | {r['n']}{asked} | "
                     f"{r['scorer']} {r['scorer_version']} |")
    if skipped:
        lines += ["", "## Skipped scorers", ""]
        lines += [f"- `{s['scorer']}` ({', '.join(s['tasks'])}): {s['reason']}" for s in skipped]
    return "\n".join(lines) + "\n"
