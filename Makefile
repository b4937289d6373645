# orchestrator — durable execution on Postgres. `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
APP    ?= examples.app:app

.DEFAULT_GOAL := help
.PHONY: help install browser inngest-sdks run migrate test test-fast check lint format bench soak db-up clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/orchestrator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/orchestrator ## create .venv and install the package with dev tools

migrate: install ## create or upgrade the schema (embedded Postgres unless configured)
	$(BIN)/orchestrator migrate

run: migrate ## install, migrate and start the daemon serving the example app
	$(BIN)/orchestrator run --app $(APP)

browser: ## install Debian's chromium for the browser tests (tests/ui) when it is missing
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y chromium || { apt-get update && apt-get install -y chromium; }; \
	else \
		echo "the browser tests need Debian's chromium at /usr/bin/chromium:" \
		     "run 'sudo apt-get install -y chromium' (or make browser as root)" >&2; \
		exit 1; \
	fi

# The official Inngest JS SDKs (v3 and v4, with express) that tests/inngest and bench/inngest.py
# drive, pinned by the package.json + package-lock.json under tests/inngest/sdk_apps/node/.
SDK_APPS  := tests/inngest/sdk_apps/node
SDK_CACHE := .cache/inngest-sdks

inngest-sdks: $(SDK_CACHE)/v3/node_modules/.installed $(SDK_CACHE)/v4/node_modules/.installed ## npm-install the official Inngest JS SDKs (v3, v4) into .cache/inngest-sdks

$(SDK_CACHE)/%/node_modules/.installed: $(SDK_APPS)/%/package.json $(SDK_APPS)/%/package-lock.json
	@command -v npm >/dev/null || { echo "make inngest-sdks needs Node.js 20+ and npm" >&2; exit 1; }
	mkdir -p $(SDK_CACHE)/$*
	cp $(SDK_APPS)/$*/package.json $(SDK_APPS)/$*/package-lock.json $(SDK_CACHE)/$*/
	npm ci --prefix $(SDK_CACHE)/$* --no-audit --no-fund --loglevel=error
	@touch $@

test: install browser inngest-sdks ## run the whole test suite against real Postgres (and headless chromium)
	$(BIN)/pytest

test-fast: install ## unit and database tests only (no daemon subprocesses, no faults)
	$(BIN)/pytest tests/unit tests/db

check: install ## ruff lint, ruff format --check, mypy --strict
	$(BIN)/ruff check orchestrator tests migrations bench examples
	$(BIN)/ruff format --check orchestrator tests migrations bench examples
	$(BIN)/mypy

format: install ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix orchestrator tests migrations bench examples
	$(BIN)/ruff format orchestrator tests migrations bench examples

bench: install inngest-sdks ## run the benchmarks (pgbench baseline, throughput, pickup, async sleep, first checkpoints, waits, flow control, retention, scale-out, the database floor under W1, testing an app, Inngest SDK apps) and print figures
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/pickup.py
	$(BIN)/python bench/pickup.py --idle 1000000
	$(BIN)/python bench/tracing.py
	$(BIN)/python bench/async_sleep.py
	$(BIN)/python bench/first_checkpoint.py
	$(BIN)/python bench/waits.py
	$(BIN)/python bench/flow.py
	$(BIN)/python bench/retention.py
	$(BIN)/python bench/scale.py
	$(BIN)/python bench/floor.py
	$(BIN)/python bench/report.py
	$(BIN)/python bench/testing_suite.py
	$(BIN)/python bench/inngest.py

soak: install ## every fault scenario at full size (about 10 minutes); prints the figures
	$(BIN)/python -m tests.chaos.soak $(SOAK_ARGS)

db-up: install ## migrate the configured database (or the embedded one in .orchestrator/pgdata)
	$(BIN)/orchestrator migrate

clean: ## remove the virtualenv, caches and the embedded database
	rm -rf $(VENV) .orchestrator .pytest_cache .mypy_cache .ruff_cache .cache/inngest-sdks
