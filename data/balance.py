"""Choose a training subset approximately balanced across the four tasks, plus the stage-2 warm-up
subset. Deterministic for a seed; reports counts and hours per task before and after.

Rules
-----
**Pool.** Only ``kept`` rows whose task has a positive weight and whose ``split`` is in
``BalanceConfig.splits`` (default ``("train",)``; ``None`` = any split) are eligible. The report counts
what was excluded and why (``not_kept``, ``split``, ``task``).

**Order within a task** (the rank a row is picked in). Every row gets the key
``SHA-256(f"{seed}\\x1f{id}")``. With ``diversity=True`` (default) rows are grouped — by ``speaker``, else
by ``parent_id`` (clips of one track), else each row alone — groups are ordered by the same hash of the
group name, rows within a group by their key, and the task's order is the round-robin over groups: the
first row of every group, then the second of every group, and so on. A subset of *n* rows of a task
therefore holds as many different speakers / tracks as possible. ``diversity=False`` orders by the row
key alone. Nothing depends on the input order, so the result is a function of (pool, config). Taking
the first *n* rows of a task's order means a larger quota always yields a superset.

**Quota (water-filling).** ``by="count"``: the budget is ``total`` rows; ``by="hours"``: ``total_hours``
hours. Each task's target is ``budget * weight / sum(weights)`` (equal weights by default). A task with
no more than its target available takes everything it has; the budget left over is shared again among
the remaining tasks by weight; repeat until every remaining task can fill its share. So tasks are
exactly balanced (up to rounding) unless some are short, in which case the short ones are taken whole
and the others split the rest equally — "approximately balanced". Row counts are integers split by
the largest-remainder method (ties go to the earlier task in :data:`unimoe.config.TASKS`). In hours
mode a task takes rows in order while ``taken + duration / 2 <= quota`` (it stops within half a row of
its quota).

**Warm-up.** ``warmup_total`` rows (``warmup_total_hours`` hours in hours mode), else
``warmup_fraction`` of what the subset achieved, allocated over the *subset's* per-task amounts by the
same water-filling, and taken as the first rows of each task's order — so the warm-up is a subset of
the balanced subset and itself balanced.

**Output.** ``subset_ids`` and ``warmup_ids`` are in the manifest's row order. Subset files are JSON
(:func:`write_subset`): ``{"format": "unimoe.subset", "version": 1, "count": n, "ids": [...], "meta": {}}``,
human-readable and diffable, written atomically; :func:`read_subset` also accepts a bare JSON list.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from pydantic import model_validator

from data.manifest import ManifestRecord
from unimoe.common.files import atomic_write_text
from unimoe.config import TASKS, ConfigError, ConfigModel, TupleOf

SUBSET_FORMAT = "unimoe.subset"
SUBSET_VERSION = 1
BY = ("count", "hours")


class BalanceConfig(ConfigModel):
    """Balancing settings. ``total``/``warmup_total`` are rows (``by="count"``); ``total_hours``/
    ``warmup_total_hours`` are hours (``by="hours"``). Scale ``total`` down for the demo."""

    section = "balance"

    total: int | None = 60_000
    total_hours: float | None = None
    warmup_total: int | None = None
    warmup_total_hours: float | None = None
    warmup_fraction: float = 0.1
    seed: int = 0
    weights: dict[str, float] | None = None  # task -> weight; None = equal over TASKS
    by: str = "count"
    splits: TupleOf[str] | None = ("train",)
    diversity: bool = True

    @model_validator(mode="after")
    def _check_budgets(self) -> "BalanceConfig":
        if self.by not in BY:
            raise ConfigError(f"by must be one of {BY}, got {self.by!r}")
        if self.by == "count" and (self.total is None or self.total < 0):
            raise ConfigError(f"total must be a row count >= 0, got {self.total!r}")
        if self.by == "hours" and (self.total_hours is None or not self.total_hours >= 0):
            raise ConfigError('by="hours" needs total_hours >= 0')
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise ConfigError(f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        if self.warmup_total is not None and self.warmup_total < 0:
            raise ConfigError("warmup_total must be >= 0")
        if self.warmup_total_hours is not None and not self.warmup_total_hours >= 0:
            raise ConfigError("warmup_total_hours must be >= 0")
        w = self.task_weights
        bad = [t for t in w if t not in TASKS]
        if bad:
            raise ConfigError(f"weights name unknown task(s) {bad}; tasks are {TASKS}")
        if any(not (v >= 0 and math.isfinite(v)) for v in w.values()) or not any(v > 0 for v in w.values()):
            raise ConfigError(f"weights must be finite, >= 0 and not all zero, got {w}")
        return self

    @property
    def task_weights(self) -> dict[str, float]:
        if self.weights is None:
            return {t: 1.0 for t in TASKS}
        return {t: float(v) for t, v in self.weights.items()}

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump()
        d["weights"] = self.task_weights
        d["splits"] = list(self.splits) if self.splits is not None else None
        return d


@dataclass
class BalanceResult:
    subset_ids: list[str]
    warmup_ids: list[str]
    report: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# ordering and allocation


def _hash(seed: int, s: str) -> bytes:
    return hashlib.sha256(f"{seed}\x1f{s}".encode("utf-8", "surrogatepass")).digest()


def _group(r: ManifestRecord) -> str:
    if r.speaker:
        return f"speaker:{r.speaker}"
    if r.parent_id:
        return f"parent:{r.parent_id}"
    return f"row:{r.id}"


def task_order(rows: Sequence[ManifestRecord], seed: int, diversity: bool = True) -> list[ManifestRecord]:
    """The rows of one task in pick order (see the module docstring)."""
    keyed = sorted(rows, key=lambda r: (_hash(seed, r.id), r.id))
    if not diversity:
        return keyed
    groups: dict[str, list[ManifestRecord]] = defaultdict(list)
    for r in keyed:
        groups[_group(r)].append(r)
    ordered = [groups[g] for g in sorted(groups, key=lambda g: (_hash(seed, g), g))]
    out: list[ManifestRecord] = []
    depth = max((len(g) for g in ordered), default=0)
    for k in range(depth):
        out.extend(g[k] for g in ordered if k < len(g))
    return out


def _split(budget: float, weights: Mapping[str, float], integer: bool) -> dict[str, float]:
    total_w = sum(weights.values())
    exact = {t: budget * w / total_w for t, w in weights.items()}
    if not integer:
        return exact
    base = {t: math.floor(v) for t, v in exact.items()}
    left = int(round(budget)) - sum(base.values())
    order = sorted(weights, key=lambda t: (-(exact[t] - base[t]), TASKS.index(t)))
    for t in order[:left]:
        base[t] += 1
    return base


def allocate(budget: float, available: Mapping[str, float], weights: Mapping[str, float], *,
             integer: bool = True) -> dict[str, float]:  # fmt: skip
    """Water-filling: each task gets its weighted share of ``budget``, a task with less available
    takes all it has and the rest is shared again among the others. Sum = min(budget, sum available)."""
    alloc: dict[str, float] = {t: 0 for t in available}
    active = [t for t in TASKS if t in available and weights.get(t, 0) > 0]
    budget = max(0, int(budget)) if integer else max(0.0, float(budget))
    while active and budget > 0:
        shares = _split(budget, {t: weights[t] for t in active}, integer)
        short = [t for t in active if available[t] <= shares[t]]
        if not short:
            alloc.update(shares)
            break
        for t in short:
            alloc[t] = available[t]
            budget -= available[t]
            active.remove(t)
    return alloc


def _take(order: Sequence[ManifestRecord], quota: float, by: str) -> list[ManifestRecord]:
    if by == "count":
        return list(order[: int(quota)])
    out, acc = [], 0.0
    for r in order:
        d = float(r.duration or 0.0)
        if acc + d / 2.0 > quota + 1e-9:
            break
        out.append(r)
        acc += d
    return out


def _stats(rows: Iterable[ManifestRecord]) -> dict[str, Any]:
    rows = list(rows)
    return {
        "rows": len(rows),
        "hours": math.fsum(float(r.duration or 0.0) for r in rows) / 3600.0,
        "groups": len({_group(r) for r in rows}),
    }


def _amount(rows: Sequence[ManifestRecord], by: str) -> float:
    return len(rows) if by == "count" else math.fsum(float(r.duration or 0.0) for r in rows)


# --------------------------------------------------------------------------------------------
# balancing


def balance(records: Iterable[ManifestRecord], cfg: BalanceConfig | None = None) -> BalanceResult:
    """Pick the balanced subset and the warm-up subset from ``records`` (see the module docstring)."""
    cfg = cfg or BalanceConfig()
    records = list(records)
    weights = cfg.task_weights
    by = cfg.by
    excluded = {"not_kept": 0, "split": 0, "task": 0}
    pool: dict[str, list[ManifestRecord]] = {t: [] for t in TASKS}
    for r in records:
        if r.status != "kept":
            excluded["not_kept"] += 1
        elif r.task not in pool or weights.get(r.task, 0) <= 0:
            excluded["task"] += 1
        elif cfg.splits is not None and r.split not in cfg.splits:
            excluded["split"] += 1
        else:
            pool[r.task].append(r)
    active = [t for t in TASKS if weights.get(t, 0) > 0]

    orders = {t: task_order(pool[t], cfg.seed, cfg.diversity) for t in active}
    integer = by == "count"
    budget = cfg.total if by == "count" else float(cfg.total_hours) * 3600.0
    avail = {t: _amount(pool[t], by) for t in active}
    targets = _split(budget, {t: weights[t] for t in active}, integer)
    quotas = allocate(budget, avail, weights, integer=integer)
    chosen = {t: _take(orders[t], quotas[t], by) for t in active}

    achieved = math.fsum(_amount(v, by) for v in chosen.values())
    if by == "count":
        w_budget = cfg.warmup_total if cfg.warmup_total is not None else round(cfg.warmup_fraction * achieved)
    elif cfg.warmup_total_hours is not None:
        w_budget = cfg.warmup_total_hours * 3600.0
    else:
        w_budget = cfg.warmup_fraction * achieved
    w_quotas = allocate(w_budget, {t: _amount(chosen[t], by) for t in active}, weights, integer=integer)
    warm = {t: _take(chosen[t], w_quotas[t], by) for t in active}

    subset_set = {r.id for rows in chosen.values() for r in rows}
    warm_set = {r.id for rows in warm.values() for r in rows}
    subset_ids = [r.id for r in records if r.id in subset_set and r.status == "kept"]
    warmup_ids = [r.id for r in records if r.id in warm_set and r.status == "kept"]

    def per_task(groups: Mapping[str, Sequence[ManifestRecord]]) -> dict[str, Any]:
        return {t: _stats(groups.get(t, [])) for t in TASKS}

    unit = "rows" if by == "count" else "hours"
    scale = 1.0 if by == "count" else 1.0 / 3600.0
    report = {
        "by": by,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "requested": {"subset": budget * scale, "warmup": w_budget * scale, "unit": unit},
        "targets": {t: targets[t] * scale for t in active},
        "quotas": {t: quotas[t] * scale for t in active},
        "warmup_quotas": {t: w_quotas[t] * scale for t in active},
        "short_tasks": [t for t in active if avail[t] < targets[t]],
        "excluded": excluded,
        "pool": per_task(pool),
        "subset": per_task(chosen),
        "warmup": per_task(warm),
        "totals": {
            "pool": _stats(r for t in active for r in pool[t]),
            "subset": _stats(r for t in active for r in chosen[t]),
            "warmup": _stats(r for t in active for r in warm[t]),
        },
    }
    return BalanceResult(subset_ids=subset_ids, warmup_ids=warmup_ids, report=report)


def select_records(records: Iterable[ManifestRecord], ids: Sequence[str]) -> list[ManifestRecord]:
    """The kept rows named by ``ids``, in the order of ``ids``. Raises ``KeyError`` for an id that
    is not a kept row."""
    by_id = {r.id: r for r in records if r.status == "kept"}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise KeyError(f"{len(missing)} subset id(s) are not kept rows of the manifest, e.g. {missing[:5]}")
    return [by_id[i] for i in ids]


# --------------------------------------------------------------------------------------------
# subset files


def _check_ids(ids: Sequence[Any], where: str) -> list[str]:
    ids = list(ids)
    bad = [i for i in ids if not isinstance(i, str) or not i]
    if bad:
        raise ValueError(f"{where}: ids must be non-empty strings, got {bad[:5]}")
    if len(set(ids)) != len(ids):
        seen, dup = set(), []
        for i in ids:
            if i in seen:
                dup.append(i)
            seen.add(i)
        raise ValueError(f"{where}: duplicate id(s) {dup[:5]}")
    return ids


def write_subset(path: str | Path, ids: Sequence[str], meta: Mapping[str, Any] | None = None) -> Path:
    """Write a subset (list of row ids) as JSON, atomically. ``meta`` (e.g. the balance report) is
    stored beside the ids."""
    path = Path(path)
    ids = _check_ids(ids, str(path))
    doc = {"format": SUBSET_FORMAT, "version": SUBSET_VERSION, "count": len(ids), "ids": ids,
           "meta": dict(meta or {})}  # fmt: skip
    atomic_write_text(path, json.dumps(doc, ensure_ascii=False, indent=1, default=str) + "\n")
    return path


def read_subset(path: str | Path) -> list[str]:
    """Read the ids of a subset file (the object :func:`write_subset` writes, or a bare JSON list)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"subset file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a JSON subset file: {e}") from e
    if isinstance(doc, list):
        return _check_ids(doc, str(path))
    ok = isinstance(doc, dict) and doc.get("format") == SUBSET_FORMAT
    if not (ok and isinstance(doc.get("ids"), list)):
        raise ValueError(f"{path}: not a subset file (expected format {SUBSET_FORMAT!r} with an 'ids' list)")
    if doc.get("version") != SUBSET_VERSION:
        raise ValueError(
            f"{path}: subset file version {doc.get('version')!r}, this code reads {SUBSET_VERSION}"
        )
    ids = _check_ids(doc["ids"], str(path))
    if doc.get("count") is not None and doc["count"] != len(ids):
        raise ValueError(f"{path}: count {doc['count']} != {len(ids)} ids")
    return ids
