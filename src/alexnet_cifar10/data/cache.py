"""A cache of decoded splits, keyed by a fingerprint of the source, written atomically.

A cache file is used only after it proves itself: it is a regular file of this user, holds its own key, and
its splits are uint8 N x 3 x 32 x 32 images with int64 labels 0..9 whose sha256 matches the one stored with
them. Anything else (a damaged file, one of an older version, one planted under the key) is decoded afresh.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

import torch

from alexnet_cifar10.data.formats import CLASSES, SPLIT_NAMES, Decoded
from alexnet_cifar10.data.sources import MAX_TOTAL_BYTES, list_files
from alexnet_cifar10.errors import TORCH_LOAD_ERRORS, printable, write_failure
from alexnet_cifar10.io import atomic_write_serialized, remove_stale_temps

# 2: cut plain .tar files are refused; a cache decoded from one must not be reused
# 3: the cache holds its key and a sha256 of its tensors; the key covers the files that are read, by raw name
CACHE_VERSION = 3
FORMATS = ("python", "binary", "imagefolder")
MAX_IMAGES = MAX_TOTAL_BYTES // (3 * 32 * 32)  # more than any source within the read limits decodes to
STALE_TEMP_SECONDS = 600  # a cache write's temporary file untouched this long belongs to a killed process


def default_cache_dir() -> Path:
    env = os.environ.get("ALEXNET_CIFAR10_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "alexnet-cifar10"


def _stat_line(path: Path) -> bytes:
    """Size and mtime of ``path`` (of the link itself when it dangles, an errno when neither can be read)."""
    for stat_of in (os.stat, os.lstat):
        try:
            st = stat_of(path)
            return f":{st.st_size}:{st.st_mtime_ns}\n".encode()
        except OSError as e:
            error = e.errno
    return f":error {error}\n".encode()


def fingerprint(path: Path) -> str:
    """Path, size and mtime of the source (of every file below it that a reader may open, for a directory)."""
    path = path.resolve()
    h = hashlib.sha256(f"v{CACHE_VERSION}:".encode() + os.fsencode(path))
    if path.is_dir():
        for name in sorted(list_files(path)):
            h.update(os.fsencode(name) + _stat_line(path / name))
    else:
        h.update(_stat_line(path))
    return h.hexdigest()[:20]


def cache_path(source: Path, cache_dir: Path | None = None) -> Path:
    return (cache_dir or default_cache_dir()) / f"{fingerprint(source)}.pt"


def content_digest(key: str, fmt: str, splits: Decoded) -> str:
    """sha256 of the key, the format and every split's shapes and bytes: what a cache file must match."""
    h = hashlib.sha256(f"v{CACHE_VERSION}:{key}:{fmt}".encode())
    for name in sorted(splits):
        x, y = splits[name]
        h.update(f":{name}:{tuple(x.shape)}:{tuple(y.shape)}:".encode())
        h.update(x.detach().contiguous().numpy().data)
        h.update(y.detach().contiguous().numpy().data)
    return h.hexdigest()


def _warn(path: Path, reason: str) -> None:
    print(printable(f"warning: ignoring cache {path} ({reason}); decoding the data again"), file=sys.stderr)


def _owned_regular_file(path: Path) -> str | None:
    """Why ``path`` cannot be a cache file this process wrote, or None when it can."""
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return "owned by another user"
    return None


def _checked_splits(blob: dict) -> Decoded | str:
    """The splits of a loaded cache when each is sound, else why not."""
    raw = blob.get("splits")
    if not isinstance(raw, dict) or not raw or not set(raw) <= set(SPLIT_NAMES):
        return "no train or test split"
    splits: Decoded = {}
    for name, split in raw.items():
        x, y = (split.get("images"), split.get("labels")) if isinstance(split, dict) else (None, None)
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return f"{name} split without image and label tensors"
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, 32, 32) or not x.is_contiguous():
            return f"{name} images are not uint8 N x 3 x 32 x 32"
        if y.dtype != torch.int64 or tuple(y.shape) != tuple(x.shape[:1]) or not y.is_contiguous():
            return f"{name} labels do not match the images"
        if len(y) > MAX_IMAGES:
            return f"{name} split has {len(y)} images"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(CLASSES)):
            return f"{name} labels outside 0..9"
        splits[name] = (x, y)
    return splits


def load_cache(path: Path) -> tuple[str, Decoded] | None:
    """The cached (format, splits), or None when absent, stale or not to be trusted (then it is rebuilt)."""
    if path.parent.is_dir():
        remove_stale_temps(path, older_than=STALE_TEMP_SECONDS)  # a write of a process that was killed
    try:
        refused = _owned_regular_file(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        refused = e.strerror or str(e)
    if refused:
        _warn(path, refused)
        return None
    try:
        blob = torch.load(path, weights_only=True, mmap=True)
    except TORCH_LOAD_ERRORS as e:
        _warn(path, f"unreadable: {type(e).__name__}")
        return None
    if not isinstance(blob, dict):
        _warn(path, "not a cache file")
        return None
    if blob.get("version") != CACHE_VERSION:
        return None  # written by another version: replaced without a word
    splits = _checked_splits(blob)
    if isinstance(splits, str):
        _warn(path, splits)
        return None
    fmt = blob.get("format")
    if fmt not in FORMATS or blob.get("key") != path.stem:
        _warn(path, "made for another source")
        return None
    if blob.get("digest") != content_digest(path.stem, fmt, splits):
        _warn(path, "its tensors do not match their sha256")
        return None
    return fmt, splits


def save_cache(path: Path, fmt: str, splits: Decoded) -> None:
    blob = {
        "version": CACHE_VERSION,
        "key": path.stem,
        "format": fmt,
        "splits": {k: {"images": x.contiguous(), "labels": y.contiguous()} for k, (x, y) in splits.items()},
        "digest": content_digest(path.stem, fmt, splits),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # replaces a planted file or link, never writes through it
        atomic_write_serialized(path, lambda f: torch.save(blob, f))
    except (OSError, RuntimeError) as e:  # a failed write (a full disk); torch.save's own failures
        # the cache is an optimisation: a read-only or full disk must not stop the run
        print(printable(f"warning: cannot write cache {path}: {write_failure(e)}"), file=sys.stderr)
