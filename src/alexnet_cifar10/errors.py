"""The project's exception types. ``str(error)`` is the one line a user sees."""

from __future__ import annotations


class AlexNetCifarError(Exception):
    """Base of every error a user can cause and fix (bad path, bad file, bad flag).

    The message is kept to one line: details quoted from other libraries (pickle, tarfile,
    Pillow) often span several, and a user sees exactly one line per error.
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(" ".join(str(message).split()))


def first_line(e: BaseException) -> str:
    """The first line of another library's error (load_state_dict and NCCL list pages of detail)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def write_failure(e: OSError | RuntimeError) -> str:
    """Why a write failed, in one line: an OSError's reason, or the first line of torch.save's RuntimeError."""
    return e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)[:200]


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
