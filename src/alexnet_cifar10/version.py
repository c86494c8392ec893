"""The package version, for the modules that record it (run folders, checkpoints, results, --version)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("alexnet-cifar10")  # pyproject.toml's, the one place it is written
except PackageNotFoundError:  # a source checkout on sys.path without an install (e.g. torch.hub)
    __version__ = "0+unknown"
