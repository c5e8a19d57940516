"""Error hierarchy of birdshield's core.

Every error that user input can trigger derives from :class:`CoreError`, so the
dashboard and the CLI can catch one type and show a one-line message instead of
a traceback.
"""

from __future__ import annotations

__all__ = [
    "CoreError",
    "AudioLoadError",
    "ParameterError",
    "DatasetError",
    "CheckpointError",
]


class CoreError(Exception):
    """Base class of all errors raised on purpose by :mod:`core`."""


class AudioLoadError(CoreError):
    """An audio file or buffer cannot be decoded, or holds no usable samples."""


class ParameterError(CoreError, ValueError):
    """A parameter is outside its valid range; the message names both."""


class DatasetError(CoreError):
    """A dataset directory or manifest is missing or malformed."""


class CheckpointError(CoreError):
    """A checkpoint is missing, unreadable, not safetensors, or does not match the code."""
