# Every target works on a fresh machine: it creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV := $(BIN)/uv
STAMP_DEV := $(VENV)/.installed-dev
STAMP_BENCH := $(VENV)/.installed-bench

.PHONY: demo test test-slow lint bench format clean install

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

# Tests too slow for the suite's budget: the Ray Train fits (about a minute each).
test-slow: $(STAMP_DEV)
	LOOPLINE_SLOW_TESTS=1 $(BIN)/python -m pytest -q tests/train/test_distributed_training.py

bench: $(STAMP_BENCH)
	$(BIN)/python -m bench

format: $(STAMP_DEV)
	$(BIN)/ruff format src tests bench examples
	$(BIN)/ruff check --fix src tests bench examples

clean:
	rm -rf $(VENV) .loopline .pytest_cache .mypy_cache .ruff_cache
