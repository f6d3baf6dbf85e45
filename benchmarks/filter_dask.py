"""The quality-filter step on a Dask ``LocalCluster``: 2 single-threaded worker processes against 1, on
the same captioned shards, side by side in one run; prints one JSON object with both wall times, the
speed-up (target >= 1.6x on 2 cores) and whether both produced byte-identical filtered shards.

    python benchmarks/filter_dask.py --workspace W [--shards 4]

W is a workspace the curate flow has captioned (``unimoe curate --until filter`` or a full run):
its ``curate/captioned/*.parquet`` shards are filtered again here into a temporary folder. Each shard
runs the flow's own task body (``flows.curate.filter_shard.fn``: load the quality scorers, score,
decide) on a cluster worker, exactly what the curate flow submits through its Dask task runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _filter_one(cfg: dict, shard: str, out: str) -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)
    from flows.curate import filter_shard

    return filter_shard.fn(cfg, shard, out)


def run_on_cluster(n_workers: int, cfg: dict, shards: list[Path], out_dir: Path) -> float:
    from distributed import Client, LocalCluster

    out_dir.mkdir(parents=True, exist_ok=True)
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("flows.curate"))  # imports (Prefect, onnxruntime, ...) outside the timing
        t0 = time.perf_counter()
        futures = client.map(_filter_one, [cfg] * len(shards), [str(s) for s in shards],
                             [str(out_dir / s.name) for s in shards], pure=False)
        client.gather(futures)
        return time.perf_counter() - t0


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.parquet")):
        import pyarrow.parquet as pq

        h.update(p.name.encode())
        h.update(json.dumps(pq.read_table(p).to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workspace", type=Path, required=True)
    ap.add_argument("--shards", type=int, default=0, help="use the first N captioned shards (0 = all)")
    args = ap.parse_args(argv)
    from data.curate import CurateConfig, step_config

    captioned = sorted((args.workspace / "curate" / "captioned").glob("*.parquet"))
    if not captioned:
        raise SystemExit(f"{args.workspace}/curate/captioned has no shards: run `unimoe curate --until filter` first")
    shards = captioned[: args.shards] if args.shards else captioned
    cfg = step_config(CurateConfig.demo().to_dict(), "filter")
    with tempfile.TemporaryDirectory(prefix="filter-dask-") as tmp:
        one = run_on_cluster(1, cfg, shards, Path(tmp) / "one")
        two = run_on_cluster(2, cfg, shards, Path(tmp) / "two")
        same = _digest(Path(tmp) / "one") == _digest(Path(tmp) / "two")
    import pyarrow.parquet as pq

    rows = sum(pq.ParquetFile(s).metadata.num_rows for s in shards)
    doc = {"shards": len(shards), "rows": rows, "cpus": os.cpu_count(), "one_worker_s": round(one, 1),
           "two_workers_s": round(two, 1), "speedup": round(one / two, 2), "target": 1.6, "identical_outputs": same}
    print(json.dumps(doc, indent=2))
    return doc


if __name__ == "__main__":
    main()
