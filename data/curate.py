"""The curation pipeline as plain functions over files: build/ingest -> segment -> caption -> filter ->
balance -> tokenise. The Prefect ``curate`` flow (flows/curate.py) calls exactly these,
one task per step or per shard; they can equally be called directly (tests, benchmarks).

Every function reads and writes paths (Parquet manifests, JSON, token shards), writes atomically,
and never drops a row: the manifest after each step holds every row of the step before, each with
one status (kept / filtered(reason) / quarantined(reason)). ``check_accounting`` verifies that.

Workspace layout (``work`` = <workspace>/curate):
    corpus/demo/...               the built demo corpus (demo profile)
    work/raw.parquet              ingested rows (kept + quarantined)
    work/segmented.parquet        long music cut into clips
    work/shards/NNNN.parquet      segmented rows split for per-shard work
    work/captioned/NNNN.parquet   after captioning
    work/filtered/NNNN.parquet    after quality filtering
    work/curated.parquet          all rows, final statuses (after tokenisation failures too)
    work/subset.json, warmup.json the balanced subset and the stage-2 warm-up subset
    work/tokens/                  token shards + index.json + tokenizer.json
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Mapping

from pydantic import Field, model_validator

from data.balance import BalanceConfig, balance, write_subset
from data.manifest import ManifestRecord, read_kept_texts, read_manifest, status_counts, write_manifest
from data.quality import QualityConfig, filter_records, plan_scorers, quality_report
from data.segment import segment_records
from unimoe.config import ConfigError, ConfigModel, UniMoEConfig, get_preset, trained_codec_config
from unimoe.common.files import atomic_write_json


class CurateConfig(ConfigModel):
    """What to curate and how. The nested ``quality`` and ``balance`` parts record only the fields given
    (``ConfigModel.overrides``), so the whole config is JSON/YAML friendly and hashable for caching."""

    section = "curate"

    corpus: str = "demo"                 # adapter name (data.sources.ADAPTERS)
    corpus_root: str | None = None       # required unless corpus == "demo"
    demo_size: str = "default"           # "default" | "small" (demo corpus only)
    adapter_options: dict[str, Any] = Field(default_factory=dict)
    clip_seconds: float = 20.0
    tail: str = "drop"
    rows_per_shard: int = 64
    captioner: str = "offline"           # "offline" | "gemini"
    caption_options: dict[str, Any] = Field(default_factory=dict)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    balance: BalanceConfig = Field(default_factory=BalanceConfig)
    model_preset: str = "tiny"           # whose codec + tokenizer config tokenisation uses
    # a DAC weights file to tokenise with instead of the preset's codec (what `unimoe codec train`
    # exported), pinned by its SHA-256 (so a retrained file at the same path re-tokenises)
    codec_weights: str | None = None
    codec_sha256: str | None = None
    token_rows_per_shard: int = 256
    token_video_frames: bool = True      # store V2M video frames in the token shards (training reads them)

    @classmethod
    def demo(cls, size: str = "default") -> "CurateConfig":
        """The offline demo profile: clips as long as the demo builder cuts them, a DNSMOS bar that the
        demo's synthetic voices can pass, only the "train" split balanced (the demo corpus holds out a
        seeded "test" share per task for the demo benchmark and held-out NLL), and the subset balanced by
        hours (the demo has far fewer music clips than sentences, but they are longer)."""
        from data.demo_corpus import DemoCorpusConfig

        demo = DemoCorpusConfig.small() if size == "small" else DemoCorpusConfig.default()
        balance = ({"by": "hours", "total_hours": 0.7, "total": None} if size == "default"
                   else {"by": "count", "total": 12})
        return cls(demo_size=size, clip_seconds=demo.clip_seconds, quality={"dnsmos_ovrl_min": 2.2},
                   balance={**balance, "splits": ["train"], "warmup_fraction": 0.25})

    @model_validator(mode="after")
    def _check_sources(self) -> "CurateConfig":
        if self.corpus != "demo" and not self.corpus_root:
            raise ConfigError(f"corpus {self.corpus!r} needs corpus_root")
        if self.demo_size not in ("default", "small"):
            raise ConfigError("demo_size must be 'default' or 'small'")
        if self.rows_per_shard < 1 or self.token_rows_per_shard < 1:
            raise ConfigError("rows per shard must be >= 1")
        if self.codec_sha256 and not self.codec_weights:
            raise ConfigError("codec_sha256 is set but codec_weights is not")
        return self

    def validate(self) -> None:
        """Raise ``ConfigError`` if the config (changed since it was built) is inconsistent."""
        type(self).from_dict(self.to_dict())

    def with_absolute_paths(self) -> "CurateConfig":
        """The config with its paths made absolute in this process: ``corpus_root`` against the working
        directory, a relative ``codec_weights`` against the weights store ($UNIMOE_WEIGHTS), as they are
        read here. Shard tasks may run on other machines (a Dask cluster) whose working directory and
        store differ; an absolute path names the same file there as long as the corpus, the workspace and
        the codec file are mounted at the same paths. Absolute paths also make the steps' cache keys
        fingerprint the files (a bare relative name does not look like a path)."""
        from unimoe.io import BUILTIN_PREFIX, weights_root

        update: dict[str, Any] = {}
        if self.corpus_root:
            update["corpus_root"] = str(Path(self.corpus_root).expanduser().resolve())
        if self.codec_weights and not self.codec_weights.startswith(BUILTIN_PREFIX):
            update["codec_weights"] = str((weights_root() / Path(self.codec_weights).expanduser()).resolve())
        return self.model_copy(update=update)

    def quality_config(self) -> QualityConfig:
        return self.quality

    def balance_config(self) -> BalanceConfig:
        return self.balance

    def model_preset_config(self) -> UniMoEConfig:
        """The model config whose codec and tokenizer tokenisation uses."""
        cfg = get_preset(self.model_preset)
        if self.codec_weights:
            cfg.codec = trained_codec_config(self.codec_weights, self.codec_sha256)
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {**self.model_dump(), "quality": self.quality.overrides(), "balance": self.balance.overrides()}


# Each step reads only these config fields. A flow hands each step's task just its part
# (``step_config``), so changing one step's settings re-runs that step and what depends on its output,
# not the whole curation.
STEP_FIELDS = {
    "build": ("corpus", "corpus_root", "demo_size"),
    "ingest": ("corpus", "corpus_root", "adapter_options"),
    "segment": ("clip_seconds", "tail"),
    "caption": ("captioner", "caption_options"),
    "filter": ("quality",),
    "balance": ("balance",),
    "tokenize": ("model_preset", "codec_weights", "codec_sha256", "token_rows_per_shard", "token_video_frames"),
}


def step_config(cfg: Mapping[str, Any], step: str) -> dict[str, Any]:
    """The fields of ``cfg`` (a ``CurateConfig.to_dict()``) that ``step`` reads."""
    return {k: cfg[k] for k in STEP_FIELDS[step]}


def quality_scorer_names(cfg: CurateConfig) -> list[str]:
    """The scorers the quality filter may use (signal checks need none)."""
    q = cfg.quality_config()
    return [n for n in (*q.speech_paper, q.speech_substitute, *q.music_paper) if n != "signal_checks"]


# ---- steps -------------------------------------------------------------------------------------------


def build_corpus(cfg: CurateConfig, out_dir: str | Path, progress: bool = False) -> Path:
    """The corpus root: the demo corpus built (or resumed) under ``out_dir``, or the configured root."""
    if cfg.corpus != "demo":
        root = Path(cfg.corpus_root)
        if not root.is_dir():
            raise FileNotFoundError(f"corpus root {root} does not exist")
        return root
    from data.demo_corpus import DemoCorpusConfig, build_demo_corpus

    demo = DemoCorpusConfig.small() if cfg.demo_size == "small" else DemoCorpusConfig.default()
    build_demo_corpus(out_dir, demo, progress=progress)
    return Path(out_dir)


def ingest(cfg: CurateConfig, root: str | Path, out: str | Path) -> Path:
    from data.sources import ingest as ingest_corpus

    return ingest_corpus(cfg.corpus, root, out, **cfg.adapter_options)


def segment(cfg: CurateConfig, manifest: str | Path, out: str | Path) -> Path:
    return write_manifest(out, segment_records(read_manifest(manifest), cfg.clip_seconds, cfg.tail))


def split_shards(manifest: str | Path, out_dir: str | Path, rows_per_shard: int) -> list[Path]:
    """Split a manifest into numbered shard manifests (rows in id order), for per-shard tasks."""
    records = sorted(read_manifest(manifest), key=lambda r: (r.id, r.status))
    out_dir = Path(out_dir)
    paths = []
    for i in range(0, max(len(records), 1), rows_per_shard):
        paths.append(write_manifest(out_dir / f"{i // rows_per_shard:04d}.parquet", records[i:i + rows_per_shard]))
    for stale in sorted(out_dir.glob("*.parquet"))[len(paths):]:  # left by an earlier, larger split
        stale.unlink()
    return paths


def caption_shard(cfg: CurateConfig, shard: str | Path, out: str | Path, cache_dir: str | Path,
                  api_key: str | None = None) -> Path:
    from data.captioning import make_captioner, caption_records

    with make_captioner(cfg.captioner, api_key=api_key, cache_dir=cache_dir, **cfg.caption_options) as captioner:
        return write_manifest(out, caption_records(read_manifest(shard), captioner))


def filter_shard(cfg: CurateConfig, shard: str | Path, out: str | Path, scorers: Mapping[str, Any],
                 unavailable: Mapping[str, str]) -> Path:
    """Quality-filter one shard. ``scorers`` are the loaded scorer objects the caller (the flow, which
    may import evaluation/) could build; ``unavailable`` says why the others could not be."""
    records = filter_records(read_manifest(shard), cfg.quality_config(), dict(scorers), dict(unavailable))
    return write_manifest(out, records)


def merge(paths: list[str | Path], out: str | Path) -> Path:
    records: list[ManifestRecord] = []
    for p in paths:
        records += read_manifest(p)
    return write_manifest(out, sorted(records, key=lambda r: (r.id, r.status)))


def balance_subsets(cfg: CurateConfig, manifest: str | Path, out_dir: str | Path) -> dict[str, Any]:
    result = balance(read_manifest(manifest), cfg.balance_config())
    out_dir = Path(out_dir)
    write_subset(out_dir / "subset.json", result.subset_ids, {"report": result.report})
    write_subset(out_dir / "warmup.json", result.warmup_ids, {"report": result.report})
    return {"subset": str(out_dir / "subset.json"), "warmup": str(out_dir / "warmup.json"),
            "subset_rows": len(result.subset_ids), "warmup_rows": len(result.warmup_ids), "report": result.report}


def plan_token_shards(cfg: CurateConfig, manifest: str | Path, tokens_dir: str | Path) -> list[list[str]]:
    """Token shard plans as lists of row ids (small records a task can take), after training or
    loading the text tokenizer into ``tokens_dir/tokenizer.json``."""
    from data.tokenize import plan_shards

    codec, tok = _codec_and_tokenizer(cfg, manifest, tokens_dir)
    plans = plan_shards(read_manifest(manifest), cfg.token_rows_per_shard, codec=codec, tokenizer=tok,
                        video_frames=cfg.token_video_frames)
    return [list(p.ids) for p in plans]


def tokenize_one_shard(cfg: CurateConfig, manifest: str | Path, ids: list[str], index: int,
                       tokens_dir: str | Path) -> dict[str, Any]:
    from data.tokenize import tokenize_shard

    by_id = {r.id: r for r in read_manifest(manifest, ids=ids) if r.status == "kept"}
    codec, tok = _codec_and_tokenizer(cfg, manifest, tokens_dir)
    return tokenize_shard([by_id[i] for i in ids], tokens_dir, index, codec, tok,
                          video_frames=cfg.token_video_frames).to_dict()


def finish_tokens(cfg: CurateConfig, manifest: str | Path, results: list[dict[str, Any]], tokens_dir: str | Path,
                  out_manifest: str | Path) -> dict[str, Any]:
    """Write the token index and the final manifest (rows that failed tokenisation quarantined)."""
    from data.tokenize import ShardResult, apply_failures, tokenizer_info, write_index

    shard_results = [ShardResult.from_dict(r) for r in results]
    codec, tok = _codec_and_tokenizer(cfg, manifest, tokens_dir)
    index = write_index(tokens_dir, shard_results, codec.info(), tokenizer_info(tok, cfg.model_preset_config().tokenizer))
    final = apply_failures(read_manifest(manifest), shard_results)
    write_manifest(out_manifest, final)
    return {"index": str(index), "manifest": str(out_manifest), "is_random_init_codec": codec.is_random_init,
            "codec_label": codec.label, "rows": sum(r.num_rows for r in shard_results),
            "frames": sum(r.num_frames for r in shard_results)}


def _codec_and_tokenizer(cfg: CurateConfig, manifest: str | Path, tokens_dir: str | Path):
    """The codec and the text tokenizer (trained on the manifest's kept texts once, then reused from
    ``tokens_dir``: every shard task checks it against the texts, read as columns, not as records)."""
    from unimoe.codec import AudioCodec
    from unimoe.settings import compute_device
    from unimoe.tokenizer import TextTokenizer

    model_cfg = cfg.model_preset_config()
    # On a GPU worker the codec encodes there (codes can then differ from a CPU's in the last float bits);
    # the shard key names the codec's weights, not the device.
    codec = AudioCodec.from_model_config(model_cfg, device=compute_device())
    tok = TextTokenizer.from_config(model_cfg.tokenizer, corpus_texts=read_kept_texts(manifest),
                                    cache_path=Path(tokens_dir) / "tokenizer.json")
    return codec, tok


# ---- accounting and reports ------------------------------------------------------------------------


class AccountingError(AssertionError):
    pass


def check_accounting(before: str | Path, after: str | Path) -> dict[str, Any]:
    """Every row of ``before`` appears in ``after`` exactly once (same id, one status), and no row
    appears that was not there before. Returns the status counts of ``after``."""
    a = read_manifest(before)
    b = read_manifest(after)
    ids_a = Counter(r.id for r in a)
    ids_b = Counter(r.id for r in b)
    if ids_a != ids_b:
        missing = sorted((ids_a - ids_b).elements())[:10]
        extra = sorted((ids_b - ids_a).elements())[:10]
        raise AccountingError(f"rows lost {missing} or appeared {extra} between {before} and {after}")
    return status_counts(b)


def step_report(name: str, rows: int | None, seconds: float) -> dict[str, Any]:
    """One row of the curation report; ``rows`` is None for a step without rows (building the corpus)."""
    return {"step": name, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds, 2) if rows is not None and seconds > 0 else None}


def summary(curated: str | Path, balance_info: Mapping[str, Any], steps: list[dict[str, Any]],
            quality_plan: dict[str, Any] | None, out: str | Path) -> dict[str, Any]:
    records = read_manifest(curated)
    reasons = Counter(f"{r.status}:{r.reason}" for r in records if r.status != "kept")
    by_task: dict[str, Counter] = {}
    for r in records:
        by_task.setdefault(r.task or "-", Counter())[r.status] += 1
    doc = {
        "rows": len(records),
        "status_counts": status_counts(records),
        "task_status": {t: dict(c) for t, c in sorted(by_task.items())},
        "reasons": dict(sorted(reasons.items())),
        "quality": quality_report(records),
        "quality_plan": quality_plan,
        "balance": {k: v for k, v in balance_info.items() if k != "report"},
        "balance_report": balance_info.get("report"),
        "steps": steps,
    }
    atomic_write_json(out, doc)
    return doc


def timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def quality_plan(cfg: CurateConfig, available: list[str], unavailable: Mapping[str, str]) -> dict[str, Any]:
    return plan_scorers(available, dict(unavailable), cfg.quality_config()).to_dict()


def json_dump(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
