# The README's commands: `make install` (venv + package, no training), `make train` (set up, get CIFAR-10,
# train, evaluate) and `make test`.
# TORCH_SPEC is what pip installs torch from, passed to `pip install` as words: plain `torch` by default, which on
# Linux is the CUDA build. The small CPU-only build comes from PyTorch's CPU index:
#   make install TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
# CI passes the pin `torch==2.13.0`. A spec with < or > needs its own quotes: TORCH_SPEC='"torch>=2.2"'.
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch
DATA       ?= data
ARGS       ?=
BIN        := $(VENV)/bin
INSTALLED  := $(VENV)/.installed
EXTRAS     := $(VENV)/.installed-extras

.PHONY: install train test lint clean

# training needs the package and its dependencies (safetensors for the shipped weights and model.safetensors)
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_SPEC)
	$(BIN)/pip install -q -e ".[explain]"
	touch $(INSTALLED)

# the tests also need the test tools, the exporters, the notebook runner and TensorBoard's reader
$(EXTRAS): $(INSTALLED)
	$(BIN)/pip install -q -e ".[dev,export,notebook,tensorboard,serve]"
	touch $(EXTRAS)

# the package and its dependencies in $(VENV), nothing trained
install: $(INSTALLED)

train: $(INSTALLED)
	$(BIN)/alexnet-cifar10 train --data "$(DATA)" $(ARGS)

test: $(EXTRAS)
	$(BIN)/ruff check src tests benchmarks scripts notebooks hubconf.py
	$(BIN)/python -m pytest -q -n auto --dist loadfile  # one worker per core; a test file's tests share one

lint: $(EXTRAS)
	$(BIN)/ruff check src tests benchmarks scripts notebooks hubconf.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
