"""Mandarin CER with FunASR Paraformer-zh (the paper's CER; Seed-TTS-eval protocol).

Reference: Seed-TTS-eval's ``run_wer.py`` calls ``funasr.AutoModel(model="paraformer-zh")`` and
``model.generate(input=wav_path, batch_size_s=300)``, converts the hypothesis (only) to simplified characters
(``zhconv``), strips punctuation, splits characters and scores with jiwer. On ModelScope (FunASR's
default hub) ``paraformer-zh`` is
``iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch`` — the SeACo-Paraformer
large model (``model: SeacoParaformer`` in its config.yaml), used without hotwords.

Offline loading (no hub call): the model folder in the weights store is the ModelScope snapshot
(``config.yaml``, ``model.pt``, ``tokens.json``, ``am.mvn``; ``seg_dict`` if present). ``config.yaml``
is read with OmegaConf, the tokenizer's ``token_list``, the frontend's ``cmvn_file`` and
``seg_dict_file`` are pointed at the folder's files (what FunASR's ModelScope downloader does via
``configuration.json``), and ``funasr.AutoModel`` is built from that config with no ``init_param``,
so FunASR itself reads no weights; ``model.pt`` is then read here with ``torch.load(weights_only=True)``
and loaded with ``strict=True``. Decoding is FunASR's own ``AutoModel.generate`` (WavFrontend fbank +
LFR + CMVN, CIF predictor, non-autoregressive decoder), on 16 kHz mono arrays, ``batch_size_s=300``.

Per item: ``cer`` (utterance CER), ``cer_errors`` and ``cer_ref_len``, after
``evaluation.text.normalize_pair(.., "zh", zh_rule=...)``. Default rule ``"seed-tts-eval"``, as
``run_wer.py``: the hypothesis (only) converted to simplified characters, punctuation removed, one token
per character with Latin letters split into letters and case kept ("我在NBA打球。" vs "我在nba打球":
3/7). Option ``zh_rule="t2s-both-latin-words"``: both sides simplified, a Latin run one lower-cased word
(0/5 there). The rule is part of ``version`` (``cer-rule=...``), so results under different rules are
never compared as equal.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from evaluation.scorers.base import AudioItem, ScorerUnavailable, prepare_clip, register
from evaluation.scorers.transcript import TranscriptScorer
from evaluation.text import DEFAULT_ZH_RULE, check_zh_rule
from unimoe.io import MissingWeightsError, resolve_weights, sha256_file, weights_root


SAMPLE_RATE = 16000
METRIC = "cer"
MODEL_ID = "iic/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
DEFAULT_MODEL_DIR = "paraformer/speech_seaco_paraformer_large_asr_nat-zh-cn-16k-common-vocab8404-pytorch"
WHAT = "Paraformer-zh (FunASR SeACo-Paraformer large)"
ORIGIN = f"https://modelscope.cn/models/{MODEL_ID} (the whole model folder)"
REQUIRED = ("config.yaml", "model.pt", "tokens.json", "am.mvn")


def _funasr() -> Any:
    try:
        import funasr
        from funasr import AutoModel  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ScorerUnavailable(f"paraformer_cer needs the 'funasr' package: {e}") from e
    return funasr


def resolve_model_dir(model_dir: str | Path, sha256: str | None) -> tuple[Path, Path]:
    """``(folder, model.pt)``: every required file present (clear error otherwise), model.pt verified."""
    d = Path(model_dir)
    if not d.is_absolute():
        d = weights_root() / d
    for name in REQUIRED:
        if name != "model.pt" and not (d / name).is_file():
            raise MissingWeightsError(
                f"{WHAT}: {d / name} not found. Download the model folder from {ORIGIN} and place it at {d} "
                f"(the weights store is $UNIMOE_WEIGHTS, currently {weights_root()}); nothing is downloaded at run time."
            )
    pt = resolve_weights(d / "model.pt", sha256=sha256, what=WHAT, origin=ORIGIN)
    return d, pt


def load_paraformer(model_dir: Path, weights: Path, device: str = "cpu") -> Any:
    """``funasr.AutoModel`` built from the folder's config.yaml, weights loaded here (strict)."""
    _funasr()
    from funasr import AutoModel
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(str(model_dir / "config.yaml")), resolve=True)
    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ValueError(f"{WHAT}: {model_dir / 'config.yaml'} names no model class")
    cfg.setdefault("tokenizer_conf", {})["token_list"] = str(model_dir / "tokens.json")
    if (model_dir / "seg_dict").is_file():
        cfg["tokenizer_conf"]["seg_dict_file"] = str(model_dir / "seg_dict")
    cfg.setdefault("frontend_conf", {})["cmvn_file"] = str(model_dir / "am.mvn")
    cfg.update(
        model_path=str(model_dir),
        init_param=None,  # FunASR loads nothing; weights below with weights_only=True
        device=device,
        disable_update=True,
        disable_pbar=True,
        disable_log=True,
        ncpu=torch.get_num_threads(),  # AutoModel would otherwise reset the process's thread count
    )
    cfg.setdefault("model_conf", {})
    am = AutoModel(**cfg)
    sd = torch.load(str(weights), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    am.model.load_state_dict(sd, strict=True)
    am.model.to(am.kwargs.get("device", device)).eval()
    return am


class ParaformerCER(TranscriptScorer):
    """Utterance CER of a Paraformer-zh transcript against ``AudioItem.text`` (lower is better)."""

    name = "paraformer_cer"
    resources: ClassVar[dict[str, float]] = {"GPU": 1}
    metric = METRIC
    language = "zh"
    metrics: ClassVar[dict[str, str]] = {METRIC: "lower"}

    def __init__(self, automodel: Any, *, sha256: str, model_dir: Path, batch_size_s: int = 300,
                 zh_rule: str = DEFAULT_ZH_RULE) -> None:
        from importlib.metadata import version as pkg_version

        self.zh_rule = check_zh_rule(zh_rule)
        self.am = automodel
        self.sha256 = sha256
        self.model_dir = Path(model_dir)
        self.batch_size_s = int(batch_size_s)
        self.funasr_version = pkg_version("funasr")

    @property
    def version(self) -> str:
        model = type(self.am.model).__name__
        return f"funasr {self.funasr_version} {model} (model.pt sha256:{self.sha256[:12]}) cer-rule={self.zh_rule}"

    def protocol_info(self) -> dict[str, Any]:
        return {
            "model_dir": str(self.model_dir),
            "sha256": self.sha256,
            "model_class": type(self.am.model).__name__,
            "sample_rate": SAMPLE_RATE,
            "batch_size_s": self.batch_size_s,
            "normalisation": f"evaluation.text.normalize_pair zh_rule={self.zh_rule}",
        }

    def transcribe(self, wavs: list[np.ndarray]) -> list[str]:
        """Raw transcripts of 16 kHz mono float32 clips."""
        if not wavs:
            return []
        res = self.am.generate(input=[np.asarray(w, np.float32) for w in wavs], batch_size_s=self.batch_size_s,
                               disable_pbar=True)
        if len(res) != len(wavs):
            raise RuntimeError(f"funasr returned {len(res)} results for {len(wavs)} clips")
        return [str(r.get("text", "")) for r in res]

    def recognise(self, item: AudioItem) -> str:
        # one clip per call: a failing clip cannot sink others
        return self.transcribe([prepare_clip(item.wav, item.sample_rate, SAMPLE_RATE)])[0]


@register("paraformer_cer", ParaformerCER)
def make_paraformer_cer(
    *, model_dir: str | Path = DEFAULT_MODEL_DIR, sha256: str | None = None, device: str | None = None,
    batch_size_s: int = 300, zh_rule: str = DEFAULT_ZH_RULE,
) -> ParaformerCER:
    """Load Paraformer-zh from a ModelScope-layout folder in the weights store. ``zh_rule``: the CER
    normalisation (``evaluation.text.ZH_RULES``; default seed-tts-eval's)."""
    check_zh_rule(zh_rule)
    d, pt = resolve_model_dir(model_dir, sha256)
    digest = sha256.lower() if sha256 is not None else sha256_file(pt)
    am = load_paraformer(d, pt, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return ParaformerCER(am, sha256=digest, model_dir=d, batch_size_s=batch_size_s, zh_rule=zh_rule)
