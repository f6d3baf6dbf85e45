"""English WER with CMU PocketSphinx (demo scorer; real weights shipped inside the ``pocketsphinx`` package).

A *demo* scorer: its acoustic model (``en-us`` continuous HMM), language model
(``en-us.lm.bin``) and dictionary (``cmudict-en-us.dict``) ship inside the ``pocketsphinx`` registry
package, so it runs offline. It reports under its own metric name ``wer_pocketsphinx`` and never stands
in for the paper's Whisper-large-v3 WER (``evaluation.scorers.whisper_wer``): PocketSphinx is a far
weaker recogniser, so its absolute numbers are much higher.

Protocol: mono (channel mean), resampled to 16 kHz, clipped to [-1, 1] and quantised to int16; one
utterance per clip (``process_raw(full_utt=True)``); the package's default decoder configuration
(bundled model, default beams), its front end reset before every clip. Without the reset a clip's
transcript depends on the clips decoded before it in the same process: the default ``remove_noise``
carries its noise estimate from one utterance to the next (measured: the same espeak-ng clip decoded
twice in a row gave two different transcripts), which made cached per-item scores depend on the
order and batching of a run. Hypothesis and reference (``AudioItem.text``) are normalised with the
Seed-TTS-eval rules (``evaluation.text.normalize(.., "en")``) and aligned with jiwer.

Speed: decoding is single-threaded C (about 0.5x real time on speech, 0.85x on noise, on one core), so
with ``processes=N`` a batch is decoded by N spawned worker processes, each with its own decoder; with
the per-clip reset the transcripts are those of one in-process decoder (tested). Off by default: spawned
workers import the main module, so a script calling the scorer needs an ``if __name__ == "__main__":``
guard (without one the scorer warns and decodes in process, after the workers re-ran the script's
top level). The benchmark runner turns it on (its entry points are guarded). Inside a daemonic process
(a Dask worker), which may not have children, it decodes in process.

Per item: ``wer_pocketsphinx`` (utterance WER), ``wer_pocketsphinx_errors`` (S + D + I) and
``wer_pocketsphinx_ref_len`` (reference words), so the corpus WER can be aggregated. An item that
cannot be scored (no transcript, empty normalised transcript, not English, empty/non-finite audio)
gets NaN in all three with a logged reason.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from evaluation.scorers.base import AudioItem, ScorerUnavailable, prepare_clip, register
from evaluation.scorers.transcript import TranscriptScorer


SAMPLE_RATE = 16000
METRIC = "wer_pocketsphinx"
MAX_PROCESSES = 8

log = logging.getLogger(__name__)


def _model_files(model_dir: Path) -> list[Path]:
    """The bundled en-us model: acoustic model folder, LM and dictionary."""
    hmm = model_dir / "en-us" / "en-us"
    files = sorted(p for p in hmm.iterdir() if p.is_file()) if hmm.is_dir() else []
    files += [model_dir / "en-us" / "en-us.lm.bin", model_dir / "en-us" / "cmudict-en-us.dict"]
    return files


def _tree_sha256(root: Path, files: list[Path]) -> str:
    """One digest over (relative name, content) of each file: identifies the bundled model."""
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _pcm(wav: np.ndarray, sample_rate: int) -> bytes:
    """The decoder's input: mono 16 kHz int16 little-endian bytes."""
    x = prepare_clip(wav, sample_rate, SAMPLE_RATE)
    return np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def _decode(decoder, pcm: bytes) -> str:
    decoder.reinit_feat()  # a fresh front end (noise estimate, CMN): the transcript depends on this clip only
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


_worker_decoder = None  # one per worker process


def _init_worker(decoder_kwargs: dict[str, Any]) -> None:
    global _worker_decoder
    from pocketsphinx import Decoder

    from unimoe.procguard import watch_parent

    watch_parent()  # a run killed with SIGKILL leaves no decoder process behind
    _worker_decoder = Decoder(**decoder_kwargs)


def _decode_in_worker(pcm: bytes) -> str:
    return _decode(_worker_decoder, pcm)


class PocketSphinxWER(TranscriptScorer):
    """Utterance WER of a PocketSphinx transcript against ``AudioItem.text`` (lower is better)."""

    name = "pocketsphinx_wer"
    metric = METRIC
    language = "en"
    metrics: ClassVar[dict[str, str]] = {METRIC: "lower"}

    def __init__(self, processes: int | None = None) -> None:
        if processes is not None and processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes}")
        self.processes = 1 if processes is None else min(processes, MAX_PROCESSES)
        self._pool: ProcessPoolExecutor | None = None
        try:
            import pocketsphinx
            from pocketsphinx import Decoder, get_model_path
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ScorerUnavailable(f"pocketsphinx_wer needs the 'pocketsphinx' package: {e}") from e
        from importlib.metadata import version as pkg_version

        model_dir = Path(get_model_path())
        files = _model_files(model_dir)
        missing = [str(p) for p in files if not p.is_file()]
        if len(files) < 3 or missing:
            raise ScorerUnavailable(
                f"pocketsphinx_wer: the bundled en-us model is incomplete in {model_dir} (missing {missing})"
            )
        self.model_dir = model_dir
        self.model_sha256 = _tree_sha256(model_dir, files)
        # "clip-reset": per-clip front-end reset (see the module docstring); scores cached under the
        # version before it depended on the decoding order, so they are not reused.
        self._version = (f"pocketsphinx {pkg_version('pocketsphinx')} (en-us model sha256:{self.model_sha256[:12]}, "
                         "clip-reset)")
        self._pkg = pocketsphinx
        # Defaults = the bundled en-us model; explicit paths so the digest above is what is loaded.
        self._decoder_kwargs = dict(
            hmm=str(model_dir / "en-us" / "en-us"),
            lm=str(model_dir / "en-us" / "en-us.lm.bin"),
            dict=str(model_dir / "en-us" / "cmudict-en-us.dict"),
            samprate=SAMPLE_RATE,
            loglevel="FATAL",
        )
        self._decoder = Decoder(**self._decoder_kwargs)

    @property
    def version(self) -> str:
        return self._version

    def protocol_info(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "model_sha256": self.model_sha256,
            "sample_rate": SAMPLE_RATE,
            "normalisation": "seed-tts-eval (evaluation.text.normalize, en)",
            "aggregation": "per item utterance WER + errors/ref_len for the corpus WER",
            "front_end": "reset before every clip (decoder.reinit_feat): order-independent transcripts",
        }

    def transcribe(self, wav: np.ndarray, sample_rate: int) -> str:
        """Raw PocketSphinx transcript of one clip (any rate, mono or [channels, samples])."""
        return _decode(self._decoder, _pcm(wav, sample_rate))

    def recognise(self, item: AudioItem) -> str:
        return self.transcribe(item.wav, item.sample_rate)

    def recognise_all(self, items: list[AudioItem]) -> list[str | None]:
        """Transcripts in order, decoded by the worker processes (None where decoding failed, logged).
        If the workers cannot run (e.g. a script without an ``if __name__ == "__main__":`` guard, which
        spawned processes re-import), this scorer decodes in process from then on, with a warning."""
        workers = min(self.processes, len(items))
        if workers < 2 or multiprocessing.current_process().daemon:
            return super().recognise_all(items)
        pcms = self.score_each(items, lambda it: _pcm(it.wav, it.sample_rate), failed=lambda: None)
        try:
            pool = self._worker_pool()
            futures = [None if pcm is None else pool.submit(_decode_in_worker, pcm) for pcm in pcms]
            out: list[str | None] = []
            for item, fut in zip(items, futures):
                try:
                    out.append(None if fut is None else fut.result())
                except BrokenProcessPool:
                    raise
                except Exception as e:  # noqa: BLE001 - this clip fails (reported), the others still count
                    log.warning("%s: item %r not scored (NaN): %s", self.name, item.id, e)
                    self.note_failure(item.id, e)
                    out.append(None)
            return out
        except BrokenProcessPool as e:
            log.warning("%s: decoder worker processes failed (%s); decoding in this process from now on",
                        self.name, e)
            self.close()
            self.processes = 1
            return super().recognise_all(items)

    def _worker_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn, not fork: the parent may hold torch / onnxruntime threads (forking them can deadlock)
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self._decoder_kwargs,))
            weakref.finalize(self, self._pool.shutdown, wait=False, cancel_futures=True)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (they also stop with this scorer or the interpreter)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


@register("pocketsphinx_wer", PocketSphinxWER)
def make_pocketsphinx_wer(*, processes: int | None = None) -> PocketSphinxWER:
    """The PocketSphinx demo WER scorer. No weights store: the model ships inside ``pocketsphinx``.
    ``processes``: decoding worker processes (default 1: in process; at most 8)."""
    return PocketSphinxWER(processes=processes)
