# One command runs lint, types and tests: `make check`.
PY ?= python3

.PHONY: install check lint types test fmt
install:
	$(PY) -m pip install -e '.[test]'
lint:
	$(PY) -m ruff check hlcopy tests
	$(PY) -m ruff format --check hlcopy tests
types:
	$(PY) -m mypy
test:
	$(PY) -m pytest
check: lint types test
fmt:
	$(PY) -m ruff format hlcopy tests
	$(PY) -m ruff check --fix hlcopy tests
