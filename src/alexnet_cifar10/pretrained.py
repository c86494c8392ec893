"""Trained weights that ship inside the package: ``load_model("seed")``, ``--weights seed``, ``weights="seed"``.

Each name has ``weights/<name>.safetensors`` (float16, tensors only) and ``weights/<name>.json`` beside it: the
recipe, model, commit and data it was trained with, its validation accuracy, and the file's sha256, which is
checked on every load.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from alexnet_cifar10.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).parent / "weights"


def shipped() -> list[str]:
    """The names of the weights this install ships."""
    return sorted(p.stem for p in WEIGHTS_DIR.glob("*.json") if p.with_suffix(".safetensors").is_file())


def shipped_info(name: str) -> dict[str, Any]:
    """What ``weights/<name>.json`` records about the shipped weights ``name``."""
    if name not in shipped():
        raise CheckpointError(f"no trained weights named {name!r} ship with this install; available: "
                              f"{', '.join(shipped()) or 'none'} (or give a checkpoint path)")
    path = WEIGHTS_DIR / f"{name}.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror if isinstance(e, OSError) else 'not JSON'}); "
                              "reinstall the package") from None
    if not isinstance(info, dict) or not isinstance(info.get("sha256"), str):
        raise CheckpointError(f"{path}: no sha256 of the weights; reinstall the package")
    return info


def list_weights() -> list[dict[str, Any]]:
    """The shipped weights, as torchvision lists its weights with their metadata: name, network, recipe, classes,
    validation accuracy (plain and with the weights' test-time augmentation) and, where measured, the accuracy on
    the held-out test split, with what it was measured on."""
    from alexnet_cifar10.data.formats import CLASSES

    rows = []
    for name in shipped():
        info = shipped_info(name)
        rows.append({"name": name, "model": info.get("model"), "recipe": info.get("recipe"), "classes": list(CLASSES),
                     "val_accuracy": info.get("val_accuracy"), "test_accuracy": info.get("test_accuracy"),
                     "test_data": info.get("test_data"), "bytes": info.get("bytes"), "sha256": info["sha256"]})
    return rows


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shipped_file(name: str) -> Path:
    """The safetensors file of the shipped weights ``name``, after checking its sha256."""
    expected = shipped_info(name)["sha256"]
    path = WEIGHTS_DIR / f"{name}.safetensors"
    try:
        actual = sha256(path)
    except OSError as e:
        raise CheckpointError(f"{path}: unreadable ({e.strerror or e}); reinstall the package") from None
    if actual != expected:
        raise CheckpointError(f"{path}: sha256 does not match {name}.json (damaged or replaced file); "
                              "reinstall the package")
    return path


def is_shipped_name(weights: str | Path) -> bool:
    """Whether ``weights`` names shipped weights rather than a file: a bare name such as "seed" or "best" that
    ships, or that is no file here either (a file named like shipped weights is given as ./seed)."""
    return isinstance(weights, str) and weights.isidentifier() and (weights in shipped() or not Path(weights).exists())


def resolve(weights: str | Path) -> Path:
    """A checkpoint path for ``weights``: the file of a shipped name, else the path itself."""
    return shipped_file(str(weights)) if is_shipped_name(weights) else Path(weights)

