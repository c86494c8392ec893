"""The command line's parser: every subcommand and its flags, those that Config holds generated from its fields.

Nothing here imports torch, so ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from typing import IO, Any, NoReturn

from alexnet_cifar10.config import DEFAULT_DATA, DEVICES, EXPORT_FORMATS, RECIPES, Config, flag
from alexnet_cifar10.version import __version__

PROG = "alexnet-cifar10"


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage block) and exits 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def _print_message(self, message: str, file: IO[str] | None = None) -> None:
        """--help and --version: written and flushed now, so that a stdout that takes nothing (a full disk) is
        one line and exit 1 (argparse's own ignores the failure and exits 0)."""
        file = file or sys.stderr
        if not message:
            return
        try:
            file.write(message)
            file.flush()
        except OSError as e:
            os.dup2(os.open(os.devnull, os.O_WRONLY), file.fileno())  # nothing left to flush at exit
            self.exit(1, f"{self.prog}: error: cannot write to standard output: {e.strerror or e}\n")


# The Config fields that other commands take as flags too, with the same names, help and defaults.
DATA_FIELDS = ("data", "val_size", "split_seed")
BENCHMARK_FIELDS = ("model", "precision", "batch_size", "device", "threads", "compile")


def add_config_flags(p: argparse.ArgumentParser, names: tuple[str, ...] | None = None) -> None:
    """One flag per Config field (those in ``names``, else all of them). For ``train`` (all fields) a flag left
    unset stays out of the namespace, so that the recipe's value applies; a chosen few default to the field's
    own default."""
    for f in fields(Config):
        if names is not None and f.name not in names:
            continue
        kwargs: dict[str, Any] = {"help": f.metadata["help"], "dest": f.name,
                                  "default": argparse.SUPPRESS if names is None else f.default}
        if f.type in ("bool", bool):
            kwargs["action"] = argparse.BooleanOptionalAction  # its help shows the default itself
        else:
            kwargs["type"] = {"int": int, "float": float}.get(str(f.type), str)
            if f.metadata.get("choices"):
                kwargs["choices"] = f.metadata["choices"]
            elif f.name == "recipe":
                kwargs["choices"] = tuple(RECIPES)
            if names is not None:
                kwargs["help"] += " (default: %(default)s)"
        p.add_argument(f"--{flag(f.name)}", **kwargs)


def add_cache_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", default=None, help="decoded-data cache folder (default ~/.cache/alexnet-cifar10)")


def add_data_flags(p: argparse.ArgumentParser) -> None:
    """The flags of every command that reads the data set: Config's data fields, the cache and the URL."""
    add_config_flags(p, DATA_FIELDS)
    add_cache_flag(p)
    p.add_argument("--url", default=None, help="archive URL (default $ALEXNET_CIFAR10_URL or the official one)")


def build_parser() -> Parser:
    parser = Parser(prog=PROG, description="AlexNet on CIFAR-10: data, train, evaluate, predict, "
                    "benchmark, export.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    data = sub.add_parser("data", help="inspect or download the data set")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    info = data_sub.add_parser("info", help="format, split and class counts, cache path")
    add_data_flags(info)
    info.add_argument("--json", action="store_true", help="print JSON")
    download = data_sub.add_parser("download", help="fetch and verify the official archive")
    download.add_argument("--data", default=DEFAULT_DATA, help="folder to download into (default ./data)")
    download.add_argument("--url", default=None, help="archive URL (default $ALEXNET_CIFAR10_URL)")
    download.add_argument("--md5", default=None, help="expected md5 (default the official archive's)")

    sub.add_parser("models", help="list the model variants").add_argument("--json", action="store_true")

    train = sub.add_parser("train", help="train a model into a run folder")
    add_config_flags(train)
    train.add_argument("--config", default=None, metavar="FILE",
                       help="start from the settings of FILE (a run's config.json) instead of a recipe; flags "
                            "given beside it override it")
    train.add_argument("--print-config", action="store_true",
                       help="print the resolved settings as JSON and train nothing")
    train.add_argument("--resume", default=None, metavar="RUN", help="continue RUN (a run folder) from last.pt")
    add_cache_flag(train)

    ev = sub.add_parser("evaluate", help="accuracy, per-class table, confusion matrix of a checkpoint")
    add_weights_flags(ev)
    add_data_flags(ev)
    ev.add_argument("--split", choices=("test", "val", "train"), default=None,
                    help="split to evaluate (default test if the data has one, else val)")
    ev.add_argument("--batch-size", type=int, default=500)
    ev.add_argument("--device", choices=DEVICES, default="auto")
    add_tta_flags(ev)
    ev.add_argument("--json", action="store_true", help="print JSON")
    ev.add_argument("--out", default=None,
                    help="folder for result.json, confusion.png, reliability.png, samples.png")
    ev.add_argument("--calibrate", action="store_true",
                    help="fit a temperature on the validation split and keep it beside the weights when it lowers "
                         "the calibration error; predict then reports calibrated probabilities")
    ev.add_argument("--csv", default=None, metavar="FILE",
                    help="write the per-class table (images, recall, precision, F1) as CSV")

    pr = sub.add_parser("predict", help="classify image files or folders")
    pr.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] IMAGE_OR_FOLDER",
                    help="without --weights, the first is the checkpoint")
    pr.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    pr.add_argument("--top-k", type=int, default=3)
    add_tta_flags(pr)
    pr.add_argument("--device", choices=DEVICES, default="auto")
    pr.add_argument("--json", action="store_true", help="print JSON")
    exp = sub.add_parser("explain", help="Grad-CAM: where the network looks for its top classes, as PNGs and a "
                                        "contact sheet")
    exp.add_argument("inputs", nargs="+", metavar="[CHECKPOINT] IMAGE_OR_FOLDER",
                     help="without --weights, the first is the checkpoint")
    exp.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    exp.add_argument("--out", required=True, help="a new or empty folder for the PNGs, sheet.png and explain.json")
    exp.add_argument("--top-k", type=int, default=3, help="classes explained per image")
    exp.add_argument("--layer", default=None,
                     help="the layer whose output is weighed, e.g. features.3 (default: the last convolution)")
    add_tta_flags(exp)
    exp.add_argument("--device", choices=DEVICES, default="auto")
    srv = sub.add_parser("serve", help="a local demo page and an HTTP API (POST /predict, /explain; GET /healthz)")
    add_weights_flags(srv)
    srv.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every network)")
    srv.add_argument("--port", type=int, default=8000, help="port (0: any free one, printed)")
    srv.add_argument("--layer", default=None, help="the layer of the page's Grad-CAM (default: the last convolution)")
    add_tta_flags(srv)
    srv.add_argument("--device", choices=DEVICES, default="auto")
    bench = sub.add_parser("benchmark", help="training throughput: real loop vs compute-only vs seed-style; MFU")
    add_data_flags(bench)
    add_config_flags(bench, BENCHMARK_FIELDS)
    bench.add_argument("--steps", type=int, default=10, help="timed steps per measurement (warm-up excluded)")
    bench.add_argument("--repeats", type=int, default=3, help="measurements; the median is reported")
    bench.add_argument("--no-seed-style", action="store_true", help="skip the DataLoader baseline")
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    ex = sub.add_parser("export", help="write a checkpoint as ONNX, safetensors, torch.export (pt2) or TorchScript")
    add_weights_flags(ex)
    ex.add_argument("--format", choices=EXPORT_FORMATS, required=True)
    ex.add_argument("--out", required=True, help="output file")
    ex.add_argument("--check-data", default=None, metavar="PATH",
                    help="onnx: compare with PyTorch on images from this data set (default: none)")
    ex.add_argument("--check-images", type=int, default=1000, help="images for the ONNX check")
    return parser


WEIGHTS_HELP = "best or seed (trained weights shipped with the package), or a checkpoint or .safetensors path"


def add_weights_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", default=None, help="a checkpoint or .safetensors file (or --weights)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)


def add_tta_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="flip test-time augmentation (default: as the run was trained); --no-tta evaluates "
                             "plain images unless --tta-shift is given too")
    parser.add_argument("--tta-shift", type=int, default=None, metavar="N",
                        help="also average over the image moved N pixels (default: as the run was trained)")
