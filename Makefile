# The two commands of the README: `make train` (set up, get CIFAR-10, train, evaluate) and `make test`.
# TORCH_SPEC picks the torch build pip installs: plain `torch` for users (CUDA where available);
# CI passes the CPU pin `torch==2.13.0`.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch
DATA       ?= data
ARGS       ?=
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed

.PHONY: train test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,export,notebook]"
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/alexnet-cifar10 train --data "$(DATA)" $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks hubconf.py
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks notebooks hubconf.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
