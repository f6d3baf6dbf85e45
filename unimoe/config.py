"""One validated config type for the model, with named presets and overlays — and the base every
config in the project builds on.

Every config is a pydantic model (``ConfigModel``): unknown keys and wrong types are rejected with the
key path (``train.lr: expected a number, got 'fast'``), so a typo in a YAML file fails loudly instead of
silently falling back to a default. Types are strict (no ``"64"`` for an integer, no ``1`` for true); an
integer is accepted for a float (YAML writes ``1e-4`` and ``1`` alike). Presets are plain functions
returning a config; variants (ablations) are dict overlays applied with ``overlay``.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

FFN_KINDS = ("dense", "top_p", "top_k")
# The four tasks, in the order used for task ids everywhere (routing statistics, manifests, losses).
TASKS = ("zh_tts", "en_tts", "t2m", "v2m")


class ConfigError(ValueError):
    """A config could not be parsed or failed validation. ``problems`` holds (key path, what is wrong)
    pairs, the path relative to the config that raised; the message names each with its full path."""

    def __init__(self, message: str, problems: list[tuple[tuple, str]] | None = None):
        super().__init__(message)
        self.problems = problems if problems is not None else [((), message)]


_T = TypeVar("_T")
# YAML and JSON have lists, never tuples: a tuple-typed field takes a list too.
TupleOf = Annotated[tuple[_T, ...], BeforeValidator(lambda v: tuple(v) if isinstance(v, list) else v)]

# Pydantic error types -> what the field expected, in words.
_EXPECTED = {"int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
             "float_type": "a number", "float_parsing": "a number", "bool_type": "true/false",
             "bool_parsing": "true/false", "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
             "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
             "none_required": "null"}
_UNKNOWN_KEY = ("extra_forbidden", "unexpected_keyword_argument")


class ConfigModel(BaseModel):
    """A validated config: strict types, unknown keys rejected, every error a ``ConfigError`` whose
    message carries the key path (prefixed with ``section``, the config's name in messages). Checks that
    span fields are ``model_validator(mode="after")`` methods raising ``ConfigError``; the model config
    keeps its explicit ``validate()`` (presets build it piecewise)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    section: ClassVar[str] = ""

    def __init__(self, **data: Any):
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise _config_error(type(self), e) from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None):
        if not isinstance(data, Mapping):
            raise ConfigError(f"{cls.section or 'config'}: expected a mapping, got {type(data).__name__}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any):
        """A copy with ``changes`` (validated, like constructing it anew)."""
        return type(self)(**{**{name: getattr(self, name) for name in type(self).model_fields}, **changes})

    def overrides(self) -> dict[str, Any]:
        """Only the fields given explicitly (to the constructor or in the file), JSON-friendly: a nested
        part of a larger config records these, so a changed default of this class is not frozen into it."""
        return self.model_dump(mode="json", include=self.model_fields_set)


def _config_error(cls: type[ConfigModel], err: ValidationError) -> ConfigError:
    """One ``ConfigError`` for all of ``err``'s problems. A nested config raised its own ``ConfigError``
    (pydantic validates it through its ``__init__``): its problems are re-rooted at the field's path."""
    problems: list[tuple[tuple, str]] = []
    unknown: dict[tuple, list[str]] = {}
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not _is_union_tag(p))
        cause = (e.get("ctx") or {}).get("error")
        if e["type"] in _UNKNOWN_KEY:
            unknown.setdefault(loc[:-1], []).append(str(loc[-1]))
        elif isinstance(cause, ConfigError):
            problems += [(loc + path, msg) for path, msg in cause.problems]
        elif cause is not None:
            problems.append((loc, str(cause)))
        elif e["type"] in _EXPECTED:
            problems.append((loc, f"expected {_EXPECTED[e['type']]}, got {e['input']!r}"))
        else:
            problems.append((loc, e["msg"]))
    for loc, keys in unknown.items():
        valid = sorted(cls.model_fields) if not loc else None
        problems.append((loc, f"unknown key(s) {sorted(keys)}" + (f"; valid keys: {valid}" if valid else "")))
    problems = _merge_union_alternatives(problems)
    return ConfigError("; ".join(f"{_key_path(cls.section, loc) or 'config'}: {msg}" for loc, msg in problems),
                       problems)


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the member of a union it tried (``str``, ``list[str]``) in an error's location;
    it is not a key."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or "[" in part)


def _merge_union_alternatives(problems: list[tuple[tuple, str]]) -> list[tuple[tuple, str]]:
    """``expected a string, got 5`` and ``expected a list, got 5`` at one key (a ``str | list`` field)
    become ``expected a string or a list, got 5``."""
    out: dict[tuple, str] = {}
    for loc, msg in problems:
        prev = out.get(loc)
        if prev and prev.startswith("expected ") and msg.startswith("expected "):
            what, _, got = msg[len("expected "):].partition(", got ")
            head, _, prev_got = prev.partition(", got ")
            out[loc] = f"{head} or {what}, got {got}" if got == prev_got else f"{prev}; {msg}"
        else:
            out[loc] = f"{prev}; {msg}" if prev else msg
    return list(out.items())


def _key_path(section: str, loc: tuple) -> str:
    path = section
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


class ConfigFile(ConfigModel):
    """File I/O and hashing for a top-level config."""

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        from unimoe.common.files import atomic_write_text

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
            raise ConfigError(f"{path}: {e}", e.problems) from None

    def config_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


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


class CodecConfig(ConfigModel):
    """Descript Audio Codec. Real weights come from a local store; ``random_init`` builds a small,
    randomly initialised DAC of the same family for tests and the offline demo."""

    section = "codec"

    variant: str = "16khz"
    sample_rate: int = 16_000
    frame_rate: float = 50.0
    weights_path: str | None = None
    weights_sha256: str | None = None
    random_init: bool = False
    random_seed: int = 0
    # Shapes of the DAC built when random_init is true (encoder rates fix the hop, hence frame rate).
    encoder_dim: int = 64
    encoder_rates: list[int] = Field(default_factory=lambda: [2, 4, 5, 8])
    decoder_dim: int = 1536
    decoder_rates: list[int] = Field(default_factory=lambda: [8, 5, 4, 2])
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
    out.codec = trained_codec_config(codec_info["weights_path"], sha).replace(
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
