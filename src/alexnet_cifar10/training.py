"""The training loop: one run folder in, one trained model out. Read it top to bottom."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from alexnet_cifar10 import __version__, distributed, reporting
from alexnet_cifar10.checkpoint import load_checkpoint, rng_state, save_checkpoint, save_safetensors, set_rng_state
from alexnet_cifar10.config import Config, flag, load_config
from alexnet_cifar10.data import Cifar10, load_cifar10
from alexnet_cifar10.data.loader import ResidentLoader
from alexnet_cifar10.device import (
    autocast,
    configure_backends,
    resolve_precision,
    select_device,
)
from alexnet_cifar10.errors import CheckpointError, ConfigError, TrainingError, first_line
from alexnet_cifar10.evaluation import EvalResult, evaluate
from alexnet_cifar10.io import atomic_write_text
from alexnet_cifar10.models import AlexNet, batch_norms, create_model, dirac_init, freeze_first_conv, whiten_first_conv


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


class EMA:
    """Exponential moving average of the weights (and buffers), with timm's warm-up of the decay
    so that early epochs are not dominated by the random initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay, self.updates = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module, decay: float | None = None) -> None:
        """Move the average toward ``model``; ``decay`` overrides the warmed-up ``self.decay``."""
        self.updates += 1
        decay_now = min(self.decay, (1 + self.updates) / (10 + self.updates)) if decay is None else decay
        pairs = list(zip(self.module.state_dict().values(), model.state_dict().values(), strict=True))
        floats = [(e, c) for e, c in pairs if e.is_floating_point()]
        torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], 1 - decay_now)
        for e, c in pairs:
            if not e.is_floating_point():
                e.copy_(c)


LOOKAHEAD_EVERY = 5


@torch.no_grad()
def lookahead(slow_weights: EMA, model: nn.Module, step: int, total: int) -> None:
    """airbench's lookahead after optimizer step ``step`` of ``total``: every ``LOOKAHEAD_EVERY`` steps the
    the average moves toward the weights with a decay of 0.95^5 * progress^3 and the weights are set to it, so
    early training runs free and late training is held to a slow average; the last step ends on it. A last step
    that is also a fifth step blends first, as airbench's loop does (the update, then the final sync)."""
    if step % LOOKAHEAD_EVERY and step != total:
        return
    fifth = step % LOOKAHEAD_EVERY == 0
    slow_weights.update(model, decay=0.95 ** LOOKAHEAD_EVERY * (step / total) ** 3 if fifth else 1.0)
    for a, w in zip(slow_weights.module.state_dict().values(), model.state_dict().values(), strict=True):
        w.copy_(a)


# --------------------------------------------------------------------------- set-up helpers
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


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW over parameter groups of equal (lr, weight decay), each in model order (so that earlier
    runs' optimizer states still load): the weights; the BatchNorm shifts at ``--norm-bias-lr-scale`` times the
    lr and the same decay per step; the other 1-d parameters. Under ``--no-decay-norm-bias`` the 1-d ones get
    no weight decay."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # not a --whiten layer's frozen filters
    shifts = {id(bn.bias) for bn in batch_norms(model) if bn.bias is not None}
    scale, decay = config.norm_bias_lr_scale, config.weight_decay if config.decay_norm_bias else 0.0
    groups: dict[tuple[float, float], list[torch.Tensor]] = {(config.lr, config.weight_decay): []}
    for p in trainable:
        if p.ndim > 1:
            key = (config.lr, config.weight_decay)
        elif id(p) in shifts:
            key = (config.lr * scale, decay / scale)
        else:
            key = (config.lr, decay)
        groups.setdefault(key, []).append(p)
    params = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items() if ps]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                           weight_decay=config.weight_decay)


def lr_factor(config: Config, steps_per_epoch: int):  # noqa: ANN201 - a step -> factor function
    """The learning rate at a step, as a fraction of ``--lr``."""
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if config.schedule == "onecycle":  # linear up for 25 % of the run, then linear to zero
            peak = 0.25 * total
            return step / peak if step < peak else max(0.0, (total - step) / (total - peak))
        if step < warmup:
            return min(1.0, (step + 1) / warmup)
        progress = min(1.0, (step - warmup) / max(1.0, total - warmup))
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return factor


def git_commit(folder: Path = Path(__file__).parent) -> str:
    """HEAD of the checkout holding ``folder`` (the package), with "+dirty" when tracked files under
    ``folder`` differ from HEAD; "unknown" outside a git checkout."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5)

    try:
        out = git("rev-parse", "HEAD")
        commit = out.stdout.strip()
        if out.returncode != 0 or len(commit) != 40:
            return "unknown"
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".")
        return commit + ("+dirty" if changed.returncode == 0 and changed.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@contextmanager
def stop_requests():
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


RUN_FILES = ("last.pt", "best.pt", "config.json", "metrics.jsonl", "curves.png", "confusion.png", "samples.png",
             "report.html", "final.json", "model.safetensors")


def make_run_dir(config: Config, resume: bool, create: bool = True) -> Path:
    """The run folder; ``create=False`` (ranks other than 0) checks it without writing anything."""
    if config.out:
        run_dir = Path(config.out)
    else:
        name = config.name or f"{config.recipe}-{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path("runs") / name
    if not resume and (run_dir / "last.pt").exists():
        raise ConfigError(
            f"{run_dir} already holds a run; continue it with --resume {run_dir} or pick another --out/--name"
        )
    if not resume and run_dir.is_dir():  # never write over a user's own files
        foreign = sorted(p.name for p in run_dir.iterdir()
                         if p.name not in (*RUN_FILES, "tensorboard") and not p.name.startswith("."))
        if foreign:
            raise ConfigError(f"{run_dir} holds files that are not a run's ({', '.join(foreign[:3])}"
                              f"{', ...' if len(foreign) > 3 else ''}); give --out a new or empty folder")
    if not create:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:  # temp files of writes that a crash interrupted
            for stale in run_dir.glob(f".{name}.*.tmp"):
                stale.unlink()
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write to run folder {run_dir}: {e.strerror or e}") from None
    return run_dir


# --------------------------------------------------------------------------- the run
STOP_CHECK = 10  # steps between the collective checks for SIGINT/SIGTERM under torchrun
RESUME_OVERRIDES = ("epochs", "device", "progress", "threads", "checkpoint_every", "data", "deterministic")


def train(config: Config, *, resume: str | Path | None = None, data: Cifar10 | None = None,
          overrides: dict[str, Any] | None = None, cache_dir: str | None = None) -> TrainResult:
    """Train ``config`` into a run folder.

    ``resume`` (a run folder or checkpoint) continues that run from its last.pt with its saved
    config; ``overrides`` may change only ``RESUME_OVERRIDES`` (e.g. more epochs).
    """
    state: dict[str, Any] | None = None
    if resume is not None:
        resume = Path(resume)
        checkpoint_file = resume / "last.pt" if resume.is_dir() else resume
        state = load_checkpoint(checkpoint_file)
        missing = [k for k in ("optimizer", "scheduler", "scaler", "epoch", "step", "rng", "partial") if k not in state]
        if missing:
            raise CheckpointError(f"{checkpoint_file}: holds weights but no training state ({', '.join(missing)}); "
                                  "--resume needs a run's last.pt")
        config = resumed_config(resume, overrides or {})
        check_resume_model(config, state, checkpoint_file)
    config.validate()
    device = select_device(config.device)
    # config.json and the checkpoints record what the run computes in, not "auto": a resume keeps it
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    dist, device = distributed.setup(device)
    try:
        return _train(config, state, data, device, dist, cache_dir)
    except (RuntimeError, torch.distributed.DistError) as e:
        if not dist.enabled:
            raise
        raise distributed.peer_error(e) from None
    finally:
        distributed.cleanup(dist)


def resumed_config(resume: Path, overrides: dict[str, Any]) -> Config:
    """The config a resumed run continues with: the config.json of ``resume`` (a run folder or a checkpoint in
    one), with the few ``overrides`` a resume allows."""
    run_dir = resume if resume.is_dir() else resume.parent
    bad = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if bad:
        raise ConfigError(f"--resume keeps the run's config; only {', '.join(map(flag, RESUME_OVERRIDES))} "
                          f"may change, not {', '.join(map(flag, bad))}")
    return Config.from_dict({**load_config(run_dir / "config.json").to_dict(), **overrides, "out": str(run_dir)})


def model_identity(config: Config) -> dict[str, Any]:
    """What a checkpoint or model.safetensors needs beside the weights: the network to rebuild, and the run's
    settings (evaluate and predict take its test-time augmentation from them)."""
    return {"model_name": config.model, "model_kwargs": {"dropout": config.dropout}, "config": config.to_dict()}


def check_resume_model(config: Config, state: dict[str, Any], checkpoint_file: Path) -> None:
    """The run's config.json must describe the network its last.pt holds (a hand-edited or older config.json
    would otherwise rebuild another network, or silently train on with another dropout or first layer)."""
    trained = state.get("config") or {}
    saved = {"model": state.get("model_name", config.model),
             "dropout": (state.get("model_kwargs") or {}).get("dropout", config.dropout),
             "whiten": trained.get("whiten", False),
             "lookahead": trained.get("lookahead", False)}
    for name, value in saved.items():
        if getattr(config, name) != value:
            raise CheckpointError(f"{checkpoint_file} holds a run with --{name} {value}, but its config.json says "
                                  f"{getattr(config, name)}; fix config.json or start a new run")


PROVENANCE = ("version", "git_commit", "torch", "device_name", "world_size")


def provenance(run_dir: Path, state: dict[str, Any] | None, device: torch.device, world: int) -> dict[str, Any]:
    """Where the run was made, for config.json. A resumed run keeps where it started and adds one entry per
    resume to ``resumes`` (the code or machine may have changed between the two)."""
    now = {"version": __version__, "git_commit": git_commit(), "torch": torch.__version__,
           "device_name": device_name(device), "world_size": world}
    if state is None:
        return now
    try:
        before = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):  # train() has read it already; a file gone since keeps only this start
        before = {}
    started = {k: before.get(k, now[k]) for k in PROVENANCE}
    earlier = before.get("resumes")
    resumes = [r for r in earlier if isinstance(r, dict)] if isinstance(earlier, list) else []
    where = {"epochs_done": state["epoch"], "steps_into_epoch": state["step"]}
    return {**started, "resumes": [*resumes, {**where, **now}]}


def _train(config: Config, state: dict[str, Any] | None, data: Cifar10 | None, device: torch.device,
           dist: distributed.Dist, cache_dir: str | None) -> TrainResult:
    configure_backends(config, device)
    is_main = dist.is_main  # rank 0 alone prints, plots and writes the run folder
    if dist.enabled and config.name == "" and config.out == "":
        raise ConfigError("under torchrun give the run folder explicitly (--out DIR or --name NAME), so that "
                          "every rank agrees on it")
    run_dir = make_run_dir(config, resume=state is not None, create=is_main)
    progress = config.progress and is_main

    # data: everything resident on the device as uint8
    if data is None:
        data = load_cifar10(config.data, val_size=config.val_size, seed=config.split_seed,
                            cache_dir=cache_dir, progress=progress)
    if len(data.train) == 0:
        raise TrainingError(f"{data.source}: the data has no training split to train on")
    torch.manual_seed(config.seed)
    loader = ResidentLoader(data.train.images, data.train.labels, config.batch_size, train=True,
                            device=device, seed=config.seed, pad=config.crop_pad, flip=config.flip,
                            alternate_flip=config.alternate_flip, cutout=config.cutout,
                            channels_last=config.channels_last, rank=dist.rank, world=dist.world)
    if len(loader) == 0:
        raise ConfigError(f"--batch-size {config.batch_size} is larger than the {len(data.train)} training images")
    if config.batch_size % dist.world:
        raise ConfigError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                          f"{dist.world} ranks, so that every rank gets an equal slice")
    val_loader = None
    if data.val is not None and len(data.val):
        val_loader = ResidentLoader(data.val.images, data.val.labels, 1000, train=False, device=device,
                                    channels_last=config.channels_last)

    # model, optimizer, schedule
    model: AlexNet = create_model(config.model, dropout=config.dropout)
    model.set_normalization(*mean_std(data.train.images))
    if config.dirac_init:  # a resumed run's weights come from its checkpoint
        dirac_init(model)
    for bn in batch_norms(model):
        bn.momentum = config.bn_momentum
    if config.whiten:  # on resume the checkpoint holds the filters: only the freezing is redone
        if state is not None:
            freeze_first_conv(model)
        else:
            whiten_first_conv(model, data.train.images)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, len(loader)))
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    ema = EMA(model, config.ema) if config.ema else None
    slow_weights = EMA(model, 0.0) if config.lookahead else None  # lookahead's slow weights
    total_steps = config.epochs * len(loader)
    if slow_weights is not None and total_steps < LOOKAHEAD_EVERY and is_main:
        print(f"warning: --lookahead averages every {LOOKAHEAD_EVERY} steps and this run has {total_steps}, so it "
              "ends on its starting weights; add --no-lookahead", file=sys.stderr)
    wrapped = distributed.wrap(model, dist, device)
    forward = torch.compile(wrapped) if config.compile else wrapped
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    history: list[dict[str, Any]] = []
    start_epoch, start_step, global_step, best_acc = 0, 0, 0, -1.0
    partial = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    if state is not None:
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema_model") is not None:
                ema.module.load_state_dict(state["ema_model"])
                ema.updates = state["ema_updates"]
            if slow_weights is not None:
                slow_weights.module.load_state_dict(state["lookahead_model"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"the checkpoint does not fit the run's config ({first_line(e)})") from None
        start_epoch, start_step, global_step = state["epoch"], state["step"], state["global_step"]
        best_acc, history = state["best_acc"], list(state["history"])
        partial = dict(state["partial"])
        set_rng_state(state["rng"])
    if dist.rank:  # rank 0 keeps the single-process RNG stream; the others get their own dropout masks
        torch.manual_seed(config.seed * 1_000_003 + dist.rank * 7919 + global_step)

    cfg = config.to_dict()
    if is_main:
        atomic_write_text(run_dir / "config.json", json.dumps(
            {**cfg, **provenance(run_dir, state, device, dist.world)}, indent=2))
    writer = open_tensorboard(run_dir) if config.tensorboard and is_main else None

    def checkpoint(epoch: int, step: int, path: Path, sums: dict[str, Any]) -> None:
        if not is_main:
            return
        save_checkpoint(path, {
            **model_identity(config),
            "model": model.state_dict(),
            "ema_model": ema.module.state_dict() if ema is not None else None,
            "ema_updates": ema.updates if ema is not None else 0,
            "lookahead_model": slow_weights.module.state_dict() if slow_weights is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "epoch": epoch, "step": step, "global_step": global_step,
            "best_acc": best_acc, "history": history, "partial": sums,
            "rng": rng_state(), "version": __version__,
            "classes": list(data.classes),
        })

    def eval_model() -> nn.Module:
        return ema.module if ema is not None else model

    def totals(loss: torch.Tensor, correct: torch.Tensor, seen: int, partial: dict[str, Any],
               t0: float) -> dict[str, Any]:
        """Epoch sums over every rank (one collective when distributed), plus what a resumed
        checkpoint had already summed."""
        loss_sum, n_correct, images = distributed.all_sum([float(loss), float(correct), seen], dist, device)
        return {"loss_sum": partial["loss_sum"] + loss_sum, "correct": partial["correct"] + int(n_correct),
                "seen": partial["seen"] + int(images), "seconds": time.perf_counter() - t0}

    with stop_requests() as stop:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            dev_loss = torch.zeros((), dtype=torch.float64, device=device)
            dev_correct = torch.zeros((), dtype=torch.int64, device=device)
            seen = 0  # this rank's images since the epoch (re)started; partial holds the rest, summed

            t0 = time.perf_counter() - partial["seconds"]
            bar = tqdm(total=len(loader), initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not progress, unit="step", leave=False)
            for step, (x, y) in enumerate(loader.iterate(epoch, start_step), start=start_step):
                with autocast(device, config.precision):
                    logits = forward(x)
                    loss = criterion(logits, y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                global_step += 1
                if slow_weights is not None:
                    lookahead(slow_weights, model, global_step, total_steps)
                if ema is not None:
                    ema.update(model)
                dev_loss += loss.detach().double() * len(y)
                dev_correct += (logits.argmax(1) == y).sum()
                seen += len(y)
                bar.update(1)
                if progress and (step % 25 == 0 or step == len(loader) - 1):  # the only sync, for the bar
                    bar.set_postfix(loss=f"{float(dev_loss) / seen:.3f}", acc=f"{int(dev_correct) / seen:.3f}",
                                    ips=f"{dist.world * seen / (time.perf_counter() - t0 - partial['seconds']):.0f}")
                # a collective under torchrun, so only every STOP_CHECK steps (and identically on every rank)
                stopping = (stop["signal"] is not None if not dist.enabled else
                            global_step % STOP_CHECK == 0 and distributed.any_rank(stop["signal"] is not None, dist,
                                                                                     device))
                if stopping or (config.checkpoint_every and global_step % config.checkpoint_every == 0):
                    sums = totals(dev_loss, dev_correct, seen, partial, t0)
                    if not math.isfinite(sums["loss_sum"]):
                        raise TrainingError(non_finite_message(epoch, run_dir))
                    checkpoint(epoch, step + 1, run_dir / "last.pt", sums)
                if stopping:
                    bar.close()
                    code = 130 if stop["signal"] == signal.SIGINT else 143
                    raise Interrupted(f"interrupted at epoch {epoch + 1} step {step + 1}; checkpoint "
                                      f"written; continue with: alexnet-cifar10 train --resume {run_dir}", code)
            bar.close()
            sums = totals(dev_loss, dev_correct, seen, partial, t0)
            seconds = sums["seconds"]
            train_loss = sums["loss_sum"] / max(sums["seen"], 1)
            train_acc = sums["correct"] / max(sums["seen"], 1)
            if not math.isfinite(train_loss):
                raise TrainingError(non_finite_message(epoch, run_dir))
            row: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                                   "val_loss": None, "val_acc": None,
                                   "lr": optimizer.param_groups[0]["lr"], "seconds": seconds,
                                   "images_per_s": sums["seen"] / seconds if seconds else 0.0}
            if val_loader is not None:  # plain images: --tta is for the final evaluation, at half the cost
                result = evaluate(eval_model(), data.val.images, data.val.labels, loader=val_loader,
                                  device=device, precision=config.precision)
                row["val_loss"], row["val_acc"] = result.loss, result.accuracy
            history.append(row)
            start_step, partial = 0, {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            improved = row["val_acc"] is not None and row["val_acc"] > best_acc
            if improved:
                best_acc = row["val_acc"]
            if improved or val_loader is None:  # best.pt first: a crash between the two keeps them consistent
                checkpoint(epoch + 1, 0, run_dir / "best.pt", partial)
            checkpoint(epoch + 1, 0, run_dir / "last.pt", partial)
            if is_main:
                write_metrics(run_dir, history)
                reporting.plot_curves(history, run_dir / "curves.png")
            if writer is not None:
                for key, value in row.items():
                    if key != "epoch" and value is not None:
                        writer.add_scalar(key, value, epoch + 1)
            if progress:
                val = ("" if row["val_acc"] is None
                       else f" val_loss {row['val_loss']:.4f} val_acc {100 * row['val_acc']:.2f}%")
                tqdm.write(f"epoch {epoch + 1:>3}/{config.epochs} train_loss {train_loss:.4f} "
                           f"train_acc {100 * train_acc:.2f}%{val} {row['images_per_s']:.0f} img/s "
                           f"{seconds:.1f}s")
    if writer is not None:
        writer.close()

    final = finish(run_dir, config, data, eval_model(), history, device) if is_main else None
    return TrainResult(run_dir=run_dir, history=history, final=final, model=eval_model())


def non_finite_message(epoch: int, run_dir: Path) -> str:
    return (f"the loss became NaN or infinite in epoch {epoch + 1}; stopped. The last good checkpoint "
            f"is {run_dir / 'last.pt'}; try a lower --lr")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in history))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def open_tensorboard(run_dir: Path):  # noqa: ANN201 - SummaryWriter when installed
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("--tensorboard needs the tensorboard package: "
                          "pip install 'alexnet-cifar10[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def finish(run_dir: Path, config: Config, data: Cifar10, model: nn.Module, history: list[dict[str, Any]],
           device: torch.device) -> EvalResult | None:
    """Final evaluation (test split if any, else val), figures and report.html."""
    split_name = data.eval_split_name()
    split = data.split(split_name)
    result = evaluate(model, split.images, split.labels, split=split_name, device=device,
                      precision=config.precision, tta=config.tta, tta_shift=config.tta_shift,
                      channels_last=config.channels_last)
    atomic_write_text(run_dir / "final.json", json.dumps(result.to_dict(), indent=2))
    save_safetensors({"model": model.state_dict(), **model_identity(config)}, run_dir / "model.safetensors")
    reporting.plot_confusion(result, run_dir / "confusion.png")
    reporting.plot_samples(split.images, split.labels, result.predictions, data.classes,
                           run_dir / "samples.png")
    total = sum(h["seconds"] for h in history)
    reporting.write_report(run_dir, config.to_dict(), history, result, extra={
        "final accuracy": f"{100 * result.accuracy:.2f}% on the {split_name} split ({len(split)} images)",
        "best validation accuracy": (f"{100 * max(h['val_acc'] for h in history if h['val_acc'] is not None):.2f}%"
                                     if any(h["val_acc"] is not None for h in history) else "n/a"),
        "training time": f"{total:.0f} s over {len(history)} epochs",
        "device": device_name(device),
        "package version": __version__,
    })
    if config.progress:
        tqdm.write(f"final evaluation on the {split_name} split:\n{result.table()}")
    return result
