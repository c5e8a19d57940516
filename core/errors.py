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
    "check_int",
    "check_split",
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


def check_int(name: str, value, minimum: int) -> int:
    """Return ``value`` if it is an integer (not a bool) >= ``minimum``.

    Raises
    ------
    ParameterError
        ``"<name> must be an integer >= <minimum>, got <value>"`` otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_split(split: str) -> str:
    """Return ``split`` if it is one of a dataset's splits ("train", "val", "test").

    Raises
    ------
    ParameterError
        ``"split must be train, val or test, got <split>"`` otherwise.
    """
    if split not in ("train", "val", "test"):
        raise ParameterError(f"split must be train, val or test, got {split!r}")
    return split
