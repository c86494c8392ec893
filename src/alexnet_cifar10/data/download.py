"""Fetch the official CIFAR-10 archive: a ``.part`` file, Range resume, md5, atomic rename."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from alexnet_cifar10.errors import DownloadError

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
OFFICIAL_SIZE = 170_498_071
ARCHIVE_NAME = "cifar-10-python.tar.gz"
CHUNK = 1 << 20


def default_url() -> str:
    return os.environ.get("ALEXNET_CIFAR10_URL") or OFFICIAL_URL


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _offline_hint(url: str, reason: object) -> DownloadError:
    return DownloadError(
        f"cannot download {url} ({reason}); without network, pass --data PATH to a CIFAR-10 "
        "copy on disk (folder or .tar.gz)"
    )


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
    url = url or default_url()
    md5 = md5 or os.environ.get("ALEXNET_CIFAR10_MD5") or OFFICIAL_MD5
    dest_dir = Path(dest_dir)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {dest_dir}: {e.strerror or e}") from None
    name = Path(urllib.request.url2pathname(url.rsplit("/", 1)[-1])).name or ARCHIVE_NAME
    final = dest_dir / name
    if final.is_file() and md5sum(final) == md5:
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "alexnet-cifar10", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except ValueError as e:
        raise DownloadError(f"cannot download {url!r}: {e}") from None
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the .part is already complete
            response = None
        else:
            raise DownloadError(f"cannot download {url}: server answered {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise _offline_hint(url, getattr(e, "reason", e)) from None
    if response is not None:
        with response:
            if have and response.status != 206:
                have = 0  # the server ignored the Range header: start again
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else None
            try:
                with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=f"downloading {name}", disable=not progress,
                ) as bar:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
                    f.flush()
                    os.fsync(f.fileno())
            except (urllib.error.URLError, OSError, ConnectionError) as e:
                raise DownloadError(
                    f"download of {url} broke off ({getattr(e, 'reason', e)}); run the same "
                    f"command again to resume from {part}"
                ) from None
            if total is not None and part.stat().st_size < total:
                raise DownloadError(
                    f"download of {url} ended early ({part.stat().st_size} of {total} bytes); "
                    f"run the same command again to resume from {part}"
                )
    got = md5sum(part)
    if got != md5:
        bad = final.with_name(final.name + ".bad")
        os.replace(part, bad)
        raise DownloadError(
            f"{final}: md5 {got} does not match the expected {md5}; the file was set aside as "
            f"{bad} and not used; run again to download afresh"
        )
    os.replace(part, final)
    return final
