"""Checkpoints: a dict of tensors and plain values, written atomically, read with weights_only."""

from __future__ import annotations

import json
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from alexnet_cifar10 import pretrained
from alexnet_cifar10.errors import CheckpointError, ConfigError, write_failure
from alexnet_cifar10.io import atomic_write
from alexnet_cifar10.models import AlexNet, create_model


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    try:
        atomic_write(Path(path), lambda f: torch.save(state, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as RuntimeError
        raise CheckpointError(
            f"cannot write checkpoint {path}: {write_failure(e)}; the previous checkpoint is intact"
        ) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without running any code from it; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
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


def require(module: str, install: str = "'alexnet-cifar10[export]'"):  # noqa: ANN201 - the module
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        package = module.split(".")[0]
        raise ConfigError(f"this needs the {package} package: pip install {install}") from None


def save_safetensors(state: dict[str, Any], out: Path, half: bool = False) -> None:
    """``state``'s weights as a .safetensors file (tensors only), with the model name and the run's settings as
    JSON text in its metadata; ``half`` stores the floating-point tensors in float16."""
    st = require("safetensors.torch", install="safetensors")
    tensors = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state["model"].items()}
    metadata = {"model_name": state["model_name"], "model_kwargs": json.dumps(state.get("model_kwargs", {})),
                "format": "alexnet-cifar10"}
    if state.get("config"):  # the run's settings: evaluate and predict then use its test-time augmentation
        metadata["config"] = json.dumps(state["config"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(out), lambda f: f.write(st.save(tensors, metadata=metadata)))


def load_safetensors(path: str | Path) -> dict:
    """A checkpoint-like dict from a .safetensors file: tensors only, nothing executed."""
    st = require("safetensors", install="safetensors")
    try:
        with st.safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except Exception as e:  # noqa: BLE001 - any parse failure of a hostile file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    if "model_name" not in meta:
        raise CheckpointError(f"{path}: safetensors file without alexnet-cifar10 metadata (model_name)")
    state: dict = {"model": tensors, "model_name": meta["model_name"]}
    for key, default in (("model_kwargs", "{}"), ("config", "null")):
        try:
            state[key] = json.loads(meta.get(key, default))
        except ValueError:
            raise CheckpointError(f"{path}: unreadable {key} metadata") from None
        if not isinstance(state[key], dict | None):
            raise CheckpointError(f"{path}: {key} metadata is not a JSON object")
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


def trained_state(weights: str | Path) -> dict[str, Any]:
    """The weights to use for inference, from a checkpoint or .safetensors path or the name of shipped weights
    (``pretrained.shipped()``): the EMA ones when the run kept them."""
    state = load_checkpoint(pretrained.resolve(weights))
    if state.get("ema_model") is not None:
        state = {**state, "model": state["ema_model"]}
    return state


def load_model(weights: str | Path, device: str | torch.device = "cpu") -> AlexNet:
    """The trained model of shipped weights (by name) or of a checkpoint or .safetensors path, in eval
    mode, in float32 (EMA weights when the run kept them).

    It takes float images in [0, 1], N x 3 x 32 x 32, and normalises them itself.
    """
    return model_from_state(trained_state(weights)).float().to(device)
