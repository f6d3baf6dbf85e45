"""CLaMP 3 text–audio similarity (the paper's CLaMP3 score): cosine between a caption's and a clip's
CLaMP 3 global embeddings, per item.

Reproduced from sanderwood/clamp3 (``preprocessing/audio/extract_mert.py``, ``hf_pretrains.py``,
``code/extract_clamp3.py``, ``code/utils.py``; SAAS checkpoint):

Audio → MERT-v1-95M features (``extract_mert.py`` with ``--mean_features``):
  mono (channel mean), resampled to 24 kHz with torchaudio's ``Resample`` (``unimoe.common.audio.resample``
  is the same filter), normalised to zero mean / unit variance over the whole clip (the
  ``Wav2Vec2FeatureExtractor(do_normalize=True)`` step, ``(x - mean) / sqrt(var + 1e-7)``), cut into
  non-overlapping 5 s windows (a last window shorter than 1 s is dropped), each window through MERT
  with all 13 hidden states (CNN/projection output + 12 layers) averaged over time, then averaged
  over layers: one 768-d vector per window.
Features → CLaMP 3 audio encoder (``extract_clamp3.py``, ``get_global``):
  a zero vector before and after the window vectors; 128-long segments (the last one is the final 128
  vectors); zero-padded, masked; ``BertModel(inputs_embeds=...)`` (12 layers, 768, vocab 1, 128
  positions); masked mean over the sequence; ``audio_proj`` (768 → 768); segments averaged with
  weights = their new lengths.
Text → CLaMP 3 text encoder: caption lines de-duplicated and joined with ``</s>``, XLM-RoBERTa-base
  tokens (with ``<s>``/``</s>``), the same 128-token segmentation with pad id, ``XLMRobertaModel``,
  masked mean, ``text_proj`` (768 → 768), length-weighted segment average.
Score: cosine(text embedding, audio embedding) (``clamp3_score.py`` pairwise mode).

MERT-v1-95M is HuBERT with a LayerNorm before the feature projection; its own ``MERTModel`` code
(``trust_remote_code``) only adds an optional CQT input branch, DeepNorm and attention relaxation,
all off in MERT-v1-95M's config. It is built here as ``transformers.HubertModel`` with
``feat_proj_layer_norm=True`` from the checkpoint's ``config.json``, and a config that turns one of
those options on is refused rather than approximated. Differences from the reference, precisely:

- the reference de-duplicates caption lines through a Python ``set`` (random order for multi-line
  text); here first occurrences are kept in order (identical for one-line captions);
- the reference reads files with ``torchaudio.load``; here the caller's array is used as given;
- weights: only the text and audio branches of the CLaMP 3 checkpoint are loaded (strictly); the
  symbolic (M3) branch is not used by text–audio scoring and is ignored.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.scorers.base import MUSIC, AudioItem, Scorer, ScorerUnavailable, load_state_dict_file, register
from unimoe.common.audio import resample, to_mono
from unimoe.io import MissingWeightsError, resolve_weights, sha256_file, weights_root

log = logging.getLogger(__name__)

WHAT = "CLaMP 3 (SAAS)"
CLAMP3_FILE = (
    "weights_clamp3_saas_h_size_768_t_model_FacebookAI_xlm-roberta-base_t_length_128_a_size_768_"
    "a_layers_12_a_length_128_s_size_768_s_layers_12_p_size_64_p_length_512.pth"
)
DEFAULT_WEIGHTS = f"clamp3/{CLAMP3_FILE}"
ORIGIN = f"https://huggingface.co/sander-wood/clamp3 ({CLAMP3_FILE})"
MERT_WHAT = "MERT-v1-95M"
DEFAULT_MERT = "clamp3/MERT-v1-95M"
MERT_ORIGIN = "https://huggingface.co/m-a-p/MERT-v1-95M (config.json + model.safetensors or pytorch_model.bin)"
TOKENIZER_WHAT = "CLaMP 3 text tokenizer (xlm-roberta-base)"
DEFAULT_TOKENIZER = "clamp3/xlm-roberta-base"
TOKENIZER_ORIGIN = "https://huggingface.co/FacebookAI/xlm-roberta-base (tokenizer.json, or sentencepiece.bpe.model)"

MERT_SR = 24_000
WINDOW_S = 5.0
MIN_LAST_WINDOW_S = 1.0
MAX_AUDIO_LENGTH = 128
MAX_TEXT_LENGTH = 128
CLAMP3_HIDDEN_SIZE = 768

# FacebookAI/xlm-roberta-base config.json (text branch), and CLaMP 3's audio BertConfig.
XLMR_BASE_CONFIG: dict[str, Any] = {
    "vocab_size": 250002, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "hidden_act": "gelu", "max_position_embeddings": 514, "type_vocab_size": 1,
    "layer_norm_eps": 1e-05, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2,
}
AUDIO_BERT_CONFIG: dict[str, Any] = {
    "vocab_size": 1, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
    "intermediate_size": 3072, "max_position_embeddings": MAX_AUDIO_LENGTH,
}
_BRANCHES = ("text_model.", "text_proj.", "audio_model.", "audio_proj.")
_CONSTANT_BUFFERS = (".embeddings.position_ids", ".embeddings.token_type_ids")


class ClaMP3TextAudio(torch.nn.Module):
    """The text and audio branches of ``CLaMP3Model`` with its parameter names."""

    def __init__(self, text_config: Any, audio_config: Any, hidden_size: int = CLAMP3_HIDDEN_SIZE) -> None:
        super().__init__()
        from transformers import BertModel, XLMRobertaModel

        self.text_model = XLMRobertaModel(text_config)  # with pooler, as AutoModel.from_pretrained
        self.text_proj = torch.nn.Linear(text_config.hidden_size, hidden_size)
        self.audio_model = BertModel(audio_config)
        self.audio_proj = torch.nn.Linear(audio_config.hidden_size, hidden_size)

    @staticmethod
    def _avg_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(dim=1) / m.sum(dim=1)

    def text_global(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.text_model(ids, attention_mask=mask)["last_hidden_state"]
        return self.text_proj(self._avg_pool(h, mask))

    def audio_global(self, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.audio_model(inputs_embeds=feats, attention_mask=mask)["last_hidden_state"]
        return self.audio_proj(self._avg_pool(h, mask))


def segment_weights(n: int, max_len: int) -> list[tuple[int, int, int]]:
    """CLaMP 3's segmentation of a length-``n`` sequence: ``(start, end, weight)`` per segment; the
    last segment is the final ``max_len`` elements, weighted by what it adds."""
    starts = list(range(0, n, max_len))
    segs = [(s, min(s + max_len, n)) for s in starts]
    segs[-1] = (max(0, n - max_len), n)
    full, rem = divmod(n, max_len)
    weights = [max_len] * full + ([rem] if rem else [])
    return [(a, b, w) for (a, b), w in zip(segs, weights)]


def _load_tensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return load_state_dict_file(path, what, key=None)


def mert_config(config_json: dict[str, Any]) -> Any:
    """A ``HubertConfig`` equivalent to a MERT ``config.json``; MERT options HuBERT lacks are refused."""
    from transformers import HubertConfig

    cfg = dict(config_json)
    problems = []
    if cfg.get("feature_extractor_cqt"):
        problems.append("feature_extractor_cqt (CQT input branch)")
    if cfg.get("deepnorm"):
        problems.append("deepnorm")
    if float(cfg.get("attention_relax", -1.0)) > 0:
        problems.append("attention_relax")
    if problems:
        raise ScorerUnavailable(f"{MERT_WHAT}: config enables {', '.join(problems)}, which this "
                                "HuBERT-based reimplementation does not reproduce")
    for k in ("architectures", "auto_map", "model_type", "_name_or_path", "transformers_version", "torch_dtype"):
        cfg.pop(k, None)
    cfg.setdefault("feat_proj_layer_norm", True)
    return HubertConfig(**cfg)


def _rename_mert_key(k: str) -> str:
    for prefix in ("mert_model.", "music_hubert.", "hubert.", "model."):
        if k.startswith(prefix):
            k = k[len(prefix):]
    # old weight_norm names -> torch parametrizations (current transformers)
    return k.replace("conv.weight_g", "conv.parametrizations.weight.original0").replace(
        "conv.weight_v", "conv.parametrizations.weight.original1")


def load_mert(folder: str | Path, sha256: str | None = None) -> tuple[torch.nn.Module, str]:
    """MERT from a local folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``)."""
    from transformers import HubertModel

    root = Path(folder)
    if not root.is_absolute():
        root = weights_root() / root
    cfg_path = resolve_weights(root / "config.json", sha256=None, what=f"{MERT_WHAT} config", origin=MERT_ORIGIN)
    weights = next((root / f for f in ("model.safetensors", "pytorch_model.bin") if (root / f).is_file()), None)
    if weights is None:
        raise MissingWeightsError(
            f"{MERT_WHAT}: weights file not found at {root / 'model.safetensors'} (or pytorch_model.bin). "
            f"Download it from {MERT_ORIGIN} and place it there; nothing is downloaded at run time."
        )
    resolve_weights(weights, sha256=sha256, what=f"{MERT_WHAT} weights", origin=MERT_ORIGIN)
    model = HubertModel(mert_config(json.loads(cfg_path.read_text())))
    sd = {_rename_mert_key(k): v for k, v in _load_tensors(weights, MERT_WHAT).items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    # masked_spec_embed is a training-only parameter (present or not depending on the export)
    missing = [k for k in missing if k != "masked_spec_embed"]
    unexpected = [k for k in unexpected if k != "masked_spec_embed"]
    if missing or unexpected:
        raise ScorerUnavailable(f"{MERT_WHAT}: {weights} does not fit the HuBERT architecture of its config "
                                f"(missing {missing[:6]}, unexpected {unexpected[:6]})")
    return model.eval(), (sha256.lower() if sha256 else sha256_file(weights))


def load_clamp3_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Text/audio-branch tensors of a CLaMP 3 checkpoint (``{"model": state_dict, "epoch": ...}``)."""
    ckpt = _load_tensors(path, WHAT)
    sd = ckpt.get("model", ckpt) if isinstance(ckpt.get("model"), dict) else ckpt
    meta = {k: ckpt[k] for k in ("epoch", "min_eval_loss") if k in ckpt and not isinstance(ckpt[k], dict)}
    out = {k: v for k, v in sd.items() if k.startswith(_BRANCHES) and not k.endswith(_CONSTANT_BUFFERS)}
    if not out:
        raise ScorerUnavailable(f"{WHAT}: {path} holds no text_model/audio_model weights")
    return out, meta


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import XLMRobertaTokenizer

    root = Path(folder)
    if not root.is_absolute():
        root = weights_root() / root
    if not (root / "tokenizer.json").is_file():
        try:
            resolve_weights(root / "sentencepiece.bpe.model", sha256=None, what=TOKENIZER_WHAT, origin=TOKENIZER_ORIGIN)
        except MissingWeightsError as e:
            raise MissingWeightsError(f"{e} (or put tokenizer.json in {root})") from None
    tok = XLMRobertaTokenizer.from_pretrained(str(root), local_files_only=True)
    if len(tok) < 10 or tok.pad_token_id is None or tok.sep_token is None:
        raise ValueError(f"{TOKENIZER_WHAT}: {root} gives an unusable tokenizer ({len(tok)} tokens)")
    return tok


class ClaMP3Score(Scorer):
    """Cosine between CLaMP 3 text and audio embeddings (higher is better)."""

    name = "clamp3"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    tasks = MUSIC
    needs_text = True
    metrics: ClassVar[dict[str, str]] = {"clamp3": "higher"}

    def __init__(self, clamp: ClaMP3TextAudio, mert: torch.nn.Module, tokenizer: Any, *, weights_path: Path,
                 weights_sha256: str, mert_sha256: str, checkpoint_meta: dict[str, Any] | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.clamp = clamp.to(self.device).eval()
        self.mert = mert.to(self.device).eval()
        self.tokenizer = tokenizer
        self.weights_path = Path(weights_path)
        self.weights_sha256 = weights_sha256
        self.mert_sha256 = mert_sha256
        self.checkpoint_meta = dict(checkpoint_meta or {})
        self.last_failures: dict[str, str] = {}

    @property
    def version(self) -> str:
        return (f"clamp3-saas+sha256:{self.weights_sha256[:12]}+mert-v1-95m+sha256:{self.mert_sha256[:12]}"
                f"+transformers-{importlib.metadata.version('transformers')}")

    def protocol_info(self) -> dict[str, Any]:
        return dict(weights=str(self.weights_path), weights_sha256=self.weights_sha256,
                    mert_sha256=self.mert_sha256, checkpoint=self.checkpoint_meta, mert_sample_rate=MERT_SR,
                    window_s=WINDOW_S, protocol="cosine(CLaMP3 text, CLaMP3 audio over MERT-v1-95M 5 s "
                    "window features, mean over 13 hidden states and time)")

    # ---- features ----------------------------------------------------------------------------------

    def mert_features(self, wav: np.ndarray, sample_rate: int) -> np.ndarray:
        """``[n_windows, H]``: MERT hidden states averaged over time and layers, per 5 s window."""
        x = resample(to_mono(wav), int(sample_rate), MERT_SR).astype(np.float64)
        if x.size == 0 or not np.isfinite(x).all():
            raise ValueError("empty or non-finite audio")
        x = ((x - x.mean()) / np.sqrt(x.var() + 1e-7)).astype(np.float32)
        win = int(MERT_SR * WINDOW_S)
        chunks = [x[i : i + win] for i in range(0, x.size, win)]
        if chunks[-1].size < MERT_SR * MIN_LAST_WINDOW_S:
            chunks = chunks[:-1]
        if not chunks:
            raise ValueError(f"clip shorter than {MIN_LAST_WINDOW_S:g} s")
        out = []
        with torch.inference_mode():
            for c in chunks:
                hs = self.mert(torch.from_numpy(c)[None].to(self.device), output_hidden_states=True).hidden_states
                out.append(torch.stack(hs).mean(dim=-2)[:, 0].mean(dim=0).float().cpu())  # [L,1,T,H] -> [H]
        return torch.stack(out).numpy()

    def audio_embedding(self, feats: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.asarray(feats, np.float32))
        zero = torch.zeros((1, x.shape[-1]))
        x = torch.cat([zero, x, zero])
        return self._global(x, MAX_AUDIO_LENGTH, pad=torch.zeros, encode=self.clamp.audio_global)

    def text_embedding(self, text: str) -> torch.Tensor:
        lines = [ln for ln in dict.fromkeys(text.split("\n")) if ln]
        ids = self.tokenizer(self.tokenizer.sep_token.join(lines), return_tensors="pt")["input_ids"][0]
        pad_id = int(self.tokenizer.pad_token_id)
        return self._global(ids, MAX_TEXT_LENGTH, pad=lambda shape, **kw: torch.full(shape, pad_id, **kw),
                            encode=self.clamp.text_global)

    def _global(self, x: torch.Tensor, max_len: int, *, pad: Any, encode: Any) -> torch.Tensor:
        embs, weights = [], []
        with torch.inference_mode():
            for a, b, w in segment_weights(x.shape[0], max_len):
                seg = x[a:b]
                n = seg.shape[0]
                seg = torch.cat([seg, pad((max_len - n, *seg.shape[1:]), dtype=seg.dtype)])
                mask = torch.cat([torch.ones(n), torch.zeros(max_len - n)])
                embs.append(encode(seg[None].to(self.device), mask[None].to(self.device))[0].float().cpu())
                weights.append(w)
        wt = torch.tensor(weights, dtype=torch.float32)[:, None]
        return (torch.stack(embs) * wt).sum(0) / wt.sum()

    # ---- scoring -----------------------------------------------------------------------------------

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        self.last_failures = {}
        rows = []
        for it in items:
            try:
                if not it.text or not str(it.text).strip():
                    raise ValueError("no caption")
                a = self.audio_embedding(self.mert_features(it.wav, int(it.sample_rate)))
                t = self.text_embedding(str(it.text))
                rows.append({"clamp3": float(F.cosine_similarity(a, t, dim=0, eps=1e-8))})
            except Exception as e:  # one bad item never stops the batch
                reason = f"{type(e).__name__}: {e}"
                self.last_failures[str(it.id)] = reason
                log.warning("%s: item %r not scored (NaN): %s", self.name, it.id, reason)
                rows.append({"clamp3": math.nan})
        return rows


@register("clamp3", ClaMP3Score)
def create(
    weights_path: str | Path = DEFAULT_WEIGHTS,
    sha256: str | None = None,
    *,
    mert_path: str | Path = DEFAULT_MERT,
    mert_sha256: str | None = None,
    tokenizer_path: str | Path = DEFAULT_TOKENIZER,
    text_config: dict[str, Any] | None = None,
    audio_config: dict[str, Any] | None = None,
    hidden_size: int = CLAMP3_HIDDEN_SIZE,
    device: str = "cpu",
) -> ClaMP3Score:
    """The CLaMP 3 scorer: the SAAS checkpoint, a MERT-v1-95M folder and the xlm-roberta-base tokenizer
    from the local store (``sha256``/``mert_sha256`` verified when given, recorded either way).
    ``text_config``/``audio_config``/``hidden_size`` default to the released shapes (tests shrink them)."""
    from transformers import BertConfig, XLMRobertaConfig

    path = resolve_weights(weights_path, sha256=sha256, what=f"{WHAT} checkpoint", origin=ORIGIN)
    mert, mert_digest = load_mert(mert_path, mert_sha256)
    tokenizer = load_tokenizer(tokenizer_path)
    digest = sha256.lower() if sha256 is not None else sha256_file(path)
    sd, meta = load_clamp3_state_dict(path)
    model = ClaMP3TextAudio(XLMRobertaConfig(**(text_config or XLMR_BASE_CONFIG)),
                            BertConfig(**(audio_config or AUDIO_BERT_CONFIG)), hidden_size)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ScorerUnavailable(f"{WHAT}: {path} does not fit the text/audio architecture: {e}") from e
    if model.audio_model.config.hidden_size != mert.config.hidden_size:
        raise ScorerUnavailable(f"{WHAT}: audio encoder width {model.audio_model.config.hidden_size} != MERT "
                                f"feature width {mert.config.hidden_size}")
    return ClaMP3Score(model, mert, tokenizer, weights_path=path, weights_sha256=digest, mert_sha256=mert_digest,
                       checkpoint_meta=meta, device=device)
