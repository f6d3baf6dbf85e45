"""FAD with OpenL3 embeddings (the paper's FAD): a set-level scorer.

Protocol (stable-audio-metrics ``src/openl3_fd.py`` as used for MusicCaps: ``channels=2``,
``samplingrate=44100``, ``content_type="music"``, ``openl3_hop_size=0.5``):

1. peak-normalise the clip to -1 dBFS (over all channels, as ``pyloudnorm.normalize.peak``);
2. resample to the evaluation bandwidth, 44.1 kHz, with soxr (HQ, as ``soxr.resample``'s default);
3. OpenL3 ``mel256`` / ``music`` / 512-d on each channel: OpenL3 resamples to its 48 kHz with
   resampy ``kaiser_best``, pads 0.5 s in front (``center=True``), cuts 1 s windows every 0.5 s
   (zero-padding the end to a whole hop) and embeds each window;
4. stereo: the L and R frame embeddings are concatenated (1024-d); mono: the mono embedding is
   used for both halves (stable-audio-metrics' "fake stereo"); more than two channels is an error;
5. FAD = Fréchet distance between Gaussians fitted to ALL frame embeddings of each set, every 0.5 s
   frame of every clip one sample (``evaluation.metrics.frechet_distance_from_frames``), as
   stable-audio-metrics does -- not to one mean embedding per clip, which gives fewer, smoother
   samples and a number that is not comparable with published FADs.

The OpenL3 network is ``torchopenl3``'s PyTorch port of the Keras model (its ``PytorchOpenl3``
module and its released weights ``torchopenl3_mel256_music_512.pth.tar``; the port reproduces
openl3's Kapre spectrogram and layers; its authors report agreement with openl3 to a small
tolerance, not bit-exactness). Preprocessing uses torchopenl3's own framing with the resampy
sampler (the one openl3 uses); resampy 0.2 needs ``pkg_resources`` (``setuptools<81``).

**Set statistics.** :meth:`OpenL3FAD.embed` returns each item's ``[frames, 1024]`` array (a failed
item: ``[0, 1024]``, with the reason in ``last_failures``), so the runner can cache the frames of every
clip, reference clips included; :meth:`compare` pools the frames of each set. The reference Gaussian is
cached per reference set (the same reference is compared with every seed's generations), and
:meth:`reference_stats` / :meth:`compare_to_stats` take stored ``(mu, sigma)`` as stable-audio-metrics'
``load_ref_embeddings`` does. ``pooling="item-mean"`` (one mean embedding per item, this project's
earlier number) is kept as an option; ``version`` and ``info()["pooling"]`` record which one a number is.

**Stereo.** The runner passes set-level scorers the clips' own channels (no downmix), so a stereo
reference takes the L‖R path; mono generations are duplicated (step 4).
"""

from __future__ import annotations

import importlib.metadata
import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from evaluation.scorers.base import (AudioItem, ScorerUnavailable, SetScorer, WeightsFileModel,
                                     load_state_dict_file, register)
from unimoe.common.audio import as_channels_first
from unimoe.io import resolve_weights, sha256_file

log = logging.getLogger(__name__)

WHAT = "OpenL3 (torchopenl3 mel256/music/512)"
WEIGHTS_FILE = "torchopenl3_mel256_music_512.pth.tar"
DEFAULT_WEIGHTS = f"openl3/{WEIGHTS_FILE}"
ORIGIN = f"https://github.com/torchopenl3/torchopenl3-models/raw/master/{WEIGHTS_FILE}"
INPUT_REPR = "mel256"
CONTENT_TYPE = "music"
EMBEDDING_SIZE = 512
EVAL_SAMPLE_RATE = 44_100  # stable-audio-metrics' MusicCaps setting
HOP_SIZE = 0.5  # seconds (OpenL3's window is 1 s)
POOLINGS = ("frames", "item-mean")  # frames: stable-audio-metrics; item-mean: this project's earlier FAD
PEAK_DB = -1.0
OPENL3_SR = 48_000
# Deterministic spectrogram constants of the port (computed from librosa at construction); a weights
# file without them is still complete.
_SPEC_BUFFERS = ("speclayer.dft_real_kernels", "speclayer.dft_imag_kernels", "speclayer.mel_basis")
_LOCK = threading.Lock()


def _import_torchopenl3() -> tuple[Any, Any]:
    """``(torchopenl3.models, torchopenl3.utils)``; resampy 0.2 imports pkg_resources (deprecated)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import torchopenl3.models as models
            import torchopenl3.utils as utils
    except ImportError as e:
        raise ScorerUnavailable(
            f"{WHAT}: torchopenl3 (or its resampy/pkg_resources dependency) cannot be imported ({e}); "
            "install torchopenl3 and setuptools<81 (scripts/requirements.txt)"
        ) from e
    return models, utils


def build_openl3() -> torch.nn.Module:
    """The port's mel256 / 512-d architecture with random weights (content type does not change it)."""
    models, _ = _import_torchopenl3()
    with warnings.catch_warnings():
        # librosa notes empty mel filters at 256 bands / 2048-point FFT: inherent to OpenL3's mel256 input
        warnings.simplefilter("ignore", UserWarning)
        return models.PytorchOpenl3(content_type=CONTENT_TYPE, input_repr=INPUT_REPR, embedding_size=EMBEDDING_SIZE)


def load_openl3_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    sd = load_state_dict_file(path, WHAT, "state_dict")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ScorerUnavailable(f"{WHAT}: {path} is not a state dict of tensors")
    return sd


def peak_normalise(x: np.ndarray, peak_db: float = PEAK_DB) -> np.ndarray:
    """Scale so the largest absolute sample (any channel) is ``peak_db`` dBFS (pyloudnorm's ``peak``)."""
    m = float(np.max(np.abs(x))) if x.size else 0.0
    if m <= 0.0:
        raise ValueError("silent clip: peak normalisation is undefined")
    return (x * (10.0 ** (peak_db / 20.0) / m)).astype(np.float32)


def soxr_resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """``[C, n]`` -> ``[C, m]`` with soxr (HQ), as ``soxr.resample`` does by default."""
    if sr_in == sr_out:
        return np.ascontiguousarray(x, dtype=np.float32)
    import soxr

    y = soxr.resample(np.ascontiguousarray(x.T, dtype=np.float32), sr_in, sr_out)
    return np.ascontiguousarray(np.atleast_2d(y.T), dtype=np.float32).reshape(x.shape[0], -1)


class OpenL3FAD(WeightsFileModel, SetScorer):
    """OpenL3 (mel256, music, 512-d; L‖R 1024-d) embeddings and the Fréchet distance between sets."""

    name = "openl3_fad"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metrics: ClassVar[dict[str, str]] = {"fad": "lower"}
    needs_reference = True

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        weights_path: Path,
        weights_sha256: str,
        eval_sample_rate: int = EVAL_SAMPLE_RATE,
        hop_size: float = HOP_SIZE,
        batch_size: int = 16,
        pooling: str = "frames",
        device: str | torch.device = "cpu",
    ) -> None:
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.init_model(model, weights_path=weights_path, weights_sha256=weights_sha256, batch_size=batch_size,
                        device=device)
        if not 0 < eval_sample_rate <= OPENL3_SR:
            raise ValueError(f"eval_sample_rate must be in (0, {OPENL3_SR}], got {eval_sample_rate}")
        self.eval_sample_rate = int(eval_sample_rate)
        self.hop_size = float(hop_size)
        self.pooling = pooling
        self.last_failures: dict[str, str] = {}
        self._ref_cache: tuple[list[Any], tuple[tuple[np.ndarray, np.ndarray] | None, int]] | None = None
        _, self._utils = _import_torchopenl3()

    # ---- identity ----------------------------------------------------------------------------------

    @property
    def version(self) -> str:
        return (
            f"torchopenl3-{importlib.metadata.version('torchopenl3')}+{INPUT_REPR}-{CONTENT_TYPE}-"
            f"{EMBEDDING_SIZE}+sha256:{self.weights_sha256[:12]}+pool:{self.pooling}"
        )

    def protocol_info(self) -> dict[str, Any]:
        return dict(
            **self.weights_info(),
            input_repr=INPUT_REPR,
            content_type=CONTENT_TYPE,
            embedding_size=EMBEDDING_SIZE,
            channels=2,
            eval_sample_rate=self.eval_sample_rate,
            hop_size=self.hop_size,
            peak_db=PEAK_DB,
            pooling=self.pooling,
            protocol="stable-audio-metrics openl3_fd: peak -1 dB, soxr to eval rate, OpenL3 per channel "
            "(resampy kaiser_best to 48 kHz, centred 1 s windows, 0.5 s hop), stereo as L||R, mono duplicated, "
            + ("Frechet distance of Gaussians fitted to all frames of each set" if self.pooling == "frames"
               else "Frechet distance of Gaussians fitted to one mean embedding per item (NOT the reference protocol)"),
        )

    # ---- embeddings --------------------------------------------------------------------------------

    def _frames(self, wav_eval: np.ndarray) -> np.ndarray:
        """OpenL3 frame embeddings ``[T, 512]`` of one mono channel at ``eval_sample_rate``."""
        x = np.asarray(wav_eval, np.float64)
        if self.eval_sample_rate != OPENL3_SR:
            # openl3's resampler (torchopenl3's "resampy" sampler calls the same, plus a log line)
            import resampy

            x = resampy.resample(x, sr_orig=self.eval_sample_rate, sr_new=OPENL3_SR, filter="kaiser_best")
        # torchopenl3's framing at 48 kHz (openl3's: centre pad, end pad to a whole hop, 1 s windows)
        x = self._utils.preprocess_audio_batch(
            torch.from_numpy(np.ascontiguousarray(x)).view(1, -1), OPENL3_SR, center=True, hop_size=self.hop_size
        ).to(torch.float32)
        out = []
        with torch.inference_mode():
            for s in range(0, x.shape[0], self.batch_size):
                out.append(self.model(x[s : s + self.batch_size].to(self.device)).float().cpu())
        return torch.cat(out).numpy()

    def item_frames(self, item: AudioItem) -> np.ndarray:
        """``[T, 1024]`` L‖R frame embeddings of one item (raises on unusable audio)."""
        wav = as_channels_first(item.wav)
        if wav.shape[-1] == 0:
            raise ValueError("empty audio")
        if not np.isfinite(wav).all():
            raise ValueError("NaN or infinite samples")
        if wav.shape[0] > 2:
            raise ValueError(f"{wav.shape[0]} channels; the protocol takes mono or stereo")
        x = soxr_resample(peak_normalise(wav), int(item.sample_rate), self.eval_sample_rate)
        left = self._frames(x[0])
        right = left if x.shape[0] == 1 else self._frames(x[1])  # mono: "fake stereo"
        return np.concatenate([left, right], axis=1)

    def frame_embeddings(self, items: list[AudioItem]) -> list[np.ndarray | None]:
        """Per item ``[T_i, 1024]`` frame embeddings (None where the item failed; see ``last_failures``)."""
        self.last_failures = {}
        out: list[np.ndarray | None] = []
        for it in items:
            try:
                out.append(self.item_frames(it))
            except Exception as e:  # one bad clip never stops the batch
                reason = f"{type(e).__name__}: {e}"
                self.last_failures[str(it.id)] = reason
                log.warning("%s: item %r not embedded (NaN): %s", self.name, it.id, reason)
                out.append(None)
        return out

    def embed(self, items: list[AudioItem]) -> list[np.ndarray]:
        """Per item its ``[frames, 1024]`` L‖R frame embeddings; ``[0, 1024]`` for a failed item."""
        empty = np.zeros((0, 2 * EMBEDDING_SIZE), np.float32)
        return [empty if f is None else np.asarray(f, np.float32) for f in self.frame_embeddings(items)]

    # ---- set metrics -------------------------------------------------------------------------------

    def _clips(self, x: Any) -> list[np.ndarray]:
        """The usable per-item arrays of a set, pooled as ``self.pooling`` says: each ``[frames, D]``
        (a 2-D array of item rows counts as one frame per item); failed items (``None``, no frames,
        non-finite values) are left out."""
        out = []
        for e in x:
            if e is None:
                continue
            a = np.atleast_2d(np.asarray(e, np.float64))
            if a.ndim != 2:
                raise ValueError(f"an item's embeddings must be [frames, dims], got shape {a.shape}")
            if a.shape[0] == 0 or not np.isfinite(a).all():
                continue
            out.append(a.mean(axis=0, keepdims=True) if self.pooling == "item-mean" else a)
        return out

    def reference_stats(self, reference: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` of a reference set (per-item frame arrays, or item rows) to store and reuse."""
        from evaluation.metrics import gaussian_stats, pool_frames

        return gaussian_stats(pool_frames(self._clips(reference)))

    def _reference_gaussian(self, reference: Any) -> tuple[tuple[np.ndarray, np.ndarray] | None, int]:
        """``((mu, sigma) or None when under 2 frames, number of frames)`` of a reference set, cached.

        The aggregation compares one reference set with every seed's generations (and each half-sample's
        reference subset with every seed's subset), so its Gaussian is fitted once. The cache is keyed on
        the identity of the caller's per-item arrays and holds them, so their ids cannot be reused by other
        arrays while the entry lives."""
        from evaluation.metrics import gaussian_stats, pool_frames

        entries = list(reference)
        cached = self._ref_cache
        if cached is not None and len(cached[0]) == len(entries) and all(a is b for a, b in zip(cached[0], entries)):
            return cached[1]
        clips = self._clips(entries)
        n = sum(a.shape[0] for a in clips)
        got = (gaussian_stats(pool_frames(clips)) if n >= 2 else None, n)
        self._ref_cache = (entries, got)
        return got

    def compare(self, generated: Any, reference: Any | None) -> dict[str, float]:
        """``{"fad": ...}``: Fréchet distance between Gaussians fitted to all frames of the usable items
        of ``generated`` and of ``reference`` (sequences of per-item ``[frames, D]`` arrays, as
        :meth:`embed` returns them), i.e. ``evaluation.metrics.frechet_distance_from_frames`` with the
        reference Gaussian cached. No reference, or fewer than 2 frames on a side: NaN."""
        from evaluation.metrics import frechet_from_stats, gaussian_stats, pool_frames

        if reference is None:
            return {"fad": math.nan}
        g = self._clips(generated)
        n_g = sum(a.shape[0] for a in g)
        ref_stats, n_r = self._reference_gaussian(reference)
        if n_g < 2 or ref_stats is None:
            log.warning("%s: FAD needs >= 2 frames per set (got %d generated, %d reference)", self.name, n_g, n_r)
            return {"fad": math.nan}
        return {"fad": frechet_from_stats(*gaussian_stats(pool_frames(g)), *ref_stats)}

    def compare_to_stats(self, generated: Any, mu: np.ndarray, sigma: np.ndarray) -> dict[str, float]:
        """FAD of ``generated`` (per-item frames) against stored reference statistics ``(mu, sigma)``."""
        from evaluation.metrics import frechet_from_stats, gaussian_stats, pool_frames

        g = self._clips(generated)
        if sum(a.shape[0] for a in g) < 2:
            return {"fad": math.nan}
        return {"fad": frechet_from_stats(*gaussian_stats(pool_frames(g)), mu, sigma)}


@register("openl3_fad", OpenL3FAD)
def create(
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    *,
    eval_sample_rate: int = EVAL_SAMPLE_RATE,
    hop_size: float = HOP_SIZE,
    batch_size: int = 16,
    pooling: str = "frames",
    device: str = "cpu",
) -> OpenL3FAD:
    """The OpenL3-FAD scorer from torchopenl3's released ``mel256``/``music``/512 weights in the local
    store (``openl3/torchopenl3_mel256_music_512.pth.tar``); ``sha256`` is verified when given and
    recorded either way. ``pooling``: ``"frames"`` (stable-audio-metrics, default) or ``"item-mean"``."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    path = resolve_weights(weights_path, sha256=sha256, what=f"{WHAT} weights", origin=ORIGIN)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    sd = load_openl3_state_dict(path)
    with _LOCK:
        model = build_openl3()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or [k for k in missing if k not in _SPEC_BUFFERS]:
        raise ScorerUnavailable(
            f"{WHAT}: {path} does not fit the mel256/512 architecture (missing {sorted(missing)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]})"
        )
    return OpenL3FAD(
        model,
        weights_path=path,
        weights_sha256=digest,
        eval_sample_rate=eval_sample_rate,
        hop_size=hop_size,
        batch_size=batch_size,
        pooling=pooling,
        device=device,
    )
