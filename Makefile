# Stackwatch: `make run` starts a server on http://127.0.0.1:8040; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
VENDOR := src/stackwatch/server/ui/static/vendor

.PHONY: install assets system-deps run test lint bench clean

install: $(STAMP) assets

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# UI libraries come from the npm registry at build time; nothing vendored is committed. The
# npm install has its own stamp: the browser tests also need the dev dependencies
# (@sentry/browser) from node_modules, not only the copied files.
NPM_STAMP := node_modules/.installed-stamp

assets: $(VENDOR)/htmx.min.js

$(NPM_STAMP): package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	touch $(NPM_STAMP)

$(VENDOR)/htmx.min.js: $(NPM_STAMP)
	mkdir -p $(VENDOR)
	cp node_modules/htmx.org/dist/htmx.min.js $(VENDOR)/
	cp node_modules/uplot/dist/uPlot.iife.min.js node_modules/uplot/dist/uPlot.min.css $(VENDOR)/

# Services and tools the test suite drives for real (PostgreSQL, Chromium, rsyslog).
system-deps:
	bash scripts/system-deps.sh

run: install
	$(BIN)/stackwatch server --data-dir ./data

test: install system-deps
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check src tests bench

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) node_modules $(VENDOR) build dist
