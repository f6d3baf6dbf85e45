"""Speaker similarity with Resemblyzer's GE2E voice encoder (demo scorer; bundled ``pretrained.pt``).

A *demo* scorer: the weights (``resemblyzer/pretrained.pt``, a 3-layer LSTM
d-vector model trained with the GE2E loss) ship inside the ``Resemblyzer`` registry package, so it runs
offline. It reports ``sim_resemblyzer`` and never stands in for the paper's WavLM-large SIM
(``evaluation.scorers.wavlm_sim``); the two scales are not comparable.

Protocol (the package's own ``preprocess_wav`` steps + ``VoiceEncoder.embed_utterance``): mono (channel
mean), resampled to 16 kHz (``unimoe.common.audio.resample``), volume normalised to -30 dBFS (increase
only), long silences removed with webrtcvad, 40-band mel frames, 1.6 s partial windows at 1.3 per
second, partial embeddings averaged and L2-normalised. Score = cosine between the generated clip's
embedding and the prompt's (``AudioItem.reference``); both embeddings are unit-norm, so the cosine is
their dot product.

Clips in which the VAD finds no voice (protocol 2): the package's silence trimming (webrtcvad at its
most aggressive mode, then an 8-window moving average) drops EVERY sample of audio that does not sound
like speech — the demo benchmark's generations (and codec resyntheses), decoded by the tiny preset's
randomly initialised DAC, are such noise-like clips, so protocol 1 raised "no voiced audio left after
the VAD" and SIM was NaN for every demo item. Such a clip is now embedded whole (volume-normalised,
untrimmed), as the paper's WavLM SIM embeds every clip: it gets a (low) similarity instead of none.
Only audio that is empty, non-finite or digitally silent is NaN.

Loading: the package's ``VoiceEncoder.__init__`` calls ``torch.load`` itself; here the same network
is built by a subclass whose constructor reads ``pretrained.pt`` with ``torch.load(weights_only=True)``
and loads ``model_state`` (the checkpoint also holds GE2E's ``similarity_weight/bias``, which the
encoder does not use; every encoder parameter must be present). The package's embedding code is
reused unchanged. (Resemblyzer is installed with ``--no-deps``; it needs librosa, webrtcvad and scipy.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from evaluation.scorers.base import ScorerUnavailable, prepare_clip, register
from evaluation.scorers.speaker import SpeakerSimilarityScorer
from unimoe.io import sha256_file


SAMPLE_RATE = 16000
METRIC = "sim_resemblyzer"
PROTOCOL = 2  # 2: a clip with no VAD-voiced region is embedded whole instead of failing (module docstring)


def _import_resemblyzer() -> tuple[Any, Any, Any]:
    import warnings

    try:
        with warnings.catch_warnings():
            # resemblyzer imports binary_dilation from scipy.ndimage.morphology (deprecated alias)
            warnings.simplefilter("ignore", DeprecationWarning)
            import resemblyzer
            from resemblyzer import audio, voice_encoder
    except ImportError as e:
        raise ScorerUnavailable(
            f"resemblyzer_sim needs the 'Resemblyzer' package and its imports (librosa, webrtcvad): {e}"
        ) from e
    return resemblyzer, audio, voice_encoder


class _Encoder:
    """Factory for a ``VoiceEncoder`` subclass that loads weights with ``weights_only=True``."""

    cls: type | None = None

    @classmethod
    def get(cls) -> type:
        if cls.cls is None:
            _, _, ve = _import_resemblyzer()

            class SafeVoiceEncoder(ve.VoiceEncoder):
                def __init__(self, weights_fpath: Path) -> None:  # noqa: D401 - mirrors the package
                    nn.Module.__init__(self)
                    self.lstm = nn.LSTM(ve.mel_n_channels, ve.model_hidden_size, ve.model_num_layers, batch_first=True)
                    self.linear = nn.Linear(ve.model_hidden_size, ve.model_embedding_size)
                    self.relu = nn.ReLU()
                    self.device = torch.device("cpu")
                    ckpt = torch.load(str(weights_fpath), map_location="cpu", weights_only=True)
                    state = ckpt["model_state"] if isinstance(ckpt, dict) and "model_state" in ckpt else ckpt
                    missing, _unexpected = self.load_state_dict(state, strict=False)
                    if missing:
                        raise RuntimeError(f"{weights_fpath}: missing encoder parameters {missing}")
                    self.eval()

            cls.cls = SafeVoiceEncoder
        return cls.cls


class ResemblyzerSim(SpeakerSimilarityScorer):
    """Cosine between Resemblyzer embeddings of the generated clip and the prompt (higher is better)."""

    name = "resemblyzer_sim"
    metric = METRIC
    metrics: ClassVar[dict[str, str]] = {METRIC: "higher"}

    def __init__(self) -> None:
        from importlib.metadata import version as pkg_version

        resemblyzer, audio, _ = _import_resemblyzer()
        self._audio = audio
        self.weights_path = Path(resemblyzer.__file__).resolve().parent / "pretrained.pt"
        if not self.weights_path.is_file():
            raise ScorerUnavailable(f"resemblyzer_sim: {self.weights_path} missing from the installed package")
        self.sha256 = sha256_file(self.weights_path)
        self.encoder = _Encoder.get()(self.weights_path)
        self._version = (f"resemblyzer {pkg_version('Resemblyzer')} (pretrained.pt sha256:{self.sha256[:12]}; "
                         f"protocol {PROTOCOL})")

    @property
    def version(self) -> str:
        return self._version

    def protocol_info(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights_path),
            "sha256": self.sha256,
            "sample_rate": SAMPLE_RATE,
            "protocol": "cosine(generated, prompt) of GE2E d-vectors; resemblyzer preprocess_wav + "
            "embed_utterance (rate 1.3, min_coverage 0.75); a clip with no VAD-voiced region is embedded "
            "whole (volume-normalised, untrimmed)",
        }

    def preprocess(self, x: np.ndarray) -> np.ndarray:
        """The package's ``preprocess_wav`` on 16 kHz audio (volume normalisation, then VAD trimming of
        long silences); when the VAD keeps nothing, the volume-normalised clip untrimmed."""
        x = self._audio.normalize_volume(x, self._audio.audio_norm_target_dBFS, increase_only=True)
        trimmed = self._audio.trim_long_silences(x)
        return trimmed if trimmed.size else x

    def embed(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """Unit-norm 256-d embedding of one clip (raises for empty, non-finite or silent audio)."""
        x = prepare_clip(wav, sample_rate, SAMPLE_RATE).astype(np.float64)
        if not np.any(x):
            raise ValueError("silent audio")
        x = self.preprocess(x)
        e = self.encoder.embed_utterance(x.astype(np.float32))
        if not np.all(np.isfinite(e)):
            raise ValueError("embedding is not finite")
        return e

@register("resemblyzer_sim", ResemblyzerSim)
def make_resemblyzer_sim() -> ResemblyzerSim:
    """The Resemblyzer demo speaker-similarity scorer (weights bundled in the package)."""
    return ResemblyzerSim()
