"""Checkpoints: a dict of tensors and plain values, written atomically, read with weights_only."""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet_cifar10.errors import CheckpointError
from alexnet_cifar10.io import atomic_write
from alexnet_cifar10.models import AlexNet, create_model


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        atomic_write(Path(path), lambda f: torch.save(state, f))
    except OSError as e:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {e.strerror or e}; the previous checkpoint is intact"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running any code from it; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from alexnet_cifar10.export import load_safetensors

        return load_safetensors(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        if "global" not in text.lower():  # not a refused class: a damaged file
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint") from None
        found = re.search(r"(?:Unsupported global|GLOBAL)[^.\n]*", text)
        raise CheckpointError(
            f"{path}: refused: the checkpoint holds more than tensors and plain values "
            f"({found.group(0) if found else 'code'}); it was not loaded"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({str(e)[:160]})") from None
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise CheckpointError(f"{path}: not an alexnet-cifar10 checkpoint (no model weights)")
    return state


def rng_state() -> dict[str, Any]:
    """Every RNG state, as tensors and plain values so that weights_only loading accepts it."""
    py = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def model_from_state(state: dict[str, Any]) -> AlexNet:
    try:
        model = create_model(str(state["model_name"]), **dict(state.get("model_kwargs") or {}))
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint weights do not fit model {state['model_name']}: {e}") from None
    return model.eval()


def trained_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint with the weights to use for inference (the EMA ones when the run kept them)."""
    state = load_checkpoint(path)
    if state.get("ema_model") is not None:
        state = {**state, "model": state["ema_model"]}
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> AlexNet:
    """The trained model of a checkpoint (EMA weights when the run kept them), in eval mode.

    It takes float images in [0, 1], N x 3 x 32 x 32, and normalises them itself.
    """
    return model_from_state(trained_state(path)).to(device)
