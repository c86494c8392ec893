"""Where and how a run computes: the device, the precision (``auto`` resolved), autocast, CPU threads and the
CUDA backend switches. The CLI, training, evaluation and the benchmark all take them from here."""

from __future__ import annotations

import contextlib
import os
import sys

import torch

from alexnet_cifar10.config import Config
from alexnet_cifar10.errors import ConfigError


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX-512-BF16 or AMX.
    A CPU without them emulates bf16 at a fraction of its fp32 speed (BENCHMARKS.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere and later
    probe = getattr(torch.cpu, "get_capabilities", None)  # newer than the oldest torch we accept
    capabilities = probe() if probe is not None else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: ``auto`` becomes bf16 where ``device`` does it natively, else fp32.
    fp16 without CUDA is refused; bf16 on a CPU that only emulates it is allowed, with a warning."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        print(f"warning: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 instructions "
              "(AVX-512-BF16 or AMX): bf16 is emulated and much slower than fp32 here (see BENCHMARKS.md)",
              file=sys.stderr)
    return precision


def set_threads(threads: int) -> None:
    """CPU threads for torch's kernels; 0 means one per core."""
    torch.set_num_threads(threads or os.cpu_count() or 1)


def configure_backends(config: Config, device: torch.device) -> None:
    set_threads(config.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not config.deterministic
        torch.backends.cudnn.deterministic = config.deterministic
        torch.backends.cuda.matmul.allow_tf32 = not config.deterministic
        torch.backends.cudnn.allow_tf32 = not config.deterministic
        if config.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
