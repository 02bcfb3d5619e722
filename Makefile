# pymesh — `make demo` and `make test` each create .venv on a fresh machine (Python 3.11 + pip).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: all test lint typecheck pytest demo bench clean venv

all: test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	bash scripts/install-deps.sh test
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

demo: $(STAMP)
	bash scripts/install-deps.sh demo
	$(BIN)/pymesh demo

bench: $(STAMP)
	bash scripts/install-deps.sh bench
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.cp_scale --subscribers 1000 --services 100

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
