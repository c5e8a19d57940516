"""Atomic file writes: a reader never sees a half-written file, and a crash leaves the old one intact.

Every file the project writes for later reading (checkpoints and model cards, sweep tables and their
settings, caches, stored comparisons, downloads) goes through :func:`atomic_path`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes"]


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; moved onto ``path`` when the block succeeds.

    The temporary name keeps ``path``'s suffix (``np.savez`` and pandas choose the format by
    it) and gets the permissions a new file would get under the user's umask. If the block
    raises, the temporary file is removed and ``path`` is left as it was.

    Parameters
    ----------
    path : path
        Destination; its parent directory is created if missing.

    Yields
    ------
    Path
        Where to write.

    Raises
    ------
    OSError
        The directory is not writable.

    Examples
    --------
    >>> with atomic_path(tmp / "table.csv") as tmp_path:  # doctest: +SKIP
    ...     df.to_csv(tmp_path, index=False)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
    os.close(fd)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_path`); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
