# The two entry points a fresh machine needs (see README): `make test` and, for the main job,
# `make pipeline` (arrives with the pipeline flow). Both run the idempotent set-up first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 180
# Two pytest-xdist workers (one per core). librosa's cached numba gufuncs (beat_track, peak_pick, yin) once
# crashed workers with SIGSEGV (a NULL kernel, numba issue 10128); the code no longer calls them (numpy
# ports in unimoe/common/music.py). PYTEST_WORKERS=0 runs the suite in one process.
PYTEST_WORKERS ?= 2

.PHONY: setup test test-slow bench lint pipeline demo-codec
setup:
	bash scripts/setup.sh

test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow" --timeout 900

test-slow: setup
	$(PY) -m pytest -q -m slow --timeout 3600

bench: setup
	$(PY) benchmarks/moe_layer.py
	$(PY) benchmarks/decode.py

# The main job: the whole DAG (curate -> train -> benchmark -> regression) on the offline demo profile,
# outputs under ./workspace (or $UNIMOE_WORKSPACE). Extra options: make pipeline PIPELINE_ARGS="--small".
PIPELINE_ARGS ?=
pipeline: setup
	$(PY) -m flows.cli pipeline $(PIPELINE_ARGS)

# Regenerates the shipped demo codec (unimoe/assets/codecs/demo-dac.safetensors, its provenance JSON
# and quality report): curate the demo corpus up to the quality filter, train the DAC on its train
# split (resumable: re-running continues from workspace/codec/demo-run), export, report on held-out audio.
# DEMO_CODEC_INIT=demo continues the shipped codec (warm start) instead of training from scratch.
# After regenerating, set unimoe.config.DEMO_CODEC_SHA256 to the new file's checksum (a test checks it).
DEMO_CODEC_STEPS ?= 3000
DEMO_CODEC_INIT ?=
DEMO_CODEC := unimoe/assets/codecs/demo-dac.safetensors
demo-codec: setup
	$(PY) -m flows.cli curate --until filter
	$(PY) -m flows.cli codec train --config configs/codec/demo.yaml --steps $(DEMO_CODEC_STEPS) \
		--out workspace/codec/demo-run --export $(DEMO_CODEC) $(if $(DEMO_CODEC_INIT),--init-from $(DEMO_CODEC_INIT))
	$(PY) -m flows.cli codec report --codec $(DEMO_CODEC) --manifest workspace/curate/filtered.parquet \
		--out unimoe/assets/codecs/demo-report --attach-to unimoe/assets/codecs/demo-dac.json
