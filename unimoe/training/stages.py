"""Model construction for the training curriculum.

Stage 1 trains four dense *specialists* (one per task) whose config is :func:`specialist_config` of
the MoE model's config. Stage 2 builds the DCMoE model from them with
:func:`build_moe_from_specialists` and trains only the router and the shared experts
(:func:`stage2_trainable`); stage 3 trains everything (:func:`stage3_trainable`).

Slicing rule (how routed experts come out of the specialists)
--------------------------------------------------------------
A specialist's dense FFN has ``cfg.intermediate_size`` channels (the Qwen FFN width, 11008 for the
paper preset, 128 for tiny). It is cut along the intermediate dimension into
``num_slices = intermediate_size // moe.routed_intermediate`` contiguous slices of width
``moe.routed_intermediate``; slice ``j`` is channels ``[j * r, (j + 1) * r)``. Each specialist keeps
``moe.slices_per_specialist`` (= k) of them: ``moe.kept_slices[s]`` when given, otherwise the first k
(``[0, 1, ..., k - 1]``). Routed expert ``e`` is slice ``kept[e % k]`` of specialist
``moe.specialists[e // k]``, so experts are grouped by specialist in the order of ``moe.specialists``.

* Paper / released checkpoint: 11008 = 4 slices of 2752, k = 2 kept (slices 0 and 1, channels 0..5503)
  per specialist, 4 specialists -> 8 routed experts of 2752.
* Tiny preset: 128 = 4 slices of 32, k = 2 kept -> 8 routed experts of 32 (the same ratios).
* The 16-expert ablation (``experts-16``) cuts the same kept channels finer: 11008 = 8 slices of 1376,
  k = 4 kept (channels 0..5503 again) -> 16 experts of 1376.

Requirements (checked, with clear errors): ``k * routed_intermediate <= intermediate_size``, kept
indices unique and ``< num_slices``, ``num_routed_experts == len(specialists) * k``. When
``routed_intermediate`` does not divide ``intermediate_size`` the tail channels can never be kept;
they are listed as unused in the layout. Channels of a specialist that are not kept are discarded.

Everything that is not a routed expert is the element-wise mean of the specialists (attention, norms,
text embeddings, audio embeddings, audio head; also the FFN of any layer the MoE config keeps dense),
except the vision tower, which is copied from the V2M specialist. Router and shared experts are new,
initialised from ``seed``. The returned provenance dict is JSON-serialisable and belongs in every
checkpoint's state.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from unimoe.config import TASKS, ConfigError, UniMoEConfig
from unimoe.model import UniMoEAudio
from unimoe.moe import DCMoE, SwiGLU

VISION_SOURCE = "v2m"
PROVENANCE_VERSION = 1

__all__ = [
    "SliceLayout",
    "apply_trainable",
    "build_moe_from_specialists",
    "slice_layout",
    "specialist_config",
    "stage1_trainable",
    "stage2_trainable",
    "stage3_trainable",
    "trainable_predicate",
]


# ---- slicing layout ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertSource:
    expert: int  # routed expert index in every MoE layer
    specialist: str  # task name of the source specialist
    slice: int  # slice index within that specialist's FFN
    start: int  # first intermediate channel (inclusive)
    end: int  # last intermediate channel (exclusive)


@dataclass(frozen=True)
class SliceLayout:
    specialists: list[str]
    specialist_intermediate: int
    slice_width: int
    num_slices: int
    slices_per_specialist: int
    kept_slices: list[list[int]]  # resolved (never None)
    kept_slices_default: bool  # True when moe.kept_slices was None (first k slices)
    experts: list[ExpertSource]
    unused_tail_channels: int  # intermediate_size % slice_width: never part of any slice

    def to_dict(self) -> dict:
        return asdict(self)


def slice_layout(moe_cfg: UniMoEConfig) -> SliceLayout:
    """Resolve and validate how the routed experts are cut out of the specialists' FFNs."""
    moe_cfg.validate()
    if not moe_cfg.is_moe:
        raise ConfigError("slice_layout: the config has no MoE layer (every ffn kind is 'dense')")
    moe = moe_cfg.moe
    specs = list(moe.specialists)
    unknown = [s for s in specs if s not in TASKS]
    if unknown:
        raise ConfigError(f"moe.specialists: unknown task(s) {unknown}; choose from {list(TASKS)}")
    if len(set(specs)) != len(specs):
        raise ConfigError(f"moe.specialists: duplicate task in {specs}")
    k, width, inter = moe.slices_per_specialist, moe.routed_intermediate, moe_cfg.intermediate_size
    if k < 1:
        raise ConfigError(f"moe.slices_per_specialist must be >= 1, got {k}")
    if width < 1:
        raise ConfigError(f"moe.routed_intermediate must be >= 1, got {width}")
    if k * width > inter:
        raise ConfigError(
            f"specialist FFN too narrow: slices_per_specialist ({k}) * routed_intermediate ({width}) "
            f"= {k * width} > intermediate_size ({inter})"
        )
    if moe.num_routed_experts != len(specs) * k:
        raise ConfigError(
            f"moe.num_routed_experts ({moe.num_routed_experts}) must equal len(moe.specialists) "
            f"({len(specs)}) * moe.slices_per_specialist ({k})"
        )
    num_slices = inter // width
    if moe.kept_slices is None:
        kept = [list(range(k)) for _ in specs]
    else:
        kept = [list(map(int, ks)) for ks in moe.kept_slices]
        for s, ks in zip(specs, kept, strict=True):
            if len(ks) != k:
                raise ConfigError(
                    f"moe.kept_slices for {s!r} lists {len(ks)} slices, expected slices_per_specialist={k}"
                )
            if len(set(ks)) != len(ks):
                raise ConfigError(f"moe.kept_slices for {s!r} repeats a slice: {ks}")
            bad = [j for j in ks if not 0 <= j < num_slices]
            if bad:
                raise ConfigError(
                    f"moe.kept_slices for {s!r}: slice(s) {bad} out of range; intermediate_size {inter} / "
                    f"routed_intermediate {width} gives slices 0..{num_slices - 1}"
                )
    experts = [
        ExpertSource(
            e,
            specs[e // k],
            kept[e // k][e % k],
            kept[e // k][e % k] * width,
            (kept[e // k][e % k] + 1) * width,
        )
        for e in range(len(specs) * k)
    ]
    return SliceLayout(
        specs, inter, width, num_slices, k, kept, moe.kept_slices is None, experts, inter % width
    )


def specialist_config(moe_cfg: UniMoEConfig) -> UniMoEConfig:
    """The dense stage-1 specialist config matching an MoE config: identical except that every layer is a
    dense SwiGLU of ``intermediate_size`` channels (the width the routed experts are sliced from; see the
    module docstring). Raises :class:`ConfigError` when the MoE layout cannot be cut from that width."""
    slice_layout(moe_cfg)  # validates the slicing against intermediate_size
    data = moe_cfg.to_dict()
    data["ffn"] = "dense"
    data["name"] = f"{moe_cfg.name}-specialist"
    return UniMoEConfig.from_dict(data)


# ---- building the MoE model


def _moe_layer_indices(cfg: UniMoEConfig) -> list[int]:
    return [i for i, kind in enumerate(cfg.ffn_kinds) if kind != "dense"]


def _pattern(name: str) -> str:
    return re.sub(r"^layers\.\d+\.", "layers.*.", name)


def build_moe_from_specialists(
    moe_cfg: UniMoEConfig,
    specialists: Mapping[str, UniMoEAudio],
    *,
    seed: int = 0,
    sources: Mapping[str, str] | None = None,
) -> tuple[UniMoEAudio, dict]:
    """Stage 2 initialisation: a DCMoE model assembled from dense specialists (one per task of
    ``moe_cfg.moe.specialists``). ``seed`` initialises the router and shared experts; ``sources``
    (optional task -> checkpoint path / id) is copied into the provenance.

    Returns ``(model, provenance)``; the provenance dict is JSON-serialisable."""
    layout = slice_layout(moe_cfg)
    spec_cfg = specialist_config(moe_cfg)
    expected, given = set(layout.specialists), set(specialists)
    if expected != given:
        raise ValueError(
            f"specialists: expected exactly {sorted(expected)} (moe.specialists); "
            f"missing {sorted(expected - given)}, unexpected {sorted(given - expected)}"
        )
    if moe_cfg.vision is not None and VISION_SOURCE not in layout.specialists:
        raise ValueError(
            f"the MoE config has a vision tower, which comes from the {VISION_SOURCE!r} specialist, "
            f"but moe.specialists is {layout.specialists}"
        )
    order = layout.specialists
    params0 = None
    for task in order:
        m = specialists[task]
        if not isinstance(m, UniMoEAudio):
            raise TypeError(f"specialist {task!r}: expected a UniMoEAudio, got {type(m).__name__}")
        if m.cfg.is_moe:
            raise ValueError(
                f"specialist {task!r} is not dense (ffn={m.cfg.ffn!r}); build it from specialist_config()"
            )
        p = next(m.parameters())
        if params0 is None:
            params0 = p
        elif (p.device, p.dtype) != (params0.device, params0.dtype):
            raise ValueError(
                f"specialists disagree on device/dtype: {task!r} has {p.device}/{p.dtype}, "
                f"{order[0]!r} has {params0.device}/{params0.dtype}"
            )
    device, dtype = params0.device, params0.dtype

    # New model; router and shared experts keep this (seeded) initialisation, everything else is overwritten.
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), torch.device(device):
        torch.manual_seed(seed)
        model = UniMoEAudio(moe_cfg)
    model.to(dtype=dtype)

    moe_layers = _moe_layer_indices(moe_cfg)
    moe_prefixes = tuple(f"layers.{i}.mlp." for i in moe_layers)
    target = model.state_dict()
    states = {t: specialists[t].state_dict() for t in order}

    # Keys every specialist must have: the target's non-MoE-FFN keys plus the dense FFN of each MoE layer.
    dense_ffn_keys = {
        f"layers.{i}.mlp.{proj}.weight" for i in moe_layers for proj in ("gate_proj", "up_proj", "down_proj")
    }
    needed = {k for k in target if not k.startswith(moe_prefixes)} | dense_ffn_keys
    for task in order:
        have = set(states[task])
        missing, extra = sorted(needed - have), sorted(have - needed)
        if missing or extra:
            raise ValueError(
                f"specialist {task!r} does not match specialist_config(moe_cfg): "
                f"missing {missing[:8]}{'...' if len(missing) > 8 else ''}, "
                f"unexpected {extra[:8]}{'...' if len(extra) > 8 else ''}"
            )

    averaged, copied_vision = set(), 0
    with torch.no_grad():
        for key, dst in target.items():
            if key.startswith(moe_prefixes):
                continue
            if key.startswith("vision."):
                src = states[VISION_SOURCE][key]
                _check_shape(key, VISION_SOURCE, src, dst)
                dst.copy_(src)
                copied_vision += 1
                continue
            tensors = [states[t][key] for t in order]
            for task, src in zip(order, tensors, strict=True):
                _check_shape(key, task, src, dst)
            if dst.is_floating_point():
                acc = torch.float64 if dtype == torch.float64 else torch.float32
                dst.copy_(torch.stack([s.to(device=dst.device, dtype=acc) for s in tensors]).mean(0))
                averaged.add(_pattern(key))
            else:  # integer buffers (e.g. codebook offsets) must agree
                for task, src in zip(order, tensors, strict=True):
                    if not torch.equal(src.to(dst.device), tensors[0].to(dst.device)):
                        raise ValueError(
                            f"{key}: non-float tensor differs between specialists {order[0]!r} and {task!r}"
                        )
                dst.copy_(tensors[0])

        # Routed experts: slices of the specialists' dense FFNs.
        for i in moe_layers:
            mlp = model.layers[i].mlp
            if not isinstance(mlp, DCMoE):  # pragma: no cover - guaranteed by the config
                raise TypeError(f"layer {i}: expected DCMoE, got {type(mlp).__name__}")
            for src in layout.experts:
                dense = specialists[src.specialist].layers[i].mlp
                if not isinstance(dense, SwiGLU):
                    raise TypeError(
                        f"specialist {src.specialist!r} layer {i}: expected a dense SwiGLU, "
                        f"got {type(dense).__name__}"
                    )
                shape = tuple(dense.gate_proj.weight.shape)
                want = (layout.specialist_intermediate, moe_cfg.hidden_size)
                if shape != want or tuple(dense.down_proj.weight.shape) != want[::-1]:
                    raise ValueError(
                        f"specialist {src.specialist!r} layer {i}: FFN gate_proj is {list(shape)}, "
                        f"expected {list(want)} (intermediate_size x hidden_size of specialist_config)"
                    )
                mlp.experts.load_expert_from_dense(src.expert, dense, src.start)

    dense_layers = [i for i in range(moe_cfg.num_layers) if i not in moe_layers]
    provenance = {
        "kind": "moe_from_specialists",
        "version": PROVENANCE_VERSION,
        "moe_config_hash": moe_cfg.config_hash(),
        "specialist_config_hash": spec_cfg.config_hash(),
        "specialists": list(order),
        "specialist_sources": {t: str(sources[t]) for t in order} if sources else None,
        "slicing": layout.to_dict(),
        "expert_map": {
            str(x.expert): {"specialist": x.specialist, "slice": x.slice, "channels": [x.start, x.end]}
            for x in layout.experts
        },
        "moe_layers": moe_layers,
        "dense_layers_averaged": dense_layers,
        "averaging": {
            "method": "element-wise arithmetic mean over the specialists (equal weights), "
            "accumulated in float32 (float64 for float64 models)",
            "over": list(order),
            "parameters": sorted(averaged),
        },
        "vision": None if moe_cfg.vision is None else {"source": VISION_SOURCE, "tensors": copied_vision},
        "new_init": {
            "seed": seed,
            "init_std": moe_cfg.init_std,
            "parameters": [
                "layers.*.mlp.router.weight",
                "layers.*.mlp.shared_experts.w_gate",
                "layers.*.mlp.shared_experts.w_up",
                "layers.*.mlp.shared_experts.w_down",
            ],
        },
    }
    return model, provenance


def _check_shape(key: str, task: str, src: torch.Tensor, dst: torch.Tensor) -> None:
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(
            f"{key}: specialist {task!r} has shape {list(src.shape)}, the MoE model expects {list(dst.shape)}"
        )


# ---- what trains in which stage

# Wrapper segments that DDP / torch.compile / FSDP / activation checkpointing insert into parameter names.
_WRAPPER_SEGMENTS = {"module", "_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}


def _is_router_or_shared(name: str) -> bool:
    parts = [p for p in name.split(".") if p not in _WRAPPER_SEGMENTS]
    if parts and parts[0] == "vision":
        return False
    return any(
        parts[i] == "mlp" and parts[i + 1] in ("router", "shared_experts") for i in range(len(parts) - 1)
    )


def stage1_trainable(name: str) -> bool:
    """Stage 1 (dense specialists): everything trains."""
    return True


def stage2_trainable(name: str) -> bool:
    """Stage 2 (MoE warm-up): only the routers and the shared experts train; routed experts, attention,
    norms, embeddings, the audio head and the vision tower are frozen."""
    return _is_router_or_shared(name)


def stage3_trainable(name: str) -> bool:
    """Stage 3 (synergistic joint training): everything trains."""
    return True


def trainable_predicate(stage: int | str) -> Callable[[str], bool]:
    """Predicate for stage 1, 2, 3 or ``"joint"`` (the one-stage Unify-Dense curriculum: everything)."""
    table = {1: stage1_trainable, 2: stage2_trainable, 3: stage3_trainable, "joint": stage3_trainable}
    key = int(stage) if isinstance(stage, str) and stage.isdigit() else stage
    if key not in table:
        raise ValueError(f"unknown stage {stage!r}; choose from {list(table)}")
    return table[key]


def apply_trainable(model: nn.Module, predicate: Callable[[str], bool]) -> dict:
    """Set ``requires_grad`` of every parameter from ``predicate(name)``; returns a summary
    (trainable names and counts) for logging."""
    trainable, n_train, n_frozen = [], 0, 0
    for name, p in model.named_parameters():
        on = bool(predicate(name))
        p.requires_grad_(on)
        if on:
            trainable.append(name)
            n_train += p.numel()
        else:
            n_frozen += p.numel()
    return {"trainable": trainable, "trainable_params": n_train, "frozen_params": n_frozen}
