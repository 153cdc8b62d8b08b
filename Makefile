# `make repro` trains; `make test` runs the whole test suite. Both create .venv and install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --disable-pip-version-check
export PATH := $(abspath $(BIN)):$(PATH)

# One stamp per install: the pipeline's dependencies; plus the team's and the tests'; plus the linters.
INSTALLED := $(VENV)/.installed
TEST_INSTALLED := $(VENV)/.installed-test
DEV_INSTALLED := $(VENV)/.installed-dev

.PHONY: help setup setup-test setup-dev repro report test test-fast lint format bench clean
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-11s %s\n", $$1, $$2}'

setup: $(INSTALLED) ## create .venv with the package (editable) and what the pipeline needs
setup-test: $(TEST_INSTALLED) ## add the team stack's and the tests' extras
setup-dev: $(DEV_INSTALLED) ## add ruff, mypy and pre-commit

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(TEST_INSTALLED): $(INSTALLED)
	$(PIP) -e ".[team,test]"
	touch $@

$(DEV_INSTALLED): $(INSTALLED)
	$(PIP) -e ".[dev]"
	touch $@

repro: $(INSTALLED) ## run the pipeline (dvc repro)
	dvc repro

report: $(INSTALLED) ## the workspace against main (BASELINE=rev): params, metrics, plots in report/report.md
	python -m mnist_softmax.team.report --baseline $(or $(BASELINE),main)

# Two workers; tests that share a started service (the team stack, a queued sweep) stay on one of them.
test: $(TEST_INSTALLED) ## the whole test suite, what CI runs
	python -m pytest -n 2 --dist loadgroup tests

test-fast: $(TEST_INSTALLED) ## unit and stage tests only, in-process: the inner loop
	python -m pytest tests/unit tests/stages -q

lint: $(TEST_INSTALLED) $(DEV_INSTALLED) ## ruff (lint and format check) and mypy, as the pre-commit hook runs them
	ruff check .
	ruff format --check .
	mypy

format: $(DEV_INSTALLED) ## apply ruff's fixes and formatting
	ruff check --fix .
	ruff format .

bench: $(INSTALLED) ## the training-speed benchmark (docs/performance.md)
	python -m benchmarks.train_speed

clean: ## remove the pipeline's outputs, stores and caches (not .venv)
	rm -rf data models plots mlflow.db mlflow.db.lock mlruns .dvc/cache .dvc/tmp
