"""Detect a CIFAR-10 layout on disk (or inside a tar archive) and decode it to uint8 tensors.

Supported layouts, found automatically:

* ``python``: the official pickled batches (``cifar-10-batches-py/``), read with a restricted
  unpickler that only builds plain containers, bytes/str/int and numpy arrays;
* ``binary``: the official binary batches (``cifar-10-batches-bin/``);
* ``imagefolder``: ``train/<class>/*`` and/or ``test/<class>/*`` PNG or JPEG files, 32x32 RGB;
* any of these inside a ``.tar.gz``, ``.tgz`` or ``.tar`` (read by ``sources``, within its limits).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import pickletools
import posixpath
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from alexnet_cifar10.data.images import IMAGE_SUFFIXES, decode_image
from alexnet_cifar10.data.sources import Source
from alexnet_cifar10.errors import DataError, shortened
from alexnet_cifar10.io import size_text

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
SPLIT_NAMES = ("train", "test")
_BATCH_RE = re.compile(r"^data_batch_(\d+)$")
_BIN_RE = re.compile(r"^data_batch_(\d+)\.bin$")

# (images uint8 N x 3 x 32 x 32, labels int64 N) per split name
Decoded = dict[str, tuple[torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------- layouts
@dataclass(frozen=True)
class Layout:
    """Where a known layout was found inside a source."""

    format: str  # "python" | "binary" | "imagefolder"
    root: str  # posix prefix inside the source, "" for its top


def _join(root: str, name: str) -> str:
    return f"{root}/{name}" if root else name


def detect_layout(source: Source) -> Layout:
    roots: list[Layout] = []
    for name in source.names:
        parent, base = posixpath.split(name)
        if base == "batches.meta" or (_BATCH_RE.match(base) or base == "test_batch"):
            roots.append(Layout("python", parent))
        elif base in ("batches.meta.txt", "test_batch.bin") or _BIN_RE.match(base):
            roots.append(Layout("binary", parent))
    for name in source.names:
        parts = name.split("/")
        if len(parts) >= 3 and parts[-3] in SPLIT_NAMES:
            roots.append(Layout("imagefolder", "/".join(parts[:-3])))
            break
    if not roots:
        raise DataError(
            f"{source.label}: no CIFAR-10 layout found (expected cifar-10-batches-py/, "
            "cifar-10-batches-bin/, or train/<class>/ and test/<class>/ image folders)"
        )
    # prefer the shallowest root, then python > binary > imagefolder
    order = {"python": 0, "binary": 1, "imagefolder": 2}
    best = min(roots, key=lambda lay: (lay.root.count("/") + bool(lay.root), order[lay.format]))
    return best


# --------------------------------------------------------------------------- python format
class Refused(pickle.UnpicklingError):
    """A pickle that asks for what a CIFAR-10 batch never needs: code to run, or memory its bytes do not back."""


class RestrictedUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD step can be checked
    """Builds only plain containers, bytes/str/int and numpy arrays of plain numbers; anything else is refused.
    An array may not set aside more memory than the stream has bytes: numpy's pickles carry an array's data
    in the stream, so a larger one is a crafted stream asking for memory it does not back. The state that
    BUILD gives a dtype or an array is checked before numpy applies it (a crafted state can turn a dtype
    into one of Python objects, which numpy then reads from raw bytes)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.limit = len(data)

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) not in self.ALLOWED:
            raise Refused(f"pickle asks to run code ({shortened(module + '.' + name, 60)}); not loaded")
        found = super().find_class(module, name)
        if name == "_reconstruct":
            return self._bounded(found)
        if name == "dtype":
            return self._plain_dtype
        return found

    def _plain_dtype(self, *args: object) -> np.dtype:
        dtype = np.dtype(*args)
        if dtype.hasobject or dtype.itemsize > self.limit:
            raise Refused(f"refused: an array of {str(dtype)[:40]}, which a CIFAR-10 batch never holds")
        return dtype

    def _bounded(self, reconstruct):  # noqa: ANN001, ANN202 - numpy's private constructor
        def build(subtype: type, shape: object, dtype: object) -> np.ndarray:
            dims = shape if isinstance(shape, tuple) else (shape,)
            if len(dims) > 32 or not all(isinstance(d, int) and d >= 0 for d in dims):
                raise Refused(f"refused: an array of shape {str(shape)[:60]}")
            nbytes = math.prod(dims) * self._plain_dtype(dtype).itemsize
            if nbytes > self.limit:
                raise Refused(f"refused: it asks for an array of {size_text(nbytes)} in a stream of "
                              f"{size_text(self.limit)}")
            return reconstruct(subtype, shape, dtype)

        return build

    def load_build(self) -> None:
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):
            plain = (isinstance(state, tuple) and len(state) == 8 and state[2:5] == (None, None, None)
                     and state[5] in (-1, inst.itemsize) and state[7] == 0)
        elif isinstance(inst, np.ndarray):
            plain = (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
                     and not state[2].hasobject and isinstance(state[1], tuple)
                     and all(isinstance(d, int) and d >= 0 for d in state[1]) and isinstance(state[4], bytes)
                     and len(state[4]) == math.prod(state[1]) * state[2].itemsize)
        else:
            plain = False
        if not plain:
            raise Refused(f"refused: a {type(inst).__name__} with a state that a CIFAR-10 batch never holds")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build


# What unpickling a damaged or crafted batch raises: the unpickler's own errors (a cut stream, a bad opcode, a
# missing memo entry, a stack underflow) and those of the numpy calls it is allowed to make.
# MemoryError: a length that the stream declares and the unpickler sets aside before reading it.
_PICKLE_ERRORS = (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, OverflowError, struct.error,
                  RuntimeError, ImportError, MemoryError)


def _scan_pickle(data: bytes, where: str) -> None:
    """Walk the opcodes of a pickle without running them, so that a cut or malformed stream, or a memo index
    beyond the stream's own length (the unpickler would grow its memo to that index), is refused before any
    memory is set aside for it."""
    try:
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("PUT", "BINPUT", "LONG_BINPUT") and int(arg) > len(data):
                raise DataError(f"{where}: corrupt pickle (memo index {arg} in a stream of {len(data)} bytes)")
    except (ValueError, OverflowError) as e:
        raise DataError(f"{where}: truncated or corrupt pickle ({str(e)[:160]})") from None


def restricted_loads(data: bytes, where: str) -> object:
    _scan_pickle(data, where)
    try:
        return RestrictedUnpickler(data).load()
    except Refused as e:
        raise DataError(f"{where}: {e}") from None
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: truncated or corrupt pickle ({e})") from None
    except _PICKLE_ERRORS as e:
        raise DataError(f"{where}: truncated or corrupt pickle ({type(e).__name__}: {str(e)[:160]})") from None


def _key(d: dict, name: str) -> object:
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    return None


def _check_labels(labels: np.ndarray, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{where}: labels outside 0..9")


def decode_python_batch(data: bytes, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    obj = restricted_loads(data, where)
    if not isinstance(obj, dict):
        raise DataError(f"{where}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    images, labels = _key(obj, "data"), _key(obj, "labels")
    if not isinstance(images, np.ndarray) or not isinstance(labels, list | np.ndarray):
        raise DataError(f"{where}: not a CIFAR-10 batch (needs 'data' array and 'labels' list)")
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != 3072:
        raise DataError(
            f"{where}: 'data' must be uint8 of shape N x 3072, got {images.dtype} {images.shape}"
        )
    try:
        labels_np = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"{where}: 'labels' must be integers") from None
    if labels_np.shape != (images.shape[0],):
        raise DataError(f"{where}: {images.shape[0]} images but {labels_np.size} labels")
    _check_labels(labels_np, where)
    x = torch.from_numpy(images.reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels_np)


def _check_meta(source: Source, root: str) -> None:
    name = _join(root, "batches.meta")
    if name not in source.names:
        return
    obj = restricted_loads(source.read(name), source.where(name))
    names = _key(obj, "label_names") if isinstance(obj, dict) else None
    if not isinstance(names, list):
        raise DataError(f"{source.where(name)}: not a CIFAR-10 meta file (no 'label_names')")
    decoded = [n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names[:20]]
    if len(names) != len(CLASSES) or tuple(decoded) != CLASSES:
        shown = ", ".join(shortened(n, 12) for n in decoded[:10]) + (f" and {len(names) - 10} more"
                                                                      if len(names) > 10 else "")
        raise DataError(f"{source.where(name)}: label names ({shown}) are not CIFAR-10's")


def _concat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _numbered(source: Source, root: str, pattern: re.Pattern[str]) -> list[str]:
    found = []
    for name in source.names:
        parent, base = posixpath.split(name)
        m = pattern.match(base)
        if parent == root and m:
            found.append((int(m.group(1)), name))
    return [name for _, name in sorted(found)]


def _read_batches(source: Source, root: str, pattern: re.Pattern[str], test_name: str,
                  decode: Callable[[bytes, str], tuple[torch.Tensor, torch.Tensor]]) -> Decoded:
    """The numbered training batches (``pattern``) and the test batch of an official layout, each decoded."""
    out: Decoded = {}
    train = _numbered(source, root, pattern)
    if train:
        out["train"] = _concat([decode(source.read(n), source.where(n)) for n in train])
    test = _join(root, test_name)
    if test in source.names:
        out["test"] = decode(source.read(test), source.where(test))
    if not out:
        suffix = test_name.removeprefix("test_batch")  # "" or ".bin"
        raise DataError(f"{source.where(root or '.')}: no data_batch_N{suffix} or {test_name} files")
    return out


def read_python(source: Source, root: str) -> Decoded:
    _check_meta(source, root)
    return _read_batches(source, root, _BATCH_RE, "test_batch", decode_python_batch)


# --------------------------------------------------------------------------- binary format
RECORD = 1 + 3072


def decode_binary_batch(data: bytes, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not data or len(data) % RECORD:
        raise DataError(
            f"{where}: truncated or corrupt binary batch ({len(data)} bytes is not a "
            f"multiple of {RECORD})"
        )
    rec = np.frombuffer(data, dtype=np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    _check_labels(labels, where)
    images = rec[:, 1:].reshape(-1, 3, 32, 32).copy()
    return torch.from_numpy(images), torch.from_numpy(labels)


def read_binary(source: Source, root: str) -> Decoded:
    return _read_batches(source, root, _BIN_RE, "test_batch.bin", decode_binary_batch)


# --------------------------------------------------------------------------- image folders
def _image_split(source: Source, root: str, split: str, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    prefix = _join(root, split) + "/"
    by_class: dict[str, list[str]] = {}
    for name in source.names:
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):].split("/")
        if len(rest) != 2:
            raise DataError(f"{source.where(name)}: expected {split}/<class>/<image>")
        by_class.setdefault(rest[0], []).append(name)
    unknown = sorted(set(by_class) - set(CLASSES))
    if unknown:
        shown = ", ".join(n[:40] for n in unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise DataError(
            f"{source.where(prefix)}: unknown class folder(s) {shown}; "
            f"expected the CIFAR-10 classes {', '.join(CLASSES)}"
        )
    missing = [c for c in CLASSES if c not in by_class]
    if missing:
        raise DataError(f"{source.where(prefix)}: missing class folder(s) {', '.join(missing)}")
    files: list[str] = []
    labels: list[int] = []
    for label, cls in enumerate(CLASSES):
        images = [n for n in by_class[cls] if n.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise DataError(f"{source.where(_join(prefix.rstrip('/'), cls))}: class has no images")
        files += images
        labels += [label] * len(images)

    def decode(name: str) -> np.ndarray:
        return decode_image(source.read(name), source.where(name))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        arrays = list(
            tqdm(pool.map(decode, files, chunksize=256), total=len(files), disable=not progress,
                 desc=f"decoding {split}", unit="img", leave=False)
        )
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64)


def read_imagefolder(source: Source, root: str, progress: bool = False) -> Decoded:
    present = {n[len(_join(root, "")):].split("/")[0] for n in source.names
               if n.startswith(_join(root, ""))}
    return {s: _image_split(source, root, s, progress) for s in SPLIT_NAMES if s in present}


def read_source(source: Source, layout: Layout, progress: bool = False) -> Decoded:
    if layout.format == "python":
        return read_python(source, layout.root)
    if layout.format == "binary":
        return read_binary(source, layout.root)
    return read_imagefolder(source, layout.root, progress)
