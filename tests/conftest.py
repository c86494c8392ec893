"""Tiny CIFAR-10 data sets in every format, built in temp folders from the same pixels."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet_cifar10.data.formats import CLASSES

REPO = Path(__file__).resolve().parents[1]
SHARED_ARCHIVE = REPO.parent / "shared" / "datasets" / "cifar10-train-jpeg.tar.gz"


def make_pixels(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images N x 3 x 32 x 32 (uint8) sorted by class, with a class-dependent pattern."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(CLASSES)), per_class)
    noise = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    base = (labels[:, None, None, None] * 25).astype(np.uint8)
    images = np.where(rng.random(noise.shape) < 0.6, base + noise // 8, noise).astype(np.uint8)
    return images, labels


def write_python(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = {"train": "data_batch_1", "test": "test_batch"}
    for split, (x, y) in splits.items():
        batch = {b"batch_label": b"x", b"labels": y.tolist(), b"data": x.reshape(len(x), -1),
                 b"filenames": [f"{i}.png".encode() for i in range(len(y))]}
        (folder / names[split]).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [c.encode() for c in CLASSES], b"num_cases_per_batch": 10}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def write_binary(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> Path:
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    names = {"train": "data_batch_1.bin", "test": "test_batch.bin"}
    for split, (x, y) in splits.items():
        rec = np.concatenate([y.astype(np.uint8)[:, None], x.reshape(len(x), -1)], axis=1)
        (folder / names[split]).write_bytes(rec.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def write_imagefolder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], ext: str = "png") -> Path:
    for split, (x, y) in splits.items():
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            folder = root / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(folder / f"{i:05d}.{ext}")
    return root


def write_tar(folder: Path, archive: Path) -> Path:
    with tarfile.open(archive, "w:gz" if archive.name.endswith(("gz", "tgz")) else "w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=path.relative_to(folder).as_posix(), recursive=False)
    return archive


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"x", **attrs: object) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for k, v in attrs.items():
        setattr(info, k, v)
    tar.addfile(info, io.BytesIO(data) if info.isfile() else None)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def pixels() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {"train": make_pixels(6, 0), "test": make_pixels(2, 1)}


@pytest.fixture(scope="session")
def tiny_png(tmp_path_factory: pytest.TempPathFactory, pixels) -> Path:  # noqa: ANN001
    """A tiny image-folder data set with train and test splits (60 + 20 images)."""
    return write_imagefolder(tmp_path_factory.mktemp("tiny") / "cifar", pixels)


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run ``python -m alexnet_cifar10`` in a subprocess, as a user would."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "alexnet_cifar10", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def split_counts(stdout: str) -> dict[str, str]:
    """The image count per split from the table that `data info` prints."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in ("train", "val", "test"):
            rows[parts[0]] = parts[1]
    return rows
