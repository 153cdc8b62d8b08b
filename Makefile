# `make repro` trains; `make test` runs the test suite. Both create .venv and install the pins first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup repro test bench clean

setup: $(INSTALLED)

# The last step builds the C++ train step (~10 s) now rather than in the first training. Without a compiler
# setup goes on: train.backward: manual-cpp then stops with the reason, and manual or autograd still work.
$(INSTALLED): requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -r requirements.txt
	$(BIN)/python -c "from src.native import ops; ops()" || echo "setup: warning: C++ train step not built"
	touch $@

repro: $(INSTALLED)
	dvc repro

test: $(INSTALLED)
	python -m pytest tests

bench: $(INSTALLED)
	python -m benchmarks.train_speed

clean:
	rm -rf data models plots mlflow.db mlflow.db.lock mlruns .dvc/cache .dvc/tmp
