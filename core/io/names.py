"""Species names as BirdNET-Analyzer writes them: eBird codes and common names in about 40 languages.

The data ship in ``assets/names/`` (sources, versions and licences in its README): the eBird code table
``eBird_taxonomy_codes_2024E.json`` of the birdnet-analyzer 2.4.0 wheel (MIT) and BirdNET V2.4's label files,
one per locale, merged into one gzip'd CSV keyed by scientific name (BirdNET model data, CC BY-NC-SA 4.0).
They cover BirdNET V2.4's 6,522 classes, so every species of the dataset (``assets/xc9/species.csv``, whose
6-letter codes such as ``parmaj`` are the dataset's own) maps by its scientific name. BirdNET's non-bird
classes (``Human vocal``, ``Dog``, ``Engine``, ...) carry BirdNET's own codes in that table (``humvoc``,
``dogdog``, ``engine``), not eBird's.

Locales are those of BirdNET-Analyzer's ``--locale``: ``en`` (the model's own labels, eBird/Clements English)
and the suffixes of its label files (``de``, ``fr``, ``es``, ``en_uk``, ``pt_BR``, ...). Where a label file
has no translation for a species it repeats the English name, as BirdNET-Analyzer then shows.

Examples
--------
>>> ebird_code("Parus major")
'gretit1'
>>> common_name("Parus major", "de")
'Kohlmeise'
"""

from __future__ import annotations

import csv
import gzip
import json
from functools import lru_cache
from pathlib import Path

from core.errors import ParameterError

__all__ = ["LABELS_CSV", "EBIRD_JSON", "available_locales", "check_locale", "common_name", "ebird_code", "known_species",
           "scientific_name_of"]

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "names"
#: BirdNET V2.4's common names per locale, ``scientific_name`` then one column per locale (gzip'd CSV, UTF-8).
LABELS_CSV = ASSETS / "birdnet_v2.4_labels.csv.gz"
#: birdnet-analyzer 2.4.0's ``eBird_taxonomy_codes_2024E.json``, gzip'd: ``"Scientific_Common": code`` and back.
EBIRD_JSON = ASSETS / "eBird_taxonomy_codes_2024E.json.gz"


@lru_cache(maxsize=1)
def _labels() -> tuple[tuple[str, ...], dict[str, tuple[str, ...]]]:
    """(locales, ``{scientific name, lower case: names in locale order}``); the first name column is ``en``."""
    with gzip.open(LABELS_CSV, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    header = tuple(rows[0][1:])
    return header, {r[0].lower(): tuple(r[1:]) for r in rows[1:]}


@lru_cache(maxsize=1)
def _ebird() -> tuple[dict[str, str], dict[str, str]]:
    """(``{scientific name, lower case: code}``, ``{code: scientific name}``) from the eBird code table."""
    table = json.loads(gzip.decompress(EBIRD_JSON.read_bytes()).decode("utf-8"))
    by_sci, by_code = {}, {}
    for key, value in table.items():
        if "_" in key:  # "Scientific_Common": code; the reverse entries map code -> "Scientific_Common"
            sci = key.split("_", 1)[0]
            by_sci[sci.lower()] = value
            by_code[value] = sci
    return by_sci, by_code


def available_locales() -> tuple[str, ...]:
    """The locales :func:`common_name` accepts: ``en`` first, then BirdNET-Analyzer's label-file suffixes (38 in all).

    Returns
    -------
    tuple of str
        E.g. ``("en", "af", "ar", ..., "de", ..., "en_uk", ..., "pt_BR", "pt_PT", ..., "zh")``.
    """
    return _labels()[0]


def check_locale(locale: str) -> str:
    """The canonical spelling of a locale (``"DE"`` -> ``"de"``, ``"pt-br"`` -> ``"pt_BR"``, ``"en_UK"`` -> ``"en_uk"``).

    Raises
    ------
    ParameterError
        Not a string, or not one of :func:`available_locales` (the message lists them).
    """
    locales = available_locales()
    if isinstance(locale, str):
        key = locale.strip().replace("-", "_").lower()
        for loc in locales:
            if loc.lower() == key:
                return loc
    raise ParameterError(f"locale must be one of {', '.join(locales)}; got {locale!r}")


def _check_species(scientific_name: str) -> str:
    if not isinstance(scientific_name, str) or scientific_name.strip().lower() not in _labels()[1]:
        raise ParameterError(f"scientific_name {scientific_name!r} is not one of BirdNET V2.4's 6,522 classes")
    return scientific_name.strip().lower()


def known_species(scientific_name: str) -> bool:
    """Whether ``scientific_name`` (any case) is one of BirdNET V2.4's 6,522 classes, so that it has names and a code."""
    return isinstance(scientific_name, str) and scientific_name.strip().lower() in _labels()[1]


def common_name(scientific_name: str, locale: str = "en") -> str:
    """A species' common name in ``locale``, as BirdNET-Analyzer's ``--locale`` writes it.

    Parameters
    ----------
    scientific_name : str
        E.g. ``"Parus major"`` (any case).
    locale : str, default ``"en"``
        One of :func:`available_locales` (``-`` for ``_`` and any case accepted).

    Returns
    -------
    str
        E.g. ``"Great Tit"`` (en), ``"Kohlmeise"`` (de), ``"Mésange charbonnière"`` (fr).

    Raises
    ------
    ParameterError
        Unknown locale (the message lists the valid ones), or a species that BirdNET V2.4 does not know.
    """
    locale = check_locale(locale)
    locales, rows = _labels()
    return rows[_check_species(scientific_name)][locales.index(locale)]


def ebird_code(scientific_name: str) -> str:
    """A species' eBird code (eBird/Clements taxonomy 2024), from birdnet-analyzer 2.4.0's code table.

    Parameters
    ----------
    scientific_name : str
        E.g. ``"Parus major"`` (any case).

    Returns
    -------
    str
        E.g. ``"gretit1"``; BirdNET's own code for its non-bird classes (``"humvoc"`` for Human vocal).

    Raises
    ------
    ParameterError
        A species that BirdNET V2.4 does not know.
    """
    return _ebird()[0][_check_species(scientific_name)]


def scientific_name_of(code: str) -> str | None:
    """The scientific name of an eBird code among BirdNET V2.4's classes (``"gretit1"`` -> ``"Parus major"``); None if not there."""
    return _ebird()[1].get(code) if isinstance(code, str) else None
