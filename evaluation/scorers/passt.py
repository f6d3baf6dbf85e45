"""KL and Inception Score with PaSST AudioSet posteriors (the paper's KL and IS): a set-level scorer.

Posteriors (``embed``), following stable-audio-metrics ``src/passt_kld.py`` (``collect="mean"``):

1. mono (channel mean), resampled to 32 kHz with soxr HQ (what ``librosa.load(sr=32000)`` uses),
   peak-normalised to -1 dBFS;
2. 10 s windows every 5 s: starts ``range(0, max(step, n - step), step)``; a window shorter than
   10 s is zero-padded to 10 s if it holds more than 15 % of 10 s and *skipped* otherwise (the
   reference's comment and audiocraft say "discard"; its code instead feeds that short window to the
   model unpadded). A clip with no usable window (< 1.5 s) gets NaN;
3. PaSST ``passt_s_swa_p16_128_ap476`` (``hear21passt``'s ``get_basic_model(mode="logits")``:
   the same mel front end and wrapper) gives 527 AudioSet logits per window; the logits are averaged
   over the clip's windows, then softmax (not sigmoid), as in MusicGen/audiocraft.

Set metrics (``compare``, from ``evaluation.metrics``):

- ``kl_gen_ref`` (default): mean over paired items of KL(generated ‖ reference + 1e-6), the epsilon on
  the reference and no renormalisation -- stable-audio-metrics ``passt_kld``'s form, the KL of the
  paper's music metric set (FAD-OpenL3, KL-PaSST, CLAP; arXiv 2510.13344). ``kl_direction="ref||gen"``
  gives ``kl_ref_gen`` instead: KL(reference ‖ generated) with clip-and-renormalise (audiocraft's
  direction, this project's earlier default). The metric name carries the direction, and ``version``
  records direction and epsilon. Items whose posterior is NaN on either side, or that have no reference
  audio, are left out; with no reference at all there is no KL metric;
- ``is``: Inception Score of the generated posteriors, ``exp(E[KL(p(y|x) ‖ p(y))])`` over 10
  shuffled splits (mean; ``is_std`` the std); with fewer than 10 items, one split per item. It needs
  no reference, so the scorer does not require reference audio (``needs_reference = False``).

The network is built from the package with ``pretrained=False`` (``get_model`` would otherwise
download) and the released checkpoint ``passt-s-f128-p16-s10-ap.476-swa.pt`` is read from the local
store with ``torch.load(weights_only=True)``, passed through the package's ``checkpoint_filter_fn``
and loaded strictly.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import io
import logging
import math
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import torch

from evaluation.scorers.base import (AudioItem, ScorerUnavailable, SetScorer, WeightsFileModel,
                                     load_state_dict_file, register)
from evaluation.scorers.openl3_fad import peak_normalise, soxr_resample
from unimoe.common.audio import to_mono
from unimoe.io import resolve_weights, sha256_file

log = logging.getLogger(__name__)

WHAT = "PaSST AudioSet tagger"
ARCH = "passt_s_swa_p16_128_ap476"
WEIGHTS_FILE = "passt-s-f128-p16-s10-ap.476-swa.pt"
DEFAULT_WEIGHTS = f"passt/{WEIGHTS_FILE}"
ORIGIN = f"https://github.com/kkoutini/PaSST/releases/download/v0.0.1-audioset/{WEIGHTS_FILE}"
SAMPLE_RATE = 32_000
N_CLASSES = 527
WINDOW_S = 10.0
OVERLAP_S = 5.0
MIN_FRACTION = 0.15
IS_SPLITS = 10
# KL direction -> (metric name, epsilon, how the epsilon is applied)
KL_FORMS: dict[str, tuple[str, float, str]] = {
    "gen||ref": ("kl_gen_ref", 1e-6, "eps-on-ref"),    # stable-audio-metrics passt_kld (default)
    "ref||gen": ("kl_ref_gen", 1e-8, "clip-renorm"),   # audiocraft's direction, the earlier default here
}
KL_DIRECTION = "gen||ref"
# What ``get_model(arch=ARCH)`` passes to the PaSST class (tests build smaller nets of the same class).
PASST_KWARGS: dict[str, Any] = dict(
    img_size=(128, 998), patch_size=16, stride=(10, 10), in_chans=1, num_classes=N_CLASSES,
    embed_dim=768, depth=12, num_heads=12, distilled=True, u_patchout=0, s_patchout_t=0, s_patchout_f=0,
)
_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """hear21passt prints its whole model and per-layer shapes; keep them off stdout."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _import_passt() -> tuple[Any, Any]:
    try:
        with _quiet():
            from hear21passt import base
            from hear21passt.models import passt as passt_mod
    except ImportError as e:
        raise ScorerUnavailable(f"{WHAT}: hear21passt (with timm) cannot be imported ({e})") from e
    return base, passt_mod


def build_passt(net_config: dict[str, Any] | None = None) -> torch.nn.Module:
    """``hear21passt.base.get_basic_model(mode="logits")`` with random weights: the mel front end and
    wrapper of the package, the network from ``get_model(arch, pretrained=False)`` — or, with
    ``net_config``, the PaSST class with those keyword arguments over ``PASST_KWARGS``."""
    base, passt_mod = _import_passt()
    if net_config is None:
        factory = functools.partial(passt_mod.get_model, pretrained=False)
    else:
        kwargs = {**PASST_KWARGS, **net_config}

        def factory(arch: str, **_: Any) -> torch.nn.Module:
            return passt_mod.PaSST(**kwargs)

    with _LOCK, _quiet(), mock.patch.object(base, "get_model_passt", factory):
        model = base.get_basic_model(mode="logits", arch=ARCH)
    return model.eval()


def load_passt_state_dict(path: str | Path, net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The network's state dict from a released checkpoint (flat, or under ``model``/``state_dict``;
    a saved wrapper's ``net.`` prefix is accepted), through the package's ``checkpoint_filter_fn``."""
    _, passt_mod = _import_passt()
    sd = load_state_dict_file(path, WHAT, "state_dict")
    if isinstance(sd.get("model"), dict):
        sd = sd["model"]
    if all(k.startswith("net.") or k == "device_proxy" for k in sd):
        sd = {k[len("net.") :]: v for k, v in sd.items() if k != "device_proxy"}
    try:
        with _quiet():
            return passt_mod.checkpoint_filter_fn(dict(sd), net)
    except (KeyError, RuntimeError, ValueError) as e:  # e.g. neither PaSST nor ViT position embeddings
        raise ScorerUnavailable(f"{WHAT}: {path} does not fit the {ARCH} architecture: {e!r}") from e


def window_spans(n: int, sr: int = SAMPLE_RATE) -> list[tuple[int, int]]:
    """``(start, length)`` of the windows used for an ``n``-sample clip (length < window: zero-padded)."""
    win = int(WINDOW_S * sr)
    step = int((WINDOW_S - OVERLAP_S) * sr)
    spans = []
    for start in range(0, max(step, n - step), step):
        length = min(win, max(0, n - start))
        if length < win and length <= int(win * MIN_FRACTION):
            continue  # mostly zeros would be tagged as silence
        spans.append((start, length))
    return spans


def clip_windows(wav32: np.ndarray) -> np.ndarray:
    """``[W, 320000]`` zero-padded windows of a mono 32 kHz clip (``W`` may be 0)."""
    win = int(WINDOW_S * SAMPLE_RATE)
    spans = window_spans(wav32.shape[-1])
    out = np.zeros((len(spans), win), np.float32)
    for j, (s, length) in enumerate(spans):
        out[j, :length] = wav32[s : s + length]
    return out


class PaSSTKL(WeightsFileModel, SetScorer):
    """PaSST class posteriors per item; KL (named by direction) and IS over sets."""

    name = "passt"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metrics: ClassVar[dict[str, str]] = {"kl_gen_ref": "lower", "is": "higher"}  # default direction
    needs_reference = False  # IS needs none; KL is computed over the items that have reference audio

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        weights_path: Path,
        weights_sha256: str,
        batch_size: int = 4,
        is_splits: int = IS_SPLITS,
        kl_direction: str = KL_DIRECTION,
        device: str | torch.device = "cpu",
    ) -> None:
        if kl_direction not in KL_FORMS:
            raise ValueError(f"kl_direction must be one of {sorted(KL_FORMS)}, got {kl_direction!r}")
        self.init_model(model, weights_path=weights_path, weights_sha256=weights_sha256, batch_size=batch_size,
                        device=device)
        self.is_splits = int(is_splits)
        self.kl_direction = kl_direction
        self.kl_metric, self.kl_eps, self.kl_form = KL_FORMS[kl_direction]
        self.metrics = {self.kl_metric: "lower", "is": "higher"}
        self.last_failures: dict[str, str] = {}

    @property
    def version(self) -> str:
        return (
            f"hear21passt-{importlib.metadata.version('hear21passt')}+{ARCH}+sha256:{self.weights_sha256[:12]}"
            f"+kl:{self.kl_direction},{self.kl_form}{self.kl_eps:g}"
        )

    def protocol_info(self) -> dict[str, Any]:
        return dict(
            arch=ARCH,
            **self.weights_info(),
            sample_rate=SAMPLE_RATE,
            window_s=WINDOW_S,
            hop_s=WINDOW_S - OVERLAP_S,
            min_window_fraction=MIN_FRACTION,
            kl_direction=self.kl_direction,
            kl_metric=self.kl_metric,
            kl_eps=self.kl_eps,
            kl_eps_form=self.kl_form,
            is_splits=self.is_splits,
            protocol="mono, soxr 32 kHz, peak -1 dB, 10 s windows / 5 s hop (short ones zero-padded, "
            f"<=15% skipped), mean logits over windows, softmax; KL({self.kl_direction}) paired, "
            f"{self.kl_form} eps {self.kl_eps:g}; IS over splits (no reference needed)",
        )

    # ---- posteriors --------------------------------------------------------------------------------

    def logits(self, windows: np.ndarray) -> np.ndarray:
        """``[W, 527]`` logits of ``[W, 320000]`` windows."""
        out = []
        with torch.inference_mode(), _quiet():
            for s in range(0, windows.shape[0], self.batch_size):
                x = torch.from_numpy(windows[s : s + self.batch_size]).to(self.device)
                out.append(self.model(x).float().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, N_CLASSES), np.float32)

    def _prepare(self, item: AudioItem) -> np.ndarray:
        wav = np.asarray(item.wav)
        if wav.size == 0:
            raise ValueError("empty audio")
        if not np.isfinite(wav).all():
            raise ValueError("NaN or infinite samples")
        mono = to_mono(wav)
        x = peak_normalise(soxr_resample(mono[None], int(item.sample_rate), SAMPLE_RATE))[0]
        windows = clip_windows(x)
        if windows.shape[0] == 0:
            raise ValueError(
                f"clip of {x.shape[-1] / SAMPLE_RATE:.2f} s has no window above {MIN_FRACTION:.0%} of {WINDOW_S:g} s"
            )
        return windows

    def embed(self, items: list[AudioItem]) -> np.ndarray:
        """``[N, 527]`` posteriors: softmax of the window-averaged logits (NaN rows for failed items)."""
        self.last_failures = {}
        out = np.full((len(items), N_CLASSES), np.nan, dtype=np.float64)
        per_item: list[np.ndarray | None] = []
        for it in items:
            try:
                per_item.append(self._prepare(it))
            except Exception as e:
                per_item.append(None)
                self._fail(it, e)
        owners = [i for i, w in enumerate(per_item) if w is not None for _ in range(w.shape[0])]
        if not owners:
            return out
        try:
            logits = self.logits(np.concatenate([w for w in per_item if w is not None]))
        except Exception:
            # a failing batch: score item by item so one clip cannot take the others down
            for i, w in enumerate(per_item):
                if w is not None:
                    try:
                        out[i] = _softmax(self.logits(w).mean(axis=0))
                    except Exception as e:
                        self._fail(items[i], e)
            return out
        owners_a = np.asarray(owners)
        for i in set(owners):
            out[i] = _softmax(logits[owners_a == i].astype(np.float64).mean(axis=0))
        return out

    def _fail(self, item: AudioItem, e: Exception) -> None:
        reason = f"{type(e).__name__}: {e}"
        self.last_failures[str(item.id)] = reason
        log.warning("%s: item %r not scored (NaN): %s", self.name, item.id, reason)

    # ---- set metrics -------------------------------------------------------------------------------

    def kl(self, generated: np.ndarray, reference: np.ndarray) -> float:
        """The configured KL over paired rows (``kl_gen_ref`` or ``kl_ref_gen`` of ``evaluation.metrics``)."""
        from evaluation.metrics import kl_gen_ref, kl_ref_gen

        if self.kl_direction == "gen||ref":
            return kl_gen_ref(generated, reference, eps=self.kl_eps)
        return kl_ref_gen(reference, generated, eps=self.kl_eps)

    def compare(self, generated: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
        """``kl_gen_ref`` / ``kl_ref_gen`` (rows paired by item; absent when ``reference`` is None),
        ``is`` / ``is_std`` (generated only), ``is_splits`` (splits used). NaN where there is too little."""
        from evaluation.metrics import inception_score

        g = np.asarray(generated, dtype=np.float64)
        if g.ndim != 2 or g.shape[1] != N_CLASSES:
            raise ValueError(f"generated posteriors must be [N, {N_CLASSES}], got {g.shape}")
        ok_g = np.isfinite(g).all(axis=1)
        out: dict[str, float] = {}
        if reference is not None:
            r = np.asarray(reference, dtype=np.float64)
            if r.shape != g.shape:
                raise ValueError(f"reference {r.shape} and generated {g.shape} must be paired row by row")
            pair = ok_g & np.isfinite(r).all(axis=1)  # a NaN reference row: failed, or no reference audio
            out[self.kl_metric] = self.kl(g[pair], r[pair]) if pair.any() else math.nan
        out.update({"is": math.nan, "is_std": math.nan, "is_splits": math.nan})
        n = int(ok_g.sum())
        if n >= 2:
            splits = min(self.is_splits, n)
            if splits < self.is_splits:
                log.warning("%s: %d generated items; IS over %d splits instead of %d", self.name, n, splits,
                            self.is_splits)
            out["is"], out["is_std"] = inception_score(g[ok_g], splits=splits, seed=0)
            out["is_splits"] = float(splits)
        return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64) - np.max(z)
    e = np.exp(z)
    return e / e.sum()


@register("passt", PaSSTKL)
def create(
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    *,
    net_config: dict[str, Any] | None = None,
    batch_size: int = 4,
    is_splits: int = IS_SPLITS,
    kl_direction: str = KL_DIRECTION,
    device: str = "cpu",
) -> PaSSTKL:
    """The PaSST scorer from the released AudioSet checkpoint in the local store
    (``passt/passt-s-f128-p16-s10-ap.476-swa.pt``). ``net_config`` (tests only) overrides PaSST
    constructor arguments (a smaller net of the same class). ``kl_direction``: ``"gen||ref"``
    (stable-audio-metrics, metric ``kl_gen_ref``, default) or ``"ref||gen"`` (metric ``kl_ref_gen``)."""
    if kl_direction not in KL_FORMS:
        raise ValueError(f"kl_direction must be one of {sorted(KL_FORMS)}, got {kl_direction!r}")
    path = resolve_weights(weights_path, sha256=sha256, what=f"{WHAT} checkpoint {ARCH}", origin=ORIGIN)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    model = build_passt(net_config)
    sd = load_passt_state_dict(path, model.net)
    try:
        model.net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ScorerUnavailable(f"{WHAT}: {path} does not fit the {ARCH} architecture: {e}") from e
    return PaSSTKL(model, weights_path=path, weights_sha256=digest, batch_size=batch_size,
                   is_splits=is_splits, kl_direction=kl_direction, device=device)
