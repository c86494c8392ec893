"""The training loop: one run folder in, one trained model out. Read it top to bottom.

``train(config)`` starts a run, ``resume(run_dir)`` continues one from its last.pt. Both set up a ``Run`` (what
stays fixed) and a ``TrainState`` (what a checkpoint holds), then alternate ``train_one_epoch`` and
``end_of_epoch`` until the epochs are done, and ``finish`` writes the final evaluation and report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from alexnet_cifar10 import distributed, reporting
from alexnet_cifar10.checkpoint import load_checkpoint, save_checkpoint, save_safetensors
from alexnet_cifar10.config import Config, downloads_into
from alexnet_cifar10.data import Cifar10, load_cifar10
from alexnet_cifar10.data.loader import ResidentLoader
from alexnet_cifar10.device import (
    autocast,
    configure_backends,
    precision_choice,
    select_device,
    set_threads,
    sum_dtype,
)
from alexnet_cifar10.errors import CheckpointError, ConfigError, TrainingError
from alexnet_cifar10.evaluation import EvalResult, evaluate
from alexnet_cifar10.models import (
    AlexNet,
    batch_norms,
    check_whitenable,
    create_model,
    dirac_init,
    freeze_first_conv,
    training_pflop,
    whiten_first_conv,
)
from alexnet_cifar10.optimization import EMA, LOOKAHEAD_EVERY, build_optimizer, lookahead, lr_factor
from alexnet_cifar10.runs import (
    check_resume_model,
    claimed,
    device_name,
    open_tensorboard,
    provenance,
    resumed_config,
    run_dir_of,
    write_config,
    write_metrics,
    write_run_file,
)
from alexnet_cifar10.state import EpochStats, TrainState, model_identity
from alexnet_cifar10.version import __version__

STOP_CHECK = 10  # steps between the collective checks for SIGINT/SIGTERM under torchrun
TRAINING_STATE = ("optimizer", "scheduler", "scaler", "epoch", "step", "rng", "partial")


class Interrupted(TrainingError):
    """SIGINT or SIGTERM arrived; a checkpoint was written. ``exit_code`` is 130 or 143."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class TrainResult:
    run_dir: Path
    history: list[dict[str, Any]]
    final: EvalResult | None
    model: nn.Module


@dataclass
class Run:
    """What stays fixed through a run: its settings, its folder, where it computes, what the steps minimise."""

    config: Config
    run_dir: Path
    device: torch.device
    dist: distributed.Dist
    classes: list[str]
    steps_per_epoch: int
    criterion: nn.Module
    writer: Any = None  # a TensorBoard SummaryWriter under --tensorboard

    @property
    def progress(self) -> bool:
        """Bars wanted (rank 0, no --no-progress); tqdm still leaves them out where stderr is not a terminal."""
        return self.config.progress and self.dist.is_main

    def save(self, state: TrainState, name: str) -> None:
        """A checkpoint in the run folder (rank 0 alone writes)."""
        if self.dist.is_main:
            save_checkpoint(self.run_dir / name, state.to_checkpoint(self.config, self.classes))

    def sums(self, loss: torch.Tensor, correct: torch.Tensor, seen: int, before: EpochStats,
             t0: float) -> EpochStats:
        """The epoch's sums over every rank (one collective when distributed), plus ``before``: what a resumed
        checkpoint had already summed."""
        loss_sum, n_correct, images = distributed.all_sum([float(loss), float(correct), seen], self.dist, self.device)
        return EpochStats(before.loss_sum + loss_sum, before.correct + int(n_correct), before.seen + int(images),
                          time.perf_counter() - t0)

    def stopping(self, stop: dict[str, int | None], global_step: int) -> bool:
        """A SIGINT/SIGTERM arrived; under torchrun a collective, so only every STOP_CHECK steps, on every rank."""
        if not self.dist.enabled:
            return stop["signal"] is not None
        return global_step % STOP_CHECK == 0 and distributed.any_rank(stop["signal"] is not None, self.dist,
                                                                       self.device)

    def non_finite(self, epoch: int) -> TrainingError:
        last = self.run_dir / "last.pt"
        kept = (f"the last good checkpoint is {last}" if last.is_file()
                else "no checkpoint was written before it")
        return TrainingError(f"the loss became NaN or infinite in epoch {epoch + 1}; stopped; {kept}; try a lower "
                             "--lr")


# --------------------------------------------------------------------------- entry points
def train(config: Config, *, data: Cifar10 | None = None, cache_dir: str | None = None) -> TrainResult:
    """Train ``config`` into a new run folder (``config.out``, else runs/<name>). ``data`` is the data set when
    it is loaded already; else ``config.data`` is loaded (and downloaded when absent)."""
    return _start(config.validate(), None, data, cache_dir)


def resume(run_dir: str | Path, *, dataset: Cifar10 | None = None, cache_dir: str | None = None,
           **overrides: Any) -> TrainResult:
    """Continue the run in ``run_dir`` (or the one whose checkpoint it names) from its last.pt, with its saved
    config; ``overrides`` may change only ``runs.RESUME_OVERRIDES`` (e.g. ``epochs=30``)."""
    run_dir = Path(run_dir)
    checkpoint_file = run_dir / "last.pt" if run_dir.is_dir() else run_dir
    config = resumed_config(run_dir, overrides).validate()  # the small file first
    saved = load_checkpoint(checkpoint_file)
    missing = [k for k in TRAINING_STATE if k not in saved]
    if missing:
        raise CheckpointError(f"{checkpoint_file}: holds weights but no training state ({', '.join(missing)}); "
                              "--resume needs a run's last.pt")
    check_resume_model(config, saved, checkpoint_file)
    return _start(config, saved, dataset, cache_dir)


def check_network(config: Config) -> None:
    """What the settings ask of the network, checked before any data loads: --whiten's first convolution."""
    if config.whiten:
        check_whitenable(config.model)


def _start(config: Config, saved: dict[str, Any] | None, data: Cifar10 | None, cache_dir: str | None) -> TrainResult:
    check_network(config)
    device = select_device(config.device)
    set_threads(config.threads)  # before the precision probe, which times the run's own thread count
    # config.json and the checkpoints record what the run computes in, not "auto": a resume keeps it
    precision, precision_reason = precision_choice(config.precision, device, config.model)
    config = dataclasses.replace(config, precision=precision)
    dist, device = distributed.setup(device)
    try:
        if dist.enabled and config.name == "" and config.out == "":
            raise ConfigError("under torchrun give the run folder explicitly (--out DIR or --name NAME), so "
                              "that every rank agrees on it")
        run_dir = run_dir_of(config)
        with claimed(run_dir, resume=saved is not None) if dist.is_main else nullcontext(run_dir):
            return _train(config, saved, data, run_dir, device, dist, cache_dir, precision_reason)
    except (RuntimeError, torch.distributed.DistError) as e:
        if not dist.enabled:
            raise
        raise distributed.peer_error(e) from None
    finally:
        distributed.cleanup(dist)


# --------------------------------------------------------------------------- the run
def _train(config: Config, saved: dict[str, Any] | None, data: Cifar10 | None, run_dir: Path,
           device: torch.device, dist: distributed.Dist, cache_dir: str | None, precision_reason: str) -> TrainResult:
    configure_backends(config, device)
    if data is None:  # everything resident on the device as uint8
        data = load_cifar10(config.data, val_size=config.val_size, seed=config.split_seed, cache_dir=cache_dir,
                            progress=config.progress and dist.is_main, auto_download=downloads_into(config.data))
    torch.manual_seed(config.seed)
    train_loader, val_loader = make_loaders(config, data, device, dist)
    state = build_state(config, data, device, dist, len(train_loader), resuming=saved is not None)
    if saved is not None:
        state.load(saved)
    if dist.rank:  # rank 0 keeps the single-process RNG stream; the others get their own dropout masks
        torch.manual_seed(config.seed * 1_000_003 + dist.rank * 7919 + state.global_step)
    run = Run(config, run_dir, device, dist, list(data.classes), len(train_loader),
              nn.CrossEntropyLoss(label_smoothing=config.label_smoothing))
    if dist.is_main:
        resumed_at = None if saved is None else {"epochs_done": state.epoch, "steps_into_epoch": state.step}
        write_config(run_dir, config, {**provenance(run_dir, resumed_at, device, dist.world, precision_reason),
                                       "training_pflop": training_pflop(state.model, len(data.train), config.epochs)})
        run.writer = open_tensorboard(run_dir) if config.tensorboard else None
    try:
        with stop_requests() as stop:
            while state.epoch < config.epochs:
                stats = train_one_epoch(state, run, train_loader, stop)
                end_of_epoch(state, run, stats, data, val_loader)
    finally:
        if run.writer is not None:
            run.writer.close()
    final = finish(run_dir, config, data, state.eval_model, state.history, device) if dist.is_main else None
    return TrainResult(run_dir=run_dir, history=state.history, final=final, model=state.eval_model)


def make_loaders(config: Config, data: Cifar10, device: torch.device,
                 dist: distributed.Dist) -> tuple[ResidentLoader, ResidentLoader | None]:
    """The augmenting training loader (this rank's slice of every global batch) and the plain validation one."""
    if len(data.train) == 0:
        raise TrainingError(f"{data.source}: the data has no training split to train on")
    loader = ResidentLoader(data.train.images, data.train.labels, config.batch_size, train=True,
                            device=device, seed=config.seed, pad=config.crop_pad, flip=config.flip,
                            alternate_flip=config.alternate_flip, cutout=config.cutout,
                            channels_last=config.channels_last, rank=dist.rank, world=dist.world)
    if len(loader) == 0:
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the {len(data.train)} training images")
    if config.batch_size % dist.world:
        raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                          f"{dist.world} ranks, so that every rank gets an equal slice")
    if data.val is None or not len(data.val):
        return loader, None
    return loader, ResidentLoader(data.val.images, data.val.labels, 1000, train=False, device=device,
                                  channels_last=config.channels_last)


def build_state(config: Config, data: Cifar10, device: torch.device, dist: distributed.Dist,
                steps_per_epoch: int, resuming: bool) -> TrainState:
    """The model, optimizer, schedule, scaler and weight averages of a run's first step. A resumed run then
    loads its checkpoint over them, so the work that a checkpoint replaces (initial filters) is skipped."""
    model: AlexNet = create_model(config.model, dropout=config.dropout)
    model.set_normalization(*mean_std(data.train.images))
    if config.dirac_init and not resuming:
        dirac_init(model)
    for bn in batch_norms(model):
        bn.momentum = config.bn_momentum
        if config.freeze_bn_scale:
            bn.weight.requires_grad_(False)
    if config.whiten:  # on resume the checkpoint holds the filters: only the freezing is redone
        freeze_first_conv(model) if resuming else whiten_first_conv(model, data.train.images)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    ema = EMA(model, config.ema) if config.ema else None
    slow_weights = EMA(model, 0.0) if config.lookahead else None
    total_steps = config.epochs * steps_per_epoch
    if slow_weights is not None and total_steps < LOOKAHEAD_EVERY and dist.is_main:
        print(f"warning: --lookahead averages every {LOOKAHEAD_EVERY} steps and this run has {total_steps}, so it "
              "ends on its starting weights; add --no-lookahead", file=sys.stderr)
    wrapped = distributed.wrap(model, dist, device)
    return TrainState(model, torch.compile(wrapped) if config.compile else wrapped, optimizer, scheduler, scaler,
                      ema, slow_weights)


def train_one_epoch(state: TrainState, run: Run, loader: ResidentLoader, stop: dict[str, int | None]) -> EpochStats:
    """The epoch ``state.epoch``, from step ``state.step`` (a checkpoint inside it) to its end. A SIGINT or
    SIGTERM ends it with a checkpoint and ``Interrupted``."""
    config, device = run.config, run.device
    state.model.train()
    loss_sum = torch.zeros((), dtype=sum_dtype(device), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0  # this rank's images since the epoch (re)started; state.partial holds the rest, summed
    t0 = time.perf_counter() - state.partial.seconds
    total_steps = config.epochs * run.steps_per_epoch
    bar = tqdm(total=len(loader), initial=state.step, desc=f"epoch {state.epoch + 1}/{config.epochs}",
               disable=None if run.progress else True, unit="step", leave=False)
    for step, (x, y) in enumerate(loader.iterate(state.epoch, state.step), start=state.step):
        with autocast(device, config.precision):
            logits = state.forward(x)
            loss = run.criterion(logits, y)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        state.global_step += 1
        if state.slow_weights is not None:
            lookahead(state.slow_weights, state.model, state.global_step, total_steps)
        if state.ema is not None:
            state.ema.update(state.model)
        loss_sum += loss.detach().to(loss_sum.dtype) * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
        bar.update(1)
        if not bar.disable and (step % 25 == 0 or step == len(loader) - 1):  # the only sync, for the bar
            bar.set_postfix(loss=f"{float(loss_sum) / seen:.3f}", acc=f"{int(correct) / seen:.3f}",
                            ips=f"{run.dist.world * seen / (time.perf_counter() - t0 - state.partial.seconds):.0f}")
        stopping = run.stopping(stop, state.global_step)
        if stopping or (config.checkpoint_every and state.global_step % config.checkpoint_every == 0):
            sums = run.sums(loss_sum, correct, seen, state.partial, t0)
            if not math.isfinite(sums.loss_sum):
                raise run.non_finite(state.epoch)
            run.save(dataclasses.replace(state, step=step + 1, partial=sums), "last.pt")
        if stopping:
            bar.close()
            raise Interrupted(f"interrupted at epoch {state.epoch + 1} step {step + 1}; checkpoint written; "
                              f"continue with: alexnet-cifar10 train --resume {run.run_dir}",
                              130 if stop["signal"] == signal.SIGINT else 143)
    bar.close()
    stats = run.sums(loss_sum, correct, seen, state.partial, t0)
    if not math.isfinite(stats.loss):
        raise run.non_finite(state.epoch)
    return stats


# a metrics.jsonl column -> its TensorBoard tag, grouped so that train and val share a chart
TENSORBOARD_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_acc": "acc/train",
                    "val_acc": "acc/val", "lr": "lr", "seconds": "time/epoch_s", "images_per_s": "time/images_per_s"}


def end_of_epoch(state: TrainState, run: Run, stats: EpochStats, data: Cifar10,
                 val_loader: ResidentLoader | None) -> None:
    """Validate (plain images: --tta is for the final evaluation, at half the cost), record, checkpoint, plot."""
    row: dict[str, Any] = {"epoch": state.epoch + 1, "train_loss": stats.loss, "train_acc": stats.accuracy,
                           "val_loss": None, "val_acc": None, "lr": state.optimizer.param_groups[0]["lr"],
                           "seconds": stats.seconds,
                           "images_per_s": stats.seen / stats.seconds if stats.seconds else 0.0}
    if val_loader is not None:
        result = evaluate(state.eval_model, data.val.images, data.val.labels, loader=val_loader,
                          device=run.device, precision=run.config.precision)
        row["val_loss"], row["val_acc"] = result.loss, result.accuracy
    state.history.append(row)
    state.epoch, state.step, state.partial = state.epoch + 1, 0, EpochStats()
    improved = row["val_acc"] is not None and row["val_acc"] > state.best_acc
    if improved:
        state.best_acc = row["val_acc"]
    if improved or val_loader is None:  # best.pt first: a crash between the two keeps them consistent
        run.save(state, "best.pt")
    run.save(state, "last.pt")
    if run.dist.is_main:
        write_metrics(run.run_dir, state.history)
        reporting.plot_curves(state.history, run.run_dir / "curves.png")
    if run.writer is not None:
        for key, tag in TENSORBOARD_TAGS.items():
            if row[key] is not None:
                run.writer.add_scalar(tag, row[key], row["epoch"])
    if run.dist.is_main:  # one line per epoch, bars or not, so that a log file shows the run
        val = "" if row["val_acc"] is None else f" val_loss {row['val_loss']:.4f} val_acc {100 * row['val_acc']:.2f}%"
        tqdm.write(f"epoch {row['epoch']:>3}/{run.config.epochs} train_loss {stats.loss:.4f} "
                   f"train_acc {100 * stats.accuracy:.2f}%{val} lr {row['lr']:.4g} "
                   f"{row['images_per_s']:.0f} img/s {stats.seconds:.1f}s")


@contextmanager
def stop_requests() -> Iterator[dict[str, int | None]]:
    """Turn SIGINT/SIGTERM into a flag that the loop checks after each step."""
    flag: dict[str, int | None] = {"signal": None}

    def handler(signum: int, _frame: object) -> None:
        flag["signal"] = signum

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def mean_std(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images, as fractions of 255."""
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    for chunk in images.split(4096):
        x = chunk.double()
        total += x.sum(dim=(0, 2, 3))
        squares += (x * x).sum(dim=(0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / n
    std = (squares / n - mean * mean).clamp_min(1e-12).sqrt()
    return (mean / 255).tolist(), (std / 255).tolist()


def finish(run_dir: Path, config: Config, data: Cifar10, model: nn.Module, history: list[dict[str, Any]],
           device: torch.device) -> EvalResult | None:
    """Final evaluation (test split if any, else val), figures and report.html."""
    split_name = data.eval_split_name()
    split = data.split(split_name)
    result = evaluate(model, split.images, split.labels, split=split_name, device=device,
                      precision=config.precision, tta=config.tta, tta_shift=config.tta_shift,
                      channels_last=config.channels_last)
    pflop = training_pflop(model, len(data.train), config.epochs)
    write_run_file(run_dir / "final.json", json.dumps({**result.to_dict(), "training_pflop": pflop}, indent=2))
    save_safetensors({"model": model.state_dict(), **model_identity(config, data.classes)},
                     run_dir / "model.safetensors")
    reporting.plot_confusion(result, run_dir / "confusion.png")
    reporting.plot_reliability(result, run_dir / "reliability.png")
    reporting.plot_samples(split.images, split.labels, result.predictions, data.classes,
                           run_dir / "samples.png")
    reporting.plot_gradcam_panel(model, split.images, split.labels, result.predictions, data.classes,
                                 run_dir / "gradcam.png")
    total = sum(h["seconds"] for h in history)
    reporting.write_report(run_dir, config.to_dict(), history, result, extra={
        "final accuracy": f"{100 * result.accuracy:.2f}% on the {split_name} split ({len(split)} images)",
        "best validation accuracy": (f"{100 * max(h['val_acc'] for h in history if h['val_acc'] is not None):.2f}%"
                                     if any(h["val_acc"] is not None for h in history) else "n/a"),
        "training time": f"{total:.0f} s over {len(history)} epochs",
        "training compute": (f"{pflop:.3g} PFLOP (forward FLOPs x 3 x {len(data.train)} images x {config.epochs} "
                             "epochs)"),
        "device": device_name(device),
        "package version": __version__,
    })
    if config.progress:
        tqdm.write(f"final evaluation on the {split_name} split:\n{result.table()}")
    return result
