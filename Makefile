# `make demo` runs the main job, `make test` runs the test suite; both create/refresh .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: on this project's machines pip finds it on local disk.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,gguf,austen,ray]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/muonft reproduce --preset quick

test: venv
	$(BIN)/python -m pytest

lint: venv
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

bench: venv
	$(BIN)/python benchmarks/optimizer_step.py

clean:
	rm -rf $(VENV) build dist src/*.egg-info
