"""A killed pipeline resumes to the same result: ``unimoe pipeline --small`` (the tiny settings of
tests/test_pipeline_flow.py) is SIGKILLed, its whole process group (the embedded Prefect server included),
as soon as training has written its first checkpoint, then run again in the same workspace to completion.
Its benchmark aggregates and its final checkpoint's weights equal those of an uninterrupted run in another
workspace; the re-run does not redo curation (cached) and the interrupted stage resumes from its checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_curate_flow import flow_env  # noqa: E402
from test_pipeline_flow import FAST, ROOT, UNIMOE, VARIANT, _pipeline, _result, _tasks_run  # noqa: E402
from test_pipeline_flow import pytestmark  # noqa: E402, F401  (skipped without the demo corpus' binaries)

CURATE_TASKS = {"build-corpus", "ingest", "segment", "split-shards", "caption-shard", "filter-shard", "merge",
                "balance", "plan-token-shards", "tokenize-shard", "finish-tokens"}


def _outcome(ws: Path, out: subprocess.CompletedProcess) -> tuple:
    from evaluation import results as R

    res = _result(out)
    agg = R.read_table(ws / "results", "aggregate", run_id=res["benchmark"][VARIANT]["run_id"])
    values = agg.set_index(["task", "metric"])["value"].sort_index()
    state = json.loads((Path(res["train"][VARIANT]["checkpoint"]) / "state.json").read_text())
    return values, state


def _checkpoints(ws: Path) -> dict[str, str]:
    """Stage workdir (relative to <ws>/train) -> the checkpoint its ``latest`` pointer names."""
    train = ws / "train"
    out = {}
    for p in train.rglob("checkpoints/latest") if train.is_dir() else []:
        try:
            out[str(p.parent.parent.relative_to(train))] = p.read_text().strip()
        except OSError:
            pass
    return out


def _kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the group's other processes (the embedded server) are gone too
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process group {proc.pid} still alive 30 s after SIGKILL")


def _run_until_first_checkpoint(ws: Path, tmp: Path, log: Path) -> dict[str, str]:
    """Start the pipeline; SIGKILL its process group once training has written a checkpoint."""
    cmd = [*UNIMOE, "pipeline", "--small", "--workspace", str(ws), *FAST]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=flow_env(tmp), stdout=f, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            ckpts = _checkpoints(ws)
            if ckpts:
                _kill_group(proc)
                return ckpts
            time.sleep(0.05)
        text = log.read_text(errors="replace")
        raise AssertionError(f"no training checkpoint before the pipeline ended (exit {proc.returncode}):\n"
                             f"{text[-3000:]}")
    finally:
        if proc.poll() is None:
            _kill_group(proc)


def test_killed_pipeline_resumes_to_the_uninterrupted_result(tmp_path):
    t_start = time.perf_counter()
    ref_ws, ref_tmp = tmp_path / "ref" / "ws", tmp_path / "ref"
    ref, t_ref = _pipeline(ref_ws, ref_tmp)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]
    ref_values, ref_state = _outcome(ref_ws, ref)

    tmp = tmp_path / "killed"
    ws = tmp / "ws"
    t0 = time.perf_counter()
    at_kill = _run_until_first_checkpoint(ws, tmp, tmp / "killed.log")
    t_killed = time.perf_counter() - t0
    killed_log = (tmp / "killed.log").read_text(errors="replace")
    # killed in the middle: curation done, training started, nothing benchmarked
    assert "[pipeline 2/3] train" in killed_log, killed_log[-3000:]
    assert "[pipeline 3/3]" not in killed_log and "pipeline done" not in killed_log, killed_log[-3000:]
    assert (ws / "curate" / "curated.parquet").is_file()
    assert not (ws / "results").exists() or not any((ws / "results").rglob("*.parquet"))
    stage, name = next(iter(at_kill.items()))
    interrupted = ws / "train" / stage / "checkpoints" / name / "state.json"
    before = interrupted.stat()

    again, t_again = _pipeline(ws, tmp)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    values, state = _outcome(ws, again)
    print(f"pipeline --small: uninterrupted {t_ref:.1f} s; killed after {t_killed:.1f} s at {at_kill}; "
          f"re-run {t_again:.1f} s; test {time.perf_counter() - t_start:.1f} s")

    ran = _tasks_run(again)
    assert not ran & CURATE_TASKS, ran & CURATE_TASKS  # curation's tasks were cache hits
    # the interrupted stage resumed from the checkpoint it had written (not rewritten by a fresh start)
    after = interrupted.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), interrupted
    assert state["step"] == ref_state["step"] == 2
    assert state["weights_sha256"] == ref_state["weights_sha256"]
    assert len(ref_values) > 0 and set(values.index) == set(ref_values.index)
    assert values.equals(ref_values), (values.compare(ref_values) if values.index.equals(ref_values.index)
                                       else (values, ref_values))
