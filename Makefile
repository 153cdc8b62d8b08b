# `make repro` trains; `make test` runs the test suite. Both create .venv and install the project first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test bench clean

setup: $(INSTALLED)

# The package (src/mnist_softmax) editable, with its pinned dependencies, the team stack's and the test tools.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e ".[team,test]"
	touch $@

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	python -m pytest tests

bench: $(INSTALLED)
	python -m benchmarks.train_speed

clean:
	rm -rf data models plots mlflow.db mlflow.db.lock mlruns .dvc/cache .dvc/tmp
