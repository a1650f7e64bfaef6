# Two commands on a fresh machine: `make demo` (set up + diagnose sample_logs/) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here (not in pyproject) so a fresh machine takes the local CPU wheel instead of
# a multi-GB CUDA build; the package itself only asks for torch>=2.4.
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-all lint sample-logs bench validate clean

# setup.py builds the optional C statistics kernel (adamdiag/analysis/_moments_kernel.c) when a C
# compiler is present; editing it re-runs the install, which rebuilds it.
$(BIN)/adamdiag: pyproject.toml setup.py adamdiag/analysis/_moments_kernel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

setup: $(BIN)/adamdiag

demo: setup
	$(BIN)/adamdiag scan sample_logs/

test: setup
	$(BIN)/ruff check adamdiag tests tools bench
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

lint: setup
	$(BIN)/ruff check adamdiag tests tools bench

# Regenerates sample_logs/ from a real (deterministic, CPU) training run.
sample-logs: setup
	$(BIN)/python tools/runlab/multitask.py --out sample_logs

bench: setup
	$(BIN)/python bench/read_events.py
	$(BIN)/python bench/checkpoint_memory.py
	$(BIN)/python bench/replay_sweep.py --threads 1

validate: setup
	$(BIN)/python bench/accuracy.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache bench/out adamdiag/analysis/_moments_kernel*.so
