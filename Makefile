# Two commands for a newcomer: `make demo` (segment samples/ with the shipped weights) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
INPUT  ?= samples
OUTPUT ?= out
# The GPU kit (docs/TRAINING.md, "Training on a GPU with the kit"): where it goes and what it packs.
GPU_KIT         ?= build/gpu-kit
GPU_KIT_WORKERS ?= 2
REAL_TRAIN      ?= data/real/train
SYNTH_TRAIN     ?= data/ship_train

.PHONY: demo test system-deps clean gpu-kit peers-env

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.app-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt training/requirements.txt requirements-dev.txt pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@ $(VENV)/.app-installed

# Docker engine and debootstrap for the container test (Debian/Ubuntu, as root).
system-deps:
	@if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap >/dev/null; \
		else echo "install docker.io and debootstrap (as root) for the container test" >&2; exit 1; fi; \
	fi

demo: $(VENV)/.app-installed
	$(BIN)/python -m app predict --input $(INPUT) --output $(OUTPUT) --report $(OUTPUT)/timing.csv

# Lint and type checks (configured in pyproject.toml), then the test suite.
test: system-deps $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

# Everything a training run on a CUDA machine without network needs besides the repository: the long preset's
# training pool (real folders packed, the synthetic folder as its generator recipe), the wheels, a manifest.
gpu-kit: $(VENV)/.dev-installed
	$(BIN)/python -m training.gpu_kit pack --out $(GPU_KIT) --workers $(GPU_KIT_WORKERS) \
		--data $(REAL_TRAIN)/dsb2018_fluorescence --data $(REAL_TRAIN)/dsb2018_stained \
		--data $(REAL_TRAIN)/usiigaci_phase --synthetic $(SYNTH_TRAIN) --synth-seed 2026 --synth-size 256 640
	@echo "on the CUDA machine, from the repository root: sh scripts/gpu_run.sh $(GPU_KIT) OUT_DIR"

# The peers of `python -m benchmarks.peers` (Cellpose 3, StarDist 2D) in their own environment, never a project
# dependency: benchmarks/peers-requirements.txt pins them, benchmarks/peers.py runs them from this folder.
PEERS_VENV := build/peers-venv

peers-env: $(PEERS_VENV)/.installed

$(PEERS_VENV)/.installed: benchmarks/peers-requirements.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q --upgrade pip
	$(PEERS_VENV)/bin/pip install -q -r benchmarks/peers-requirements.txt
	touch $@

clean:
	rm -rf $(VENV) $(OUTPUT) .pytest_cache
