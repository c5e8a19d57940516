"""The comparison store: finished model comparisons kept on disk, keyed by every input.

A stored result's key holds its settings, every model's weight fingerprint and the data's identity
(:func:`core.io.journal.dataset_identity`: the resolved data directory and a hash of its content, so another
directory, another manifest, another split or other audio files give another key). Results stored before the data
identity was recorded carry only the directory they were computed on; they match that directory alone.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from core.errors import CoreError, ParameterError
from core.studies.compare import SHIPPED_DIR, CompareResult, CompareSettings

#: Bumped whenever what a stored comparison means changes (2: attack success by top-1 rank, not a 0.5 score cut-off;
#: 3: recordist-disjoint split, worst case over attacks, the 14 kHz front end's retrained models);
#: results of another schema are never shown.
STORE_SCHEMA = 3


def _key(settings: CompareSettings, fingerprints: dict, data: dict | None) -> str:
    from core.studies.embeddings import EmbeddingCache

    return EmbeddingCache.key(f"compare-v{STORE_SCHEMA}", settings.to_dict(), sorted(fingerprints.items()), data)


def data_of(dataset) -> dict | None:
    """The identity of ``dataset`` (a Dataset, a path, an identity dict); None: the default data directory, if any.

    Returns None when no dataset is given and none is found (then nothing can be recomputed, and stored results
    are matched on settings and weights alone; each names the data it came from).
    """
    from core.io.data import find_data_dir
    from core.io.journal import dataset_identity

    if isinstance(dataset, dict):
        return dataset
    if dataset is None:
        try:
            dataset = find_data_dir()
        except CoreError:
            dataset = None
        if dataset is None:
            return None
    return dataset_identity(dataset)


def _result_data(res: CompareResult) -> dict:
    """The data identity a result was computed on (legacy results: their directory only)."""
    d = res.info.get("data")
    if isinstance(d, dict):
        return d
    root = res.info.get("dataset")
    return {"root": str(Path(root).resolve()) if root else None, "content": None}


def same_data(res: CompareResult, data: dict | None) -> bool:
    """Whether ``res`` was computed on ``data``: the same content (wherever it lies) or, for a legacy result, the same directory."""
    if data is None:
        return True
    had = _result_data(res)
    if had.get("content") is not None:
        return had["content"] == data.get("content")
    return had.get("root") is not None and had["root"] == data.get("root")


class CompareStore:
    """Compare results on disk, one directory per (settings, model fingerprints) key.

    Parameters
    ----------
    directory : path, optional
        Where new results are written (default ``<cache>/compare``, the cache being
        ``$BIRDSHIELD_CACHE_DIR`` or ``.cache`` in the repository).
    shipped : path or None, optional
        Read-only results shipped with the repository (default :data:`SHIPPED_DIR`,
        ``assets/compare``), searched after ``directory``; None: none.
    """

    def __init__(self, directory: str | os.PathLike | None = None, shipped: str | os.PathLike | None = "default") -> None:
        if directory is None:
            from core.studies.embeddings import default_cache_dir

            directory = default_cache_dir().parent / "compare"
        self.directory = Path(directory)
        shipped = SHIPPED_DIR if shipped == "default" else shipped
        self.shipped = Path(shipped) if shipped is not None else None

    def _dirs(self) -> list[Path]:
        return [d for d in (self.directory, self.shipped) if d is not None]

    def find(self, settings: CompareSettings, fingerprints: dict, data=None) -> CompareResult | None:
        """The stored result for these settings, weights and data, or None.

        An exact match of the key first; else a result with the same settings,
        computed on the same data (:func:`same_data`), that covers every requested
        model with the same weights (and maybe more), restricted to the requested models.

        Parameters
        ----------
        settings : CompareSettings
        fingerprints : dict of name -> str
        data : core.io.data.Dataset, path or identity dict, optional
            Default: the data directory :func:`core.io.data.find_data_dir` finds (:func:`data_of`).
        """
        data = data_of(data)
        key = _key(settings, fingerprints, data)
        for d in self._dirs():
            res = self._read(d / key)
            if res is not None:
                return res
        for res in self.results():
            if res.settings == settings and same_data(res, data) and all(res.fingerprints.get(n) == f for n, f in fingerprints.items()):
                return res.subset(list(fingerprints))
        return None

    def units_dir(self, settings: CompareSettings, fingerprints: dict, data=None) -> Path:
        """Where a comparison with these inputs keeps its finished units until it is stored (:mod:`core.studies.compare_units`)."""
        return self.directory / f".units-{_key(settings, fingerprints, data_of(data))}"

    def results(self):
        """Every readable stored result, newest first (user cache and shipped)."""
        found = []
        for d in self._dirs():
            if d.is_dir():
                found += [(p.stat().st_mtime, p.parent) for p in d.glob("*/meta.json")]
        for _, sub in sorted(found, reverse=True):
            res = self._read(sub)
            if res is not None:
                yield res

    def latest(self, fingerprints: dict | None = None) -> CompareResult | None:
        """The most recent stored result (optionally only one covering these models with these weights)."""
        for res in self.results():
            if fingerprints is None:
                return res
            if all(res.fingerprints.get(n) == f for n, f in fingerprints.items()):
                return res.subset(list(fingerprints))
        return None

    def save(self, result: CompareResult, directory: str | os.PathLike | None = None) -> Path:
        """Write a result atomically (a temporary directory, then a rename); returns its directory."""
        root = Path(directory) if directory is not None else self.directory
        root.mkdir(parents=True, exist_ok=True)
        final = root / _key(result.settings, result.fingerprints, _result_data(result))
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".compare-"))
        try:
            for name in CompareResult.TABLES:
                getattr(result, name).to_parquet(tmp / f"{name}.parquet", index=False)
            if result.claims is not None:
                result.claims.to_parquet(tmp / "claims.parquet", index=False)
            meta = {"schema": STORE_SCHEMA, "settings": result.settings.to_dict(), "fingerprints": result.fingerprints, "seconds": result.seconds,
                    "info": result.info, "created": time.strftime("%Y-%m-%d %H:%M")}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o777 & ~umask)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return final

    @staticmethod
    def _read(path: Path) -> CompareResult | None:
        try:
            meta = json.loads((path / "meta.json").read_text())
            if meta.get("schema", 1) != STORE_SCHEMA:
                return None  # measured with other definitions (e.g. success at a 0.5 cut-off)
            tables = {name: pd.read_parquet(path / f"{name}.parquet") for name in CompareResult.TABLES}
            claims = pd.read_parquet(path / "claims.parquet") if (path / "claims.parquet").is_file() else None
            return CompareResult(settings=CompareSettings.from_dict(meta["settings"]), fingerprints=meta["fingerprints"],
                                 seconds=meta.get("seconds", 0.0), info=meta.get("info", {}), claims=claims, **tables)
        except (OSError, ValueError, KeyError, TypeError, ParameterError):
            return None
