"""Write a finished run's weights as weights that ship with the package (a maintainers' tool, not installed).

    python scripts/ship_weights.py runs/NAME --name seed --data PATH [--out FOLDER]

It writes ``weights/<name>.safetensors`` (float16) and ``weights/<name>.json``: the recipe, model, commit and
training data of the run, the validation accuracy of the float16 weights (plain and with the run's
test-time augmentation) beside that of the run's own float32 weights, the float32 predictions on the first
validation images of each class (what the parity test compares against), and the file's sha256. The weights'
metadata carries the run's settings without local paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from alexnet_cifar10 import pretrained
from alexnet_cifar10.checkpoint import load_checkpoint, model_from_state, save_safetensors, trained_state
from alexnet_cifar10.config import config_of_record, read_record
from alexnet_cifar10.data import Cifar10, load_cifar10
from alexnet_cifar10.errors import AlexNetCifarError, ConfigError
from alexnet_cifar10.evaluation import evaluate
from alexnet_cifar10.io import atomic_write_text, check_replaceable
from alexnet_cifar10.models import current_name

PACKAGE_WEIGHTS = Path(__file__).resolve().parents[1] / "src" / "alexnet_cifar10" / "weights"  # of this clone
MAX_BYTES = 16 * 1024 * 1024
CHECK_PER_CLASS = 51  # validation images of each class whose float32 predictions the JSON keeps (510 in all)


def accuracies(model: Any, data: Cifar10, config: dict[str, Any]) -> dict[str, float]:
    val = data.split("val")
    plain = evaluate(model, val.images, val.labels)
    tta = evaluate(model, val.images, val.labels, tta=config.get("tta", False), tta_shift=config.get("tta_shift", 0))
    return {"plain": plain.accuracy, "tta": tta.accuracy}


def check_indices(labels: torch.Tensor, per_class: int = CHECK_PER_CLASS) -> list[int]:
    """The first ``per_class`` images of each class, in the split's order: a check that sees every class."""
    return sorted(i for c in labels.unique().tolist() for i in (labels == c).nonzero().flatten()[:per_class].tolist())


def shipped_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run's settings as they ship: the data named by its file name, no local run folder, current names."""
    return {**config, "data": Path(str(config.get("data", ""))).name, "out": "", "name": "",
            "model": current_name(str(config.get("model", "")))}


def read_run(run_dir: Path) -> dict[str, Any]:
    """The config.json of a finished run folder (its settings checked, and what it records of the run), or a
    ConfigError naming what is missing."""
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a folder; give a finished run folder (best.pt, config.json)")
    missing = [f for f in ("best.pt", "config.json") if not (run_dir / f).is_file()]
    if missing:
        raise ConfigError(f"{run_dir}: not a finished run (no {' or '.join(missing)})")
    record = read_record(run_dir / "config.json")
    return {**config_of_record(record, run_dir / "config.json").to_dict(), "git_commit": record.get("git_commit")}


def check_out(out_dir: Path, name: str) -> None:
    """A FIFO, a device or a folder where the weights or their JSON go is refused, and stays as it is."""
    check_replaceable(out_dir, (f"{name}.safetensors", f"{name}.json"), ConfigError)


def ship(run_dir: Path, name: str, data: Cifar10, out_dir: Path = PACKAGE_WEIGHTS) -> dict[str, Any]:
    """Write ``run_dir``'s best.pt as the shipped weights ``name`` into ``out_dir`` (the package's weights/).
    Both files are written beside the old ones and replace them only once everything is checked, so a failed
    ship leaves the shipped weights as they were."""
    check_out(out_dir, name)
    run = read_run(run_dir)
    if data.val is None or len(data.val) == 0:
        raise ConfigError("the data has no validation split to check the weights on (the run's --val-size is 0)")
    state = trained_state(run_dir / "best.pt")
    full = model_from_state(state)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir, prefix=".ship-") as tmp:
            staged = Path(tmp) / f"{name}.safetensors"
            save_safetensors({**state, "model": full.state_dict(), "model_name": current_name(state["model_name"]),
                              "config": shipped_config(state.get("config") or run)}, staged, half=True)
            if staged.stat().st_size > MAX_BYTES:
                raise ConfigError(f"{name}.safetensors would be {staged.stat().st_size} bytes, over the {MAX_BYTES} "
                                  "a shipped file may take")
            half = model_from_state(load_checkpoint(staged))
            val = data.split("val")
            check = check_indices(val.labels)
            info = {
                "name": name, "recipe": run.get("recipe"), "model": current_name(state["model_name"]),
                "commit": run["git_commit"],
                "training_data": {"source": Path(str(data.source)).name, "train_images": len(data.train),
                                  "val_images": len(val), "split_seed": run.get("split_seed")},
                "val_accuracy": accuracies(half, data, run),
                "val_accuracy_float32": accuracies(full, data, run),
                "check_images": check,
                "check_predictions_float32": "".join(map(str, evaluate(full, val.images[check], val.labels[check])
                                                         .predictions.tolist())),
                "dtype": "float16", "bytes": staged.stat().st_size, "sha256": pretrained.sha256(staged),
            }
            atomic_write_text(Path(tmp) / f"{name}.json", json.dumps(info, indent=2) + "\n")
            os.replace(staged, out_dir / staged.name)  # the JSON last: a reader checks the file against it
            os.replace(Path(tmp) / f"{name}.json", out_dir / f"{name}.json")
    except OSError as e:
        raise ConfigError(f"cannot write shipped weights into {out_dir}: {e.strerror or e}") from None
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ship_weights.py", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (best.pt, config.json)")
    parser.add_argument("--name", required=True, help="the name users load it by, e.g. seed or best")
    parser.add_argument("--data", required=True, help="the data the run trained on (for its validation split)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder to write into (default: this clone's src/alexnet_cifar10/weights)")
    args = parser.parse_args(argv)
    try:
        if not args.name.isidentifier():
            raise ConfigError(f"--name {args.name!r}: a shipped name is a Python identifier, e.g. best")
        check_out(args.out or PACKAGE_WEIGHTS, args.name)  # before the data loads
        run = read_run(args.run)
        data = load_cifar10(args.data, val_size=run["val_size"], seed=run["split_seed"])
        info = ship(args.run, args.name, data, args.out or PACKAGE_WEIGHTS)
    except AlexNetCifarError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in info.items() if not k.startswith("check_")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
