"""Training throughput: the real loop vs the compute-only ceiling vs a seed-style DataLoader, and MFU."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.benchmark import Timer
from torch.utils.data import DataLoader, Dataset

from alexnet_cifar10.config import Config
from alexnet_cifar10.data.loader import ResidentLoader
from alexnet_cifar10.device import autocast, native_bf16, synchronize, time_precisions
from alexnet_cifar10.models import create_model, forward_flops
from alexnet_cifar10.training import mean_std


class SeedStyleDataset(Dataset):
    """Per-image PIL transforms as the original notebook does them through torchvision:
    pad-4 random crop, random horizontal flip, to tensor, normalise."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float]) -> None:
        self.images = images.permute(0, 2, 3, 1).numpy()
        self.labels = labels.numpy()
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = ImageOps.expand(Image.fromarray(self.images[i]), border=4, fill=0)
        dx, dy = np.random.randint(0, 9, size=2)
        img = img.crop((dx, dy, dx + 32, dy + 32))
        if np.random.rand() < 0.5:
            img = ImageOps.mirror(img)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        return (x - self.mean) / self.std, int(self.labels[i])


def matmul_rate(device: torch.device, precision: str, repeats: int = 5) -> float:
    """The machine's measured dense matmul FLOP/s at ``precision`` (best of ``repeats``)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        t = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times[1:])


def time_steps(step: Callable[[torch.Tensor, torch.Tensor], None], batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
               steps: int, warmup: int, device: torch.device, batch_size: int) -> float:
    """Images/s over ``steps`` steps after ``warmup`` steps; batch creation is inside the timing. PyTorch's
    benchmark Timer times them (garbage collection off, CUDA synchronised, the run's thread count)."""
    for _ in range(warmup):
        step(*next(batches))
    synchronize(device)
    timer = Timer("step(*next(batches)); synchronize(device)", num_threads=torch.get_num_threads(),
                  globals={"step": step, "batches": batches, "synchronize": synchronize, "device": device})
    return batch_size / timer.timeit(steps).mean


def spread(values: list[float]) -> float | None:
    """(largest - smallest) / median of repeated measurements: how far apart the repeats fell."""
    return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else None


def seed_style_rates(images: torch.Tensor, labels: torch.Tensor, mean: list[float], std: list[float],
                     step: Callable[[torch.Tensor, torch.Tensor], None], *, device: torch.device, batch_size: int,
                     steps: int, warmup: int, repeats: int) -> list[float]:
    """Images/s of ``step`` fed as the original notebook feeds it: a 2-worker DataLoader of PIL transforms."""
    dataset = SeedStyleDataset(images, labels, mean, std)
    dl = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2, drop_last=True,
                    persistent_workers=True, pin_memory=device.type == "cuda")

    def seed_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            for x, y in dl:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    batches = seed_batches()
    return [time_steps(step, batches, steps, warmup, device, batch_size) for _ in range(repeats)]


def run_benchmark(images: torch.Tensor, labels: torch.Tensor, *, model_name: str = Config.model,
                  precision: str = "fp32", batch_size: int = 128, device: torch.device | str = "cpu",
                  steps: int = 10, warmup: int = 3, repeats: int = 3, seed_style: bool = True,
                  compile: bool = False) -> dict[str, Any]:  # noqa: A002 - the train flag's name
    """``compile`` applies torch.compile to the project's step (end-to-end and compute-only), never to the
    seed-style baseline, which stays what the notebook ran; compilation happens in the warm-up steps."""
    device = torch.device(device)
    mean, std = mean_std(images)

    def make_step(channels_last: bool, prec: str, normalise_inside: bool, compiled: bool = False):  # noqa: ANN202
        torch.manual_seed(0)
        model = create_model(model_name)
        if normalise_inside:
            model.set_normalization(mean, std)
        else:
            model.set_normalization([0.0] * 3, [1.0] * 3)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = model.to(device, memory_format=fmt).train()
        opt = torch.optim.Adam(model.parameters(), lr=Config.lr)  # the seed recipe's step
        forward = torch.compile(model) if compiled else model

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            with autocast(device, prec):
                loss = F.cross_entropy(forward(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return step

    loader = ResidentLoader(images, labels, batch_size, train=True, device=device)

    def loader_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = 0
        while True:
            yield from loader.iterate(epoch)
            epoch += 1

    def fixed_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = next(loader.iterate(0))
        while True:
            yield x, y

    results: dict[str, list[float]] = {"end_to_end_ips": [], "compute_only_ips": [], "seed_style_ips": []}
    step = make_step(True, precision, True, compile)
    for _ in range(repeats):
        results["end_to_end_ips"].append(time_steps(step, loader_batches(), steps, warmup, device, batch_size))
        results["compute_only_ips"].append(time_steps(step, fixed_batches(), steps, warmup, device, batch_size))
    if seed_style:
        results["seed_style_ips"] = seed_style_rates(images, labels, mean, std, make_step(False, "fp32", False),
                                                     device=device, batch_size=batch_size, steps=steps,
                                                     warmup=warmup, repeats=repeats)
    med = {k: statistics.median(v) if v else None for k, v in results.items()}
    spreads = {k.replace("_ips", "_spread"): spread(v) if v else None for k, v in results.items()}
    # both precisions on the same step, whichever one was asked for: what --precision auto weighs on this machine
    both = {p: batch_size / t for p, t in time_precisions(model_name, device, batch_size).items()}
    flops = 3 * forward_flops(create_model(model_name).to(device))
    rate = matmul_rate(device, precision)
    return {
        **med,
        **spreads,
        "end_to_end_over_compute": med["end_to_end_ips"] / med["compute_only_ips"],
        "end_to_end_over_seed_style": (med["end_to_end_ips"] / med["seed_style_ips"]) if seed_style else None,
        "train_flops_per_image": flops,
        "matmul_flops_per_s": rate,
        "mfu": med["end_to_end_ips"] * flops / rate,
        "step_ips_by_precision": both,
        "repeats": results,
        "model": model_name, "precision": precision, "batch_size": batch_size, "steps": steps, "compile": compile,
        "device": str(device),
        "machine": (torch.cuda.get_device_name(device) if device.type == "cuda"
                    else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                         f"bf16 {'native' if native_bf16(device) else 'emulated'}"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def rate_text(r: dict[str, Any], name: str) -> str:
    """"1234 img/s +-5%": the median of the repeats and their spread (absent for one repeat)."""
    if r[f"{name}_ips"] is None:
        return "-"
    spread_of = r.get(f"{name}_spread")
    return f"{r[f'{name}_ips']:.0f} img/s" + ("" if spread_of is None else f" +-{100 * spread_of:.0f}%")


def format_table(r: dict[str, Any]) -> str:
    rows = [
        ("end-to-end (real loop)", rate_text(r, "end_to_end")),
        ("compute-only (one batch)", rate_text(r, "compute_only")),
        ("seed-style DataLoader, fp32", rate_text(r, "seed_style")),
        ("end-to-end / compute-only", f"{r['end_to_end_over_compute']:.2f}x"),
        ("end-to-end / seed-style", "-" if r["end_to_end_over_seed_style"] is None
         else f"{r['end_to_end_over_seed_style']:.2f}x"),
        *((f"forward + backward, {p}", f"{ips:.0f} img/s") for p, ips in r["step_ips_by_precision"].items()),
        ("train FLOPs per image", f"{r['train_flops_per_image'] / 1e9:.3f} GFLOP"),
        (f"matmul rate ({r['precision']})", f"{r['matmul_flops_per_s'] / 1e9:.1f} GFLOP/s"),
        ("MFU", f"{100 * r['mfu']:.1f}%"),
    ]
    compiled = ", torch.compile" if r.get("compile") else ""
    head = f"{r['model']}, {r['precision']}, batch {r['batch_size']}{compiled}, {r['machine']}"
    why = f"\n  precision: {r['precision_choice']}" if r.get("precision_choice") else ""
    return head + "\n" + "\n".join(f"  {k:<30}{v:>18}" for k, v in rows) + why
