"""Curation speed: the curate flow's per-step table (rows, seconds, rows/s), wall time and peak RSS, cold,
as one JSON object — side by side with another revision's numbers when given one, and whether both
produced the same outputs (curated.parquet statuses, token shards' tensors by SHA-256).

    python benchmarks/curate_speed.py                       # this checkout, default demo profile
    python benchmarks/curate_speed.py --small --baseline HEAD~1
    python benchmarks/curate_speed.py --baseline earlier.json   # a JSON this script printed before

A baseline revision is checked out with ``git worktree`` into a temporary folder and run with the same
Python environment, one after the other with this checkout (never at once: the two would share the
cores). Each run curates into a fresh workspace (cold: no Prefect cache, no caption cache, no corpus).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Run in a child: the curate CLI as a grandchild, so RUSAGE_CHILDREN covers that one run only (the CLI's
# own children — the embedded Prefect server — included).
_RUNNER = ("import resource, subprocess, sys, json; rc = subprocess.call(sys.argv[1:]); "
           "ru = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "print(json.dumps({'rc': rc, 'peak_rss_mb': ru.ru_maxrss / 1024}), file=sys.stderr)")


def _tensors_sha256(path: Path) -> str:
    """SHA-256 over a token shard's tensors (codes, text ids, video frames), name by name. Not the file's
    bytes: its metadata holds a key derived from the rows' audio paths, which differ between workspaces."""
    from safetensors.numpy import load_file

    h = hashlib.sha256()
    for name, array in sorted(load_file(str(path)).items()):
        h.update(f"{name}:{array.dtype}:{array.shape};".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def outputs_fingerprint(workspace: Path) -> dict:
    """What must not change when curation gets faster: each row's status and reason, and each token shard."""
    import pyarrow.parquet as pq

    work = workspace / "curate"
    t = pq.read_table(work / "curated.parquet", columns=["id", "status", "reason"]).to_pylist()
    statuses = {r["id"]: f"{r['status']}:{r['reason'] or ''}" for r in t}
    shards = {p.name: _tensors_sha256(p) for p in sorted((work / "tokens").glob("*.safetensors"))}
    return {"rows": len(statuses), "statuses_sha256": hashlib.sha256(json.dumps(statuses, sort_keys=True).encode()).hexdigest(),
            "statuses": statuses, "token_shards": shards}


def measure(code_dir: Path, small: bool, workspace: Path, label: str, extra_args: list[str] = ()) -> dict:
    """Run ``unimoe curate`` from ``code_dir`` into an empty ``workspace``; the per-step table and outputs."""
    cmd = [sys.executable, "-m", "flows.cli", "curate", "--workspace", str(workspace)] + (["--small"] if small else [])
    cmd += list(extra_args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("UNIMOE_WORKSPACE", None)
    print(f"[{label}] {' '.join(cmd)}  (in {code_dir})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, *cmd], cwd=code_dir, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    tail = proc.stderr.strip().splitlines()
    usage = json.loads(tail[-1]) if tail and tail[-1].startswith("{") else {"rc": proc.returncode, "peak_rss_mb": None}
    if usage["rc"] != 0:
        raise SystemExit(f"[{label}] curate failed (exit {usage['rc']}):\n" + "\n".join(tail[-40:]))
    summary = json.loads((workspace / "curate" / "summary.json").read_text())
    steps = {s["step"]: {k: s[k] for k in ("rows", "seconds", "rows_per_s")} for s in summary["steps"]}
    return {"label": label, "code": str(code_dir), "commit": _commit(code_dir), "wall_s": round(wall, 1),
            "curate_steps_s": round(sum(s["seconds"] for s in steps.values()), 1),
            "peak_rss_mb": round(usage["peak_rss_mb"], 1) if usage["peak_rss_mb"] else None,
            "steps": steps, "outputs": outputs_fingerprint(workspace)}


def _commit(code_dir: Path) -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=code_dir, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=code_dir,
                           capture_output=True, text=True).stdout.strip()
    return out.stdout.strip() + ("+changes" if dirty else "")


def measure_revision(rev: str, small: bool, tmp: Path) -> dict:
    tree = tmp / "baseline-src"
    subprocess.run(["git", "worktree", "add", "--detach", "--force", str(tree), rev], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    try:
        return measure(tree, small, tmp / "baseline-ws", f"baseline {rev}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)


def compare(current: dict, baseline: dict) -> dict:
    """Speed-up per step (baseline seconds / current seconds) and output identity."""
    speedup = {}
    for step, cur in current["steps"].items():
        base = baseline["steps"].get(step)
        if base and cur["seconds"] > 0.5 and base["seconds"] > 0.5:  # sub-second steps are noise
            speedup[step] = round(base["seconds"] / cur["seconds"], 2)
    speedup["curate"] = round(baseline["curate_steps_s"] / current["curate_steps_s"], 2)
    a, b = current["outputs"], baseline["outputs"]
    differ = sorted(i for i in set(a["statuses"]) | set(b["statuses"]) if a["statuses"].get(i) != b["statuses"].get(i))
    return {"speedup": speedup, "same_statuses": not differ, "status_differences": differ[:20],
            "same_token_shards": a["token_shards"] == b["token_shards"]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the small demo profile (a couple of minutes)")
    ap.add_argument("--baseline", help="a git revision to run side by side, or a JSON file this script printed")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="curate-speed-") as tmp:
        tmp = Path(tmp)
        baseline = None
        if args.baseline and Path(args.baseline).is_file():
            baseline = json.loads(Path(args.baseline).read_text())["current"]
        elif args.baseline:
            baseline = measure_revision(args.baseline, args.small, tmp)
        current = measure(ROOT, args.small, tmp / "ws", "current")
    doc = {"profile": "small" if args.small else "default", "cpus": os.cpu_count(), "current": current}
    if baseline is not None:
        doc["baseline"] = baseline
        doc["comparison"] = compare(current, baseline)
    text = json.dumps(doc, indent=2, default=str)
    if args.out:
        args.out.write_text(text)
    short = json.loads(text)
    for run in ("current", "baseline"):
        if run in short:
            short[run]["outputs"].pop("statuses")  # the per-row map is for the comparison (kept in --out)
    print(json.dumps(short, indent=2))
    return doc


if __name__ == "__main__":
    main()
