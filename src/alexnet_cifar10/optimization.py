"""What moves the weights: the optimizer and its parameter groups, the learning-rate schedule, and the two
weight averages (EMA, airbench's lookahead)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from alexnet_cifar10.config import Config
from alexnet_cifar10.models import batch_norms


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
    """airbench's lookahead after optimizer step ``step`` of ``total``: every ``LOOKAHEAD_EVERY`` steps
    the average moves toward the weights with a decay of 0.95^5 * progress^3 and the weights are set to it, so
    early training runs free and late training is held to a slow average; the last step ends on it. A last step
    that is also a fifth step blends first, as airbench's loop does (the update, then the final sync)."""
    if step % LOOKAHEAD_EVERY and step != total:
        return
    fifth = step % LOOKAHEAD_EVERY == 0
    slow_weights.update(model, decay=0.95 ** LOOKAHEAD_EVERY * (step / total) ** 3 if fifth else 1.0)
    for a, w in zip(slow_weights.module.state_dict().values(), model.state_dict().values(), strict=True):
        w.copy_(a)


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


def lr_factor(config: Config, steps_per_epoch: int) -> Callable[[int], float]:
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
