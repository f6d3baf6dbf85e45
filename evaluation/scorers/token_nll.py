"""Held-out token NLL of the benchmark checkpoint on each item's ground truth (a model scorer).

What it measures: teacher-forced cross-entropy, in nats per target token, of the item's REAL audio
(``reference_audio``, the held-out recording / clip) under the checkpoint, given exactly the
conditioning the benchmark generates from: the item's text or caption, its voice prompt (encoded with
the checkpoint's own codec, with its transcript) and its video frames, built by the generator's own
``CheckpointGenerator.example`` (so NLL and generation condition the model identically). The ground
truth is encoded with the checkpoint's own codec (``AudioCodec.from_model_config``), the codec the model
was trained on and generates with; the curated token shards are not used (the checkpoint's codec may
differ from the one the shards were made with, and ``evaluation`` does not read ``data``). With
``codes_cache`` the codes are shared, per (codec hash, audio hash), with the benchmark's codec-
resynthesis topline (``evaluation.codes_cache``), so each ground truth is encoded once per codec.

Loss: the trainer's, reused, not re-implemented: the item goes through ``BatchMaker`` (sequence
building, the ``start`` crop at ``max_frames``, condition dropout off) and ``TrainLoss`` (the trainer's
per-codebook cross-entropy, PAD/BOS targets ignored, EOS counted), via
``unimoe.training.replicate.heldout_nll`` (the replicate experiment's held-out NLL). ``max_frames``
defaults to the checkpoint's training crop (``state.json``'s ``train_config.max_frames``), else the
trainer's default: the NLL is the training CE's form on unseen data.

Metrics (per item, lower is better): ``token_nll_cb{k}`` = mean CE over codebook k's target tokens;
``token_nll`` = their mean over codebooks (equal weights, as the training objective). The benchmark
aggregates them like every per-item metric (mean over items, bootstrap CI). Seed-independent, so the
runner computes each item once and caches it per (checkpoint weights, item).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.scorers.base import ModelScorer, ScorerUnavailable, register

PROTOCOL = 1
METRIC = "token_nll"


@dataclass
class TeacherForcedItem:
    """What ``BatchMaker`` reads from a dataset item: the ground-truth codes and the conditioning."""

    id: str
    task: str
    codes: Any
    text: str | None = None
    ref_text: str | None = None
    ref_codes: Any = None
    video: np.ndarray | None = None


def codebook_metric(k: int) -> str:
    return f"{METRIC}_cb{k}"


class TokenNLL(ModelScorer):
    """Teacher-forced token NLL (nats) of each item's ground truth under the checkpoint."""

    name = "token_nll"

    def __init__(self, checkpoint: str | Path, *, device: str = "cpu", max_frames: int | None = None,
                 codes_cache: str | Path | None = None):
        from unimoe.checkpoint import CONFIG, CheckpointError, read_state
        from unimoe.config import UniMoEConfig
        from unimoe.training.config import TrainConfig

        self.checkpoint = Path(checkpoint)
        try:
            self.state = read_state(self.checkpoint)
        except CheckpointError as e:
            raise ScorerUnavailable(f"token_nll: {e}") from e
        self.cfg = UniMoEConfig.load(self.checkpoint / CONFIG)
        self.device = device
        self.codes_cache = codes_cache
        trained = (self.state.get("train_config") or {}).get("max_frames")
        self.max_frames = int(max_frames or trained or TrainConfig().max_frames)
        self.weights_sha256 = str(self.state.get("weights_sha256") or "")
        if not self.weights_sha256:
            raise ScorerUnavailable(f"token_nll: {self.checkpoint} records no weights_sha256 in its state.json")
        k = self.cfg.audio.num_codebooks
        self.metrics = {METRIC: "lower", **{codebook_metric(i): "lower" for i in range(k)}}
        self._gen = None
        self._codec_key: str | None = None

    @property
    def version(self) -> str:
        return f"token_nll {PROTOCOL} (checkpoint sha256:{self.weights_sha256[:12]}, max_frames {self.max_frames})"

    @functools.cached_property
    def cache_key(self) -> str:
        """Checkpoint weights, crop, protocol and the training code the loss comes from (the runner adds
        the model library's code hash and the item)."""
        import unimoe.training as training

        code = hashlib.sha256()
        for name in ("data.py", "trainer.py", "replicate.py"):
            code.update((Path(training.__file__).parent / name).read_bytes())
        return hashlib.sha256(json.dumps({"weights": self.weights_sha256, "max_frames": self.max_frames,
                                          "protocol": PROTOCOL, "training_code": code.hexdigest()},
                                         sort_keys=True).encode()).hexdigest()

    def protocol_info(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "weights_sha256": self.weights_sha256,
                "max_frames": self.max_frames,
                "protocol": "teacher-forced CE (nats/token) of the ground truth, encoded with the checkpoint's "
                            "codec, given the item's conditioning; trainer's BatchMaker + TrainLoss"}

    # ---- model -------------------------------------------------------------------------------------
    @property
    def generator(self):
        """The loaded checkpoint (model, tokenizer, sequence builder, codec), loaded on first use."""
        if self._gen is None:
            from unimoe.inference import CheckpointGenerator

            self._gen = CheckpointGenerator(self.checkpoint, device=self.device)
            if self._gen.state.get("weights_sha256") != self.weights_sha256:
                raise RuntimeError(f"{self.checkpoint} changed while being scored (weights hash differs)")
        return self._gen

    def teacher_forced_item(self, item: dict[str, Any]) -> TeacherForcedItem:
        """The item as the trainer's dataset item: the ground truth's codes (checkpoint codec) and the
        conditioning the benchmark generates from (``CheckpointGenerator.example``)."""
        from evaluation.codes_cache import codec_key, encode_cached
        from unimoe.inference import GenerationRequest
        from unimoe.io import sha256_file

        ref = item.get("reference_audio")
        if not ref:
            raise ValueError("the item has no ground-truth audio (reference_audio) to score")
        gen = self.generator
        ex = gen.example(GenerationRequest(item["task"], text=item.get("text") or "", prompt_audio=item.get("prompt_audio"),
                                           prompt_text=item.get("prompt_text"), video=item.get("video")))
        if self.codes_cache is not None and self._codec_key is None:
            self._codec_key = codec_key(gen.cfg)
        codes = encode_cached(gen.codec, ref, sha256_file(ref), self.codes_cache, self._codec_key)
        if codes.shape[1] == 0:
            raise ValueError(f"ground-truth audio {ref} is empty")
        return TeacherForcedItem(id=str(item["id"]), task=item["task"], codes=codes, text=ex.text, ref_text=ex.ref_text,
                                 ref_codes=ex.ref_codes, video=ex.video)

    def nll(self, items: list[TeacherForcedItem]) -> list[dict[str, float]]:
        """Per item: NLL per codebook (token mean; NaN for a codebook without targets) and their mean."""
        from unimoe.training.replicate import heldout_nll

        gen = self.generator
        out = []
        for i in range(len(items)):
            df = heldout_nll(gen.model, gen.cfg, items, gen.builder, [i], self.max_frames)
            per_cb = {int(r.codebook): (r.nll_sum / r.tokens if r.tokens > 0 else math.nan)
                      for r in df.itertuples(index=False)}
            row = {codebook_metric(k): float(per_cb.get(k, math.nan)) for k in range(gen.cfg.audio.num_codebooks)}
            finite = [v for v in row.values() if math.isfinite(v)]
            row[METRIC] = float(np.mean(finite)) if finite else math.nan
            out.append(row)
        return out

    def score_items(self, items: list[dict[str, Any]]) -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for item in items:
            try:
                out.append(self.nll([self.teacher_forced_item(item)])[0])
            except Exception as e:  # noqa: BLE001 - this item is NaN (with its reason), the others still count
                self.note_failure(item.get("id"), e)
                out.append({m: math.nan for m in self.metrics})
        return out


@register("token_nll", TokenNLL)
def make_token_nll(checkpoint: str | Path | None = None, device: str = "cpu", max_frames: int | None = None,
                   codes_cache: str | Path | None = None) -> TokenNLL:
    """Held-out token NLL of ``checkpoint`` (the benchmark runner passes the run's checkpoint)."""
    if checkpoint is None:
        raise ScorerUnavailable("token_nll scores a checkpoint: build it with load_scorer('token_nll', checkpoint=...) "
                                "(the benchmark runner passes the run's checkpoint)")
    return TokenNLL(checkpoint, device=device, max_frames=max_frames, codes_cache=codes_cache)
