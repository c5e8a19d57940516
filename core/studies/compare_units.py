"""A comparison's finished units on disk, so that an interrupted :func:`core.studies.compare.run_compare` resumes.

A comparison of the zoo runs for an hour or more on a 2-core CPU. Its units are the shift table of each window
group, each batch of clips of each model under each attack objective (the sweep table rows and, for AudioProtoPNet,
the batch's prototype activation sums) and the worst case of each group, and inside it the transfer attack of each
source and each model's worst-case rows. Each is written to its own file in a directory as soon as it is finished
(atomically, :mod:`core.io.fileio`); a rerun given the same directory reads the finished units instead of computing
them. Batches are seeded on their own (the attacks draw their random start
per batch), so a resumed comparison gives the tables an uninterrupted one gives.

The directory belongs to one set of inputs: its ``key.json`` holds the settings, every model's weight fingerprint,
the data's identity (:func:`core.io.journal.dataset_identity`) and the batch size; a directory with another key is
refused.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import ParameterError
from core.io.fileio import atomic_path, atomic_write_bytes, atomic_write_text
from core.io.journal import jsonable, unit_name

__all__ = ["UnitStore", "unit_name"]


class UnitStore:
    """Finished units of one comparison, one file each (none kept when ``directory`` is None).

    Parameters
    ----------
    directory : path or None
        None: nothing is kept (every unit is computed).
    key : dict
        JSON-ready: every input of the comparison.

    Raises
    ------
    ParameterError
        ``directory`` holds units of a comparison with another key.
    """

    def __init__(self, directory: str | os.PathLike | None, key: dict) -> None:
        self.directory = Path(directory) if directory is not None else None
        self.key = jsonable(key)
        if self.directory is None:
            return
        stored = self.directory / "key.json"
        if stored.is_file():
            old = json.loads(stored.read_text())
            if old != self.key:
                differ = sorted(k for k in set(old) | set(self.key) if old.get(k) != self.key.get(k))
                raise ParameterError(f"{self.directory} holds the units of another comparison ({', '.join(differ)} differ); "
                                     "delete it or choose another directory")
        else:
            atomic_write_text(stored, json.dumps(self.key, indent=1) + "\n")

    def table(self, name: str) -> pd.DataFrame | None:
        """A finished unit's table, or None (not finished, or nothing kept)."""
        if self.directory is None or not (self.directory / f"{name}.parquet").is_file():
            return None
        return pd.read_parquet(self.directory / f"{name}.parquet")

    def put_table(self, name: str, df: pd.DataFrame) -> None:
        """Keep a finished unit's table."""
        if self.directory is not None:
            with atomic_path(self.directory / f"{name}.parquet") as tmp:
                df.to_parquet(tmp, index=False)

    def arrays(self, name: str) -> dict | None:
        """A finished unit's arrays, or None."""
        p = None if self.directory is None else self.directory / f"{name}.npz"
        if p is None or not p.is_file():
            return None
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}

    def put_arrays(self, name: str, **arrays) -> None:
        """Keep a finished unit's arrays."""
        if self.directory is not None:
            buf = io.BytesIO()
            np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
            atomic_write_bytes(self.directory / f"{name}.npz", buf.getvalue())

    def finished(self) -> list[str]:
        """Names of the finished units."""
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.iterdir() if p.suffix in (".parquet", ".npz") and not p.name.startswith("."))

    def clear(self) -> None:
        """Remove the directory (after the whole comparison is stored)."""
        if self.directory is not None and self.directory.is_dir():
            shutil.rmtree(self.directory)
