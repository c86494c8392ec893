"""Download against a real HTTP server on 127.0.0.1: Range resume, md5, errors, and the CLI."""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_pixels, run_cli, split_counts, write_python, write_tar

from alexnet_cifar10.data import load_cifar10
from alexnet_cifar10.data.download import download_archive
from alexnet_cifar10.errors import DataError, DownloadError

NAME = "cifar-10-python.tar.gz"


@dataclass
class ServerState:
    payload: bytes
    mode: str = "ok"  # "ok" | "error" | "cut" | "no-range"
    ranges: list[str | None] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - quiet
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        state = self.server.state
        state.paths.append(self.path)
        header = self.headers.get("Range")
        state.ranges.append(header)
        if state.mode == "error":
            self.send_error(500, "Internal Server Error")
            return
        data, start = state.payload, 0
        match = re.fullmatch(r"bytes=(\d+)-", header or "")
        if match and state.mode != "no-range":
            start = int(match.group(1))
            if start >= len(data):
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
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.mode == "cut":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A tiny python-format data set (30 train, 10 test images) as a .tar.gz."""
    folder = tmp_path_factory.mktemp("payload")
    root = write_python(folder / "src", {"train": make_pixels(3, 11), "test": make_pixels(1, 12)})
    return write_tar(root, folder / NAME).read_bytes()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server(payload: bytes, no_proxy: None) -> Iterator[_Server]:
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState(payload)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def url(server: _Server) -> str:
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/files/{NAME}"


@pytest.fixture
def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- download_archive
def test_full_download(tmp_path: Path, server: _Server, url: str, md5: str, payload: bytes) -> None:
    dest = tmp_path / "dl"
    path = download_archive(dest, url, md5, progress=False)
    assert path == dest / NAME
    assert path.read_bytes() == payload
    assert _files(dest) == [NAME]
    assert server.state.ranges == [None]
    assert server.state.paths == [f"/files/{NAME}"]


def test_verified_file_is_not_fetched_again(tmp_path: Path, server: _Server, url: str, md5: str) -> None:
    download_archive(tmp_path, url, md5, progress=False)
    assert download_archive(tmp_path, url, md5, progress=False) == tmp_path / NAME
    assert len(server.state.ranges) == 1


def test_download_resumes_a_part_file(tmp_path: Path, server: _Server, url: str, md5: str, payload: bytes) -> None:
    half = len(payload) // 2
    (tmp_path / f"{NAME}.part").write_bytes(payload[:half])
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == payload
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    assert _files(tmp_path) == [NAME]


def test_complete_part_file_is_finished_on_416(tmp_path: Path, server: _Server, url: str, md5: str,
                                               payload: bytes) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(payload)
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == [f"bytes={len(payload)}-"]
    assert path.read_bytes() == payload
    assert _files(tmp_path) == [NAME]


def test_server_ignoring_range_restarts(tmp_path: Path, server: _Server, url: str, md5: str, payload: bytes) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(b"stale bytes from somewhere else")
    server.state.mode = "no-range"
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == ["bytes=31-"]
    assert path.read_bytes() == payload


def test_md5_mismatch_sets_the_file_aside(tmp_path: Path, server: _Server, url: str, payload: bytes) -> None:
    wrong = "0" * 32
    with pytest.raises(DownloadError, match="md5") as info:
        download_archive(tmp_path, url, wrong, progress=False)
    assert isinstance(info.value, DataError)
    assert str(tmp_path / NAME) in str(info.value)
    assert not (tmp_path / NAME).exists()
    assert not (tmp_path / f"{NAME}.part").exists()
    assert (tmp_path / f"{NAME}.bad").read_bytes() == payload


def test_md5_from_the_environment(tmp_path: Path, server: _Server, url: str, md5: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_MD5", "f" * 32)
    with pytest.raises(DownloadError, match="f" * 32):
        download_archive(tmp_path, url, progress=False)
    monkeypatch.setenv("ALEXNET_CIFAR10_MD5", md5)
    monkeypatch.setenv("ALEXNET_CIFAR10_URL", url)
    assert download_archive(tmp_path, progress=False) == tmp_path / NAME


def test_server_error(tmp_path: Path, server: _Server, url: str, md5: str) -> None:
    server.state.mode = "error"
    with pytest.raises(DownloadError, match="500"):
        download_archive(tmp_path, url, md5, progress=False)
    assert _files(tmp_path) == []


def test_connection_refused_suggests_data(tmp_path: Path, md5: str, no_proxy: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # the port is closed now: nothing listens on it
    with pytest.raises(DownloadError, match="--data") as info:
        download_archive(tmp_path / "dl", f"http://127.0.0.1:{port}/{NAME}", md5, progress=False, timeout=5)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert not (tmp_path / "dl" / NAME).exists()


def test_cut_connection_leaves_a_part_then_resumes(tmp_path: Path, server: _Server, url: str, md5: str,
                                                    payload: bytes) -> None:
    server.state.mode = "cut"
    with pytest.raises(DownloadError, match="again") as info:
        download_archive(tmp_path, url, md5, progress=False)
    assert str(tmp_path / f"{NAME}.part") in str(info.value)
    assert _files(tmp_path) == [f"{NAME}.part"]
    got = (tmp_path / f"{NAME}.part").read_bytes()
    assert 0 < len(got) < len(payload) and payload.startswith(got)

    server.state.mode = "ok"
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == [None, f"bytes={len(got)}-"]
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    assert _files(tmp_path) == [NAME]


def test_downloaded_archive_loads(tmp_path: Path, server: _Server, url: str, md5: str) -> None:
    path = download_archive(tmp_path, url, md5, progress=False)
    data = load_cifar10(path, val_size=10)
    assert (len(data.train), len(data.val), len(data.test)) == (20, 10, 10)


# --------------------------------------------------------------------------- CLI end to end
def test_cli_data_download(tmp_path: Path, url: str, md5: str, payload: bytes) -> None:
    dest = tmp_path / "into"
    result = run_cli("data", "download", "--data", str(dest), cwd=tmp_path,
                     env={"ALEXNET_CIFAR10_URL": url, "ALEXNET_CIFAR10_MD5": md5})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert f"verified {dest / NAME}" in result.stdout
    assert (dest / NAME).read_bytes() == payload
    assert _files(dest) == [NAME]


def test_cli_data_info_downloads_the_default_folder(tmp_path: Path, server: _Server, url: str, md5: str) -> None:
    assert not (tmp_path / "data").exists()
    env = {"ALEXNET_CIFAR10_URL": url, "ALEXNET_CIFAR10_MD5": md5}
    result = run_cli("data", "info", "--val-size", "10", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert split_counts(result.stdout) == {"train": "20", "val": "10", "test": "10"}
    assert "format: python" in result.stdout
    assert _files(tmp_path / "data") == [NAME]
    assert server.state.ranges == [None]
