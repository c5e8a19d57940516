"""Resumable tables and the identities that key them: a long study writes each finished unit as it comes, and a rerun
with the same inputs skips what is done.

A key must hold every input of a result. Three inputs are easy to forget: the data (:func:`dataset_identity`: the
resolved directory and a hash of what is in it, recordings, their split and their files' sizes), the weights
(:func:`weights_fingerprint`) and the settings. :class:`ResumableTable` keeps a study's rows in its output file
(``.csv`` or ``.parquet``) and its settings, these identities included, in a JSON sidecar beside it
(``<out>.json``); the table is rewritten atomically (:mod:`core.io.fileio`) after every unit, so an interrupted
run loses at most the unit it was computing.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path

import pandas as pd

from core.errors import ParameterError
from core.io.fileio import atomic_path, atomic_write_text

__all__ = ["dataset_identity", "weights_fingerprint", "jsonable", "unit_name", "ResumableTable"]



def unit_name(*parts) -> str:
    """A file-safe name of a resumable unit from its parts (model names may be paths): ``robustness-baseline-1a2b3c-0003``."""
    text = "-".join(str(p) for p in parts)
    return f"{re.sub(r'[^A-Za-z0-9_.]+', '_', text)[:80]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"

def jsonable(value) -> object:
    """``value`` as it reads back from JSON (tuples become lists, numpy scalars numbers): settings compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


def weights_fingerprint(model) -> str:
    """SHA-256 (hex, 16 characters) of a model's config and every weight; changes whenever a weight does.

    The same value as :func:`core.studies.embeddings.model_fingerprint` (one definition for every store and table).

    Parameters
    ----------
    model : torch.nn.Module
        With ``config.to_dict()``.

    Returns
    -------
    str
    """
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _identity_of_dir(root: str, stamp: tuple) -> dict:
    from core.io.data import Dataset

    return _identity(Dataset(root))


def _identity(dataset) -> dict:
    h = hashlib.sha256()
    for name in ("manifest.csv", "species.csv"):
        p = Path(dataset.root) / name
        h.update(name.encode() + (p.read_bytes() if p.is_file() else b"-"))
    h.update(str(getattr(dataset, "split_scheme", "")).encode())
    files = [(r.recording_id, r.split, r.path.stat().st_size if r.path.is_file() else -1) for r in dataset.recordings]
    h.update(json.dumps(files).encode())
    return {"root": str(Path(dataset.root).resolve()), "content": h.hexdigest()[:16]}


def dataset_identity(dataset) -> dict:
    """What a result computed on ``dataset`` depends on: its resolved directory and a hash of its content.

    The content hash covers ``manifest.csv`` and ``species.csv`` byte for byte, the split scheme, every
    recording's split as assigned in force (so a change of the split function changes it) and the size of every
    audio file. Two copies of the same data at two places have the same ``content`` and different ``root``.

    Parameters
    ----------
    dataset : core.io.data.Dataset or path
        A path is opened as a :class:`core.io.data.Dataset` (cached while its manifest is unchanged).

    Returns
    -------
    dict
        ``root`` (str, the resolved directory) and ``content`` (str, 16 hex characters).

    Raises
    ------
    DatasetError
        A path without a readable manifest.
    """
    if isinstance(dataset, (str, os.PathLike)):
        root = Path(dataset).expanduser().resolve()
        manifest = root / "manifest.csv"
        stamp = (manifest.stat().st_mtime_ns, manifest.stat().st_size) if manifest.is_file() else ()
        return dict(_identity_of_dir(str(root), stamp))
    return _identity(dataset)


class ResumableTable:
    """A study's table on disk that grows unit by unit, and the settings it was computed with.

    Parameters
    ----------
    path : path
        ``.csv`` or ``.parquet``; the settings go to ``<path>.json``.
    settings : dict
        JSON-ready; every input of the study (data identity, weight fingerprints, options).
    unit : sequence of str
        The columns that name a unit (e.g. ``("model", "snr_db", "attack", "clip")``).
    resume : bool
        True: rows of an earlier run with equal settings are kept and their units skipped. False: start
        afresh (an existing table is replaced when the first unit is written).

    Raises
    ------
    ParameterError
        Another extension; with ``resume``, an existing table whose settings differ (naming the settings that
        differ) or that has no settings beside it.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, unit, *, resume: bool = True) -> None:
        self.path = Path(path)
        if self.path.suffix not in (".csv", ".parquet"):
            raise ParameterError(f"a resumable table must end in .csv or .parquet, got {self.path.name!r}")
        self.sidecar = self.path.with_name(self.path.name + ".json")
        self.settings = jsonable(settings)
        self.unit = tuple(unit)
        self.table = pd.DataFrame()
        if resume and self.path.exists():
            old = json.loads(self.sidecar.read_text()) if self.sidecar.is_file() else None
            if old is None:
                raise ParameterError(f"{self.path} has no settings beside it ({self.sidecar.name}), so it cannot be resumed; "
                                     "pass --fresh to replace it or choose another output file")
            if old.get("settings") != self.settings:
                was = old.get("settings", {})
                differ = sorted(k for k in set(was) | set(self.settings) if was.get(k) != self.settings.get(k))
                raise ParameterError(f"{self.path} holds a run with other settings ({', '.join(differ)}); pass --fresh to "
                                     "replace it or choose another output file")
            self.table = self._read()
        self.resumed = len(self.table)

    def _read(self) -> pd.DataFrame:
        return pd.read_parquet(self.path) if self.path.suffix == ".parquet" else pd.read_csv(self.path)

    def done(self) -> set:
        """The units already in the table, as tuples of the ``unit`` columns."""
        if not len(self.table):
            return set()
        return set(self.table[list(self.unit)].itertuples(index=False, name=None))

    def add(self, rows: pd.DataFrame) -> None:
        """Append the rows of finished units and rewrite the table and its settings atomically."""
        self.table = pd.concat([self.table, rows], ignore_index=True) if len(self.table) else rows.reset_index(drop=True)
        atomic_write_text(self.sidecar, json.dumps({"settings": self.settings}, indent=1) + "\n")
        with atomic_path(self.path) as tmp:
            if self.path.suffix == ".csv":
                self.table.to_csv(tmp, index=False, float_format="%.6g")
            else:
                self.table.to_parquet(tmp, index=False)

    def result(self) -> pd.DataFrame:
        """The whole table as stored (read back, so a resumed and an uninterrupted run return the same values)."""
        return self._read() if self.path.exists() else self.table
