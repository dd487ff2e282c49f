# Two entry points for a fresh clone: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DATA   ?= ./perdure-data
HOST   ?= 127.0.0.1
PORT   ?= 8001

.PHONY: run test lint install install-test install-system bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	scripts/build-ui.sh

install-test: $(BIN)/python install-system
	$(BIN)/python -m pip install --quiet -e '.[test]'
	scripts/build-ui.sh

# podman + runc, busybox-static and CRIU >= 4.1 (in .cache/criu) for the container and checkpoint tests.
install-system:
	scripts/install-system-deps.sh

run: install
	$(BIN)/perdure up --host $(HOST) --port $(PORT) --data-dir $(DATA) --example examples/squares.json

lint: install-test
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/jobs.py

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache
