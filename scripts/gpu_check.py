"""The CUDA checks, in one run on a GPU machine (``scripts/gpu_check.sh`` calls this there).

1. codec: ``unimoe codec train`` on CUDA on the staged demo training audio (``.gpu/audio``), with the
   demo codec's config (``configs/codec/demo.yaml``), for as many steps as ``--codec-minutes`` allow,
   then export it; reports steps/s and the codebook perplexities of the last logged step.
2. codec_continue: the shipped demo codec trained on, through the CLI itself (``unimoe codec train
   --init-from demo --max-minutes M``, no Prefect needed), exported with its provenance JSON to
   ``$OUT/codec/`` so a lease's GPU minutes leave a codec that can be reported on and shipped.
3. stage: one tiny-preset training stage (an en_tts specialist) on CUDA with bf16 autocast over the
   staged token shards (``.gpu/tokens``); reports losses and tokens/s.
4. moe: ``benchmarks/moe_layer.py`` on CUDA with ``torch._grouped_mm`` (and the slice loop beside it).

Each check runs with its own time limit and records its error instead of stopping the others. The
report is one JSON file (``--out``, default ``$OUT/gpu_check.json``). ``--device cpu`` runs the same
checks on the CPU with tiny settings, to test this script where no GPU is at hand.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _env() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda_available": torch.cuda.is_available(), "python": sys.version.split()[0]}
    if torch.cuda.is_available():
        info.update(device_name=torch.cuda.get_device_name(0), bf16_supported=torch.cuda.is_bf16_supported(),
                    grouped_mm=hasattr(torch, "_grouped_mm"))
    return info


def check_codec(device: str, minutes: float, data: Path, work: Path, steps_cap: int) -> dict:
    import yaml

    from data.codec_sources import folder_sources
    from unimoe.codec_train import CodecTrainConfig, CodecTrainer, SegmentSampler, export_dac, read_log

    cfg_dict = yaml.safe_load((ROOT / "configs" / "codec" / "demo.yaml").read_text())
    if device == "cpu":  # a smoke run of the same code path
        cfg_dict.update(steps=4, kmeans_batches=2, batch_size=2, disc_start_step=2, log_every=1)
    cfg_dict.update(save_every=10**9)
    if device == "cuda":
        cfg_dict.update(batch_size=32)  # a GPU is underused at the CPU batch
    cfg = CodecTrainConfig.from_dict(cfg_dict)
    sources, corpus_hash = folder_sources(data)
    trainer = CodecTrainer(cfg, SegmentSampler(sources, cfg), work / "codec", device=device, log=print)
    deadline = time.monotonic() + minutes * 60
    t0 = time.perf_counter()
    summary = trainer.fit(steps=min(cfg.steps, steps_cap) if device == "cuda" else cfg.steps,
                          stop=lambda: time.monotonic() > deadline)
    seconds = time.perf_counter() - t0
    trainer.save()
    sha = export_dac(trainer.generator, cfg, work / "codec" / "codec.safetensors", extra={"corpus_hash": corpus_hash})
    last = (read_log(work / "codec") or [{}])[-1]
    return {"steps": trainer.step, "seconds": round(seconds, 1), "steps_per_s": round(trainer.step / seconds, 3),
            "batch_size": cfg.batch_size, "last_log": last, "kmeans_perplexity": summary["kmeans_perplexity"],
            "export_sha256": sha, "corpus_hash": corpus_hash}


def check_codec_continue(device: str, minutes: float, data: Path, work: Path, out_dir: Path) -> dict:
    """The demo codec continued on ``data`` for ``minutes`` by the CLI, exported to ``out_dir``."""
    export = out_dir / "codec" / "codec.safetensors"
    args = [sys.executable, "-m", "flows.cli", "codec", "train", "--audio-dir", str(data),
            "--config", str(ROOT / "configs" / "codec" / "demo.yaml"), "--init-from", "demo", "--device", device,
            "--out", str(work / "codec-continue"), "--export", str(export), "--steps", "1000000",
            "--max-minutes", f"{minutes:g}"]
    if device == "cuda":
        args += ["--batch-size", "32"]  # a GPU is underused at the CPU batch
    else:
        args += ["--batch-size", "2"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60 * minutes + 300, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"codec train exited {out.returncode}: {out.stderr[-2000:]}")
    prov = json.loads(export.with_suffix(".json").read_text())
    return {"command": prov["command"], "export": str(export), "sha256": prov["sha256"], "steps": prov["steps"],
            "parent_steps": prov["warm_start_from"]["steps"], "train_seconds": prov["train_seconds"],
            "final_log": prov["final_log"]}


def check_stage(device: str, tokens: Path, work: Path, steps: int) -> dict:
    from unimoe.config import get_preset
    from unimoe.training.launch import run_stage, stage_spec

    cfg = get_preset("tiny")
    overrides = {"max_steps": steps, "device": device, "bf16_on_gpu": True, "log_every": 1,
                 "checkpoint_every": steps}
    t0 = time.perf_counter()
    ckpt = run_stage(stage_spec("specialist", cfg.to_dict(), str(tokens), str(work / "stage"), "gpu-check",
                                "gpu-check", overrides, {}, task="en_tts"))
    seconds = time.perf_counter() - t0
    metrics = sorted((work / "stage").rglob("*.parquet"))
    losses = []
    if metrics:
        import pandas as pd

        df = pd.concat([pd.read_parquet(p) for p in metrics], ignore_index=True)
        if "loss" in df:
            losses = [float(x) for x in df["loss"].dropna().tolist()]
    return {"checkpoint": str(ckpt), "steps": steps, "seconds": round(seconds, 1),
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
            "losses_finite": bool(losses) and all(x == x and abs(x) != float("inf") for x in losses)}


def check_moe(device: str) -> dict:
    args = [sys.executable, str(ROOT / "benchmarks" / "moe_layer.py"), "--device", device]
    if device == "cpu":
        args += ["--shapes", "tiny", "--repeats", "1", "--warmup", "0"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"moe_layer.py exited {out.returncode}: {out.stderr[-2000:]}")
    return json.loads(out.stdout[out.stdout.index("{"):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--data", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "gpu-check")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    ap.add_argument("--codec-minutes", type=float, default=1.0)
    ap.add_argument("--continue-minutes", type=float, default=3.0)
    ap.add_argument("--codec-steps", type=int, default=3000)
    ap.add_argument("--stage-steps", type=int, default=30)
    ap.add_argument("--only", default="codec,codec_continue,stage,moe")
    a = ap.parse_args()
    report: dict = {"env": _env(), "device": a.device, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    checks = {
        "codec": lambda: check_codec(a.device, a.codec_minutes, a.data / "audio", a.work, a.codec_steps),
        "codec_continue": lambda: check_codec_continue(a.device, a.continue_minutes if a.device == "cuda" else 0.05,
                                                       a.data / "audio", a.work, a.out.parent),
        "stage": lambda: check_stage(a.device, a.data / "tokens", a.work, a.stage_steps),
        "moe": lambda: check_moe(a.device),
    }
    ok = True
    for name in a.only.split(","):
        t0 = time.perf_counter()
        try:
            report[name] = {"ok": True, **checks[name]()}
        except Exception as e:  # noqa: BLE001 - each check reports its own failure
            ok = False
            report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        report[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"[gpu-check] {name}: {'ok' if report[name]['ok'] else 'FAILED'} ({report[name]['wall_s']} s)", flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: v.get("ok") for k, v in report.items() if isinstance(v, dict) and "ok" in v}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
