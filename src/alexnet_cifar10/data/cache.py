"""A cache of decoded splits, keyed by a fingerprint of the source, written atomically as safetensors (tensors
and text metadata: nothing on this path unpickles).

A cache file is used only after it proves itself: it is a regular file of this user, holds its own key, and
its splits are uint8 N x 3 x 32 x 32 images with int64 labels 0..9 whose sha256 matches the one stored with
them. Anything else (a damaged file, one of an older version, one planted under the key) is decoded afresh.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import sys
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from alexnet_cifar10.data.formats import CLASSES, SPLIT_NAMES, Decoded
from alexnet_cifar10.data.sources import MAX_TOTAL_BYTES, list_files
from alexnet_cifar10.errors import printable, write_failure
from alexnet_cifar10.io import atomic_write_serialized, remove_stale_temps

# 2: cut plain .tar files are refused; a cache decoded from one must not be reused
# 3: the cache holds its key and a sha256 of its tensors; the key covers the files that are read, by raw name
# 4: safetensors instead of torch.save's pickle
CACHE_VERSION = 4
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
    return (cache_dir or default_cache_dir()) / f"{fingerprint(source)}.safetensors"


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


def cache_tensors(splits: Decoded) -> dict[str, torch.Tensor]:
    """The tensors of a cache file: ``<split>.images`` and ``<split>.labels``."""
    return {f"{name}.{part}": t.contiguous() for name, (x, y) in splits.items() for part, t in (("images", x),
                                                                                                ("labels", y))}


def _checked_splits(tensors: dict[str, torch.Tensor]) -> Decoded | str:
    """The splits of a loaded cache's tensors when each is sound, else why not."""
    names = {key.partition(".")[0] for key in tensors}
    if not names or not names <= set(SPLIT_NAMES) or set(tensors) != {f"{n}.{part}" for n in names
                                                                      for part in ("images", "labels")}:
        return "no train or test split"
    splits: Decoded = {}
    for name in sorted(names):
        x, y = tensors[f"{name}.images"], tensors[f"{name}.labels"]
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
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("version") != str(CACHE_VERSION):
                return None  # written by another version: replaced without a word
            keys = list(f.keys())
            if any(math.prod(f.get_slice(key).get_shape()) > MAX_IMAGES * 3 * 32 * 32 for key in keys):
                _warn(path, "a tensor larger than any split")  # refused before anything is allocated for it
                return None
            tensors = {key: f.get_tensor(key) for key in keys}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        _warn(path, f"unreadable: {type(e).__name__}")
        return None
    splits = _checked_splits(tensors)
    if isinstance(splits, str):
        _warn(path, splits)
        return None
    fmt = meta.get("format")
    if fmt not in FORMATS or meta.get("key") != path.stem:
        _warn(path, "made for another source")
        return None
    if meta.get("digest") != content_digest(path.stem, fmt, splits):
        _warn(path, "its tensors do not match their sha256")
        return None
    return fmt, splits


def cache_metadata(key: str, fmt: str, digest: str) -> dict[str, str]:
    return {"version": str(CACHE_VERSION), "key": key, "format": fmt, "digest": digest}


def save_cache(path: Path, fmt: str, splits: Decoded) -> None:
    metadata = cache_metadata(path.stem, fmt, content_digest(path.stem, fmt, splits))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # replaces a planted file or link, never writes through it
        atomic_write_serialized(path, lambda f: f.write(safetensors_bytes(cache_tensors(splits), metadata)))
    except (OSError, RuntimeError) as e:  # a failed write (a full disk); the serialiser's own failures
        # the cache is an optimisation: a read-only or full disk must not stop the run
        print(printable(f"warning: cannot write cache {path}: {write_failure(e)}"), file=sys.stderr)
