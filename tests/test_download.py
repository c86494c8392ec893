"""Download against a real HTTP server on 127.0.0.1: Range resume, md5, errors, and the CLI."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import HttpServer, http_server, make_pixels, run_cli, split_counts, write_python, write_tar

from alexnet_cifar10.data import download, load_cifar10
from alexnet_cifar10.data.download import download_archive
from alexnet_cifar10.errors import DataError, DownloadError

NAME = "cifar-10-python.tar.gz"


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
def server(payload: bytes, no_proxy: None) -> Iterator[HttpServer]:
    with http_server(payload) as httpd:
        yield httpd


@pytest.fixture
def url(server: HttpServer) -> str:
    return server.url(f"/files/{NAME}")


@pytest.fixture
def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- download_archive
def test_full_download(tmp_path: Path, server: HttpServer, url: str, md5: str, payload: bytes) -> None:
    dest = tmp_path / "dl"
    path = download_archive(dest, url, md5, progress=False)
    assert path == dest / NAME
    assert path.read_bytes() == payload
    assert _files(dest) == [NAME]
    assert server.state.ranges == [None]
    assert server.state.paths == [f"/files/{NAME}"]


def test_verified_file_is_not_fetched_again(tmp_path: Path, server: HttpServer, url: str, md5: str) -> None:
    download_archive(tmp_path, url, md5, progress=False)
    assert download_archive(tmp_path, url, md5, progress=False) == tmp_path / NAME
    assert len(server.state.ranges) == 1


def test_download_resumes_a_part_file(tmp_path: Path, server: HttpServer, url: str, md5: str, payload: bytes) -> None:
    half = len(payload) // 2
    (tmp_path / f"{NAME}.part").write_bytes(payload[:half])
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == [f"bytes={half}-"]
    assert path.read_bytes() == payload
    assert hashlib.md5(path.read_bytes()).hexdigest() == md5
    assert _files(tmp_path) == [NAME]


def test_complete_part_file_is_finished_on_416(tmp_path: Path, server: HttpServer, url: str, md5: str,
                                               payload: bytes) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(payload)
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == [f"bytes={len(payload)}-"]
    assert path.read_bytes() == payload
    assert _files(tmp_path) == [NAME]


def test_server_ignoring_range_restarts(tmp_path: Path, server: HttpServer, url: str, md5: str, payload: bytes) -> None:
    (tmp_path / f"{NAME}.part").write_bytes(b"stale bytes from somewhere else")
    server.state.mode = "no-range"
    path = download_archive(tmp_path, url, md5, progress=False)
    assert server.state.ranges == ["bytes=31-"]
    assert path.read_bytes() == payload


def test_md5_mismatch_sets_the_file_aside(tmp_path: Path, server: HttpServer, url: str, payload: bytes) -> None:
    wrong = "0" * 32
    with pytest.raises(DownloadError, match="md5") as info:
        download_archive(tmp_path, url, wrong, progress=False)
    assert isinstance(info.value, DataError)
    assert str(tmp_path / NAME) in str(info.value)
    assert not (tmp_path / NAME).exists()
    assert not (tmp_path / f"{NAME}.part").exists()
    assert (tmp_path / f"{NAME}.bad").read_bytes() == payload


def test_md5_from_the_environment(tmp_path: Path, server: HttpServer, url: str, md5: str,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALEXNET_CIFAR10_MD5", "f" * 32)
    with pytest.raises(DownloadError, match="f" * 32):
        download_archive(tmp_path, url, progress=False)
    monkeypatch.setenv("ALEXNET_CIFAR10_MD5", md5)
    monkeypatch.setenv("ALEXNET_CIFAR10_URL", url)
    assert download_archive(tmp_path, progress=False) == tmp_path / NAME


def test_server_error(tmp_path: Path, server: HttpServer, url: str, md5: str) -> None:
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


def test_cut_connection_leaves_a_part_then_resumes(tmp_path: Path, server: HttpServer, url: str, md5: str,
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


def test_downloaded_archive_loads(tmp_path: Path, server: HttpServer, url: str, md5: str) -> None:
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


def test_cli_data_info_downloads_the_default_folder(tmp_path: Path, server: HttpServer, url: str, md5: str) -> None:
    assert not (tmp_path / "data").exists()
    env = {"ALEXNET_CIFAR10_URL": url, "ALEXNET_CIFAR10_MD5": md5}
    result = run_cli("data", "info", "--val-size", "10", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert split_counts(result.stdout) == {"train": "20", "val": "10", "test": "10"}
    assert "format: python" in result.stdout
    assert _files(tmp_path / "data") == [NAME]
    assert server.state.ranges == [None]


# --------------------------------------------------------------------------- hostile URLs and servers
@pytest.mark.parametrize(("bad_url", "message"), [
    ("file:///etc/passwd", "only http:// and https://"),
    ("ftp://127.0.0.1/cifar-10-python.tar.gz", "only http:// and https://"),
    ("data:,hello", "only http:// and https://"),
    ("http://", "names no host"),
    ("http://[::1", "not a valid URL"),
    ("http://127.0.0.1:99999/x.tar.gz", "not a valid URL"),
    ("http://a b/x.tar.gz", "spaces or control characters"),
    ("http://127.0.0.1/\x1b[2J.tar.gz", "spaces or control characters"),
])
def test_urls_that_are_not_fetched(tmp_path: Path, md5: str, bad_url: str, message: str) -> None:
    with pytest.raises(DownloadError, match=re.escape(message)) as info:
        download_archive(tmp_path / "dl", bad_url, md5, progress=False, timeout=5)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    assert not (tmp_path / "dl").exists() or _files(tmp_path / "dl") == []


@pytest.mark.parametrize(("path", "saved_as"), [
    ("/", NAME), ("", NAME), ("/download?id=3", NAME), ("/mirror/other.tgz", "other.tgz"), ("/..", NAME),
    ("/.hidden.tar.gz", NAME), ("/a%2F..%2Fb.tar.gz", NAME), ("/" + "a" * 300 + ".tar.gz", NAME),
])
def test_the_saved_name_is_the_urls_only_when_it_is_a_plain_archive_name(tmp_path: Path, server: HttpServer,
                                                                        md5: str, path: str, saved_as: str) -> None:
    got = download_archive(tmp_path, server.url(path), md5, progress=False)
    assert got == tmp_path / saved_as and _files(tmp_path) == [saved_as]


@pytest.mark.parametrize(("mode", "message"), [
    ("huge-length", "more than the 650.4 MiB limit"),
    ("chunked-cut", "broke off"),
    ("garbage", "not valid HTTP"),
    ("close", "Remote end closed connection"),
])
def test_broken_servers_end_in_one_line(tmp_path: Path, server: HttpServer, url: str, md5: str, mode: str,
                                        message: str) -> None:
    server.state.mode = mode
    with pytest.raises(DownloadError, match=re.escape(message)) as info:
        download_archive(tmp_path, url, md5, progress=False, timeout=10)
    assert "\n" not in str(info.value)
    assert NAME not in _files(tmp_path)


def test_a_server_that_sends_without_end_is_cut_at_the_limit(tmp_path: Path, server: HttpServer, url: str,
                                                              md5: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(download, "MAX_DOWNLOAD_BYTES", 3 << 20)
    server.state.mode = "endless"
    with pytest.raises(DownloadError, match="sends more than 3 MiB"):
        download_archive(tmp_path, url, md5, progress=False, timeout=10)
    assert _files(tmp_path) == []  # the oversized .part is not kept


def test_redirects_go_to_http_only(tmp_path: Path, server: HttpServer, url: str, md5: str, payload: bytes) -> None:
    server.state.mode, server.state.location = "redirect", "ftp://127.0.0.1/cifar-10-python.tar.gz"
    with pytest.raises(DownloadError, match="redirects to a ftp: URL"):
        download_archive(tmp_path, url, md5, progress=False)
    server.state.location = "file:///etc/passwd"
    with pytest.raises(DownloadError, match="not allowed"):
        download_archive(tmp_path, url, md5, progress=False)
    assert _files(tmp_path) == []


def test_a_part_file_that_is_a_link_is_left_alone(tmp_path: Path, server: HttpServer, url: str, md5: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's own file\n")
    dest = tmp_path / "dl"
    dest.mkdir()
    (dest / f"{NAME}.part").symlink_to(victim)
    with pytest.raises(DownloadError, match="symbolic link"):
        download_archive(dest, url, md5, progress=False)
    assert victim.read_text() == "the user's own file\n"
    assert server.state.paths == []  # refused before asking the server
    os.mkfifo(dest / "fifo.tar.gz.part")
    with pytest.raises(DownloadError, match="not a regular file"):
        download_archive(dest, server.url("/fifo.tar.gz"), md5, progress=False)


def test_a_file_under_the_archive_name_is_never_replaced(tmp_path: Path, server: HttpServer, url: str,
                                                         md5: str) -> None:
    (tmp_path / NAME).write_bytes(b"the user's own archive")
    with pytest.raises(DownloadError, match="left alone"):
        download_archive(tmp_path, url, md5, progress=False)
    assert (tmp_path / NAME).read_bytes() == b"the user's own archive"
    assert server.state.paths == []


def test_the_md5_must_be_hexadecimal(tmp_path: Path, url: str) -> None:
    with pytest.raises(DownloadError, match="32 hexadecimal digits"):
        download_archive(tmp_path, url, "not-an-md5", progress=False)


def test_load_cifar10_resumes_an_interrupted_download(tmp_path: Path, server: HttpServer, url: str, md5: str,
                                                      payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `train` meets with a .part left by an interrupted first run: the rest is asked for with a Range
    request, the archive is complete and checked, and the data load."""
    monkeypatch.setenv("ALEXNET_CIFAR10_MD5", md5)
    data = tmp_path / "data"
    data.mkdir()
    half = len(payload) // 2
    (data / f"{NAME}.part").write_bytes(payload[:half])
    loaded = load_cifar10(data, val_size=0, auto_download=True, url=url, cache_dir=tmp_path / "cache")
    assert server.state.ranges == [f"bytes={half}-"]
    assert (data / NAME).read_bytes() == payload and not (data / f"{NAME}.part").exists()
    assert len(loaded.train) > 0
