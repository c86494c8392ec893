"""One code path from ``--data PATH`` to train / val / test tensors, for the CLI and notebooks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alexnet_cifar10.data import cache, download, formats, sources
from alexnet_cifar10.errors import DataError


@dataclass
class Split:
    """uint8 images N x 3 x 32 x 32 and int64 labels N, in the official class order."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels, minlength=len(formats.CLASSES)).tolist()

    def subset(self, size: int, seed: int = 0) -> Split:
        """``size`` of the images, spread evenly over the classes, in a seeded random order: a quick run's data
        (image folders list their files class by class, so the first ``size`` would be one class)."""
        if not 0 < size < len(self):
            raise DataError(f"a subset takes 1 to {len(self) - 1} of the split's {len(self)} images, not {size}")
        _, picked = stratified_split(self.labels, size, seed, what=f"a subset of {size}")
        picked = picked[torch.randperm(len(picked), generator=torch.Generator().manual_seed(seed))]
        return Split(self.images[picked], self.labels[picked])


@dataclass
class Cifar10:
    """The splits of one data source and where they came from."""

    train: Split
    val: Split | None
    test: Split | None
    format: str
    source: Path
    cache_file: Path | None
    from_cache: bool
    seconds: float
    classes: tuple[str, ...] = field(default=formats.CLASSES)

    def split(self, name: str) -> Split:
        split = {"train": self.train, "val": self.val, "test": self.test}.get(name)
        if split is None or len(split) == 0:
            raise DataError(f"{self.source}: the data has no {name} split")
        return split

    def sample_split(self) -> Split:
        """The training split, or the evaluation split when the data has no training images."""
        return self.train if len(self.train) else self.split(self.eval_split_name())

    def eval_split_name(self) -> str:
        """The split a final evaluation uses: test when the data has one, else val."""
        if self.test is not None and len(self.test):
            return "test"
        return "val" if self.val is not None and len(self.val) else "train"


def stratified_split(labels: torch.Tensor, val_size: int, seed: int,
                     what: str = "--val-size") -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (train, val): ``val_size`` images spread evenly over the classes, seeded; ``what`` names the
    request in errors."""
    n_classes = len(formats.CLASSES)
    if val_size < 0:
        raise DataError(f"--val-size must be 0 or more, got {val_size}")
    if val_size >= len(labels):
        raise DataError(f"--val-size {val_size} leaves no training images (the split has {len(labels)})")
    gen = torch.Generator().manual_seed(seed)
    per_class = [val_size // n_classes + (c < val_size % n_classes) for c in range(n_classes)]
    val_idx = []
    for c, k in enumerate(per_class):
        members = (labels == c).nonzero().flatten()
        if k > len(members):
            raise DataError(
                f"{what if what != '--val-size' else f'--val-size {val_size}'} needs {k} images of class "
                f"{formats.CLASSES[c]}, "
                f"the training split has {len(members)}"
            )
        val_idx.append(members[torch.randperm(len(members), generator=gen)[:k]])
    val = torch.cat(val_idx).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val


def resolve_source(path: Path, *, auto_download: bool, url: str | None, progress: bool) -> Path:
    """The file or folder to read; downloads the official archive into an empty default folder."""
    if path.is_dir():  # a left-over .part (resumed) or .bad (set aside) download counts as nothing
        try:
            empty = not any(p for p in path.iterdir()
                            if not p.name.startswith(".") and p.suffix not in (".part", ".bad"))
        except OSError as e:
            raise DataError(f"cannot list {path}: {e.strerror or e}") from None
    else:
        empty = not path.exists()
    if empty:
        if not auto_download:
            what = "a folder without data" if path.is_dir() else "no such file or directory"
            raise DataError(f"{path}: {what} (pass --data PATH to CIFAR-10)")
        return download.download_archive(path, url, progress=progress)
    return path


def decode_source(path: Path, progress: bool) -> tuple[str, formats.Decoded]:
    source = sources.open_source(path)
    try:
        layout = formats.detect_layout(source)
    except DataError:
        inner = sources.find_archive_in(path) if path.is_dir() else None
        if inner is None:
            raise
        return decode_source(inner, progress)
    return layout.format, formats.read_source(source, layout, progress)


def load_cifar10(
    data: str | Path,
    *,
    val_size: int = 5000,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    auto_download: bool = False,
    url: str | None = None,
    progress: bool = False,
) -> Cifar10:
    """Load CIFAR-10 from any supported layout, with a stratified validation split.

    ``auto_download``: a missing or empty folder ``data`` gets the official archive (the CLI's default ``./data``
    does); otherwise it is an error.
    """
    start = time.perf_counter()
    path = Path(data).expanduser()
    path = resolve_source(path, auto_download=auto_download, url=url, progress=progress)
    cache_file = cache.cache_path(path, Path(cache_dir) if cache_dir else None) if use_cache else None
    cached = cache.load_cache(cache_file) if cache_file else None
    if cached is None:
        fmt, decoded = decode_source(path, progress)
        if cache_file:
            cache.save_cache(cache_file, fmt, decoded)
    else:
        fmt, decoded = cached
    if "train" in decoded:
        images, labels = decoded["train"]
        if val_size:
            train_idx, val_idx = stratified_split(labels, val_size, seed)
            train, val = Split(images[train_idx], labels[train_idx]), Split(images[val_idx], labels[val_idx])
        else:
            train, val = Split(images, labels), None
    else:
        empty = torch.empty(0, 3, 32, 32, dtype=torch.uint8)
        train, val = Split(empty, torch.empty(0, dtype=torch.int64)), None
    test = Split(*decoded["test"]) if "test" in decoded else None
    return Cifar10(
        train=train, val=val, test=test, format=fmt, source=path, cache_file=cache_file,
        from_cache=cached is not None, seconds=time.perf_counter() - start,
    )
