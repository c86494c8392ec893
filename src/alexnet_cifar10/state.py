"""What a checkpoint of a run holds: the weights and everything else that changes from step to step."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alexnet_cifar10.checkpoint import rng_state, set_rng_state
from alexnet_cifar10.config import Config
from alexnet_cifar10.errors import CheckpointError, first_line, shortened
from alexnet_cifar10.models import AlexNet
from alexnet_cifar10.optimization import EMA
from alexnet_cifar10.version import __version__


@dataclass
class EpochStats:
    """Sums over an epoch's training steps on every rank; a checkpoint inside an epoch keeps them."""

    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


# The types of a metrics row (training.end_of_epoch writes them); a checkpoint's history is checked against them
HISTORY_ROW: dict[str, tuple[type, bool]] = {  # name: (int or float, may be None)
    "epoch": (int, False), "train_loss": (float, False), "train_acc": (float, False), "val_loss": (float, True),
    "val_acc": (float, True), "lr": (float, False), "seconds": (float, False), "images_per_s": (float, False),
}
PARTIAL_ROW = {f.name: (f.type if isinstance(f.type, type) else {"float": float, "int": int}[f.type], False)
               for f in dataclasses.fields(EpochStats)}


def _fits(value: object, kind: type, optional: bool) -> bool:
    """Whether ``value`` is a finite number of ``kind`` (an int for an int, any finite number for a float) that
    fits in 64 bits, or None where that is allowed."""
    if value is None:
        return optional
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        return False
    return -(2**63) <= value < 2**63 if isinstance(value, int) else math.isfinite(value)


def checked_row(raw: object, fields: dict[str, tuple[type, bool]], what: str) -> dict[str, Any]:
    """``raw`` when it is a dict of exactly ``fields``, each value of its type; else CheckpointError."""
    if not isinstance(raw, dict) or set(raw) != set(fields):
        raise CheckpointError(f"the checkpoint's {what} is not a record of {', '.join(fields)}")
    for name, (kind, optional) in fields.items():
        if not _fits(raw[name], kind, optional):
            raise CheckpointError(f"the checkpoint's {what} has {name} = {shortened(repr(raw[name]), 40)}, not "
                                  f"{'an integer' if kind is int else 'a finite number'}")
    return dict(raw)


def checked_progress(saved: dict[str, Any]) -> tuple[int, int, int, float, list[dict[str, Any]], EpochStats]:
    """A checkpoint's counters, best accuracy, history and partial epoch, each type- and range-checked: a file
    that passes torch's safe loader can still hold anything there."""
    counters = {name: saved.get(name) for name in ("epoch", "step", "global_step")}
    for name, value in counters.items():
        if not _fits(value, int, False) or value < 0:
            raise CheckpointError(f"the checkpoint's {name} is {shortened(repr(value), 40)}, not a count")
    if not _fits(saved.get("best_acc"), float, False) or not -1 <= saved["best_acc"] <= 1:
        raise CheckpointError(f"the checkpoint's best_acc is {shortened(repr(saved.get('best_acc')), 40)}, not an "
                              "accuracy")
    raw = saved.get("history")
    if not isinstance(raw, list) or len(raw) != counters["epoch"]:
        raise CheckpointError(f"the checkpoint's history is not a list of its {counters['epoch']} epochs")
    history = [checked_row(row, HISTORY_ROW, f"history entry {i + 1}") for i, row in enumerate(raw)]
    if any(row["epoch"] != i + 1 for i, row in enumerate(history)):
        raise CheckpointError("the checkpoint's history does not list its epochs in order")
    partial = EpochStats(**checked_row(saved.get("partial"), PARTIAL_ROW, "partial epoch"))
    return counters["epoch"], counters["step"], counters["global_step"], float(saved["best_acc"]), history, partial


def model_identity(config: Config, classes: Sequence[str]) -> dict[str, Any]:
    """What a checkpoint or model.safetensors holds beside the weights: the network to rebuild, the run's settings
    (evaluate and predict take its test-time augmentation from them), the class names and the package version."""
    return {"model_name": config.model, "model_kwargs": {"dropout": config.dropout}, "config": config.to_dict(),
            "classes": list(classes), "version": __version__}


@dataclass
class TrainState:
    """Everything that changes from step to step; ``to_checkpoint`` and ``load`` are its checkpoint entries.
    ``forward`` is the model as the steps call it (DDP-wrapped, compiled); it holds no state of its own."""

    model: AlexNet
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: EMA | None = None
    slow_weights: EMA | None = None  # lookahead's
    epoch: int = 0  # epochs done
    step: int = 0  # steps done in the epoch under way (a checkpoint inside an epoch)
    global_step: int = 0
    best_acc: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: EpochStats = field(default_factory=EpochStats)  # the epoch under way, up to ``step``

    @property
    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def to_checkpoint(self, config: Config, classes: Sequence[str]) -> dict[str, Any]:
        """The checkpoint of this state (``model_identity`` and the training state). Tensors and plain values
        only, so that a weights_only load reads them back."""
        return {
            **model_identity(config, classes),
            "model": self.model.state_dict(),
            "ema_model": self.ema.module.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "lookahead_model": self.slow_weights.module.state_dict() if self.slow_weights is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "global_step": self.global_step,
            "best_acc": self.best_acc, "history": self.history, "partial": dataclasses.asdict(self.partial),
            "rng": rng_state(),
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Continue from a checkpoint's entries, RNG streams included."""
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            if self.ema is not None and saved.get("ema_model") is not None:
                self.ema.module.load_state_dict(saved["ema_model"])
                self.ema.updates = int(saved["ema_updates"])
            if self.slow_weights is not None:
                self.slow_weights.module.load_state_dict(saved["lookahead_model"])
            self.epoch, self.step, self.global_step, self.best_acc, self.history, self.partial = checked_progress(saved)
            set_rng_state(saved["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint does not fit the run's config ({first_line(e)})") from None
