"""Read the files of a data source (a folder, or a tar archive read member by member in memory) within limits.

Nothing is extracted: archive members with absolute paths, ``..``, links or sparse data are refused. Every source
is read within limits set from CIFAR-10's own size (``MAX_FILE_BYTES`` a file, ``MAX_TOTAL_BYTES`` in all,
``MAX_FILES`` files), so that an archive bomb or a huge file ends in a ``DataError`` instead of exhausting memory.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import posixpath
import re
import tarfile
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from alexnet_cifar10.errors import DataError, shortened
from alexnet_cifar10.io import read_regular, size_text

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

# Limits on what a data source may hold, set from what CIFAR-10 is: the official .tar.gz (170 MB) decompresses to
# 178 MB in 8 files, the largest a 31 MB batch of 10,000 images, and an image folder of all 60,000 images is
# 60,000 small files (a JPEG or PNG archive of them is smaller still). Each limit leaves a wide margin over that
# and stops an archive bomb (a small file that decompresses to gigabytes, or a sparse member that claims any
# size) long before memory runs out.
MAX_FILE_BYTES = 64 << 20  # one file or archive member: twice CIFAR-10's largest
MAX_TOTAL_BYTES = 1 << 30  # all that is read from one source (for an archive, its decompressed stream): 6x CIFAR-10
MAX_FILES = 200_000  # files (and folders) in one source: over three times CIFAR-10's 60,000 images
FILE_LIMIT_TEXT = "a data file may be (CIFAR-10's largest is 31 MB)"  # ends the message of a file over the limit
MAX_DEPTH = 16  # folder levels walked below a data folder; the layouts lie at most 3 levels down


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


class Source:
    """A read-only view of files: relative posix names and a way to read each one."""

    def __init__(self, label: str, names: list[str], reader: Callable[[str], bytes]) -> None:
        self.label = label
        self.names = sorted(names)
        self._reader = reader

    def read(self, name: str) -> bytes:
        return self._reader(name)

    def where(self, name: str) -> str:
        """The name of a file as a user would look for it."""
        name = shortened(name)  # a crafted member name may be of any length
        return f"{self.label}:{name}" if self.label.endswith(ARCHIVE_SUFFIXES) else str(Path(self.label) / name)


def list_files(root: Path, hint: str = "pass --data the CIFAR-10 folder itself") -> list[str]:
    """The files below ``root`` as posix names relative to it, as ``os.walk`` finds them (symlinked folders are
    not entered), without hidden files and folders, at most ``MAX_DEPTH`` folders down and at most ``MAX_FILES``
    of them. Names keep undecodable bytes as surrogate escapes, so that each one can be opened."""
    names: list[str] = []
    pending: list[tuple[str, int]] = [("", 0)]  # (folder relative to root, its depth): no recursion
    while pending:
        rel, depth = pending.pop()
        folder = root / rel if rel else root
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError as e:
            raise DataError(f"cannot list {folder}: {e.strerror or e}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = f"{rel}/{entry.name}" if rel else entry.name
            try:
                is_dir = entry.is_dir()
                is_link = entry.is_symlink()
            except OSError:
                is_dir = is_link = False
            if is_dir:
                if not is_link and depth + 1 < MAX_DEPTH:
                    pending.append((name, depth + 1))
                continue
            names.append(name)
            if len(names) > MAX_FILES:
                raise DataError(f"{root}: more than {MAX_FILES:,} files (CIFAR-10 has 60,000 images); {hint}")
    return names


class _Budget:
    """The bytes a source may still hand out (``MAX_TOTAL_BYTES`` in all), shared by the decoding threads."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.left = MAX_TOTAL_BYTES
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        with self._lock:
            self.left -= n
            if self.left < 0:
                raise DataError(f"{self.label}: more than {size_text(MAX_TOTAL_BYTES)} of data (the limit; CIFAR-10 "
                                "is 178 MB)")


def _too_large(where: str, size: int) -> DataError:
    return DataError(f"{where}: {size_text(size)} is larger than the {size_text(MAX_FILE_BYTES)} {FILE_LIMIT_TEXT}")


def read_regular_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them, read only when it is a regular file."""
    return read_regular(path, limit, DataError, FILE_LIMIT_TEXT)


def directory_source(root: Path) -> Source:
    budget = _Budget(str(root))

    def read(name: str) -> bytes:
        data = read_regular_file(root / name)
        budget.take(len(data))
        return data

    return Source(str(root), list_files(root), read)


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    name = member.name
    quoted = shortened(repr(name))  # a crafted name may be of any length
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts:
        raise DataError(f"{archive}: refusing archive member with an unsafe path: {quoted}")
    if member.issym() or member.islnk():
        raise DataError(f"{archive}: refusing archive member that is a link: {quoted}")
    if member.issparse():  # its holes read as zeros up to a size that the header alone sets
        raise DataError(f"{archive}: refusing archive member that is a sparse file: {quoted}")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: refusing archive member that is not a regular file: {quoted}")
    if member.isfile() and member.size > MAX_FILE_BYTES:
        raise _too_large(f"{archive}:{shortened(name)}", member.size)


def _check_end(archive: Path, tar: tarfile.TarFile, compressed: bool) -> None:
    """tarfile stops quietly where a plain .tar was cut between two members (or inside a header);
    only the end-of-archive marker, a block of zeros, tells a complete archive from a cut one."""
    if compressed:
        return  # a cut stream already fails in the decompressor
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise DataError(f"{archive}: truncated or corrupt archive (no member header or end-of-archive marker "
                        f"at byte {tar.offset})")


class _BoundedStream:
    """The decompressed bytes of an archive, as tarfile reads them, within the limits: no read or seek goes
    past ``MAX_TOTAL_BYTES`` and no one read (a member, or a long-name or pax header) asks for more than
    ``MAX_FILE_BYTES``, so nothing is decompressed or allocated for a size that a header merely claims."""

    def __init__(self, archive: Path, inner: BinaryIO) -> None:
        self.archive = archive
        self.inner = inner

    def _past_total(self) -> DataError:
        return DataError(f"{self.archive}: the archive decompresses to more than {size_text(MAX_TOTAL_BYTES)} (the "
                         "limit; CIFAR-10 is 178 MB)")

    def tell(self) -> int:
        return self.inner.tell()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        target = offset + (self.inner.tell() if whence == os.SEEK_CUR else 0)
        if whence == os.SEEK_END or target > MAX_TOTAL_BYTES:
            raise self._past_total()
        return self.inner.seek(target)

    def read(self, size: int = -1) -> bytes:
        if size < 0 or size > MAX_FILE_BYTES + tarfile.BLOCKSIZE:
            raise DataError(f"{self.archive}: an archive member or header is larger than the "
                            f"{size_text(MAX_FILE_BYTES)} {FILE_LIMIT_TEXT}")
        if self.inner.tell() + size > MAX_TOTAL_BYTES:
            raise self._past_total()
        return self.inner.read(size)


_COMPRESSED: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda f: gzip.GzipFile(fileobj=f, mode="rb")),
    (b"BZh", lambda f: bz2.BZ2File(f)),
    (b"\xfd7zXZ\x00", lambda f: lzma.LZMAFile(f)),
)


def archive_source(archive: Path) -> Source:
    """Read every regular member into memory within the limits (``MAX_FILE_BYTES`` a member, ``MAX_TOTAL_BYTES``
    decompressed, ``MAX_FILES`` members), refusing unsafe members; nothing is extracted."""
    files: dict[str, bytes] = {}
    try:
        with open(archive, "rb") as raw:
            magic = raw.read(6)
            raw.seek(0)
            opener = next((o for m, o in _COMPRESSED if magic.startswith(m)), None)
            with (opener(raw) if opener else contextlib.nullcontext(raw)) as stream, \
                    tarfile.open(fileobj=_BoundedStream(archive, stream), mode="r:") as tar:
                for count, member in enumerate(tar, start=1):
                    if count > MAX_FILES:
                        raise DataError(f"{archive}: more than {MAX_FILES:,} archive members (CIFAR-10 has 60,000 "
                                        "images)")
                    _check_member(archive, member)
                    if not member.isfile():
                        continue
                    name = posixpath.normpath(member.name)  # also drops a leading "./"
                    if name == "." or any(part.startswith(".") for part in name.split("/")):
                        continue  # hidden files and folders (e.g. macOS "._*" resource forks)
                    handle = tar.extractfile(member)
                    data = handle.read(member.size + 1) if handle else b""  # at most MAX_FILE_BYTES + 1
                    if len(data) > member.size:
                        raise _too_large(f"{archive}:{shortened(name)}", len(data))
                    files[name] = data
                _check_end(archive, tar, opener is not None)
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise DataError(f"cannot read archive {archive}: {e.strerror}") from None
        detail = " ".join(str(e).split())  # tarfile's "r:*" error spans several lines
        raise DataError(f"{archive}: truncated or corrupt archive ({detail[:200]})") from None
    return Source(str(archive), list(files), files.__getitem__)


def open_source(path: Path) -> Source:
    if not path.exists():
        raise DataError(f"{path}: no such file or directory (pass --data PATH to CIFAR-10)")
    if path.is_dir():
        return directory_source(path)
    if is_archive(path):
        return archive_source(path)
    raise DataError(f"{path}: not a directory or a .tar.gz/.tgz/.tar archive")


def find_archive_in(directory: Path) -> Path | None:
    """A directory that holds nothing but a downloaded archive is read through that archive."""
    try:
        archives = sorted(p for p in directory.iterdir() if is_archive(p))
    except OSError as e:
        raise DataError(f"cannot list {directory}: {e.strerror or e}") from None
    return archives[0] if len(archives) == 1 else None
