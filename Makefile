# make run   - install what the service needs, migrate and serve on http://127.0.0.1:8000
#              (embedded SQLite + in-process Redis unless DATABASE_URL/REDIS_URL are set)
# make test  - install the development tools too, lint, type-check and run every test
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install install-dev run test lint format clean

# The service's own dependencies only: what `make run` and production need.
$(VENV)/.runtime: requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt
	touch $@

# The tests, linters, type checker and benchmark tools on top.
$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $@

install: $(VENV)/.runtime

install-dev: $(VENV)/.dev

run: install
	$(VENV)/bin/flask --app wsgi db upgrade
	$(VENV)/bin/flask --app wsgi demo-users
	$(VENV)/bin/flask --app wsgi serve --host $(HOST) --port $(PORT)

lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: install-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: lint
	$(PY) -m pytest

clean:
	rm -rf $(VENV) instance .pytest_cache .mypy_cache .ruff_cache
