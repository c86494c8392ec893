"""Every supported layout decodes to the same tensors; every bad input ends in one DataError."""

from __future__ import annotations

import io
import os
import pickle
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    add_member,
    make_deep_tree,
    make_pixels,
    padded,
    remove_deep_tree,
    run_cli,
    sparse_header,
    tar_header,
    write_binary,
    write_gzip,
    write_imagefolder,
    write_python,
    write_tar,
)
from PIL import Image

from alexnet_cifar10.data import load_cifar10, sources
from alexnet_cifar10.errors import AlexNetCifarError, DataError

Pixels = dict[str, tuple[np.ndarray, np.ndarray]]

WRITERS: dict[str, Callable[[Path, Pixels], Path]] = {
    "python": write_python,
    "binary": write_binary,
    "imagefolder": write_imagefolder,
}
INNER = {"python": "cifar-10-batches-py", "binary": "cifar-10-batches-bin"}


def _load(path: Path):  # noqa: ANN202
    return load_cifar10(path, val_size=0, use_cache=False)


def _assert_same(data, pixels: Pixels, splits: tuple[str, ...] = ("train", "test")) -> None:  # noqa: ANN001
    for name in ("train", "test"):
        split = getattr(data, name)
        if name not in splits:
            assert split is None or len(split) == 0
            continue
        x, y = pixels[name]
        assert split.images.dtype == torch.uint8
        assert split.labels.dtype == torch.int64
        assert tuple(split.images.shape) == (len(y), 3, 32, 32)
        assert torch.equal(split.images, torch.from_numpy(x))
        assert torch.equal(split.labels, torch.from_numpy(y.astype(np.int64)))
    assert data.val is None


# --------------------------------------------------------------------------- same tensors everywhere
LAYOUTS = [(fmt, container) for fmt in sorted(WRITERS) for container in ("folder", "inner", ".tar.gz", ".tgz", ".tar")
           if fmt in INNER or container != "inner"]


@pytest.mark.parametrize(("fmt", "container"), LAYOUTS)
def test_every_layout_gives_identical_tensors(tmp_path: Path, pixels: Pixels, fmt: str, container: str) -> None:
    root = WRITERS[fmt](tmp_path / "src", pixels)
    if container == "folder":
        path = root  # a torchvision-style root that holds cifar-10-batches-*/ (or train/ and test/)
    elif container == "inner":
        path = root / INNER[fmt]  # the cifar-10-batches-* folder itself
    else:
        path = write_tar(root, tmp_path / f"data{container}")
    data = _load(path)
    assert data.format == fmt
    _assert_same(data, pixels)


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_archive_with_the_batches_folder_at_its_top(tmp_path: Path, pixels: Pixels, fmt: str) -> None:
    root = WRITERS[fmt](tmp_path / "src", pixels)
    archive = write_tar(root / INNER[fmt], tmp_path / "flat.tar.gz")
    _assert_same(_load(archive), pixels)


def test_folder_holding_only_an_archive_is_read_through_it(tmp_path: Path, pixels: Pixels) -> None:
    root = write_python(tmp_path / "src", pixels)
    holder = tmp_path / "holder"
    holder.mkdir()
    write_tar(root, holder / "cifar-10-python.tar.gz")
    data = _load(holder)
    assert data.format == "python"
    _assert_same(data, pixels)


def test_jpeg_image_folder_decodes_close_to_the_pixels(tmp_path: Path) -> None:
    # smooth pixels so JPEG stays close; exact equality is only promised for lossless formats
    y = np.repeat(np.arange(10), 2)
    x = np.broadcast_to((y * 20 + 30).astype(np.uint8)[:, None, None, None], (20, 3, 32, 32)).copy()
    root = write_imagefolder(tmp_path / "jpg", {"train": (x, y)}, ext="jpg")
    data = _load(root)
    assert data.format == "imagefolder"
    assert torch.equal(data.train.labels, torch.from_numpy(y))
    diff = (data.train.images.int() - torch.from_numpy(x).int()).abs()
    assert diff.max() <= 4


# --------------------------------------------------------------------------- partial image folders
@pytest.mark.parametrize("only", ["train", "test"])
@pytest.mark.parametrize("archived", [False, True])
def test_single_split_image_folders_are_valid(tmp_path: Path, pixels: Pixels, only: str, archived: bool) -> None:
    root = write_imagefolder(tmp_path / "src", {only: pixels[only]})
    path = write_tar(root, tmp_path / "one.tar.gz") if archived else root
    data = _load(path)
    assert data.format == "imagefolder"
    _assert_same(data, pixels, splits=(only,))
    if only == "test":
        assert len(data.train) == 0
        assert data.eval_split_name() == "test"
    else:
        assert data.test is None


def test_train_only_folder_gets_a_stratified_val_split(tmp_path: Path) -> None:
    root = write_imagefolder(tmp_path / "src", {"train": make_pixels(3, 5)})
    data = load_cifar10(root, val_size=10, use_cache=False)
    assert len(data.train) == 20 and len(data.val) == 10 and data.test is None
    assert data.val.class_counts() == [1] * 10
    assert data.eval_split_name() == "val"


# --------------------------------------------------------------------------- bad inputs
def _raises(path: Path, *needles: str) -> str:
    """Loading ``path`` fails with a DataError (an AlexNetCifarError) whose message has ``needles``."""
    with pytest.raises(DataError) as info:
        _load(path)
    assert isinstance(info.value, AlexNetCifarError)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


@pytest.fixture
def py_root(tmp_path: Path, pixels: Pixels) -> Path:
    return write_python(tmp_path / "py", pixels)


@pytest.fixture
def img_root(tmp_path: Path, pixels: Pixels) -> Path:
    return write_imagefolder(tmp_path / "img", pixels)


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _raises(missing, str(missing), "--data")


def test_unrecognised_layout(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.bin", "readme.txt", "sub/b.dat"):
        (folder / name).write_bytes(rng.bytes(100))
    _raises(folder, str(folder), "no CIFAR-10 layout")


def test_unrecognised_archive(tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello\n")
    archive = write_tar(folder, tmp_path / "junk.tar.gz")
    _raises(archive, str(archive), "no CIFAR-10 layout")


def test_file_that_is_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK\x03\x04")
    _raises(path, str(path))


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar"])
def test_truncated_archive(tmp_path: Path, py_root: Path, suffix: str) -> None:
    archive = write_tar(py_root, tmp_path / f"data{suffix}")
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    _raises(archive, str(archive))


@pytest.mark.parametrize("into_header", [0, 256])
def test_tar_cut_at_a_member_boundary(tmp_path: Path, img_root: Path, into_header: int) -> None:
    """tarfile itself reads such a file without complaint, one image short."""
    archive = write_tar(img_root, tmp_path / "data.tar")
    with tarfile.open(archive) as tar:
        last = tar.getmembers()[-1].offset  # where the last member's header starts
    archive.write_bytes(archive.read_bytes()[: last + into_header])
    _raises(archive, str(archive), "truncated or corrupt archive")


def test_garbage_archive(tmp_path: Path) -> None:
    archive = tmp_path / "data.tgz"
    archive.write_bytes(np.random.default_rng(1).bytes(5000))
    _raises(archive, str(archive))


def test_corrupt_pickle(py_root: Path) -> None:
    batch = py_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(np.random.default_rng(0).bytes(4096))
    _raises(py_root, str(batch))


def test_truncated_pickle(py_root: Path) -> None:
    batch = py_root / "cifar-10-batches-py" / "data_batch_1"
    blob = batch.read_bytes()
    batch.write_bytes(blob[: len(blob) // 2])
    _raises(py_root, str(batch), "truncated or corrupt pickle")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("member", ["data_batch_1", "test_batch", "batches.meta"])
def test_pickle_that_would_run_code_is_refused(tmp_path: Path, py_root: Path, member: str) -> None:
    marker = tmp_path / "pwned"
    evil = py_root / "cifar-10-batches-py" / member
    evil.write_bytes(pickle.dumps(_RunsCode(marker), protocol=2))
    _raises(py_root, str(evil), "not loaded")
    assert not marker.exists()


def test_pickle_that_would_run_code_inside_an_archive(tmp_path: Path, py_root: Path) -> None:
    marker = tmp_path / "pwned"
    (py_root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_RunsCode(marker)))
    archive = write_tar(py_root, tmp_path / "evil.tar.gz")
    _raises(archive, str(archive), "cifar-10-batches-py/data_batch_1", "not loaded")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param([1, 2, 3], id="list"),
        pytest.param({b"labels": [0, 1]}, id="dict-without-data"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8)}, id="dict-without-labels"),
        pytest.param({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, id="data-wrong-shape"),
        pytest.param({b"data": np.zeros((2, 3, 32, 32), np.uint8), b"labels": [0, 1]}, id="data-4d"),
        pytest.param({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, id="data-wrong-dtype"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, id="label-count"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, id="label-range"),
        pytest.param({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "x"]}, id="label-type"),
    ],
)
def test_pickle_that_is_not_a_batch(py_root: Path, payload: object) -> None:
    batch = py_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(pickle.dumps(payload, protocol=2))
    _raises(py_root, str(batch))


def test_meta_with_wrong_label_names(py_root: Path) -> None:
    meta = py_root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": [b"a", b"b"]}, protocol=2))
    _raises(py_root, str(meta))


@pytest.mark.parametrize("cut", [1, 3072, 3073 + 5])
def test_truncated_binary_batch(tmp_path: Path, pixels: Pixels, cut: int) -> None:
    root = write_binary(tmp_path / "bin", pixels)
    batch = root / "cifar-10-batches-bin" / "data_batch_1.bin"
    blob = batch.read_bytes()
    batch.write_bytes(blob[:-cut])
    _raises(root, str(batch), "3073")


def test_empty_binary_batch(tmp_path: Path, pixels: Pixels) -> None:
    root = write_binary(tmp_path / "bin", pixels)
    batch = root / "cifar-10-batches-bin" / "test_batch.bin"
    batch.write_bytes(b"")
    _raises(root, str(batch))


def test_binary_label_out_of_range(tmp_path: Path, pixels: Pixels) -> None:
    root = write_binary(tmp_path / "bin", pixels)
    batch = root / "cifar-10-batches-bin" / "data_batch_1.bin"
    blob = bytearray(batch.read_bytes())
    blob[0] = 200
    batch.write_bytes(bytes(blob))
    _raises(root, str(batch), "labels")


def _first_image(root: Path, split: str = "train", cls: str = "cat") -> Path:
    return sorted((root / split / cls).iterdir())[0]


def test_corrupt_image_file(img_root: Path) -> None:
    image = _first_image(img_root)
    image.write_bytes(np.random.default_rng(0).bytes(300))
    _raises(img_root, str(image))


def test_truncated_image_file(img_root: Path) -> None:
    image = _first_image(img_root, "test", "ship")
    blob = image.read_bytes()
    image.write_bytes(blob[: len(blob) // 2])
    _raises(img_root, str(image))


@pytest.mark.parametrize("size", [(33, 32), (32, 31), (64, 64)])
def test_wrong_image_size(img_root: Path, size: tuple[int, int]) -> None:
    image = _first_image(img_root)
    Image.new("RGB", size, (10, 20, 30)).save(image)
    _raises(img_root, str(image), f"{size[0]}x{size[1]}")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P"])
def test_wrong_image_mode(img_root: Path, mode: str) -> None:
    image = _first_image(img_root, "test", "dog")
    Image.new(mode, (32, 32)).save(image)
    _raises(img_root, str(image), mode)


def test_missing_class_folder(img_root: Path) -> None:
    shutil.rmtree(img_root / "train" / "cat")
    _raises(img_root, str(img_root / "train"), "missing", "cat")


def test_unknown_class_folder(img_root: Path, pixels: Pixels) -> None:
    (img_root / "train" / "unicorn").mkdir()
    Image.fromarray(pixels["train"][0][0].transpose(1, 2, 0)).save(img_root / "train" / "unicorn" / "0.png")
    _raises(img_root, str(img_root / "train"), "unknown", "unicorn")


def test_class_folder_without_images(img_root: Path) -> None:
    folder = img_root / "test" / "frog"
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("no pictures here\n")
    _raises(img_root, str(folder), "no images")


def test_empty_class_folder(img_root: Path) -> None:
    folder = img_root / "test" / "frog"
    shutil.rmtree(folder)
    folder.mkdir()
    _raises(img_root, str(img_root / "test"), "frog")


def test_image_nested_too_deep(img_root: Path) -> None:
    deep = img_root / "train" / "cat" / "extra"
    deep.mkdir()
    shutil.copy(_first_image(img_root), deep / "x.png")
    _raises(img_root, str(deep / "x.png"))


def test_bad_image_inside_an_archive_names_the_member(tmp_path: Path, img_root: Path) -> None:
    image = _first_image(img_root)
    Image.new("RGBA", (32, 32)).save(image)
    archive = write_tar(img_root, tmp_path / "img.tar.gz")
    _raises(archive, str(archive), f"train/cat/{image.name}", "RGBA")


@pytest.mark.parametrize(
    ("name", "attrs", "needle"),
    [
        pytest.param("/abs/evil.png", {}, "unsafe path", id="absolute"),
        pytest.param("../evil.png", {}, "unsafe path", id="dotdot"),
        pytest.param("train/../../evil.png", {}, "unsafe path", id="dotdot-inside"),
        pytest.param("train/cat/link.png", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "link",
                     id="symlink"),
        pytest.param("train/cat/hard.png", {"type": tarfile.LNKTYPE, "linkname": "train/cat/00012.png"}, "link",
                     id="hardlink"),
        pytest.param("train/cat/fifo", {"type": tarfile.FIFOTYPE}, "not a regular file", id="fifo"),
        pytest.param("train/cat/dev", {"type": tarfile.CHRTYPE}, "not a regular file", id="device"),
    ],
)
@pytest.mark.parametrize("position", ["first", "last"])
def test_unsafe_archive_member(tmp_path: Path, pixels: Pixels, name: str, attrs: dict, needle: str,
                               position: str) -> None:
    root = write_imagefolder(tmp_path / "img", {"train": pixels["train"]})
    archive = tmp_path / "evil.tar.gz"
    data = b"" if "type" in attrs else b"x"
    with tarfile.open(archive, "w:gz") as tar:
        if position == "first":
            add_member(tar, name, data, **attrs)
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
        if position == "last":
            add_member(tar, name, data, **attrs)
    _raises(archive, str(archive), repr(name), needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "img"]  # nothing extracted


def test_hidden_members_are_ignored(tmp_path: Path, pixels: Pixels) -> None:
    root = write_imagefolder(tmp_path / "img", pixels)
    archive = tmp_path / "mac.tar.gz"
    write_tar(root, archive)
    buf = io.BytesIO()
    with tarfile.open(archive) as src, tarfile.open(fileobj=buf, mode="w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        add_member(dst, "train/cat/._00012.png", b"AppleDouble junk")
        add_member(dst, "__MACOSX_unused/.DS_Store", b"junk")
    archive.write_bytes(buf.getvalue())
    _assert_same(_load(archive), pixels)


# --------------------------------------------------------------------------- through the CLI
def _assert_one_line_error(result, *needles: str) -> None:  # noqa: ANN001
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("alexnet-cifar10: error:")
    for needle in needles:
        assert needle in lines[0]


def test_cli_reports_missing_path_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = run_cli("data", "info", "--data", str(missing), cwd=tmp_path)
    _assert_one_line_error(result, str(missing))


def test_cli_reports_hostile_pickle_in_one_line(tmp_path: Path, pixels: Pixels) -> None:
    marker = tmp_path / "pwned"
    root = write_python(tmp_path / "py", pixels)
    (root / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(_RunsCode(marker)))
    archive = write_tar(root, tmp_path / "evil.tgz")
    result = run_cli("data", "info", "--data", str(archive), cwd=tmp_path)
    _assert_one_line_error(result, str(archive), "data_batch_1")
    assert not marker.exists()


# --------------------------------------------------------------------------- limits and odd files
def _bomb(tmp_path: Path, pieces: list[bytes | int]) -> Path:
    return write_gzip(tmp_path / "bomb.tar.gz", [*pieces, bytes(2 * tarfile.BLOCKSIZE)])


def test_a_member_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    size = sources.MAX_FILE_BYTES + 1
    archive = _bomb(tmp_path, [tar_header("train/cat/big.png", size), size, bytes(padded(size))])
    _raises(archive, "train/cat/big.png", "64 MiB")


def test_a_sparse_member_is_refused(tmp_path: Path) -> None:
    archive = _bomb(tmp_path, [sparse_header("train/cat/big.png", 8 << 30)])
    _raises(archive, "sparse", "train/cat/big.png")


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_a_header_that_claims_gigabytes_is_refused_unread(tmp_path: Path, kind: bytes) -> None:
    archive = _bomb(tmp_path, [tar_header("././@LongLink", 8 << 30, kind)])
    _raises(archive, "larger than the 64 MiB")


def test_the_decompressed_total_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 3 << 20)
    pieces: list[bytes | int] = []
    for i in range(4):  # 4 MiB in members of 1 MiB, each within the member limit
        pieces += [tar_header(f"bomb/{i}.bin", 1 << 20), 1 << 20]
    _raises(_bomb(tmp_path, pieces), "decompresses to more than 3 MiB")


def test_hidden_members_count_towards_the_total(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 3 << 20)
    pieces: list[bytes | int] = []
    for i in range(4):  # skipped, not read, but still decompressed to reach the next header
        pieces += [tar_header(f".pad{i}", 1 << 20), 1 << 20]
    _raises(_bomb(tmp_path, pieces), "decompresses to more than 3 MiB")


def test_the_member_count_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_FILES", 50)
    archive = _bomb(tmp_path, [tar_header("d", 0, tarfile.DIRTYPE) * 51])
    _raises(archive, "more than 50 archive members")


def test_the_file_count_of_a_folder_is_capped(img_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_FILES", 50)
    _raises(img_root, "more than 50 files")


def test_a_folder_reads_at_most_the_total(tmp_path: Path, pixels: Pixels, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "MAX_TOTAL_BYTES", 100_000)
    _raises(write_python(tmp_path / "py", pixels), "more than 97.7 KiB of data")


@pytest.mark.parametrize("kind", ["fifo", "device", "huge", "dangling"])
def test_a_batch_that_is_not_a_plain_small_file_is_refused_unread(py_root: Path, kind: str) -> None:
    batch = py_root / "cifar-10-batches-py" / "data_batch_1"
    batch.unlink()
    if kind == "fifo":
        os.mkfifo(batch)  # reading it would block for ever
    elif kind == "device":
        batch.symlink_to("/dev/zero")  # reading it would never end
    elif kind == "huge":
        with open(batch, "wb") as f:
            f.truncate(10 << 30)  # sparse: no disk used
    else:
        batch.symlink_to(py_root / "nowhere")
    needle = {"fifo": "not a regular file", "device": "not a regular file", "huge": "64 MiB",
              "dangling": "cannot read"}[kind]
    _raises(py_root, str(batch), needle)


def test_odd_names_and_links_in_a_folder_are_tolerated(img_root: Path, pixels: Pixels) -> None:
    """A file name that is not UTF-8 is read like any other; dangling links that no layout names are skipped."""
    image = _first_image(img_root)
    os.rename(image, os.fsencode(image.parent) + b"/\xff" + os.fsencode(image.name))
    (img_root / "train" / "cat" / ".hidden-link").symlink_to(img_root / "nowhere")
    (img_root / "notes.txt").symlink_to(img_root / "nowhere")
    data = load_cifar10(img_root, val_size=0)  # through the cache, whose key covers the odd names
    assert len(data.train) == len(pixels["train"][1]) and not data.from_cache
    assert load_cifar10(img_root, val_size=0).from_cache


def test_a_class_folder_that_is_not_utf8_is_named_in_the_error(img_root: Path, pixels: Pixels) -> None:
    odd = os.fsencode(img_root / "train") + b"/\xffcat"
    os.mkdir(odd)
    shutil.copy(_first_image(img_root), odd + b"/0.png")
    message = _raises(img_root, "unknown class folder", "\\xffcat")
    message.encode("ascii")  # printable anywhere


def test_a_tree_deeper_than_the_walk_is_skipped(img_root: Path, pixels: Pixels) -> None:
    """1,200 nested folders beside the data: deeper than Python's recursion limit, which os.walk hits."""
    make_deep_tree(img_root, 1200)
    try:
        data = load_cifar10(img_root, val_size=0)
        assert len(data.train) == len(pixels["train"][1])
    finally:
        remove_deep_tree(img_root, 1200)


def test_meta_label_names_that_are_not_utf8(py_root: Path) -> None:
    meta = py_root / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": [b"\xff\xfe"] * 10 + [b"x"] * 1000}, protocol=2))
    _raises(py_root, str(meta), "and 1000 more")


def test_a_pickle_that_asks_for_a_huge_memo_is_refused(py_root: Path) -> None:
    batch = py_root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(b"\x80\x02}r\xff\xff\xff\x7f.")  # EMPTY_DICT, LONG_BINPUT 2**31 - 1, STOP
    _raises(py_root, str(batch), "memo index")


@pytest.mark.parametrize("compression", ["bz2", "xz"])
def test_archives_are_recognised_by_their_bytes(tmp_path: Path, pixels: Pixels, compression: str) -> None:
    root = write_python(tmp_path / "py", pixels)
    archive = tmp_path / "data.tar"  # the name says plain tar; the bytes say otherwise
    with tarfile.open(archive, f"w:{compression}") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    _assert_same(_load(archive), pixels)
