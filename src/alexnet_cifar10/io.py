"""Files in and out without surprises: crash-safe writes (a temp file in the same folder, fsync, then an atomic
rename), the check that an output folder holds only what the command itself writes, and reads of regular files
only, within a size limit (a FIFO or a device is refused without blocking on it)."""

from __future__ import annotations

import json
import os
import stat
import tempfile
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


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` so that a reader sees either the old file or the complete new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def foreign_files(folder: Path, own: Collection[str]) -> str:
    """The entries of ``folder`` whose names are not in ``own`` (hidden ones aside), listed for an error message
    (the first three, then ``...``); empty when there are none."""
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in own and not p.name.startswith("."))
    return ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
