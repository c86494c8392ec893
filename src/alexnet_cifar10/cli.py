"""``alexnet-cifar10``: each subcommand a thin layer over the library (its flags: ``arguments``). Every user error
is one line."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from alexnet_cifar10.arguments import PROG, build_parser
from alexnet_cifar10.config import (
    Bounds,
    Config,
    bounds_of,
    check_bounds,
    config_from_file,
    downloads_into,
    flag,
    make_config,
)
from alexnet_cifar10.errors import AlexNetCifarError, ConfigError
from alexnet_cifar10.io import atomic_write_text, check_replaceable, foreign_files
from alexnet_cifar10.version import __version__

TAKES_IMAGES = ("predict", "explain")  # the commands whose positional arguments are a checkpoint and images


def weights_of(args: argparse.Namespace) -> str:
    """--weights or the CHECKPOINT argument: exactly one of them. The first input of predict and explain is
    their checkpoint when --weights is absent."""
    if args.command in TAKES_IMAGES:
        if args.weights is None:
            if len(args.inputs) < 2:
                raise ConfigError(f"{args.command} needs a checkpoint and images: {args.command} CHECKPOINT IMAGE... "
                                  f"or {args.command} --weights NAME_OR_PATH IMAGE...")
            args.weights, args.inputs = args.inputs[0], args.inputs[1:]
        return args.weights
    if (args.weights is None) == (args.checkpoint is None):
        raise ConfigError("give the weights once: a CHECKPOINT argument or --weights NAME_OR_PATH")
    return args.weights or args.checkpoint


# --------------------------------------------------------------------------- commands
def load_data(args: argparse.Namespace, progress: bool = False):  # noqa: ANN201 - a Cifar10
    """The data set that the data flags (add_data_flags) name."""
    from alexnet_cifar10.data import load_cifar10

    check_flags(args, "val_size", "split_seed")
    return load_cifar10(args.data, val_size=args.val_size, seed=args.split_seed, cache_dir=args.cache_dir,
                        url=args.url, progress=progress, auto_download=downloads_into(args.data))


# the numeric flags that are not training settings, and the values they may take (the others take their setting's)
FLAG_BOUNDS = {"top_k": Bounds(1, 10), "port": Bounds(0, 65535), "steps": Bounds(1, 10_000),
               "repeats": Bounds(1, 100), "check_images": Bounds(1, 60_000)}


def check_flags(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) is not None:  # None: not given, the checkpoint's own value applies
            check_bounds(name, getattr(args, name), FLAG_BOUNDS.get(name) or bounds_of(name))


def cmd_data_info(args: argparse.Namespace) -> int:
    from alexnet_cifar10.data import CLASSES

    data = load_data(args, progress=sys.stderr.isatty())
    splits = {name: getattr(data, name) for name in ("train", "val", "test")}
    report = {
        "source": str(data.source), "format": data.format,
        "cache": str(data.cache_file) if data.cache_file else None,
        "from_cache": data.from_cache, "seconds": round(data.seconds, 3),
        "splits": {name: (None if s is None else {"images": len(s), "per_class": dict(zip(CLASSES, s.class_counts(),
                                                                                          strict=True))})
                   for name, s in splits.items()},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"source: {data.source}\nformat: {data.format}")
    print(f"cache:  {data.cache_file} ({'hit' if data.from_cache else 'written'}, {data.seconds:.2f} s)")
    print(f"{'split':<7}{'images':>8}  " + " ".join(f"{c[:5]:>6}" for c in CLASSES))
    for name, s in splits.items():
        if s is None:
            print(f"{name:<7}{'none':>8}")
        else:
            print(f"{name:<7}{len(s):>8}  " + " ".join(f"{n:>6}" for n in s.class_counts()))
    return 0


def cmd_data_download(args: argparse.Namespace) -> int:
    from alexnet_cifar10.data.download import download_archive

    path = download_archive(Path(args.data), args.url, args.md5, progress=sys.stderr.isatty())
    print(f"verified {path}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from alexnet_cifar10.models import describe_models
    from alexnet_cifar10.pretrained import list_weights

    rows, weights = describe_models(), list_weights()
    for r in rows:  # the shipped weights of each network, with their accuracies
        r["weights"] = [{k: w[k] for k in ("name", "val_accuracy", "test_accuracy")}
                        for w in weights if w["model"] == r["name"]]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len("name"), *(len(str(r["name"])) for r in rows)) + 2
    print(f"{'name':<{width}}{'params':>12}{'MFLOPs':>10}  description")
    for r in rows:
        print(f"{r['name']:<{width}}{r['params']:>12,}{r['mflops']:>10.1f}  {r['description']}")
        for w in r["weights"]:
            print(f"{'':<{width}}{'':>22}  shipped weights --weights {w['name']}: {accuracy_text(w)}")
    return 0


def accuracy_text(weights: dict[str, Any]) -> str:
    """"validation 90.64 % with TTA (89.72 % plain), test 90.46 % ..." from a list_weights() row."""
    def figures(acc: dict[str, float] | None) -> str:
        if not acc:
            return "not measured"
        plain = f"{100 * acc['plain']:.2f} %"
        tta = acc.get("tta")
        return plain if tta is None or tta == acc["plain"] else f"{100 * tta:.2f} % with TTA ({plain} plain)"

    return f"validation {figures(weights['val_accuracy'])}, held-out test {figures(weights['test_accuracy'])}"


def cmd_train(args: argparse.Namespace) -> int:
    from alexnet_cifar10.runs import resumed_config
    from alexnet_cifar10.training import resume, train

    given = {f.name: getattr(args, f.name) for f in fields(Config) if hasattr(args, f.name)}
    if args.config and (args.resume or "recipe" in given):
        raise ConfigError(f"--config gives the starting settings; it does not go with "
                          f"{'--resume' if args.resume else '--recipe'}")
    if args.resume:
        if args.print_config:
            print(json.dumps(printed_config(resumed_config(Path(args.resume), given)), indent=2))
            return 0
        result = resume(args.resume, cache_dir=args.cache_dir, **given)
    else:
        if args.config:
            config = config_from_file(Path(args.config), **given)
        else:
            config = make_config(given.pop("recipe", "seed"), **given)
        if args.print_config:
            print(json.dumps(printed_config(config), indent=2))
            return 0
        result = train(config, cache_dir=args.cache_dir)
    if (final := result.final) is not None:
        print(f"{final.split} accuracy {100 * final.accuracy:.2f}%; run folder {result.run_dir}")
    return 0


CIFAR10_TRAIN_IMAGES = 50_000  # the official training split, of which --val-size images are held out


def printed_config(config: Config) -> dict[str, Any]:
    """What --print-config shows: the settings, and the training compute they cost on CIFAR-10's training split
    less the validation images (a run records its own count, from the data it trains on)."""
    from alexnet_cifar10.models import create_model, training_pflop
    from alexnet_cifar10.training import check_network

    check_network(config)
    images = max(CIFAR10_TRAIN_IMAGES - config.val_size, 0)
    pflop = training_pflop(create_model(config.model, dropout=config.dropout), images, config.epochs)
    return {**config.to_dict(), "training_images": images, "training_pflop": round(pflop, 4)}


def _load_for_eval(args: argparse.Namespace):  # noqa: ANN202
    from alexnet_cifar10.checkpoint import load_for_inference
    from alexnet_cifar10.device import select_device

    device = select_device(args.device)
    model, state = load_for_inference(weights_of(args), device, calibrated=not getattr(args, "calibrate", False))
    return model, state, device


def tta_of(args: argparse.Namespace, state: dict[str, Any]) -> tuple[bool, int]:
    """The flags' test-time augmentation, else the one the checkpoint's run was trained with. ``--no-tta``
    alone means none at all: a user who asks for plain images should not get the run's moves."""
    trained = state.get("config") or {}
    tta = trained.get("tta", False) if args.tta is None else args.tta
    if args.tta_shift is not None:
        return tta, args.tta_shift
    return tta, 0 if args.tta is False else trained.get("tta_shift", 0)


EVALUATION_FILES = ("result.json", "confusion.png", "samples.png", "reliability.png")  # what evaluate --out writes


def claim_evaluation_dir(out: Path) -> None:
    """Create ``out``, or accept it when it is empty or holds an earlier evaluation (which this one replaces):
    a run folder's plots and a user's own files are never written over."""
    check_replaceable(out, EVALUATION_FILES, ConfigError)
    try:
        out.mkdir(parents=True, exist_ok=True)
        foreign = foreign_files(out, EVALUATION_FILES)
        if not foreign and not (out / EVALUATION_FILES[0]).is_file():  # plots without result.json: not ours
            foreign = foreign_files(out, ())
    except OSError as e:
        raise ConfigError(f"cannot use --out {out}: {e.strerror or e}") from None
    if foreign:
        raise ConfigError(f"--out {out} holds files that are not an evaluation's ({foreign}); give a new or empty "
                          "folder")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from alexnet_cifar10 import reporting
    from alexnet_cifar10.evaluation import evaluate

    check_flags(args, "batch_size", "tta_shift", "val_size", "split_seed")  # before the checkpoint loads
    if args.out:
        claim_evaluation_dir(Path(args.out))  # fail on a bad --out before the work
    if args.csv:
        check_output_file("--csv", args.csv)
    if args.calibrate and args.split not in (None, "val"):
        raise ConfigError("--calibrate fits on the validation split; it does not go with --split "
                          f"{args.split} (evaluate the other split afterwards: the temperature is kept)")
    if args.calibrate:
        from alexnet_cifar10.calibration import calibration_path

        kept = calibration_path(weights_of(args))
        check_replaceable(kept.parent, [kept.name], ConfigError)
    model, state, device = _load_for_eval(args)
    if args.calibrate:
        check_calibration_split(args, state)
    data = load_data(args)
    name = "val" if args.calibrate else args.split or data.eval_split_name()
    split = data.split(name)
    tta, shift = tta_of(args, state)
    temperature = 1.0 if args.calibrate else model.temperature  # a fit starts from the logits as trained
    result = evaluate(model, split.images, split.labels, split=name, batch_size=args.batch_size,
                      device=device, tta=tta, tta_shift=shift, temperature=temperature, keep_logits=args.calibrate)
    record = {**result.to_dict(), "evaluated": evaluated(args, state, data, device)}
    if args.calibrate:
        record["calibration"] = calibrate(args, result, split.labels)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / EVALUATION_FILES[0], json.dumps(record, indent=2))
        reporting.plot_confusion(result, out / EVALUATION_FILES[1])
        reporting.plot_samples(split.images, split.labels, result.predictions, data.classes, out / EVALUATION_FILES[2])
        reporting.plot_reliability(result, out / EVALUATION_FILES[3])
    if args.csv:
        atomic_write_text(Path(args.csv), per_class_csv(result))
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print(f"{weights_of(args)} on the {name} split ({len(split)} images), test-time augmentation: "
              f"{result.tta_text()}")
        print(result.table())
        print(f"top-5 accuracy {100 * result.top5_accuracy:.2f}%, expected calibration error {100 * result.ece:.2f}% "
              f"(15 confidence bins{'' if temperature == 1 else f', temperature {temperature:.3f}'})")
        if args.calibrate:
            print(record["calibration"]["summary"])
    return 0


def check_output_file(option: str, path: str) -> None:
    """A file a command will write once its work is done: a missing folder, a FIFO or a device there is refused
    now, not after the work."""
    if not Path(path).parent.is_dir():
        raise ConfigError(f"{option} {path}: folder {Path(path).parent} does not exist")
    check_replaceable(Path(path).parent, [Path(path).name], ConfigError)


def check_calibration_split(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """A temperature is fitted on images the network did not train on: the validation split its run held out."""
    trained = state.get("config") or {}
    for name in ("val_size", "split_seed"):
        if name in trained and getattr(args, name) != trained[name]:
            raise ConfigError(f"--calibrate fits on the validation split the run held out: give --{flag(name)} "
                              f"{trained[name]} as it was trained with, not {getattr(args, name)}")


def calibrate(args: argparse.Namespace, result: Any, labels: Any) -> dict[str, Any]:
    """Fit a temperature on the validation logits of ``result``; keep it beside the weights when it lowers the
    expected calibration error (else keep nothing, and say so)."""
    from alexnet_cifar10.calibration import calibration_path, save_temperature
    from alexnet_cifar10.evaluation import expected_calibration_error, fit_temperature

    temperature = fit_temperature(result.logits, labels)
    after = expected_calibration_error(result.logits / temperature, labels)
    fitted = {"temperature": temperature, "ece_before": result.ece, "ece_after": after, "split": "val",
              "images": len(labels), "val_size": args.val_size, "split_seed": args.split_seed, "tta": result.tta,
              "tta_shift": result.tta_shift}
    weights = weights_of(args)
    if after < result.ece:
        path = save_temperature(weights, temperature, fitted)
        summary = (f"temperature {temperature:.3f} lowers the expected calibration error from {100 * result.ece:.2f}% "
                   f"to {100 * after:.2f}% on the val split; kept in {path}")
    else:
        path = None
        summary = (f"temperature scaling does not lower the expected calibration error ({100 * result.ece:.2f}% "
                   f"-> {100 * after:.2f}% at temperature {temperature:.3f}); nothing kept "
                   f"({calibration_path(weights)} unchanged)")
    return {**fitted, "kept_in": None if path is None else str(path), "summary": summary}


def per_class_csv(result: Any) -> str:
    """The per-class table of an EvalResult as CSV: class, images, recall (the class's accuracy), precision, F1;
    an empty cell where a ratio has no images."""
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "images", "recall", "precision", "f1"])
    for name, m in result.per_class_metrics.items():
        writer.writerow([name, m["images"], *("" if m[k] is None else f"{m[k]:.4f}" for k in ("recall", "precision",
                                                                                               "f1"))])
    return table.getvalue()


def evaluated(args: argparse.Namespace, state: dict[str, Any], data: Any, device: Any) -> dict[str, Any]:
    """What an evaluation's result.json records of what it evaluated: the weights (shipped name or checkpoint
    path) and their sha256, the network, the data and its split, and the software and device that computed it."""
    import torch

    from alexnet_cifar10 import pretrained
    from alexnet_cifar10.calibration import weights_sha256
    from alexnet_cifar10.runs import device_name

    weights = weights_of(args)
    shipped = pretrained.is_shipped_name(weights)
    return {"weights": weights if shipped else str(Path(weights).resolve()),
            "weights_sha256": weights_sha256(weights), "model": state["model_name"], "data": str(data.source),
            "val_size": args.val_size, "split_seed": args.split_seed, "version": __version__,
            "torch": torch.__version__, "device": device_name(device), "precision": "fp32"}


def guesses(top: list[tuple[str, float]]) -> str:
    """Classes with their probabilities as predict and explain print them: "cat 79.0%, dog 2.6%"."""
    return ", ".join(f"{label} {100 * p:.1f}%" for label, p in top)


def cmd_predict(args: argparse.Namespace) -> int:
    from alexnet_cifar10.evaluation import predict

    check_flags(args, "top_k", "tta_shift")
    model, state, device = _load_for_eval(args)
    tta, shift = tta_of(args, state)
    results = predict(model, args.inputs, top_k=args.top_k, device=device, tta=tta, tta_shift=shift)
    if not results:
        print(f"{PROG}: error: no image files found in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    failed = [r for r in results if r.error]
    if args.json:
        print(json.dumps([{"path": r.path, "top": r.top, "resized_from": r.resized_from, "error": r.error}
                          for r in results], indent=2))
    else:
        for r in results:
            if r.error:
                continue
            note = f" (resized from {r.resized_from[0]}x{r.resized_from[1]} to 32x32)" if r.resized_from else ""
            print(f"{r.path}: {guesses(r.top or [])}{note}")
    for r in failed:
        print(f"{PROG}: error: {r.error}", file=sys.stderr)
    return 1 if failed else 0


def claim_empty_dir(option: str, out: Path) -> None:
    """``out`` created, or accepted when it is an empty folder: nothing of the user's is written over."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if any(out.iterdir()):
            raise ConfigError(f"{option} {out} is not empty; give a new or empty folder")
    except OSError as e:
        raise ConfigError(f"cannot use {option} {out}: {e.strerror or e}") from None


def cmd_explain(args: argparse.Namespace) -> int:
    from alexnet_cifar10.explain import GradCam

    check_flags(args, "top_k", "tta_shift")
    model, state, device = _load_for_eval(args)
    tta, shift = tta_of(args, state)
    cam = GradCam(model, args.layer, tta=tta, tta_shift=shift)  # a bad --layer fails before --out is made
    out = Path(args.out)
    claim_empty_dir("--out", out)
    explained, failed = explain_files(cam, args.inputs, args.top_k, out, device)
    if not explained and not failed:
        print(f"{PROG}: error: no image files found in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    for error in failed:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    return 1 if failed else 0


def explain_files(cam: Any, inputs: list[str], top_k: int, out: Path, device: Any) -> tuple[list[dict], list[str]]:
    """Grad-CAM of each image file's top classes: one overlay PNG per (image, class), sheet.png of the first
    SHEET_ROWS images, explain.json; one line per image on stdout. Returns the records and the files' errors."""
    from PIL import Image

    from alexnet_cifar10 import reporting
    from alexnet_cifar10.errors import DataError
    from alexnet_cifar10.evaluation import expand_inputs, load_image
    from alexnet_cifar10.io import atomic_write

    records: list[dict] = []
    failed: list[str] = []
    sheet = []
    for path in expand_inputs(inputs, "explain"):
        try:
            x, resized = load_image(path)
        except DataError as e:
            failed.append(str(e))
            continue
        explanation = cam.explain(x[None].to(device), top_k)[0]
        files = []
        for rank, ((label, _), heatmap) in enumerate(zip(explanation.top, explanation.heatmaps, strict=True), 1):
            name = re.sub(r"[^\w.-]", "_", f"{len(records):04d}-{path.stem[:60]}-{rank}-{label}") + ".png"
            image = Image.fromarray(reporting.overlay(x, heatmap))
            atomic_write(out / name, lambda f, image=image: image.save(f, format="PNG"))
            files.append(name)
        records.append({"path": str(path), "top": explanation.top, "resized_from": resized, "gradcam": files})
        if len(sheet) < SHEET_ROWS:
            sheet.append((x, path.name[:24], [(guesses([top]), h)
                                              for top, h in zip(explanation.top, explanation.heatmaps, strict=True)]))
        print(f"{path}: {guesses(explanation.top)} -> {out / files[0]}")
    if records:
        reporting.plot_gradcam_sheet(sheet, out / "sheet.png", title=f"Grad-CAM at {cam.layer}")
        atomic_write_text(out / "explain.json", json.dumps({"layer": cam.layer, "images": records}, indent=2))
    return records, failed


SHEET_ROWS = 64  # images on explain's contact sheet (every image gets its PNGs)


def cmd_serve(args: argparse.Namespace) -> int:
    from alexnet_cifar10 import serve

    check_flags(args, "port", "tta_shift")
    model, state, device = _load_for_eval(args)
    tta, shift = tta_of(args, state)
    app = serve.create_app(model, weights=weights_of(args), model_name=state["model_name"], device=device, tta=tta,
                           tta_shift=shift, layer=args.layer)
    sock = serve.listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}/"
    if args.host in serve.LOOPBACK:
        print(f"serving {weights_of(args)} on {url} (this machine only; --host 0.0.0.0 serves other machines too)")
    else:
        print(f"serving {weights_of(args)} on {url}; anyone who can reach this address can use it")
    print("Ctrl-C stops it", flush=True)
    serve.serve(app, sock)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from alexnet_cifar10.benchmark import format_table, run_benchmark
    from alexnet_cifar10.device import precision_choice, select_device, set_threads
    from alexnet_cifar10.models import create_model

    check_flags(args, "steps", "repeats", "batch_size", "threads")
    if args.json:
        check_output_file("--json", args.json)
    create_model(args.model)  # an unknown name fails here, before the data loads
    device = select_device(args.device)
    set_threads(args.threads)
    precision, reason = precision_choice(args.precision, device, args.model)
    split = load_data(args).sample_split()
    if args.batch_size > len(split):
        raise ConfigError(f"--batch-size {args.batch_size} is larger than the {len(split)} images to benchmark on")
    result = run_benchmark(split.images, split.labels, model_name=args.model, precision=precision,
                           batch_size=args.batch_size, device=device, steps=args.steps, repeats=args.repeats,
                           seed_style=not args.no_seed_style, compile=args.compile)
    result["precision_choice"] = reason
    print(format_table(result))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from alexnet_cifar10.export import check_onnx, export

    check_flags(args, "check_images")
    model = export(weights_of(args), args.format, args.out)
    print(f"wrote {args.out} ({args.format})")
    if args.format == "onnx" and args.check_data:
        from alexnet_cifar10.data import load_cifar10

        images = load_cifar10(args.check_data, val_size=0).sample_split().images[: args.check_images].float() / 255
        check = check_onnx(model, Path(args.out), images)
        print(f"onnxruntime vs PyTorch on {check.images} images: max |logit diff| {check.max_abs_diff:.2e}, "
              f"top-1 agreement {100 * check.top1_agreement:.2f}%")
        if check.top1_agreement < 1.0:
            return 1
    return 0


COMMANDS = {
    ("data", "info"): cmd_data_info,
    ("data", "download"): cmd_data_download,
    ("models", None): cmd_models,
    ("train", None): cmd_train,
    ("evaluate", None): cmd_evaluate,
    ("predict", None): cmd_predict,
    ("explain", None): cmd_explain,
    ("serve", None): cmd_serve,
    ("benchmark", None): cmd_benchmark,
    ("export", None): cmd_export,
}


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """Python warnings as the CLI's other warnings read: one line, without the source line that raised it."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    warnings.formatwarning = one_line_warning
    if sys.stdout is None:  # started with stdout closed (`>&-`): every result would vanish
        print(f"{PROG}: error: standard output is closed; give the command somewhere to write", file=sys.stderr)
        return 1
    try:
        code = run_command(argv)
        sys.stdout.flush()  # what is still buffered is written now, where a failure can be reported
    except BrokenPipeError:  # the reader of stdout stopped early (`... | head`): it has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return 141  # as a shell reports a command ended by SIGPIPE
    except OSError as e:  # only the flush above: run_command reports its own
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{PROG}: error: cannot write to standard output: {e.strerror or e}", file=sys.stderr)
        return 1
    return code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the command is, as Ctrl-C raises KeyboardInterrupt."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds the command as Ctrl-C does, so that the writes under way remove their temporary files
    (the training loop's own handler turns both into a checkpoint instead)."""
    def handler(_signum: int, _frame: object) -> None:
        raise Terminated("terminated")

    if threading.current_thread() is not threading.main_thread():  # a notebook's worker: no signal handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_command(argv: list[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # predict's files may stand after its flags too: predict CKPT --top-k 1 a.png b.png
        if args.command not in TAKES_IMAGES or any(e.startswith("-") for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.inputs += extra
    command = COMMANDS[(args.command, getattr(args, "data_command", None))]
    start = time.perf_counter()
    try:
        with terminate_as_interrupt():
            return command(args)
    except AlexNetCifarError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    except KeyboardInterrupt as e:
        what, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"{PROG}: {what} after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        return code
    except BrokenPipeError:
        raise  # main's: the reader of stdout stopped early
    except OSError as e:  # a write that failed (a full disk), a stdout that takes nothing
        where = f" {e.filename}:" if getattr(e, "filename", None) else ""
        print(f"{PROG}: error:{where} {e.strerror or e}", file=sys.stderr)
        return 1
