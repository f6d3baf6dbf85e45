"""One validated config type for the model, with named presets and overlays.

Every config is a tree of dataclasses. ``from_dict`` rejects unknown keys and wrong types, so a typo
in a YAML file fails loudly instead of silently falling back to a default. Presets are plain
functions returning a config; variants (ablations) are dict overlays applied with ``overlay``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FFN_KINDS = ("dense", "top_p", "top_k")
# The four tasks, in the order used for task ids everywhere (routing statistics, manifests, losses).
TASKS = ("zh_tts", "en_tts", "t2m", "v2m")


class ConfigError(ValueError):
    """A config could not be parsed or failed validation."""


class ConfigFile:
    """File I/O and hashing for a validated config dataclass (subclasses give ``from_dict``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from unimoe.io import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.to_yaml() if path.suffix in (".yaml", ".yml") else self.to_json())

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        text = path.read_text()
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class MoEConfig:
    """Dynamic-Capacity MoE settings (DESIGN §2.2)."""

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
    specialists: list[str] = field(default_factory=lambda: ["zh_tts", "en_tts", "t2m", "v2m"])
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


@dataclass
class AudioConfig:
    """Audio token layout (DESIGN §2.3). Special ids follow the codes: EOS, PAD, BOS."""

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


@dataclass
class CodecConfig:
    """Descript Audio Codec. Real weights come from a local store; ``random_init`` builds a small,
    randomly initialised DAC of the same family for tests and the offline demo."""

    variant: str = "16khz"
    sample_rate: int = 16_000
    frame_rate: float = 50.0
    weights_path: str | None = None
    weights_sha256: str | None = None
    random_init: bool = False
    random_seed: int = 0
    # Shapes of the DAC built when random_init is true (encoder rates fix the hop, hence frame rate).
    encoder_dim: int = 64
    encoder_rates: list[int] = field(default_factory=lambda: [2, 4, 5, 8])
    decoder_dim: int = 1536
    decoder_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 2])
    codebook_dim: int = 8
    # Long audio is encoded in chunks of this many seconds.
    chunk_seconds: float = 30.0

    def validate(self) -> None:
        _check(self.sample_rate > 0, "codec.sample_rate must be > 0")
        hop = 1
        for r in self.encoder_rates:
            hop *= r
        _check(abs(self.sample_rate / hop - self.frame_rate) < 1e-6,
               f"codec: sample_rate/prod(encoder_rates) = {self.sample_rate / hop} != frame_rate {self.frame_rate}")


@dataclass
class VisionConfig:
    """Qwen2.5-VL vision tower + patch merger (projector to the decoder width)."""

    depth: int = 32
    hidden_size: int = 1280
    intermediate_size: int = 3420
    num_heads: int = 16
    in_channels: int = 3
    patch_size: int = 14
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    window_size: int = 112
    fullatt_block_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])

    def validate(self) -> None:
        _check(self.hidden_size % self.num_heads == 0, "vision.hidden_size must divide by vision.num_heads")
        _check(all(0 <= i < self.depth for i in self.fullatt_block_indexes), "vision.fullatt_block_indexes out of range")


@dataclass
class TokenizerConfig:
    # A Qwen2.5 tokenizer.json on local disk; None means "train one on corpus text" (offline demo).
    path: str | None = None
    trained_vocab_size: int = 512


@dataclass
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
    moe: MoEConfig = field(default_factory=MoEConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    vision: VisionConfig | None = field(default_factory=VisionConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
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
    def from_dict(cls, data: dict[str, Any]) -> "UniMoEConfig":
        return _build(cls, data, "").validate()


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
DEMO_CODEC_SHA256 = "0a7f73b3873e6efe4054bc34e1d4fccfda7a40307c8b32153a838b2e6fe6110b"


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
    out.codec = dataclasses.replace(trained_codec_config(codec_info["weights_path"], sha),
                                    sample_rate=int(codec_info["sample_rate"]), frame_rate=float(codec_info["frame_rate"]))
    return out.validate()


def tiny_preset() -> UniMoEConfig:
    """Small enough to run the whole pipeline on two CPU cores in minutes; tokenises with the demo codec."""
    return UniMoEConfig(
        name="tiny",
        vocab_size=640,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        max_position=4096,
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


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---- helpers ------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(opt, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of the allowed types ({'; '.join(errors)})")
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")
