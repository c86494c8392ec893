"""Fetch a file over http(s) — the official CIFAR-10 archive, or weights that torch.hub is given a URL of: a
``.part`` file, Range resume, a digest, atomic rename.

Only http and https URLs are fetched (redirects included), at most what the file may be (``Expected``); the
``.part`` file is opened without following a symbolic link, and a file already under the final name that does
not match the digest is left alone.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import posixpath
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from alexnet_cifar10.data.sources import ARCHIVE_SUFFIXES
from alexnet_cifar10.errors import DownloadError, shortened
from alexnet_cifar10.io import size_text

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_SIZE = 170_498_071
# Four times the official archive: room for a mirror's other packing of CIFAR-10 (an image-folder archive is
# smaller), while a server that sends without end is stopped long before the disk fills.
MAX_DOWNLOAD_BYTES = 4 * OFFICIAL_SIZE
ARCHIVE_NAME = "cifar-10-python.tar.gz"
SCHEMES = ("http", "https")
CHUNK = 1 << 20
# What a server can make urllib raise: socket errors and timeouts (OSError), urllib's own, and http.client's
# protocol errors (a bad status line, a cut chunked or fixed-length body, a line or header past its limit).
NETWORK_ERRORS = (urllib.error.URLError, OSError, http.client.HTTPException)


def default_url() -> str:
    return os.environ.get("ALEXNET_CIFAR10_URL") or OFFICIAL_URL


@dataclass(frozen=True)
class Expected:
    """What a download must be: at most ``max_bytes`` (``limit``: why that many), with the ``algorithm`` digest
    starting with ``digest`` (the whole digest, a prefix, or "" when nothing is known); ``offline`` says what a
    user without network can do instead."""

    algorithm: str
    digest: str
    max_bytes: int
    limit: str
    offline: str


def digest_of(path: Path, algorithm: str = "md5") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_url(url: str) -> str:
    """``url`` when it is an http or https URL with a host, else a DownloadError that says why not."""
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise DownloadError(f"cannot download {shortened(url)!r}: the URL holds spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in 0..65535
    except ValueError as e:
        raise DownloadError(f"cannot download {shortened(url)!r}: not a valid URL ({e})") from None
    if parts.scheme.lower() not in SCHEMES:
        raise DownloadError(f"cannot download {shortened(url)!r}: only http:// and https:// URLs are fetched")
    if not parts.hostname:
        raise DownloadError(f"cannot download {shortened(url)!r}: the URL names no host")
    return url


def archive_name(url: str) -> str:
    """The file name a download is saved under: the URL's own when it is a plain archive name, else the official
    archive's (a URL without a file name, or one such as ``download?id=3``, ``..`` or ``.hidden.tar``)."""
    name = urllib.parse.unquote(posixpath.basename(urllib.parse.urlsplit(url).path))
    usable = (name.lower().endswith(ARCHIVE_SUFFIXES) and not name.startswith(".") and "/" not in name
              and "\\" not in name and name.isprintable() and len(os.fsencode(name)) <= 200)
    return name if usable else ARCHIVE_NAME


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects to http and https URLs only (urllib's own handler also follows ftp)."""

    def redirect_request(self, req: urllib.request.Request, fp: BinaryIO, code: int, msg: str,
                         headers: http.client.HTTPMessage, newurl: str) -> urllib.request.Request | None:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in SCHEMES:
            fp.close()
            raise DownloadError(f"cannot download {shortened(req.full_url)}: the server redirects to a {scheme}: URL; "
                                "only http:// and https:// URLs are fetched")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _offline_hint(url: str, reason: object, expected: Expected) -> DownloadError:
    return DownloadError(f"cannot download {shortened(url)} ({reason}); without network, {expected.offline}")


def _part_size(part: Path) -> int:
    """The bytes already in ``part``; a symbolic link or anything but a regular file there is refused."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise DownloadError(f"cannot read {part}: {e.strerror or e}") from None
    if stat.S_ISLNK(st.st_mode):
        raise DownloadError(f"{part} is a symbolic link, not a partial download; it was left alone: remove it and "
                            "run again")
    if not stat.S_ISREG(st.st_mode):
        raise DownloadError(f"{part} is not a regular file; it was left alone: remove it and run again")
    return st.st_size


def _open_part(part: Path, append: bool) -> BinaryIO:
    """``part`` opened for writing without following a symbolic link (one planted since ``_part_size``)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
             | (os.O_APPEND if append else os.O_TRUNC))
    try:
        fd = os.open(part, flags, 0o644)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DownloadError(f"{part} is a symbolic link, not a partial download; it was left alone: remove it "
                                "and run again") from None
        raise DownloadError(f"cannot write {part}: {e.strerror or e}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DownloadError(f"{part} is not a regular file; it was left alone: remove it and run again")
    return os.fdopen(fd, "ab" if append else "wb")


def _too_big(url: str, part: Path, expected: Expected) -> DownloadError:
    try:
        part.unlink()
    except OSError:
        pass
    return DownloadError(f"cannot download {shortened(url)}: the server sends more than "
                         f"{size_text(expected.max_bytes)} (the limit: {expected.limit}); nothing was kept")


def _matches(path: Path, expected: Expected) -> bool:
    return digest_of(path, expected.algorithm).startswith(expected.digest)


def _existing(final: Path, expected: Expected) -> bool:
    """Whether ``final`` is already the verified download; a file there that is not is refused, not replaced."""
    if not os.path.lexists(final):
        return False
    try:
        if final.is_file() and final.stat().st_size <= expected.max_bytes and _matches(final, expected):
            return True
    except OSError as e:
        raise DownloadError(f"cannot read {final}: {e.strerror or e}") from None
    what = f"with {expected.algorithm} {expected.digest}" if expected.digest else "a download"
    raise DownloadError(f"{final} exists and is not the file {what}; it was left alone: move it away "
                        "(or give its path instead)")


def download_archive(
    dest_dir: Path,
    url: str | None = None,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download the CIFAR-10 archive at ``url`` into ``dest_dir`` and return the verified file.

    An existing ``.part`` file is resumed with an HTTP Range request. A file whose md5 does not
    match is renamed to ``.bad`` (kept for inspection, never used) and the call fails. The md5
    defaults to ``$ALEXNET_CIFAR10_MD5`` or the official archive's.
    """
    url = check_url((url or "").strip() or default_url())
    md5 = (md5 or os.environ.get("ALEXNET_CIFAR10_MD5") or OFFICIAL_MD5).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise DownloadError(f"the expected md5 must be 32 hexadecimal digits, got {md5[:40]!r}")
    expected = Expected("md5", md5, MAX_DOWNLOAD_BYTES, "4x the official archive",
                        "pass --data PATH to a CIFAR-10 copy on disk (folder or .tar.gz)")
    return fetch(url, Path(dest_dir) / archive_name(url), expected, progress=progress, timeout=timeout)


def fetch(url: str, final: Path, expected: Expected, *, progress: bool = True, timeout: float = 30.0) -> Path:
    """``final``, downloaded from ``url`` unless it is already there and matches ``expected``: received into
    ``final.part`` (resumed by a Range request when one is left), checked, then renamed."""
    url = check_url(url)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {final.parent}: {e.strerror or e}") from None
    if _existing(final, expected):
        return final
    part = final.with_name(final.name + ".part")
    have = _part_size(part)
    response = _request(url, have, timeout, expected)
    if response is not None:  # None: the .part is already complete
        with response:
            _receive(response, url, part, have, progress, expected)
    _verify(part, final, expected)
    return final


def _request(url: str, have: int, timeout: float, expected: Expected) -> http.client.HTTPResponse | None:
    """The server's answer to a GET of ``url`` from byte ``have`` on; None when it says the range is past the end
    (the ``.part`` holds the whole file)."""
    headers = {"User-Agent": "alexnet-cifar10", **({"Range": f"bytes={have}-"} if have else {})}
    opener = urllib.request.build_opener(_HttpOnlyRedirects)
    try:
        return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            return None
        raise DownloadError(f"cannot download {shortened(url)}: server answered {e.code} {str(e.reason)[:100]}") \
            from None
    except ValueError as e:  # http.client.InvalidURL included
        raise DownloadError(f"cannot download {shortened(url)!r}: {str(e)[:100]}") from None
    except NETWORK_ERRORS as e:
        if isinstance(e, http.client.HTTPException) and not isinstance(e, OSError):  # RemoteDisconnected is both
            raise DownloadError(f"cannot download {shortened(url)}: the server's answer is not valid HTTP "
                                f"({type(e).__name__})") from None
        raise _offline_hint(url, str(getattr(e, "reason", None) or e or type(e).__name__)[:100], expected) from None


def _receive(response: http.client.HTTPResponse, url: str, part: Path, have: int, progress: bool,
             expected: Expected) -> None:
    """Append the response body to ``part`` (or start it afresh when the server ignored the Range), at most
    ``expected.max_bytes`` in all, and make it durable."""
    if have and response.status != 206:
        have = 0  # the server ignored the Range header: start again
    length = response.headers.get("Content-Length")
    total = have + int(length) if length and length.isdigit() else None
    if total is not None and total > expected.max_bytes:
        raise DownloadError(f"cannot download {shortened(url)}: the server announces {size_text(total)}, more "
                            f"than the {size_text(expected.max_bytes)} limit ({expected.limit})")
    size = have
    try:
        with _open_part(part, append=bool(have)) as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {part.name.removesuffix('.part')}", disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > expected.max_bytes:
                    f.close()
                    raise _too_big(url, part, expected)
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    except NETWORK_ERRORS as e:
        reason = str(getattr(e, "reason", None) or e or type(e).__name__)[:100]
        raise DownloadError(f"download of {shortened(url)} broke off ({reason}); run the same command again to "
                            f"resume from {part}") from None
    if total is not None and size < total:
        raise DownloadError(f"download of {shortened(url)} ended early ({size} of {total} bytes); run the same "
                            f"command again to resume from {part}")


def _verify(part: Path, final: Path, expected: Expected) -> None:
    """Rename ``part`` to ``final`` when its digest matches; else set it aside as ``.bad`` and fail."""
    try:
        got = digest_of(part, expected.algorithm)
        if not got.startswith(expected.digest):
            bad = final.with_name(final.name + ".bad")
            os.replace(part, bad)  # replaces a link named .bad, never writes through it
            raise DownloadError(
                f"the download's {expected.algorithm} {got[:len(expected.digest)]} does not match the expected "
                f"{expected.digest}; it was set aside as {bad} and not used; run again to download afresh"
            )
        os.replace(part, final)  # a rename: a link at ``final`` is replaced, its target never written
    except OSError as e:
        raise DownloadError(f"cannot finish {final}: {e.strerror or e}") from None
