#!/usr/bin/env bash
# The CUDA checks, for a GPU machine the moment one is at hand (see README "GPU check"):
#   1. trains a codec from scratch on CUDA for a minute (unimoe codec train's trainer, k-means init),
#   2. continues the shipped demo codec for 3 minutes through `unimoe codec train --init-from demo` and
#      exports it to $OUT/codec/ (codec.safetensors + provenance JSON: a candidate for the next demo codec),
#   3. runs one tiny-preset training stage on CUDA with bf16 autocast,
#   4. runs benchmarks/moe_layer.py on CUDA with torch._grouped_mm (and the slice loop beside it),
# and writes one JSON report ($OUT/gpu_check.json, or ./gpu_check.json). Sized to finish in 8 minutes.
#
# The GPU machine reaches no package registry and no corpus: `scripts/gpu_prepare.sh`, run first on
# a CPU machine with the project set up, stages what this needs under .whl/ (Python 3.12 wheels the
# GPU image lacks) and .gpu/ (demo training audio and token shards). With the device tool:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gpu"], timeout_s=600)
# GPU_CHECK_DEVICE=cpu runs the same checks on a CPU with tiny settings (tests the script itself).
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${GPU_CHECK_PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "[gpu-check] installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
[ "$DEVICE" = cuda ] && { nvidia-smi -L || true; }
# 1 + 3 min codec, ~0.5 min stage, ~0.3 min MoE benchmark, plus start-up: inside 8 minutes
timeout 470 "$PY" scripts/gpu_check.py --device "$DEVICE" --codec-minutes "${GPU_CHECK_CODEC_MINUTES:-1}" \
  --continue-minutes "${GPU_CHECK_CONTINUE_MINUTES:-3}" "$@"
