"""Files in and out without surprises: crash-safe writes (a temp file in the same folder, fsync, then an atomic
rename), the check that an output folder holds only what the command itself writes, and reads of regular files
only, within a size limit (a FIFO or a device is refused without blocking on it)."""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import stat
import tempfile
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, BinaryIO

MAX_JSON_DEPTH = 32  # nesting levels a settings or metadata file of the project may have; it uses 3


def size_text(n: int) -> str:
    """A byte count as a user reads it: 64 MiB, 1 GiB, 650.4 MiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} bytes"


def read_regular(path: Path, limit: int, error: type[Exception], what: str) -> bytes:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, else ``error`` in one line
    (``what`` names what such a file is: "a data file may be" ends the size message). A FIFO, a device or a
    socket is refused without being read, and without blocking on it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: not a regular file" + (" but a folder" if stat.S_ISDIR(st.st_mode) else ""))
        if st.st_size > limit:
            raise error(f"{path}: {size_text(st.st_size)} is larger than the {size_text(limit)} {what}")
        chunks, left = [], st.st_size + 1  # one byte more tells a file that grew while it was read
        try:
            while left > 0 and (chunk := os.read(fd, left)):
                chunks.append(chunk)
                left -= len(chunk)
        except OSError as e:
            raise error(f"cannot read {path}: {e.strerror or e}") from None
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        raise error(f"{path}: the file changed while it was read")
    return data


def read_json(path: Path, limit: int, error: type[Exception], what: str) -> Any:
    """The JSON value in ``path``, read as ``read_regular`` reads (``what``: "a config file may be"), at most
    ``MAX_JSON_DEPTH`` levels deep; anything else is ``error`` in one line. Numbers beyond a float are
    ``inf`` and integers of more than 4,300 digits refused: callers check the ranges of what they take."""
    text = read_regular(path, limit, error, what)
    depth = deepest = 0
    for byte in text:  # brackets inside strings count too, which can only overstate the depth
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        elif byte in b"]}":
            depth -= 1
    if deepest > MAX_JSON_DEPTH:
        raise error(f"{path}: JSON nested {deepest} levels deep, more than the {MAX_JSON_DEPTH} allowed")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(";")[0][:100]
        raise error(f"{path}: JSON expected ({reason})") from None


FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting it to read it back races with
    threads that create files meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The permission bits a write of ``path`` gives the file: those of the regular file it replaces, else what
    ``open()`` would give under the umask. Anything at ``path`` that is not a regular file (a device, a FIFO, a
    folder; a link to one) is ``OSError`` naming it: it is never replaced by a file."""
    try:
        st = os.stat(path)  # follows a link: a link to a device is refused like the device
    except FileNotFoundError:
        return 0o666 & ~_umask()  # nothing there, or a dangling link, which the write replaces
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    kind = next((name for test, name in FILE_KINDS if test(st.st_mode)), "not a regular file")
    link = "a link to " if path.is_symlink() else ""
    raise OSError(errno.EEXIST, f"is {link}{kind}, not a regular file; give the path of a file to write", str(path))


def check_replaceable(folder: Path, names: Collection[str], error: type[Exception]) -> None:
    """``error`` in one line when any of ``names`` in ``folder`` is there but is not a regular file: found
    before a command's work, not when it writes its results."""
    for name in names:
        try:
            new_file_mode(folder / name)
        except OSError as e:
            raise error(f"{e.filename}: {e.strerror}") from None


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` so that a reader sees either the old file or the complete new one. Only a regular file (or
    a link, which is replaced, never written through) is ever replaced; the new file keeps the old one's mode."""
    path = Path(path)
    mode = new_file_mode(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_write_serialized(path: Path, serialize: Callable[[BinaryIO], object]) -> None:
    """``atomic_write`` of what ``serialize`` writes, serialised in memory first: a failed write (a full disk, a
    file size limit) is then the file system's own OSError, which torch.save's writer reports as a RuntimeError
    without its reason."""
    buffer = io.BytesIO()
    serialize(buffer)
    atomic_write(path, lambda f: f.write(buffer.getbuffer()))


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_stale_temps(path: Path, older_than: float) -> None:
    """Remove what ``atomic_write`` of ``path`` left behind when its process was killed: the temporary files
    untouched for ``older_than`` seconds (0 where a lock shows that no other writer can be at work)."""
    now = time.time()
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            if now - tmp.lstat().st_mtime >= older_than:
                tmp.unlink()
        except OSError:
            pass  # gone meanwhile, or not ours to remove


def foreign_files(folder: Path, own: Collection[str]) -> str:
    """The entries of ``folder`` whose names are not in ``own`` (hidden ones aside), listed for an error message
    (the first three, then ``...``); empty when there are none."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in own and not p.name.startswith("."))
    return ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
