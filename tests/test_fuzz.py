"""Seeded byte-mutation fuzzing of every reader: each case loads or fails with the project's error."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
from conftest import make_pixels, write_binary, write_imagefolder, write_python, write_tar

from alexnet_cifar10.data import load_cifar10
from alexnet_cifar10.errors import AlexNetCifarError

CASES = int(os.environ.get("FUZZ_CASES", "300"))


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "zero", "splice"])
    if kind == "flip":
        for _ in range(rng.randint(1, 16)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del b[rng.randrange(len(b)):]
    elif kind == "insert":
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "zero":
        at = rng.randrange(len(b))
        b[at:at + rng.randint(1, 256)] = bytes(min(len(b) - at, rng.randint(1, 256)))
    else:
        at, src = rng.randrange(len(b)), rng.randrange(len(b))
        n = rng.randint(1, 128)
        b[at:at + n] = b[src:src + n]
    return bytes(b)


def _alarm(signum: int, frame: object) -> None:
    raise TimeoutError("reader hung")


def targets(root: Path) -> dict[str, Path]:
    """One file per reader, each inside a data set that is valid before mutation."""
    pixels = {"train": make_pixels(2, 0), "test": make_pixels(1, 1)}
    py = write_python(root / "py", pixels)
    binary = write_binary(root / "bin", pixels)
    png = write_imagefolder(root / "png", pixels)
    jpg = write_imagefolder(root / "jpg", pixels, ext="jpg")
    return {
        "tar.gz of python batches": write_tar(py, root / "py.tar.gz"),
        "tar of png folder": write_tar(png, root / "png.tar"),
        "pickle batch": py / "cifar-10-batches-py" / "data_batch_1",
        "pickle meta": py / "cifar-10-batches-py" / "batches.meta",
        "binary batch": binary / "cifar-10-batches-bin" / "data_batch_1.bin",
        "png image": next((png / "train" / "cat").iterdir()),
        "jpeg image": next((jpg / "train" / "dog").iterdir()),
    }


def load_target(path: Path, data_root: Path) -> None:
    load_cifar10(path if path.suffix in (".gz", ".tar") else data_root, val_size=0, use_cache=False)


@pytest.mark.parametrize("name", ["tar.gz of python batches", "tar of png folder", "pickle batch", "pickle meta",
                                  "binary batch", "png image", "jpeg image"])
def test_mutated_inputs_fail_cleanly(name: str, tmp_path: Path) -> None:
    path = targets(tmp_path)[name]
    data_root = tmp_path / {"pickle batch": "py", "pickle meta": "py", "binary batch": "bin",
                            "png image": "png", "jpeg image": "jpg"}.get(name, "")
    original = path.read_bytes()
    load_target(path, data_root)  # valid before mutation
    before = sorted(p for p in tmp_path.rglob("*"))
    rng = random.Random(f"{name}-0")
    outcomes = {"loaded": 0, "refused": 0}
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for case in range(CASES):
            path.write_bytes(mutate(original, rng))
            signal.setitimer(signal.ITIMER_REAL, 20)
            try:
                load_target(path, data_root)
                outcomes["loaded"] += 1
            except AlexNetCifarError as e:
                message = str(e)
                assert "\n" not in message and len(message) < 2000, (case, message)
                outcomes["refused"] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere
    assert outcomes["refused"] > 0
    print(name, outcomes)
