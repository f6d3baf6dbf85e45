"""The audio codec: a wrapper over the Descript Audio Codec (package ``descript-audio-codec``).

``AudioCodec`` turns waveforms into ``[num_codebooks, frames]`` code matrices and back.
It holds either the real DAC weights from the local weights store (checksum-verified, unpickled only
with ``weights_only=True``) or, when ``codec.random_init`` is set, a small randomly initialised DAC of
the same family for tests and the offline demo. A random-init codec is NOT a codec: its
``is_random_init`` is true and its ``label`` says so, so anything that writes its output can record it.

Conventions
-----------
- Input audio is mono-mixed (mean of channels), resampled to the codec rate, then right-padded with
  zeros to a multiple of the hop (DAC's own ``preprocess``). An item of ``n`` samples at the codec rate
  gives ``ceil(n / hop)`` frames (CEIL, not floor; 0 samples give 0 frames).
- ``decode`` of ``T`` frames returns exactly ``T * hop`` samples. (DAC decoders whose rates contain an
  odd factor, like the 16 kHz model's [8, 5, 4, 2], natively produce a few samples fewer; those are
  zero-padded at the end.)
- Batching is exact: items of different lengths share a batch, and every convolution input is
  re-zeroed beyond each item's own length, so an item's codes (and decoded audio) do not depend on
  what it was batched with — the same values a one-item call gives (up to float rounding of batched
  kernels).
- Long inputs are processed in windows of ``chunk_seconds`` (aligned to whole frames) with a margin of
  context on both sides at least as wide as the network's receptive field, and only each window's
  core frames are kept, so chunked output equals unchunked output and frame counts add up exactly.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from unimoe.codec_batching import StackPlan, masked_convs, plan_stack, use_inference_snake, windows
from unimoe.codec_weights import CodecLoadError, build_random_dac, load_dac_weights
from unimoe.common.audio import resample, to_mono
from unimoe.common.files import atomic_path
from unimoe.config import DEMO_CODEC_WEIGHTS, CodecConfig
from unimoe.io import resolve_weights, sha256_file

__all__ = ["AudioCodec", "CodecLoadError", "build_random_dac", "load_dac_weights", "use_inference_snake", "open_codec",
           "codes_dtype", "resynthesize_folder", "DAC_RELEASE_URLS", "TRAINED_VARIANTS", "RANDOM_INIT_LABEL",
           "AUDIO_SUFFIXES"]

# Official release files per DAC variant (what the local weights store should hold).
DAC_RELEASE_URLS = {
    "16khz": "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.5/weights_16khz.pth",
    "24khz": "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.4/weights_24khz.pth",
    "44khz": "https://github.com/descriptinc/descript-audio-codec/releases/download/0.0.1/weights.pth",
    "44khz_16kbps": "https://github.com/descriptinc/descript-audio-codec/releases/download/1.0.0/weights_44khz_16kbps.pth",
}

# Codecs the project trains itself (``unimoe codec train``): where such a file comes from.
TRAINED_VARIANTS = {
    "trained": "`unimoe codec train --export PATH` (a DAC trained by this project on your corpus)",
    "demo": "`make demo-codec` (the demo codec shipped in unimoe/assets/codecs/, trained by `unimoe codec train`)",
}

RANDOM_INIT_LABEL = "random-init DAC (untrained; NOT a real codec)"


# ---- the codec ------------------------------------------------------------------------------------------


class AudioCodec:
    """Waveforms <-> ``[num_codebooks, frames]`` DAC codes. Use ``AudioCodec.from_config``."""

    def __init__(self, model: nn.Module, *, num_codebooks: int, label: str, is_random_init: bool,
                 chunk_seconds: float = 30.0, device: str | torch.device = "cpu",
                 weights_path: Path | None = None, weights_sha256: str | None = None):
        if not 1 <= num_codebooks <= model.n_codebooks:
            raise CodecLoadError(f"codec has {model.n_codebooks} codebooks; cannot use {num_codebooks}")
        if chunk_seconds <= 0:
            raise ValueError(f"chunk_seconds must be > 0, got {chunk_seconds}")
        self.model = use_inference_snake(model.eval().to(device))
        self._num_codebooks = int(num_codebooks)
        self.label = label
        self.is_random_init = bool(is_random_init)
        self.chunk_seconds = float(chunk_seconds)
        self.weights_path = weights_path
        self.weights_sha256 = weights_sha256
        self._enc_plan: StackPlan | None = None
        self._dec_plan: StackPlan | None = None

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, codec_cfg: CodecConfig, num_codebooks: int, codebook_size: int = 1024,
                    device: str | torch.device = "cpu") -> "AudioCodec":
        """Random-init (``codec_cfg.random_init``) or the real DAC from the local weights store."""
        codec_cfg.validate()
        if codec_cfg.random_init:
            model = build_random_dac(codec_cfg, num_codebooks, codebook_size)
            codec = cls(model, num_codebooks=num_codebooks, label=RANDOM_INIT_LABEL, is_random_init=True,
                        chunk_seconds=codec_cfg.chunk_seconds, device=device)
        else:
            origin = DAC_RELEASE_URLS.get(codec_cfg.variant) or TRAINED_VARIANTS.get(codec_cfg.variant)
            if origin is None:
                raise CodecLoadError(f"codec.variant {codec_cfg.variant!r} unknown; choose from "
                                     f"{sorted(DAC_RELEASE_URLS) + sorted(TRAINED_VARIANTS)}")
            if not codec_cfg.weights_path:
                raise CodecLoadError(
                    f"codec.weights_path is not set (and codec.random_init is false): set it to the local copy of {origin}")
            what = f"DAC {codec_cfg.variant} codec"
            path = resolve_weights(codec_cfg.weights_path, sha256=codec_cfg.weights_sha256, what=what, origin=origin)
            model = load_dac_weights(path)
            sha = codec_cfg.weights_sha256 or sha256_file(path)
            label = f"DAC {codec_cfg.variant} ({path.name}, sha256 {sha[:12]})"
            codec = cls(model, num_codebooks=num_codebooks, label=label, is_random_init=False,
                        chunk_seconds=codec_cfg.chunk_seconds, device=device, weights_path=path, weights_sha256=sha)
        if codec.sample_rate != codec_cfg.sample_rate:
            raise CodecLoadError(f"{codec.label}: sample rate {codec.sample_rate} != codec.sample_rate {codec_cfg.sample_rate}")
        if abs(codec.frame_rate - codec_cfg.frame_rate) > 1e-6:
            raise CodecLoadError(f"{codec.label}: frame rate {codec.frame_rate} != codec.frame_rate {codec_cfg.frame_rate}")
        if codec.codebook_size != codebook_size:
            raise CodecLoadError(f"{codec.label}: codebook size {codec.codebook_size} != audio.codebook_size {codebook_size}")
        return codec

    @classmethod
    def from_model_config(cls, cfg, device: str | torch.device = "cpu") -> "AudioCodec":
        """From a whole ``UniMoEConfig`` (its ``codec`` and ``audio`` sections)."""
        return cls.from_config(cfg.codec, cfg.audio.num_codebooks, cfg.audio.codebook_size, device=device)

    def save(self, path: str | Path) -> Path:
        """Write the underlying DAC in DAC's own file format (``DAC.save``), atomically."""
        with atomic_path(path) as tmp:
            self.model.save(str(tmp), package=False)
        return Path(path)

    save_random_init = save

    def to(self, device: str | torch.device) -> "AudioCodec":
        self.model.to(device)
        return self

    # ---- properties ----------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    @property
    def hop_length(self) -> int:
        return int(np.prod(self.model.encoder_rates))

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def num_codebooks(self) -> int:
        return self._num_codebooks

    @property
    def codebook_size(self) -> int:
        return int(self.model.codebook_size)

    def num_frames(self, num_samples: int) -> int:
        """Frames for ``num_samples`` at the codec rate: ``ceil(num_samples / hop)``."""
        return -(-int(num_samples) // self.hop_length)

    def info(self) -> dict:
        """Provenance to record next to anything made with this codec."""
        return {"label": self.label, "is_random_init": self.is_random_init, "sample_rate": self.sample_rate,
                "hop_length": self.hop_length, "frame_rate": self.frame_rate, "num_codebooks": self.num_codebooks,
                "codebook_size": self.codebook_size,
                "weights_path": None if self.weights_path is None else str(self.weights_path),
                "weights_sha256": self.weights_sha256}

    def __repr__(self) -> str:
        return (f"AudioCodec({self.label}, {self.sample_rate} Hz, hop {self.hop_length}, "
                f"{self.num_codebooks} x {self.codebook_size} codes)")

    # ---- plans ----------------------------------------------------------------------------------------
    def _encoder_plan(self) -> StackPlan:
        if self._enc_plan is None:
            dev, hop = self.device, self.hop_length
            self._enc_plan = plan_stack(self.model.encoder, lambda n: torch.zeros(1, 1, n * hop, device=dev))
        return self._enc_plan

    def _decoder_plan(self) -> StackPlan:
        if self._dec_plan is None:
            dev, dim = self.device, self.model.latent_dim
            self._dec_plan = plan_stack(self.model.decoder, lambda n: torch.zeros(1, dim, n, device=dev))
            if self._dec_plan.out_a != self.hop_length:
                raise CodecLoadError(f"codec decoder makes {self._dec_plan.out_a} samples per frame, expected {self.hop_length}")
        return self._dec_plan

    def _chunk_frames(self) -> int:
        return max(1, int(self.chunk_seconds * self.sample_rate) // self.hop_length)

    # ---- encode ---------------------------------------------------------------------------------------
    def prepare(self, wav: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Mono float32 at the codec rate (what ``encode`` feeds the network, before hop padding)."""
        return resample(to_mono(wav), int(sample_rate), self.sample_rate)

    def encode(self, wavs: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
               sample_rate: int | Sequence[int], *, batch_size: int = 8) -> list[torch.Tensor]:
        """Codes for each waveform: ``LongTensor[num_codebooks, ceil(n_i / hop)]`` on the CPU.

        ``wavs``: a list of 1-D ``[samples]`` or 2-D ``[channels, samples]`` arrays/tensors (a single
        1-D array is one item); ``sample_rate``: their rate (one for all, or one per item);
        ``batch_size``: windows (of at most ``chunk_seconds`` plus context) per forward pass.
        """
        if isinstance(wavs, (np.ndarray, torch.Tensor)):
            if wavs.ndim != 1:
                raise ValueError("encode takes a list of waveforms (or one 1-D waveform); got a "
                                 f"{wavs.ndim}-D array — wrap a [channels, samples] array in a list")
            wavs = [wavs]
        rates = [sample_rate] * len(wavs) if isinstance(sample_rate, (int, np.integer)) else list(sample_rate)
        if len(rates) != len(wavs):
            raise ValueError(f"{len(wavs)} waveforms but {len(rates)} sample rates")
        hop, chunk = self.hop_length, self._chunk_frames()
        plan = self._encoder_plan()
        audio = [self.prepare(w, sr) for w, sr in zip(wavs, rates)]
        frames = [self.num_frames(len(a)) for a in audio]
        padded = [np.pad(a, (0, f * hop - len(a))) for a, f in zip(audio, frames)]

        jobs = [(i, *w) for i, f in enumerate(frames) if f > 0 for w in windows(f, chunk, plan.context_units)]
        jobs.sort(key=lambda j: j[2] - j[1], reverse=True)  # similar lengths share a batch
        pieces: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in range(len(audio))}
        with torch.inference_mode():
            for s in range(0, len(jobs), batch_size):
                batch = jobs[s:s + batch_size]
                units = torch.tensor([we - ws for _, ws, we, _, _ in batch], device=self.device)
                x = torch.zeros(len(batch), 1, int(units.max()) * hop, device=self.device)
                for row, (i, ws, we, _, _) in enumerate(batch):
                    x[row, 0, :(we - ws) * hop] = torch.from_numpy(padded[i][ws * hop:we * hop])
                with masked_convs(plan, units):
                    z = self.model.encoder(x)
                _, codes, _, _, _ = self.model.quantizer(z, self.num_codebooks)
                codes = codes[:, :self.num_codebooks].to("cpu", torch.long)
                for row, (i, ws, _, cs, ce) in enumerate(batch):
                    pieces[i].append((cs, codes[row, :, cs - ws:ce - ws]))
        out = []
        for i in range(len(audio)):
            parts = [c for _, c in sorted(pieces[i], key=lambda p: p[0])]
            c = torch.cat(parts, dim=-1) if parts else torch.zeros(self.num_codebooks, 0, dtype=torch.long)
            assert c.shape[-1] == frames[i], (c.shape, frames[i])
            out.append(c.contiguous())
        return out

    # ---- decode ---------------------------------------------------------------------------------------
    def decode(self, codes: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray], *,
               batch_size: int = 8) -> list[np.ndarray]:
        """Waveforms (float32 mono at ``sample_rate``, exactly ``T_i * hop`` samples) from codes
        ``[B, K, T]`` or a list of ``[K, T_i]`` (``K == num_codebooks``; values in ``[0, codebook_size)``
        — strip EOS/PAD/BOS first)."""
        if isinstance(codes, (torch.Tensor, np.ndarray)):
            codes = torch.as_tensor(codes)
            if codes.dim() == 2:
                raise ValueError("decode takes [B, K, T] or a list of [K, T]; got one 2-D tensor (wrap it in a list)")
            codes = list(codes)
        items = [torch.as_tensor(c).to("cpu", torch.long) for c in codes]
        for n, c in enumerate(items):
            if c.dim() != 2 or c.shape[0] != self.num_codebooks:
                raise ValueError(f"codes[{n}] has shape {tuple(c.shape)}; expected [{self.num_codebooks}, T]")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
                raise ValueError(f"codes[{n}] has values outside [0, {self.codebook_size}) "
                                 f"(min {int(c.min())}, max {int(c.max())}); strip EOS/PAD/BOS before decoding")
        hop, chunk = self.hop_length, self._chunk_frames()
        plan = self._decoder_plan()
        jobs = [(i, *w) for i, c in enumerate(items) if c.shape[-1] > 0
                for w in windows(c.shape[-1], chunk, plan.context_units)]
        jobs.sort(key=lambda j: j[2] - j[1], reverse=True)
        pieces: dict[int, list[tuple[int, np.ndarray]]] = {i: [] for i in range(len(items))}
        with torch.inference_mode():
            for s in range(0, len(jobs), batch_size):
                batch = jobs[s:s + batch_size]
                units = torch.tensor([we - ws for _, ws, we, _, _ in batch], device=self.device)
                c = torch.zeros(len(batch), self.num_codebooks, int(units.max()), dtype=torch.long, device=self.device)
                for row, (i, ws, we, _, _) in enumerate(batch):
                    c[row, :, :we - ws] = items[i][:, ws:we]
                z, _, _ = self.model.quantizer.from_codes(c)
                with masked_convs(plan, units):
                    y = self.model.decoder(z)[:, 0].float().cpu().numpy()
                for row, (i, ws, _, cs, ce) in enumerate(batch):
                    valid = plan.out_a * (int(units[row])) + plan.out_b
                    pieces[i].append((cs, y[row, (cs - ws) * hop:min((ce - ws) * hop, valid)]))
        out = []
        for i, c in enumerate(items):
            parts = [p for _, p in sorted(pieces[i], key=lambda p: p[0])]
            wav = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            n = c.shape[-1] * hop
            wav = wav[:n] if len(wav) >= n else np.pad(wav, (0, n - len(wav)))
            out.append(wav.astype(np.float32, copy=False))
        return out


# ---- opening a codec by name or file, and resynthesising folders ------------------------------------

# What ``resynthesize_folder`` reads (soundfile / libsndfile decodes all four).
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def open_codec(spec: str | Path, num_codebooks: int | None = None, device: str | torch.device = "cpu") -> AudioCodec:
    """``"demo"`` (the shipped demo codec) or the path of any DAC weights file (a release ``.pth`` or a
    ``.safetensors`` from ``unimoe codec train``). ``num_codebooks``: how many of the model's codebooks
    to use (default: all of them, the model's own ``n_codebooks``).

    Raises ``MissingWeightsError`` naming the file (and, for the demo codec, ``make demo-codec``) when it
    does not exist, ``CodecLoadError`` when it is not a loadable DAC file."""
    from unimoe.io import BUILTIN_PREFIX, MissingWeightsError, builtin_asset

    if str(spec) == "demo":
        variant = "demo"
        path = builtin_asset(DEMO_CODEC_WEIGHTS[len(BUILTIN_PREFIX):])
        if not path.is_file():
            raise MissingWeightsError(
                f"the demo codec {path} does not exist yet: build it with `make demo-codec` (it trains the codec on "
                "the demo corpus with `unimoe codec train --config configs/codec/demo.yaml`), or pass the path of "
                "another DAC weights file")
    else:
        variant, path = "file", Path(spec)
        if not path.is_file():
            raise MissingWeightsError(f"codec weights file {path} not found (pass `demo` or a DAC .pth/.safetensors file)")
    model = load_dac_weights(path)
    sha = sha256_file(path)
    k = int(num_codebooks) if num_codebooks is not None else int(model.n_codebooks)
    return AudioCodec(model, num_codebooks=k, label=f"DAC {variant} ({path.name}, sha256 {sha[:12]})",
                      is_random_init=False, device=device, weights_path=path.resolve(), weights_sha256=sha)


def codes_dtype(codebook_size: int) -> np.dtype:
    """int16 codes (int32 when ``codebook_size > 32767``), as the token shards store them."""
    return np.dtype(np.int16 if codebook_size <= 32767 else np.int32)


def _output_names(files: Sequence[Path], in_dir: Path) -> dict[Path, str]:
    """Output name (without suffix) per input: its stem, unless two inputs share a stem; then each of those
    is named by its path under ``in_dir`` with ``/`` -> ``__`` (``a/x.wav`` -> ``a__x``), plus
    ``__<ext>`` when that still collides (``x.wav`` and ``x.flac`` in one folder). ValueError if names
    still collide."""
    by_stem: dict[str, list[Path]] = {}
    for f in files:
        by_stem.setdefault(f.stem, []).append(f)
    names = {}
    for stem, group in by_stem.items():
        for f in group:
            if len(group) == 1:
                names[f] = stem
                continue
            rel = f.relative_to(in_dir).with_suffix("")
            name = "__".join(rel.parts)
            if sum(g.relative_to(in_dir).with_suffix("") == rel for g in group) > 1:
                name += "__" + f.suffix.lstrip(".").lower()
            names[f] = name
    seen: dict[str, Path] = {}
    for f, n in names.items():
        if n in seen:
            raise ValueError(f"output name {n!r} would be written for both {seen[n]} and {f}; rename one of them")
        seen[n] = f
    return names


def resynthesize_folder(codec: AudioCodec, in_dir: str | Path, out_dir: str | Path, *, progress: bool = True,
                        log=None) -> dict:
    """Encode and decode every audio file under ``in_dir`` (recursive; .wav/.flac/.ogg/.mp3, files under
    ``out_dir`` skipped): writes ``out_dir/<name>.wav`` (mono, the codec rate, PCM 16-bit, trimmed to the
    input's length at that rate) and ``out_dir/<name>.codes.npy`` (``[num_codebooks, frames]``,
    :func:`codes_dtype`), both atomically, and ``out_dir/resynth.json`` (codec info, input -> output,
    failures). ``<name>`` is the stem; inputs sharing a stem get path-derived names (``_output_names``).

    A file that cannot be read or coded is reported (``log``, and ``failed`` in the result) and the rest
    are processed. Returns ``{"codec", "written": [{input, wav, codes, frames}], "failed": [{input, error}]}``.
    """
    from tqdm.auto import tqdm

    from unimoe.common.audio import load_audio, save_wav
    from unimoe.common.files import atomic_write_json

    in_dir, out_dir = Path(in_dir).resolve(), Path(out_dir).resolve()
    if not in_dir.is_dir():
        raise FileNotFoundError(f"input folder {in_dir} not found")
    files = sorted(p for p in in_dir.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()
                   and not p.is_relative_to(out_dir))
    names = _output_names(files, in_dir)
    dtype = codes_dtype(codec.codebook_size)
    written, failed = [], []
    for f in tqdm(files, desc="codec resynth", unit="file", disable=not progress):
        try:
            wav, sr = load_audio(f)
            x = codec.prepare(wav, sr)
            if x.size == 0:
                raise ValueError("no samples")
            if not np.isfinite(x).all():
                raise ValueError("NaN or infinite samples")
            codes = codec.encode([x], codec.sample_rate)[0]
            y = codec.decode([codes])[0][:len(x)]
            wav_out, codes_out = out_dir / f"{names[f]}.wav", out_dir / f"{names[f]}.codes.npy"
            with atomic_path(codes_out) as tmp, open(tmp, "wb") as fh:
                np.save(fh, codes.numpy().astype(dtype))
            save_wav(wav_out, y, codec.sample_rate)
        except Exception as e:  # noqa: BLE001 - one bad file is reported, the others are still processed
            failed.append({"input": str(f), "error": f"{type(e).__name__}: {e}"})
            if log is not None:
                log(f"codec resynth: {f}: {type(e).__name__}: {e}")
            continue
        written.append({"input": str(f), "wav": str(wav_out), "codes": str(codes_out), "frames": int(codes.shape[-1])})
    result = {"codec": codec.info(), "input_dir": str(in_dir), "written": written, "failed": failed}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "resynth.json", result)
    return result
