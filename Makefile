# Everything runs from a project-local virtualenv; a fresh machine needs only python3.11 + make.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# torch first, pinned: an unpinned torch resolves to a multi-GB CUDA build on these machines.
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: setup demo test test-unit bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==$(TORCH_VERSION)
	$(PY) -m pip install --quiet -e '.[test,bench]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m batch.demo --out $(DEMO_DIR)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Laptop-sized runs (~15 min on 2 cores); see docs/benchmarks.md for the longer settings.
bench: setup
	$(PY) -m bench.bench_peers --prompts 256 --rounds 2
	$(PY) -m bench.bench_scaling --per-worker 50
	$(PY) -m bench.bench_stragglers
	$(PY) -m bench.bench_serving --requests-per-level 64 --max-seconds 30
	$(PY) -m bench.bench_coldstart --rounds 2

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
