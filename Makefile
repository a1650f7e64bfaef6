# Two commands on a fresh machine: `make demo` (set up + diagnose sample_logs/) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch is pinned here (not in pyproject) so a fresh machine takes the local CPU wheel instead of
# a multi-GB CUDA build; the package itself only asks for torch>=2.4.
TORCH  ?= torch==2.13.0

# What `make lint` checks (ruff check, ruff format --check; mypy reads its file list from pyproject.toml).
LINT_PATHS := adamdiag tests tools bench examples
# test-mindeps: a second venv with the lowest versions pyproject.toml declares (tools/lowest_deps.py)
MINDEPS_VENV ?= .venv-mindeps

.PHONY: setup demo test test-all lint test-mindeps sample-logs sample-logs-tf bench validate clean

# setup.py builds the optional C kernels (adamdiag/analysis/_moments_kernel.c,
# adamdiag/monitor/_monitor_kernel.c, adamdiag/io/checkpoints/_crc32_kernel.c) when a C
# compiler is present; editing it re-runs the install, which rebuilds it.
$(BIN)/adamdiag: pyproject.toml setup.py adamdiag/analysis/_moments_kernel.c adamdiag/monitor/_monitor_kernel.c \
		adamdiag/io/checkpoints/_crc32_kernel.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[test]"
	@touch $@

setup: $(BIN)/adamdiag

demo: setup
	$(BIN)/adamdiag scan sample_logs/

# lint first: a formatting or type error fails in seconds, not after the suite
test: setup lint
	$(BIN)/python -m pytest -q

test-all: setup
	$(BIN)/python -m pytest -q -m ''

lint: setup
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# Not in CI: the fast suite against the lowest declared pandas, numpy, typer, rich, tensorboard, protobuf,
# matplotlib, google-crc32c, safetensors, pyarrow and h5py (torch stays $(TORCH)). Run it whenever a reader changes:
# a bug that only shows with an old pandas reaches the users the lower bound lets in.
# adamdiag itself is not installed there: `python -m pytest` imports it from this tree (with the C kernel
# `make setup` built, when there is one), so the second venv never rewrites files in the tree.
test-mindeps: setup
	test -x $(MINDEPS_VENV)/bin/python || $(PYTHON) -m venv $(MINDEPS_VENV)
	$(MINDEPS_VENV)/bin/pip install -q --upgrade pip
	$(MINDEPS_VENV)/bin/pip install -q "$(TORCH)"
	$(MINDEPS_VENV)/bin/python tools/lowest_deps.py > $(MINDEPS_VENV)/lowest.txt
	$(MINDEPS_VENV)/bin/pip install -q -c $(MINDEPS_VENV)/lowest.txt -r $(MINDEPS_VENV)/lowest.txt \
		pytest hypothesis tensorboardX tbparse
	$(MINDEPS_VENV)/bin/python tools/lowest_deps.py --check
	$(MINDEPS_VENV)/bin/python -m pytest -q

# Regenerates sample_logs/ from a real (deterministic, CPU) training run.
sample-logs: setup
	$(BIN)/python tools/runlab/multitask.py --out sample_logs

# The TF1 sample (sample_logs/tf1_vcollapse): TF_PYTHON is a Python with TensorFlow (pip install
# 'adamdiag[tf]', or a separate venv with tensorflow-cpu); adamdiag itself never imports TensorFlow.
TF_PYTHON ?= $(BIN)/python
sample-logs-tf:
	$(TF_PYTHON) tools/runlab/tf1_multitask.py --out sample_logs/tf1_vcollapse

bench: setup
	$(BIN)/python bench/read_events.py
	$(BIN)/python bench/checkpoint_memory.py
	$(BIN)/python bench/replay_sweep.py --threads 1
	$(BIN)/python bench/scan_cost.py

validate: setup
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/check_messages.py

clean:
	rm -rf $(VENV) $(MINDEPS_VENV) .mypy_cache build *.egg-info .pytest_cache .ruff_cache bench/out adamdiag/analysis/_moments_kernel*.so adamdiag/monitor/_monitor_kernel*.so \
		adamdiag/io/checkpoints/_crc32_kernel*.so
