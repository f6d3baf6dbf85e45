"""What curating the paper's corpus costs: measured per-clip costs of the quality scorers and the
tokeniser, and a projection for ~290K hours (UniMoE-Audio, arXiv 2510.13344: ~280K h of speech,
~9.4K h of music, 600 h of video-to-music).

    python benchmarks/corpus_cost.py [--clip-seconds 10] [--repeats 3] [--steps utmos22_strong,...]
                                     [--gpus 8 --cpu-cores 256 --gpu-peak-tflops 788 --gpu-efficiency 0.35]
                                     [--out costs.json]
    python benchmarks/corpus_cost.py --measured costs.json [projection options]   # re-project only

Each step is the full-size architecture with random weights (the same FLOPs as the released weights):

=================== ============================================================================
step                what runs
=================== ============================================================================
utmos22_strong      UTMOS22 strong learner (wav2vec2-base + BLSTM), speech; the scorer's model
audiobox_aesthetics audiobox-aesthetics (WavLM-base, 4 heads), music; ``score_windows`` (10 s windows)
clap_audio          LAION-CLAP audio branch (HTSAT-base, ``music_audioset_epoch_15_esc_90.14``), music;
                    ``embed_audio`` (one 10 s window per clip: repeat-padded or cropped)
dnsmos              DNSMOS P.835 + P.808 ONNX models from ``speechmos`` (real weights), the speech
                    substitute; the scorer's ``score``; reported per 9.01 s window as well
signal_checks       the built-in music substitute (``data.quality.signal_checks``)
dac_paper           the paper preset's codec: DAC 16 kHz, 12 codebooks, ``AudioCodec.encode``
dac_demo            the shipped demo codec (4 codebooks), ``AudioCodec.encode``
=================== ============================================================================

Per step it reports FLOPs (``torch.utils.flop_counter.FlopCounterMode``: matmuls, convolutions,
attention, and LSTMs by a formula added here; element-wise work is not counted; the count does not
depend on machine load, so it is the figure to scale from on a shared machine)
and the median wall and CPU time of ``--repeats`` runs on one thread (after a warm-up run). ONNX
(DNSMOS) and numpy (signal checks) steps have no FLOP count: their CPU time is the figure.

The projection turns those into clips, shards, token-shard bytes, GPU-hours per scorer (FLOPs over
an *assumed* effective GPU rate: ``--gpu-efficiency`` x ``--gpu-peak-tflops``) and CPU core-hours
(measured one-thread CPU seconds), and the wall time of each curate step on ``--gpus`` GPUs and
``--cpu-cores`` cores, both with the scorers and codec on the GPUs and with everything on the CPU cores
(as the flow runs them today). The curate flow runs caption, filter and tokenise one after the other,
so the wall time is their sum. Every clip is
taken to be ``--clip-seconds`` long (CLAP's and DNSMOS's per-clip cost is not proportional to length).
Prints one JSON object, then a short table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

# The paper's corpus (arXiv 2510.13344), hours per kind of row.
PAPER_HOURS = {"speech": 280_000.0, "music": 9_400.0, "v2m": 600.0}
# Which steps each kind of row goes through when the paper scorers are used (data.quality.plan_scorers):
# speech is judged by UTMOS, music and video-to-music by audiobox-aesthetics and CLAP; every row is tokenised.
PAPER_FILTER = {"speech": ("utmos22_strong",), "music": ("audiobox_aesthetics", "clap_audio"),
                "v2m": ("audiobox_aesthetics", "clap_audio")}
# The substitutes the filter uses when a paper scorer's weights are missing (CPU only).
SUBSTITUTE_FILTER = {"speech": ("dnsmos",), "music": ("signal_checks",), "v2m": ("signal_checks",)}
TOKENISER = "dac_paper"
# Demo figures measured on the 2-core machine (curate_scale at 16K one-second clips; not re-measured here):
# the offline captioner's rows per second on 2 cores.
DEMO_CAPTION_ROWS_PER_S_2_CORES = 71.0


@dataclass(frozen=True)
class Step:
    name: str
    what: str
    sample_rate: int
    device: str  # where the curate flow would want it: "gpu" (a neural scorer / codec) or "cpu"
    build: Callable[[], Callable[[np.ndarray], Any]]  # -> run(wav) on one clip at sample_rate


def probe_clip(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A speech-like level test signal: a tone in noise (the content does not change the cost)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    return (0.05 * rng.standard_normal(n) + 0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


# ---- the steps (full-size architectures, random weights) -----------------------------------------------


def _utmos() -> Callable[[np.ndarray], Any]:
    from evaluation.scorers.utmos import UTMOS22Strong, UTMOS22StrongConfig

    model = UTMOS22Strong(UTMOS22StrongConfig()).eval()
    return lambda wav: model(torch.from_numpy(wav)[None])


def _aesthetics() -> Callable[[np.ndarray], Any]:
    from audiobox_aesthetics.model.aes import AXES_NAME, AesMultiOutput

    from evaluation.scorers.aesthetics import MODEL_CFG_KEYS, AudioboxAesthetics, build_model

    # model_cfg: the package's AesMultiOutput defaults (nth_layer 13 = all 12 WavLM layers; the heads cost
    # next to nothing); the WavLM-base encoder is always the package's DEFAULT_AUDIO_CFG. The random state
    # dict goes through the scorer's own loader.
    defaults = AesMultiOutput()
    ckpt = {"state_dict": {f"model.{k}": v for k, v in defaults.state_dict().items()},
            # (the instance holds precision as a torch dtype by now; the checkpoint stores the string)
            "model_cfg": {k: getattr(defaults, k) for k in MODEL_CFG_KEYS} | {"precision": "32"},
            "target_transform": {a: {"mean": 0.0, "std": 1.0} for a in AXES_NAME}}
    scorer = AudioboxAesthetics(build_model(ckpt), weights_path=Path("random-init"),
                                weights_sha256="random-init")
    return lambda wav: scorer.score_windows([wav])


def _clap() -> Callable[[np.ndarray], Any]:
    from evaluation.scorers.clap import (CHECKPOINTS, DEFAULT_CHECKPOINT, ClapScore, _text_config,
                                         build_clap_model)

    ckpt = CHECKPOINTS[DEFAULT_CHECKPOINT]
    model, model_cfg = build_clap_model(ckpt, _text_config(None))
    scorer = ClapScore(model, model_cfg, None, checkpoint=ckpt, weights_path=Path("random-init"),
                       weights_sha256="random-init")
    return lambda wav: scorer.embed_audio([wav])


def _dnsmos() -> Callable[[np.ndarray], Any]:
    from evaluation.scorers.base import AudioItem
    from evaluation.scorers.dnsmos import SAMPLE_RATE, make_dnsmos

    scorer = make_dnsmos(num_threads=1)
    return lambda wav: scorer.score([AudioItem("clip", wav, SAMPLE_RATE)])


def _signal_checks() -> Callable[[np.ndarray], Any]:
    from data.quality import signal_checks

    return lambda wav: signal_checks(wav, 16_000)


def _dac_paper() -> Callable[[np.ndarray], Any]:
    from unimoe.codec import AudioCodec
    from unimoe.config import paper_preset

    cfg = paper_preset()
    codec = AudioCodec.from_config(cfg.codec.replace(random_init=True), cfg.audio.num_codebooks,
                                   cfg.audio.codebook_size)
    return lambda wav: codec.encode([wav], codec.sample_rate)


def _dac_demo() -> Callable[[np.ndarray], Any]:
    from unimoe.codec import open_codec

    codec = open_codec("demo")
    return lambda wav: codec.encode([wav], codec.sample_rate)


STEPS: dict[str, Step] = {s.name: s for s in (
    Step("utmos22_strong", "UTMOS22 strong (wav2vec2-base + BLSTM), full UTMOS22StrongConfig", 16_000, "gpu",
         _utmos),
    Step("audiobox_aesthetics", "audiobox-aesthetics (WavLM-base), 10 s windows", 16_000, "gpu", _aesthetics),
    Step("clap_audio", "LAION-CLAP audio branch, HTSAT-base (music_audioset_epoch_15_esc_90.14), one 10 s "
         "window per clip", 48_000, "gpu", _clap),
    Step("dnsmos", "DNSMOS P.835 + P.808 (speechmos ONNX, real weights), 9.01 s windows, 1 s hop", 16_000,
         "cpu", _dnsmos),
    Step("signal_checks", "signal checks (silence, clipping, loudness, duration)", 16_000, "cpu",
         _signal_checks),
    Step("dac_paper", "paper preset codec: DAC 16 kHz, 12 x 1024 codes, 50 frames/s (encoder + quantiser)",
         16_000, "gpu", _dac_paper),
    Step("dac_demo", "demo codec (shipped weights), encoder + quantiser", 16_000, "gpu", _dac_demo),
)}


# ---- measuring -------------------------------------------------------------------------------------------


def _lstm_flops(data_shape: torch.Size, *args: Any, **kwargs: Any) -> int:
    """FLOPs of an LSTM, which FlopCounterMode has no formula for (UTMOS's BLSTM): each step multiplies its
    input and hidden state by ``w_ih`` and ``w_hh``, 2 FLOPs per weight. ``aten.lstm`` on packed
    ``(steps, C)`` data (padded input decomposes into ``mkldnn_rnn_layer`` on CPU): the weights are the 2-D
    shapes in its parameter list."""
    weights = [p for a in args if isinstance(a, (list, tuple))
               for p in a if isinstance(p, torch.Size) and len(p) == 2]
    return 2 * math.prod(data_shape[:-1]) * sum(math.prod(p) for p in weights)


def _lstm_layer_flops(input_shape: torch.Size, w_ih: torch.Size, w_hh: torch.Size,
                      *args: Any, **kwargs: Any) -> int:
    """One direction of one layer (``aten.mkldnn_rnn_layer``, padded ``(B, T, C)`` or ``(T, B, C)`` input)."""
    return 2 * math.prod(input_shape[:-1]) * (math.prod(w_ih) + math.prod(w_hh))


LSTM_FLOPS = {torch.ops.aten.lstm: _lstm_flops, torch.ops.aten.mkldnn_rnn_layer: _lstm_layer_flops}


def count_flops(run: Callable[[np.ndarray], Any], wav: np.ndarray) -> int:
    """Matmul/convolution/attention/LSTM FLOPs of one ``run(wav)`` (0 for work torch does not see: ONNX,
    numpy). Element-wise work (activations, norms, Snake) is not counted: a lower bound."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.inference_mode(), FlopCounterMode(display=False,
                                                  custom_mapping=LSTM_FLOPS) as counter:
        run(wav)
    return int(counter.get_total_flops())


def time_runs(run: Callable[[np.ndarray], Any], wav: np.ndarray, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` runs."""
    walls, cpus = [], []
    with torch.inference_mode():
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            run(wav)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def dnsmos_windows(seconds: float) -> int:
    """9.01 s windows DNSMOS scores for a clip of ``seconds``, counted by the scorer's own windowing (the
    reference tiles a shorter clip by doubling it and hops by 1 s; a window that float rounding leaves one
    sample short is skipped, so a 20 s clip gets 7 windows, not 11)."""
    from evaluation.scorers.dnsmos import SAMPLE_RATE, make_dnsmos

    return len(make_dnsmos(num_threads=1)._windows(np.zeros(round(seconds * SAMPLE_RATE), np.float32)))


def measure(step: Step, seconds: float, repeats: int) -> dict[str, Any]:
    run = step.build()
    wav = probe_clip(seconds, step.sample_rate)
    with torch.inference_mode():
        run(wav)  # warm-up, and one-off set-up out of the counts (the codec plans its padding on first use)
    flops = count_flops(run, wav)
    wall, cpu = time_runs(run, wav, repeats)
    row: dict[str, Any] = {
        "what": step.what, "device": step.device, "clip_seconds": seconds,
        "flops_per_clip": flops or None,
        "gflops_per_audio_second": round(flops / seconds / 1e9, 3) if flops else None,
        "cpu_seconds_per_clip": round(cpu, 4), "wall_seconds_per_clip": round(wall, 4),
        "cpu_seconds_per_audio_second": round(cpu / seconds, 5),
        "effective_cpu_gflops": round(flops / cpu / 1e9, 2) if flops and cpu > 0 else None,
    }
    if step.name == "dnsmos":
        windows = dnsmos_windows(seconds)
        row |= {"windows_per_clip": windows, "cpu_seconds_per_window": round(cpu / windows, 4)}
    return row


# ---- the projection -------------------------------------------------------------------------------------


def _tenths(hours: float | None) -> float | None:
    return None if hours is None else round(hours, 1)


def projection(measured: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    """Clips, shards, token bytes, GPU-hours and CPU core-hours of the curate steps for ``args``' corpus."""
    from unimoe.config import paper_preset
    from unimoe.training.shards import codes_dtype

    hours = {"speech": args.speech_hours, "music": args.music_hours, "v2m": args.v2m_hours}
    clips = {k: math.ceil(h * 3600 / args.clip_seconds) for k, h in hours.items()}
    total_clips = sum(clips.values())
    paper = paper_preset()
    audio, frame_rate = paper.audio, paper.codec.frame_rate
    code_bytes = codes_dtype(audio.codebook_size).itemsize
    token_bytes = sum(hours.values()) * 3600 * frame_rate * audio.num_codebooks * code_bytes
    gpu_rate = args.gpu_efficiency * args.gpu_peak_tflops * 1e12

    def gpu_hours(step: str, n: int) -> float | None:
        flops = measured.get(step, {}).get("flops_per_clip")
        return None if flops is None else flops * n / gpu_rate / 3600

    def core_hours(step: str, n: int) -> float | None:
        cpu = measured.get(step, {}).get("cpu_seconds_per_clip")
        return None if cpu is None else cpu * n / 3600

    def per_step(table: dict[str, tuple[str, ...]],
                 cost: Callable[[str, int], float | None]) -> dict[str, float]:
        out: dict[str, float] = {}
        for kind, steps in table.items():
            for s in steps:
                c = cost(s, clips[kind])
                if c is not None:
                    out[s] = out.get(s, 0.0) + c
        return {k: round(v, 1) for k, v in out.items()}

    filter_gpu_hours = per_step(PAPER_FILTER, gpu_hours)
    tokenise_gpu_hours = gpu_hours(TOKENISER, total_clips)
    caption_core_hours = total_clips / (DEMO_CAPTION_ROWS_PER_S_2_CORES / 2) / 3600
    filter_core_hours = per_step(PAPER_FILTER, core_hours)
    tokenise_core_hours = core_hours(TOKENISER, total_clips)
    on_gpus = {
        "caption (offline captioner, CPU)": caption_core_hours / args.cpu_cores,
        "filter (paper scorers on the GPUs)": sum(filter_gpu_hours.values()) / args.gpus,
        "tokenise (paper DAC on the GPUs)": (tokenise_gpu_hours or 0.0) / args.gpus,
    }
    # The flow as it is: the filter loads its scorers and the tokeniser its codec on the CPU, so a GPU worker
    # only lends its cores.
    all_on_cpu = {
        "caption (offline captioner, CPU)": caption_core_hours / args.cpu_cores,
        "filter (paper scorers on CPU cores)": sum(filter_core_hours.values()) / args.cpu_cores,
        "tokenise (paper DAC on CPU cores)": (tokenise_core_hours or 0.0) / args.cpu_cores,
    }
    return {
        "hours": hours, "total_hours": sum(hours.values()), "clip_seconds": args.clip_seconds,
        "clips": clips, "total_clips": total_clips,
        "filter_shards": math.ceil(total_clips / args.rows_per_shard), "rows_per_shard": args.rows_per_shard,
        "token_shards": math.ceil(total_clips / args.token_rows_per_shard),
        "token_rows_per_shard": args.token_rows_per_shard,
        "token_storage": {"frames_per_s": frame_rate, "codebooks": audio.num_codebooks,
                          "bytes_per_code": code_bytes,
                          "bytes": int(token_bytes), "TB": round(token_bytes / 1e12, 3)},
        "gpu": {"peak_tflops": args.gpu_peak_tflops, "efficiency": args.gpu_efficiency,
                "effective_tflops": round(gpu_rate / 1e12, 1),
                "assumption": "effective rate = efficiency x peak; an assumption, not a measurement"},
        "gpu_hours": {**filter_gpu_hours, TOKENISER: _tenths(tokenise_gpu_hours)},
        "cpu_core_hours_if_on_cpu": {**filter_core_hours, TOKENISER: _tenths(tokenise_core_hours)},
        "substitutes_cpu_core_hours": per_step(SUBSTITUTE_FILTER, core_hours),
        "caption_cpu_core_hours": round(caption_core_hours, 1),
        "cluster": {"gpus": args.gpus, "cpu_cores": args.cpu_cores,
                    "wall_hours_scorers_and_codec_on_gpus": {k: round(v, 1) for k, v in on_gpus.items()},
                    "total_wall_hours_on_gpus": round(sum(on_gpus.values()), 1),
                    "wall_hours_all_on_cpu": {k: round(v, 1) for k, v in all_on_cpu.items()},
                    "total_wall_hours_all_on_cpu": round(sum(all_on_cpu.values()), 1)},
    }


def table(measured: dict[str, dict[str, Any]], proj: dict[str, Any]) -> str:
    def cell(hours: float | None, fmt: str) -> str:
        return "-" if hours is None else format(hours, fmt)

    lines = [f"{'step':<20} {'GFLOP/clip':>11} {'CPU s/clip':>11} {'GPU-h':>9} {'core-h (CPU)':>13}"]
    for name, m in measured.items():
        gflop = f"{m['flops_per_clip'] / 1e9:.1f}" if m["flops_per_clip"] else "-"
        gpu_h = proj["gpu_hours"].get(name)
        core_h = proj["cpu_core_hours_if_on_cpu"].get(name, proj["substitutes_cpu_core_hours"].get(name))
        lines.append(f"{name:<20} {gflop:>11} {m['cpu_seconds_per_clip']:>11.4g} "
                     f"{cell(gpu_h, ',.1f'):>9} {cell(core_h, ',.0f'):>13}")
    c = proj["cluster"]
    lines.append(f"{proj['total_clips']:,} clips of {proj['clip_seconds']:g} s, "
                 f"{proj['filter_shards']:,} filter shards, {proj['token_shards']:,} token shards, "
                 f"{proj['token_storage']['TB']} TB of codes")
    lines.append(f"{c['gpus']} GPUs + {c['cpu_cores']} cores: {c['total_wall_hours_on_gpus']:,} h wall with the "
                 f"scorers and codec on the GPUs, {c['total_wall_hours_all_on_cpu']:,} h with everything on the "
                 "CPU cores")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from data.curate import CurateConfig

    curate = CurateConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default=",".join(STEPS), help="comma-separated steps to measure (default: all)")
    p.add_argument("--clip-seconds", type=float, default=10.0,
                   help="test clip length = the corpus' mean clip length")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per step (median), after one warm-up")
    p.add_argument("--speech-hours", type=float, default=PAPER_HOURS["speech"])
    p.add_argument("--music-hours", type=float, default=PAPER_HOURS["music"])
    p.add_argument("--v2m-hours", type=float, default=PAPER_HOURS["v2m"])
    p.add_argument("--rows-per-shard", type=int, default=curate.rows_per_shard,
                   help="caption/filter shard rows")
    p.add_argument("--token-rows-per-shard", type=int, default=curate.token_rows_per_shard)
    p.add_argument("--measured", type=Path, default=None,
                   help="a previous run's JSON: project from its measured costs instead of measuring again")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON to this file")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--cpu-cores", type=int, default=256)
    p.add_argument("--gpu-peak-tflops", type=float, default=788.0,
                   help="one GPU's dense matmul rate (default: 788, an H200's measured bf16 dense rate)")
    p.add_argument("--gpu-efficiency", type=float, default=0.35,
                   help="share of the peak the scorers reach (an assumption: small batches, fp32 reference "
                        "scorers, convolution front ends)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.steps.split(",")) - set(STEPS))
    if unknown:
        p.error(f"unknown steps {unknown}; known: {sorted(STEPS)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    if args.measured is not None:
        previous = json.loads(args.measured.read_text())
        measured = previous["measured"]
        args.clip_seconds = next(iter(measured.values()))["clip_seconds"]
        provenance = {"measured_in": str(args.measured), "threads": previous["threads"],
                      "torch": previous["torch"]}
    else:
        measured = {}
        for name in args.steps.split(","):
            t0 = time.perf_counter()
            measured[name] = measure(STEPS[name], args.clip_seconds, args.repeats)
            print(f"{name}: measured in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        provenance = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    result = {"measured": measured, **provenance, "projection": projection(measured, args)}
    print(json.dumps(result, indent=2))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(measured, result["projection"]))
    return result


if __name__ == "__main__":
    main()
