"""Training core: config, data order, objective, checkpoint/exact resume (with a real SIGKILL),
metrics tables, data parallelism (torchrun, gloo) against a single process."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unimoe.checkpoint import read_state
from unimoe.config import ConfigError, overlay
from unimoe.model import UniMoEAudio
from unimoe.training import (DataOrder, TrainConfig, Trainer, dataset_view, read_metrics, subset_indices,
                             synthetic_dataset, train_stage)
from unimoe.training.data import BatchMaker, crop_codes
from unimoe.training.trainer import TrainLoss, latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "scripts" / "train_worker.py"

# Small but not trivial: grad accumulation, condition dropout, random crops, epochs wrap around.
BASE = dict(lr=1e-3, warmup_steps=2, max_steps=6, batch_size=2, grad_accum=2, log_every=1, checkpoint_every=2,
            cond_dropout=0.25, max_frames=9, crop="random", seed=3)


def make_model(cfg, seed=0):
    torch.manual_seed(seed)
    return UniMoEAudio(cfg)


def make_trainer(cfg, builder, workdir, data=None, *, run_id="r", stage=3, **train):
    data = data if data is not None else synthetic_dataset(6, cfg.audio.num_codebooks, seed=0)
    tcfg = TrainConfig.from_dict({**BASE, **train})
    return Trainer(make_model(cfg), cfg, tcfg, data, builder, workdir, run_id=run_id, stage=stage)


@pytest.fixture(scope="module")
def tok_file(tokenizer, tmp_path_factory):
    return tokenizer.save(tmp_path_factory.mktemp("tok") / "tokenizer.json")


def worker_env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    env.pop("WORLD_SIZE", None)
    return env


def run_job(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` for a torchrun job. If the job outlives
    ``timeout``, the test fails with the Python and native stacks of its processes (py-spy, when installed)
    and the whole process tree is killed: killing torchrun alone would leave its workers running."""
    import psutil

    proc = subprocess.Popen(cmd, env=worker_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        tree = [psutil.Process(proc.pid)] + psutil.Process(proc.pid).children(recursive=True)
        py_spy = Path(sys.executable).with_name("py-spy")
        stacks = []
        for p in tree:
            dump = (subprocess.run([str(py_spy), "dump", "--native", "--pid", str(p.pid)], capture_output=True,
                                   text=True, timeout=60) if py_spy.is_file() else None)
            stacks.append(f"{p.pid}: " + ((dump.stdout or dump.stderr) if dump else " ".join(p.cmdline())))
        for p in reversed(tree):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        out, err = proc.communicate()
        pytest.fail(f"the job did not exit within {timeout:.0f} s; its stacks:\n" + "\n".join(stacks)
                    + f"\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# ---- config --------------------------------------------------------------------------------------------


def test_train_config_validation_round_trip_and_stage_defaults(tmp_path):
    cfg = TrainConfig.for_stage(2, max_steps=7)
    assert cfg.lr == 3e-5 and cfg.max_steps == 7
    assert TrainConfig.for_stage(1).lr == 1e-4 and TrainConfig.for_stage(3).lr == 1e-5
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    cfg.save(tmp_path / "t.yaml")
    assert TrainConfig.load(tmp_path / "t.yaml") == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        TrainConfig.from_dict({"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="expected an integer"):
        TrainConfig.from_dict({"max_steps": 1.5})
    with pytest.raises(ConfigError, match="cond_dropout"):
        TrainConfig.from_dict({"cond_dropout": 1.5})
    with pytest.raises(ConfigError, match="crop"):
        cfg.overlay({"crop": "middle"})
    with pytest.raises(ConfigError, match="codebook_reduction"):
        cfg.overlay({"codebook_reduction": "max"})
    # warm-up then cosine down to min_lr_ratio
    c = TrainConfig(warmup_steps=4, max_steps=14, min_lr_ratio=0.1)
    assert [c.lr_multiplier(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert c.lr_multiplier(9) == pytest.approx(0.55) and c.lr_multiplier(14) == pytest.approx(0.1)


# ---- data ------------------------------------------------------------------------------------------------


def test_data_order_is_deterministic_resumable_and_rank_strided():
    a, b = DataOrder(10, seed=1), DataOrder(10, seed=1)
    first = [a.take(4) for _ in range(5)]  # 20 items: crosses two epoch boundaries
    assert first == [b.take(4) for _ in range(5)]
    flat = [i for batch in first for _, i in batch]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # a new permutation per epoch
    assert a.state_dict() == {"epoch": 2, "cursor": 0, "n": 10, "seed": 1}
    # resume from a saved state
    c = DataOrder(10, seed=1)
    c.take(6)
    d = DataOrder(10, seed=1)
    d.load_state_dict(c.state_dict())
    assert c.take(7) == d.take(7)
    with pytest.raises(ValueError, match="n=10"):
        DataOrder(11, seed=1).load_state_dict(c.state_dict())
    # two ranks: disjoint strided slices whose union is the single-process global batch
    single = DataOrder(10, seed=5).next_batch(6)
    r0, r1 = DataOrder(10, seed=5, rank=0, world_size=2), DataOrder(10, seed=5, rank=1, world_size=2)
    s0, s1 = r0.next_batch(6), r1.next_batch(6)
    assert not set(s0) & set(s1) and sorted(s0 + s1) == sorted(single) and s0 == single[0::2]


def test_dataset_views_crops_and_condition_dropout(tiny_cfg, builder):
    data = synthetic_dataset(8, 4, seed=0, tasks=("zh_tts", "en_tts", "t2m", "t2m"))
    assert subset_indices(data, tasks=["t2m"]) == [2, 3, 6, 7]
    assert subset_indices(data, ids=[data[5].id, data[1].id]) == [5, 1]
    assert subset_indices(data, tasks=["en_tts"], ids=[data[5].id, data[2].id]) == [5]
    view = dataset_view(data, tasks=["zh_tts"])
    assert len(view) == 2 and view[1].id == data[4].id
    with pytest.raises(ValueError, match="unknown task"):
        subset_indices(data, tasks=["tts"])
    with pytest.raises(KeyError):
        subset_indices(data, ids=["nope"])

    codes = torch.arange(40).view(2, 20)
    assert torch.equal(crop_codes(codes, 5, "start"), codes[:, :5])
    r1 = crop_codes(codes, 5, "random", np.random.default_rng([1, 0, 3, 1]))
    assert torch.equal(r1, crop_codes(codes, 5, "random", np.random.default_rng([1, 0, 3, 1]))) and r1.shape == (2, 5)
    assert crop_codes(codes, 50, "random") is codes

    tcfg = TrainConfig(max_frames=3, cond_dropout=0.5, seed=7)
    maker = BatchMaker(tiny_cfg, tcfg, builder)
    flags = [maker.example(data[i % 8], epoch=i // 8, index=i % 8)[1] for i in range(64)]
    assert flags == [maker.example(data[i % 8], epoch=i // 8, index=i % 8)[1] for i in range(64)]
    assert 16 < sum(flags) < 48  # about half of the prompts are unconditional
    ex, _ = maker.example(data[0], 0, 0)
    assert ex.codes.shape[1] == 3
    b = maker.batch(data, [(0, 0), (0, 2)])
    assert b.task_ids.tolist() == [0, 2] and b.target_mask.any()


def test_v2m_without_video_is_an_error_unless_caption_only(tiny_cfg, builder):
    item = synthetic_dataset(1, 4, tasks=("v2m",))[0]
    item.video = None
    with pytest.raises(ValueError, match="without video"):
        BatchMaker(tiny_cfg, TrainConfig(), builder).example(item, 0, 0)
    maker = BatchMaker(tiny_cfg, TrainConfig(missing_video="caption_only"), builder)
    batch = maker.batch([item], [(0, 0)])
    assert batch.task_ids.tolist() == [3] and batch.video_mask is None and maker.v2m_without_video == 1


# ---- objective ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("form", ["switch", "official"])
def test_objective_matches_model_loss_single_process(tiny_cfg, builder, form, reduction):
    # Eval mode: no router input jitter, so the two forwards route identically.
    cfg = overlay(tiny_cfg, {"moe": {"balance_loss": form}})
    model = make_model(cfg).eval()
    data = synthetic_dataset(4, 4, seed=2)
    batch = BatchMaker(cfg, TrainConfig(cond_dropout=0.0), builder).batch(data, [(0, i) for i in range(4)])
    ref = model.loss(batch)
    # model.loss averages the codebooks; "sum" (official) adds them
    ce = ref["per_codebook"].nansum() if reduction == "sum" else ref["ce"]
    out = TrainLoss(model, codebook_reduction=reduction)(batch, balance_weight=0.5, scale=1.0)
    assert out["ce_part"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert out["aux_part"].item() == pytest.approx(ref["aux"].item(), rel=1e-5)
    assert out["objective"].item() == pytest.approx(ce.item() + 0.5 * ref["aux"].item(), rel=1e-6)


def test_codebook_losses_are_summed_by_default_as_the_official_code(tiny_cfg, builder, tmp_path):
    """Issue 11: the official code sums the per-codebook cross-entropies (so its balance-loss weights act
    against K codebook losses); the default objective does the same, "mean" stays an option."""
    assert TrainConfig().codebook_reduction == "sum"
    model = make_model(tiny_cfg).eval()
    data = synthetic_dataset(4, 4, seed=2)
    maker = BatchMaker(tiny_cfg, TrainConfig(cond_dropout=0.0), builder)
    batch = maker.batch(data, [(0, i) for i in range(4)])
    per_cb = model.loss(batch)["per_codebook"]
    assert torch.isfinite(per_cb).all() and per_cb.numel() == tiny_cfg.audio.num_codebooks
    out = TrainLoss(model)(batch, balance_weight=0.0, scale=1.0)
    assert out["ce_part"].item() == pytest.approx(per_cb.sum().item(), rel=1e-6)
    trainer = make_trainer(tiny_cfg, builder, tmp_path, max_steps=1)
    assert trainer.loss_module.codebook_reduction == "sum"
    mean = make_trainer(tiny_cfg, builder, tmp_path / "mean", max_steps=1, codebook_reduction="mean")
    assert mean.loss_module.codebook_reduction == "mean"


def test_training_reduces_loss_and_weights_balance_by_optimizer_step(tiny_cfg, builder, tmp_path):
    cfg = overlay(tiny_cfg, {"moe": {"balance_decay_steps": 4}})
    trainer = make_trainer(cfg, builder, tmp_path, max_steps=8, grad_accum=3, cond_dropout=0.0, lr=3e-3)
    trainer.balance_step_offset = 1
    summary = trainer.train()
    h = trainer.history
    assert [r["step"] for r in h] == list(range(1, 9)) and summary["steps"] == 8
    # weight of the update at optimiser step s (0-based) is balance_weight(s + offset), not per micro-batch
    assert [r["balance_weight"] for r in h] == [cfg.moe.balance_weight(s + 1) for s in range(8)]
    assert [r["lr"] for r in h] == pytest.approx([1e-3 * trainer.cfg.lr_multiplier(s) * 3 for s in range(8)])
    assert h[-1]["ce"] < h[0]["ce"]
    for r in h:
        assert r["loss"] == pytest.approx(r["ce"] + r["balance_weight"] * r["aux"])
    assert summary["tokens_per_s"] > 0 and summary["checkpoint"].endswith("step-000008")


def test_frozen_parameters_stay_fixed_and_are_not_optimised(tiny_cfg, builder, tmp_path):
    data = synthetic_dataset(4, 4, seed=1)
    model = make_model(tiny_cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    is_router_or_shared = lambda n: ".mlp.router." in n or ".mlp.shared_experts." in n  # noqa: E731
    trainer = Trainer(model, tiny_cfg, TrainConfig.from_dict({**BASE, "max_steps": 2}), data, builder, tmp_path,
                      run_id="warm", stage=2, trainable=is_router_or_shared)
    trainer.train()
    names = {n for n, _ in trainer.named_trainable}
    assert names and all(is_router_or_shared(n) for n in names)
    n_opt = sum(len(g["params"]) for g in trainer.optimizer.param_groups)
    assert n_opt == len(names)
    for n, p in model.named_parameters():
        assert p.requires_grad == (n in names)
        assert torch.equal(p.detach(), before[n]) != (n in names), n
    state = read_state(trainer.final_checkpoint)
    assert sorted(state["trainable"]) == sorted(names) and len(state["frozen"]) > 0


# ---- checkpoints and resume ---------------------------------------------------------------------------------


def test_checkpoint_contents_pointer_and_pruning(tiny_cfg, builder, tmp_path):
    trainer = make_trainer(tiny_cfg, builder, tmp_path, max_steps=7, checkpoint_every=2, keep_last=2)
    trainer.train()
    ck = tmp_path / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step-000007"
    assert sorted(p.name for p in ck.iterdir() if p.is_dir()) == ["step-000006", "step-000007"]
    assert latest_checkpoint(tmp_path) == ck / "step-000007"
    st = read_state(ck / "step-000007")
    for key in ("run_id", "variant", "stage", "step", "scheduler", "optimizer", "rng", "data_order", "train_config",
                "model_config", "last"):
        assert key in st, key
    assert st["step"] == 7 and st["stage"] == 3 and st["data_order"]["epoch"] >= 1
    assert st["scheduler"]["last_epoch"] == 7 and len(st["rng"]["python"][1]) == 625
    json.dumps(st)  # JSON-safe
    extra = load_file(ck / "step-000007" / "extra.safetensors")
    assert "rng.torch_cpu" in extra
    some = next(n for n, _ in trainer.named_trainable)
    assert {f"optim.{some}.exp_avg", f"optim.{some}.exp_avg_sq", f"optim.{some}.step"} <= set(extra)
    assert not any(p.name.endswith(".pkl") or p.suffix in (".pt", ".bin") for p in ck.rglob("*"))


def test_rng_state_round_trips_through_the_checkpoint_format():
    """Right: after restoring a saved state (JSON-serialised, as in state.json), Python, NumPy and torch
    draw exactly what they drew right after the save. Training itself keys its randomness, so the resume
    tests would not notice a stream that is saved but not restored."""
    import random

    from unimoe.training.checkpointing import rng_state, set_rng_state

    state, tensors = rng_state()
    state = json.loads(json.dumps(state))
    draws = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(123), np.random.seed(123), torch.manual_seed(123)
    set_rng_state(state, tensors)
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == draws


def test_in_process_resume_is_exact_and_checks_identity(tiny_cfg, builder, tmp_path):
    full = make_trainer(tiny_cfg, builder, tmp_path / "full")
    full.train()
    part = make_trainer(tiny_cfg, builder, tmp_path / "part")  # interrupted after step 4
    while part.step < 4:
        part.train_step()
    part.save_checkpoint()
    resumed = make_trainer(tiny_cfg, builder, tmp_path / "part")
    assert resumed.resume() == 4
    resumed.train()
    assert [r["loss"] for r in part.history + resumed.history] == [r["loss"] for r in full.history]
    a = full.model.state_dict()
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, a[k]), k
    # a checkpoint of another run / config is refused
    with pytest.raises(Exception, match="run_id"):
        make_trainer(tiny_cfg, builder, tmp_path / "part", run_id="other").resume()
    with pytest.raises(Exception, match="train config differs"):
        make_trainer(tiny_cfg, builder, tmp_path / "part", lr=5e-4).resume()


def test_sigkill_mid_stage_then_restart_reproduces_losses_bit_for_bit(tiny_cfg, builder, tok_file, tmp_path):
    train = {**BASE, "max_steps": 6, "checkpoint_every": 2}
    cmd = [sys.executable, str(WORKER), "--workdir", str(tmp_path / "run"), "--run-id", "kill", "--stage", "3",
           "--train", json.dumps(train), "--synthetic", "6", "--tokenizer", str(tok_file), "--threads", "1"]
    proc = subprocess.Popen(cmd + ["--hang-after-step", "3"], env=worker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    marker, deadline = tmp_path / "run" / "hang-3", time.time() + 90
    while not marker.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"worker did not reach step 3: {proc.communicate()[0].decode()[-3000:]}")
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    # killed after step 3: the newest checkpoint is step 2, step 3 was already logged
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"
    assert read_metrics(tmp_path / "run")["step"].tolist() == [1, 2, 3]

    done = subprocess.run(cmd + ["--summary", str(tmp_path / "s.json")], env=worker_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "s.json").read_text())["summary"]
    assert summary["resumed_from"] == 2 and summary["steps"] == 6

    # the uninterrupted reference, same settings, in this process
    ref = Trainer(make_model(tiny_cfg), tiny_cfg, TrainConfig.from_dict(train),
                  synthetic_dataset(6, 4, seed=0), builder, tmp_path / "ref", run_id="kill", stage=3)
    ref.train()
    logged = read_metrics(tmp_path / "run")
    assert logged["step"].tolist() == list(range(1, 7))  # no duplicated rows for re-run step 3
    assert logged["loss"].tolist() == [r["loss"] for r in ref.history]  # exactly equal
    assert logged["grad_norm"].tolist() == [r["grad_norm"] for r in ref.history]
    a = load_file(tmp_path / "run" / "checkpoints" / "step-000006" / "model.safetensors")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(a[k], v), k


# ---- metrics -------------------------------------------------------------------------------------------------


def test_metrics_tables_have_losses_and_routing_statistics(tiny_cfg, builder, tmp_path):
    data = synthetic_dataset(8, 4, seed=4, tasks=("zh_tts", "en_tts", "t2m", "v2m"))
    trainer = make_trainer(tiny_cfg, builder, tmp_path, data=data, max_steps=3, log_every=2, cond_dropout=0.0)
    trainer.train()
    train = read_metrics(tmp_path, "train", run_id="r")
    assert train["step"].tolist() == [2, 3] and train["steps_in_window"].tolist() == [2, 1]
    for col in ("loss", "ce", "aux", "balance_weight", "lr", "grad_norm", "tokens_per_s", "loss_v2m", "loss_t2m"):
        assert col in train.columns, col
    assert len(train["per_codebook"][0]) == 4 and train["tokens_per_s"].gt(0).all()
    assert train[["loss_zh_tts", "loss_en_tts", "loss_t2m", "loss_v2m"]].notna().any().all()
    hist = read_metrics(tmp_path, "routing_hist")
    n_dyn = tiny_cfg.moe.num_dynamic
    assert set(hist["layer"]) == {0, 1} and set(hist["num_experts"]) == set(range(n_dyn + 1))
    dyn = hist[(hist.kind == "dynamic")].groupby(["step", "layer"])["count"].sum()
    routed = hist[(hist.kind == "routed")].groupby(["step", "layer"])["count"].sum()
    assert (dyn == routed).all()  # every non-padding token counted once per layer
    tokens = train.set_index("step")["tokens"]
    for (step, _), n in dyn.items():
        assert n == tokens[step]
    tasks = read_metrics(tmp_path, "routing_tasks")
    assert set(tasks["task"]) == {"zh_tts", "en_tts", "t2m", "v2m"}
    assert tasks.groupby("task")["count"].sum().gt(0).all()
    assert tasks[tasks.is_null]["expert"].unique().tolist() == [tiny_cfg.moe.num_routed_experts]
    # the vision tower was trained by the v2m items (frozen-by-absence parameters would not move)
    init = make_model(tiny_cfg).vision.state_dict()
    assert any(not torch.equal(v, init[k]) for k, v in trainer.model.vision.state_dict().items())
    # re-logging a step rewrites its part: no duplicates
    n_parts = len(list((tmp_path / "metrics" / "train").iterdir()))
    trainer.metrics.write("train", 3, [{"loss": 0.0}])
    assert len(list((tmp_path / "metrics" / "train").iterdir())) == n_parts
    assert read_metrics(tmp_path, "train")["step"].tolist() == [2, 3]


# ---- train_stage -----------------------------------------------------------------------------------------------


def test_train_stage_filters_data_and_is_a_no_op_when_complete(tiny_cfg, builder, tmp_path):
    dense = overlay(tiny_cfg, {"ffn": "dense"})
    data = synthetic_dataset(8, 4, seed=0)
    tcfg = TrainConfig.from_dict({**BASE, "max_steps": 3})
    path, summary = train_stage(make_model(dense), dense, tcfg, data, builder, tmp_path, run_id="spec-en",
                                variant="dense", stage=1, tasks=["en_tts"])
    assert path == tmp_path / "checkpoints" / "step-000003" and summary["steps"] == 3
    assert summary["dataset_size"] == 3 and summary["final_aux"] == 0.0 and math.isfinite(summary["final_loss"])
    assert read_metrics(tmp_path, "routing_hist").empty  # a dense model has no routing
    again_path, again = train_stage(make_model(dense), dense, tcfg, data, builder, tmp_path, run_id="spec-en",
                                    variant="dense", stage=1, tasks=["en_tts"])
    assert again_path == path and again["steps_this_run"] == 0 and again["final_loss"] == summary["final_loss"]
    _, sub = train_stage(make_model(tiny_cfg), tiny_cfg, tcfg, data, builder, tmp_path / "ids", run_id="warm",
                         stage=2, ids=[data[0].id, data[5].id])
    assert sub["dataset_size"] == 2


# ---- held-out rows --------------------------------------------------------------------------------------------


class _RowReader:
    """A dataset answering ``row(i)`` without tensors, like unimoe.training.shards.TokenShardReader."""

    def __init__(self, items):
        self.items = items
        self.getitem_calls = 0

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        self.getitem_calls += 1
        return self.items[i]

    def row(self, i):
        return {"id": self.items[i].id, "task": self.items[i].task, "split": self.items[i].split}

    def by_task(self, task):
        return [i for i, x in enumerate(self.items) if x.task == task]


def _split_data(n=12):
    data = synthetic_dataset(n, 4, seed=0)
    for i, item in enumerate(data):
        item.split = "test" if i % 4 == 1 else "train"
    return data


def test_no_stage_trains_on_held_out_rows(tiny_cfg, builder, tmp_path, caplog):
    from unimoe.training import curriculum
    from unimoe.training.data import HELD_OUT_SPLITS, held_out_positions

    data = _split_data()
    test_ids = {x.id for x in data if x.split == "test"}
    assert HELD_OUT_SPLITS == ("test",) and len(test_ids) == 3
    seen: list[str] = []
    spy = lambda tr: seen.extend(tr.dataset[i].id for i in range(len(tr.dataset)))  # noqa: E731
    dense = overlay(tiny_cfg, {"ffn": "dense"})
    tcfg = TrainConfig.from_dict({**BASE, "max_steps": 1})
    # stage-1 style (a task's whole pool): the task's test rows are left out
    pool = [x for x in data if x.task == "en_tts"]
    _, s = train_stage(make_model(dense), dense, tcfg, data, builder, tmp_path / "s1", run_id="a", stage=1,
                       tasks=["en_tts"], callbacks=[spy])
    assert s["dataset_size"] == sum(x.split == "train" for x in pool) < len(pool)
    # stage-2/3 style (an id subset that wrongly names test rows): left out, with a warning
    ids = [x.id for x in data]
    with caplog.at_level("WARNING", logger="unimoe.training"):
        _, s = train_stage(make_model(tiny_cfg), tiny_cfg, tcfg, data, builder, tmp_path / "s3", run_id="b",
                           stage=3, ids=ids, callbacks=[spy])
    assert s["dataset_size"] == 9 and "held-out" in caplog.text
    # the same through a reader that answers splits from its index (no tensor reads to filter)
    reader = _RowReader(data)
    _, s = train_stage(make_model(tiny_cfg), tiny_cfg, tcfg, reader, builder, tmp_path / "s3r", run_id="c",
                       stage=3, callbacks=[spy])
    assert s["dataset_size"] == 9 and held_out_positions(reader) == [1, 5, 9]
    assert seen and not set(seen) & test_ids
    # the curriculum's stage 1 (specialist on a task's pool) goes through the same filter
    seen.clear()
    ckpt = curriculum.train_specialist(tiny_cfg, "t2m", data, builder.tok, tmp_path / "spec", run_id="d",
                                       variant="v", train_overrides={**BASE, "max_steps": 1})
    assert read_state(ckpt)["dataset_size"] == sum(x.task == "t2m" and x.split == "train" for x in data)
    # the trainer itself refuses a dataset that still holds a held-out row
    with pytest.raises(ValueError, match="held-out"):
        Trainer(make_model(tiny_cfg), tiny_cfg, tcfg, data, builder, tmp_path / "x", run_id="e")


# ---- data parallel -----------------------------------------------------------------------------------------------


def test_close_frees_the_data_parallel_wrapper_before_the_process_group(tiny_cfg, builder, tmp_path):
    """Right: once ``close()`` returns, nothing of the trainer keeps its data-parallel wrapper alive. DDP's
    C++ Reducer owns the process group and is freed with the GIL held; left as the group's last owner it
    deadlocked against gloo's worker threads at exit (a rank that never exited after the last step)."""
    import weakref

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

    trainer = Trainer(make_model(tiny_cfg), tiny_cfg, TrainConfig.from_dict(BASE), synthetic_dataset(6, 4, seed=0),
                      builder, tmp_path, run_id="r", stage=3, wrap=lambda module, device: Wrapper(module))
    wrapper = weakref.ref(trainer.ddp)
    trainer.close()
    assert wrapper() is None


def test_two_process_data_parallel_matches_single_process(tiny_cfg, builder, tok_file, tmp_path):
    train = {**BASE, "max_steps": 3, "batch_size": 2, "grad_accum": 2, "checkpoint_every": 3}
    # The router input jitter's draws depend on how tokens are split over ranks: off for an exact match.
    no_jitter = {"moe": {"router_input_jitter": 0.0}}
    tiny_cfg = overlay(tiny_cfg, no_jitter)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           "--workdir", str(tmp_path / "dp"), "--run-id", "dp", "--stage", "3", "--train", json.dumps(train),
           "--model-overlay", json.dumps(no_jitter),
           "--synthetic", "6", "--tokenizer", str(tok_file), "--threads", "1", "--summary", str(tmp_path / "dp.json")]
    done = run_job(cmd, timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dp = json.loads((tmp_path / "dp.json").read_text())
    assert dp["summary"]["world_size"] == 2

    single = Trainer(make_model(tiny_cfg), tiny_cfg, TrainConfig.from_dict({**train, "batch_size": 4}),
                     synthetic_dataset(6, 4, seed=0), builder, tmp_path / "one", run_id="dp", stage=3)
    single.train()
    for a, b in zip(dp["history"], single.history):
        assert a["tokens"] == b["tokens"]  # the same global batches
        assert a["ce"] == pytest.approx(b["ce"], rel=1e-6, abs=1e-6)
        assert a["aux"] == pytest.approx(b["aux"], rel=1e-6, abs=1e-6)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    # Parameters after 3 AdamW steps. Tolerance: Adam turns rounding noise on gradients that are zero in
    # exact arithmetic (e.g. key biases, softmax-invariant) into lr-sized steps, so allow 2% of 3 * lr.
    w = load_file(tmp_path / "dp" / "checkpoints" / "step-000003" / "model.safetensors")
    for k, v in single.model.state_dict().items():
        torch.testing.assert_close(w[k], v, rtol=1e-5, atol=6e-5, msg=k)
    # only rank 0 wrote metrics: one part per step, world_size recorded
    logged = read_metrics(tmp_path / "dp")
    assert logged["step"].tolist() == [1, 2, 3] and logged["world_size"].tolist() == [2, 2, 2]


# ---- loss-curve rendering (the train flow's artifacts) -------------------------------------------------------


def test_loss_curve_markdown_and_svg_come_from_the_metrics_table(tiny_cfg, builder, tmp_path):
    import xml.etree.ElementTree as ET

    from unimoe.training.curves import curve_frame, curve_svg, curve_table_markdown, stage_curve_markdown

    data = synthetic_dataset(8, 4, seed=4, tasks=("zh_tts", "t2m"))
    make_trainer(tiny_cfg, builder, tmp_path, data=data, max_steps=4, log_every=1).train()
    df = read_metrics(tmp_path, "train")
    c = curve_frame(df)
    assert list(c.columns) == ["step", "loss", "ce", "aux", "lr", "loss_zh_tts", "loss_t2m"]  # unseen tasks dropped
    table = curve_table_markdown(df).splitlines()
    assert table[0].startswith("| step | loss | ce | aux | lr |") and len(table) == 2 + 4
    assert table[-1].split(" | ")[1] == f"{df['loss'].iloc[-1]:.4f}"
    assert len(curve_table_markdown(df, max_rows=3).splitlines()) == 2 + 3
    svg = curve_svg(df, title="stage 3")
    root = ET.fromstring(svg)  # well-formed XML
    lines = [e for e in root.iter() if e.tag.endswith("polyline")]
    assert len(lines) == 3 and all(len(e.get("points").split()) == 4 for e in lines)  # ce + two tasks, 4 steps
    # the highest ce point is drawn highest (smallest y)
    ce_pts = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert min(ce_pts, key=lambda p: p[1]) == ce_pts[int(np.argmax(c["ce"].to_numpy()))]
    md = stage_curve_markdown(tmp_path, "stage 3", run_id="r")
    assert "data:image/svg+xml;base64," in md and "| step | loss |" in md and "last step 4" in md
    assert "no metrics" in stage_curve_markdown(tmp_path / "empty", "x")
