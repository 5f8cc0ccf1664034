# Two entry points for a fresh machine (Python 3.11): `make gate` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest

.PHONY: setup gate test bench clean

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

# The tests: everything but real-size (slow) tests, on 2 workers (benchmarks run once, untimed, under xdist).
test: setup
	$(PYTEST) -n 2 -m "not slow"

# Latency and build-time benchmarks (pytest-benchmark).
bench: setup
	$(PYTEST) --benchmark-only

clean:
	rm -rf $(VENV) reports .benchmarks
