"""A cache of decoded splits, keyed by a fingerprint of the source, written atomically."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import torch

from alexnet_cifar10.data.formats import Decoded
from alexnet_cifar10.errors import write_failure
from alexnet_cifar10.io import atomic_write

CACHE_VERSION = 2  # 2: cut plain .tar files are refused; a cache decoded from one must not be reused


def default_cache_dir() -> Path:
    env = os.environ.get("ALEXNET_CIFAR10_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-cifar10"


def fingerprint(path: Path) -> str:
    """Path, size and mtime of the source (of every file below it, for a directory)."""
    path = path.resolve()
    h = hashlib.sha256(f"v{CACHE_VERSION}:{path}".encode())
    if path.is_dir():
        for dirpath, dirnames, filenames in sorted(os.walk(path)):
            dirnames.sort()
            for name in sorted(filenames):
                st = os.stat(os.path.join(dirpath, name))
                h.update(f"{dirpath}/{name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    else:
        st = path.stat()
        h.update(f":{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def cache_path(source: Path, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{fingerprint(source)}.pt"


def load_cache(path: Path) -> tuple[str, Decoded] | None:
    """The cached (format, splits), or None when absent or unreadable (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, weights_only=True, mmap=True)
        if blob.get("version") != CACHE_VERSION:
            return None
        splits = {k: (v["images"], v["labels"]) for k, v in blob["splits"].items()}
        for x, y in splits.values():
            if x.dtype != torch.uint8 or x.shape[1:] != (3, 32, 32) or y.shape != x.shape[:1]:
                return None
        return blob["format"], splits
    except Exception:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
        return None


def save_cache(path: Path, fmt: str, splits: Decoded) -> None:
    blob = {
        "version": CACHE_VERSION,
        "format": fmt,
        "splits": {k: {"images": x.contiguous(), "labels": y} for k, (x, y) in splits.items()},
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(blob, f))
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write (a full disk) as RuntimeError
        # the cache is an optimisation: a read-only or full disk must not stop the run
        print(f"warning: cannot write cache {path}: {write_failure(e)}", file=sys.stderr)
