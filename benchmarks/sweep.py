"""Run a list of 20-epoch training configs on one device and write their curves to JSON.

    python benchmarks/sweep.py SPEC.json --data PATH --out results.json

SPEC.json is a list of {"name", "arch": AlexNet kwargs (optional), "config": Config overrides}.
Runs go in order; ``--budget`` seconds stops before a run that would not fit. Ctrl-C or SIGTERM (``timeout``'s)
records the run under way as stopped and ends the sweep (exit 130 or 143). With ``--keep``, an entry whose run
stopped early (killed, out of time) is resumed from its last.pt instead of started again.

Proxies for a CPU: ``--train-size N`` trains on a class-balanced N-image part of the training split, and
``--epoch-val-size M`` validates each epoch on an M-image part of the validation split. The final numbers
(plain, flips, flips + 1-pixel moves) are always on the whole validation split.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from alexnet_cifar10 import Cifar10, Config, evaluate, load_cifar10, make_config, resume, train
from alexnet_cifar10.config import load_config
from alexnet_cifar10.data.splits import Split, stratified_split
from alexnet_cifar10.errors import AlexNetCifarError, ConfigError
from alexnet_cifar10.models import MODELS, ModelSpec
from alexnet_cifar10.runs import RESUME_OVERRIDES
from alexnet_cifar10.training import Interrupted

SIZES = ".sweep-sizes.json"  # a kept run's proxy data sizes, beside its config.json (hidden: not a run file)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("spec")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget", type=float, default=1e9, help="seconds for the whole sweep")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--val-size", type=int, default=5000)
    parser.add_argument("--shard", default="0/1", help="i/n: run every n-th entry from the i-th")
    parser.add_argument("--train-size", type=int, default=0,
                        help="proxy: train on a class-balanced part of the training split this big (0: all)")
    parser.add_argument("--epoch-val-size", type=int, default=0,
                        help="proxy: validate each epoch on a part of the validation split this big (0: all); "
                             "the final evaluations always use all of it")
    parser.add_argument("--keep", default=None,
                        help="keep run folders under KEEP/<name>; a run that stops early keeps its last.pt, and "
                             "a later sweep with the same KEEP finishes it")
    args = parser.parse_args()
    i, n = map(int, args.shard.split("/"))
    runs = json.loads(Path(args.spec).read_text())[i::n]
    data = load_cifar10(args.data, val_size=args.val_size, seed=0)
    data = replace(data, train=part(data.train, args.train_size))
    start, results, last = time.perf_counter(), [], 0.0
    for run in runs:
        if time.perf_counter() - start + last * 1.1 > args.budget:
            print(f"skip {run['name']}: out of budget", flush=True)
            continue
        config = entry_config(run, args.device, args.precision)
        t0 = time.perf_counter()
        row = run_one(run, config, data, args.keep, args.epoch_val_size)
        last = row["seconds"] = time.perf_counter() - t0
        results.append(row)
        Path(args.out).write_text(json.dumps(results, indent=1))
        if "exit_code" in row:
            print(f"sweep stopped: {row['error']}", file=sys.stderr)
            sys.exit(row["exit_code"])


def entry_config(run: dict, device: str, precision: str) -> Config:
    """One spec entry's Config; an entry with an ad-hoc architecture registers it as its model first."""
    overrides = {"device": device, "precision": precision, "progress": False, **run["config"]}
    if "arch" in run:  # otherwise the config's (or its recipe's) model
        overrides["model"] = f"sweep_{run['name']}"
        MODELS[overrides["model"]] = ModelSpec(overrides["model"], "sweep candidate", run["arch"])
    return make_config(overrides.pop("recipe", "seed"), **overrides)


def part(split: Split, size: int) -> Split:
    """A class-balanced ``size``-image part of ``split``, the same for every run (the whole split for 0)."""
    if not 0 < size < len(split):
        return split
    _, keep = stratified_split(split.labels, size, seed=0)
    return Split(split.images[keep], split.labels[keep])


def stopped_run(folder: Path, config: Config, sizes: dict[str, int]) -> Path | None:
    """A kept run of this entry that stopped before its end (killed, or out of time): finished runs lose
    their weights, stopped ones keep last.pt. Another run in the folder (other settings, or a proxy of
    other data sizes) is an error, never resumed."""
    if not (folder / "last.pt").is_file():
        return None
    kept = load_config(folder / "config.json").to_dict()
    differ = [k for k, v in config.to_dict().items() if k not in (*RESUME_OVERRIDES, "out") and kept.get(k) != v]
    if (folder / SIZES).is_file():  # config.json holds the recipe; the proxy's data sizes are kept beside it
        kept_sizes = json.loads((folder / SIZES).read_text())
        differ += [k for k, v in sizes.items() if kept_sizes.get(k) != v]
    if differ:
        raise ConfigError(f"{folder} holds a stopped run with other settings ({', '.join(differ)}); move it away")
    return folder


def run_one(run: dict, config: Config, data: Cifar10, keep: str | None, epoch_val_size: int = 0) -> dict:
    """Train one entry (or finish its stopped run under ``keep``); its row of results, or of the error that
    stopped it (a diverging ablation)."""
    val = data.split("val")
    epoch_val = part(val, epoch_val_size)
    sizes = {"train_size": len(data.train), "epoch_val_size": len(epoch_val)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep or tmp) / run["name"]
        config.out = str(folder)
        try:
            stopped = stopped_run(folder, config, sizes)
            if stopped:
                print(f"{run['name']:<28} resumes its stopped run in {folder}", flush=True)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / SIZES).write_text(json.dumps(sizes))
            if stopped:
                result = resume(folder, dataset=replace(data, val=epoch_val),
                                **{k: getattr(config, k) for k in RESUME_OVERRIDES})
            else:
                result = train(config, data=replace(data, val=epoch_val))
        except AlexNetCifarError as e:
            print(f"{run['name']:<28} Error: {e}", flush=True)
            row = {"name": run["name"], "config": run["config"], "error": str(e)}
            if isinstance(e, Interrupted):  # Ctrl-C or SIGTERM: recorded, and the sweep stops after this run
                row["exit_code"] = e.exit_code
            return row
        for weights in folder.glob("*.pt"):
            weights.unlink()

    @functools.cache  # the configured evaluation is often the multi-crop one
    def accuracy(tta: bool, shift: int = 0) -> float:
        return evaluate(result.model, val.images, val.labels, device=result.model.mean.device,
                        precision=config.precision, tta=tta, tta_shift=shift).accuracy

    # the final model on the whole split: as configured, test-time flips the other way round, and multi-crop
    final, other, shifted = accuracy(config.tta, config.tta_shift), accuracy(not config.tta), accuracy(True, 1)
    row = {"name": run["name"], "arch": run.get("arch"), "config": run["config"],
           "val_acc": [h["val_acc"] for h in result.history],
           "train_acc": [h["train_acc"] for h in result.history],
           **sizes,
           "final_val_acc": final,
           "final_val_acc_with_tta" if not config.tta else "final_val_acc_without_tta": other,
           "final_val_acc_with_tta_shift1": shifted}
    print(f"{run['name']:<28} val@20 {100 * row['val_acc'][-1]:.2f}%  best {100 * max(row['val_acc']):.2f}%"
          f"  final {100 * (row['final_val_acc'] or 0):.2f}% (tta {config.tta}; other way {100 * other:.2f}%;"
          f" flips + 1-pixel shifts {100 * shifted:.2f}%)", flush=True)
    return row


if __name__ == "__main__":
    main()
