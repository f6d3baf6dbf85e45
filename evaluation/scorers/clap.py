"""LAION-CLAP text-audio similarity (the paper's CLAP score).

Score of a clip = cosine between the CLAP embedding of its caption (``AudioItem.text``) and of its
audio (mono, resampled to 48 kHz), as in audiocraft's ``CLAPTextConsistencyMetric`` (MusicGen's
evaluation) and stable-audio-metrics; the benchmark averages it over clips. Which checkpoint was
used changes the numbers, so it is part of the scorer's version:

=========================================== ============ ======== ========================================
checkpoint                                  audio model  fusion   used by
=========================================== ============ ======== ========================================
``music_audioset_epoch_15_esc_90.14``       HTSAT-base   no       audiocraft / MusicGen (default here)
``music_speech_audioset_epoch_15_esc_89.98`` HTSAT-base  no       stable-audio-metrics
``630k-audioset-fusion-best``               HTSAT-tiny   yes      LAION's general-audio default
=========================================== ============ ======== ========================================

All from https://huggingface.co/lukewys/laion_clap (``<checkpoint>.pt``).

Offline construction. ``laion_clap`` reaches the hub in three places, none of which this module
lets run:

* importing it runs ``BertTokenizer/RobertaTokenizer/BartTokenizer.from_pretrained(...)`` at module
  level (``laion_clap/training/data.py``; used only by its training code): the import is done with
  those three ``from_pretrained`` replaced by a stub returning None (restored afterwards);
* ``CLAP.__init__`` calls ``RobertaModel.from_pretrained('roberta-base')``: the model is created
  with ``clap_module.model.RobertaModel`` temporarily replaced by a shim whose ``from_pretrained``
  returns ``RobertaModel(config)`` built from a local config (roberta-base's shapes by default),
  random-initialised, then overwritten by the CLAP checkpoint (strict load: every text-branch tensor
  must come from the checkpoint);
* ``CLAP_Module.__init__`` loads the roberta-base tokenizer from the hub: the tokenizer is read from
  the local weights store instead (``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` from
  https://huggingface.co/FacebookAI/roberta-base) and checked to be non-trivial (transformers 5
  silently builds an empty tokenizer from a folder without tokenizer files).

Checkpoints are read with ``torch.load(weights_only=True)`` (the package's ``load_state_dict`` uses
``weights_only=False``), the DDP ``module.`` prefix is stripped and ``text_branch.embeddings.
position_ids`` / ``token_type_ids`` dropped (constant buffers that current transformers no longer
saves or loads; LAION-AI/CLAP#118), then the state dict is loaded strictly.

Audio preprocessing is the package's own ``get_audio_features`` (10 s at 48 kHz; shorter clips
repeat-padded; longer clips randomly cropped, or for the fusion model a global view plus three random
10 s chunks). Those random choices use numpy's global RNG; here it is seeded with ``crop_seed`` for
each clip (and restored afterwards), so a clip's score does not depend on the batch or call order.
Audio goes through LAION's int16 quantisation (``int16_to_float32(float32_to_int16(x))``), as in
``CLAP_Module.get_audio_embedding_from_data`` for numpy input.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.scorers.base import (MUSIC, AudioItem, Scorer, ScorerUnavailable, WeightsFileModel,
                                     load_state_dict_file, register)
from unimoe.common.audio import resample, to_mono
from unimoe.io import MissingWeightsError, resolve_weights, sha256_file, weights_root

SAMPLE_RATE = 48_000
MAX_SAMPLES = 480_000  # 10 s at 48 kHz: CLAP's clip length
CONTEXT_LENGTH = 77
WHAT = "LAION-CLAP"
ORIGIN = "https://huggingface.co/lukewys/laion_clap"
TOKENIZER_WHAT = "LAION-CLAP text tokenizer (roberta-base)"
TOKENIZER_ORIGIN = (
    "https://huggingface.co/FacebookAI/roberta-base (tokenizer.json, or vocab.json + merges.txt)"
)
DEFAULT_TOKENIZER = "laion_clap/roberta-base"
TEXT_WIDTH = 768  # CLAP's text projection is nn.Linear(768, joint_dim) for the roberta branch

# roberta-base's config.json (FacebookAI/roberta-base): the text branch every LAION-CLAP checkpoint uses.
ROBERTA_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 50265,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 514,
    "type_vocab_size": 1,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
}


@dataclass(frozen=True)
class ClapCheckpoint:
    name: str
    amodel: str
    enable_fusion: bool

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    @property
    def origin(self) -> str:
        return f"{ORIGIN} ({self.filename})"


CHECKPOINTS: dict[str, ClapCheckpoint] = {
    c.name: c
    for c in (
        ClapCheckpoint("music_audioset_epoch_15_esc_90.14", "HTSAT-base", False),
        ClapCheckpoint("music_speech_audioset_epoch_15_esc_89.98", "HTSAT-base", False),
        ClapCheckpoint("630k-audioset-fusion-best", "HTSAT-tiny", True),
    )
}
DEFAULT_CHECKPOINT = "music_audioset_epoch_15_esc_90.14"

_NONPERSISTENT_TEXT_BUFFERS = ("text_branch.embeddings.position_ids", "text_branch.embeddings.token_type_ids")
_LOCK = threading.RLock()
# librosa modules whose numba kernels are compiled (and cached) at import.
LIBROSA_NUMBA_MODULES = ("librosa.core.audio", "librosa.core.pitch", "librosa.util.utils", "librosa.beat",
                         "librosa.onset", "librosa.feature")


def _stub_from_pretrained(*args: Any, **kwargs: Any) -> None:
    return None


def _import_laion_clap() -> tuple[Any, Any, Any]:
    """``(clap_module.factory, clap_module.model, laion_clap.training.data)`` without touching the hub."""
    import sys

    with _LOCK:
        if "laion_clap" not in sys.modules:
            try:
                import transformers
            except ImportError as e:
                raise ScorerUnavailable(f"{WHAT}: transformers is not installed ({e})") from e
            with contextlib.ExitStack() as stack:
                for cls_name in ("BertTokenizer", "RobertaTokenizer", "BartTokenizer"):
                    cls = getattr(transformers, cls_name)
                    stack.enter_context(mock.patch.object(cls, "from_pretrained", _stub_from_pretrained))
                # laion_clap's pann_model sets NUMBA_CACHE_DIR=/tmp/ process-wide at import. Kernels compiled
                # while it is set (librosa's, when librosa is first imported then) are cached in /tmp, shared
                # by every process: concurrent writers there mix files of a gufunc (numba issue 10128) and
                # crash the next process that loads them (SIGSEGV in beat_track). So librosa's numba
                # modules are imported first, under the caller's setting, and that setting is restored.
                for m in LIBROSA_NUMBA_MODULES:
                    importlib.import_module(m)
                numba_cache = os.environ.get("NUMBA_CACHE_DIR")
                try:
                    import laion_clap  # noqa: F401  (puts its folder on sys.path: clap_module, training)
                except ImportError as e:
                    raise ScorerUnavailable(
                        f"{WHAT}: the laion_clap package (or one of its imports) is missing ({e})"
                    ) from e
                finally:
                    if numba_cache is None:
                        os.environ.pop("NUMBA_CACHE_DIR", None)
                    else:
                        os.environ["NUMBA_CACHE_DIR"] = numba_cache
        # The package imports its modules as top-level ``clap_module`` (hook.py); use the same objects.
        from clap_module import factory
        from clap_module import model as model_mod
        from laion_clap.training import data as data_mod

        return factory, model_mod, data_mod


def _text_config(text_config: str | Path | dict[str, Any] | None) -> Any:
    from transformers import RobertaConfig

    if text_config is None:
        cfg = dict(ROBERTA_BASE_CONFIG)
    elif isinstance(text_config, dict):
        cfg = dict(text_config)
    else:
        path = resolve_weights(
            text_config, sha256=None, what=f"{WHAT} text-branch config", origin=TOKENIZER_ORIGIN
        )
        cfg = json.loads(Path(path).read_text())
    cfg.pop("architectures", None)
    cfg.pop("model_type", None)
    config = RobertaConfig(**cfg)
    if config.hidden_size != TEXT_WIDTH:
        raise ValueError(
            f"{WHAT}: the text branch must have hidden_size {TEXT_WIDTH} (CLAP projects 768 -> joint), "
            f"got {config.hidden_size}"
        )
    return config


def load_tokenizer(tokenizer_path: str | Path, *, vocab_size: int, pad_token_id: int) -> Any:
    """The roberta BPE tokenizer from a local folder (``tokenizer.json``, or ``vocab.json`` +
    ``merges.txt``), checked to be real and to match the text branch."""
    from transformers import RobertaTokenizer

    folder = Path(tokenizer_path)
    if not folder.is_absolute():
        folder = weights_root() / folder
    if not (folder / "tokenizer.json").is_file():
        for fname in ("vocab.json", "merges.txt"):
            try:
                resolve_weights(folder / fname, sha256=None, what=TOKENIZER_WHAT, origin=TOKENIZER_ORIGIN)
            except MissingWeightsError as e:
                raise MissingWeightsError(f"{e} (or put tokenizer.json in {folder})") from None
    tok = RobertaTokenizer.from_pretrained(str(folder), local_files_only=True)
    n = len(tok)
    # A byte-level BPE has at least the 256 byte symbols plus the 5 special tokens.
    if n < 256 + 5 or n > vocab_size:
        raise ValueError(
            f"{TOKENIZER_WHAT}: {folder} gives a tokenizer of {n} tokens; expected 261..{vocab_size} "
            "(the text branch's vocab_size)"
        )
    if tok.pad_token_id != pad_token_id:
        raise ValueError(
            f"{TOKENIZER_WHAT}: pad id {tok.pad_token_id} differs from the text branch's "
            f"pad_token_id {pad_token_id}"
        )
    return tok


def load_clap_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A LAION-CLAP checkpoint's state dict, read with ``weights_only=True`` (as ``load_ckpt`` would:
    ``state_dict`` entry if present, ``module.`` stripped, ``position_ids`` dropped)."""
    sd = load_state_dict_file(path, WHAT, "state_dict")
    if next(iter(sd)).startswith("module"):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    sd = dict(sd)
    # Non-persistent buffers in current transformers (constants: arange / zeros); older releases saved them.
    for key in _NONPERSISTENT_TEXT_BUFFERS:
        sd.pop(key, None)
    return sd


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def build_clap_model(ckpt: ClapCheckpoint, text_config: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A random-initialised LAION-CLAP model of ``ckpt``'s architecture (as ``CLAP_Module`` builds it)
    with the roberta text branch made from ``text_config`` instead of the hub."""
    factory, model_mod, _ = _import_laion_clap()
    from transformers import RobertaModel

    class _LocalRoberta:
        @staticmethod
        def from_pretrained(name: str, *args: Any, **kwargs: Any) -> Any:
            if name != "roberta-base":
                raise RuntimeError(f"unexpected text model {name!r}")
            return RobertaModel(text_config)  # add_pooling_layer=True, as from_pretrained('roberta-base')

    with _LOCK, mock.patch.object(model_mod, "RobertaModel", _LocalRoberta):
        model, model_cfg = factory.create_model(
            ckpt.amodel,
            "roberta",
            precision="fp32",
            device=torch.device("cpu"),
            enable_fusion=ckpt.enable_fusion,
            fusion_type="aff_2d" if ckpt.enable_fusion else "None",
        )
    return model.eval(), model_cfg


class ClapScore(WeightsFileModel, Scorer):
    """Cosine between caption and audio CLAP embeddings (higher is better)."""

    name = "clap"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    tasks = MUSIC
    needs_text = True
    metrics: ClassVar[dict[str, str]] = {"clap": "higher"}

    def __init__(
        self,
        model: torch.nn.Module,
        model_cfg: dict[str, Any],
        tokenizer: Any,
        *,
        checkpoint: ClapCheckpoint,
        weights_path: Path,
        weights_sha256: str,
        batch_size: int = 8,
        crop_seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.init_model(model, weights_path=weights_path, weights_sha256=weights_sha256, batch_size=batch_size,
                        device=device)
        self.model_cfg = model_cfg
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint
        self.crop_seed = int(crop_seed)
        _, _, self._data = _import_laion_clap()

    @property
    def version(self) -> str:
        return f"{self.checkpoint.name}+sha256:{self.weights_sha256[:12]}"

    def protocol_info(self) -> dict[str, Any]:
        return dict(
            checkpoint=self.checkpoint.name,
            amodel=self.checkpoint.amodel,
            enable_fusion=self.checkpoint.enable_fusion,
            **self.weights_info(),
            sample_rate=SAMPLE_RATE,
            crop_seed=self.crop_seed,
            protocol="cosine(text embedding, audio embedding); mono 48 kHz, int16-quantised, 10 s "
            "(repeat-pad shorter; longer: "
            + ("fusion" if self.checkpoint.enable_fusion else "seeded random crop")
            + ")",
        )

    # ---- embeddings --------------------------------------------------------------------------------

    def embed_text(self, texts: list[str]) -> np.ndarray:
        """L2-normalised text embeddings ``[n, 512]`` (roberta tokens padded/truncated to 77)."""
        out = []
        for s in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(
                list(texts[s : s + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=CONTEXT_LENGTH,
                return_tensors="pt",
            )
            data = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
            with torch.inference_mode():
                out.append(self.model.get_text_embedding(data).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.joint_embed_shape), np.float32)

    def _features(self, wav_48k: np.ndarray) -> dict[str, torch.Tensor]:
        x = self._data.int16_to_float32(self._data.float32_to_int16(np.asarray(wav_48k, np.float32)))
        with _seeded_numpy(self.crop_seed):
            return self._data.get_audio_features(
                {},
                torch.from_numpy(x).float(),
                MAX_SAMPLES,
                data_truncating="fusion" if self.checkpoint.enable_fusion else "rand_trunc",
                data_filling="repeatpad",
                audio_cfg=self.model_cfg["audio_cfg"],
            )

    def embed_audio(self, wavs_48k: list[np.ndarray]) -> np.ndarray:
        """L2-normalised audio embeddings ``[n, 512]`` of non-empty mono 48 kHz clips."""
        feats = [self._features(w) for w in wavs_48k]
        out = np.zeros((len(feats), self.model.joint_embed_shape), np.float32)
        # The fusion model takes a different path when no clip of a batch is longer than 10 s, so
        # clips are batched with others of the same kind: a clip's embedding never depends on its batch.
        for longer in (False, True):
            idx = [i for i, f in enumerate(feats) if bool(f["longer"].item()) == longer]
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s : s + self.batch_size]
                with torch.inference_mode():
                    emb = self.model.get_audio_embedding([feats[i] for i in chunk])
                out[chunk] = emb.float().cpu().numpy()
        return out

    # ---- scoring -----------------------------------------------------------------------------------

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        ok = [i for i, it in enumerate(items) if it.text is not None and np.asarray(it.wav).size > 0]
        rows = [{"clap": math.nan} for _ in items]
        if not ok:
            return rows
        wavs = [resample(to_mono(items[i].wav), int(items[i].sample_rate), SAMPLE_RATE) for i in ok]
        a = torch.from_numpy(self.embed_audio(wavs))
        t = torch.from_numpy(self.embed_text([str(items[i].text) for i in ok]))
        cos = F.cosine_similarity(a, t, dim=1, eps=1e-8)
        for j, i in enumerate(ok):
            rows[i] = {"clap": float(cos[j])}
        return rows


@register("clap", ClapScore)
def create(
    checkpoint: str = DEFAULT_CHECKPOINT,
    weights_path: str | Path | None = None,
    sha256: str | None = None,
    *,
    tokenizer_path: str | Path = DEFAULT_TOKENIZER,
    text_config: str | Path | dict[str, Any] | None = None,
    batch_size: int = 8,
    crop_seed: int = 0,
    device: str = "cpu",
) -> ClapScore:
    """The CLAP scorer for one of ``CHECKPOINTS`` (its architecture follows from the name).

    ``weights_path`` defaults to ``laion_clap/<checkpoint>.pt`` in the weights store; ``sha256`` is
    verified when given and recorded either way. ``tokenizer_path``: a folder with roberta-base's
    tokenizer files. ``text_config``: a RobertaConfig (dict, or a config.json path in the store) for
    the text branch; default roberta-base's.
    """
    try:
        ckpt = CHECKPOINTS[checkpoint]
    except KeyError:
        raise ValueError(f"unknown CLAP checkpoint {checkpoint!r}; known: {sorted(CHECKPOINTS)}") from None
    path = resolve_weights(
        weights_path if weights_path is not None else f"laion_clap/{ckpt.filename}",
        sha256=sha256,
        what=f"{WHAT} checkpoint {ckpt.name}",
        origin=ckpt.origin,
    )
    config = _text_config(text_config)
    tokenizer = load_tokenizer(tokenizer_path, vocab_size=config.vocab_size, pad_token_id=config.pad_token_id)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    state_dict = load_clap_state_dict(path)
    model, model_cfg = build_clap_model(ckpt, config)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise ScorerUnavailable(
            f"{WHAT}: {path} does not fit the {ckpt.amodel} (fusion={ckpt.enable_fusion}) + roberta "
            f"architecture of checkpoint {ckpt.name!r}: {e}"
        ) from e
    return ClapScore(
        model,
        model_cfg,
        tokenizer,
        checkpoint=ckpt,
        weights_path=path,
        weights_sha256=digest,
        batch_size=batch_size,
        crop_seed=crop_seed,
        device=device,
    )
