"""Prefect plumbing shared by every flow: the workspace, persisted task results, and a cache policy
that makes a re-run with nothing changed redo nothing.

Cross-run caching in Prefect 3 needs an explicit cache policy and persisted results in a
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
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from prefect import Task
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from unimoe.settings import settings, workspace_root  # noqa: F401 - workspace_root: the flows' import

# Files under a folder input are fingerprinted by (relative path, size, mtime); beyond this many files
# only the folder's own listing is used, so a huge corpus root doesn't make every key computation slow.
MAX_FINGERPRINT_FILES = 20_000




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


def default_workers() -> int:
    """Parallel shard tasks in the thread runner: $UNIMOE_WORKERS, default one per core."""
    workers = settings().workers
    return workers if workers is not None else os.cpu_count() or 2


def task_runner(dask: str | None = None, max_workers: int | None = None) -> TaskRunner:
    """The task runner for data and evaluation work (shard tasks submitted with ``.map``).

    ``dask`` (else $UNIMOE_DASK_ADDRESS): a scheduler address such as ``tcp://10.0.0.5:8786`` runs the
    tasks on that Dask cluster; ``"local"`` starts a local Dask cluster for the flow run; empty or unset
    keeps Prefect's thread pool (``max_workers``, default ``default_workers()``). Use it per run with
    ``some_flow.with_options(task_runner=task_runner(address))``."""
    address = (dask if dask is not None else settings().dask_address).strip()
    workers = max_workers or default_workers()
    if not address:
        return ThreadPoolTaskRunner(max_workers=workers)
    from prefect_dask import DaskTaskRunner

    if address == "local":
        from prefect.settings import PREFECT_API_URL

        # Without a Prefect server (embedded mode) worker processes would each start their own temporary
        # server, so the local cluster then uses threads.
        processes = bool(PREFECT_API_URL.value())
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": processes,
                                              "dashboard_address": None})
    return DaskTaskRunner(address=address)


def check_cluster_reaches_prefect(log: Any) -> None:
    """Warn when the flow's shard tasks go to a Dask scheduler while Prefect runs embedded (no
    PREFECT_API_URL): the embedded server listens on this machine's loopback only, so each worker process
    elsewhere starts a temporary server of its own, at this process's PREFECT_HOME path on its machine, and
    the shard task runs are missing from this run's UI. Outputs and caches are unaffected (results live
    in the workspace). A multi-machine run starts a Prefect server every machine reaches."""
    from prefect.settings import PREFECT_API_URL

    runner = getattr(_flow_context(), "task_runner", None)
    address = getattr(runner, "address", None) if type(runner).__name__ == "DaskTaskRunner" else None
    if address and not PREFECT_API_URL.value():
        log.warning(f"shard tasks run on the Dask cluster at {address} but Prefect runs embedded here: "
                    "worker processes start temporary Prefect servers of their own; for a multi-machine run "
                    "start `prefect server start --host 0.0.0.0` and set PREFECT_API_URL on every machine")


STEP_CACHE = INPUTS + TASK_SOURCE + FileFingerprints() + LibraryCode()


def persisted(task: Task, workspace: Path, **options: Any) -> Task:
    """The task with results persisted under the workspace (so its cache survives the process). The path
    is absolute: a Dask worker on another machine, in another working directory, writes and reads the
    results there too, never under its own PREFECT_HOME, so the cross-run cache and a resumed run see
    every shard's result wherever it ran."""
    # A Path is resolved by Prefect to a local file system without needing a saved block.
    storage = Path(workspace).resolve() / ".prefect-results"
    return task.with_options(persist_result=True, result_storage=storage, cache_policy=STEP_CACHE, **options)


def run_cached(task: Task, workspace: Path, *args: Any, output_exists: Callable[[Any], bool] | None = None,
               **kwargs: Any) -> Any:
    """Run a step with cross-run caching. A cached result whose output files were deleted since is
    recomputed (refresh_cache), so the cache never hands back a path that no longer exists."""
    result = persisted(task, workspace)(*args, **kwargs)
    if output_exists is not None and not output_exists(result):
        result = persisted(task, workspace, refresh_cache=True)(*args, **kwargs)
    return result


class StepProgress:
    """Progress of one step's shard tasks, reported as each shard finishes: a log line (done / total,
    rate, ETA — what ``unimoe generate`` shows in its bar) and a Prefect progress artifact, so the CLI and
    the Prefect UI both show how far a long step is. ``sizes[i]``: the work in shard ``i`` (rows)."""

    def __init__(self, step: str, sizes: list[int], unit: str = "rows", log: Callable[[str], None] | None = None):
        from prefect.artifacts import create_progress_artifact

        self.step, self.sizes, self.unit = step, list(sizes), unit
        self.total = sum(self.sizes)
        self.done = 0
        self.shards_done = 0
        self.t0 = time.perf_counter()
        self._log = log or _run_logger_info
        self._artifact = create_progress_artifact(progress=0.0, key=f"{_artifact_key(step)}-progress",
                                                  description=f"{step}: {self.unit} done (%)")

    def shard_done(self, index: int) -> str:
        from prefect.artifacts import update_progress_artifact

        self.done += self.sizes[index]
        self.shards_done += 1
        elapsed = time.perf_counter() - self.t0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total - self.done
        eta = _duration(left / rate) if rate > 0 and left else "0s"
        line = (f"{self.step}: {self.done}/{self.total} {self.unit} ({pct:.0f}%), shard {self.shards_done}/"
                f"{len(self.sizes)}, {rate:.2f} {self.unit}/s, ETA {eta}")
        update_progress_artifact(self._artifact, progress=pct)
        self._log(line)
        return line


def _artifact_key(name: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-") or "step"


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _run_logger_info(line: str) -> None:
    from prefect import get_run_logger

    get_run_logger().info(line)


def cluster_offers(resources: dict[str, float]) -> bool:
    """Whether the flow runs on a Dask cluster with a worker that declares ``resources`` (``dask worker
    --resources GPU=1``). False under the thread pool, or when no worker has them."""
    ctx = _flow_context()
    if not resources or ctx is None or type(ctx.task_runner).__name__ != "DaskTaskRunner":
        return False
    from distributed import Client

    runner = ctx.task_runner
    cluster = getattr(runner, "_cluster", None)  # "local": the runner started its own cluster
    address = getattr(runner, "address", None) or getattr(cluster, "scheduler_address", None)
    if not address:
        return False
    with Client(address, timeout=30) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"].values()
    return any(all(w.get("resources", {}).get(r, 0) >= n for r, n in resources.items()) for w in workers)


@contextmanager
def placed_on(resources: dict[str, float] | None, what: str = "tasks"):
    """Tasks submitted inside need ``resources`` (e.g. the GPU a neural scorer wants): annotated for Dask
    when the cluster has a worker that declares them; otherwise they run anywhere (a CPU-only cluster
    must not wait for ever for a GPU worker), and the log says so."""
    if resources and cluster_offers(resources):
        import dask

        with dask.annotate(resources=resources):
            yield True
        return
    if resources and type(getattr(_flow_context(), "task_runner", None)).__name__ == "DaskTaskRunner":
        _run_logger_info(f"{what}: no Dask worker declares {resources}; they run on any worker")
    yield False


def _flow_context():
    from prefect.context import FlowRunContext

    return FlowRunContext.get()


def run_cached_map(task: Task, workspace: Path, *, output_exists: Callable[[Any], bool] | None = None,
                   progress: StepProgress | None = None, resources: dict[str, float] | None = None,
                   **kwargs: list[Any]) -> list[Any]:
    """``run_cached`` for one task per shard: submitted together (the flow's task runner runs them
    in parallel, on a Dask cluster when given one), each cached on its own inputs. ``progress`` hears
    of each shard as it finishes; ``resources``: Dask worker resources each task needs (``placed_on``)."""
    from prefect.futures import as_completed

    with placed_on(resources, task.name):
        futures = persisted(task, workspace).map(**kwargs)
    if progress is not None:
        index = {id(f): i for i, f in enumerate(futures)}
        for f in as_completed(list(futures)):
            f.wait()
            progress.shard_done(index[id(f)])
    results = [f.result() for f in futures]
    if output_exists is not None:
        for i, r in enumerate(results):
            if not output_exists(r):
                results[i] = persisted(task, workspace, refresh_cache=True)(**{k: v[i] for k, v in kwargs.items()})
    return results
