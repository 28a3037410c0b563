# hub — common tasks. `make help` lists them.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: help venv run test test-fast lint fmt migrate checkdb bench

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/bin/hub: pyproject.toml
	python3 -m venv $(VENV) && $(VENV)/bin/pip install -q -e '.[test]' && touch $@

venv: $(VENV)/bin/hub  ## create the virtualenv with test tools

run: venv  ## run the embedded default (SQLite, in-process scheduler, UI on localhost:5000)
	$(VENV)/bin/hub serve

test: venv  ## the whole test suite (PostgreSQL half too when HUB_TEST_POSTGRES_URL is set)
	$(VENV)/bin/pytest

test-fast: venv  ## pure unit tests only
	$(VENV)/bin/pytest tests/unit -q

lint: venv  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

fmt: venv  ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

migrate: venv  ## apply migrations to HUB_DATABASE_URL
	$(VENV)/bin/hub db upgrade

checkdb: venv  ## models and migrations agree, database at head
	$(VENV)/bin/hub db check

bench: venv  ## benchmarks (need PostgreSQL; see bench/)
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) bench/identity.py && $(PY) bench/consent.py && $(PY) bench/ingest.py && $(PY) bench/dispatch.py
