"""DNSMOS (demo scorer): Microsoft's DNS-challenge MOS predictor, from the ``speechmos`` package.

This is a *demo* scorer: its ONNX models ship inside the ``speechmos`` registry
package, so it runs offline with real weights. It reports under its own metric names
(``dnsmos_*``) and never stands in for the paper's UTMOS (see ``evaluation.scorers.utmos``).

Metrics (all higher-is-better, roughly on a 1..5 MOS scale):

- ``dnsmos_sig``  – speech signal quality (P.835 SIG), polynomial-calibrated as in DNSMOS
- ``dnsmos_bak``  – background-noise quality (P.835 BAK)
- ``dnsmos_ovrl`` – overall quality (P.835 OVRL)
- ``dnsmos_p808`` – the P.808 overall-MOS model (``model_v8.onnx``)

Protocol (identical to ``speechmos.dnsmos.DNSMOS.__call__``, which is the DNS-challenge
``dnsmos_local.py`` logic): 16 kHz mono input; a clip shorter than 9.01 s is tiled (repeated) until
it is at least that long; 9.01 s windows with a 1 s hop; the P.835 model sees the raw window and the
P.808 model a 120-band log-mel of the window minus its last 160 samples; per-window SIG/BAK/OVRL go
through the non-personalised calibration polynomials; the clip score is the mean over windows.

The only difference from the package's own entry point is that windows of *all* items in a call are
stacked and sent through each ONNX session in batches (the models take a dynamic batch axis), and
that input is first down-mixed, resampled to 16 kHz and clipped to [-1, 1] (the package rejects
arrays outside that range). An item that cannot be scored (empty, non-finite) gets NaN.
"""

from __future__ import annotations

import hashlib
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from evaluation.scorers.base import SPEECH, AudioItem, Scorer, ScorerUnavailable, register
from unimoe.common.audio import resample, to_mono

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
# Model files inside the speechmos package, relative to its folder.
PRIMARY_MODEL = "dnsmos_models/sig_bak_ovr.onnx"
P808_MODEL = "dnsmos_models/model_v8.onnx"


def _short_sha256(path: Path, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()[:n]


class DNSMOSScorer(Scorer):
    """DNSMOS P.835 (SIG/BAK/OVRL) + P.808 via the ``speechmos`` package's ONNX models."""

    name = "dnsmos"
    tasks = SPEECH
    metrics: ClassVar[dict[str, str]] = {
        "dnsmos_sig": "higher",
        "dnsmos_bak": "higher",
        "dnsmos_ovrl": "higher",
        "dnsmos_p808": "higher",
    }

    def __init__(self, *, batch_size: int = 8, num_threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
            import speechmos
            from speechmos import dnsmos as sm_dnsmos
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ScorerUnavailable(
                "DNSMOS needs the 'speechmos' and 'onnxruntime' packages "
                f"(pip install speechmos onnxruntime): {e}"
            ) from e
        from importlib.metadata import version as pkg_version

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._sm = sm_dnsmos
        pkg_dir = Path(speechmos.__file__).resolve().parent
        self.primary_path = pkg_dir / PRIMARY_MODEL
        self.p808_path = pkg_dir / P808_MODEL
        for p in (self.primary_path, self.p808_path):
            if not p.is_file():
                raise ScorerUnavailable(
                    f"DNSMOS: ONNX model {p} missing from the installed speechmos package"
                )
        opts = ort.SessionOptions()
        if num_threads is not None:
            opts.intra_op_num_threads = int(num_threads)
            opts.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self._primary = ort.InferenceSession(str(self.primary_path), sess_options=opts, providers=providers)
        self._p808 = ort.InferenceSession(str(self.p808_path), sess_options=opts, providers=providers)
        # The package's helpers (mel front end, calibration polynomials) are used as-is; the object is
        # built without its __init__ so the sessions above (with our thread settings) are the only ones.
        self._helper = object.__new__(sm_dnsmos.DNSMOS)
        self._version = (
            f"speechmos {pkg_version('speechmos')} "
            f"(sig_bak_ovr.onnx sha256:{_short_sha256(self.primary_path)}, "
            f"model_v8.onnx sha256:{_short_sha256(self.p808_path)})"
        )

    @property
    def version(self) -> str:
        return self._version

    # -- the package's per-clip windowing, reproduced so windows can be batched -------------------------
    def _windows(self, audio: np.ndarray) -> list[np.ndarray]:
        fs = SAMPLE_RATE
        input_length = self._sm.INPUT_LENGTH
        len_samples = int(input_length * fs)
        while len(audio) < len_samples:
            audio = np.append(audio, audio)
        num_hops = int(np.floor(len(audio) / fs) - input_length) + 1
        out = []
        for idx in range(num_hops):
            seg = audio[int(idx * fs) : int((idx + input_length) * fs)]
            if len(seg) < len_samples:
                continue
            out.append(np.asarray(seg, dtype=np.float32))
        return out

    def _prepare(self, item: AudioItem) -> np.ndarray:
        wav = to_mono(item.wav)
        if wav.size == 0:
            raise ValueError("empty audio")
        if not np.all(np.isfinite(wav)):
            raise ValueError("non-finite samples")
        wav = resample(wav, int(item.sample_rate), SAMPLE_RATE)
        return np.clip(wav, -1.0, 1.0).astype(np.float32, copy=False)

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        nan = {m: math.nan for m in self.metrics}
        results: list[dict[str, float]] = [dict(nan) for _ in items]
        # (item index, raw window, mel window) for every window of every scoreable item
        owners: list[int] = []
        raw: list[np.ndarray] = []
        mel: list[np.ndarray] = []
        for i, item in enumerate(items):
            try:
                wins = self._windows(self._prepare(item))
                mels = [
                    np.asarray(self._helper.audio_melspec(audio=w[:-160]), dtype=np.float32) for w in wins
                ]
            except Exception as e:  # noqa: BLE001 - an item that fails is NaN, the others still count
                log.warning("dnsmos: item %r not scored (NaN): %s", item.id, e)
                self.note_failure(item.id, e)
                continue
            if not wins:
                continue
            owners.extend([i] * len(wins))
            raw.extend(wins)
            mel.extend(mels)

        if not raw:
            return results
        sig = np.empty(len(raw))
        bak = np.empty(len(raw))
        ovr = np.empty(len(raw))
        p808 = np.empty(len(raw))
        for s in range(0, len(raw), self.batch_size):
            e = min(s + self.batch_size, len(raw))
            out = self._primary.run(None, {"input_1": np.stack(raw[s:e])})[0]  # [N, 3] raw SIG/BAK/OVRL
            p = self._p808.run(None, {"input_1": np.stack(mel[s:e])})[0]  # [N, 1]
            cs, cb, co = self._helper.get_polyfit_val(out[:, 0], out[:, 1], out[:, 2], False)
            sig[s:e], bak[s:e], ovr[s:e], p808[s:e] = cs, cb, co, p[:, 0]

        owners_a = np.asarray(owners)
        for i in sorted(set(owners)):
            sel = owners_a == i
            results[i] = {
                "dnsmos_sig": float(np.mean(sig[sel])),
                "dnsmos_bak": float(np.mean(bak[sel])),
                "dnsmos_ovrl": float(np.mean(ovr[sel])),
                "dnsmos_p808": float(np.mean(p808[sel])),
            }
        return results

    def protocol_info(self) -> dict[str, Any]:
        return {"sample_rate": SAMPLE_RATE, "window_s": float(self._sm.INPUT_LENGTH), "personalized": False}


@register("dnsmos", DNSMOSScorer)
def make_dnsmos(*, batch_size: int = 8, num_threads: int | None = None) -> DNSMOSScorer:
    """Build the DNSMOS demo scorer. No weights store: the ONNX files ship inside ``speechmos``.

    ``batch_size`` counts 9.01 s windows per ONNX call; ``num_threads`` caps onnxruntime's threads.
    """
    return DNSMOSScorer(batch_size=batch_size, num_threads=num_threads)
