"""What a checkpoint of a run holds: the weights and everything else that changes from step to step."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alexnet_cifar10.checkpoint import rng_state, set_rng_state
from alexnet_cifar10.errors import CheckpointError, first_line
from alexnet_cifar10.models import AlexNet
from alexnet_cifar10.optimization import EMA


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

    def to_checkpoint(self) -> dict[str, Any]:
        """Tensors and plain values only, so that a weights_only load reads them back."""
        return {
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
            self.epoch, self.step, self.global_step = int(saved["epoch"]), int(saved["step"]), int(saved["global_step"])
            self.best_acc, self.history = float(saved["best_acc"]), list(saved["history"])
            self.partial = EpochStats(**saved["partial"])
            set_rng_state(saved["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"the checkpoint does not fit the run's config ({first_line(e)})") from None
