"""The replication experiment (unimoe.training.replicate): interval math, claims decided from the numbers,
and a miniature end-to-end run (2 seeds, a few steps, a synthetic corpus with a held-out split)."""

import json
import math

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from unimoe.config import TASKS
from unimoe.training import synthetic_dataset
from unimoe.training import replicate as rep


def test_t_interval_is_the_student_t_interval_over_seeds():
    mean, sd, lo, hi = rep.t_interval([1.0, 2.0, 3.0])
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2} * sd(=1) / sqrt(3)
    assert (mean, sd) == (2.0, 1.0) and lo == pytest.approx(2 - half) and hi == pytest.approx(2 + half)
    mean, sd, lo, hi = rep.t_interval([0.5, 0.7])
    assert lo == pytest.approx(0.6 - 12.706204736174707 * math.sqrt(0.02) / math.sqrt(2))
    assert rep.t_interval([4.0])[0] == 4.0 and math.isnan(rep.t_interval([4.0])[2])


def _table(nll: dict, seeds=(0, 1, 2), noise=0.001) -> pd.DataFrame:
    """Rows of a nll table: ``nll[model][task]`` plus seed noise, codebook "mean" and two codebooks."""
    rng = np.random.default_rng(0)
    rows = []
    for model, per_task in nll.items():
        for s in seeds:
            for task, v in per_task.items():
                x = v + noise * rng.standard_normal()
                for cb, val in (("0", x - 0.1), ("1", x + 0.1), ("mean", x)):
                    rows.append({"model": model, "seed": s, "task": task, "codebook": cb, "nll": val, "tokens": 10,
                                 "items": 2, "checkpoint": ""})
    return pd.DataFrame(rows, columns=list(rep.NLL_COLUMNS))


PAPER_LIKE = {
    "specialist": {"zh_tts": 5.0, "en_tts": 5.0, "t2m": 6.0, "v2m": 6.0},
    "unify-dense": {"zh_tts": 5.1, "en_tts": 5.1, "t2m": 6.5, "v2m": 6.4},
    "unimoe-top-p0.7": {"zh_tts": 4.9, "en_tts": 5.0, "t2m": 5.9, "v2m": 6.0},
    "unify-moe-top2": {"zh_tts": 5.0, "en_tts": 5.05, "t2m": 6.0, "v2m": 6.1},
    "wo-init": {"zh_tts": 5.5, "en_tts": 5.5, "t2m": 6.6, "v2m": 6.6},
}


def test_claims_are_decided_by_the_numbers():
    claims = rep.evaluate_claims(_table(PAPER_LIKE))
    assert [c["verdict"] for c in claims] == [rep.HOLDS] * 3
    assert "t2m" in claims[0]["note"]
    # dense gap largest on speech -> claim 1 fails (only that one)
    speech = {**PAPER_LIKE, "unify-dense": {"zh_tts": 5.9, "en_tts": 5.1, "t2m": 6.5, "v2m": 6.4}}
    assert [c["verdict"] for c in rep.evaluate_claims(_table(speech))] == [rep.FAILS, rep.HOLDS, rep.HOLDS]
    # UniMoE 3 % worse than the specialist on v2m -> claim 2 fails; within 1 % -> still holds
    worse = {**PAPER_LIKE, "unimoe-top-p0.7": {**PAPER_LIKE["unimoe-top-p0.7"], "v2m": 6.18}}
    assert rep.evaluate_claims(_table(worse))[1]["verdict"] == rep.FAILS
    close = {**PAPER_LIKE, "unimoe-top-p0.7": {**PAPER_LIKE["unimoe-top-p0.7"], "v2m": 6.03}}
    assert rep.evaluate_claims(_table(close))[1]["verdict"] == rep.HOLDS
    # Top-2 better than Top-P -> claim 3 fails
    swapped = {**PAPER_LIKE, "unify-moe-top2": PAPER_LIKE["unimoe-top-p0.7"],
               "unimoe-top-p0.7": PAPER_LIKE["unify-moe-top2"]}
    assert rep.evaluate_claims(_table(swapped))[2]["verdict"] == rep.FAILS
    # right directions, seed noise larger than the gaps -> not significant
    t = _table(PAPER_LIKE, noise=0.0)
    t.loc[(t.model == "unify-moe-top2") & (t.seed == 1), "nll"] -= 0.2  # top-2 wins on seed 1 only
    noisy = rep.evaluate_claims(t)[2]
    assert noisy["verdict"] == rep.HOLDS_NS
    assert noisy["details"][0]["mean"] > 0 > noisy["details"][0]["ci_low"] and noisy["details"][1]["ci_low"] > 0
    # the paired difference is per seed: a seed offset shared by both models cancels
    t = _table(PAPER_LIKE, noise=0.0)
    t.loc[t.seed == 1, "nll"] += 1.0
    d = rep.paired_difference(t, "wo-init", "unify-moe-top2", "all")
    assert d["mean"] == pytest.approx(np.mean([0.5, 0.45, 0.6, 0.5])) and d["ci_high"] - d["ci_low"] < 1e-9


def test_aggregate_means_and_all_task_rows():
    t = _table(PAPER_LIKE, seeds=(0, 1))
    agg = rep.aggregate(t)
    assert list(agg.columns) == list(rep.AGG_COLUMNS)
    r = agg[(agg.model == "wo-init") & (agg.task == "t2m") & (agg.codebook == "mean")].iloc[0]
    vals = t[(t.model == "wo-init") & (t.task == "t2m") & (t.codebook == "mean")].nll
    assert r["mean"] == pytest.approx(vals.mean()) and r["n_seeds"] == 2 and r["seeds"] == "0,1"
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(rep.t_interval(vals.tolist())[2:])
    alls = agg[agg.task == "all"]
    assert set(alls.model) == set(PAPER_LIKE) and set(alls.codebook) == {"mean"}


@pytest.fixture(scope="module")
def tok():
    from conftest import CORPUS
    from unimoe.tokenizer import TextTokenizer

    return TextTokenizer.train(CORPUS, 300)


def test_miniature_experiment_end_to_end_and_resume(tok, tmp_path):
    data = synthetic_dataset(32, 4, seed=0, tasks=TASKS, min_frames=6, max_frames=10)
    for i, x in enumerate(data):
        x.split = "test" if (i // 4) % 4 == 0 else "train"  # two held-out items per task
    train_ids = [x.id for x in data if x.split == "train"]
    cfg = rep.ReplicateConfig(seeds=[0, 1], stage1_steps=2, stage2_steps=1, stage3_steps=2, joint_steps=2,
                              batch_size=2, max_frames=8, curve_points=2)
    lines = []
    # a subset that wrongly names test ids: no stage trains on them (Trainer guard + train_stage filter)
    result = rep.run_replicate(data, tok, train_ids + [data[0].id], train_ids[:8], tmp_path, cfg,
                               progress=lines.append)
    nll = pq.read_table(tmp_path / "nll.parquet").to_pandas()
    assert list(nll.columns) == list(rep.NLL_COLUMNS)
    assert set(nll.model) == set(rep.MODELS) and set(nll.seed) == {0, 1} and set(nll.task) == set(TASKS)
    assert set(nll.codebook) == {"0", "1", "2", "3", "mean"}
    assert len(nll) == len(rep.MODELS) * 2 * len(TASKS) * 5
    assert nll.nll.between(1, 20).all() and (nll["items"] == 2).all()
    # "mean" is the mean over codebooks of the token-weighted per-codebook NLL
    g = nll[(nll.model == "wo-init") & (nll.seed == 1) & (nll.task == "v2m")].set_index("codebook").nll
    assert g["mean"] == pytest.approx(g[["0", "1", "2", "3"]].mean())
    items = pq.read_table(tmp_path / "nll_items.parquet").to_pandas()
    it = items[(items.model == "wo-init") & (items.seed == 1) & (items.task == "v2m") & (items.codebook == 2)]
    assert g["2"] == pytest.approx(it.nll_sum.sum() / it.tokens.sum())
    assert set(items.item_id) == {x.id for x in data if x.split == "test"}
    # each specialist evaluated on its own task, from its own checkpoint
    spec = nll[(nll.model == "specialist") & (nll.codebook == "mean")]
    assert all("/stage1/" in c and c.split("/stage1/")[1].split("/")[1] == t for c, t in zip(spec.checkpoint, spec.task))
    # aggregate + claims recomputed from the written table give the written results
    agg = pq.read_table(tmp_path / "nll_aggregate.parquet").to_pandas()
    pd.testing.assert_frame_equal(agg, rep.aggregate(nll), check_dtype=False)
    written = json.loads((tmp_path / "claims.json").read_text())["claims"]
    assert [c["verdict"] for c in written] == [c["verdict"] for c in rep.evaluate_claims(nll)]
    report = (tmp_path / "report.md").read_text()
    assert all(c["verdict"] in report for c in written) and "Student-t" in report
    # the specialists' held-out curves: one point per kept step checkpoint, the last = the specialist row
    curves = pq.read_table(tmp_path / "specialist_curves.parquet").to_pandas()
    assert len(curves) == 2 * len(TASKS) * 2 and set(curves.step) == {1, 2}
    last = curves[(curves.step == 2) & (curves.seed == 1) & (curves.task == "t2m")].nll.iloc[0]
    assert last == pytest.approx(nll[(nll.model == "specialist") & (nll.seed == 1) & (nll.task == "t2m")
                                     & (nll.codebook == "mean")].nll.iloc[0])
    assert "held-out NLL by training step" in report and "best step" in report
    # routing of every MoE variant's final stage: experts per token by layer, task share per expert
    routing = json.loads((tmp_path / "routing.json").read_text())
    assert set(routing) == {"unify-moe-top2", "wo-init", "unimoe-top-p0.7"}
    top_p = routing["unimoe-top-p0.7"]
    assert set(top_p["layers"]) == {"0", "1"} and all(1 <= d["mean_experts_per_token"] <= 9
                                                       for d in top_p["layers"].values())
    assert routing["unify-moe-top2"]["layers"]["0"]["mean_experts_per_token"] == pytest.approx(2.0)
    for e in top_p["experts"]:
        assert sum(e[f"share_{t}"] for t in TASKS) == pytest.approx(1.0) and 0 <= e["specialisation"] <= 1
    assert "Routing in the final stage" in report
    # stage 1 ran once per seed (4 specialists shared by Top-P and Top-2): 2 * (4 + 6) stage runs
    assert sum(line.startswith("[") for line in lines) == 20
    run = tmp_path / "runs" / cfg.run_key()
    for s in (0, 1):
        assert len(list((run / f"seed{s}" / "stage1").iterdir())) == 1
        prov = [json.loads((run / f"seed{s}" / v / "stage2" / "provenance.json").read_text())["specialist_sources"]
                for v in ("unify-moe-top2", "unimoe-top-p0.7")]
        assert prov[0] == prov[1]
        from unimoe.checkpoint import read_state

        for v in ("unify-dense", "wo-init", "unimoe-top-p0.7"):
            state = read_state(run / f"seed{s}" / v / "stage3" / "checkpoints" / "step-000002")
            assert state["dataset_size"] == len(train_ids)  # the test id in the subset was left out
    # resume: nothing retrains, same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")}
    again = rep.run_replicate(data, tok, train_ids, train_ids[:8], tmp_path, cfg, progress=lambda s: None)
    assert {p: p.stat().st_mtime_ns for p in run.rglob("model.safetensors")} == mtimes
    pd.testing.assert_frame_equal(pq.read_table(tmp_path / "nll.parquet").to_pandas(), nll)
    assert [c["verdict"] for c in again["claims"]] == [c["verdict"] for c in result["claims"]]


def test_missing_held_out_split_is_an_error(tok, tmp_path):
    data = synthetic_dataset(8, 4, seed=0, tasks=TASKS)
    with pytest.raises(ValueError, match="held-out"):
        rep.run_replicate(data, tok, [x.id for x in data], [], tmp_path, rep.ReplicateConfig(seeds=[0]))


def test_curve_summary_plateau_rule():
    curves = pd.DataFrame([{"seed": s, "task": t, "step": st, "nll": v}
                           for s in (0, 1) for t, vals in (("t2m", [5.0, 4.0, 3.99]), ("en_tts", [5.0, 4.0, 3.0]),
                                                           ("v2m", [5.0, 4.0, 4.4]))
                           for st, v in zip((10, 20, 30), vals)])
    out = rep.curve_summary(curves, tolerance=0.01).set_index("task")
    assert out.loc["t2m", "plateaued"] and not out.loc["en_tts", "plateaued"]
    assert list(out.loc[["t2m", "en_tts", "v2m"], "trend"]) == ["plateau", "falling", "rising"]
    assert out.loc["v2m", "best_step"] == 20 and out.loc["en_tts", "best_step"] == 30
    assert out.loc["en_tts", "last_interval_gain"] == pytest.approx(0.25) and out.loc["t2m", "steps"] == [10, 20, 30]
