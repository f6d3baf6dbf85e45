#!/usr/bin/env bash
# Stages what scripts/gpu_check.sh needs on a GPU machine that reaches no registry (run here, on the
# CPU machine, after `make setup`): Python 3.12 wheels under .whl/ and demo data under .gpu/
# (both ignored by git; carry them with the device tool). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WS=${UNIMOE_WORKSPACE:-workspace}
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
# Wheels the GPU image (Python 3.12, torch 2.11 + CUDA) lacks: the dac stack and the project's audio I/O.
mkdir -p .whl
# One requirement at a time: a few (argbind, julius, ...) are published as sdists only, so those are
# built here into pure-Python wheels; a compiled one without a cp312 wheel stops the script.
grep -v '^#' scripts/gpu_wheels.txt | sed 's/[[:space:]]*#.*//' | grep -v '^[[:space:]]*$' | while read -r req; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$req" 2>/dev/null \
  || "$PY" -m pip wheel -q --no-deps -w .whl "$req" 2>/dev/null \
  || { echo "[gpu-prepare] no Python 3.12 wheel for $req" >&2; exit 1; }
done
# Demo data: the small demo corpus curated (its token shards), and a slice of the default corpus's
# training audio for the codec (under 40 MB, so the tree travels).
"$PY" -m flows.cli curate --small --workspace "$WS-small" >/dev/null
rm -rf .gpu && mkdir -p .gpu/audio
cp -r "$WS-small/curate/tokens" .gpu/tokens
"$PY" - "$WS" <<'PYEOF'
import sys
from pathlib import Path
import numpy as np
from data.codec_sources import codec_training_sources
from unimoe.common.audio import load_span, resample, save_wav, to_mono
ws = Path(sys.argv[1])
manifest = ws / "curate" / "filtered.parquet"
if not manifest.is_file():
    manifest = Path(str(ws) + "-small") / "curate" / "filtered.parquet"
sources, _ = codec_training_sources(manifest)
rng = np.random.default_rng(0)
budget = 20 * 60 * 16000  # 20 minutes of 16 kHz audio (~38 MB as 16-bit WAV)
for i in rng.permutation(len(sources)):
    s = sources[i]
    wav, sr = load_span(s.path, s.offset, s.duration)
    mono = resample(to_mono(wav), sr, 16000)
    if len(mono) > budget:
        break
    budget -= len(mono)
    save_wav(Path(".gpu/audio") / f"{s.group}-{i:05d}.wav", mono, 16000)
print("[gpu-prepare] staged", len(list(Path(".gpu/audio").glob("*.wav"))), "clips")
PYEOF
du -sh .whl .gpu
