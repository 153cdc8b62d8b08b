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

.PHONY: help setup setup-test setup-dev repro report test test-fast lint format bench vega clean
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

# `dvc plots show` / `diff` write a page that loads Vega from a CDN; .dvc/config points them at .dvc/plots/offline.html,
# the same page with these libraries inlined. It is committed: a clone draws its plots with no network, npm or
# make step, and the config never names a missing file. `make vega` rebuilds it, each library checked by SHA-256.
VEGA_HTML := .dvc/plots/offline.html
VEGA_LIBS := \
  vega@5.33.1:build/vega.min.js:463f3db6a40b20e9747b4ed38f37ed0add508838f9141b1cf8366784b07b30c8 \
  vega-lite@5.23.0:build/vega-lite.min.js:58c27358e26f2d319cf62f45bc17a4c8362f08645001df2ec8d341eee4097c7f \
  vega-embed@6.29.0:build/vega-embed.min.js:12d02acfbe3ec59ef9a37dd4822a2e04e2961b5bbb671bbe661d2221715b99da

vega: ## rebuild .dvc/plots/offline.html (dvc plots' page, Vega inlined) from the pinned npm packages
	@set -e; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	printf '<!DOCTYPE html>\n<html>\n<head>\n    {refresh_tag}\n    <meta charset="utf-8">\n    <title>DVC Plot</title>\n' \
	  > "$$tmp/page"; \
	for lib in $(VEGA_LIBS); do \
	  spec=$${lib%%:*}; rest=$${lib#*:}; file=$${rest%%:*}; sha=$${rest#*:}; \
	  tgz=$$(cd "$$tmp" && npm pack --silent "$$spec"); \
	  mkdir "$$tmp/$$spec"; tar xzf "$$tmp/$$tgz" -C "$$tmp/$$spec" "package/$$file"; \
	  echo "$$sha  $$tmp/$$spec/package/$$file" | sha256sum -c --quiet; \
	  if grep -qi '</script' "$$tmp/$$spec/package/$$file"; then echo "$$spec: '</script' inside"; exit 1; fi; \
	  { printf '    <script>/* %s %s sha256:%s */\n' "$$spec" "$$file" "$$sha"; \
	    cat "$$tmp/$$spec/package/$$file"; printf '\n    </script>\n'; } >> "$$tmp/page"; \
	done; \
	printf '    <style>\n        table {\n            border-spacing: 15px;\n        }\n    </style>\n</head>\n' \
	  >> "$$tmp/page"; \
	printf '<body>\n    {plot_divs}\n</body>\n</html>\n' >> "$$tmp/page"; \
	mv "$$tmp/page" $(VEGA_HTML); echo "wrote $(VEGA_HTML)"

clean: ## remove the pipeline's outputs, stores and caches (not .venv)
	rm -rf data models plots mlflow.db mlflow.db.lock mlruns .dvc/cache .dvc/tmp
