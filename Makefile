# `make demo` and `make test` create .venv on first use. constraints.txt pins torch to the CPU build
# this project is tested with, so no CUDA wheels are pulled on a CPU machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/optical-memory demo

lint: $(STAMP)
	$(BIN)/ruff check optical_memory model adapters tests benchmarks examples
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

test-fast: $(STAMP)
	$(BIN)/pytest -m "not slow and not packaging"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_store.py

clean:
	rm -rf $(VENV) demo-output build dist *.egg-info
