"""Temperature scaling kept beside the weights: ``evaluate --calibrate`` fits one number on the validation split
and writes it next to the checkpoint (``best.pt.calibration.json``; for shipped weights, in the cache folder);
loading the weights for inference reads it back, so that predicted probabilities are calibrated."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from alexnet_cifar10 import pretrained
from alexnet_cifar10.data.cache import default_cache_dir
from alexnet_cifar10.errors import CheckpointError, printable
from alexnet_cifar10.evaluation import TEMPERATURE_BOUNDS as BOUNDS  # what a fit may give and a file may hold
from alexnet_cifar10.io import atomic_write_text, read_json

SUFFIX = ".calibration.json"
MAX_BYTES = 64 * 1024  # a calibration file is a few hundred bytes


def calibration_path(weights: str | Path) -> Path:
    """Where the temperature of ``weights`` is kept: beside a checkpoint file, or in the cache folder for shipped
    weights (keyed by their sha256, so that new weights of the same name do not inherit it)."""
    if pretrained.is_shipped_name(weights):
        sha = pretrained.shipped_info(str(weights))["sha256"]
        return default_cache_dir() / "calibration" / f"{weights}-{sha[:16]}{SUFFIX}"
    path = Path(weights)
    return path.with_name(path.name + SUFFIX)


def weights_sha256(weights: str | Path) -> str:
    """The sha256 of the weights' file; a shipped name's is its JSON's, which loading has checked the file against."""
    if pretrained.is_shipped_name(weights):
        return pretrained.shipped_info(str(weights))["sha256"]
    return pretrained.sha256(pretrained.resolve(weights))


def save_temperature(weights: str | Path, temperature: float, record: dict[str, Any]) -> Path:
    path = calibration_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"temperature": temperature, "weights_sha256": weights_sha256(weights), **record}
    atomic_write_text(path, json.dumps(info, indent=2) + "\n")
    return path


def load_temperature(weights: str | Path) -> float:
    """The temperature kept for ``weights``, 1.0 when none is. A file made for other weights (the checkpoint has
    changed since) is ignored with a warning; one that is not a calibration file is an error."""
    path = calibration_path(weights)
    if not path.exists():
        return 1.0
    info = read_json(path, MAX_BYTES, CheckpointError, "a calibration file may be")
    temperature = info.get("temperature") if isinstance(info, dict) else None
    if isinstance(temperature, int) and not isinstance(temperature, bool):
        temperature = float(temperature) if abs(temperature) < 10**6 else math.inf  # 10**400 overflows float()
    if (not isinstance(temperature, float) or not math.isfinite(temperature)
            or not BOUNDS[0] <= temperature <= BOUNDS[1] or not isinstance(info.get("weights_sha256"), str)):
        raise CheckpointError(f"{path}: not a calibration file (a temperature in [{BOUNDS[0]}, {BOUNDS[1]}] and "
                              "the weights' sha256); remove it (evaluate --calibrate writes a new one)")
    if info["weights_sha256"] != weights_sha256(weights):
        print(printable(f"warning: ignoring {path}: made for other weights (run evaluate --calibrate again)"),
              file=sys.stderr)
        return 1.0
    return float(temperature)
