"""Where and how a run computes: the device, the precision (``auto`` resolved), autocast, CPU threads and the
CUDA backend switches. The CLI, training, evaluation and the benchmark all take them from here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import stat
import sys
import time
from pathlib import Path

import torch

from alexnet_cifar10.config import Config
from alexnet_cifar10.data.cache import default_cache_dir
from alexnet_cifar10.errors import ConfigError
from alexnet_cifar10.io import atomic_write_text
from alexnet_cifar10.models import create_model


def mps_available() -> bool:
    """Whether an Apple-silicon GPU (Metal, MPS) is usable by this torch."""
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(name: str) -> torch.device:
    """``auto``: a CUDA GPU, else an Apple-silicon GPU (MPS), else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
    if name == "mps" and not mps_available():
        raise ConfigError("--device mps: no Apple-silicon GPU (MPS) is available to PyTorch; use --device cpu")
    return torch.device(name)


def sum_dtype(device: torch.device) -> torch.dtype:
    """The dtype of running sums kept on ``device``: float64, except on MPS, which has none."""
    return torch.float32 if device.type == "mps" else torch.float64


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (for timings): CUDA and MPS run asynchronously."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware: a CUDA GPU with bf16, or a CPU with AVX-512-BF16 or AMX.
    A CPU without them emulates bf16 at a fraction of its fp32 speed (BENCHMARKS.md)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8  # Ampere and later
    probe = getattr(torch.cpu, "get_capabilities", None)  # newer than the oldest torch we accept
    capabilities = probe() if probe is not None else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(precision: str, device: torch.device, model: str = Config.model) -> str:
    """The precision a run computes in (``precision_choice`` without its reason)."""
    return precision_choice(precision, device, model)[0]


def precision_choice(precision: str, device: torch.device, model: str = Config.model) -> tuple[str, str]:
    """The precision a run of ``model`` computes in, and why. ``auto`` is bf16 on a CUDA GPU with bf16 and fp32
    on a CPU without bf16 instructions (there bf16 is emulated, about 20 times slower). A CPU with them is not
    always faster in bf16 (an AVX-512-BF16 CPU without AMX can be 1.5 times slower), so there ``auto`` times a
    training step of ``model`` in both precisions, once per machine (``probe_precisions``), and takes the
    faster. fp16 without CUDA is refused; bf16 on a CPU that only emulates it is allowed, with a warning."""
    if precision == "auto":
        if device.type == "mps":
            return "fp32", "auto: fp32 on an Apple-silicon GPU (MPS)"
        if device.type == "cuda" or not native_bf16(device):
            chosen = "bf16" if native_bf16(device) else "fp32"
            where = "this GPU" if device.type == "cuda" else "this CPU"
            return chosen, f"auto: {where} {'computes' if chosen == 'bf16' else 'has no'} bf16 natively"
        seconds, cached = probe_precisions(model, device)
        chosen = "bf16" if seconds["bf16"] < seconds["fp32"] else "fp32"
        return chosen, (f"auto: a {model} training step of {PROBE_BATCH} images took {1e3 * seconds['fp32']:.0f} ms "
                        f"in fp32 and {1e3 * seconds['bf16']:.0f} ms in bf16 on this CPU"
                        f"{' (measured earlier, ' + str(probe_cache_file()) + ')' if cached else ''}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("--precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")
    if precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        print(f"warning: this CPU ({torch.backends.cpu.get_cpu_capability()}) has no bf16 instructions "
              "(AVX-512-BF16 or AMX): bf16 is emulated and much slower than fp32 here (see BENCHMARKS.md)",
              file=sys.stderr)
    return precision, "set by --precision"


PROBE_BATCH = 16
MAX_PROBE_CACHE = 1 << 20  # bytes: a few hundred entries; anything larger is not the probe's file


def probe_cache_file() -> Path:
    return default_cache_dir() / "precision.json"


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe_precisions(model: str, device: torch.device) -> tuple[dict[str, float], bool]:
    """``time_precisions`` of ``model`` on ``PROBE_BATCH`` images (about a second on a 2-core CPU), and whether
    they came from the cache: the result is kept per CPU model, torch version, thread count and network in
    ``probe_cache_file()``, beside the data cache."""
    key = f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {model}"
    cache = _read_probe_cache()
    if key in cache:
        return cache[key], True
    seconds = time_precisions(model, device, PROBE_BATCH)
    try:
        probe_cache_file().parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(probe_cache_file(), json.dumps({**cache, key: seconds}, indent=1))
    except OSError as e:
        print(f"warning: cannot keep the precision probe in {probe_cache_file()} ({e.strerror or e}); it runs "
              "again next time", file=sys.stderr)
    return seconds, False


def time_precisions(model: str, device: torch.device, batch_size: int) -> dict[str, float]:
    """Seconds of one training step (forward and backward) of ``model`` on ``batch_size`` images in fp32 and in
    bf16: the faster of two after a warm-up. The global random streams are left as they were."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = create_model(model).to(device, memory_format=torch.channels_last)
        x = torch.rand(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch_size,), device=device)
        seconds = {}
        for precision in ("fp32", "bf16"):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                with autocast(device, precision):
                    loss = torch.nn.functional.cross_entropy(net(x), y)
                loss.backward()
                synchronize(device)
                times.append(time.perf_counter() - t0)
            seconds[precision] = min(times[1:])
    return seconds


def _read_probe_cache() -> dict[str, dict[str, float]]:
    """The probe's earlier results; a file that is not what the probe writes (damaged, planted, huge, not a
    regular file) counts as empty and is replaced."""
    path = probe_cache_file()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PROBE_CACHE:
            return {}
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(values, dict):
        return {}
    return {k: v for k, v in values.items() if isinstance(k, str) and isinstance(v, dict) and set(v) ==
            {"fp32", "bf16"} and all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in v.values())}


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
