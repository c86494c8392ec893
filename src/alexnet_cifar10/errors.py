"""The project's exception types. ``str(error)`` is the one line a user sees."""

from __future__ import annotations


class AlexNetCifarError(Exception):
    """Base of every error a user can cause and fix (bad path, bad file, bad flag)."""


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
