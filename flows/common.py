"""Prefect plumbing shared by every flow: the workspace, persisted task results, and a cache policy
that makes a re-run with nothing changed redo nothing.

Cross-run caching needs (per shared/notes/prefect.md) an explicit policy and persisted results in a
place that outlives the process. Our policy is INPUTS + TASK_SOURCE + ``FileFingerprints`` +
``LibraryCode``: task inputs that name existing files or folders contribute their size and
modification time, so editing an input manifest (or the corpus) invalidates downstream steps while
the path string stays the same; any change to the library code (unimoe/, data/, evaluation/)
invalidates every step (coarse but never stale; the steps themselves skip work whose outputs match).
Tasks pass paths and small records, never large objects.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import Task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

# Files under a folder input are fingerprinted by (relative path, size, mtime); beyond this many files
# only the folder's own listing is used, so a huge corpus root doesn't make every key computation slow.
MAX_FINGERPRINT_FILES = 20_000


def workspace_root(path: str | os.PathLike | None = None) -> Path:
    """Where bulky outputs go: the argument, else $UNIMOE_WORKSPACE, else ./workspace."""
    root = Path(path or os.environ.get("UNIMOE_WORKSPACE", "workspace")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fingerprint(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        st = path.stat()
        h.update(f"f:{st.st_size}:{st.st_mtime_ns}".encode())
    elif path.is_dir():
        for i, p in enumerate(sorted(path.rglob("*"))):
            if i >= MAX_FINGERPRINT_FILES:
                break
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts):
                st = p.stat()
                h.update(f"{p.relative_to(path)}:{st.st_size}:{st.st_mtime_ns};".encode())
    else:
        h.update(b"missing")
    return h.hexdigest()


def _path_inputs(value: Any) -> list[Path]:
    if isinstance(value, (str, os.PathLike)):
        s = os.fspath(value)
        if len(s) < 4096 and ("/" in s or os.sep in s):
            p = Path(s)
            if p.exists():
                return [p]
    elif isinstance(value, (list, tuple)):
        return [p for v in value for p in _path_inputs(v)]
    elif isinstance(value, dict):
        return [p for v in value.values() for p in _path_inputs(v)]
    return []


@dataclass
class FileFingerprints(CachePolicy):
    """Cache-key component: size + mtime of every existing file/folder named by a task input.
    Parameters named ``out*`` (outputs) or ``*_dir`` (output, cache and working folders) are left out:
    they change as the task runs, which must not change its key. Inputs that are folders (a corpus
    root) are named otherwise and are fingerprinted."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        paths = sorted({p.resolve() for k, v in inputs.items() if not (k.startswith("out") or k.endswith("_dir")) for p in _path_inputs(v)})
        h = hashlib.sha256()
        for p in paths:
            h.update(f"{p}={_fingerprint(p)}\n".encode())
        return h.hexdigest()


@functools.lru_cache(maxsize=1)
def library_code_hash() -> str:
    """Hash of the library code tasks call (unimoe/, data/, evaluation/): TASK_SOURCE covers only the
    task function's own source, so without this a fix in a library would be masked by the cache."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for package in ("unimoe", "data", "evaluation"):
        for py in sorted((root / package).rglob("*.py")):
            h.update(str(py.relative_to(root)).encode())
            h.update(py.read_bytes())
    return h.hexdigest()


@dataclass
class LibraryCode(CachePolicy):
    """Cache-key component: the library code version (see ``library_code_hash``)."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> Optional[str]:
        return library_code_hash()


DASK_ADDRESS_ENV = "UNIMOE_DASK_ADDRESS"


def default_workers() -> int:
    """Parallel shard tasks in the thread runner: $UNIMOE_WORKERS, default one per core."""
    return int(os.environ.get("UNIMOE_WORKERS", os.cpu_count() or 2))


def task_runner(dask: str | None = None, max_workers: int | None = None) -> TaskRunner:
    """The task runner for data and evaluation work (shard tasks submitted with ``.map``).

    ``dask`` (else $UNIMOE_DASK_ADDRESS): a scheduler address such as ``tcp://10.0.0.5:8786`` runs the
    tasks on that Dask cluster; ``"local"`` starts a local Dask cluster for the flow run; empty or unset
    keeps Prefect's thread pool (``max_workers``, default ``default_workers()``). Use it per run with
    ``some_flow.with_options(task_runner=task_runner(address))``."""
    address = (dask if dask is not None else os.environ.get(DASK_ADDRESS_ENV, "")).strip()
    workers = max_workers or default_workers()
    if not address:
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address == "local":
        from prefect.settings import PREFECT_API_URL

        # Without a Prefect server (embedded mode) worker processes would each start their own temporary
        # server, so the local cluster then uses threads (shared/notes/prefect.md).
        processes = bool(PREFECT_API_URL.value())
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": processes,
                                              "dashboard_address": None})
    return DaskTaskRunner(address=address)


STEP_CACHE = INPUTS + TASK_SOURCE + FileFingerprints() + LibraryCode()


def persisted(task: Task, workspace: Path, **options: Any) -> Task:
    """The task with results persisted under the workspace (so its cache survives the process)."""
    # A Path is resolved by Prefect to a local file system without needing a saved block.
    return task.with_options(persist_result=True, result_storage=workspace / ".prefect-results",
                             cache_policy=STEP_CACHE, **options)


def run_cached(task: Task, workspace: Path, *args: Any, output_exists: Callable[[Any], bool] | None = None,
               **kwargs: Any) -> Any:
    """Run a step with cross-run caching. A cached result whose output files were deleted since is
    recomputed (refresh_cache), so the cache never hands back a path that no longer exists."""
    result = persisted(task, workspace)(*args, **kwargs)
    if output_exists is not None and not output_exists(result):
        result = persisted(task, workspace, refresh_cache=True)(*args, **kwargs)
    return result


def run_cached_map(task: Task, workspace: Path, *, output_exists: Callable[[Any], bool] | None = None,
                   **kwargs: list[Any]) -> list[Any]:
    """``run_cached`` for one task per shard: submitted together (the flow's task runner runs them
    in parallel, on a Dask cluster when given one), each cached on its own inputs."""
    futures = persisted(task, workspace).map(**kwargs)
    results = [f.result() for f in futures]
    if output_exists is not None:
        for i, r in enumerate(results):
            if not output_exists(r):
                results[i] = persisted(task, workspace, refresh_cache=True)(**{k: v[i] for k, v in kwargs.items()})
    return results
