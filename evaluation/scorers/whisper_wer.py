"""English WER with Whisper large-v3 (the paper's WER; Seed-TTS-eval protocol), via ``openai-whisper``.

Reference protocol (``BytedanceSpeech/seed-tts-eval``, ``run_wer.py``): ``openai/whisper-large-v3``
through transformers' ``WhisperForConditionalGeneration.generate`` with
``forced_decoder_ids = get_decoder_prompt_ids(language="english", task="transcribe")`` and otherwise
the model's generation config, i.e. greedy decoding (one beam, no sampling, no temperature fallback)
of one 30 s window without timestamps; audio resampled to 16 kHz. The transcript and the reference
text are normalised (``evaluation.text.normalize``) and compared with jiwer; the published number
is the mean of utterance WERs.

The same decoding with openai-whisper (this module): the audio is zero-padded/trimmed to 30 s
(``whisper.pad_or_trim``), turned into a 128-band log-mel (``whisper.log_mel_spectrogram``; same
STFT, filterbank and clamping as transformers' feature extractor), and decoded with
``whisper.decode(DecodingOptions(language="en", task="transcribe", temperature=0.0, beam_size=None,
without_timestamps=True))``: greedy, prompt ``<|startoftranscript|><|en|><|transcribe|><|notimestamps|>``,
blank and non-speech tokens suppressed (the ``suppress_tokens``/``begin_suppress_tokens`` of the HF
generation config are the same sets). Differences that remain: openai-whisper stops after 224 new
tokens (HF: 448 total), irrelevant for sentence-length clips; and clips longer than 30 s, which the
reference silently truncates, are here transcribed with ``whisper.transcribe`` (sequential 30 s
windows, temperature 0 only, no conditioning on previous text) and flagged in the log.

Weights: the official openai-whisper checkpoint ``large-v3.pt`` (``{"dims", "model_state_dict"}``) in
the weights store at ``whisper/large-v3.pt``, read with ``torch.load(weights_only=True)``; by default
its SHA-256 must equal the one in openai-whisper's download URL. Tokenizer: the package's bundled
``multilingual.tiktoken`` (no download).

Per item: ``wer`` (utterance WER), ``wer_errors`` (S + D + I) and ``wer_ref_len`` (reference words).
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from evaluation.scorers.base import AudioItem, ScorerUnavailable, prepare_clip, register
from evaluation.scorers.transcript import TranscriptScorer
from unimoe.io import resolve_weights, sha256_file

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
METRIC = "wer"
DEFAULT_WEIGHTS = "whisper/large-v3.pt"
# The SHA-256 that openai-whisper's own downloader checks (it is the folder name in the URL).
LARGE_V3_SHA256 = "e5b1a55b89c1367dacf97e3e19bfd829a01529dbfdeefa8caeb59b3f1b81dadb"
WHAT = "Whisper large-v3 (openai-whisper checkpoint)"
ORIGIN = (
    "https://openaipublic.azureedge.net/main/whisper/models/"
    f"{LARGE_V3_SHA256}/large-v3.pt"
)


def _whisper() -> Any:
    try:
        import whisper
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ScorerUnavailable(f"whisper_wer needs the 'openai-whisper' package: {e}") from e
    return whisper


def load_whisper(path: str | Path, device: str | torch.device = "cpu") -> Any:
    """``whisper.model.Whisper`` from an official-format checkpoint (strict state-dict load)."""
    _whisper()  # a clear ScorerUnavailable when the package is missing
    from whisper.model import ModelDimensions, Whisper

    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ValueError(f"{WHAT}: {path} is not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')")
    model = Whisper(ModelDimensions(**ckpt["dims"]))
    model.load_state_dict(ckpt["model_state_dict"], strict=True)
    return model.to(device).eval()


class WhisperWER(TranscriptScorer):
    """Utterance WER of a Whisper large-v3 transcript against ``AudioItem.text`` (lower is better)."""

    name = "whisper_wer"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metric = METRIC
    language = "en"
    metrics: ClassVar[dict[str, str]] = {METRIC: "lower"}

    def __init__(
        self, model: Any, *, sha256: str, weights_path: Path, batch_size: int = 8, device: str | torch.device = "cpu"
    ) -> None:
        from importlib.metadata import version as pkg_version

        self._w = _whisper()
        self.model = model
        self.sha256 = sha256
        self.weights_path = Path(weights_path)
        self.batch_size = max(1, int(batch_size))
        self.device = torch.device(device)
        self.pkg_version = pkg_version("openai-whisper")
        self.options = self._w.DecodingOptions(
            language="en",
            task="transcribe",
            temperature=0.0,
            beam_size=None,  # greedy, as transformers' generate with whisper-large-v3's generation config
            without_timestamps=True,
            fp16=self.device.type == "cuda",
        )

    @property
    def version(self) -> str:
        return f"openai-whisper {self.pkg_version} (sha256:{self.sha256[:12]})"

    def protocol_info(self) -> dict[str, Any]:
        return {
            "weights": str(self.weights_path),
            "sha256": self.sha256,
            "official_large_v3": self.sha256 == LARGE_V3_SHA256,
            "dims": asdict(self.model.dims),
            "sample_rate": SAMPLE_RATE,
            "decoding": "greedy (temperature 0, no fallback), language en, task transcribe, no timestamps, "
            "one 30 s window; longer clips: whisper.transcribe at temperature 0",
            "normalisation": "seed-tts-eval (evaluation.text.normalize, en)",
        }

    # ---- recognition ------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _decode_windows(self, wavs: list[np.ndarray]) -> list[str]:
        w = self._w
        mels = torch.stack(
            [
                w.log_mel_spectrogram(
                    w.pad_or_trim(torch.from_numpy(np.ascontiguousarray(x))), n_mels=self.model.dims.n_mels
                )
                for x in wavs
            ]
        ).to(self.device)
        results = w.decode(self.model, mels, self.options)
        return [r.text for r in results]

    @torch.inference_mode()
    def _transcribe_long(self, x: np.ndarray) -> str:
        out = self._w.transcribe(
            self.model,
            x,
            language="en",
            task="transcribe",
            temperature=0.0,
            condition_on_previous_text=False,
            fp16=self.options.fp16,
            verbose=None,
        )
        return str(out["text"])

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        """Raw transcripts of 16 kHz mono clips (batched 30 s windows; long clips one at a time)."""
        texts: list[str | None] = [None] * len(wavs)
        short = [i for i, x in enumerate(wavs) if len(x) <= self._w.audio.N_SAMPLES]
        for s in range(0, len(short), self.batch_size):
            idx = short[s : s + self.batch_size]
            for i, t in zip(idx, self._decode_windows([wavs[i] for i in idx])):
                texts[i] = t
        for i, x in enumerate(wavs):
            if texts[i] is None:
                log.warning("whisper_wer: clip %d is %.1f s (> 30 s): long-form transcription", i, len(x) / SAMPLE_RATE)
                texts[i] = self._transcribe_long(x)
        return [t or "" for t in texts]

    def recognise_all(self, items: list[AudioItem]) -> list[str | None]:
        """Batched: the clips that could be prepared in one ``transcribe``; if that fails, one at a time."""
        hyps: list[str | None] = [None] * len(items)
        ready: list[tuple[int, np.ndarray]] = []
        for i, item in enumerate(items):
            try:
                ready.append((i, prepare_clip(item.wav, item.sample_rate, SAMPLE_RATE)))
            except ValueError as e:
                log.warning("%s: item %r not scored (NaN): %s", self.name, item.id, e)
        try:
            for (i, _), t in zip(ready, self.transcribe([x for _, x in ready])):
                hyps[i] = t
        except Exception:  # noqa: BLE001 - fall back to one clip at a time
            for i, x in ready:
                try:
                    hyps[i] = self.transcribe([x])[0]
                except Exception as e:  # noqa: BLE001
                    log.warning("%s: item %r not scored (NaN): %s", self.name, items[i].id, e)
        return hyps


@register("whisper_wer", WhisperWER)
def make_whisper_wer(
    *,
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = LARGE_V3_SHA256,
    batch_size: int = 8,
    device: str | None = None,
) -> WhisperWER:
    """Load Whisper from the weights store (``weights_path`` relative to $UNIMOE_WEIGHTS or absolute).

    ``sha256`` defaults to the official large-v3 digest; pass ``None`` to accept another checkpoint
    (its digest is then computed and recorded in ``version``).
    """
    path = resolve_weights(weights_path, sha256=sha256, what=WHAT, origin=ORIGIN)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_whisper(path, dev)
    return WhisperWER(model, sha256=digest, weights_path=path, batch_size=batch_size, device=dev)
