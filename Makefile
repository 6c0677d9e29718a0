# Warta: `make run` starts a development instance, `make test` is what CI runs.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The stamp's name carries a checksum of pyproject.toml: edit the dependencies
# and the next target re-installs; otherwise an existing venv is reused as is.
STAMP := $(VENV)/.installed-$(firstword $(shell cksum pyproject.toml))

.PHONY: help venv install run lint test bench bench-quick bench-deps clean distclean assets

help:  ## list the targets
	@grep -E '^[a-z -]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

venv install: $(STAMP)  ## create .venv and install warta with the dev extras

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

run: $(STAMP)  ## migrate, then start API, worker and MTA (embedded SQLite and Redis)
	$(BIN)/warta migrate
	exec $(BIN)/warta dev

lint: $(STAMP)  ## ruff check, ruff format --check, mypy --strict, import-linter contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint  ## lint, then the whole suite on SQLite and on PostgreSQL
	bash scripts/ensure-system-deps.sh
	$(MAKE) --no-print-directory assets
	WARTA_TEST_DB=sqlite $(BIN)/pytest
	WARTA_TEST_DB=postgresql $(BIN)/pytest

# Front-end packages from the npm registry, pinned by package-lock.json (axe-core for the
# console's accessibility tests); re-installed when the lockfile changes.
assets: node_modules/.package-lock.json  ## npm ci: the console's front-end packages

node_modules/.package-lock.json: package-lock.json package.json
	npm ci --ignore-scripts --no-audit --no-fund
	@touch $@

# BENCH_FLAGS go to bench/run.py, e.g. BENCH_FLAGS="--recipients 100000" or "--only pipeline".
bench: bench-deps  ## every benchmark (15–25 min), then one summary table (not part of `make test`)
	$(BIN)/python bench/run.py $(BENCH_FLAGS)

bench-quick: bench-deps  ## the benchmarks at small sizes (about 6 min), for development
	$(BIN)/python bench/run.py --quick $(BENCH_FLAGS)

# PostgreSQL and Redis (the servers the benchmarks start), Postfix (the peer, smtp-source and
# smtp-sink; the system instance is kept from starting) and py-spy (for --profile).
bench-deps: $(STAMP)
	bash scripts/ensure-system-deps.sh
	bash bench/ensure-postfix.sh
	$(BIN)/python -m pip install --disable-pip-version-check --quiet py-spy

clean:  ## remove caches and build output (keeps .venv and var/)
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean  ## also remove .venv
	rm -rf $(VENV)
