"""The comparison store: finished model comparisons kept on disk, keyed by their settings and the models' fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from core.errors import ParameterError
from core.studies.compare import SHIPPED_DIR, CompareResult, CompareSettings

#: Bumped whenever what a stored comparison means changes (2: attack success by top-1 rank, not a 0.5 score cut-off;
#: 3: recordist-disjoint split, worst case over attacks, the 14 kHz front end's retrained models);
#: results of another schema are never shown.
STORE_SCHEMA = 3


def _key(settings: CompareSettings, fingerprints: dict) -> str:
    from core.studies.embeddings import EmbeddingCache

    return EmbeddingCache.key(f"compare-v{STORE_SCHEMA}", settings.to_dict(), sorted(fingerprints.items()))


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

    def find(self, settings: CompareSettings, fingerprints: dict) -> CompareResult | None:
        """The stored result for these settings and weights, or None.

        An exact match first; else a result with the same settings that covers
        every requested model with the same weights (and maybe more), restricted
        to the requested models.
        """
        key = _key(settings, fingerprints)
        for d in self._dirs():
            res = self._read(d / key)
            if res is not None:
                return res
        for res in self.results():
            if res.settings == settings and all(res.fingerprints.get(n) == f for n, f in fingerprints.items()):
                return res.subset(list(fingerprints))
        return None

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
        final = root / _key(result.settings, result.fingerprints)
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
