# The two commands of the README: `make demo` and `make test`. Everything else is a helper.
.PHONY: demo test setup lint typecheck unit bench clean

VENV := .venv
PY := $(VENV)/bin/python

setup:
	./scripts/setup

## Runs the whole job on the bundled simulated hospital (SQLite in a temporary folder).
demo: setup
	$(VENV)/bin/lanterne demo

## Lint, type checks, then every test (unit, golden, conformance, lab).
test: setup lint typecheck
	$(VENV)/bin/pytest

lint:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check agent collectors fingerprints store bench tests

typecheck:
	$(VENV)/bin/mypy

unit: setup
	$(VENV)/bin/pytest -m "not lab"

bench: setup
	$(PY) bench/bench_decode.py
	$(PY) bench/bench_matcher.py
	$(PY) bench/bench_scan.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
