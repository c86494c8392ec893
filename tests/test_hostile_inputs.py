"""The real CLI, in a subprocess, on hostile or broken inputs: archive bombs, odd URLs and servers, planted caches,
crafted checkpoints, odd file names.

Every refused case ends in exactly one line ``alexnet-cifar10: error: ...`` of at most 300 characters that names
the problem, with a non-zero exit and no traceback; every case finishes within ``LIMIT_S`` seconds and
``MEMORY_BYTES`` of address space (a bomb that got past the limits would hit it) and writes nothing outside its
own temp folder (HOME, XDG_CACHE_HOME, ALEXNET_CIFAR10_CACHE, TMPDIR and the working folder all lie inside it).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CLI_WITH_CTRL_C,
    HOSTILE_CHECKPOINTS,
    HttpServer,
    ServerState,
    cache_file_bytes,
    http_server,
    make_deep_tree,
    make_pixels,
    padded,
    read_cache_file,
    remove_deep_tree,
    sparse_header,
    split_counts,
    tar_header,
    tiny_state,
    write_checkpoint,
    write_gzip,
    write_imagefolder,
    write_python,
    write_tar,
)
from PIL import Image

from alexnet_cifar10.data import load_cifar10
from alexnet_cifar10.data.cache import cache_path, content_digest
from alexnet_cifar10.data.download import MAX_DOWNLOAD_BYTES
from alexnet_cifar10.data.sources import MAX_FILE_BYTES, MAX_FILES

LIMIT_S = 60
# About five times what the CLI needs (torch and its thread pools reserve about 0.8 GiB; a source read to the
# 1 GiB limit adds that much), and less than an 8 GiB sparse member or header would claim.
MEMORY_BYTES = 4 << 30
NAME = "cifar-10-python.tar.gz"
Pixels = dict[str, tuple[np.ndarray, np.ndarray]]

# The child sets its own address-space limit before the CLI starts: preexec_fn is not safe in this process,
# which runs an HTTP server thread.
_LAUNCH = ("import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
           "sys.argv[0] = 'alexnet-cifar10'; runpy.run_module('alexnet_cifar10', run_name='__main__')")


@dataclass
class Case:
    """One case's temp folder, with the folders the CLI may write to all inside it."""

    root: Path

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env.update(HOME=str(self.root / "home"), XDG_CACHE_HOME=str(self.root / "xdg"),
                   ALEXNET_CIFAR10_CACHE=str(self.cache), TMPDIR=str(self.root / "tmp"), PYTHONUNBUFFERED="1",
                   no_proxy="127.0.0.1,localhost", NO_PROXY="127.0.0.1,localhost",
                   # thread pools and malloc arenas reserve address space per core; keep it the same on any machine
                   OMP_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
        env.pop("ALEXNET_CIFAR10_URL", None)
        env.pop("ALEXNET_CIFAR10_MD5", None)
        return env


def _listing(folder: Path) -> dict[str, int]:
    if not folder.is_dir():
        return {}
    return {p.name: p.lstat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture
def case(tmp_path: Path) -> Case:
    for name in ("cwd", "home", "xdg", "cache", "tmp"):
        (tmp_path / name).mkdir()
    return Case(tmp_path)


def run(case: Case, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``alexnet-cifar10 ARGS`` in a subprocess under the time and memory limits, with the case's environment
    and ``env`` on top; nothing may change beside the case's folder (the other tests' folders of this worker).
    HOME and the cache variables point inside the case, so the user's own cache is not watched: other
    programs may write it at any time."""
    before = _listing(case.root.parent)
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _LAUNCH.format(limit=MEMORY_BYTES), *args], cwd=case.cwd,
                            env={**case.env(), **(env or {})}, capture_output=True, text=True,
                            errors="backslashreplace", timeout=LIMIT_S)
    assert time.monotonic() - start < LIMIT_S
    after = _listing(case.root.parent)
    before.pop(case.root.name, None)
    after.pop(case.root.name, None)
    assert after == before, f"{case.root.parent} changed"
    return result


def refused(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The one error line of a refused command, checked: non-zero exit, no traceback, at most 300 characters,
    every needle in it."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("alexnet-cifar10: error: ") and len(line) <= 300, line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def tolerated(result: subprocess.CompletedProcess[str], warnings: int = 0) -> None:
    """A command that copes with the input: exit 0, no traceback, exactly ``warnings`` warning lines."""
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == warnings and all(line.startswith("warning: ") for line in lines), result.stderr


def data_info(case: Case, data: Path) -> subprocess.CompletedProcess[str]:
    return run(case, "data", "info", "--data", str(data), "--val-size", "0")


# --------------------------------------------------------------------------- archives
def _bomb(path: Path, pieces: list[bytes | int]) -> Path:
    return write_gzip(path, [*pieces, bytes(2 * tarfile.BLOCKSIZE)])


def _member_over_the_limit(path: Path) -> Path:
    size = MAX_FILE_BYTES + 1  # 64 MiB of zeros compress to 64 KiB
    return _bomb(path, [tar_header("train/cat/big.png", size), size, bytes(padded(size))])


def _over_the_total(path: Path) -> Path:
    pieces: list[bytes | int] = []
    for i in range(16):  # 16 members of exactly the member limit: 1 GiB and their headers
        pieces += [tar_header(f"bomb/{i}.bin", MAX_FILE_BYTES), MAX_FILE_BYTES]
    return _bomb(path, pieces)


def _too_many_members(path: Path) -> Path:
    header = tar_header("d", 0, tarfile.DIRTYPE)
    per_piece = 4096
    return _bomb(path, [header * per_piece] * (MAX_FILES // per_piece + 1))


ARCHIVES = {
    "member-over-64-MiB": (_member_over_the_limit, ("train/cat/big.png", "larger than the 64 MiB")),
    "1-GiB-in-64-MiB-members": (_over_the_total, ("decompresses to more than 1 GiB",)),
    "sparse-member-of-8-GiB": (lambda p: _bomb(p, [sparse_header("train/cat/big.png", 8 << 30)]),
                               ("sparse file", "train/cat/big.png")),
    "200001-members": (_too_many_members, ("more than 200,000 archive members",)),
    "pax-header-of-8-GiB": (lambda p: _bomb(p, [tar_header("././@PaxHeader", 8 << 30, tarfile.XHDTYPE)]),
                            ("header is larger than the 64 MiB",)),
    "link-out": (lambda p: _bomb(p, [tar_header("train/cat/x.png", 0, tarfile.SYMTYPE, linkname="../../../etc/pa"
                                                "sswd")]), ("link", "train/cat/x.png")),
    "device": (lambda p: _bomb(p, [tar_header("train/cat/x.png", 0, tarfile.CHRTYPE)]), ("not a regular file",)),
    # a long name (a pax header carries any length) is quoted shortened: the line stays within 300 characters
    "link-with-a-long-name": (lambda p: _bomb(p, [_long_named_link("train/cat/" + "n" * 5000 + "\nx.png")]),
                              ("link", "train/cat/nnnn", "nnn\\nx.png'")),
}


def _long_named_link(name: str) -> bytes:
    """A symlink member named ``name`` (of any length: tarfile writes a pax header for it) pointing out."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, "/etc"
    return info.tobuf(tarfile.PAX_FORMAT)


@pytest.mark.parametrize("kind", list(ARCHIVES))
def test_hostile_archives(case: Case, kind: str) -> None:
    build, needles = ARCHIVES[kind]
    archive = build(case.root / "data.tar.gz")
    assert archive.stat().st_size < 4 << 20  # each bomb is small on disk
    refused(data_info(case, archive), str(archive), *needles)
    assert sorted(p.name for p in case.root.iterdir()) == ["cache", "cwd", "data.tar.gz", "home", "tmp", "xdg"]


def test_member_names_that_are_not_utf8_are_read(case: Case, pixels: Pixels) -> None:
    root = write_imagefolder(case.root / "img", {"train": pixels["train"]})
    archive = case.root / "odd.tar.gz"
    with tarfile.open(archive, "w:gz", errors="surrogateescape") as tar:
        for i, path in enumerate(sorted(root.rglob("*"))):
            name = path.relative_to(root).as_posix()
            tar.add(path, arcname=f"{name[:-4]}\udcff{i}.png" if path.is_file() else name, recursive=False)
    result = data_info(case, archive)
    tolerated(result)
    assert split_counts(result.stdout) == {"train": "60", "val": "none", "test": "none"}


# --------------------------------------------------------------------------- downloads
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HttpServer]:
    folder = tmp_path_factory.mktemp("payload")
    root = write_python(folder / "src", {"train": make_pixels(1, 11), "test": make_pixels(1, 12)})
    with http_server(write_tar(root, folder / NAME).read_bytes()) as httpd:
        yield httpd


@pytest.fixture
def fresh(server: HttpServer) -> HttpServer:
    server.state = ServerState(server.state.payload)  # mode "ok", nothing recorded, a stall not yet released
    return server


def download(case: Case, url: str) -> subprocess.CompletedProcess[str]:
    return run(case, "data", "download", "--data", str(case.root / "dl"), "--url", url)


@pytest.mark.parametrize(("url", "needle"), [
    ("file:///etc/passwd", "only http:// and https:// URLs are fetched"),
    ("data:,hello", "only http:// and https:// URLs are fetched"),
    ("http://", "names no host"),
    ("http://[::1", "not a valid URL"),
])
def test_urls_that_are_not_fetched(case: Case, url: str, needle: str) -> None:
    refused(download(case, url), needle)
    assert not (case.root / "dl").exists()


@pytest.mark.parametrize(("mode", "needle"), [
    ("huge-length", "announces 931.3 GiB, more than the 650.4 MiB limit"),
    ("chunked-cut", "broke off"),
    ("garbage", "not valid HTTP"),
    ("redirect", "redirects to a ftp: URL"),
])
def test_broken_servers(case: Case, fresh: HttpServer, mode: str, needle: str) -> None:
    fresh.state.mode, fresh.state.location = mode, "ftp://127.0.0.1/cifar-10-python.tar.gz"
    refused(download(case, fresh.url(f"/{NAME}")), needle)
    assert not (case.root / "dl" / NAME).exists()


def test_a_server_that_sends_without_end(case: Case, fresh: HttpServer) -> None:
    """A resumed download 2 MiB short of the limit (a sparse .part) meets a server that never stops."""
    dest = case.root / "dl"
    dest.mkdir()
    with open(dest / f"{NAME}.part", "wb") as f:
        f.truncate(MAX_DOWNLOAD_BYTES - (2 << 20))
    fresh.state.mode = "endless"
    refused(download(case, fresh.url(f"/{NAME}")), "sends more than 650.4 MiB")
    assert list(dest.iterdir()) == []  # the oversized .part is not kept


def test_a_part_file_that_links_elsewhere(case: Case, fresh: HttpServer) -> None:
    victim = case.root / "victim.txt"
    victim.write_text("the user's own file\n")
    (case.root / "dl").mkdir()
    (case.root / "dl" / f"{NAME}.part").symlink_to(victim)
    asked = len(fresh.state.paths)
    refused(download(case, fresh.url(f"/{NAME}")), "symbolic link", "left alone")
    assert victim.read_text() == "the user's own file\n"
    assert len(fresh.state.paths) == asked  # refused before the server was asked


def test_a_file_under_the_archive_name_is_kept(case: Case, fresh: HttpServer) -> None:
    (case.root / "dl").mkdir()
    mine = case.root / "dl" / NAME
    mine.write_bytes(b"the user's own archive")
    refused(download(case, fresh.url(f"/{NAME}")), "left alone")
    assert mine.read_bytes() == b"the user's own archive"


# --------------------------------------------------------------------------- planted caches
def _plant(cache_file: Path, change: str) -> None:
    meta, tensors = read_cache_file(cache_file)
    x, y = tensors["train.images"], tensors["train.labels"]
    if change == "labels":
        y[:] = 42
        meta["digest"] = content_digest(cache_file.stem, meta["format"], {"train": (x, y)})
    else:
        x.zero_()  # blank images under the old digest
    cache_file.write_bytes(cache_file_bytes(meta, {"train.images": x, "train.labels": y}))


@pytest.mark.parametrize(("change", "reason"), [("labels", "train labels outside 0..9"),
                                                ("pixels", "its tensors do not match their sha256"),
                                                ("link", "not a regular file")])
def test_a_planted_cache_is_rebuilt(case: Case, pixels: Pixels, change: str, reason: str) -> None:
    root = write_imagefolder(case.root / "img", {"train": pixels["train"]})
    cache_file = cache_path(root, case.cache)
    assert load_cifar10(root, val_size=0, cache_dir=case.cache).cache_file == cache_file
    victim = case.root / "victim.safetensors"
    if change == "link":  # even a sound cache is not read through a link, nor written through one
        victim.write_bytes(cache_file.read_bytes())
        cache_file.unlink()
        cache_file.symlink_to(victim)
    else:
        _plant(cache_file, change)
    kept = victim.read_bytes() if victim.exists() else None
    result = data_info(case, root)
    tolerated(result, warnings=1)
    assert f"ignoring cache {cache_file} ({reason})" in result.stderr
    assert split_counts(result.stdout) == {"train": "60", "val": "none", "test": "none"}
    assert "(written," in result.stdout and not cache_file.is_symlink()
    rebuilt = load_cifar10(root, val_size=0, cache_dir=case.cache)
    assert rebuilt.from_cache and torch.equal(rebuilt.train.images, torch.from_numpy(pixels["train"][0]))
    if kept is not None:
        assert victim.read_bytes() == kept


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_CASES = ["text", "empty", "list", "wrong-types", "dropout-text", "huge-classes", "huge-network",
                    "unknown-setting", "wrong-shape", "stride-zero-giant", "compressed", "runs-code",
                    "tta-shift-text"]
COMMANDS = ("evaluate", "predict", "export")


@pytest.mark.parametrize(("kind", "command"), [(k, COMMANDS[i % 3]) for i, k in enumerate(CHECKPOINT_CASES)])
def test_hostile_checkpoints(case: Case, kind: str, command: str) -> None:
    marker = case.root / "pwned"
    checkpoint = write_checkpoint(case.root / f"{kind}.pt", kind, marker)
    out = case.root / "out.safetensors"
    if command == "evaluate":
        args = ("evaluate", str(checkpoint), "--data", str(case.root / "no-data"), "--device", "cpu")
    elif command == "predict":
        image = case.root / "cat.png"
        Image.new("RGB", (32, 32), (90, 80, 70)).save(image)
        args = ("predict", str(checkpoint), str(image), "--device", "cpu")
    else:
        args = ("export", str(checkpoint), "--format", "safetensors", "--out", str(out))
    refused(run(case, *args), str(checkpoint), HOSTILE_CHECKPOINTS[kind][1])
    assert not marker.exists() and not out.exists()


def test_a_safetensors_file_of_garbage(case: Case) -> None:
    path = case.root / "model.safetensors"
    path.write_bytes((1 << 40).to_bytes(8, "little") + b"{}")  # a header that claims a terabyte
    refused(run(case, "export", str(path), "--format", "onnx", "--out", str(case.root / "m.onnx")),
            "not a readable safetensors file")


# --------------------------------------------------------------------------- odd files in a data folder
def _odd_batch(py_root: Path, kind: str) -> Path:
    batch = py_root / "cifar-10-batches-py" / ("test_batch" if kind == "device" else "data_batch_1")
    batch.unlink()
    if kind == "fifo":
        os.mkfifo(batch)
    elif kind == "device":
        batch.symlink_to("/dev/zero")
    else:
        with open(batch, "wb") as f:
            f.truncate(10 << 30)  # sparse: no disk used
    return batch


@pytest.mark.parametrize(("kind", "needle"), [("fifo", "not a regular file"), ("device", "not a regular file"),
                                              ("huge", "10 GiB is larger than the 64 MiB")])
def test_batches_that_are_no_plain_small_files(case: Case, pixels: Pixels, kind: str, needle: str) -> None:
    root = write_python(case.root / "py", pixels)
    batch = _odd_batch(root, kind)
    refused(data_info(case, root), str(batch), needle)


def test_a_class_folder_that_is_not_utf8(case: Case, pixels: Pixels) -> None:
    root = write_imagefolder(case.root / "img", {"train": pixels["train"]})
    odd = os.fsencode(root / "train") + b"/\xffcat"
    os.mkdir(odd)
    Image.new("RGB", (32, 32)).save(odd + b"/0.png")
    refused(data_info(case, root), "unknown class folder(s) \\xffcat")


def test_odd_names_links_and_a_deep_tree_are_tolerated(case: Case, pixels: Pixels) -> None:
    root = write_imagefolder(case.root / "img", {"train": pixels["train"]})
    image = sorted((root / "train" / "cat").iterdir())[0]
    os.rename(image, os.fsencode(image.parent) + b"/\xff\xfe.png")
    (root / "train" / "cat" / ".hidden").symlink_to(case.root / "nowhere")
    (root / "README").symlink_to(case.root / "nowhere")
    make_deep_tree(root, 1200)  # deeper than Python's recursion limit, which os.walk meets
    try:
        result = data_info(case, root)
        tolerated(result)
        assert split_counts(result.stdout) == {"train": "60", "val": "none", "test": "none"}
    finally:
        remove_deep_tree(root, 1200)


@pytest.mark.parametrize(("env", "needle"), [
    ({"WORLD_SIZE": ""}, "WORLD_SIZE='' must be a number in [1, 65536]"),
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two'"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK='2' must be a number in [0, 1]"),
    ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, "LOCAL_RANK='-1'"),
    ({"WORLD_SIZE": "2", "RANK": "0", "ALEXNET_CIFAR10_DIST_TIMEOUT": "nan"},
     "ALEXNET_CIFAR10_DIST_TIMEOUT='nan' must be a number in (0, 86400]"),
    ({"WORLD_SIZE": "2", "RANK": "0", "ALEXNET_CIFAR10_DIST_TIMEOUT": "1e999"}, "ALEXNET_CIFAR10_DIST_TIMEOUT="),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "70000"},
     "MASTER_PORT='70000' must be a number in [1, 65535]"),
])
def test_torchrun_variables_out_of_range(case: Case, pixels: Pixels, env: dict[str, str], needle: str) -> None:
    data = write_python(case.root / "data", {"train": pixels["train"]})
    refused(run(case, "train", "--data", str(data), "--epochs", "1", "--out", str(case.root / "run"), env=env),
            needle)
    assert not (case.root / "run").exists()


@pytest.mark.parametrize(("flags", "needle"), [
    (("--seed", str(2**70)), "--seed must lie in [0, 4294967295], got a number of about 21 digits"),
    (("--threads", "99999999"), "--threads must lie in [0, 1024]"),
    (("--epochs", "1000000000"), "--epochs must lie in [1, 10000]"),
    (("--lr=-inf",), "--lr must lie in (0, 100], got -inf"),
    (("--batch-size", "2000000000"), "--batch-size must lie in [1, 65536]"),
])
def test_numeric_flags_out_of_range(case: Case, pixels: Pixels, flags: tuple[str, ...], needle: str) -> None:
    data = write_python(case.root / "data", {"train": pixels["train"]})
    refused(run(case, "train", "--data", str(data), "--out", str(case.root / "run"), *flags), needle)
    assert not (case.root / "run").exists()


def _config_file(path: Path, kind: str) -> Path:
    """A file where a config.json is read, of the hostile ``kind``."""
    contents = {"unknown-key": '{"epoch": 5}', "deep": "[" * 100_000, "huge-int": '{"seed": ' + "9" * 5000 + "}",
                "inf": '{"lr": 1e999}', "wrong-type": '{"lr": "fast"}', "yaml": "lr: 0.1\nepochs: 5\n",
                "list": "[1, 2]", "long-key": '{"' + "k" * 10_000 + '": 1}', "nested-value": '{"epochs": [[5]]}'}
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "huge":
        with path.open("wb") as f:
            f.truncate(8 << 30)  # sparse: 8 GiB that take no disk
    else:
        path.write_text(contents[kind])
    return path


CONFIG_CASES = [("fifo", "not a regular file"), ("folder", "not a regular file but a folder"),
                ("huge", "8 GiB is larger than the 1 MiB a config file may be"),
                ("unknown-key", "unknown setting 'epoch'; did you mean epochs?"),
                ("deep", "JSON nested 100000 levels deep, more than the 32 allowed"),
                ("huge-int", "JSON expected ("), ("inf", "--lr must lie in (0, 100]"),
                ("wrong-type", "config field lr must be float, got 'fast'"), ("yaml", "JSON expected"),
                ("list", "holds a JSON list, not an object of settings"), ("long-key", "unknown setting 'kkkk"),
                ("nested-value", "config field epochs must be int, got [[5]]")]


@pytest.mark.parametrize(("kind", "needle"), CONFIG_CASES)
def test_hostile_config_files(case: Case, kind: str, needle: str) -> None:
    config = _config_file(case.root / "config.json", kind)
    refused(run(case, "train", "--config", str(config), "--print-config"), needle)


@pytest.mark.parametrize(("kind", "needle"), CONFIG_CASES[:5])
def test_hostile_config_of_a_resumed_run(case: Case, kind: str, needle: str) -> None:
    run_dir = case.root / "run"
    run_dir.mkdir()
    _config_file(run_dir / "config.json", kind)
    (run_dir / "last.pt").write_bytes(b"not reached")
    refused(run(case, "train", "--resume", str(run_dir)), needle)


class _Reduces:
    """Pickles as a call of ``function`` with ``args``: how a crafted stream asks numpy for an array."""

    def __init__(self, function: object, *args: object) -> None:
        self.call = (function, args)

    def __reduce__(self):  # noqa: ANN204
        return self.call


class _WithState(_Reduces):
    """Pickles as a call whose result BUILD then gives ``state``: how numpy's pickles set a dtype or array."""

    def __init__(self, function: object, args: tuple, state: object) -> None:
        self.call = (function, args, state)


def _reconstruct() -> object:
    try:
        from numpy._core.multiarray import _reconstruct as reconstruct
    except ImportError:
        from numpy.core.multiarray import _reconstruct as reconstruct
    return reconstruct


@pytest.mark.parametrize(("array", "needle"), [
    (lambda: _Reduces(_reconstruct(), np.ndarray, (100_000, 100_000), b"b"),
     "asks for an array of 9.3 GiB in a stream of"),
    (lambda: _Reduces(_reconstruct(), np.ndarray, (1,), _Reduces(np.dtype, "V2000000000")), "refused"),
    (lambda: _Reduces(_reconstruct(), np.ndarray, (3, 3072), _Reduces(np.dtype, "O")), "an array of object"),
    # a plain dtype whose BUILD state sets the flags of a dtype of Python objects, for an array of raw bytes
    (lambda: _WithState(_reconstruct(), (np.ndarray, (0,), b"b"), (1, (2,), _WithState(
        np.dtype, ("V8", False, True), (3, "|", None, None, None, 8, 1, 63)), False, [b"a", b"b"])),
     "with a state that a CIFAR-10 batch never holds"),
])
def test_a_pickled_batch_that_asks_for_more_memory_than_it_holds(case: Case, pixels: Pixels, array,  # noqa: ANN001
                                                                 needle: str) -> None:
    import pickle

    data = write_python(case.root / "data", {"train": pixels["train"]})
    batch = {b"batch_label": b"x", b"labels": [0, 1, 2], b"data": array()}
    (data / "cifar-10-batches-py" / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    refused(data_info(case, data), "data_batch_1", needle)


def test_label_names_of_any_length_are_quoted_short(case: Case, pixels: Pixels) -> None:
    import pickle

    data = write_python(case.root / "data", {"train": pixels["train"]})
    meta = {b"label_names": [("x" * 1000 + "\n\x1b[31m").encode()] * 30, b"num_cases_per_batch": 10}
    (data / "cifar-10-batches-py" / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    line = refused(data_info(case, data), "batches.meta: label names (xxxx", "and 20 more) are not CIFAR-10's")
    assert "\x1b" not in line


@pytest.fixture(scope="module")
def other_files(tmp_path_factory: pytest.TempPathFactory, pixels: Pixels) -> dict[str, Path]:
    """Files of the project's other kinds, each under a checkpoint's name (best.pt)."""
    from alexnet_cifar10.checkpoint import save_safetensors
    from alexnet_cifar10.export import export

    root = tmp_path_factory.mktemp("other-files")
    checkpoint = root / "tiny.pt"
    torch.save(tiny_state(), checkpoint)
    files = {}
    for kind, fmt in (("torchscript", "torchscript"), ("pt2", "pt2"), ("onnx", "onnx")):
        files[kind] = root / kind / "best.pt"
        files[kind].parent.mkdir()
        export(checkpoint, fmt, files[kind])
    safetensors = root / "safetensors" / "best.pt"
    safetensors.parent.mkdir()
    save_safetensors(tiny_state(), safetensors)
    files["safetensors"] = safetensors
    for kind, write in (("config.json", lambda p: p.write_text('{"epochs": 20}')),
                        ("metrics.jsonl", lambda p: p.write_text('{"epoch": 1, "val_acc": 0.5}\n')),
                        ("png", lambda p: Image.new("RGB", (32, 32)).save(p, format="PNG")),
                        ("jpeg", lambda p: Image.new("RGB", (32, 32)).save(p, format="JPEG")),
                        ("tar", lambda p: write_tar(write_python(root / "data", {"train": pixels["train"]}), p)),
                        ("gz", lambda p: p.write_bytes(gzip.compress(files["tar"].read_bytes())))):
        files[kind] = root / kind.replace(".", "-") / "best.pt"
        files[kind].parent.mkdir()
        write(files[kind])
    return files


@pytest.mark.parametrize(("kind", "needle"), [
    ("torchscript", "a TorchScript export (export --format torchscript), not a checkpoint"),
    ("pt2", "a torch.export program (export --format pt2), not a checkpoint"),
    ("onnx", "an ONNX export (export --format onnx), not a checkpoint"),
    ("safetensors", "a safetensors file (name it .safetensors to load it)"),
    ("config.json", "a JSON file (a run's config.json"), ("metrics.jsonl", "a JSON file"),
    ("png", "a PNG image, not a checkpoint"), ("jpeg", "a JPEG image, not a checkpoint"),
    ("tar", "a tar archive (a data set?), not a checkpoint"), ("gz", "a gzip file (a data archive?), not a checkpoint"),
])
def test_other_files_where_a_checkpoint_belongs_are_named(case: Case, other_files: dict[str, Path], kind: str,
                                                          needle: str) -> None:
    image = case.root / "cat.png"
    Image.new("RGB", (32, 32), (90, 80, 70)).save(image)
    refused(run(case, "predict", str(other_files[kind]), str(image), "--device", "cpu"), needle)


@pytest.mark.parametrize("stdout", ["full", "closed"])
@pytest.mark.parametrize("command", [("models", "--json"), ("train", "--print-config"), ("--version",), ("--help",)])
def test_an_output_stream_that_takes_nothing(case: Case, stdout: str, command: tuple[str, ...]) -> None:
    """stdout on a full device, or closed (`>&-`): one line on stderr and exit 1, never Python's
    "Exception ignored" traceback at exit nor results that vanish with exit 0."""
    if stdout == "full" and not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this system")
    cli = [sys.executable, "-m", "alexnet_cifar10", *command]
    if stdout == "closed":  # the shell closes it (a preexec_fn could deadlock under xdist's threads)
        cli = ["sh", "-c", 'exec "$@" >&-', "sh", *cli]
    with open("/dev/full" if stdout == "full" else os.devnull, "w") as sink:
        result = subprocess.run(cli, cwd=case.cwd, env=case.env(), stdout=sink, stderr=subprocess.PIPE, text=True,
                                timeout=LIMIT_S)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "Exception" not in result.stderr
    expected = ("No space left on device" if stdout == "full"
                else "standard output is closed")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("alexnet-cifar10: error: ") and expected in lines[0], lines


def test_a_folder_of_the_users_own_files_with_run_file_names_is_not_a_run(case: Case, pixels: Pixels) -> None:
    data = write_python(case.root / "data", {"train": pixels["train"]})
    mine = case.root / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "notes"}')
    (mine / "report.html").write_text("<p>my report</p>")
    refused(run(case, "train", "--data", str(data), "--epochs", "1", "--out", str(mine)),
            "holds config.json, report.html, not written by a training (no .lock)")
    assert (mine / "config.json").read_text() == '{"my": "notes"}' and sorted(p.name for p in mine.iterdir()) == [
        "config.json", "report.html"]


def _not_a_file(path: Path, kind: str) -> Callable[[], bool]:
    """Make ``kind`` at ``path`` (a FIFO, a character device, a link to one, a folder); returns the check that
    it is still there as it was."""
    if kind == "fifo":
        os.mkfifo(path)
        return lambda: stat.S_ISFIFO(path.lstat().st_mode)
    if kind == "device":
        try:
            os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # what /dev/null is
        except PermissionError:
            pytest.skip("making a device needs root")
        return lambda: stat.S_ISCHR(path.lstat().st_mode)
    if kind == "link-to-device":
        path.symlink_to(os.devnull)
        return lambda: path.is_symlink() and stat.S_ISCHR(Path(os.devnull).stat().st_mode)
    path.mkdir()
    (path / "mine.txt").write_text("mine")
    return lambda: (path / "mine.txt").read_text() == "mine"


KINDS = {"fifo": "is a FIFO, not a regular file", "device": "is a character device, not a regular file",
         "link-to-device": "is a link to a character device, not a regular file", "folder": "is a folder"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, pixels: Pixels) -> Path:
    """A finished one-epoch run of the tiny network, made by the CLI (its .lock included)."""
    root = tmp_path_factory.mktemp("tiny-run")
    data = write_python(root / "data", {"train": pixels["train"]})
    result = subprocess.run([sys.executable, "-m", "alexnet_cifar10", "train", "--data", str(data), "--val-size", "10",
                             "--epochs", "1", "--model", "alexnet_tiny", "--batch-size", "16", "--no-progress",
                             "--device", "cpu", "--out", str(root / "run")],
                            env={**os.environ, "ALEXNET_CIFAR10_CACHE": str(root / "cache")}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return root / "run"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("command", ["benchmark --json", "evaluate --out", "export --out", "train --resume"])
def test_what_is_not_a_regular_file_is_never_replaced_by_one(case: Case, pixels: Pixels, tiny_run: Path, kind: str,
                                                             command: str) -> None:
    """Every path the tool writes: a FIFO, a device (as root, replacing one would replace a system device), a
    link to one, or a folder at the path is refused, before any work, and left as it was."""
    checkpoint = case.root / "tiny.pt"
    torch.save(tiny_state(), checkpoint)
    data = write_python(case.root / "data", {"test": pixels["test"]})
    if command == "benchmark --json":
        target = case.root / "bench.json"
        args = ("benchmark", "--data", str(data), "--model", "alexnet_tiny", "--device", "cpu", "--json", str(target))
    elif command == "evaluate --out":
        (case.root / "eval").mkdir()
        target = case.root / "eval" / "result.json"
        args = ("evaluate", str(checkpoint), "--data", str(data), "--device", "cpu", "--out", str(case.root / "eval"))
    elif command == "export --out":
        target = case.root / "model.onnx"
        args = ("export", str(checkpoint), "--format", "onnx", "--out", str(target))
    else:  # a run folder a training made, with something else where its plot goes
        run_dir = case.root / "run"
        shutil.copytree(tiny_run, run_dir)
        target = run_dir / "curves.png"
        target.unlink()
        args = ("train", "--resume", str(run_dir), "--epochs", "2")
    unchanged = _not_a_file(target, kind)
    refused(run(case, *args), str(target), KINDS[kind])
    assert unchanged()
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]


def test_files_written_follow_the_umask_and_keep_the_mode_they_had(tmp_path: Path) -> None:
    """As open() would: a new file under umask 027 is 0640 (not mkstemp's 0600); a replaced file keeps its
    mode."""
    from alexnet_cifar10.io import atomic_write_text

    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "new.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == 0o640
    (tmp_path / "kept.json").write_text("old")
    (tmp_path / "kept.json").chmod(0o604)
    atomic_write_text(tmp_path / "kept.json", "new")
    assert stat.S_IMODE((tmp_path / "kept.json").stat().st_mode) == 0o604
    assert (tmp_path / "kept.json").read_text() == "new"


def test_a_cache_write_of_a_killed_process_is_cleaned_up(case: Case, pixels: Pixels) -> None:
    """A temporary file that a SIGKILLed cache write left (untouched for longer than any write takes) is
    removed by the next run; one of a write under way (fresh) is left to its writer."""
    from alexnet_cifar10.data.cache import STALE_TEMP_SECONDS

    data = write_python(case.root / "data", {"train": pixels["train"]})
    tolerated(data_info(case, data))
    (cache_file,) = case.cache.glob("*.safetensors")
    dead = case.cache / f".{cache_file.name}.k1ll3d.tmp"
    live = case.cache / f".{cache_file.name}.wr1t1n.tmp"
    for tmp in (dead, live):
        tmp.write_bytes(cache_file.read_bytes()[:1000])
    os.utime(dead, (time.time() - STALE_TEMP_SECONDS - 5,) * 2)
    tolerated(data_info(case, data))
    assert not dead.exists() and live.exists()


def test_a_write_interrupted_by_sigterm_leaves_no_temporary_file(tmp_path: Path) -> None:
    """SIGTERM arriving in the middle of a write (the write sends it to this process after its first bytes)
    unwinds it as Ctrl-C does: the old file stays whole, no temporary file is left."""
    from alexnet_cifar10.cli import terminate_as_interrupt
    from alexnet_cifar10.io import atomic_write

    target = tmp_path / "result.json"
    target.write_text("old")
    writes = []

    def write(f: io.BufferedWriter) -> None:
        f.write(b"new, half")
        writes.append(sorted(p.name for p in tmp_path.iterdir()))  # the temporary file is there now
        os.kill(os.getpid(), signal.SIGTERM)
        f.write(b" and the rest")

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="terminated"), terminate_as_interrupt():
        atomic_write(target, write)
    assert len(writes[0]) == 2 and writes[0][0].startswith(".result.json.")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"] and target.read_text() == "old"
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's only


HISTORY_CHANGES = {
    "string": (lambda s: s["history"][0].update(val_acc="0.5"), "history entry 1 has val_acc = '0.5', not a finite"),
    "inf": (lambda s: s["history"][0].update(seconds=float("inf")), "history entry 1 has seconds = inf, not a finite"),
    "huge-int": (lambda s: s["history"][0].update(epoch=10**30), "history entry 1 has epoch = 1000"),
    "missing-key": (lambda s: s["history"][0].pop("lr"), "history entry 1 is not a record of epoch, train_loss"),
    "not-a-record": (lambda s: s.update(history=[1]), "history entry 1 is not a record"),
    "short": (lambda s: s.update(history=[]), "history is not a list of its 1 epochs"),
    "out-of-order": (lambda s: s["history"][0].update(epoch=2), "history does not list its epochs in order"),
    "negative": (lambda s: s.update(epoch=-1), "epoch is -1, not a count"),
    "nan": (lambda s: s.update(best_acc=float("nan")), "best_acc is nan, not an accuracy"),
    "list": (lambda s: s["partial"].update(seen=[1]), "partial epoch has seen = [1], not an integer"),
}


@pytest.mark.parametrize("kind", list(HISTORY_CHANGES))
def test_a_checkpoint_whose_history_is_of_the_wrong_types(tiny_run: Path, kind: str) -> None:
    """A last.pt passes torch's safe loader with anything in its plain values: each entry's type and range is
    checked (in-process here, through the CLI below), never met at the end of the run by a sum or a plot."""
    from alexnet_cifar10.errors import CheckpointError
    from alexnet_cifar10.state import checked_progress

    saved = torch.load(tiny_run / "last.pt", weights_only=True)
    assert checked_progress(saved)[0] == 1  # the file as the run wrote it
    change, needle = HISTORY_CHANGES[kind]
    change(saved)
    with pytest.raises(CheckpointError, match=re.escape(needle)):
        checked_progress(saved)


def test_resume_refuses_a_history_of_the_wrong_types_before_training(case: Case, tiny_run: Path) -> None:
    run_dir = case.root / "run"
    shutil.copytree(tiny_run, run_dir)
    saved = torch.load(run_dir / "last.pt", weights_only=True)
    HISTORY_CHANGES["string"][0](saved)
    torch.save(saved, run_dir / "last.pt")
    refused(run(case, "train", "--resume", str(run_dir), "--epochs", "2", "--no-progress"),
            HISTORY_CHANGES["string"][1])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # nothing trained


def test_a_checkpoint_over_the_size_limit_is_refused_unread(case: Case) -> None:
    """A sparse file one byte over 4 GiB: refused from its size, before a byte of it is read."""
    from alexnet_cifar10.checkpoint import MAX_CHECKPOINT_BYTES

    huge = case.root / "huge.pt"
    with open(huge, "wb") as f:
        f.truncate(MAX_CHECKPOINT_BYTES + 1)
    image = case.root / "cat.png"
    Image.new("RGB", (32, 32)).save(image)
    refused(run(case, "predict", str(huge), str(image), "--device", "cpu"), str(huge), "more than the 4 GiB")


def test_a_run_folder_that_cannot_be_written(case: Case, pixels: Pixels) -> None:
    """--out on a read-only file system (root ignores permission bits; others get a folder without write
    permission): one line naming the folder, before any training."""
    data = write_python(case.root / "data", {"train": pixels["train"]})
    folder = case.root / "readonly"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs",
                                                    str(folder)], capture_output=True).returncode == 0
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root without a mount cannot make a folder it cannot write")
        folder.chmod(0o555)
    try:
        refused(run(case, "train", "--data", str(data), "--epochs", "1", "--out", str(folder / "run")),
                f"{folder / 'run'}", "Read-only file system" if mounted else "Permission denied")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)
        else:
            folder.chmod(0o755)


@pytest.mark.parametrize("command", ["evaluate", "export"])
def test_the_shipped_weights_by_name_through_evaluate_and_export(case: Case, pixels: Pixels, command: str) -> None:
    data = write_python(case.root / "data", {"test": pixels["test"]})
    if command == "evaluate":
        result = run(case, "evaluate", "--weights", "seed", "--data", str(data), "--device", "cpu", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["images"] == len(pixels["test"][1])
    else:
        out = case.root / "seed.safetensors"
        result = run(case, "export", "--weights", "seed", "--format", "safetensors", "--out", str(out))
        assert result.returncode == 0, result.stderr
        from alexnet_cifar10 import load_model

        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(load_model(out)(x), load_model("seed")(x))


@pytest.mark.parametrize(("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"),
                                                   (signal.SIGINT, 130, "interrupted")], ids=["sigterm", "sigint"])
def test_a_signal_during_a_download_is_one_line_and_keeps_the_part_file(case: Case, fresh: HttpServer, sig: int,
                                                                        code: int, word: str) -> None:
    """SIGTERM or SIGINT while the server has sent half the archive and stalls: exit 143 or 130 with one line,
    and the .part file is kept for the next run to resume."""
    fresh.state.mode = "stall"
    part = case.root / "dl" / f"{NAME}.part"
    proc = subprocess.Popen([*CLI_WITH_CTRL_C, "data", "download", "--data", str(case.root / "dl"),
                             "--url", fresh.url(f"/{NAME}")], cwd=case.cwd, env=case.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + LIMIT_S
        while not part.exists():  # the server answered and the client receives: the download is under way
            assert time.monotonic() < end and proc.poll() is None, proc.stderr.read() if proc.poll() else "slow"
            time.sleep(0.05)
        time.sleep(0.5)  # into its read of the stalled body
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=LIMIT_S)
    finally:
        fresh.state.release.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(rf"alexnet-cifar10: {word} after \d+ s", lines[0]), err
    assert part.is_file() and not (case.root / "dl" / NAME).exists()
