"""Training a Descript Audio Codec on the project's own audio (``unimoe codec train``).

The model, losses and discriminator are the ``dac`` package's own, wired as DAC's training recipe
(``scripts/train.py`` and ``conf/final/16khz.yml`` of descript-audio-codec) wires them:

- generator ``dac.DAC`` (encoder -> residual VQ with quantizer dropout -> decoder);
- discriminator ``dac.model.Discriminator`` (multi-period and multi-band multi-resolution STFT);
- losses ``dac.nn.loss``: multi-scale mel (weight 15), GAN generator (1) + feature matching (2),
  VQ commitment (0.25) and codebook (1) losses; multi-scale STFT and waveform L1 are logged only;
- AdamW (betas 0.8/0.99) + ExponentialLR for both networks, gradient clipping (1e3 / 10).

Two additions that production codecs use against codebook collapse, which a short CPU budget
cannot afford to wait out (a 258-step probe with the mel and VQ losses alone left codebook 0 on one
code); both live in :mod:`unimoe.codec_codebooks`, the training audio in :mod:`unimoe.codec_data`:

- **k-means initialisation** (SoundStream, EnCodec): before the first step each codebook is set to
  the centroids of a spherical k-means (cosine, as DAC's lookup) over that quantizer's projected
  latents, computed residual by residual on real audio;
- **dead-code restarts** (Jukebox, EnCodec): an exponential moving average of each code's usage is
  kept; every ``dead_code_every`` steps, codes whose expected use fell below ``dead_code_threshold``
  are re-seeded with projected latents drawn from the current batch.

The adversarial losses start at ``disc_start_step`` (0 = from the first step, as DAC does); before
that only the reconstruction and VQ losses train the generator, which gives the codebooks a
stable target quickly on a CPU. Checkpoints hold everything a bit-identical resume needs (both
networks, both optimisers and schedulers, usage statistics, the torch and data RNG states).

The product is an ordinary DAC weights file (``export_dac``): safetensors with the constructor
kwargs in its metadata, loaded by ``unimoe.codec.load_dac_weights`` like a released DAC.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from pydantic import Field, model_validator
from torch import nn

from unimoe.codec_codebooks import (CodeUsage, code_perplexity, data_dependent_init, kmeans_init_codebooks,
                                    restart_dead_codes, spherical_kmeans)
from unimoe.codec_data import AudioSource, SegmentSampler
from unimoe.common.files import atomic_path
from unimoe.config import ConfigError, DACShape
from unimoe.io import sha256_file

CHECKPOINT = "latest.pt"
LOG = "train_log.jsonl"
# Fields a resumed run may change (they do not change what has been computed so far).
RESUME_MUTABLE = ("steps", "log_every", "save_every", "threads")


class CodecTrainConfig(DACShape):
    """Everything that decides a codec training run (recorded beside its output). The generator's shape
    is the ``DACShape`` fields (a small 16 kHz-family DAC by default) plus the codebooks below."""

    section = "codec_train"

    # generator (dac.DAC kwargs)
    encoder_dim: int = 16
    decoder_dim: int = 96
    n_codebooks: int = 4
    codebook_size: int = 1024
    quantizer_dropout: float = 0.5
    # discriminator (dac.model.Discriminator kwargs). DAC's 16 kHz recipe uses periods [2,3,5,7,11]
    # (MPD, 1024-channel 2-D convs) and STFT sizes [2048,1024,512] (MRD); MPD costs ~20x the
    # generator on a CPU, so the default keeps the multi-band STFT discriminator only (DAC's own
    # "no-mpd" ablation). A GPU run can restore the periods.
    disc_periods: list[int] = Field(default_factory=list)
    disc_fft_sizes: list[int] = Field(default_factory=lambda: [2048, 1024, 512])
    disc_start_step: int = 0
    # losses (DAC's lambdas)
    lambda_mel: float = 15.0
    lambda_feat: float = 2.0
    lambda_gen: float = 1.0
    lambda_commitment: float = 0.25
    lambda_codebook: float = 1.0
    mel_window_lengths: list[int] = Field(default_factory=lambda: [32, 64, 128, 256, 512, 1024, 2048])
    mel_n_mels: list[int] = Field(default_factory=lambda: [5, 10, 20, 40, 80, 160, 320])
    # optimisation
    lr: float = 3e-4
    betas: list[float] = Field(default_factory=lambda: [0.8, 0.99])
    lr_gamma: float = 0.999996
    grad_clip_g: float = 1e3
    grad_clip_d: float = 10.0
    batch_size: int = 8
    segment_seconds: float = 0.5
    steps: int = 4000
    seed: int = 0
    # anti-collapse (unimoe.codec_codebooks)
    data_init: bool = True              # weight-norm data-dependent init of the encoder (see data_dependent_init)
    kmeans_init: bool = True
    kmeans_batches: int = 16
    kmeans_iters: int = 20
    dead_code_every: int = 5
    # a code is dead when its EMA uses per step fall below this fraction of uniform use
    # (frames per step / codebook size); the EMA's horizon is ~1 / (1 - usage_decay) steps
    dead_code_threshold: float = 0.25
    usage_decay: float = 0.95
    # data
    loudness_db: float = -16.0          # segments are RMS-normalised to this level (DAC's VolumeNorm)
    min_segment_rms_db: float = -50.0   # near-silent crops are redrawn
    # bookkeeping
    log_every: int = 10
    save_every: int = 100
    threads: int = 0                    # torch threads (0 = leave torch's default)

    @model_validator(mode="after")
    def _check_ranges(self) -> "CodecTrainConfig":
        self.validate()
        return self

    def validate(self) -> None:
        """The checks that span fields (run at construction; again by the trainer, for a config changed since)."""
        if self.sample_rate % self.hop:
            raise ConfigError(f"sample_rate {self.sample_rate} is not a multiple of the hop {self.hop}")
        if sorted(self.encoder_rates) != sorted(self.decoder_rates):
            raise ConfigError("decoder_rates must be a permutation of encoder_rates (same hop)")
        if not 0.0 <= self.quantizer_dropout <= 1.0:
            raise ConfigError("quantizer_dropout must lie in [0, 1]")
        if self.batch_size < 1 or self.steps < 0 or self.segment_seconds <= 0:
            raise ConfigError("batch_size >= 1, steps >= 0 and segment_seconds > 0 are required")

    @property
    def segment_samples(self) -> int:
        # whole frames, so every crop encodes to the same number of codes
        return max(1, round(self.segment_seconds * self.sample_rate / self.hop)) * self.hop

    def generator_kwargs(self) -> dict[str, Any]:
        """The generator's ``dac.DAC`` constructor arguments (recorded in the exported file)."""
        return self.dac_kwargs(self.n_codebooks, self.codebook_size, latent_dim=None,
                               quantizer_dropout=self.quantizer_dropout)


# ---- model construction ---------------------------------------------------------------------------


def _quiet_dac():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import dac
        from dac.model import Discriminator
        from dac.nn import loss as dac_loss
    return dac, Discriminator, dac_loss


def build_generator(cfg: CodecTrainConfig) -> nn.Module:
    dac, _, _ = _quiet_dac()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*")
        return dac.DAC(**cfg.generator_kwargs())


def build_discriminator(cfg: CodecTrainConfig) -> nn.Module:
    _, Discriminator, _ = _quiet_dac()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*weight_norm.*")
        return Discriminator(rates=[], periods=list(cfg.disc_periods), fft_sizes=list(cfg.disc_fft_sizes),
                             sample_rate=cfg.sample_rate)


def export_dac(generator: nn.Module, cfg: CodecTrainConfig, path: str | Path, extra: dict | None = None) -> str:
    """Write the generator as a DAC weights file in safetensors (constructor kwargs in the metadata,
    as ``DAC.save`` records them); returns its SHA-256."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    meta = {"format": "dac", "kwargs": json.dumps(cfg.generator_kwargs()), **{k: json.dumps(v) for k, v in (extra or {}).items()}}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return sha256_file(path)


# ---- the trainer ----------------------------------------------------------------------------------


class CodecTrainer:
    """The DAC recipe's train loop with k-means init, dead-code restarts and exact resume."""

    def __init__(self, cfg: CodecTrainConfig, sampler: SegmentSampler, out_dir: str | Path,
                 device: str | torch.device = "cpu", log: Callable[[str], None] = print):
        cfg.validate()
        self.cfg, self.sampler, self.out = cfg, sampler, Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.device = torch.device(device)
        self.log = log
        _, _, dac_loss = _quiet_dac()
        torch.manual_seed(cfg.seed)
        self.generator = build_generator(cfg).to(self.device)
        self.discriminator = build_discriminator(cfg).to(self.device)
        betas = tuple(cfg.betas)
        self.opt_g = torch.optim.AdamW(self.generator.parameters(), lr=cfg.lr, betas=betas)
        self.opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=cfg.lr, betas=betas)
        self.sched_g = torch.optim.lr_scheduler.ExponentialLR(self.opt_g, cfg.lr_gamma)
        self.sched_d = torch.optim.lr_scheduler.ExponentialLR(self.opt_d, cfg.lr_gamma)
        self.mel_loss = dac_loss.MelSpectrogramLoss(n_mels=list(cfg.mel_n_mels), window_lengths=list(cfg.mel_window_lengths),
                                                    mel_fmin=[0.0] * len(cfg.mel_n_mels),
                                                    mel_fmax=[None] * len(cfg.mel_n_mels), pow=1.0, clamp_eps=1e-5,
                                                    mag_weight=0.0)
        self.stft_loss = dac_loss.MultiScaleSTFTLoss(window_lengths=[2048, 512])
        self.waveform_loss = dac_loss.L1Loss()
        self.gan_loss = dac_loss.GANLoss(self.discriminator)
        frames_per_step = cfg.batch_size * cfg.segment_samples // cfg.hop
        self.usage = CodeUsage(cfg.n_codebooks, cfg.codebook_size, cfg.usage_decay,
                               uniform=frames_per_step / cfg.codebook_size)
        self.restart_rng = torch.Generator().manual_seed(cfg.seed + 1)
        self.step = 0
        self.kmeans_perplexity: list[float] | None = None
        self.total_restarts = [0] * cfg.n_codebooks
        self.train_seconds = 0.0
        self.parent: dict | None = None  # the codec a warm start began from (see warm_start)

    # ---- checkpointing ------------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / CHECKPOINT

    def state_dict(self) -> dict:
        return {"step": self.step, "config": json.dumps(self.cfg.to_dict()),
                "generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
                "usage": self.usage.state_dict(), "sampler": self.sampler.state_dict(),
                "rng_torch": torch.get_rng_state(), "rng_restart": self.restart_rng.get_state(),
                "kmeans_perplexity": json.dumps(self.kmeans_perplexity),
                "total_restarts": json.dumps(self.total_restarts), "train_seconds": self.train_seconds,
                "parent": json.dumps(self.parent)}

    def save(self) -> Path:
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(self.state_dict(), tmp)
        return self.checkpoint_path

    def load(self) -> bool:
        """Resume from ``latest.pt`` when present (refusing one made with another config)."""
        if not self.checkpoint_path.is_file():
            return False
        st = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        saved = json.loads(st["config"])
        mine = self.cfg.to_dict()
        differ = sorted(k for k in mine if k not in RESUME_MUTABLE and saved.get(k) != mine[k])
        if differ:
            raise ValueError(f"{self.checkpoint_path}: made with a different codec config ({differ}); "
                             "use another output directory or the same config")
        self.generator.load_state_dict(st["generator"])
        self.discriminator.load_state_dict(st["discriminator"])
        self.opt_g.load_state_dict(st["opt_g"])
        self.opt_d.load_state_dict(st["opt_d"])
        self.sched_g.load_state_dict(st["sched_g"])
        self.sched_d.load_state_dict(st["sched_d"])
        self.usage.load_state_dict(st["usage"])
        self.sampler.load_state_dict(st["sampler"])
        torch.set_rng_state(st["rng_torch"])
        self.restart_rng.set_state(st["rng_restart"])
        self.step = int(st["step"])
        self.kmeans_perplexity = json.loads(st["kmeans_perplexity"])
        self.total_restarts = json.loads(st["total_restarts"])
        self.train_seconds = float(st["train_seconds"])
        self.parent = json.loads(st.get("parent", "null"))
        return True

    def warm_start(self, path: str | Path) -> dict:
        """Continue training an exported codec (a DAC safetensors file from ``export_dac``, e.g. the
        shipped demo codec): its generator weights and step count; the discriminator, optimiser
        state and code-usage statistics start afresh, and k-means init is skipped (the codebooks are
        trained). Its provenance JSON, when beside it, carries the training time forward."""
        from unimoe.codec import load_dac_weights

        path = Path(path)
        model = load_dac_weights(path)
        kwargs = model.metadata["kwargs"]
        mine = self.cfg.generator_kwargs()
        differ = sorted(k for k in mine if k in kwargs and kwargs[k] != mine[k])
        if differ:
            raise ValueError(f"{path}: cannot warm-start from it: its DAC shape differs from the config's in {differ}")
        self.generator.load_state_dict(model.state_dict())
        meta = model.metadata
        self.step = int(json.loads(meta.get("steps", "0")))
        prov_path = path.with_suffix(".json")
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
        self.train_seconds = float(prov.get("train_seconds", 0.0))
        self.kmeans_perplexity = prov.get("kmeans_perplexity_at_init") or []
        self.parent = {"path": str(path), "sha256": sha256_file(path), "steps": self.step,
                       "corpus_hash": json.loads(meta["corpus_hash"]) if "corpus_hash" in meta else None,
                       "train_seconds": self.train_seconds}
        return self.parent

    # ---- one step -----------------------------------------------------------------------------------
    def _signals(self, audio: torch.Tensor):
        from audiotools import AudioSignal

        return AudioSignal(audio, self.cfg.sample_rate)

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        self.generator.train()
        self.discriminator.train()
        x = x.to(self.device)
        out = self.generator(x, cfg.sample_rate)
        # DAC decoders whose rates hold an odd factor (16 kHz: [8, 5, 4, 2]) return a few samples fewer
        # than they were given; compare over the samples both have.
        n = min(out["audio"].shape[-1], x.shape[-1])
        recons, signal = self._signals(out["audio"][..., :n]), self._signals(x[..., :n])
        logs: dict[str, float] = {}
        adversarial = self.step >= cfg.disc_start_step
        if adversarial:
            disc_loss = self.gan_loss.discriminator_loss(recons, signal)
            self.opt_d.zero_grad(set_to_none=True)
            disc_loss.backward()
            logs["grad_norm_d"] = float(torch.nn.utils.clip_grad_norm_(self.discriminator.parameters(), cfg.grad_clip_d))
            self.opt_d.step()
            self.sched_d.step()
            logs["disc_loss"] = float(disc_loss.detach())
        mel = self.mel_loss(recons, signal)
        loss = cfg.lambda_mel * mel + cfg.lambda_commitment * out["vq/commitment_loss"] \
            + cfg.lambda_codebook * out["vq/codebook_loss"]
        if adversarial:
            gen_loss, feat_loss = self.gan_loss.generator_loss(recons, signal)
            loss = loss + cfg.lambda_gen * gen_loss + cfg.lambda_feat * feat_loss
            logs.update(gen_loss=float(gen_loss.detach()), feat_loss=float(feat_loss.detach()))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm_g"] = float(torch.nn.utils.clip_grad_norm_(self.generator.parameters(), cfg.grad_clip_g))
        self.opt_g.step()
        self.sched_g.step()
        with torch.no_grad():
            logs["stft_loss"] = float(self.stft_loss(recons, signal))
            logs["waveform_loss"] = float(self.waveform_loss(recons, signal))
        codes = out["codes"].detach().cpu()
        self.usage.update(codes)
        self.step += 1
        if cfg.dead_code_every and self.step % cfg.dead_code_every == 0:
            n = restart_dead_codes(self.generator, self.usage, out["latents"].detach().cpu(), cfg.dead_code_threshold,
                                   self.restart_rng, self.opt_g)
            self.total_restarts = [a + b for a, b in zip(self.total_restarts, n)]
            logs["restarted"] = sum(n)
        logs.update(loss=float(loss.detach()), mel_loss=float(mel.detach()),
                    commitment_loss=float(out["vq/commitment_loss"].detach()),
                    codebook_loss=float(out["vq/codebook_loss"].detach()), lr=self.opt_g.param_groups[0]["lr"])
        for i in range(cfg.n_codebooks):
            logs[f"perplexity_cb{i}"] = code_perplexity(codes[:, i], cfg.codebook_size)
        return logs

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self, steps: int | None = None, *, stop: Callable[[], bool] | None = None,
            progress: Callable[[int, int, dict], None] | None = None, init_from: str | Path | None = None) -> dict:
        """Train to ``steps`` total (resuming from the checkpoint if there is one; else, given
        ``init_from``, continuing that exported codec: see ``warm_start``)."""
        cfg = self.cfg
        target = cfg.steps if steps is None else steps
        resumed = self.load()
        if resumed:
            self.log(f"resumed from {self.checkpoint_path} at step {self.step}")
        elif init_from is not None:
            parent = self.warm_start(init_from)
            self.log(f"warm start from {init_from} (sha256 {parent['sha256'][:12]}) at step {self.step}")
            self.save()
        if self.step == 0 and cfg.kmeans_init and self.kmeans_perplexity is None:
            batches = [self.sampler.batch().to(self.device) for _ in range(cfg.kmeans_batches)]
            if cfg.data_init:
                few = batches[:2]  # per-channel statistics settle on a couple of batches; 30 passes of all are slow
                n = data_dependent_init(self.generator.encoder, lambda: [self.generator.encoder(b) for b in few])
                self.log(f"data-dependent init of {n} encoder layers")
            self.kmeans_perplexity = kmeans_init_codebooks(self.generator, batches, cfg.kmeans_iters, cfg.seed)
            self.log("k-means codebook init: perplexity per codebook "
                     + ", ".join(f"{p:.0f}" for p in self.kmeans_perplexity))
            self.save()
        log_path = self.out / LOG
        while self.step < target:
            if stop is not None and stop():
                self.save()  # a time-boxed run (a GPU lease, say) resumes from where it stopped
                break
            t0 = time.perf_counter()
            logs = self.train_step(self.sampler.batch())
            self.train_seconds += time.perf_counter() - t0
            logs["step"], logs["seconds_per_step"] = self.step, time.perf_counter() - t0
            if self.step % cfg.log_every == 0 or self.step == target:
                with open(log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(logs) + "\n")
            if progress:
                progress(self.step, target, logs)
            if self.step % cfg.save_every == 0 or self.step == target:
                self.save()
        return {"step": self.step, "train_seconds": self.train_seconds, "kmeans_perplexity": self.kmeans_perplexity,
                "dead_code_restarts": self.total_restarts, "parent": self.parent}


def train_codec(sources: Sequence[AudioSource], corpus_hash: str, cfg: CodecTrainConfig, out_dir: str | Path, *,
                export_path: str | Path | None = None, command: str | None = None, device: str = "cpu",
                progress: bool = True, log: Callable[[str], None] = print, init_from: str | Path | None = None,
                max_minutes: float | None = None) -> dict:
    """Train (or resume) a codec in ``out_dir`` to ``cfg.steps`` and export it as a DAC safetensors
    file (default ``<out_dir>/codec.safetensors``) with a provenance JSON beside it
    (``<export>.json``: command, corpus hash, steps, wall time, config, checksum). ``init_from``: an
    exported codec to continue when ``out_dir`` holds no checkpoint yet (``CodecTrainer.warm_start``).
    ``max_minutes``: stop training after this much wall time (checkpoint saved, codec exported at the
    step reached; a later call resumes towards ``cfg.steps``)."""
    from tqdm.auto import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_load = time.perf_counter()
    bar = tqdm(total=len(sources), desc="codec: load audio", unit="file", disable=not progress)
    sampler = SegmentSampler(sources, cfg, progress=lambda done, total: bar.update(1))
    bar.close()
    for path, why in sampler.skipped:
        log(f"codec: skipped {path}: {why}")
    log(f"codec: {sampler.num_clips} clips, {sampler.seconds / 3600:.2f} h of audio in groups {sampler.group_names} "
        f"(loaded in {time.perf_counter() - t_load:.0f} s)")
    trainer = CodecTrainer(cfg, sampler, out, device=device, log=log)
    wall0 = time.perf_counter()
    steps_bar = tqdm(total=cfg.steps, desc="codec: train", unit="step", disable=not progress)

    def on_step(step: int, target: int, logs: dict) -> None:
        steps_bar.n = step
        steps_bar.set_postfix(mel=f"{logs['mel_loss']:.3f}",
                              ppl="/".join(f"{logs[f'perplexity_cb{i}']:.0f}" for i in range(cfg.n_codebooks)),
                              refresh=False)
        steps_bar.update(0)

    deadline = None if max_minutes is None else time.monotonic() + 60 * max_minutes
    summary = trainer.fit(progress=on_step, init_from=init_from,
                          stop=None if deadline is None else lambda: time.monotonic() > deadline)
    if trainer.step < cfg.steps:
        log(f"codec: stopped at step {trainer.step} of {cfg.steps} after --max-minutes {max_minutes:g}")
    steps_bar.close()
    export = Path(export_path) if export_path else out / "codec.safetensors"
    provenance = {"command": command, "corpus_hash": corpus_hash, "steps": trainer.step,
                  "train_seconds": round(trainer.train_seconds, 1),
                  "wall_seconds_this_invocation": round(time.perf_counter() - wall0, 1),
                  "training_clips": sampler.num_clips, "training_hours": round(sampler.seconds / 3600, 3),
                  "skipped_sources": len(sampler.skipped), "config": cfg.to_dict(),
                  "kmeans_perplexity_at_init": summary["kmeans_perplexity"],
                  "dead_code_restarts": summary["dead_code_restarts"], "warm_start_from": summary["parent"],
                  "final_log": (read_log(out) or [{}])[-1], "torch": torch.__version__, "device": str(device)}
    provenance["sha256"] = export_dac(trainer.generator, cfg, export, extra={"corpus_hash": corpus_hash,
                                                                              "steps": trainer.step})
    with atomic_path(export.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(provenance, indent=2) + "\n")
    log(f"codec: wrote {export} (sha256 {provenance['sha256'][:12]}, step {trainer.step})")
    return {"export": str(export), **provenance}


def read_log(out_dir: str | Path) -> list[dict]:
    p = Path(out_dir) / LOG
    if not p.is_file():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def iter_audio_files(folder: str | Path) -> Iterator[Path]:
    exts = {".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif"}
    for p in sorted(Path(folder).rglob("*")):
        if p.suffix.lower() in exts and p.is_file():
            yield p


__all__ = ["CodecTrainConfig", "AudioSource", "SegmentSampler", "CodecTrainer", "spherical_kmeans", "data_dependent_init",
           "kmeans_init_codebooks", "restart_dead_codes", "code_perplexity", "CodeUsage", "export_dac",
           "build_generator", "build_discriminator", "read_log", "iter_audio_files", "train_codec"]
