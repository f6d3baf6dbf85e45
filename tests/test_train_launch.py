"""Launching a curriculum stage under torchrun (unimoe.training.launch): two CPU (gloo) processes give
the losses of one process with the same global batch; the in-process path is the same code."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unimoe.checkpoint import read_state
from unimoe.config import overlay, tiny_preset
from unimoe.training import read_metrics
from unimoe.training.launch import run_stage, torchrun_command

TRAIN = dict(lr=1e-3, warmup_steps=1, max_steps=3, grad_accum=2, log_every=1, checkpoint_every=3, cond_dropout=0.25,
             max_frames=9, crop="random", seed=3)


def _spec(workdir, tok_file, batch_size):
    # No router input jitter: its draws depend on how tokens are split over ranks, and the two- and
    # one-process runs are compared exactly.
    model_config = overlay(tiny_preset(), {"moe": {"router_input_jitter": 0.0}}).to_dict()
    return {"kind": "joint", "model_config": model_config, "workdir": str(workdir), "run_id": "launch",
            "variant": "unimoe-top-p0.7", "train_overrides": {**TRAIN, "batch_size": batch_size},
            "variant_overlay": {}, "tokenizer": str(tok_file), "init": None, "stage": 3,
            "subset_ids": [f"syn-0-{i:05d}" for i in range(8)],
            "dataset": {"kind": "synthetic", "args": [8, 4],
                        "kwargs": {"seed": 0, "tasks": ["zh_tts", "en_tts", "t2m", "v2m"]}}}


def test_two_process_torchrun_stage_matches_one_process(tokenizer, tmp_path, monkeypatch):
    tok_file = tokenizer.save(tmp_path / "tokenizer.json")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    two = run_stage(_spec(tmp_path / "two", tok_file, 2), nproc=2, timeout=300)
    one = run_stage(_spec(tmp_path / "one", tok_file, 4), nproc=1)
    assert two.name == one.name == "step-000003"
    assert read_state(two)["world_size"] == 2 and read_state(one)["world_size"] == 1
    a, b = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    assert a["step"].tolist() == b["step"].tolist() == [1, 2, 3]
    assert a["world_size"].tolist() == [2, 2, 2] and a["tokens"].tolist() == b["tokens"].tolist()
    for col in ("ce", "aux", "loss", "grad_norm"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-5, abs=1e-6), col
    # weights after 3 AdamW steps (tolerance as in tests/test_trainer.py's DP test)
    wa, wb = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    for k, v in wb.items():
        torch.testing.assert_close(wa[k], v, rtol=1e-5, atol=6e-5, msg=k)


def test_launch_command_and_errors(tmp_path, tokenizer):
    cmd = torchrun_command(tmp_path / "s.json", 4)
    # under the parent watchdog (unimoe.procguard): a killed run's job stops with it
    assert cmd[1:3] == ["-m", "unimoe.procguard"] and cmd[3] == str(os.getpid())
    assert cmd[4:7] == ["-m", "torch.distributed.run", "--standalone"] and "4" in cmd
    assert cmd[-3:] == ["-m", "unimoe.training.launch", str(tmp_path / "s.json")]
    with pytest.raises(ValueError, match="nproc"):
        run_stage({}, nproc=0)
    bad = _spec(tmp_path / "bad", tokenizer.save(tmp_path / "t.json"), 2)
    bad["dataset"]["kind"] = "no_such_dataset"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with pytest.raises(RuntimeError, match="torchrun"):
        run_stage(bad, nproc=2, env=env, timeout=300)


@pytest.mark.parametrize("sharding", [{"fsdp": True}, {"expert_parallel": True}, {"fsdp": True, "expert_parallel": True}],
                         ids=["fsdp", "ep", "fsdp+ep"])
def test_sharded_torchrun_stage_matches_one_process_and_resumes(tokenizer, tmp_path, monkeypatch, sharding):
    """FSDP2 and/or expert parallelism selected by the train config: the same losses and weights as one
    process; checkpoints hold full tensors; killing after step 2 and resuming (re-sharding the saved
    full optimiser state) gives the uninterrupted run's step-3 weights."""
    import shutil

    tok_file = tokenizer.save(tmp_path / "tokenizer.json")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    spec = _spec(tmp_path / "two", tok_file, 2)
    spec["train_overrides"].update(sharding, checkpoint_every=2)
    two = run_stage(spec, nproc=2, timeout=300)
    one = run_stage(_spec(tmp_path / "one", tok_file, 4), nproc=1)
    a, b = read_metrics(tmp_path / "two"), read_metrics(tmp_path / "one")
    for col in ("ce", "aux", "loss", "grad_norm"):
        assert a[col].tolist() == pytest.approx(b[col].tolist(), rel=1e-5, abs=1e-6), col
    wa, wb = load_file(two / "model.safetensors"), load_file(one / "model.safetensors")
    assert {k: v.shape for k, v in wa.items()} == {k: v.shape for k, v in wb.items()}  # full, not shards
    for k, v in wb.items():
        torch.testing.assert_close(wa[k], v, rtol=1e-5, atol=6e-5, msg=k)
    # resume from step 2 (as after a kill between the two checkpoints)
    ref = {k: v.clone() for k, v in wa.items()}
    shutil.rmtree(two)
    (tmp_path / "two" / "checkpoints" / "latest").unlink()
    again = run_stage(spec, nproc=2, timeout=300)
    assert again.name == "step-000003" and read_metrics(tmp_path / "two")["step"].tolist() == [1, 2, 3]
    for k, v in load_file(again / "model.safetensors").items():
        torch.testing.assert_close(v, ref[k], rtol=1e-6, atol=1e-7, msg=k)


def test_stage_spec_names_the_token_reader_and_refuses_unknown_kinds(tmp_path):
    from unimoe.training.launch import build_dataset, stage_spec
    from unimoe.training.shards import TokenizeError

    spec = stage_spec("joint", {"d": 1}, "/ws/tokens", "/ws/out", "rid", "v", {"max_steps": 2}, {"lr": 1.0},
                      init=None, stage=3)
    assert spec["dataset"] == {"kind": "tokens", "args": ["/ws/tokens"], "kwargs": {}}
    assert (spec["kind"], spec["workdir"], spec["train_overrides"], spec["stage"]) == ("joint", "/ws/out", {"max_steps": 2}, 3)
    with pytest.raises(ValueError, match="unknown stage kind"):
        stage_spec("pretrain", {}, "t", "o", "r", "v", {}, {})
    # "tokens" is the shard reader (which refuses a directory without an index), "synthetic" the test data;
    # anything else, e.g. an import string, is refused
    with pytest.raises(TokenizeError, match="no index.json"):
        build_dataset({"dataset": {"kind": "tokens", "args": [str(tmp_path)]}})
    items = build_dataset(_spec(tmp_path, tmp_path / "t.json", 2))
    assert [x.id for x in items] == [f"syn-0-{i:05d}" for i in range(8)] and items[0].codes.shape[0] == 4
    with pytest.raises(ValueError, match="unknown dataset kind"):
        build_dataset({"dataset": {"kind": "unimoe.training.data:synthetic_dataset", "args": [8, 4]}})


def test_step_overrides_scale_warmup_and_checkpoints_with_the_step_cap():
    from unimoe.training.curriculum import step_overrides

    assert step_overrides() == {}
    assert step_overrides(20, 4, fsdp=True) == {"max_steps": 20, "batch_size": 4, "fsdp": True, "warmup_steps": 2,
                                                "checkpoint_every": 10, "log_every": 1}
    assert step_overrides(1)["warmup_steps"] == 1 and step_overrides(1)["checkpoint_every"] == 1
    # lr_scale multiplies each stage's paper rate; an explicit lr wins
    from unimoe.training.config import STAGE_LR
    from unimoe.training.curriculum import stage_train_config

    ov = step_overrides(20, lr_scale=30.0)
    assert [stage_train_config(s, ov, {}).lr for s in (1, 2, 3, "joint")] == pytest.approx(
        [30 * STAGE_LR[1], 30 * STAGE_LR[2], 30 * STAGE_LR[3], 30 * STAGE_LR[1]])
    assert stage_train_config(2, {**ov, "lr": 0.5}, {}).lr == 0.5 and stage_train_config(3, {}, {}).lr == STAGE_LR[3]


def test_claim_run_dir_moves_a_run_of_another_config_aside(tmp_path):
    from unimoe.training.curriculum import RUN_KEY_FILE, claim_run_dir

    out, archive = tmp_path / "train" / "v-tiny", tmp_path / "superseded"
    assert claim_run_dir(out, {"lr": 1}, archive) is None and (out / RUN_KEY_FILE).is_file()
    (out / "stage1").mkdir()
    assert claim_run_dir(out, {"lr": 1}, archive) is None and (out / "stage1").is_dir()  # same spec: resume
    moved = claim_run_dir(out, {"lr": 2}, archive)  # another spec: the old run is kept aside, a fresh one starts
    assert moved is not None and (moved / "stage1").is_dir() and not (out / "stage1").exists()
    assert moved.parent == archive and moved.name.startswith("v-tiny.") and (out / RUN_KEY_FILE).is_file()
    legacy = tmp_path / "train" / "old"
    (legacy / "stage3").mkdir(parents=True)  # a run from before run keys existed
    assert claim_run_dir(legacy, {"lr": 1}, archive).name == "old.unkeyed"


def test_worker_reads_the_balancers_subset_file_without_the_data_package(tmp_path):
    """scripts/train_worker.py's --ids-file reads what data/balance.py writes (the same ids as its
    reader), a JSON list, or whitespace-separated ids; anything else is refused."""
    import importlib.util

    from data.balance import read_subset, write_subset

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_worker.py"
    spec = importlib.util.spec_from_file_location("train_worker", script)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    ids = ["b-2", "a-1", "zh_中文"]
    subset = write_subset(tmp_path / "subset.json", ids, {"report": {"rows": 3}})
    assert worker.read_ids(str(subset)) == read_subset(subset) == ids
    (tmp_path / "list.json").write_text(json.dumps(ids))
    (tmp_path / "ids.txt").write_text("b-2\na-1 zh_中文\n")
    (tmp_path / "number.txt").write_text("12345\n")
    assert worker.read_ids(str(tmp_path / "list.json")) == worker.read_ids(str(tmp_path / "ids.txt")) == ids
    assert worker.read_ids(str(tmp_path / "number.txt")) == ["12345"]
    (tmp_path / "bad.json").write_text(json.dumps({"ids": [1, 2]}))
    with pytest.raises(SystemExit, match="expected a subset file"):
        worker.read_ids(str(tmp_path / "bad.json"))
