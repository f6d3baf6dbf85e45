"""Deterministic data order, dataset views and the item -> ``Batch`` path of the trainer.

The trainer takes a *generic* dataset: anything with ``__len__`` and ``__getitem__`` whose items have
``.id``, ``.task``, ``.codes`` (LongTensor ``[K, T]``) and ``.text`` (optionally ``.video``,
``.ref_text``, ``.ref_codes``). :class:`unimoe.training.shards.TokenShardReader` is one; a list of
:class:`SyntheticItem` is another. Nothing here imports ``data/``.

Data order
----------
``DataOrder`` walks a seeded permutation of ``0..n-1`` per epoch (``default_rng([seed, epoch])``), with a
cursor. A step's *global batch* (``batch_size * world_size * grad_accum`` sequences) is the next
slice of that walk, continuing into the next epoch's permutation when one runs out. Micro-batch ``m``
of a step is global positions ``[m * B * W, (m + 1) * B * W)``, and rank ``r`` takes the strided slice
``[r::W]`` of it, so the union over ranks is exactly what one process with ``batch_size = B * W``
would take. The state saved in checkpoints is ``(epoch, cursor)``.

Per-item randomness (crop offset, condition dropout) is drawn from ``default_rng([seed, epoch, index,
salt])``: it depends on the item and the epoch only, not on the rank or the batch it lands in, so it is
identical under data parallelism, after a resume and in a single-process reference run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from unimoe.config import TASKS, UniMoEConfig
from unimoe.model import Batch
from unimoe.sequence import Example, SequenceBuilder, collate
from unimoe.training.config import TrainConfig

_SALT_CROP, _SALT_DROPOUT = 1, 2

# Splits that no training stage may see: the curated corpus holds out a seeded share per task as "test"
# (held-out NLL, the demo benchmark). ``train_stage`` drops these rows; the Trainer refuses a dataset
# that still holds one.
HELD_OUT_SPLITS = ("test",)


# ---- order -------------------------------------------------------------------------------------------


class DataOrder:
    """Seeded per-epoch permutation of ``n`` items with a cursor; rank-strided global batches."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, *, shuffle: bool = True):
        if n < 1:
            raise ValueError("DataOrder needs at least one item")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.n, self.seed, self.rank, self.world_size, self.shuffle = int(n), int(seed), rank, world_size, shuffle
        self.epoch, self.cursor = 0, 0
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._perm_epoch = epoch
        return self._perm

    def take(self, size: int) -> list[tuple[int, int]]:
        """The next ``size`` global positions as ``(epoch, index)`` pairs (advances the cursor)."""
        out: list[tuple[int, int]] = []
        while len(out) < size:
            perm = self.permutation(self.epoch)
            k = min(size - len(out), self.n - self.cursor)
            out += [(self.epoch, int(i)) for i in perm[self.cursor:self.cursor + k]]
            self.cursor += k
            if self.cursor == self.n:
                self.epoch, self.cursor = self.epoch + 1, 0
        return out

    def shard(self, global_batch: Sequence[Any]) -> list[Any]:
        """This rank's strided slice of one (micro-)batch taken by all ranks together."""
        return list(global_batch[self.rank::self.world_size])

    def next_batch(self, global_size: int) -> list[int]:
        """This rank's dataset indices of the next global batch of ``global_size`` items."""
        return [i for _, i in self.shard(self.take(global_size))]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["n"]) != self.n or int(state["seed"]) != self.seed:
            raise ValueError(f"data order state is for n={state['n']}, seed={state['seed']}; "
                             f"this run has n={self.n}, seed={self.seed} (a different dataset view?)")
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


# ---- dataset views -----------------------------------------------------------------------------------


class DatasetView:
    """Items ``indices`` of ``base``, re-indexed ``0..len-1``."""

    def __init__(self, base: Any, indices: Sequence[int]):
        self.base, self.indices = base, [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.base[self.indices[i]]

    def row(self, i: int) -> dict:
        """The base's tensor-free record of item ``i`` (only when the base has ``row``)."""
        return self.base.row(self.indices[i])


def item_split(dataset: Any, i: int) -> str | None:
    """The ``split`` of item ``i`` ("train", "test", ...; None when unknown), read from the dataset's
    tensor-free ``row(i)`` when it has one (token shards), else from the item."""
    if _has_row(dataset):
        return dataset.row(i).get("split")
    return getattr(dataset[i], "split", None)


def _has_row(dataset: Any) -> bool:
    if isinstance(dataset, DatasetView):
        return _has_row(dataset.base)
    return callable(getattr(dataset, "row", None))


def held_out_positions(dataset: Any, splits: Sequence[str] = HELD_OUT_SPLITS) -> list[int]:
    """Positions of ``dataset`` whose split is one of ``splits``."""
    splits = set(splits)
    return [i for i in range(len(dataset)) if item_split(dataset, i) in splits] if splits else []


def subset_indices(dataset: Any, *, tasks: Iterable[str] | None = None, ids: Iterable[str] | None = None,
                   exclude_splits: Iterable[str] = ()) -> list[int]:
    """Indices of ``dataset`` whose task is in ``tasks`` and id in ``ids`` (each filter optional) and
    whose split is not in ``exclude_splits``, in dataset order for tasks and in the given order for ids.
    Uses the dataset's ``by_task`` / ``by_ids`` / ``row`` when it has them (a token-shard reader answers
    from its index without reading tensors)."""
    if tasks is not None:
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {TASKS}")
    if ids is not None:
        ids = list(ids)
        if hasattr(dataset, "by_ids"):
            idx = list(dataset.by_ids(ids))
        else:
            pos = {dataset[i].id: i for i in range(len(dataset))}
            missing = [x for x in ids if x not in pos]
            if missing:
                raise KeyError(f"{len(missing)} id(s) not in the dataset: {missing[:10]}")
            idx = [pos[x] for x in ids]
    else:
        idx = list(range(len(dataset)))
    if tasks is not None:
        if hasattr(dataset, "by_task"):
            keep = {i for t in tasks for i in dataset.by_task(t)}
        else:
            keep = {i for i in idx if dataset[i].task in tasks}
        idx = [i for i in idx if i in keep]
    exclude = set(exclude_splits)
    if exclude:
        idx = [i for i in idx if item_split(dataset, i) not in exclude]
    return idx


def dataset_view(dataset: Any, *, tasks: Iterable[str] | None = None, ids: Iterable[str] | None = None,
                 exclude_splits: Iterable[str] = ()) -> Any:
    """``dataset`` itself when no filter is given (and no item is excluded), else a :class:`DatasetView`
    of the matching items."""
    exclude_splits = tuple(exclude_splits)
    idx = subset_indices(dataset, tasks=tasks, ids=ids, exclude_splits=exclude_splits)
    if tasks is None and ids is None and len(idx) == len(dataset):
        return dataset
    if not idx:
        raise ValueError(f"no items left after filtering (tasks={tasks}, ids given={ids is not None}, "
                         f"excluded splits {list(exclude_splits)})")
    return DatasetView(dataset, idx)


# ---- synthetic data (tests, smoke runs) ------------------------------------------------------------------


@dataclass
class SyntheticItem:
    id: str
    task: str
    codes: torch.Tensor
    text: str | None = None
    video: np.ndarray | None = None
    split: str | None = None


_WORDS = ("the quick brown fox jumps over a lazy dog calm piano melody string quartet energetic "
          "hello world speech test major minor tempo").split()


def synthetic_dataset(n: int, num_codebooks: int, *, codebook_size: int = 1024, seed: int = 0,
                      min_frames: int = 4, max_frames: int = 12, tasks: Sequence[str] = ("zh_tts", "en_tts", "t2m"),
                      video_frames: int = 2, video_size: int = 28) -> list[SyntheticItem]:
    """``n`` deterministic items with random codes and texts, tasks cycling through ``tasks`` (v2m
    items get small random videos)."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        task = tasks[i % len(tasks)]
        t = int(rng.integers(min_frames, max_frames + 1))
        codes = torch.from_numpy(rng.integers(0, codebook_size, (num_codebooks, t))).long()
        text = " ".join(rng.choice(_WORDS, int(rng.integers(2, 6))))
        video = rng.integers(0, 255, (video_frames, video_size, video_size, 3), dtype=np.uint8) if task == "v2m" else None
        items.append(SyntheticItem(id=f"syn-{seed}-{i:05d}", task=task, codes=codes, text=text, video=video))
    return items


# ---- item -> example -> batch ---------------------------------------------------------------------------------


def item_rng(seed: int, epoch: int, index: int, salt: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, salt])


def crop_codes(codes: torch.Tensor, max_frames: int, mode: str, rng: np.random.Generator | None = None) -> torch.Tensor:
    """At most ``max_frames`` frames of ``codes [K, T]``: the first ones (``start``) or a window at a
    seeded offset (``random``)."""
    t = codes.shape[1]
    if t <= max_frames:
        return codes
    start = 0 if mode == "start" else int((rng or np.random.default_rng(0)).integers(0, t - max_frames + 1))
    return codes[:, start:start + max_frames]


class BatchMaker:
    """Turns dataset items into model batches: crop, condition dropout, sequence building, collation."""

    def __init__(self, model_cfg: UniMoEConfig, train_cfg: TrainConfig, builder: SequenceBuilder):
        self.cfg, self.tcfg, self.builder = model_cfg, train_cfg, builder
        self.pad_id = builder.tok.pad_id
        self.v2m_without_video = 0

    def example(self, item: Any, epoch: int, index: int) -> tuple[Example, bool]:
        """(example, conditional) for dataset item ``index`` in ``epoch``."""
        codes = torch.as_tensor(item.codes).long()
        k = self.cfg.audio.num_codebooks
        if codes.dim() != 2 or codes.shape[0] != k:
            raise ValueError(f"item {getattr(item, 'id', index)}: codes of shape {tuple(codes.shape)}, "
                             f"the model expects [{k}, T]")
        if codes.shape[1] == 0:
            raise ValueError(f"item {getattr(item, 'id', index)}: no audio frames")
        codes = crop_codes(codes, self.tcfg.max_frames, self.tcfg.crop,
                           item_rng(self.tcfg.seed, epoch, index, _SALT_CROP))
        conditional = True
        if self.tcfg.cond_dropout > 0:
            conditional = bool(item_rng(self.tcfg.seed, epoch, index, _SALT_DROPOUT).random() >= self.tcfg.cond_dropout)
        task = item.task
        video = getattr(item, "video", None)
        if task == "v2m" and video is None:
            if self.tcfg.missing_video == "error":
                raise ValueError(f"item {getattr(item, 'id', index)}: a v2m item without video frames (tokenise "
                                 "with video_frames=True, or set train.missing_video='caption_only')")
            self.v2m_without_video += 1
        ex = Example(task="t2m" if task == "v2m" and video is None else task, text=getattr(item, "text", None),
                     codes=codes, ref_text=getattr(item, "ref_text", None),
                     ref_codes=getattr(item, "ref_codes", None), video=video)
        return ex, conditional

    def batch(self, dataset: Any, positions: Sequence[tuple[int, int]]) -> Batch:
        """The collated batch of ``(epoch, index)`` positions (right padding)."""
        seqs = []
        for epoch, index in positions:
            item = dataset[index]
            ex, conditional = self.example(item, epoch, index)
            seq = self.builder.build(ex, conditional=conditional)
            seq.task_id = TASKS.index(item.task)  # a caption-only v2m item still counts as v2m
            seqs.append(seq)
        return collate(seqs, self.pad_id, self.cfg.audio.pad_id)
