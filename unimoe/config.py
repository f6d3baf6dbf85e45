"""The model's config: one validated type (``UniMoEConfig``, with its MoE, audio, codec, vision and
tokenizer parts), named presets and overlays.

Every config is a ``ConfigModel`` (:mod:`unimoe.common.config`, re-exported here): unknown keys and wrong
types are rejected with the key path. Presets are plain functions returning a config; variants
(ablations) are dict overlays applied with ``overlay``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

from pydantic import Field

from unimoe.common.config import ConfigError, ConfigFile, ConfigModel, TupleOf, deep_merge
from unimoe.common.config import check as _check

__all__ = ["ConfigError", "ConfigModel", "ConfigFile", "TupleOf", "deep_merge", "FFN_KINDS", "TASKS", "MoEConfig",
           "AudioConfig", "DACShape", "CodecConfig", "VisionConfig", "TokenizerConfig", "UniMoEConfig",
           "paper_preset", "tiny_preset", "tiny_random_preset", "demo_codec_config", "trained_codec_config",
           "codec_for_tokens", "DEMO_CODEC_WEIGHTS", "DEMO_CODEC_SHA256", "PRESETS", "get_preset", "overlay"]

FFN_KINDS = ("dense", "top_p", "top_k")
# The four tasks, in the order used for task ids everywhere (routing statistics, manifests, losses).
TASKS = ("zh_tts", "en_tts", "t2m", "v2m")


class MoEConfig(ConfigModel):
    """Dynamic-Capacity MoE settings (the paper's Top-P routing with null and shared experts)."""

    section = "moe"

    num_routed_experts: int = 8
    routed_intermediate: int = 2752
    num_null_experts: int = 1
    num_shared_experts: int = 2
    shared_intermediate: int = 1376
    top_p: float = 0.7
    top_k: int = 2
    # "paper": w_i = P_i / sum_{j in I} P_j (eq. 3); "uniform": the k selected experts share the routed
    # weight equally (the official code's rule, see unimoe.moe.combine_weights).
    weighting: str = "paper"
    # How routed and shared outputs are mixed.
    # "softmax" (default, the official code): one softmax over the selected dynamic logits and the
    #   shared logits, so routed + shared weights sum to one (with weighting="uniform", each of the k
    #   selected dynamic experts gets 1/k of the routed share of that softmax, as the official code).
    # "add": routed weights sum to one over the selected set; each shared expert is added with weight 1.
    shared_mixing: str = "softmax"
    # "switch": f_i * mean full-softmax probability; "official": probabilities re-normalised over the
    # experts each token selected (what the released code computes).
    balance_loss: str = "switch"
    balance_weight_start: float = 0.025
    balance_weight_end: float = 0.001
    balance_decay_steps: int = 10_000
    # "grouped": sort tokens by expert, one contiguous slice per expert; "loop": reference oracle.
    dispatch: str = "grouped"
    # Training only (module in train mode): the router's input is multiplied elementwise by
    # U(1 - j, 1 + j) noise; the experts see the unperturbed input. 0.01 is the official code's
    # input_jitter_noise (UniMoE_Audio_core.py, released config.json); 0 turns it off.
    router_input_jitter: float = 0.01
    # Provenance of the routed experts (stage 2 slices specialists' FFNs along the intermediate dim).
    specialists: list[str] = Field(default_factory=lambda: ["zh_tts", "en_tts", "t2m", "v2m"])
    slices_per_specialist: int = 2
    # Indices of the kept slices per specialist (each specialist's FFN is cut into
    # intermediate_size // routed_intermediate slices); None keeps the first slices_per_specialist.
    kept_slices: list[list[int]] | None = None

    def validate(self) -> None:
        _check(self.num_routed_experts >= 1, "moe.num_routed_experts must be >= 1")
        _check(self.num_null_experts >= 0, "moe.num_null_experts must be >= 0")
        _check(self.num_shared_experts >= 0, "moe.num_shared_experts must be >= 0")
        _check(0.0 < self.top_p <= 1.0, f"moe.top_p must be in (0, 1], got {self.top_p}")
        _check(1 <= self.top_k <= self.num_dynamic, f"moe.top_k must be in [1, {self.num_dynamic}]")
        _check(self.weighting in ("paper", "uniform"), f"moe.weighting: unknown {self.weighting!r}")
        _check(self.shared_mixing in ("softmax", "add"), f"moe.shared_mixing: unknown {self.shared_mixing!r}")
        _check(self.balance_loss in ("switch", "official"), f"moe.balance_loss: unknown {self.balance_loss!r}")
        _check(self.dispatch in ("grouped", "loop"), f"moe.dispatch: unknown {self.dispatch!r}")
        _check(self.balance_decay_steps >= 1, "moe.balance_decay_steps must be >= 1")
        _check(0.0 <= self.router_input_jitter < 1.0,
               f"moe.router_input_jitter must be in [0, 1), got {self.router_input_jitter}")
        if self.kept_slices is not None:
            _check(len(self.kept_slices) == len(self.specialists), "moe.kept_slices: one list per specialist")
            n = sum(len(k) for k in self.kept_slices)
            _check(n == self.num_routed_experts, f"moe.kept_slices keep {n} slices but num_routed_experts={self.num_routed_experts}")

    @property
    def num_dynamic(self) -> int:
        """Routed + null experts: the pool that Top-P / Top-K select from."""
        return self.num_routed_experts + self.num_null_experts

    def balance_weight(self, optimizer_step: int) -> float:
        """Linearly decaying balance-loss weight, counted in optimiser steps (not micro-batches)."""
        frac = min(max(optimizer_step, 0) / self.balance_decay_steps, 1.0)
        return self.balance_weight_start + frac * (self.balance_weight_end - self.balance_weight_start)


class AudioConfig(ConfigModel):
    """Audio token layout (DAC codebooks with a per-codebook frame delay). Special ids follow the codes:
    EOS, PAD, BOS."""

    section = "audio"

    num_codebooks: int = 12
    codebook_size: int = 1024
    # Frame delay per codebook; None means the default [0, 8, 9, ..., 7 + C - 1].
    delays: list[int] | None = None

    def validate(self) -> None:
        _check(self.num_codebooks >= 1, "audio.num_codebooks must be >= 1")
        _check(self.codebook_size >= 2, "audio.codebook_size must be >= 2")
        if self.delays is not None:
            _check(len(self.delays) == self.num_codebooks, f"audio.delays needs {self.num_codebooks} entries")
            _check(all(d >= 0 for d in self.delays), "audio.delays must be >= 0")

    @property
    def delay_pattern(self) -> list[int]:
        if self.delays is not None:
            return list(self.delays)
        return [0] + [7 + c for c in range(1, self.num_codebooks)]

    @property
    def eos_id(self) -> int:
        return self.codebook_size

    @property
    def pad_id(self) -> int:
        return self.codebook_size + 1

    @property
    def bos_id(self) -> int:
        return self.codebook_size + 2

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 3


class DACShape(ConfigModel):
    """The shape of a ``dac.DAC`` network, as its constructor takes it (defaults: the 16 kHz release's).
    The encoder rates fix the hop, and so the frame rate."""

    sample_rate: int = 16_000
    encoder_dim: int = 64
    encoder_rates: list[int] = Field(default_factory=lambda: [2, 4, 5, 8])
    decoder_dim: int = 1536
    decoder_rates: list[int] = Field(default_factory=lambda: [8, 5, 4, 2])
    codebook_dim: int = 8

    @property
    def hop(self) -> int:
        """Samples per frame."""
        return math.prod(self.encoder_rates)

    def dac_kwargs(self, n_codebooks: int, codebook_size: int, **more: Any) -> dict[str, Any]:
        """``dac.DAC`` constructor arguments: this shape with ``n_codebooks`` x ``codebook_size`` codes."""
        return dict(encoder_dim=self.encoder_dim, encoder_rates=list(self.encoder_rates), decoder_dim=self.decoder_dim,
                    decoder_rates=list(self.decoder_rates), n_codebooks=n_codebooks, codebook_size=codebook_size,
                    codebook_dim=self.codebook_dim, sample_rate=self.sample_rate, **more)


class CodecConfig(DACShape):
    """Descript Audio Codec. Real weights come from a local store; ``random_init`` builds a small,
    randomly initialised DAC of the shape given by the ``DACShape`` fields, for tests and the offline demo."""

    section = "codec"

    variant: str = "16khz"
    frame_rate: float = 50.0
    weights_path: str | None = None
    weights_sha256: str | None = None
    random_init: bool = False
    random_seed: int = 0
    # Long audio is encoded in chunks of this many seconds.
    chunk_seconds: float = 30.0

    def validate(self) -> None:
        _check(self.sample_rate > 0, "codec.sample_rate must be > 0")
        _check(abs(self.sample_rate / self.hop - self.frame_rate) < 1e-6,
               f"codec: sample_rate/prod(encoder_rates) = {self.sample_rate / self.hop} != frame_rate {self.frame_rate}")


class VisionConfig(ConfigModel):
    """Qwen2.5-VL vision tower + patch merger (projector to the decoder width)."""

    section = "vision"

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] = Field(default_factory=lambda: [7, 15, 23, 31])

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "vision.hidden_size must divide by vision.num_heads")
        _check(all(0 <= i < self.depth for i in self.fullatt_block_indexes), "vision.fullatt_block_indexes out of range")


class TokenizerConfig(ConfigModel):
    """The text tokenizer."""

    section = "tokenizer"
    # A Qwen2.5 tokenizer.json on local disk; None means "train one on corpus text" (offline demo).
    path: str | None = None
    trained_vocab_size: int = 512


class UniMoEConfig(ConfigFile):
    """The whole model: decoder backbone, FFN kinds, audio tokens, codec, vision, tokenizer."""

    name: str = "custom"
    vocab_size: int = 151_936
    hidden_size: int = 2048
    num_layers: int = 36
    num_heads: int = 16
    num_kv_heads: int = 2
    intermediate_size: int = 11_008  # dense FFN (specialists, Unify-Dense)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position: int = 32_768
    # FFN kind per layer: one kind for all layers, or a list with one entry per layer.
    ffn: str | list[str] = "top_p"
    moe: MoEConfig = Field(default_factory=MoEConfig)
    audio: AudioConfig = Field(default_factory=AudioConfig)
    codec: CodecConfig = Field(default_factory=CodecConfig)
    vision: VisionConfig | None = Field(default_factory=VisionConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    init_std: float = 0.02

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> "UniMoEConfig":
        _check(self.hidden_size % self.num_heads == 0, "hidden_size must divide by num_heads")
        _check(self.num_heads % self.num_kv_heads == 0, "num_heads must divide by num_kv_heads")
        _check(self.head_dim % 2 == 0, "head_dim must be even (rotary embedding)")
        kinds = self.ffn_kinds
        _check(len(kinds) == self.num_layers, f"ffn lists {len(kinds)} layers, model has {self.num_layers}")
        for k in kinds:
            _check(k in FFN_KINDS, f"ffn: unknown kind {k!r} (choose from {FFN_KINDS})")
        self.moe.validate()
        self.audio.validate()
        self.codec.validate()
        if self.vision is not None:
            self.vision.validate()
        return self

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_kinds(self) -> list[str]:
        return [self.ffn] * self.num_layers if isinstance(self.ffn, str) else list(self.ffn)

    @property
    def is_moe(self) -> bool:
        return any(k != "dense" for k in self.ffn_kinds)

    # ---- (de)serialisation: to_dict/to_json/to_yaml/save/load/config_hash from ConfigFile ------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UniMoEConfig":
        return super().from_dict(data).validate()


# ---- presets ---------------------------------------------------------------------------------------


def paper_preset() -> UniMoEConfig:
    """Qwen2.5-VL-3B text shapes with the released checkpoint's MoE layout (8 routed experts of
    11008/4, one null expert, two shared experts of 11008/8), 12 DAC codebooks."""
    return UniMoEConfig(
        name="paper",
        moe=MoEConfig(),
        audio=AudioConfig(num_codebooks=12, codebook_size=1024, delays=[0] + list(range(8, 19))),
        codec=CodecConfig(weights_path="dac/weights_16khz.pth"),
        vision=VisionConfig(),
    ).validate()


# The demo codec shipped in unimoe/assets/codecs/ (trained by `make demo-codec`; its provenance and
# quality report lie beside it). The checksum pins the file: regenerating the codec updates it here.
DEMO_CODEC_WEIGHTS = "builtin:codecs/demo-dac.safetensors"
DEMO_CODEC_SHA256 = "c4e56afd42257b06f78e5791d3464ce46eeee76de5ec9f00e9e97772f00f8d13"


def demo_codec_config() -> CodecConfig:
    """The shipped demo codec (a 16 kHz-family DAC, 4 x 1024 codes, 50 frames/s)."""
    return CodecConfig(variant="demo", weights_path=DEMO_CODEC_WEIGHTS, weights_sha256=DEMO_CODEC_SHA256)


def trained_codec_config(weights_path: str, weights_sha256: str | None) -> CodecConfig:
    """A codec ``unimoe codec train`` exported (a DAC safetensors file, pinned by its checksum)."""
    return CodecConfig(variant="trained", weights_path=str(weights_path), weights_sha256=weights_sha256)


def codec_for_tokens(cfg: UniMoEConfig, codec_info: dict) -> UniMoEConfig:
    """``cfg`` with the codec the token shards were made with (``codec_info``: the ``codec`` record of
    their index, ``AudioCodec.info()``), so a model trained on them decodes with that codec. Unchanged
    when the config's codec is already that one; a ``ConfigError`` when it cannot be rebuilt from the
    record (tokens of a random-init codec, but a config whose codec is another)."""
    sha = codec_info.get("weights_sha256")
    if codec_info.get("is_random_init"):
        _check(cfg.codec.random_init, "the token shards were made with a random-init codec but the model config's "
               "codec is not random-init: re-tokenise, or train with the preset the tokens were made with")
        return cfg
    if sha and sha == cfg.codec.weights_sha256:
        return cfg
    _check(bool(codec_info.get("weights_path")) and bool(sha), f"token shards' codec record lacks weights: {codec_info}")
    out = copy.deepcopy(cfg)
    out.codec = trained_codec_config(codec_info["weights_path"], sha).replace(
        sample_rate=int(codec_info["sample_rate"]), frame_rate=float(codec_info["frame_rate"]))
    return out.validate()


def tiny_preset() -> UniMoEConfig:
    """Small enough to run the whole pipeline on two CPU cores in minutes; tokenises with the demo codec."""
    return UniMoEConfig(
        name="tiny", vocab_size=640, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=128, max_position=4096,
        moe=MoEConfig(num_routed_experts=8, routed_intermediate=32, num_null_experts=1,
                      num_shared_experts=2, shared_intermediate=16),
        audio=AudioConfig(num_codebooks=4, codebook_size=1024),
        codec=demo_codec_config(),
        vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=14,
                            temporal_patch_size=2, spatial_merge_size=2, window_size=56,
                            fullatt_block_indexes=[1]),
        tokenizer=TokenizerConfig(trained_vocab_size=512),
    ).validate()


def tiny_random_preset() -> UniMoEConfig:
    """The tiny preset with a small random-init DAC instead of the demo codec: for unit tests of the
    codec plumbing only (its tokens are degenerate; nothing it generates is audio)."""
    cfg = tiny_preset()
    cfg.name = "tiny-random"
    cfg.codec = CodecConfig(random_init=True, encoder_dim=8, decoder_dim=32, codebook_dim=8)
    return cfg.validate()


PRESETS = {"tiny": tiny_preset, "tiny-random": tiny_random_preset, "paper": paper_preset}


def get_preset(name: str) -> UniMoEConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}") from None


def overlay(config: UniMoEConfig, changes: dict[str, Any]) -> UniMoEConfig:
    """A new config with ``changes`` deep-merged over ``config`` (validated; unknown keys rejected)."""
    return UniMoEConfig.from_dict(deep_merge(config.to_dict(), changes))
