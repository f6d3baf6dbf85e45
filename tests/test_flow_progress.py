"""Progress of long mapped steps: a log line per finished shard (done / total, rate, ETA) and a Prefect
progress artifact that reaches 100 %, from a real flow run on an embedded Prefect server."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import asyncio, json, sys, time
from pathlib import Path
from prefect import flow, task
from prefect.client.orchestration import get_client
from flows.common import StepProgress, run_cached_map, task_runner

lines = []

@task
def work(n: int) -> int:
    time.sleep(0.05 * n)
    return n * n

@flow(task_runner=task_runner("", max_workers=2))
def demo(ws: str) -> list:
    progress = StepProgress("square shards", [2, 3, 5], log=lines.append)
    return run_cached_map(work, Path(ws), progress=progress, n=[2, 3, 5])

results = demo(sys.argv[1])

async def artifacts():
    async with get_client() as c:
        return [(a.key, a.type, a.data) for a in await c.read_artifacts()]

print(json.dumps({"results": results, "lines": lines, "artifacts": asyncio.run(artifacts())}))
"""


def test_step_progress_logs_each_shard_and_fills_a_prefect_progress_artifact(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180", PREFECT_HOME=str(tmp_path / "prefect-home"))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "ws")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout.strip().splitlines()[-1])
    assert doc["results"] == [4, 9, 25]  # in submission order, whatever order the shards finished in
    lines = doc["lines"]
    assert len(lines) == 3
    done = [int(line.split(": ")[1].split("/")[0]) for line in lines]
    assert done == sorted(done) and done[-1] == 10 and set(done) <= {2, 3, 5, 7, 8, 10}  # sums of shard sizes
    assert lines[-1].startswith("square shards: 10/10 rows (100%), shard 3/3, ") and lines[-1].endswith("ETA 0s")
    assert all(" rows/s, ETA " in line for line in lines)
    progress = [a for a in doc["artifacts"] if a[1] == "progress"]
    assert [(k, d) for k, _, d in progress] == [("square-shards-progress", 100.0)]
