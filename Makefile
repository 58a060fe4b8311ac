# mmfusion — set-up and everyday commands. `make help` lists them.
PY ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: help install test test-fast train eval lint format bench docs clean

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-12s %s\n", $$1, $$2}'

install: ## create .venv, install torch (pinned, first), then mmfusion[dev]
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"

test: ## run the whole test suite (what CI runs): 2 workers, one torch thread each, a file per worker
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 WANDB_MODE=offline $(BIN)/python -m pytest -q -n 2 --dist loadfile --timeout=900

test-fast: ## skip the tests marked slow
	$(BIN)/python -m pytest -q -m "not slow"

train: ## train the default model on the default (embedded, offline) data
	$(BIN)/python train.py

lint: ## ruff: formatting and lint rules (what CI runs)
	$(BIN)/ruff format --check src tests scripts train.py eval.py
	$(BIN)/ruff check src tests scripts train.py eval.py

format: ## ruff format (then `make lint` passes)
	$(BIN)/ruff format src tests scripts train.py eval.py

docs: ## build the documentation site into site/ (mkdocs-material + mkdocstrings; warnings are errors)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: ## training-step benchmark -> outputs/benchmark.json
	$(BIN)/python scripts/benchmark.py

clean: ## remove caches and build artefacts
	rm -rf build dist site *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
