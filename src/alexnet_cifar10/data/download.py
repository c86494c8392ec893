"""Fetch the official CIFAR-10 archive: a ``.part`` file, Range resume, md5, atomic rename.

Only http and https URLs are fetched (redirects included), at most ``MAX_DOWNLOAD_BYTES``; the ``.part``
file is opened without following a symbolic link, and a file already under the archive's name that does
not match the md5 is left alone.
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


def md5sum(path: Path) -> str:
    h = hashlib.md5()
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


def _offline_hint(url: str, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {shortened(url)} ({reason}); without network, pass --data PATH to a CIFAR-10 "
        "copy on disk (folder or .tar.gz)"
    )


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


def _too_big(url: str, part: Path) -> DownloadError:
    try:
        part.unlink()
    except OSError:
        pass
    return DownloadError(f"cannot download {shortened(url)}: the server sends more than "
                         f"{size_text(MAX_DOWNLOAD_BYTES)} (the limit: 4x the official archive); nothing was kept")


def _existing(final: Path, md5: str) -> bool:
    """Whether ``final`` is already the verified archive; a file there that is not is refused, not replaced."""
    if not os.path.lexists(final):
        return False
    try:
        if final.is_file() and final.stat().st_size <= MAX_DOWNLOAD_BYTES and md5sum(final) == md5:
            return True
    except OSError as e:
        raise DownloadError(f"cannot read {final}: {e.strerror or e}") from None
    raise DownloadError(f"{final} exists and is not the archive with md5 {md5}; it was left alone: move it away "
                        "(or pass --data PATH to read it)")


def download_archive(
    dest_dir: Path,
    url: str | None = None,
    md5: str | None = None,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Download ``url`` into ``dest_dir`` and return the verified file.

    An existing ``.part`` file is resumed with an HTTP Range request. A file whose md5 does not
    match is renamed to ``.bad`` (kept for inspection, never used) and the call fails. The md5
    defaults to ``$ALEXNET_CIFAR10_MD5`` or the official archive's.
    """
    url = check_url((url or "").strip() or default_url())
    md5 = (md5 or os.environ.get("ALEXNET_CIFAR10_MD5") or OFFICIAL_MD5).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise DownloadError(f"the expected md5 must be 32 hexadecimal digits, got {md5[:40]!r}")
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest_dir}: {e.strerror or e}") from None
    final = dest_dir / archive_name(url)
    if _existing(final, md5):
        return final
    part = final.with_name(final.name + ".part")
    have = _part_size(part)
    response = _request(url, have, timeout)
    if response is not None:  # None: the .part is already complete
        with response:
            _receive(response, url, part, have, progress)
    _verify(part, final, md5)
    return final


def _request(url: str, have: int, timeout: float) -> http.client.HTTPResponse | None:
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
        raise _offline_hint(url, str(getattr(e, "reason", None) or e or type(e).__name__)[:100]) from None


def _receive(response: http.client.HTTPResponse, url: str, part: Path, have: int, progress: bool) -> None:
    """Append the response body to ``part`` (or start it afresh when the server ignored the Range), at most
    ``MAX_DOWNLOAD_BYTES`` in all, and make it durable."""
    if have and response.status != 206:
        have = 0  # the server ignored the Range header: start again
    length = response.headers.get("Content-Length")
    total = have + int(length) if length and length.isdigit() else None
    if total is not None and total > MAX_DOWNLOAD_BYTES:
        raise DownloadError(f"cannot download {shortened(url)}: the server announces {size_text(total)}, more "
                            f"than the {size_text(MAX_DOWNLOAD_BYTES)} limit (4x the official archive)")
    size = have
    try:
        with _open_part(part, append=bool(have)) as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"downloading {part.name.removesuffix('.part')}", disable=not progress,
        ) as bar:
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    f.close()
                    raise _too_big(url, part)
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


def _verify(part: Path, final: Path, md5: str) -> None:
    """Rename ``part`` to ``final`` when its md5 is ``md5``; else set it aside as ``.bad`` and fail."""
    try:
        got = md5sum(part)
        if got != md5:
            bad = final.with_name(final.name + ".bad")
            os.replace(part, bad)  # replaces a link named .bad, never writes through it
            raise DownloadError(
                f"{final}: md5 {got} does not match the expected {md5}; the file was set aside as "
                f"{bad.name} and not used; run again to download afresh"
            )
        os.replace(part, final)  # a rename: a link at ``final`` is replaced, its target never written
    except OSError as e:
        raise DownloadError(f"cannot finish {final}: {e.strerror or e}") from None
