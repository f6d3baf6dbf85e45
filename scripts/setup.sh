#!/usr/bin/env bash
# Takes a fresh machine to a working environment: Debian packages, a virtual environment with a
# pinned torch (CPU build unless CUDA is present), the project installed editable, and the CPU-only
# workarounds for the registry's CUDA-only torchaudio/torchvision wheels.
# Idempotent: a stamp of the inputs' hash makes a re-run with nothing changed take seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${UNIMOE_VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMP=$VENV/.setup-stamp

log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES=(fluidsynth fluid-soundfont-gm festival festvox-kallpc16k espeak-ng sox ffmpeg libsndfile1)
[ "${UNIMOE_SETUP_BROWSER:-1}" = 1 ] && APT_PACKAGES+=(chromium)

has_cuda() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

inputs_hash() {
  { cat scripts/setup.sh scripts/constraints.txt scripts/requirements*.txt pyproject.toml
    printf '%s\n' "${APT_PACKAGES[@]}"; has_cuda && echo cuda || echo cpu; } | sha256sum | cut -d' ' -f1
}

HASH=$(inputs_hash)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$HASH" ] && "$VENV/bin/python" -c 'import unimoe' 2>/dev/null; then
  log "environment up to date ($VENV)"; exit 0
fi

# --- Debian packages -------------------------------------------------------------------------
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  log "apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- virtual environment ---------------------------------------------------------------------
[ -x "$VENV/bin/python" ] || { log "creating $VENV"; "$PY" -m venv "$VENV"; }
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
C=(-c scripts/constraints.txt)
export PIP_PROGRESS_BAR=off

# torch first, so nothing below can pull another build. Where no CUDA is present the pin resolves
# to the machine's local CPU wheel; with CUDA it resolves to the registry's CUDA build.
"${PIP[@]}" install "torch==2.13.0"
"${PIP[@]}" install "${C[@]}" -r scripts/requirements.txt
"${PIP[@]}" install "${C[@]}" -r scripts/requirements-nodeps-needs.txt
"${PIP[@]}" install "${C[@]}" --no-deps -r scripts/requirements-nodeps.txt
"${PIP[@]}" install "${C[@]}" --no-deps -e .

# --- CPU-only workarounds --------------------------------------------------------------------
if ! has_cuda; then
  SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # The registry's torchaudio/torchvision are CUDA builds: their native libraries cannot load
  # here. Their pure-Python parts (resampling, mel spectrograms, transforms) work without them.
  rm -f "$SITE"/torchaudio/lib/*.so "$SITE"/torchvision/_C.so
  for f in _meta_registrations _autograd_registrations; do
    src="$SITE/torchvision/$f.py"; real="$SITE/torchvision/_${f#_}_real.py"
    [ -f "$src" ] || continue
    if ! grep -q 'UNIMOE_GUARD' "$src"; then
      mv "$src" "$real"
      cat > "$src" <<PYEOF
# UNIMOE_GUARD: registers torchvision's native-op metadata only when its native ops exist.
import torchvision.extension as _ext
if _ext._has_ops():
    from torchvision._${f#_}_real import *  # noqa: F401,F403
PYEOF
    fi
  done
fi

"$VENV/bin/python" - <<'PYEOF'
import torch, importlib
assert torch.__version__.startswith("2.13.0"), torch.__version__
for m in ["dac", "transformers", "tokenizers", "prefect", "pyarrow", "soundfile", "torchaudio", "torchvision", "unimoe"]:
    importlib.import_module(m)
print("[setup] torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")
# Compile librosa's cached numba kernels once here: processes compiling the same kernel into the shared
# cache at the same time have crashed (SIGSEGV in beat_track).
import numpy as np, librosa
librosa.beat.beat_track(y=np.random.default_rng(0).standard_normal(22050 * 4).astype("float32"), sr=22050)
PYEOF
echo "$HASH" > "$STAMP"
log "done"
