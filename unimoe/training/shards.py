"""The token-shard format: DAC codes and text ids on disk, the writer's primitives and the reader.

As in lhotse's Shar (``lhotse/shar/writers`` and ``readers``), the format module owns both sides: the
data layer's tokenisation (``data.tokenize``) encodes rows and hands them to :func:`write_shard` and
:func:`write_index`; training reads them back with :class:`TokenShardReader`. No pickle anywhere:
tensors are safetensors, everything else JSON. One module on purpose (over 500 lines): writer and reader
share the layout and its checks, and a change to one side must be made in sight of the other.

Layout of a token directory
---------------------------
``shard-00003.safetensors``
    ``codes``    int16 ``[K, total_frames]`` (int32 when ``codebook_size > 32767``): the rows' code
                 matrices concatenated along time;
    ``text_ids`` int32 ``[total_text]``: the rows' text ids concatenated;
    ``video``    uint8 ``[total_video_frames, S, S, 3]`` (only for shards made with video frames);
    one metadata entry ``unimoe.tokens`` (JSON: format, shard index, content key).
``shard-00003.json``
    format, key, the safetensors file's SHA-256 and size, K, codebook size, frame rate, and per row:
    the manifest fields the writer was given, duration (seconds of audio read; the frames also cover
    any ``meta.pad_to_seconds`` silence), frame_offset, num_frames, text_offset, num_text (and
    video_offset, num_video); plus ``failed``: ``[id, reason, detail]`` for the rows not written.
``index.json``
    the shards (file names, SHA-256s, rows, frames, keys), rows / frames / seconds per task, the codec
    info (with ``is_random_init`` and its label), the tokenizer's hash, K and codebook size, and every
    failure.
``tokenizer.json``
    the text tokenizer the ids come from.

Every file is written atomically (temporary file + rename). A shard's safetensors file is written
first and its JSON (which names its hash) last, so a shard counts as complete only when both are in
place and agree (:func:`complete_shard`); the writer skips a complete shard with the same key, so a
killed run, started again, finishes with the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from unimoe.config import TokenizerConfig
from unimoe.common.files import atomic_write_bytes
from unimoe.io import sha256_file
from unimoe.tokenizer import TextTokenizer, tokenizer_fingerprint

FORMAT = "unimoe.tokens/1"
INDEX_NAME = "index.json"
TOKENIZER_NAME = "tokenizer.json"
SHARD_PREFIX = "shard-"
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(safetensors|json)$")
_TMP_RE = re.compile(
    r"^\.(shard-\d{5,}\.(safetensors|json)|index\.json|tokenizer\.json(\.meta\.json)?)\..*\.tmp$"
)
_ST_META_KEY = "unimoe.tokens"


class TokenizeError(ValueError):
    """Shards or their index are missing, inconsistent, or were made with different settings."""


def shard_name(index: int) -> str:
    return f"{SHARD_PREFIX}{int(index):05d}"


def shard_paths(out_dir: str | Path, index: int) -> tuple[Path, Path]:
    """The shard's safetensors file and its JSON record."""
    name = shard_name(index)
    return Path(out_dir) / f"{name}.safetensors", Path(out_dir) / f"{name}.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def tokenizer_info(tokenizer: TextTokenizer, tok_cfg: TokenizerConfig | None = None) -> dict:
    """What the index records about the tokenizer (nothing run-dependent such as where it was read)."""
    return {
        "sha256": tokenizer_fingerprint(tokenizer),
        "vocab_size": tokenizer.vocab_size,
        "kind": "trained" if tok_cfg is None or not tok_cfg.path else "file",
        "configured_path": None if tok_cfg is None else tok_cfg.path,
        "trained_vocab_size": None if tok_cfg is None or tok_cfg.path else tok_cfg.trained_vocab_size,
        "file": TOKENIZER_NAME,
    }


# ------------------------------------------------------------------------------------------------
# writing


@dataclass
class ShardResult:
    """What a shard holds (or why rows are missing from it). ``skipped``: it was already complete."""

    index: int
    name: str
    key: str
    num_rows: int
    num_frames: int
    num_text: int
    sha256: str
    json_sha256: str
    task_rows: dict[str, int] = field(default_factory=dict)
    task_frames: dict[str, int] = field(default_factory=dict)
    task_seconds: dict[str, float] = field(default_factory=dict)
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    skipped: bool = False
    elapsed_s: float = 0.0  # wall time of this call (not written anywhere)

    def to_dict(self) -> dict:
        return {k: (list(map(list, v)) if k == "failed" else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "ShardResult":
        d = dict(d)
        d["failed"] = [tuple(x) for x in d.get("failed", [])]
        return cls(**d)

    @classmethod
    def from_doc(cls, doc: dict, json_sha256: str, *, skipped: bool, elapsed: float) -> "ShardResult":
        """The result a shard's JSON record describes."""
        task_rows: Counter = Counter()
        task_frames: Counter = Counter()
        task_seconds: dict[str, float] = {}
        for row in doc["rows"]:
            task_rows[row["task"]] += 1
            task_frames[row["task"]] += row["num_frames"]
            task_seconds[row["task"]] = task_seconds.get(row["task"], 0.0) + row["duration"]
        return cls(
            index=doc["shard"], name=doc["name"], key=doc["key"], num_rows=len(doc["rows"]),
            num_frames=doc["num_frames"], num_text=doc["num_text"], sha256=doc["sha256"],
            json_sha256=json_sha256,
            task_rows=dict(sorted(task_rows.items())), task_frames=dict(sorted(task_frames.items())),
            task_seconds={k: round(v, 6) for k, v in sorted(task_seconds.items())},
            failed=[tuple(x) for x in doc["failed"]], skipped=skipped, elapsed_s=elapsed,
        )


@dataclass
class ShardRow:
    """One encoded row as the writer takes it: the manifest fields to record, the seconds of audio
    read, its codes ``[K, T]``, its text ids, and its video frames (shards with video only)."""

    fields: dict
    seconds: float
    codes: torch.Tensor
    text_ids: list[int]
    video: np.ndarray | None = None


def codes_dtype(codebook_size: int) -> torch.dtype:
    return torch.int16 if codebook_size <= 32767 else torch.int32


def complete_shard(out_dir: str | Path, index: int, key: str | None) -> dict | None:
    """The shard's JSON record if both its files are in place, agree with each other and (when given)
    carry ``key``; else None."""
    st_path, json_path = shard_paths(out_dir, index)
    doc = _read_json(json_path)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return None
    if key is not None and doc.get("key") != key:
        return None
    try:
        if st_path.stat().st_size != doc.get("bytes"):
            return None
    except OSError:
        return None
    if sha256_file(st_path) != doc.get("sha256"):
        return None
    return doc


def write_shard(out_dir: str | Path, index: int, key: str, rows: Sequence[ShardRow],
                failed: Sequence[tuple[str, str, str]], *, num_codebooks: int, codebook_size: int,
                frame_rate: float, video: dict | None, started: float | None = None) -> ShardResult:
    """Write shard ``index`` (its safetensors file, then its JSON record) from ``rows`` in order;
    ``failed``: ``(id, reason, detail)`` of the rows left out, in row order. ``video``: the video
    options the frames were read with (None: no video tensor). ``started``: ``time.monotonic()`` when
    the caller began the shard (for ``elapsed_s``)."""
    t0 = time.monotonic() if started is None else started
    st_path, json_path = shard_paths(out_dir, index)
    dtype = codes_dtype(codebook_size)
    row_docs, code_parts, text_parts, video_parts = [], [], [], []
    fo = to = vo = 0
    for row in rows:
        c, ids = row.codes, row.text_ids
        d = {**row.fields, "duration": round(row.seconds, 6),
             "frame_offset": fo, "num_frames": int(c.shape[1]), "text_offset": to, "num_text": len(ids)}
        code_parts.append(c.to(dtype))
        text_parts.append(torch.tensor(ids, dtype=torch.int32))
        fo += int(c.shape[1])
        to += len(ids)
        if video is not None:
            d["video_offset"], d["num_video"] = vo, int(row.video.shape[0])
            video_parts.append(row.video)
            vo += int(row.video.shape[0])
        row_docs.append(d)

    tensors = {
        "codes": (torch.cat(code_parts, dim=1).contiguous() if code_parts
                  else torch.zeros(num_codebooks, 0, dtype=dtype)),
        "text_ids": torch.cat(text_parts).contiguous() if text_parts else torch.zeros(0, dtype=torch.int32),
    }
    if video is not None:
        s = video["size"]
        tensors["video"] = (torch.from_numpy(np.concatenate(video_parts)) if video_parts
                            else torch.zeros(0, s, s, 3, dtype=torch.uint8)).contiguous()
    from safetensors.torch import save as st_save

    meta = json.dumps({"format": FORMAT, "shard": index, "key": key}, sort_keys=True)
    blob = st_save(tensors, metadata={_ST_META_KEY: meta})  # one metadata entry: byte-deterministic
    doc = {
        "format": FORMAT, "shard": index, "name": shard_name(index), "key": key,
        "file": st_path.name, "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
        "num_codebooks": num_codebooks, "codebook_size": codebook_size, "frame_rate": frame_rate,
        "codes_dtype": str(dtype).replace("torch.", ""), "num_frames": fo, "num_text": to,
        "video": video, "num_video": vo if video is not None else None,
        "rows": row_docs,
        "failed": [list(f) for f in failed],
    }
    atomic_write_bytes(st_path, blob)  # first the data ...
    text = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False).encode("utf-8")
    atomic_write_bytes(json_path, text)  # ... then the record that vouches for it
    return ShardResult.from_doc(doc, hashlib.sha256(text).hexdigest(), skipped=False,
                                elapsed=time.monotonic() - t0)


def write_tokenizer_file(out_dir: str | Path, tokenizer: TextTokenizer) -> None:
    """``out_dir/tokenizer.json`` holds exactly the tokenizer the ids come from (written only if it
    differs; then its training sidecar, which would no longer describe it, is removed)."""
    path = Path(out_dir) / TOKENIZER_NAME
    text = tokenizer.backend.to_str(pretty=False).encode("utf-8")
    try:
        if path.read_bytes() == text:
            return
    except OSError:
        pass
    path.with_name(path.name + ".meta.json").unlink(missing_ok=True)
    atomic_write_bytes(path, text)


def _clean_temporaries(out: Path) -> list[str]:
    """Remove temporary files an interrupted run left behind (ours only, by name)."""
    gone = []
    for p in out.iterdir():
        if p.is_file() and _TMP_RE.match(p.name):
            p.unlink(missing_ok=True)
            gone.append(p.name)
    return gone


def write_index(out_dir: str | Path, shard_results: Sequence[ShardResult], codec_info: Any,
                tokenizer: dict | TextTokenizer, *, prune: bool = True) -> Path:
    """Write ``out_dir/index.json`` atomically (only if its bytes change) after checking every listed
    shard is on disk and matches its result. ``codec_info``: ``codec.info()`` or the codec itself;
    ``tokenizer``: :func:`tokenizer_info` or the tokenizer itself. With ``prune``, shard files not
    listed (from an earlier run with other rows) and temporary files of interrupted writes are
    removed. Returns the path."""
    out = Path(out_dir)
    if not isinstance(codec_info, dict):
        codec_info = codec_info.info()
    tok_info = tokenizer_info(tokenizer) if isinstance(tokenizer, TextTokenizer) else tokenizer
    codec_info = dict(codec_info)
    if "is_random_init" not in codec_info or not isinstance(codec_info["is_random_init"], bool):
        raise ValueError("codec_info must record is_random_init (true/false): use codec.info()")
    if not tok_info.get("sha256"):
        raise ValueError("tokenizer_info must record the tokenizer's sha256 (use tokenizer_info(tok))")
    results = sorted(shard_results, key=lambda r: r.index)
    if len({r.index for r in results}) != len(results):
        raise TokenizeError("write_index: two results for the same shard index")

    shards, failed, seen = [], [], {}
    tasks: dict[str, dict[str, float]] = {}
    K = codec_info.get("num_codebooks")
    for res in results:
        st_path, json_path = shard_paths(out, res.index)
        doc = complete_shard(out, res.index, res.key)
        if doc is None:
            raise TokenizeError(
                f"write_index: {res.name} is missing, incomplete or from other inputs in {out}")
        json_sha = sha256_file(json_path)
        if (doc["sha256"], json_sha, len(doc["rows"])) != (res.sha256, res.json_sha256, res.num_rows):
            raise TokenizeError(f"write_index: {res.name} on disk differs from its result (rewritten since?)")
        if K is not None and doc["num_codebooks"] != K:
            raise TokenizeError(
                f"write_index: {res.name} has {doc['num_codebooks']} codebooks, codec has {K}")
        for row in doc["rows"]:
            if row["id"] in seen:
                raise TokenizeError(f"write_index: id {row['id']!r} is in {seen[row['id']]} and {res.name}")
            seen[row["id"]] = res.name
            t = tasks.setdefault(row["task"], {"rows": 0, "frames": 0, "seconds": 0.0})
            t["rows"] += 1
            t["frames"] += row["num_frames"]
            t["seconds"] += row["duration"]
        failed += [list(f) for f in doc["failed"]]
        shards.append({"index": res.index, "name": res.name, "file": st_path.name, "json": json_path.name,
                       "sha256": doc["sha256"], "bytes": doc["bytes"], "json_sha256": json_sha,
                       "key": res.key, "rows": len(doc["rows"]), "frames": doc["num_frames"],
                       "text_tokens": doc["num_text"],
                       "failed": len(doc["failed"])})
    for t in tasks.values():
        t["seconds"] = round(t["seconds"], 3)
    first = _read_json(shard_paths(out, results[0].index)[1]) if results else None
    tok_file = out / TOKENIZER_NAME
    index = {
        "format": FORMAT,
        "num_shards": len(shards),
        "num_rows": sum(s["rows"] for s in shards),
        "num_frames": sum(s["frames"] for s in shards),
        "num_failed": len(failed),
        "num_codebooks": K,
        "codebook_size": codec_info.get("codebook_size"),
        "frame_rate": codec_info.get("frame_rate"),
        "codes_dtype": None if first is None else first["codes_dtype"],
        "video": None if first is None else first["video"],
        "is_random_init": codec_info["is_random_init"],
        "codec_label": codec_info.get("label"),
        "codec": codec_info,
        "tokenizer": {**tok_info,
                      "file": TOKENIZER_NAME if tok_file.is_file() else None,
                      "file_sha256": sha256_file(tok_file) if tok_file.is_file() else None},
        "tasks": dict(sorted(tasks.items())),
        "shards": shards,
        "failed": sorted(failed),
    }
    if prune:
        listed = {s["file"] for s in shards} | {s["json"] for s in shards}
        for p in out.iterdir():
            if p.is_file() and _SHARD_RE.match(p.name) and p.name not in listed:
                p.unlink()
        _clean_temporaries(out)
    path = out / INDEX_NAME
    text = json.dumps(index, indent=2, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    try:
        unchanged = path.read_bytes() == text
    except OSError:
        unchanged = False
    if not unchanged:
        atomic_write_bytes(path, text)
    return path


# ------------------------------------------------------------------------------------------------
# reading


@dataclass
class TokenizedItem:
    """One tokenized row. ``codes``: LongTensor ``[K, T]``; ``text_ids``: LongTensor ``[N]``;
    ``video``: uint8 ``[F, S, S, 3]`` when the shards were made with video frames."""

    id: str
    task: str
    codes: torch.Tensor
    text_ids: torch.Tensor
    speaker: str | None
    language: str | None
    video_path: str | None
    meta: dict
    text: str | None = None
    duration: float = 0.0
    split: str | None = None
    video: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return int(self.codes.shape[1])


class TokenShardReader:
    """Random access to tokenized rows in ``out_dir`` (validated against ``index.json``).

    ``verify``: ``"hash"`` (default) checks every shard file's SHA-256 against the index; ``"size"``
    checks only sizes (faster for very large datasets). Shards are opened lazily and memory-mapped
    (``safetensors.safe_open``, sliced lazily); at most ``max_open_shards`` stay open (LRU). Safe to
    share with DataLoader workers (open handles are not pickled).
    """

    def __init__(self, out_dir: str | Path, *, verify: str = "hash", max_open_shards: int = 8):
        if verify not in ("hash", "size"):
            raise ValueError(f"verify must be 'hash' or 'size', got {verify!r}")
        self.out_dir = Path(out_dir)
        self.max_open_shards = max(1, int(max_open_shards))
        ipath = self.out_dir / INDEX_NAME
        if not ipath.is_file():
            raise TokenizeError(f"no {INDEX_NAME} in {self.out_dir}: tokenisation has not finished there")
        index = _read_json(ipath)
        if not isinstance(index, dict) or index.get("format") != FORMAT:
            got = index.get("format") if isinstance(index, dict) else "unreadable JSON"
            raise TokenizeError(f"{ipath}: not a token index of format {FORMAT} (got {got})")
        self.index = index
        self._rows: list[dict] = []
        self._loc: list[tuple[int, int]] = []  # (position in self._files, row within shard)
        self._files: list[Path] = []
        for s in index["shards"]:
            st_path, json_path = self.out_dir / s["file"], self.out_dir / s["json"]
            for p in (st_path, json_path):
                if not p.is_file():
                    raise TokenizeError(f"{p.name} (listed in {ipath}) is missing; re-run tokenisation")
            if st_path.stat().st_size != s["bytes"]:
                raise TokenizeError(f"{st_path}: {st_path.stat().st_size} bytes, the index says {s['bytes']}")
            if verify == "hash" and sha256_file(st_path) != s["sha256"]:
                raise TokenizeError(f"{st_path}: SHA-256 differs from the index (corrupt or rewritten)")
            if sha256_file(json_path) != s["json_sha256"]:
                raise TokenizeError(f"{json_path}: SHA-256 differs from the index (corrupt or rewritten)")
            doc = _read_json(json_path)
            if not isinstance(doc, dict) or doc.get("key") != s["key"] or doc.get("sha256") != s["sha256"]:
                raise TokenizeError(f"{json_path}: does not match the index entry for {s['name']}")
            if len(doc["rows"]) != s["rows"] or doc["num_frames"] != s["frames"]:
                raise TokenizeError(f"{json_path}: {len(doc['rows'])} rows / {doc['num_frames']} frames, "
                                    f"the index says {s['rows']} / {s['frames']}")
            fpos = len(self._files)
            self._files.append(st_path)
            for j, row in enumerate(doc["rows"]):
                self._rows.append(row)
                self._loc.append((fpos, j))
        self._by_id = {r["id"]: i for i, r in enumerate(self._rows)}
        if len(self._by_id) != len(self._rows):
            raise TokenizeError(f"{ipath}: duplicate ids across shards")
        if len(self._rows) != index["num_rows"]:
            raise TokenizeError(f"{ipath}: lists {index['num_rows']} rows, the shards hold {len(self._rows)}")
        self._open: "OrderedDict[int, Any]" = OrderedDict()
        self._lock = threading.Lock()

    # ---- info ----------------------------------------------------------------------------------------
    @property
    def codec_info(self) -> dict:
        return self.index["codec"]

    @property
    def is_random_init(self) -> bool:
        return bool(self.index["is_random_init"])

    @property
    def num_codebooks(self) -> int:
        return int(self.index["num_codebooks"])

    @property
    def tokenizer_path(self) -> Path:
        return self.out_dir / TOKENIZER_NAME

    def load_tokenizer(self) -> TextTokenizer:
        """The tokenizer the text ids were made with (checked against the index's hash)."""
        tok = TextTokenizer.load(self.tokenizer_path)
        if tokenizer_fingerprint(tok) != self.index["tokenizer"]["sha256"]:
            raise TokenizeError(f"{self.tokenizer_path} is not the tokenizer these shards were made with")
        return tok

    def __len__(self) -> int:
        return len(self._rows)

    def ids(self) -> list[str]:
        return [r["id"] for r in self._rows]

    def row(self, i: int) -> dict:
        """The shard JSON's record for item ``i`` (no tensors are read)."""
        return self._rows[self._norm(i)]

    def num_frames(self, i: int) -> int:
        return int(self._rows[self._norm(i)]["num_frames"])

    def by_task(self, task: str) -> list[int]:
        return [i for i, r in enumerate(self._rows) if r["task"] == task]

    def by_ids(self, ids: Iterable[str]) -> list[int]:
        ids = list(ids)
        missing = [x for x in ids if x not in self._by_id]
        if missing:
            raise KeyError(f"{len(missing)} id(s) not in the tokenized set: {missing[:10]}")
        return [self._by_id[x] for x in ids]

    # ---- items ---------------------------------------------------------------------------------------
    def _norm(self, i: int) -> int:
        n = len(self._rows)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"item {i} out of range for {n} items")
        return i

    def _handle(self, fpos: int):
        from safetensors import safe_open

        with self._lock:
            h = self._open.get(fpos)
            if h is not None:
                self._open.move_to_end(fpos)
                return h
            h = safe_open(str(self._files[fpos]), framework="pt")
            self._open[fpos] = h
            while len(self._open) > self.max_open_shards:
                self._open.popitem(last=False)
            return h

    def __getitem__(self, i: int) -> TokenizedItem:
        i = self._norm(i)
        row = self._rows[i]
        fpos, _ = self._loc[i]
        h = self._handle(fpos)
        fo, nf, to, nt = row["frame_offset"], row["num_frames"], row["text_offset"], row["num_text"]
        codes = h.get_slice("codes")[:, fo:fo + nf].to(torch.long)
        text = h.get_slice("text_ids")[to:to + nt].to(torch.long)
        video = None
        if "video_offset" in row:
            vo, nv = row["video_offset"], row["num_video"]
            video = h.get_slice("video")[vo:vo + nv].numpy() if nv else None
        return TokenizedItem(id=row["id"], task=row["task"], codes=codes, text_ids=text,
                             speaker=row["speaker"], language=row["language"], video_path=row["video_path"],
                             meta=dict(row["meta"]),
                             text=row["text"], duration=row["duration"], split=row["split"], video=video)

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"TokenShardReader({self.out_dir}, {len(self)} items in {len(self._files)} shards"
                f"{', RANDOM-INIT codec' if self.is_random_init else ''})")
