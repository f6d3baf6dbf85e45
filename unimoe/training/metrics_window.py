"""The statistics of the optimiser steps since the last logging step, reduced over ranks into the rows
of the ``train``, ``routing_hist`` and ``routing_tasks`` metrics tables (``unimoe.training.metrics``
documents the columns; torchtitan's ``MetricsProcessor`` plays the same part)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unimoe.config import TASKS, UniMoEConfig
from unimoe.training.parallel import all_reduce_sum_

# The summed statistics, in the order they travel in the one all-reduce of a logging step.
_KEYS = ("task_ce", "task_cnt", "hist_dyn", "hist_routed", "task_sel", "counters")


class MetricsWindow:
    """Sums per-micro-batch statistics (``TrainLoss.last``) and keeps the per-step records until the next
    logging step. ``moe_layers``: indices of the model's MoE layers (``TrainLoss.moe_layers``)."""

    def __init__(self, model_cfg: UniMoEConfig, moe_layers: list[int]):
        self.model_cfg = model_cfg
        self.moe_layers = list(moe_layers)
        self.reset()

    def reset(self) -> None:
        k, n_tasks = self.model_cfg.audio.num_codebooks, len(TASKS)
        n_moe = len(self.moe_layers)
        moe = self.model_cfg.moe
        self.sums = {
            "task_ce": torch.zeros(n_tasks, k, dtype=torch.float64),
            "task_cnt": torch.zeros(n_tasks, k, dtype=torch.float64),
            "hist_dyn": torch.zeros(n_moe, moe.num_dynamic + 1, dtype=torch.float64),
            "hist_routed": torch.zeros(n_moe, moe.num_routed_experts + 1, dtype=torch.float64),
            "task_sel": torch.zeros(n_moe, n_tasks, moe.num_dynamic, dtype=torch.float64),
            "counters": torch.zeros(3, dtype=torch.float64),  # tokens, target frames, sequences
        }
        self.steps: list[dict[str, float]] = []
        self.seconds = 0.0

    def add_micro_batch(self, last: dict[str, Any]) -> None:
        w = self.sums
        w["task_ce"] += last["task_ce"].cpu()
        w["task_cnt"] += last["task_cnt"].cpu()
        moe = self.model_cfg.moe
        for j, st in enumerate(last["routing"]):
            if st is None:
                continue
            w["hist_dyn"][j] += torch.bincount(st.experts_per_token.cpu(), minlength=moe.num_dynamic + 1)[: moe.num_dynamic + 1].double()
            w["hist_routed"][j] += torch.bincount(st.routed_per_token.cpu(), minlength=moe.num_routed_experts + 1)[: moe.num_routed_experts + 1].double()
            if st.task_counts is not None:
                w["task_sel"][j] += st.task_counts.cpu().double()
        w["counters"] += torch.tensor([last["tokens"], last["target_frames"], last["sequences"]], dtype=torch.float64)

    def add_step(self, rec: dict[str, float]) -> None:
        self.steps.append(rec)
        self.seconds += rec["seconds"]

    def reduce(self, world_size: int) -> dict[str, Tensor]:
        """The window's sums over all ranks (one all-reduce; every rank calls it)."""
        flat = torch.cat([self.sums[k].reshape(-1) for k in _KEYS])
        all_reduce_sum_(flat, world_size)
        totals, off = {}, 0
        for key in _KEYS:
            n = self.sums[key].numel()
            totals[key] = flat[off:off + n].view(self.sums[key].shape)
            off += n
        return totals

    def rows(self, t: dict[str, Tensor], epoch: float, world_size: int) -> dict[str, list[dict[str, Any]]]:
        """The rows of each metrics table for the window (``t``: :meth:`reduce`'s totals)."""
        steps, seconds = self.steps, self.seconds
        last = steps[-1]
        mean = lambda key: float(np.mean([s[key] for s in steps]))  # noqa: E731
        cb_cnt = t["task_cnt"].sum(0)
        per_cb = torch.where(cb_cnt > 0, t["task_ce"].sum(0) / cb_cnt.clamp(min=1), torch.full_like(cb_cnt, math.nan))
        row = {"loss": mean("loss"), "ce": mean("ce"), "aux": mean("aux"), "balance_weight": last["balance_weight"],
               "lr": last["lr"], "grad_norm": last["grad_norm"], "steps_in_window": len(steps),
               "tokens": float(t["counters"][0]), "target_frames": float(t["counters"][1]),
               "sequences": float(t["counters"][2]), "tokens_per_s": float(t["counters"][0]) / max(seconds, 1e-9),
               "step_seconds": seconds, "epoch": epoch, "world_size": world_size,
               "per_codebook": [float(x) for x in per_cb]}
        for ti, task in enumerate(TASKS):
            cnt = t["task_cnt"][ti]
            has = cnt > 0
            row[f"loss_{task}"] = float((t["task_ce"][ti][has] / cnt[has]).mean()) if bool(has.any()) else math.nan
            row[f"frames_{task}"] = float(cnt[0])
        moe = self.model_cfg.moe
        hist, tasks_rows = [], []
        for j, layer in enumerate(self.moe_layers):
            for kind, key in (("dynamic", "hist_dyn"), ("routed", "hist_routed")):
                for n_exp, count in enumerate(t[key][j].tolist()):
                    hist.append({"layer": layer, "kind": kind, "num_experts": n_exp, "count": float(count)})
            for ti, task in enumerate(TASKS):
                for e, count in enumerate(t["task_sel"][j, ti].tolist()):
                    tasks_rows.append({"layer": layer, "task": task, "expert": e,
                                       "is_null": e >= moe.num_routed_experts, "count": float(count)})
        return {"train": [row], "routing_hist": hist, "routing_tasks": tasks_rows}
