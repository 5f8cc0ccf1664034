# Two entry points for a fresh machine (Python 3.11): `make gate` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.PHONY: setup gate gate-qnn test bench bench-save bench-compare real-size clean

$(BIN)/sdxl-qdq: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --quiet -c constraints.txt torch
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $@

setup: $(BIN)/sdxl-qdq

# The main job: the quality gate on the embedded default model, writing reports/quality/index.html.
gate: setup
	$(PYTEST) -m quality --report reports/quality

# The same gate with the quantized variants on the QNN EP (HTP simulator on x86_64), against baselines/<model>/qnn/.
gate-qnn: setup
	$(PYTEST) -m quality --ep qnn --report reports/quality-qnn

# The tests: everything but real-size (slow) tests, on 2 workers (benchmarks run once, untimed, under xdist).
test: setup
	$(PYTEST) -n 2 -m "not slow"

# Latency and build-time benchmarks (pytest-benchmark); JSON under baselines/benchmarks/<machine>/.
bench: setup
	$(PYTEST) --benchmark-only --benchmark-json=reports/benchmarks.json

# Store this machine's run as its baseline (review, then commit baselines/benchmarks/).
bench-save: setup
	$(PYTEST) --benchmark-only --benchmark-save=baseline

# Gate: fail when a median regresses by more than 25 % against the latest stored run of this machine.
bench-compare: setup
	$(PYTEST) --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25% --benchmark-json=reports/benchmarks.json

# Real size: sdxl-turbo's architectures with random weights through the memory-bounded quantizer, 2 samples;
# time and peak memory per component and stage in reports/real-size.json (about 20 min on 2 cores, 12 GB, 35 GB of disk).
real-size: setup
	$(PYTEST) -m slow tests/test_real_size.py -s

clean:
	rm -rf $(VENV) reports .benchmarks
