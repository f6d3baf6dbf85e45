"""The scorer interface and registry (VERSA style: one module per metric family, registered by name).

A scorer loads its model from the local weights store (``unimoe.io.resolve_weights``: path + SHA-256,
a clear error naming the missing file and where it comes from), scores a batch of items, and reports
its name and version (package version and/or weights checksum) so every number written anywhere can
say exactly what produced it.

Per-item scorers (MOS predictors, aesthetics, CLAP text-audio similarity, ASR error rates, speaker
similarity) implement ``score``. Set-level metrics (FAD, KL, IS) build on per-item embeddings or
posteriors from ``embed`` and are computed in ``evaluation.metrics``. Model scorers (``ModelScorer``:
token NLL) judge the benchmark's CHECKPOINT itself on each item's ground truth, not a generated clip;
they are built with the checkpoint (``load_scorer(name, checkpoint=...)``). Each scorer class says where it
applies (``ScorerBase``: tasks, needs_reference, needs_text), as VERSA's metric metadata does.

A per-item score that fails is NaN; the scorer says why with ``note_failure`` (``item_errors``: item id
-> reason, for the items of the latest ``score`` call), which the runner reports when every item of a
task failed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping

import numpy as np

from evaluation.bench.config import MUSIC, SPEECH
from unimoe.common.audio import as_channels_first, resample, to_mono
from unimoe.io import MissingWeightsError

log = logging.getLogger(__name__)


@dataclass
class AudioItem:
    """One thing to score. ``wav`` is mono float32 at ``sample_rate``; ``text`` is the caption or
    transcript it should match; ``reference`` is e.g. the voice prompt (speaker similarity)."""

    id: str
    wav: np.ndarray
    sample_rate: int
    text: str | None = None
    language: str | None = None
    reference: np.ndarray | None = None
    reference_sample_rate: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class ScorerUnavailable(RuntimeError):
    """A scorer cannot run here (missing weights or package); the message says what is missing."""


class FailureNotes:
    """Why items got NaN: ``item_errors`` maps item id -> reason for the latest scoring call (the caller
    resets it with ``clear_failures`` before a call and reads it after)."""

    @property
    def item_errors(self) -> dict[str, str]:
        return self.__dict__.setdefault("_item_errors", {})

    def clear_failures(self) -> None:
        self.__dict__["_item_errors"] = {}

    def note_failure(self, item_id: Any, error: BaseException | str) -> None:
        """Record why ``item_id`` could not be scored (its metrics are NaN); the first reason is kept."""
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        self.item_errors.setdefault(str(item_id), reason)


def prepare_clip(wav: np.ndarray, sample_rate: int, target_rate: int, first_channel: bool = False) -> np.ndarray:
    """Mono float audio at ``target_rate`` (the channel mean, or the first channel); ValueError for empty or
    non-finite audio."""
    x = as_channels_first(wav)[0] if first_channel else to_mono(wav)
    if x.size == 0:
        raise ValueError("empty audio")
    if not np.all(np.isfinite(x)):
        raise ValueError("non-finite samples")
    return resample(x, int(sample_rate), target_rate)


def load_tensor_file(path: Any, what: str, resave_as: str = "a plain dict of tensors") -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only, never arbitrary pickles.
    A file holding anything else is refused with ScorerUnavailable naming it and how to re-save it."""
    import pickle

    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ScorerUnavailable(
            f"{what}: {path} holds objects other than tensors and plain containers and is not loaded "
            f"(weights_only=True). Re-save it as {resave_as}. ({e})"
        ) from e


def load_state_dict_file(path: Any, what: str, key: str | None = "state_dict",
                         resave_as: str = "a plain dict of tensors") -> dict:
    """:func:`load_tensor_file`, then its ``key`` entry when it has one (a training checkpoint), else the
    whole object; ScorerUnavailable when that is not a non-empty dict."""
    obj = load_tensor_file(path, what, resave_as)
    if key is not None and isinstance(obj, dict) and isinstance(obj.get(key), dict):
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise ScorerUnavailable(f"{what}: {path} holds no state dict")
    return dict(obj)


class ScorerBase:
    """What every scorer declares, as VERSA's metric metadata does: ``name``, ``metrics`` (metric name ->
    "higher" | "lower" is better), and where it applies, which the benchmark runner reads from the class
    without building the scorer (``scorer_class``):

    ``tasks``            the tasks whose clips it can judge (every task unless it says otherwise);
    ``needs_reference``  it compares each clip with reference audio: for speech the voice prompt the clip
                         was generated from (speaker similarity, judged under the paper's protocol on the
                         clips generated from each item's own prompt), for music the real recording (FAD:
                         items without one are left out);
    ``needs_text``       it compares each clip with the item's text (ASR error rates, text-audio similarity,
                         caption adherence);
    ``resources``        the Dask worker resources its tasks need (see below)."""

    name: ClassVar[str] = "scorer"
    metrics: ClassVar[dict[str, str]] = {}
    tasks: ClassVar[tuple[str, ...]] = SPEECH + MUSIC
    needs_reference: ClassVar[bool] = False
    needs_text: ClassVar[bool] = False
    # Dask worker resources a task running this scorer should get (``{"GPU": 1}`` for the neural scorers
    # that are GPU work at corpus scale): on a cluster whose workers declare them (``dask worker
    # --resources GPU=1``) the flows route such tasks there (flows.common.run_cached_map).
    resources: ClassVar[dict[str, float]] = {}

    @property
    def version(self) -> str:
        """Package version and/or weights checksum: recorded next to every score."""
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """What produced this scorer's numbers, written next to them (``scorer_protocol``): its name,
        version and metrics, and its ``protocol_info``."""
        return {"scorer": self.name, "version": self.version, "metrics": dict(self.metrics), **self.protocol_info()}

    def protocol_info(self) -> dict[str, Any]:
        """What this scorer's numbers depend on beyond its version (weights file and checksum, sample
        rate, windows, decoding, normalisation): a subclass returns its own fields here."""
        return {}


class WeightsFileModel:
    """The torch model of a scorer built on one checksummed weights file (audiobox aesthetics, CLAP, PaSST,
    OpenL3): held on ``device`` in eval mode, run ``batch_size`` clips (or windows) at a time, with the file
    and its SHA-256 recorded in the scorer's ``protocol_info`` (``weights_info``)."""

    def init_model(self, model: Any, *, weights_path: Any, weights_sha256: str, batch_size: int, device: Any) -> None:
        import torch

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.weights_path = Path(weights_path)
        self.weights_sha256 = weights_sha256
        self.batch_size = int(batch_size)

    def weights_info(self) -> dict[str, str]:
        return {"weights": str(self.weights_path), "weights_sha256": self.weights_sha256}


class Scorer(ScorerBase, FailureNotes):
    """A per-item scorer: subclasses implement ``score`` (or ``score_one``, scored item by item with
    ``score_each``)."""

    def score(self, items: list[AudioItem]) -> list[dict[str, float]]:
        """One dict of metric -> value per item (NaN where an item could not be scored)."""
        raise NotImplementedError

    def score_each(self, items: list[AudioItem], score_one: Callable[[AudioItem], Any],
                   failed: Callable[[], Any] | None = None) -> list[Any]:
        """``score_one(item)`` per item. An item that raises gets ``failed()`` (default: NaN for every
        metric), with its reason noted (``note_failure``) and logged: one bad clip never stops the batch."""
        out = []
        for item in items:
            try:
                out.append(score_one(item))
            except Exception as e:  # noqa: BLE001 - this item is NaN (with its reason), the others still count
                log.warning("%s: item %r not scored (NaN): %s", self.name, item.id, e)
                self.note_failure(item.id, e)
                out.append(failed() if failed else {m: math.nan for m in self.metrics})
        return out


class SetScorer(ScorerBase):
    """A set-level metric family (FAD, KL, IS): per-item embeddings or posteriors from ``embed`` (one entry
    per item, so they can be cached per item: a row, or an item's ``[frames, D]`` frame embeddings), and a
    metric over whole sets from ``compare``. Entries of ``generated`` and ``reference`` are aligned by item
    for paired metrics (KL). ``needs_reference``: items without reference audio are left out (FAD); when
    False, every item is scored and the reference is used where present (PaSST: IS needs none, KL pairs).
    The runner passes set-level scorers each clip with its own channels (no downmix)."""

    name: ClassVar[str] = "set-scorer"
    tasks: ClassVar[tuple[str, ...]] = MUSIC
    needs_reference: ClassVar[bool] = True

    def embed(self, items: list[AudioItem]) -> np.ndarray | list[np.ndarray]:
        """One entry per item: ``[N, D]`` rows, or a list of per-item arrays (e.g. ``[frames, D]``)."""
        raise NotImplementedError

    def compare(self, generated: np.ndarray, reference: np.ndarray | None) -> dict[str, float]:
        raise NotImplementedError


class ModelScorer(ScorerBase, FailureNotes):
    """A metric of the checkpoint itself (token NLL): it scores each benchmark item's ground truth under
    the model, given the item's conditioning, and never looks at a generated clip. ``score_items`` takes
    the items as the run manifest's dicts (``BenchItem.to_dict()``); ``cache_key`` names everything a
    score depends on besides the item's own fields (checkpoint weights, settings), so per-item scores
    can be cached per (checkpoint, item). It applies only to system ``model`` (no topline has a model);
    the registry builds it with ``checkpoint=``."""

    name: ClassVar[str] = "model-scorer"

    @property
    def cache_key(self) -> str:
        raise NotImplementedError

    def score_items(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One dict of metric -> value per item (NaN, with ``note_failure``, where an item cannot be scored)."""
        raise NotImplementedError


_REGISTRY: dict[str, Callable[..., ScorerBase]] = {}
_CLASSES: dict[str, type[ScorerBase]] = {}


def register(name: str, scorer_class: type[ScorerBase] | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a scorer factory under ``name``. ``scorer_class``: the class the factory builds (default:
    the factory itself, when it is the class), whose metadata (``ScorerBase``) is read without building it."""
    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"scorer {name!r} registered twice")
        cls = scorer_class or factory
        if not (isinstance(cls, type) and issubclass(cls, ScorerBase)):
            raise TypeError(f"scorer {name!r}: name the ScorerBase subclass its factory builds (register(name, cls))")
        _REGISTRY[name] = factory
        _CLASSES[name] = cls
        return factory

    return deco


def scorer_class(name: str) -> type[ScorerBase]:
    """The class of registered scorer ``name`` (its metadata: tasks, needs_reference, needs_text);
    KeyError for an unknown name."""
    _import_all()
    if name not in _REGISTRY:
        raise KeyError(f"unknown scorer {name!r}; known: {sorted(_REGISTRY)}")
    return _CLASSES[name]


def scorer_resources(names: Iterable[str]) -> dict[str, float]:
    """The Dask worker resources a task running all the named scorers needs: the largest amount of each
    resource any of them declares (``ScorerBase.resources``)."""
    need: dict[str, float] = {}
    for name in names:
        for resource, amount in scorer_class(name).resources.items():
            need[resource] = max(need.get(resource, 0), amount)
    return need


def is_model_scorer(name: str) -> bool:
    """Whether scorer ``name`` judges the checkpoint (needs ``checkpoint=``) rather than audio."""
    _import_all()
    return name in _REGISTRY and issubclass(_CLASSES[name], ModelScorer)


def _import_all() -> None:
    # Importing the package's modules registers their scorers; a module whose optional package is
    # missing registers nothing (its factory would raise ScorerUnavailable anyway).
    import importlib
    import pkgutil

    import evaluation.scorers as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base":
            importlib.import_module(f"evaluation.scorers.{mod.name}")


def available_scorers() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def load_scorer(name: str, **options: Any) -> ScorerBase:
    """Build a registered scorer. Raises ScorerUnavailable (with what is missing and where it comes
    from) when its weights are not in the local store."""
    _import_all()
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown scorer {name!r}; known: {sorted(_REGISTRY)}") from None
    try:
        return factory(**options)
    except MissingWeightsError as e:
        raise ScorerUnavailable(str(e)) from e


def load_scorers(names: Iterable[str], options: Mapping[str, dict[str, Any]] | None = None, *,
                 gpu_device: str | None = None) -> tuple[dict[str, Scorer | SetScorer], dict[str, str]]:
    """The named scorers that can run here, and for each of the others why not (the ScorerUnavailable
    message). ``options``: keyword arguments per scorer name. ``gpu_device`` (e.g. ``"cuda"``): where the
    scorers that declare a GPU in ``resources`` run (an explicit ``device`` option wins); the others stay
    where they are (DNSMOS's ONNX sessions, PocketSphinx, the signal analyses run on the CPU)."""
    scorers: dict[str, Scorer | SetScorer] = {}
    unavailable: dict[str, str] = {}
    for name in names:
        opts = dict((options or {}).get(name, {}))
        if gpu_device is not None and "GPU" in scorer_class(name).resources:
            opts.setdefault("device", gpu_device)
        try:
            scorers[name] = load_scorer(name, **opts)
        except ScorerUnavailable as e:
            unavailable[name] = str(e)
    return scorers, unavailable
