# make setup: .venv with everything pinned (idempotent) · make test · make demo · make bench · make quality
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed

.PHONY: setup setup-vllm test test-all demo bench quality clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt constraints.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is needed (LLaMA-Factory); set PYTHON=python3.11")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -r requirements.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup-vllm:
	test -x .venv-vllm/bin/python || $(PYTHON) -m venv .venv-vllm
	.venv-vllm/bin/python -m pip install -r requirements-vllm.txt
	.venv-vllm/bin/python -m pip install --no-deps -e .

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m "slow or not slow"

demo: setup
	bash scripts/demo.sh

bench: setup
	$(BIN)/python bench/bench_generation.py
	$(BIN)/python bench/bench_grading.py

quality: setup
	$(BIN)/ruff check tokenskip tests bench *.py

clean:
	rm -rf $(VENV) .pytest_cache
