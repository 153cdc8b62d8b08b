# `make repro` trains; `make test` runs the whole test suite. Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: help setup repro test test-fast lint format bench clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(INSTALLED) ## create .venv with the package (editable) and its pinned dependencies

# The package (src/mnist_softmax) editable, with its pinned dependencies, the team stack's, the tests' and the
# contributor's tools.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[team,test,dev]"
	touch $@

repro: $(INSTALLED) ## run the pipeline (dvc repro)
	dvc repro

# Two workers; tests that share a started service (the team stack, a queued sweep) stay on one of them.
test: $(INSTALLED) ## the whole test suite, what CI runs
	python -m pytest -n 2 --dist loadgroup tests

test-fast: $(INSTALLED) ## unit and stage tests only, in-process: the inner loop
	python -m pytest tests/unit tests/stages -q

lint: $(INSTALLED) ## ruff (lint and format check) and mypy, as the pre-commit hook runs them
	ruff check .
	ruff format --check .
	mypy

format: $(INSTALLED) ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

bench: $(INSTALLED) ## the training-speed benchmark (docs/performance.md)
	python -m benchmarks.train_speed

clean: ## remove the pipeline's outputs, stores and caches (not .venv)
	rm -rf data models plots mlflow.db mlflow.db.lock mlruns .dvc/cache .dvc/tmp
