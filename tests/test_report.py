"""Tables of docs/ and the model cards built from stored results."""

from core.models.protopnet import prototype_bands
from core.studies.report import prototype_bands_markdown


def test_prototype_bands_counts_each_prototype_once_by_its_band_centre():
    protos = [
        {"class_name": "a", "f_low_hz": 300.0, "f_high_hz": 900.0},  # centre 520 Hz
        {"class_name": "a", "f_low_hz": 900.0, "f_high_hz": 1200.0},  # centre 1039 Hz: the second band
        {"class_name": "b", "f_low_hz": 9000.0, "f_high_hz": 14000.0},
        {"class_name": "b", "f_low_hz": 2500.0, "f_high_hz": 3000.0},
    ]
    t = prototype_bands(protos, ["a", "b", "c"])
    assert t.loc["a", "0-1 kHz"] == 1 and t.loc["a", "1-2 kHz"] == 1
    assert t.loc["b", "8-16 kHz"] == 1 and t.loc["b", "2-4 kHz"] == 1
    assert t["total"].tolist() == [2, 2, 0]
    md = prototype_bands_markdown(protos, ["a", "b", "c"], {"a": "Alpha"})
    assert md.splitlines()[2].startswith("| Alpha | 1 | 1 | 0 | 0 | 0 | 2 |")
    assert md.splitlines()[-1] == "| all | 1 | 1 | 1 | 0 | 1 | 4 |"
