"""What moves the weights: the optimizer and its parameter groups, the learning-rate schedule, and the two
weight averages (EMA, airbench's lookahead)."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable
from typing import Any

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


NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic Newton-Schulz iteration of Muon (Keller Jordan)


def orthogonalize(update: torch.Tensor, dtype: torch.dtype, steps: int = 5) -> torch.Tensor:
    """Newton-Schulz iteration towards the nearest semi-orthogonal matrix of ``update`` (its singular values end
    near 1), computed in ``dtype``. torch.optim.Muon always computes it in bf16, which a CPU without bf16
    instructions emulates at a twentieth of its fp32 speed; here it follows the run's precision."""
    a, b, c = NS_COEFFICIENTS
    x = update.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).to(update.dtype)


class Muon(torch.optim.Optimizer):
    """Muon: Nesterov momentum, then each weight's update orthogonalised by ``orthogonalize`` (a convolution's
    filter bank as the out x (in*k*k) matrix it is), scaled by sqrt(max(1, rows / cols)) as torch.optim.Muon
    does, with decoupled weight decay. The momentum buffers have the shape of their weights."""

    def __init__(self, params: Iterable[dict[str, Any]], lr: float, momentum: float, weight_decay: float,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.dtype = dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        assert closure is None, "Muon takes no closure"
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # created once, not allocated again every step
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buffer, group["momentum"]).flatten(1)  # Nesterov
                update = orthogonalize(update, self.dtype) * max(1.0, update.size(0) / update.size(1)) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.reshape(p.shape), alpha=-group["lr"])


class Optimizers(torch.optim.Optimizer):
    """Several optimizers stepped as one: they share their parameter groups with it, so one lr schedule, one
    grad scaler and one checkpoint entry serve them all."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers
        super().__init__([g for o in optimizers for g in o.param_groups], {})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:
        assert closure is None, "the optimizers are stepped together, without a closure"
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"the checkpoint holds {len(saved)} optimizers, this run has {len(self.optimizers)}")
        for optimizer, state in zip(self.optimizers, saved, strict=True):
            optimizer.load_state_dict(state)


def build_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD/Adam/AdamW over parameter groups of equal (lr, weight decay), each in model order (so that earlier
    runs' optimizer states still load): the weights; the BatchNorm shifts at ``--norm-bias-lr-scale`` times the
    lr and the same decay per step; the other 1-d parameters. Under ``--no-decay-norm-bias`` the 1-d ones get
    no weight decay. ``--optimizer muon`` moves the convolution filters and the hidden fully-connected weights
    to Muon (``--muon-lr``, ``--muon-momentum``, ``--muon-weight-decay``) and leaves the rest, the output
    layer among them, to Nesterov SGD."""
    trainable = [p for p in model.parameters() if p.requires_grad]  # not a --whiten layer's frozen filters
    matrices: list[torch.Tensor] = []
    if config.optimizer == "muon":
        output = model.classifier[-1].weight if hasattr(model, "classifier") else None
        matrices = [p for p in trainable if p.ndim > 1 and p is not output]
        in_muon = {id(p) for p in matrices}
        trainable = [p for p in trainable if id(p) not in in_muon]
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
    sgd = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, nesterov=True,
                          weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return sgd
    muon = Muon([{"params": matrices}], lr=config.muon_lr, momentum=config.muon_momentum,
                weight_decay=config.muon_weight_decay,
                dtype=torch.bfloat16 if config.precision == "bf16" else torch.float32)
    return Optimizers(sgd, muon)


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
