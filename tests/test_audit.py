"""The prototype audit: where prototypes fire, deletion faithfulness against random regions, plausibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import ParameterError
from core.io.data import WindowSet
from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
from core.studies.audit import _spec_region, audit_summary, prototype_audit, song_bands


@pytest.fixture(scope="module")
def head_model():
    torch.manual_seed(0)
    cfg = BirdNETHeadConfig(arch="birdnet-protopnet", class_names=("aaa", "bbb"), layer="ACT_POST", channels=192,
                            prototypes_per_class=2)
    return BirdNETHeadModel(cfg).eval()


def test_audit_finds_the_cell_a_prototype_was_copied_from(head_model):
    rng = np.random.default_rng(0)
    t = np.arange(144_000) / 48_000
    waves = np.stack([0.3 * np.sin(2 * np.pi * f * t) * (t > 1.5) + 0.01 * rng.standard_normal(len(t))
                      for f in (1000, 1200, 6000, 7000)]).astype(np.float32)
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    with torch.no_grad():
        feats = head_model.forward_features(torch.as_tensor(waves))
        # prototype 0 (class aaa) := the feature vector at cell (1, 6) of window 0
        head_model.head.prototype_vectors[0, :, 0, 0] = feats[0, :, 1, 6]
    windows = WindowSet(waveforms=waves, targets=targets, recording_index=np.arange(4), starts=np.zeros(4, int),
                        recordings=[type("R", (), {"recording_id": f"XC{i}"})() for i in range(4)])
    audit = prototype_audit(head_model, windows, max_windows_per_class=1, n_random=3)
    assert list(audit["prototype"]) == [0, 1, 2, 3] and list(audit["class_name"]) == ["aaa", "aaa", "bbb", "bbb"]
    first = audit.iloc[0]
    assert first["n_windows"] == 1 and first["peak_row"] == 1
    assert first["peak_t_s"] == pytest.approx((6 + 0.5) * 3.0 / 8)
    lo, hi = (float(v) for v in first["band_high_hz"].split("-"))
    assert lo < hi and first["high_lo_hz"] == pytest.approx(lo, abs=0.5)
    assert np.isfinite(first["drop_proto"]) and np.isfinite(first["drop_random"]) and 0 <= first["wins"] <= 1


def test_spec_region_maps_model_rows_to_birdnets_flipped_rows(head_model):
    # model row 0 (lowest band) is the bottom of BirdNET's spectrogram (its last rows)
    rows, frames = _spec_region(head_model, (0, 0), (3, 8), (96, 511))
    assert (rows.start, rows.stop) == (64, 96) and (frames.start, frames.stop) == (0, 63)
    rows, frames = _spec_region(head_model, (2, 7), (3, 8), (96, 511))
    assert (rows.start, rows.stop) == (0, 32) and frames.stop == 511


def test_audit_rejects_models_without_prototypes_on_birdnet(tiny_proto):
    with pytest.raises(ParameterError, match="prototype head on BirdNET"):
        prototype_audit(tiny_proto, None)


def test_plausibility_verdicts():
    audit = pd.DataFrame([
        {"prototype": 0, "class_name": "parmaj", "high_lo_hz": 3000.0, "high_hi_hz": 4500.0, "low_lo_hz": 900.0, "low_hi_hz": 1400.0},
        {"prototype": 1, "class_name": "parmaj", "high_lo_hz": 9000.0, "high_hi_hz": 14000.0, "low_lo_hz": 2200.0, "low_hi_hz": 2900.0},
        {"prototype": 2, "class_name": "sylatr", "high_lo_hz": 3000.0, "high_hi_hz": 4500.0, "low_lo_hz": 900.0, "low_hi_hz": 1400.0},
    ])
    bands = pd.DataFrame([{"species_code": "parmaj", "vocalisation": "song", "f_low_hz": 3500.0, "f_high_hz": 5000.0, "source": "x"},
                          {"species_code": "sylatr", "vocalisation": "song", "f_low_hz": np.nan, "f_high_hz": np.nan, "source": "none found"}])
    assert list(audit_summary(audit, bands)["plausibility"]) == ["plausible", "implausible", "no source"]


def test_shipped_song_band_table_has_a_source_for_every_number():
    t = song_bands()
    numbered = t.dropna(subset=["f_low_hz", "f_high_hz"], how="all")
    assert not numbered.empty
    assert numbered["source"].str.len().gt(10).all() and not numbered["source"].str.contains("none found").any()
    assert (numbered["f_low_hz"].fillna(0) < numbered["f_high_hz"].fillna(np.inf)).all()
