"""Tiny CIFAR-10 data sets in every format, built in temp folders from the same pixels."""

from __future__ import annotations

import fcntl
import io
import os
import pickle
import queue
import re
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# --------------------------------------------------------------------------- archive bombs, built small
def tar_header(name: str, size: int = 0, type: bytes = tarfile.REGTYPE, **attrs: object) -> bytes:  # noqa: A002
    """One tar header block (GNU format, so sizes of any length fit) for a member of ``size`` bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.type = size, type
    for k, v in attrs.items():
        setattr(info, k, v)
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def sparse_header(name: str, real_size: int) -> bytes:
    """An old-GNU sparse member header: no data stored, one empty region, and ``real_size`` claimed."""
    block = bytearray(tar_header(name, 0, tarfile.GNUTYPE_SPARSE))
    block[386:398] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # the first region: offset 0 ...
    block[398:410] = tarfile.itn(0, 12, tarfile.GNU_FORMAT)  # ... of 0 bytes
    block[483:495] = tarfile.itn(real_size, 12, tarfile.GNU_FORMAT)  # the size the member claims
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(n: int) -> int:
    """Zero bytes that pad ``n`` bytes of member data to a whole tar block."""
    return -n % tarfile.BLOCKSIZE


def write_gzip(path: Path, pieces: list[bytes | int]) -> Path:
    """A .gz file of ``pieces`` (bytes, or an int for that many zero bytes), built in a blink: each MiB of zeros is
    one deflate block compressed once and repeated, so a gigabyte costs a megabyte and no compression time."""
    mib = 1 << 20
    zero_block = zlib.compressobj(9, zlib.DEFLATED, -15)
    repeated = zero_block.compress(bytes(mib)) + zero_block.flush(zlib.Z_FULL_FLUSH)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = 0
    zeros = bytes(mib)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")
        for piece in pieces:
            if isinstance(piece, int):
                whole, rest = divmod(piece, mib)
                for _ in range(whole):
                    f.write(repeated)  # after a full flush, no block refers back past it: repeats are valid
                    crc = zlib.crc32(zeros, crc)
                piece = bytes(rest)
            f.write(deflate.compress(piece) + deflate.flush(zlib.Z_FULL_FLUSH))
            crc = zlib.crc32(piece, crc)
        f.write(deflate.flush())
        total = sum(p if isinstance(p, int) else len(p) for p in pieces)
        f.write(struct.pack("<II", crc, total & 0xFFFFFFFF))
    return path


@pytest.fixture(autouse=True)
def _cpu_unless_marked_gpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite means the CPU (device names, `auto` = the CPU, gloo, bit-identical resumes): on a machine with
    a GPU, every test but those marked ``gpu`` sees none, in this process and in the commands it starts."""
    if request.node.get_closest_marker("gpu") is None:
        import torch

        from alexnet_cifar10 import device

        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(device, "mps_available", lambda: False)  # in this process; MPS has no such variable


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_CACHE", str(tmp_path_factory.mktemp("cache")))


def require_shared_archive() -> None:
    """Skip without the shared archive, except on CI (CI=true), where its absence is a failure."""
    if SHARED_ARCHIVE.is_file():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{SHARED_ARCHIVE} is missing, and CI=true: the real-archive tests must run")
    pytest.skip(f"{SHARED_ARCHIVE} is not on this machine")


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the shared archive decoded, made once for the whole test run: the xdist workers
    share it (the first decodes under a lock while the others wait, then read it)."""
    from alexnet_cifar10.data import load_cifar10

    require_shared_archive()
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the run's folder, above the workers'
    cache = root / "shared-archive-cache"
    cache.mkdir(exist_ok=True)
    with open(root / "shared-archive-cache.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        load_cifar10(SHARED_ARCHIVE, cache_dir=cache)
    return cache


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


# --------------------------------------------------------------------------- a real HTTP server on 127.0.0.1
@dataclass
class ServerState:
    """What the server sends, and what it was asked for.

    ``mode``: "ok" (Range honoured), "no-range" (Range ignored), "error" (500), "cut" (half the body of the
    announced length), "chunked-cut" (a chunked body cut inside a chunk), "no-length" (the body, then the
    connection closes), "endless" (bytes without end and without a length), "huge-length" (a length of a
    terabyte), "garbage" (no HTTP at all), "close" (the connection closes unanswered), "redirect" (302 to
    ``location``), "stall" (half the body, then nothing until ``release`` is set).
    """

    payload: bytes
    mode: str = "ok"
    location: str = ""
    ranges: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: HttpServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        try:
            self._answer()
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading: what "endless" expects
            self.close_connection = True

    def _answer(self) -> None:
        state = self.server.state
        state.paths.append(self.path)
        header = self.headers.get("Range")
        state.ranges.append(header)
        if state.mode == "error":
            self.send_error(500, "Internal Server Error")
            return
        if state.mode in ("garbage", "close"):
            self.wfile.write(b"this is not HTTP\r\n\r\n" if state.mode == "garbage" else b"")
            self.close_connection = True
            return
        if state.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, start = state.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match and state.mode != "no-range":
            start = int(match.group(1))
            if start >= len(data) and state.mode != "endless":
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Type", "application/gzip")
        self.close_connection = True
        if state.mode == "endless":
            self.end_headers()
            chunk = bytes(1 << 20)
            while True:
                self.wfile.write(chunk)
        if state.mode == "chunked-cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"%x\r\n" % len(body) + body[: len(body) // 2])
            return
        if state.mode == "huge-length":
            self.send_header("Content-Length", str(10**12))
            self.end_headers()
            self.wfile.write(body[:100])
            return
        if state.mode != "no-length":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.mode == "stall":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            state.release.wait(60)
            return
        self.wfile.write(body[: len(body) // 2] if state.mode == "cut" else body)
        self.wfile.flush()


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState

    def url(self, path: str) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}{path}"


@contextmanager
def http_server(payload: bytes) -> Iterator[HttpServer]:
    """A threaded HTTP server on 127.0.0.1 (a free port) that serves ``payload`` as its ``ServerState`` says."""
    httpd = HttpServer(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(payload)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- hostile checkpoints
class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def tiny_state(**changes: object) -> dict[str, object]:
    import torch

    from alexnet_cifar10.models import create_model

    torch.manual_seed(0)
    state = {"model": create_model("alexnet_tiny").state_dict(), "model_name": "alexnet_tiny", "model_kwargs": {},
             "config": {"tta": False, "tta_shift": 0}}
    return {**state, **changes}


def _weights(**changes: object) -> dict[str, object]:
    return {**tiny_state()["model"], **changes}


# what each hostile checkpoint is, and a phrase of the one line that refuses it
HOSTILE_CHECKPOINTS: dict[str, tuple[Callable[[Path], object], str]] = {
    "text": (lambda marker: b"this is not a checkpoint\n", "not a PyTorch checkpoint"),
    "empty": (lambda marker: b"", "not a PyTorch checkpoint"),
    "list": (lambda marker: [1, 2, 3], "not an alexnet-cifar10 checkpoint"),
    "wrong-types": (lambda marker: {"model": 5, "model_name": 3}, "model_name is not a string"),
    "weights-not-a-dict": (lambda marker: {"model": 5, "model_name": "alexnet_tiny"}, "model is not a dict"),
    "dropout-text": (lambda marker: {"model": {}, "model_name": "alexnet", "model_kwargs": {"dropout": "x"}},
                     "dropout='x' is not a number in [0, 1)"),
    "huge-classes": (lambda marker: tiny_state(model_kwargs={"num_classes": 10**9}), "num_classes=1000000000"),
    "huge-hidden": (lambda marker: tiny_state(model_kwargs={"hidden": 10**6}), "hidden=1000000"),
    "huge-network": (lambda marker: tiny_state(model_kwargs={"convs": [[4096, 11, 1]] * 8, "pool_after": []}),
                     "more than the 100,000,000 limit"),
    "unknown-setting": (lambda marker: tiny_state(model_kwargs={"explode": True}), "no setting 'explode'"),
    "unknown-model": (lambda marker: tiny_state(model_name="resnet9000"), "unknown model 'resnet9000'"),
    "kwargs-not-a-dict": (lambda marker: tiny_state(model_kwargs=[1]), "model_kwargs is not a dict"),
    "wrong-shape": (lambda marker: {**tiny_state(), "model": _weights(**{"classifier.6.weight": _zeros(5, 64)})},
                    "classifier.6.weight has shape (5, 64)"),
    "missing-weights": (lambda marker: tiny_state(model={}), "missing mean, std, features.0.weight and 15 more"),
    "stride-zero-giant": (lambda marker: {**tiny_state(), "model": _weights(
        **{"classifier.6.weight": _zeros(1).expand(10**6, 10**6)})}, "has shape (1000000, 1000000)"),
    "bad-ema": (lambda marker: tiny_state(ema_model={"x": 1}), "(EMA weights): weights do not fit"),
    "nan-weights": (lambda marker: {**tiny_state(), "model": _weights(**{"features.3.weight": _nan(32, 16, 3, 3)})},
                    "features.3.weight holds NaN or infinite values"),
    "config-not-a-dict": (lambda marker: tiny_state(config=[1]), "config is not a dict"),
    "tta-shift-text": (lambda marker: tiny_state(config={"tta_shift": "x"}), "tta_shift is not an integer 0-8"),
    "runs-code": (lambda marker: {"model": _RunsCode(marker), "model_name": "alexnet_tiny"},
                  "more than tensors and plain values"),
    "compressed": (lambda marker: "compressed", "compressed entries"),
}


def _zeros(*shape: int) -> object:
    import torch

    return torch.zeros(*shape)


def _nan(*shape: int) -> object:
    import torch

    return torch.full(shape, float("nan"))


def write_checkpoint(path: Path, kind: str, marker: Path) -> Path:
    """The hostile checkpoint ``kind`` (see ``HOSTILE_CHECKPOINTS``) at ``path``."""
    import torch

    content = HOSTILE_CHECKPOINTS[kind][0](marker)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "compressed":  # a sound checkpoint whose zip entries are deflated, as a zip bomb's are
        plain = io.BytesIO()
        torch.save(tiny_state(), plain)
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
    else:
        torch.save(content, path)
    return path


# --------------------------------------------------------------------------- very deep folder trees
def make_deep_tree(root: Path, depth: int) -> None:
    """``root/d/d/.../d``, ``depth`` folders deep, made one level at a time (os.makedirs recurses)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
    finally:
        os.close(fd)


def remove_deep_tree(root: Path, depth: int) -> None:
    """Undo ``make_deep_tree`` one level at a time (shutil.rmtree, which pytest cleans up with, recurses)."""
    path = root / "/".join(["d"] * depth)
    for _ in range(depth):
        os.rmdir(path)
        path = path.parent


def read_cache_file(path: Path) -> tuple[dict[str, str], dict]:
    """The metadata and tensors of a decoded-data cache file (safetensors), for tests that forge one."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {key: f.get_tensor(key).clone() for key in f.keys()}  # noqa: SIM118


def cache_file_bytes(metadata: dict[str, str], tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata)


def png(size: tuple[int, int], colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def jpeg_of_many_scans(scans: int, size: tuple[int, int] = (640, 480)) -> bytes:
    """A progressive JPEG with ``scans`` - 10 empty refinement scans appended: few bytes, many passes."""
    out = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(out, format="JPEG", progressive=True)
    data = out.getvalue()
    assert data.count(b"\xff\xda") == 10  # Pillow's progressive JPEG: ten scans
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"  # SOS: one component, spectral 0-63
    return data[:-2] + empty_scan * (scans - 10) + data[-2:]


# `python -m alexnet_cifar10`, with Ctrl-C's default handler as a terminal's command gets it: a test run started in the
# background of a script inherits SIGINT ignored, and the command would then (rightly) ignore it too
CLI_WITH_CTRL_C = [sys.executable, "-c", "import runpy, signal, sys; signal.signal(signal.SIGINT, "
                   "signal.default_int_handler); sys.argv[0] = 'alexnet-cifar10'; "
                   "runpy.run_module('alexnet_cifar10', run_name='__main__')"]


@dataclass
class Served:
    url: str
    process: subprocess.Popen
    banner: str  # the line serve printed first
    stderr: list[str] = field(default_factory=list)  # what it has written to stderr so far, line by line


@contextmanager
def served(*args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    """``alexnet-cifar10 serve ARGS --port 0`` in its own process on the CPU; its URL read from the line it prints
    first, its stderr read as it comes (a pipe nobody reads would stall it). Stopped (SIGTERM) when the block ends
    unless the block stopped it."""
    process = subprocess.Popen(
        [*CLI_WITH_CTRL_C, "serve", *args, "--port", "0", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})})
    lines: queue.Queue[str] = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True).start()
    reader = threading.Thread(target=lambda: errors.extend(process.stderr), daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=120)
        found = re.search(r"http://\S+/", first)
        if not found:
            process.kill()
            process.wait()
            reader.join(timeout=30)
            raise AssertionError(f"serve did not start: {first!r} {''.join(errors)}")
        yield Served(found.group(0), process, first, errors)
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=30)
