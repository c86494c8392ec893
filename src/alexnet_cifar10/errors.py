"""The project's exception types. ``str(error)`` is the one line a user sees."""

from __future__ import annotations

import math
import pickle
import struct
import zipfile


def printable(text: object) -> str:
    """``text`` safe to print on any terminal: bytes of a file name that are not UTF-8 (surrogate escapes) as
    ``\\xNN``, other unprintable characters (terminal escapes, NUL) as Python escapes."""
    out = []
    for c in str(text):
        if c.isprintable() or c == " ":
            out.append(c)
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # a byte that os.fsdecode could not decode
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        else:
            out.append(c.encode("unicode_escape").decode("ascii"))
    return "".join(out)


MAX_MESSAGE = 300 - len("alexnet-cifar10: error: ")  # the line a user sees stays within 300 characters


def shortened(text: object, limit: int = 80) -> str:
    """``text`` in at most ``limit`` characters, its middle elided: a file name or a value quoted from a file
    keeps its start and its end, which tell most."""
    text = str(text)
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return text[:keep] + "..." + text[len(text) - (limit - 3 - keep):]


def shown(value: object) -> str:
    """A value as a message may quote it: a number of any size in a few characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {'-' if value < 0 else ''}number of about {int(value.bit_length() * math.log10(2))} digits"
    return shortened(repr(value), 40)


class AlexNetCifarError(Exception):
    """Base of every error a user can cause and fix (bad path, bad file, bad flag).

    The message is kept to one printable line of at most ``MAX_MESSAGE`` characters: details quoted from other
    libraries (pickle, tarfile, Pillow) often span several, and file names may hold bytes a terminal cannot show.
    What a message quotes is shortened where it is quoted; the cap holds whatever the quotes are.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(shortened(printable(" ".join(str(message).split())), MAX_MESSAGE))


def first_line(e: BaseException) -> str:
    """The first line of another library's error (load_state_dict and NCCL list pages of detail)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_failure(e: OSError | RuntimeError) -> str:
    """Why a write failed, in one line: an OSError's reason, or the first line of torch.save's RuntimeError."""
    return e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)[:200]


# What torch.load raises on a damaged or crafted file, even with weights_only=True: the zip reader's RuntimeError,
# the unpickler's own errors, and what a crafted pickle makes an allowed rebuild function raise.
TORCH_LOAD_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, KeyError, IndexError, TypeError,
    ValueError, AttributeError, OverflowError, struct.error,
)


class DataError(AlexNetCifarError):
    """The data set could not be found, read or trusted."""


class DownloadError(DataError):
    """The official archive could not be fetched or verified."""


class CheckpointError(AlexNetCifarError):
    """A checkpoint is missing, corrupt or asks for more than tensors and plain values."""


class ConfigError(AlexNetCifarError):
    """A flag or config value is invalid."""


class TrainingError(AlexNetCifarError):
    """Training cannot go on (non-finite loss, unwritable run folder, ...)."""
