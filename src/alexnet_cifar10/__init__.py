"""AlexNet on CIFAR-10: the library API that the CLI and the notebook share.

>>> from alexnet_cifar10 import load_cifar10, make_config, train, load_model, predict
>>> data = load_cifar10("data", auto_download=True)  # doctest: +SKIP
>>> result = train(make_config("seed", epochs=1))     # doctest: +SKIP

The names below load their module (and torch) on first use, so that ``alexnet-cifar10 --help`` and
``import alexnet_cifar10.config`` stay light (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import Any

from alexnet_cifar10.version import __version__ as __version__

_EXPORTS = {
    "load_checkpoint": "checkpoint", "load_model": "checkpoint", "list_weights": "pretrained",
    "RECIPES": "config", "Config": "config", "make_config": "config",
    "CLASSES": "data", "Cifar10": "data", "Split": "data", "load_cifar10": "data",
    "AlexNetCifarError": "errors",
    "EvalResult": "evaluation", "evaluate": "evaluation", "predict": "evaluation",
    "MODELS": "models", "AlexNet": "models", "create_model": "models",
    "TrainResult": "training", "train": "training", "resume": "training",
}
__all__ = sorted(_EXPORTS)

def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'alexnet_cifar10' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"alexnet_cifar10.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
