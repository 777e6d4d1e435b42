# The two quick-start commands: `make run` and `make test`. Both set everything up first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint format migrate

$(BIN)/.installed: requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed

# The Node tests: tests/js runs the real `ai` client against POST /api/chat, tests/browser
# drives Chromium (playwright-core) through the playground and the admin. Their packages,
# pinned in each package-lock.json, are installed again only when a lock file changes.
JS_INSTALLED := tests/js/node_modules/.installed tests/browser/node_modules/.installed
%/node_modules/.installed: %/package.json %/package-lock.json
	@if command -v npm >/dev/null 2>&1; then \
		npm ci --prefix $* --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: $* dependencies not installed"; fi

# Embedded defaults (SQLite, in-memory layer, demo provider) unless the environment says
# otherwise. DEBUG is on only when not set, so production environments stay as they are.
run: export DEBUG ?= true
run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py setup_demo
	$(BIN)/python -m chatproject.server -b $(HOST) -p $(PORT) chatproject.asgi:application

# mypy imports the settings, which want a SECRET_KEY unless DEBUG is on.
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	DEBUG=true $(BIN)/mypy

test: lint $(JS_INSTALLED)
	$(BIN)/python -m pytest

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
