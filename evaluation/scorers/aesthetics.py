"""Meta's audiobox-aesthetics: the paper's PC / PQ / CE / CU music (and speech) quality axes.

Protocol (the released ``audiobox_aesthetics.infer.AesPredictor``): audio down-mixed to mono and
resampled to 16 kHz, cut into 10 s windows with a 10 s hop; the last window is zero-padded to 10 s
and its padding masked out of the WavLM encoder; each window gets one prediction per axis (the
model's normalised output mapped back through the checkpoint's ``target_transform``); the clip
score is the mean of its windows weighted by their unpadded length (a 23 s clip: windows of 10, 10
and 3 s weighted 10:10:3).

Weights: ``checkpoint.pt`` from https://huggingface.co/facebook/audiobox-aesthetics, a dict
``{"state_dict": {"model.<param>": tensor}, "model_cfg": {...}, "target_transform": {axis: {"mean",
"std"}}}``. The package's own loader calls ``torch.load`` without ``weights_only``; this module reads
the dict itself with ``weights_only=True`` (only tensors and plain containers are accepted) and
builds ``AesMultiOutput`` from it exactly as ``AesPredictor.setup_model`` does. Nothing is ever
downloaded (``initialize_predictor(None)`` would fetch from the hub; this path never calls it).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from evaluation.scorers.base import AudioItem, Scorer, ScorerUnavailable, WeightsFileModel, load_tensor_file, register
from unimoe.common.audio import resample, to_mono
from unimoe.io import resolve_weights, sha256_file

AXES: tuple[str, ...] = ("CE", "CU", "PC", "PQ")
SAMPLE_RATE = 16_000
WINDOW_S = 10
HOP_S = 10
WHAT = "audiobox-aesthetics"
ORIGIN = "https://huggingface.co/facebook/audiobox-aesthetics (checkpoint.pt)"
DEFAULT_WEIGHTS = "audiobox-aesthetics/checkpoint.pt"
# The keyword arguments AesPredictor.setup_model takes from ckpt["model_cfg"].
MODEL_CFG_KEYS: tuple[str, ...] = (
    "proj_num_layer",
    "proj_ln",
    "proj_act_fn",
    "proj_dropout",
    "nth_layer",
    "use_weighted_layer_sum",
    "precision",
    "normalize_embed",
    "output_dim",
)


def make_windows(
    wav: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    window_s: float = WINDOW_S,
    hop_s: float = HOP_S,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a mono clip into fixed windows: ``(windows [n, win], masks [n, win] bool, weights [n])``.

    Window starts are ``0, hop, 2*hop, ...`` while ``start < len(wav)``; a window shorter than
    ``win`` is zero-padded, its mask is True on the real samples only, and its weight is its real
    length over ``win`` (so full windows weigh 1). An empty clip gives no windows.
    """
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"make_windows expects a 1-D mono clip, got shape {wav.shape}")
    win = round(window_s * sample_rate)
    hop = round(hop_s * sample_rate)
    starts = list(range(0, wav.shape[0], hop))
    windows = np.zeros((len(starts), win), dtype=np.float32)
    masks = np.zeros((len(starts), win), dtype=bool)
    weights = np.zeros(len(starts), dtype=np.float64)
    for i, s in enumerate(starts):
        seg = wav[s : s + win]
        windows[i, : seg.shape[0]] = seg
        masks[i, : seg.shape[0]] = True
        weights[i] = seg.shape[0] / win
    return windows, masks, weights


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an audiobox-aesthetics ``checkpoint.pt`` with ``weights_only=True`` and check its layout."""
    ckpt = load_tensor_file(path, WHAT, "a plain dict {'state_dict', 'model_cfg', 'target_transform'} of "
                                        "tensors/numbers/strings")
    missing = [
        k
        for k in ("state_dict", "model_cfg", "target_transform")
        if not isinstance(ckpt, dict) or k not in ckpt
    ]
    if missing:
        raise ScorerUnavailable(
            f"{WHAT}: {path} is not an audiobox-aesthetics checkpoint (missing keys {missing})"
        )
    cfg_missing = [k for k in MODEL_CFG_KEYS if k not in ckpt["model_cfg"]]
    axes_missing = [a for a in AXES if a not in ckpt["target_transform"]]
    if cfg_missing or axes_missing:
        raise ScorerUnavailable(
            f"{WHAT}: {path}: model_cfg lacks {cfg_missing}, target_transform lacks {axes_missing}"
        )
    return ckpt


def build_model(ckpt: dict[str, Any]) -> torch.nn.Module:
    """``AesMultiOutput`` from a checkpoint dict, as ``AesPredictor.setup_model`` builds it.

    (The package computes ``enable_autocast`` after replacing ``precision`` by a torch dtype, so its
    autocast is never enabled whatever ``model_cfg["precision"]`` says: inference runs in float32,
    here as in the reference predictor.)
    """
    from audiobox_aesthetics.model.aes import AesMultiOutput

    kwargs = {k: ckpt["model_cfg"][k] for k in MODEL_CFG_KEYS}
    target_transform = {
        a: {
            "mean": float(ckpt["target_transform"][a]["mean"]),
            "std": float(ckpt["target_transform"][a]["std"]),
        }
        for a in AXES
    }
    model = AesMultiOutput(**kwargs, target_transform=target_transform)
    state_dict = {re.sub(r"^model\.", "", k): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("audiobox_aesthetics")
    except PackageNotFoundError:
        return "unknown"


class AudioboxAesthetics(WeightsFileModel, Scorer):
    """Per-clip CE / CU / PC / PQ (higher is better), length-weighted over 10 s windows."""

    name = "audiobox_aesthetics"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metrics: ClassVar[dict[str, str]] = {a: "higher" for a in AXES}

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        weights_path: Path,
        weights_sha256: str,
        batch_size: int = 4,
        device: str | torch.device = "cpu",
    ) -> None:
        self.init_model(model, weights_path=weights_path, weights_sha256=weights_sha256, batch_size=batch_size,
                        device=device)
        self.package_version = _package_version()
        self._transform = {
            a: (float(model.target_transform[a]["mean"]), float(model.target_transform[a]["std"]))
            for a in AXES
        }

    @property
    def version(self) -> str:
        return f"audiobox_aesthetics=={self.package_version}+sha256:{self.weights_sha256[:12]}"

    def protocol_info(self) -> dict[str, Any]:
        return dict(
            **self.weights_info(),
            protocol=f"{SAMPLE_RATE} Hz mono, {WINDOW_S} s windows, {HOP_S} s hop, last window zero-padded "
            "and masked, clip = length-weighted mean of windows",
        )

    def predict_windows(self, windows: torch.Tensor, masks: torch.Tensor) -> dict[str, np.ndarray]:
        """Scores of a batch of windows (``[n, samples]`` float, ``[n, samples]`` bool mask of real
        samples) on each axis's own scale: ``{axis: float64 [n]}``."""
        with torch.inference_mode():
            preds = self.model(
                {"wav": windows[:, None, :].to(self.device), "mask": masks[:, None, :].to(self.device)}
            )
        out = {}
        for a in AXES:
            mean, std = self._transform[a]
            out[a] = preds[a].detach().float().cpu().numpy().astype(np.float64) * std + mean
        return out

    def score_windows(self, wavs_16k: list[np.ndarray]) -> list[dict[str, float]]:
        """Window, predict (``batch_size`` windows at a time) and aggregate 16 kHz mono clips."""
        per_clip = [make_windows(w) for w in wavs_16k]
        owners = np.concatenate(
            [np.full(len(wt), i) for i, (_, _, wt) in enumerate(per_clip)] or [np.zeros(0, int)]
        )
        weights = np.concatenate([wt for _, _, wt in per_clip] or [np.zeros(0)])
        preds = {a: np.empty(len(owners)) for a in AXES}
        if owners.size:
            windows = np.concatenate([w for w, _, _ in per_clip])
            masks = np.concatenate([m for _, m, _ in per_clip])
            for s in range(0, len(owners), self.batch_size):
                got = self.predict_windows(
                    torch.from_numpy(windows[s : s + self.batch_size]),
                    torch.from_numpy(masks[s : s + self.batch_size]),
                )
                for a in AXES:
                    preds[a][s : s + self.batch_size] = got[a]
        rows = []
        for i in range(len(wavs_16k)):
            sel = owners == i
            if not sel.any():
                rows.append({a: math.nan for a in AXES})
                continue
            w = weights[sel]
            rows.append({a: float((preds[a][sel] * w).sum() / w.sum()) for a in AXES})
        return rows

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        wavs = [resample(to_mono(it.wav), int(it.sample_rate), SAMPLE_RATE) for it in items]
        return self.score_windows(wavs)


@register("audiobox_aesthetics", AudioboxAesthetics)
def create(
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    *,
    batch_size: int = 4,
    device: str = "cpu",
) -> AudioboxAesthetics:
    """The audiobox-aesthetics scorer from ``checkpoint.pt`` in the local weights store.

    ``weights_path`` is relative to the store ($UNIMOE_WEIGHTS) or absolute; ``sha256`` (from config)
    is verified when given and recorded either way.
    """
    path = resolve_weights(weights_path, sha256=sha256, what=WHAT, origin=ORIGIN)
    try:
        import audiobox_aesthetics  # noqa: F401
    except ImportError as e:
        raise ScorerUnavailable(f"{WHAT}: the audiobox_aesthetics package is not installed ({e})") from e
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    model = build_model(load_checkpoint(path))
    return AudioboxAesthetics(
        model, weights_path=path, weights_sha256=digest, batch_size=batch_size, device=device
    )
