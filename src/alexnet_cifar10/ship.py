"""Write a finished run's weights as weights that ship with the package.

    python -m alexnet_cifar10.ship runs/NAME --name seed --data PATH

It writes ``weights/<name>.safetensors`` (float16) and ``weights/<name>.json``: the recipe, model, commit and
training data of the run, the validation accuracy of the float16 weights (plain and with the run's
test-time augmentation) beside that of the run's own float32 weights, the float32 predictions on the first
validation images (what the parity test compares against), and the file's sha256.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from alexnet_cifar10 import pretrained
from alexnet_cifar10.checkpoint import load_checkpoint, model_from_state, save_safetensors, trained_state
from alexnet_cifar10.data import Cifar10, load_cifar10
from alexnet_cifar10.evaluation import evaluate
from alexnet_cifar10.io import atomic_write_text

MAX_BYTES = 16 * 1024 * 1024


def accuracies(model: Any, data: Cifar10, config: dict[str, Any]) -> dict[str, float]:
    val = data.split("val")
    plain = evaluate(model, val.images, val.labels)
    tta = evaluate(model, val.images, val.labels, tta=config.get("tta", False), tta_shift=config.get("tta_shift", 0))
    return {"plain": plain.accuracy, "tta": tta.accuracy}


def ship(run_dir: Path, name: str, data: Cifar10, out_dir: Path | None = None) -> dict[str, Any]:
    """Write ``run_dir``'s best.pt as the shipped weights ``name`` into ``out_dir`` (the package's weights/)."""
    out_dir = out_dir or pretrained.WEIGHTS_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    state = trained_state(run_dir / "best.pt")
    run = json.loads((run_dir / "config.json").read_text())
    full = model_from_state(state)
    target = out_dir / f"{name}.safetensors"
    save_safetensors({**state, "model": full.state_dict()}, target, half=True)
    if target.stat().st_size > MAX_BYTES:
        raise ValueError(f"{target} is {target.stat().st_size} bytes, over the {MAX_BYTES} a shipped file may take")
    half = model_from_state(load_checkpoint(target))
    val = data.split("val")
    check = val.images[: pretrained.CHECK_IMAGES], val.labels[: pretrained.CHECK_IMAGES]
    info = {
        "name": name, "recipe": run.get("recipe"), "model": state["model_name"], "commit": run.get("git_commit"),
        "training_data": {"source": Path(str(data.source)).name, "train_images": len(data.train),
                          "val_images": len(val), "split_seed": run.get("split_seed")},
        "val_accuracy": accuracies(half, data, run),
        "val_accuracy_float32": accuracies(full, data, run),
        "check_predictions_float32": "".join(map(str, evaluate(full, *check).predictions.tolist())),
        "dtype": "float16", "bytes": target.stat().st_size, "sha256": pretrained.sha256(target),
    }
    atomic_write_text(out_dir / f"{name}.json", json.dumps(info, indent=2) + "\n")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m alexnet_cifar10.ship", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run folder (best.pt, config.json)")
    parser.add_argument("--name", required=True, help="the name users load it by, e.g. seed or best")
    parser.add_argument("--data", required=True, help="the data the run trained on (for its validation split)")
    args = parser.parse_args()
    run = json.loads((args.run / "config.json").read_text())
    data = load_cifar10(args.data, val_size=run.get("val_size", 5000), seed=run.get("split_seed", 0))
    print(json.dumps({k: v for k, v in ship(args.run, args.name, data).items() if k != "check_predictions_float32"},
                     indent=2))


if __name__ == "__main__":
    main()
