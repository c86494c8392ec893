"""Detect a CIFAR-10 layout on disk (or inside a tar archive) and decode it to uint8 tensors.

Supported layouts, found automatically:

* ``python``: the official pickled batches (``cifar-10-batches-py/``), read with a restricted
  unpickler that only builds plain containers, bytes/str/int and numpy arrays;
* ``binary``: the official binary batches (``cifar-10-batches-bin/``);
* ``imagefolder``: ``train/<class>/*`` and/or ``test/<class>/*`` PNG or JPEG files, 32x32 RGB;
* any of these inside a ``.tar.gz``, ``.tgz`` or ``.tar``, read member by member in memory:
  nothing is extracted, and members with absolute paths, ``..`` or links are refused.
"""

from __future__ import annotations

import io
import lzma
import os
import pickle
import posixpath
import re
import tarfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from alexnet_cifar10.errors import DataError

CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
SPLIT_NAMES = ("train", "test")
_BATCH_RE = re.compile(r"^data_batch_(\d+)$")
_BIN_RE = re.compile(r"^data_batch_(\d+)\.bin$")

# (images uint8 N x 3 x 32 x 32, labels int64 N) per split name
Decoded = dict[str, tuple[torch.Tensor, torch.Tensor]]


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


# --------------------------------------------------------------------------- sources
class Source:
    """A read-only view of files: relative posix names and a way to read each one."""

    def __init__(self, label: str, names: list[str], reader: Callable[[str], bytes]) -> None:
        self.label = label
        self.names = sorted(names)
        self._reader = reader

    def read(self, name: str) -> bytes:
        return self._reader(name)

    def where(self, name: str) -> str:
        """The name of a file as a user would look for it."""
        return f"{self.label}:{name}" if self.label.endswith(ARCHIVE_SUFFIXES) else str(
            Path(self.label) / name
        )


def directory_source(root: Path) -> Source:
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        names += [(rel / f).as_posix() for f in filenames if not f.startswith(".")]

    def read(name: str) -> bytes:
        try:
            return (root / name).read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {root / name}: {e.strerror or e}") from None

    return Source(str(root), names, read)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DataError(f"{archive}: refusing archive member with an unsafe path: {name!r}")
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing archive member that is a link: {name!r}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing archive member that is not a regular file: {name!r}")


def _check_end(archive: Path, tar: tarfile.TarFile) -> None:
    """tarfile stops quietly where a plain .tar was cut between two members (or inside a header);
    only the end-of-archive marker, a block of zeros, tells a complete archive from a cut one."""
    if not isinstance(tar.fileobj, io.BufferedReader):
        return  # compressed: a cut stream already fails in the decompressor
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise DataError(f"{archive}: truncated or corrupt archive (no member header or end-of-archive marker "
                        f"at byte {tar.offset})")


def archive_source(archive: Path) -> Source:
    """Read every regular member into memory, refusing unsafe members; nothing is extracted."""
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                _check_member(archive, member)
                if not member.isfile():
                    continue
                name = posixpath.normpath(member.name)  # also drops a leading "./"
                if name == "." or any(part.startswith(".") for part in name.split("/")):
                    continue  # hidden files and folders (e.g. macOS "._*" resource forks)
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle else b""
            _check_end(archive, tar)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise DataError(f"cannot read archive {archive}: {e.strerror}") from None
        detail = " ".join(str(e).split())  # tarfile's "r:*" error spans several lines
        raise DataError(f"{archive}: truncated or corrupt archive ({detail})") from None
    return Source(str(archive), list(files), files.__getitem__)


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
class RestrictedUnpickler(pickle.Unpickler):
    """Builds only plain containers, bytes/str/int and numpy arrays; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle protocol
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def restricted_loads(data: bytes, where: str) -> object:
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if "refusing" in str(e):
            raise DataError(f"{where}: pickle asks to run code ({e}); not loaded") from None
        raise DataError(f"{where}: truncated or corrupt pickle ({e})") from None
    except Exception as e:  # noqa: BLE001 - any failure inside a hostile pickle is a data error
        raise DataError(f"{where}: truncated or corrupt pickle ({type(e).__name__}: {e})") from None


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
    decoded = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    if tuple(decoded) != CLASSES:
        raise DataError(f"{source.where(name)}: label names {decoded} are not CIFAR-10's")


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


def read_python(source: Source, root: str) -> Decoded:
    _check_meta(source, root)
    out: Decoded = {}
    train = _numbered(source, root, _BATCH_RE)
    if train:
        out["train"] = _concat([decode_python_batch(source.read(n), source.where(n)) for n in train])
    test = _join(root, "test_batch")
    if test in source.names:
        out["test"] = decode_python_batch(source.read(test), source.where(test))
    if not out:
        raise DataError(f"{source.where(root or '.')}: no data_batch_N or test_batch files")
    return out


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
    out: Decoded = {}
    train = _numbered(source, root, _BIN_RE)
    if train:
        out["train"] = _concat([decode_binary_batch(source.read(n), source.where(n)) for n in train])
    test = _join(root, "test_batch.bin")
    if test in source.names:
        out["test"] = decode_binary_batch(source.read(test), source.where(test))
    if not out:
        raise DataError(f"{source.where(root or '.')}: no data_batch_N.bin or test_batch.bin")
    return out


# --------------------------------------------------------------------------- image folders
IMAGE_FORMATS = ("PNG", "JPEG")  # what is decoded; Pillow's other formats (PostScript, ...) are never tried
MAX_IMAGE_SIDE = 4096  # pixels a side of an image given to predict, checked before it is decoded


def decode_image(data: bytes, where: str, *, strict: bool = True) -> np.ndarray:
    """Decode one PNG or JPEG image to H x W x 3 uint8; ``strict`` demands 32x32 RGB as stored, otherwise any
    size up to ``MAX_IMAGE_SIDE`` pixels a side."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as img:
            if max(img.size) > MAX_IMAGE_SIDE:
                raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}; at most {MAX_IMAGE_SIDE} pixels a "
                                "side are decoded")
            if strict and img.size != (32, 32):
                raise DataError(f"{where}: image is {img.size[0]}x{img.size[1]}, expected 32x32")
            if strict and img.mode != "RGB":
                raise DataError(f"{where}: image mode is {img.mode}, expected RGB")
            return np.asarray(img.convert("RGB"))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - Pillow raises many types on hostile files (bombs included)
        detail = "" if isinstance(e, UnidentifiedImageError) else f" ({e})"  # its text names a BytesIO object
        raise DataError(f"{where}: not a readable PNG or JPEG image{detail}") from None


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
        raise DataError(
            f"{source.where(prefix)}: unknown class folder(s) {', '.join(unknown)}; "
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


# --------------------------------------------------------------------------- entry point
def open_source(path: Path) -> Source:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (pass --data PATH to CIFAR-10)")
    if path.is_dir():
        return directory_source(path)
    if is_archive(path):
        return archive_source(path)
    raise DataError(f"{path}: not a directory or a .tar.gz/.tgz/.tar archive")


def find_archive_in(directory: Path) -> Path | None:
    """A directory that holds nothing but a downloaded archive is read through that archive."""
    archives = sorted(p for p in directory.iterdir() if is_archive(p))
    return archives[0] if len(archives) == 1 else None


def read_source(source: Source, layout: Layout, progress: bool = False) -> Decoded:
    if layout.format == "python":
        return read_python(source, layout.root)
    if layout.format == "binary":
        return read_binary(source, layout.root)
    return read_imagefolder(source, layout.root, progress)

