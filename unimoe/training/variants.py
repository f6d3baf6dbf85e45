"""Ablations as named config overlays.

A variant is a model-config overlay (a dict deep-merged over the base :class:`UniMoEConfig` with
:func:`unimoe.config.overlay`), an optional training-config overlay, and a curriculum:

``curriculum = {"stages": [...], "init": ...}``
  * ``"stages": [1, 2, 3]`` — specialists, MoE warm-up, joint training (the paper's curriculum);
  * ``"stages": [3]`` with ``"init": "random"`` — stage 3 from a randomly initialised MoE model;
  * ``"stages": ["joint"]`` with ``"init": "random"`` — one stage on the combined data of all tasks (the
    full balanced subset, every parameter trainable), stage-3 hyper-parameters unless the train overlay
    says otherwise.
  ``"init"`` says where the weights of the first listed stage come from: ``"specialists"`` (stage 2
  builds the MoE from stage 1's specialists) or ``"random"``.

Overlays that depend on the base config (matched-size dense width, finer expert slices) are functions
of the base, so every variant works for any preset (tiny and paper alike). Nothing here mutates the
base config: overlays are built from ``base.to_dict()`` and ``overlay`` deep-copies.

Unify-Dense width: an all-dense model of intermediate width ``I`` has ``3 * D * I`` FFN parameters per
layer and is otherwise identical to the MoE model, so ``I`` is chosen to make the FFN totals equal:
``I = (sum over MoE layers of [3 * D * (N * r + S * s) + (N + M + S) * D]
       + (#dense layers) * 3 * D * I_base) / (3 * D * L)``,
rounded to the nearest multiple of 8 (GEMM-friendly). The total then matches the MoE total to within
``4 * 3 * D * L`` parameters (paper preset: 24768 + 11/3 router share = 24771.7 -> 24768, < 0.01 % off;
checked against :func:`unimoe.model.parameter_report` in the tests).

8 / 16 experts: the kept channels of every specialist (``slices_per_specialist * routed_intermediate``
of them, 5504 for the paper preset) are cut into ``n / len(specialists)`` slices of equal width, so the
routed experts hold exactly the same proto-expert channels, only finer: paper 8 x 2752 vs 16 x 1376,
tiny 8 x 32 vs 16 x 16. Explicit ``kept_slices`` of the base are translated to the finer slicing.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from unimoe.config import ConfigError, UniMoEConfig, deep_merge, overlay

STAGES_FULL = [1, 2, 3]
_FULL = {"stages": STAGES_FULL, "init": "specialists"}  # the paper's curriculum: every variant's default
DENSE_ALIGN = 8

Overlay = dict[str, Any] | Callable[[UniMoEConfig], dict[str, Any]]


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    model: Overlay = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    curriculum: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(_FULL))

    def model_overlay(self, base: UniMoEConfig) -> dict[str, Any]:
        """The model overlay resolved against ``base`` (a fresh dict)."""
        return copy.deepcopy(self.model(base) if callable(self.model) else self.model)

    def as_dict(self, base: UniMoEConfig) -> dict[str, Any]:
        """``{"model": ..., "train": ..., "curriculum": ...}`` for ``base`` (JSON-serialisable)."""
        return {
            "model": self.model_overlay(base),
            "train": copy.deepcopy(self.train),
            "curriculum": copy.deepcopy(self.curriculum),
        }


# ---- base-relative overlays -------------------------------------------------------------------------------


def _moe_kinds(base: UniMoEConfig, kind: str) -> str | list[str]:
    """Every non-dense layer of ``base`` becomes ``kind`` (an all-MoE base stays a plain string)."""
    kinds = base.ffn_kinds
    if all(k != "dense" for k in kinds):
        return kind
    return [k if k == "dense" else kind for k in kinds]


def matched_dense_intermediate(base: UniMoEConfig, align: int = DENSE_ALIGN) -> int:
    """Dense FFN width making an all-dense model's total parameter count equal ``base``'s (see module doc)."""
    d, moe = base.hidden_size, base.moe
    moe_ffn = (
        3
        * d
        * (
            moe.num_routed_experts * moe.routed_intermediate
            + moe.num_shared_experts * moe.shared_intermediate
        )
        + (moe.num_dynamic + moe.num_shared_experts) * d
    )
    kinds = base.ffn_kinds
    n_moe = sum(k != "dense" for k in kinds)
    ffn_total = n_moe * moe_ffn + (len(kinds) - n_moe) * 3 * d * base.intermediate_size
    exact = ffn_total / (3 * d * base.num_layers)
    return max(align, round(exact / align) * align)


def _unify_dense(base: UniMoEConfig) -> dict[str, Any]:
    return {"ffn": "dense", "intermediate_size": matched_dense_intermediate(base)}


def finer_experts(base: UniMoEConfig, num_experts: int) -> dict[str, Any]:
    """Overlay for ``num_experts`` routed experts cut from the same kept specialist channels as ``base``."""
    moe = base.moe
    n_spec = len(moe.specialists)
    if num_experts % n_spec:
        raise ConfigError(f"{num_experts} experts cannot be split evenly over {n_spec} specialists")
    k_new = num_experts // n_spec
    kept_width = moe.slices_per_specialist * moe.routed_intermediate  # routed channels per specialist
    if kept_width % k_new:
        raise ConfigError(f"{kept_width} kept channels per specialist do not split into {k_new} equal slices")
    w_new = kept_width // k_new
    kept_new = None
    if moe.kept_slices is not None:
        kept_new = []
        for task, kept in zip(moe.specialists, moe.kept_slices, strict=True):
            channels = set()
            for j in kept:
                channels.update(range(j * moe.routed_intermediate, (j + 1) * moe.routed_intermediate))
            new = [
                j
                for j in range(base.intermediate_size // w_new)
                if set(range(j * w_new, (j + 1) * w_new)) <= channels
            ]
            if len(new) != k_new:
                raise ConfigError(
                    f"kept slices {kept} of {task!r} cannot be re-cut into {k_new} slices of {w_new}"
                )
            kept_new.append(new)
    return {
        "moe": {
            "num_routed_experts": num_experts,
            "slices_per_specialist": k_new,
            "routed_intermediate": w_new,
            "kept_slices": kept_new,
        }
    }


# ---- the registry


def _moe(kind: str, experts: int | None = None, **moe: Any) -> Callable[[UniMoEConfig], dict[str, Any]]:
    """Overlay: every non-dense layer of the base a ``kind`` DCMoE with the ``moe`` settings, with
    ``experts`` routed experts cut from the same specialist channels (``finer_experts``) when given."""

    def overlay_for(base: UniMoEConfig) -> dict[str, Any]:
        router = {"ffn": _moe_kinds(base, kind), "moe": dict(moe)}
        return router if experts is None else deep_merge(finer_experts(base, experts), router)

    return overlay_for



VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in [
        Variant(
            "unimoe-top-p0.7",
            "UniMoE-Audio default: Top-P DCMoE (p=0.7), three stages (specialists -> warm-up -> joint)",
            _moe("top_p", top_p=0.7),
        ),
        Variant(
            "unify-dense",
            "Unify-Dense: dense model of matched total size, one joint stage on all data from random init",
            _unify_dense,
            curriculum={"stages": ["joint"], "init": "random"},
        ),
        Variant(
            "unify-moe-top2",
            "Unify-MoE: Top-K router with k=2 instead of Top-P, same three-stage curriculum",
            _moe("top_k", top_k=2),
        ),
        Variant(
            "wo-init",
            "w/o initialisation: stage 3 (joint, balance loss) from a random-init MoE, no stages 1-2",
            _moe("top_p", top_p=0.7),
            curriculum={"stages": [3], "init": "random"},
        ),
        Variant("p0.5", "Top-P threshold p=0.5 (fewer experts per token), three-stage curriculum",
                _moe("top_p", top_p=0.5)),
        Variant("p0.9", "Top-P threshold p=0.9 (more experts per token), three-stage curriculum",
                _moe("top_p", top_p=0.9)),
        Variant("experts-8", "8 routed experts (2 slices per specialist; the released layout), Top-P p=0.7",
                _moe("top_p", experts=8, top_p=0.7)),
        Variant("experts-16", "16 routed experts: the same kept specialist channels cut twice as fine, Top-P p=0.7",
                _moe("top_p", experts=16, top_p=0.7)),
    ]
}

DEFAULT_VARIANT = "unimoe-top-p0.7"


def list_variants() -> list[tuple[str, str]]:
    """``(name, one-line description)`` of every variant, in registry order."""
    return [(v.name, v.description) for v in VARIANTS.values()]


def get_variant(name: str) -> Variant:
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(f"unknown variant {name!r}; choose from {list(VARIANTS)}") from None


def apply_variant(
    name: str, base_model_cfg: UniMoEConfig
) -> tuple[UniMoEConfig, dict[str, Any], dict[str, Any]]:
    """``(model config, curriculum, train overlay)`` of variant ``name`` on top of ``base_model_cfg``.
    The base is not modified; the returned dicts are fresh copies."""
    variant = get_variant(name)
    try:
        cfg = overlay(base_model_cfg, variant.model_overlay(base_model_cfg))
    except ConfigError as e:
        raise ConfigError(f"variant {name!r} on config {base_model_cfg.name!r}: {e}") from None
    curriculum = copy.deepcopy(variant.curriculum)
    curriculum["variant"] = name
    return cfg, curriculum, copy.deepcopy(variant.train)
