"""torchrun / DistributedDataParallel set-up: one process per GPU (or per CPU worker with gloo).

Each rank holds the whole data set and trains on its slice of every global batch (the loader
shares one permutation per epoch), so ``--batch-size`` stays the global batch. Rank 0 alone
prints, plots and writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from alexnet_cifar10.config import Bounds
from alexnet_cifar10.errors import ConfigError, TrainingError, first_line, shortened, shown
from alexnet_cifar10.models import batch_norms


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


MAX_WORLD = 65_536
TIMEOUT_BOUNDS = Bounds(0, 86_400, low_open=True)  # seconds a rank waits for the others


def environment_number(name: str, default: str, bounds: Bounds, kind: type = int) -> float:
    """A number from the environment, within ``bounds``, or one line naming the variable."""
    text = os.environ.get(name, default).strip()
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not bounds.holds(value):
        raise ConfigError(f"environment variable {name}={shown(text)} must be a number in {bounds}"
                          + ("; launch with torchrun, which sets RANK, WORLD_SIZE and LOCAL_RANK"
                             if name in ("RANK", "WORLD_SIZE", "LOCAL_RANK") else ""))
    return value


def launched_by_torchrun() -> bool:
    return environment_number("WORLD_SIZE", "1", Bounds(1, MAX_WORLD)) > 1


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group that torchrun describes in the environment (no-op otherwise)."""
    if not launched_by_torchrun():
        return Dist(), device
    world = int(environment_number("WORLD_SIZE", "1", Bounds(1, MAX_WORLD)))
    rank = int(environment_number("RANK", "", Bounds(0, world - 1)))
    local_rank = int(environment_number("LOCAL_RANK", "0", Bounds(0, world - 1)))
    seconds = environment_number("ALEXNET_CIFAR10_DIST_TIMEOUT", "120", TIMEOUT_BOUNDS, float)
    if "MASTER_PORT" in os.environ:  # read by torch's rendezvous, which would end in a traceback
        environment_number("MASTER_PORT", "", Bounds(1, 65_535))
    if device.type == "mps":
        raise ConfigError("torchrun with --device mps is not supported (no collective backend for MPS); use "
                          "--device cpu or cuda")
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        collective(lambda: dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                                   timeout=timedelta(seconds=seconds)))
    return Dist(rank, world, local_rank), device


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """DDP around ``model``; BatchNorm synchronised across ranks on CUDA."""
    if not d.enabled:
        return model
    has_bn = bool(batch_norms(model))
    if has_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif has_bn and d.is_main:
        print("warning: SyncBatchNorm needs CUDA; on the CPU each rank keeps its own BatchNorm statistics")
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_sum(values: list[float], d: Dist, device: torch.device) -> list[float]:
    """Sum plain numbers over the ranks (one collective)."""
    if not d.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    collective(lambda: dist.all_reduce(t))
    return t.tolist()


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    return bool(all_sum([float(flag)], d, device)[0]) if d.enabled else flag


def peer_error(e: BaseException) -> TrainingError:
    return TrainingError(f"a distributed peer failed or timed out ({shortened(first_line(e), 200)}); the job stops")


def collective(fn):  # noqa: ANN001, ANN201
    """Run a collective; a peer that died or timed out becomes one clear error."""
    try:
        return fn()
    except (RuntimeError, dist.DistError) as e:
        raise peer_error(e) from None


def cleanup(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
