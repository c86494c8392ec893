"""Writing that loses nothing: crash-safe files (a temp file in the same folder, fsync, then an atomic rename),
and the check that an output folder holds only what the command itself writes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection
from pathlib import Path
from typing import BinaryIO


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
