"""The decoded-data cache, the stratified validation split, and the real shared archive."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    SHARED_ARCHIVE,
    cache_file_bytes,
    make_pixels,
    read_cache_file,
    run_cli,
    split_counts,
    write_imagefolder,
    write_python,
    write_tar,
)
from PIL import Image

from alexnet_cifar10.data import CLASSES, load_cifar10
from alexnet_cifar10.data.cache import CACHE_VERSION, MAX_IMAGES, content_digest, default_cache_dir, fingerprint
from alexnet_cifar10.data.splits import stratified_split
from alexnet_cifar10.errors import DataError

Pixels = dict[str, tuple[np.ndarray, np.ndarray]]


@pytest.fixture
def ten_per_class() -> Pixels:
    return {"train": make_pixels(10, 3), "test": make_pixels(2, 4)}


@pytest.fixture(params=["imagefolder", "python.tar.gz"])
def source(request: pytest.FixtureRequest, tmp_path: Path, pixels: Pixels) -> Path:
    if request.param == "imagefolder":
        return write_imagefolder(tmp_path / "img", pixels)
    return write_tar(write_python(tmp_path / "py", pixels), tmp_path / "cifar.tar.gz")


def _rows(images: torch.Tensor) -> set[bytes]:
    return {bytes(row) for row in images.reshape(len(images), -1).numpy()}


def _assert_matches(data, pixels: Pixels) -> None:  # noqa: ANN001
    for name in ("train", "test"):
        x, y = pixels[name]
        split = getattr(data, name)
        assert torch.equal(split.images, torch.from_numpy(x))
        assert torch.equal(split.labels, torch.from_numpy(y.astype(np.int64)))


# --------------------------------------------------------------------------- cache
def test_cache_dir_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"


def test_second_load_comes_from_the_cache(source: Path, pixels: Pixels) -> None:
    first = load_cifar10(source, val_size=0)
    assert not first.from_cache
    assert first.cache_file is not None and first.cache_file.is_file()
    assert first.cache_file.parent == default_cache_dir()
    second = load_cifar10(source, val_size=0)
    assert second.from_cache
    assert second.cache_file == first.cache_file
    assert second.format == first.format
    _assert_matches(first, pixels)
    _assert_matches(second, pixels)


def test_explicit_cache_dir_and_no_cache(tmp_path: Path, source: Path) -> None:
    data = load_cifar10(source, val_size=0, cache_dir=tmp_path / "mine")
    assert data.cache_file is not None and data.cache_file.parent == tmp_path / "mine"
    assert load_cifar10(source, val_size=0, cache_dir=tmp_path / "mine").from_cache
    uncached = load_cifar10(source, val_size=0, use_cache=False)
    assert uncached.cache_file is None and not uncached.from_cache
    assert not any(default_cache_dir().glob("*.safetensors"))


def test_unwritable_cache_dir_only_warns(tmp_path: Path, source: Path, pixels: Pixels,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    data = load_cifar10(source, val_size=0, cache_dir=blocker / "cache")
    assert not data.from_cache
    _assert_matches(data, pixels)
    assert "warning: cannot write cache" in capsys.readouterr().err


def test_touched_folder_gets_a_new_cache_file(tmp_path: Path, pixels: Pixels) -> None:
    root = write_imagefolder(tmp_path / "img", pixels)
    first = load_cifar10(root, val_size=0)
    image = root / "train" / "cat" / "00018.png"
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = load_cifar10(root, val_size=0)
    assert second.cache_file != first.cache_file
    assert not second.from_cache
    _assert_matches(second, pixels)


def test_changed_folder_contents_are_decoded_again(tmp_path: Path, pixels: Pixels) -> None:
    root = write_imagefolder(tmp_path / "img", pixels)
    first = load_cifar10(root, val_size=0)
    assert first.train.labels[18] == CLASSES.index("cat")
    image = root / "train" / "cat" / "00018.png"
    st = image.stat()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(image)
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = load_cifar10(root, val_size=0)
    assert second.cache_file != first.cache_file and not second.from_cache
    assert second.train.images[18].flatten(1).unique(dim=1).T.tolist() == [[1, 2, 3]]
    assert torch.equal(second.train.images[:18], first.train.images[:18])


def test_changed_archive_gets_a_new_cache_file(tmp_path: Path, pixels: Pixels) -> None:
    archive = write_tar(write_python(tmp_path / "a", pixels), tmp_path / "cifar.tar.gz")
    first = load_cifar10(archive, val_size=0)
    other = {"train": make_pixels(6, 7), "test": make_pixels(2, 8)}
    st = archive.stat()
    archive.unlink()
    write_tar(write_python(tmp_path / "b", other), archive)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    second = load_cifar10(archive, val_size=0)
    assert second.cache_file != first.cache_file and not second.from_cache
    _assert_matches(second, other)
    # touching alone (same bytes, new mtime) also invalidates
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns + 9_000_000_000))
    third = load_cifar10(archive, val_size=0)
    assert third.cache_file not in (first.cache_file, second.cache_file) and not third.from_cache


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def _garbage(kind: str, valid: bytes, marker: Path) -> bytes:
    if kind == "random":
        return np.random.default_rng(0).bytes(4096)
    if kind == "empty":
        return b""
    if kind == "truncated":
        return valid[: len(valid) // 2]
    if kind == "runs-code":
        return pickle.dumps(_RunsCode(marker))
    version, images, labels = str(CACHE_VERSION), torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4).long()
    if kind == "old-version":
        version = str(CACHE_VERSION + 1)
    elif kind == "wrong-shape":
        images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
    elif kind == "wrong-dtype":
        images = torch.zeros(4, 3, 32, 32)
    elif kind == "not-splits":
        return cache_file_bytes({"version": version}, {"weights": torch.zeros(3)})
    return cache_file_bytes({"version": version, "format": "python"}, {"train.images": images, "train.labels": labels})


@pytest.mark.parametrize(
    "kind", ["random", "empty", "truncated", "runs-code", "old-version", "wrong-shape", "wrong-dtype", "not-splits"]
)
def test_corrupt_cache_is_rebuilt_not_trusted(tmp_path: Path, source: Path, pixels: Pixels, kind: str) -> None:
    first = load_cifar10(source, val_size=0)
    cache_file = first.cache_file
    marker = tmp_path / "pwned"
    cache_file.write_bytes(_garbage(kind, cache_file.read_bytes(), marker))
    second = load_cifar10(source, val_size=0)
    assert not second.from_cache
    assert second.cache_file == cache_file
    _assert_matches(second, pixels)
    assert not marker.exists()
    third = load_cifar10(source, val_size=0)  # the rebuilt cache is whole again
    assert third.from_cache
    _assert_matches(third, pixels)


# --------------------------------------------------------------------------- stratified split
def test_val_split_is_stratified(tmp_path: Path, ten_per_class: Pixels) -> None:
    root = write_python(tmp_path / "py", ten_per_class)
    data = load_cifar10(root, val_size=30)
    assert len(data.train) == 70 and len(data.val) == 30
    assert data.val.class_counts() == [3] * 10
    assert data.train.class_counts() == [7] * 10
    assert len(data.test) == 20
    assert data.train.images.dtype == data.val.images.dtype == torch.uint8


def test_val_size_not_a_multiple_of_ten(tmp_path: Path, ten_per_class: Pixels) -> None:
    data = load_cifar10(write_python(tmp_path / "py", ten_per_class), val_size=25)
    assert data.val.class_counts() == [3] * 5 + [2] * 5
    assert len(data.train) == 75


def test_val_and_train_are_disjoint_and_cover_the_training_split(tmp_path: Path, ten_per_class: Pixels) -> None:
    data = load_cifar10(write_python(tmp_path / "py", ten_per_class), val_size=30, seed=4)
    train, val = _rows(data.train.images), _rows(data.val.images)
    assert len(train) == 70 and len(val) == 30  # the random pixels are all distinct
    assert not train & val
    assert train | val == _rows(torch.from_numpy(ten_per_class["train"][0]))


def test_split_indices(ten_per_class: Pixels) -> None:
    labels = torch.from_numpy(ten_per_class["train"][1])
    train_idx, val_idx = stratified_split(labels, 30, seed=0)
    assert torch.equal(torch.cat([train_idx, val_idx]).sort().values, torch.arange(100))
    assert torch.equal(val_idx, val_idx.sort().values)
    assert torch.bincount(labels[val_idx], minlength=10).tolist() == [3] * 10
    again_train, again_val = stratified_split(labels, 30, seed=0)
    assert torch.equal(again_train, train_idx) and torch.equal(again_val, val_idx)


def test_split_is_deterministic_per_seed(tmp_path: Path, ten_per_class: Pixels) -> None:
    root = write_python(tmp_path / "py", ten_per_class)
    a = load_cifar10(root, val_size=30, seed=0)
    b = load_cifar10(root, val_size=30, seed=0)  # from the cache this time
    assert b.from_cache and not a.from_cache
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.val.labels, b.val.labels)
    assert torch.equal(a.train.images, b.train.images)
    c = load_cifar10(root, val_size=30, seed=1)
    assert c.val.class_counts() == [3] * 10
    assert _rows(c.val.images) != _rows(a.val.images)
    fresh = load_cifar10(root, val_size=30, seed=1, use_cache=False)
    assert torch.equal(fresh.val.images, c.val.images)


def test_val_size_zero_gives_no_val_split(tmp_path: Path, ten_per_class: Pixels) -> None:
    data = load_cifar10(write_python(tmp_path / "py", ten_per_class), val_size=0)
    assert data.val is None
    assert len(data.train) == 100
    assert torch.equal(data.train.images, torch.from_numpy(ten_per_class["train"][0]))


@pytest.mark.parametrize("val_size", [100, 101, 5000, -1])
def test_val_size_out_of_range(tmp_path: Path, ten_per_class: Pixels, val_size: int) -> None:
    root = write_python(tmp_path / "py", ten_per_class)
    with pytest.raises(DataError, match="--val-size"):
        load_cifar10(root, val_size=val_size)


def test_val_size_larger_than_a_class(tmp_path: Path, ten_per_class: Pixels) -> None:
    x, y = ten_per_class["train"]
    keep = (y != 0) | (np.arange(len(y)) < 2)  # only 2 airplanes
    root = write_python(tmp_path / "py", {"train": (x[keep], y[keep])})
    with pytest.raises(DataError, match="airplane"):
        load_cifar10(root, val_size=30)
    assert load_cifar10(root, val_size=20).val.class_counts() == [2] * 10


# --------------------------------------------------------------------------- the real shared archive
def test_real_shared_archive(shared_cache: Path) -> None:
    data = load_cifar10(SHARED_ARCHIVE, cache_dir=shared_cache)
    assert data.format == "imagefolder"
    assert data.test is None
    assert len(data.train) == 45_000 and len(data.val) == 5_000
    assert data.train.class_counts() == [4_500] * 10
    assert data.val.class_counts() == [500] * 10
    for split in (data.train, data.val):
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (len(split), 3, 32, 32)
    mean = data.val.images.float().mean().item()
    assert 80 < mean < 160  # real photos, not blank or noise-free decodes
    assert data.eval_split_name() == "val"


def test_cli_data_info_on_the_real_archive_hits_the_cache(tmp_path: Path, shared_cache: Path) -> None:
    args = ("data", "info", "--data", str(SHARED_ARCHIVE), "--cache-dir", str(shared_cache))
    results = [run_cli(*args, cwd=tmp_path) for _ in range(2)]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert split_counts(result.stdout) == {"train": "45000", "val": "5000", "test": "none"}
        assert "format: imagefolder" in result.stdout
    cache_line = next(line for line in results[1].stdout.splitlines() if line.startswith("cache:"))
    assert "(hit," in cache_line
    assert str(shared_cache) in cache_line


# --------------------------------------------------------------------------- planted caches
def _forged(cache_file: Path, change: str) -> bytes:
    """A cache file for ``cache_file``'s key, with one thing wrong about it."""
    meta, tensors = read_cache_file(cache_file)
    x, y = tensors["train.images"], tensors["train.labels"]
    if change == "labels":  # labels out of range, the digest made to match them
        y[0] = 42
        splits = {name: (tensors[f"{name}.images"], tensors[f"{name}.labels"])
                  for name in {k.partition(".")[0] for k in tensors}}
        meta["digest"] = content_digest(cache_file.stem, meta["format"], splits)
    elif change == "pixels":  # one pixel changed after the digest was taken
        x[0, 0, 0, 0] ^= 0xFF
    elif change == "key":  # a sound cache of another source, copied under this key
        meta["key"] = "0" * 20
    elif change == "float":
        tensors["train.images"] = x.float()
    return cache_file_bytes(meta, tensors)


def test_a_cache_tensor_larger_than_any_split_is_refused_before_it_loads(source: Path, pixels: Pixels,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A safetensors header claiming MAX_IMAGES + 1 images, over a sparse file of that size: refused from the
    header, before anything is allocated for it."""
    import json
    import struct

    cache_file = load_cifar10(source, val_size=0).cache_file
    meta, _ = read_cache_file(cache_file)
    size = (MAX_IMAGES + 1) * 3 * 32 * 32
    images = {"dtype": "U8", "shape": [MAX_IMAGES + 1, 3, 32, 32], "data_offsets": [0, size]}
    labels = {"dtype": "I64", "shape": [1], "data_offsets": [size, size + 8]}
    header = json.dumps({"__metadata__": meta, "train.images": images, "train.labels": labels}).encode()
    with open(cache_file, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + size + 8)
    capsys.readouterr()
    again = load_cifar10(source, val_size=0)
    assert not again.from_cache and "(a tensor larger than any split)" in capsys.readouterr().err
    _assert_matches(again, pixels)


@pytest.mark.parametrize(("change", "reason"), [("labels", "labels outside 0..9"),
                                                ("pixels", "do not match their sha256"),
                                                ("key", "made for another source"),
                                                ("float", "images are not uint8")])
def test_a_planted_cache_is_rebuilt_with_a_warning(source: Path, pixels: Pixels, change: str, reason: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cache_file = load_cifar10(source, val_size=0).cache_file
    cache_file.write_bytes(_forged(cache_file, change))
    capsys.readouterr()
    again = load_cifar10(source, val_size=0)
    assert not again.from_cache
    _assert_matches(again, pixels)
    err = capsys.readouterr().err
    assert f"warning: ignoring cache {cache_file} (" in err and reason in err and len(err.splitlines()) == 1
    assert load_cifar10(source, val_size=0).from_cache  # rebuilt whole


def test_a_link_planted_under_the_key_is_replaced_not_written_through(tmp_path: Path, source: Path,
                                                                      pixels: Pixels) -> None:
    cache_file = load_cifar10(source, val_size=0).cache_file
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(cache_file.read_bytes())  # even a sound cache is not read through a link
    cache_file.unlink()
    cache_file.symlink_to(victim)
    before = victim.read_bytes()
    again = load_cifar10(source, val_size=0)
    assert not again.from_cache
    _assert_matches(again, pixels)
    assert victim.read_bytes() == before and not cache_file.is_symlink()


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="needs root to give a file away")
def test_a_cache_file_of_another_user_is_not_trusted(source: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache_file = load_cifar10(source, val_size=0).cache_file
    os.chown(cache_file, 12345, 12345)
    assert not load_cifar10(source, val_size=0).from_cache
    assert "owned by another user" in capsys.readouterr().err


def test_the_key_covers_file_names_that_are_not_utf8(tmp_path: Path, pixels: Pixels) -> None:
    root = write_imagefolder(tmp_path / "img", pixels)
    first = fingerprint(root)
    image = sorted((root / "train" / "cat").iterdir())[0]
    os.rename(image, os.fsencode(image.parent) + b"/\xff.png")
    assert fingerprint(root) != first
