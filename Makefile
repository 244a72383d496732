# Every target works on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP_DEV := $(VENV)/.installed-dev
STAMP_BENCH := $(VENV)/.installed-bench

.PHONY: demo test lint bench format clean install

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv

$(STAMP_DEV): pyproject.toml | $(UV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $@

$(STAMP_BENCH): pyproject.toml $(STAMP_DEV)
	$(UV) pip install --quiet --python $(BIN)/python -e '.[dev,bench]'
	touch $@

install: $(STAMP_DEV)

demo: $(STAMP_DEV)
	$(BIN)/loopline run examples/flights/pipeline.py
	$(BIN)/python examples/flights/serve_demo.py

lint: $(STAMP_DEV)
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/ruff check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

bench: $(STAMP_BENCH)
	$(BIN)/python -m bench

format: $(STAMP_DEV)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) .loopline .pytest_cache .mypy_cache .ruff_cache
