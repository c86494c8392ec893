# The two commands of the README: `make train` (set up, get CIFAR-10, train, evaluate) and `make test`.
# TORCH_SPEC picks the torch build pip installs: plain `torch` for users (CUDA where available);
# CI passes the CPU pin `torch==2.13.0`.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch
DATA       ?= data
ARGS       ?=
BIN        := $(VENV)/bin
INSTALLED  := $(VENV)/.installed
EXTRAS     := $(VENV)/.installed-extras

.PHONY: train test lint clean

# training needs the package and its dependencies (safetensors for the shipped weights and model.safetensors)
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e .
	touch $(INSTALLED)

# the tests also need the test tools, the exporters and the notebook runner
$(EXTRAS): $(INSTALLED)
	$(BIN)/pip install -q -e ".[dev,export,notebook]"
	touch $(EXTRAS)

train: $(INSTALLED)
	$(BIN)/alexnet-cifar10 train --data "$(DATA)" $(ARGS)

test: $(EXTRAS)
	$(BIN)/ruff check src tests benchmarks notebooks hubconf.py
	$(BIN)/python -m pytest -q -n auto --dist loadfile  # one worker per core; a test file's tests share one

lint: $(EXTRAS)
	$(BIN)/ruff check src tests benchmarks notebooks hubconf.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
