"""The prototype audit: where prototypes fire, deletion faithfulness against random regions, plausibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import ParameterError
from core.field.attribution import occlusion
from core.io.data import WindowSet
from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
from core.studies.audit import audit_maps, audit_summary, deletion_scores, prototype_audit, song_bands, species_ranges


@pytest.fixture(scope="module")
def head_model():
    torch.manual_seed(0)
    cfg = BirdNETHeadConfig(arch="birdnet-protopnet", class_names=("aaa", "bbb"), layer="ACT_POST", channels=192,
                            prototypes_per_class=2)
    return BirdNETHeadModel(cfg).eval()


@pytest.mark.slow
def test_audit_finds_the_cell_a_prototype_was_copied_from(head_model):
    rng = np.random.default_rng(0)
    t = np.arange(144_000) / 48_000
    waves = np.stack([0.3 * np.sin(2 * np.pi * f * t) * (t > 1.5) + 0.01 * rng.standard_normal(len(t))
                      for f in (1000, 1200, 6000, 7000)]).astype(np.float32)
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    with torch.no_grad():
        feats = head_model.forward_features(torch.as_tensor(waves))
        # prototype 0 (class aaa) := the feature vector at cell (1, 6) of window 0
        head_model.prototype_vectors[0, :, 0, 0] = feats[0, :, 1, 6]  # a fresh head's standardisation is the identity
    windows = WindowSet(waveforms=waves, targets=targets, recording_index=np.arange(4), starts=np.zeros(4, int),
                        recordings=[type("R", (), {"recording_id": f"XC{i}"})() for i in range(4)])
    audit = prototype_audit(head_model, windows, max_windows_per_class=1, n_random=3, attribution_windows=1, bands_per_octave=1)
    assert list(audit["prototype"]) == [0, 1, 2, 3] and list(audit["class_name"]) == ["aaa", "aaa", "bbb", "bbb"]
    first = audit.iloc[0]
    assert first["n_windows"] == 1 and first["peak_row"] == 1
    assert first["peak_t_s"] == pytest.approx((6 + 0.5) * 3.0 / 8)
    lo, hi = (float(v) for v in first["band_high_hz"].split("-"))
    assert lo < hi and first["high_lo_hz"] == pytest.approx(lo, abs=0.5)
    assert np.isfinite(first["drop_proto"]) and np.isfinite(first["drop_random"]) and 0 <= first["wins"] <= 1
    # the input attribution of prototype 0 on window 0 is occlusion's, through the model: its evidence is the 1 kHz tone
    occ = occlusion(head_model, waves[0], target="prototype", indices=[0], bands_per_octave=1, cell_s=None)
    profile = np.array([float(v) for v in first["attr_occlusion_profile"].split(";")])
    assert first["attr_windows"] == 1 and profile.sum() == pytest.approx(1.0, abs=1e-3)
    assert np.allclose(profile, occ.frequency_profile()[0] / occ.frequency_profile()[0].sum(), atol=1e-3)
    edges = np.array([float(v) for v in first["attr_edges_hz"].split(";")])
    top = int(np.argmax(profile))
    assert edges[top] <= 1000 < edges[top + 1]
    assert 0 <= first["attr_share_row_band"] <= 1 and 0 <= first["attr_share_row_band_gxi"] <= 1
    assert profile[top] > 0.5  # most of it
    summary = audit_summary(audit, pd.DataFrame([{"species_code": "aaa", "vocalisation": "song", "f_low_hz": edges[top],
                                                  "f_high_hz": edges[top + 1], "source": "a test"}]))
    assert summary.loc[0, "attr_share_range_occlusion"] == pytest.approx(profile[top], abs=1e-3)  # the octave 707-1414 Hz
    assert summary.loc[0, "plausibility_attr"] == "plausible"


def test_spectrogram_region_maps_model_rows_to_birdnets_flipped_rows(head_model):
    # model row 0 (lowest band) is the bottom of BirdNET's spectrogram (its last rows)
    rows, frames = head_model.spectrogram_region((0, 0), (3, 8), (96, 511))
    assert (rows.start, rows.stop) == (64, 96) and (frames.start, frames.stop) == (0, 63)
    rows, frames = head_model.spectrogram_region((2, 7), (3, 8), (96, 511))
    assert (rows.start, rows.stop) == (0, 32) and frames.stop == 511


@pytest.fixture(scope="module")
def tuned_model():
    """A prototype head on a fine-tuned stage whose weights differ from BirdNET's (as the shipped heads' do)."""
    torch.manual_seed(1)
    cfg = BirdNETHeadConfig(arch="birdnet-protopnet", class_names=("aaa", "bbb"), layer="BLOCK_3-5_ADD", channels=108,
                            prototypes_per_class=2, tuned_from="BLOCK_3-4_ADD")
    model = BirdNETHeadModel(cfg).eval()
    with torch.no_grad():
        for q in model.tuned_parameters():
            q.add_(0.05 * torch.randn_like(q))
    return model


def _noise_windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(144_000) / 48_000
    return np.stack([0.2 * np.sin(2 * np.pi * (800 + 900 * i) * t) + 0.02 * rng.standard_normal(len(t))
                     for i in range(n)]).astype(np.float32)


@pytest.mark.slow
def test_audit_goes_through_the_tuned_stage(tuned_model):
    # before issue 23 the audit read BirdNET's graph directly and skipped the tuned stage: its maps and scores were
    # those of another model
    waves = _noise_windows(3)
    spec, sims, logits = audit_maps(tuned_model, waves, batch_size=2)
    with torch.no_grad():
        out = tuned_model.forward_all(torch.as_tensor(waves))
        untuned = tuned_model.head.similarity_maps(tuned_model.trunk_features(torch.as_tensor(waves)).flip(2))  # stage skipped
    assert spec.shape == (3, 2, 96, 511)
    assert torch.allclose(sims, out.similarity_maps, atol=1e-5) and torch.allclose(logits, out.logits, atol=1e-5)
    assert not torch.allclose(sims, untuned, atol=1e-2)  # the stage matters: the old path differs


@pytest.mark.slow
def test_deletion_scores_are_the_models_scores_of_the_masked_input(tuned_model):
    waves = torch.as_tensor(_noise_windows(2, seed=3))
    with torch.no_grad():
        spec = tuned_model.frontend(waves)
        clean = torch.sigmoid(tuned_model(waves))[:, 1]
    everything = (slice(0, 96), slice(0, 511))
    regions = [(0, slice(0, 0), slice(0, 0)), (1, slice(0, 0), slice(0, 0)), (1, *tuned_model.spectrogram_region((0, 3), (6, 16), (96, 511))),
               (0, *everything)]
    got = deletion_scores(tuned_model, spec, regions, 1, batch_size=3)
    assert got.shape == (4,)
    assert torch.allclose(got[:2], clean, atol=1e-5)  # an empty region changes nothing
    assert abs(float(got[2]) - float(clean[1])) > 1e-6  # a real region does
    with torch.no_grad():
        silent = torch.sigmoid(tuned_model.forward_head(tuned_model.features_from_spectrogram(torch.zeros_like(spec[:1]))))[0, 1]
    assert float(got[3]) == pytest.approx(float(silent), abs=1e-5)


@pytest.mark.slow
def test_audit_similarities_are_the_models_activations(tuned_model):
    waves = _noise_windows(4, seed=5)
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    windows = WindowSet(waveforms=waves, targets=targets, recording_index=np.arange(4), starts=np.zeros(4, int),
                        recordings=[type("R", (), {"recording_id": f"XC{i}"})() for i in range(4)])
    audit = prototype_audit(tuned_model, windows, max_windows_per_class=2, n_random=2, attribution_windows=0)
    with torch.no_grad():
        acts = tuned_model.forward_all(torch.as_tensor(waves)).prototype_activations.numpy()
    for j in range(4):
        own, other = (slice(0, 2), slice(2, 4)) if j < 2 else (slice(2, 4), slice(0, 2))
        assert audit.loc[j, "act_own"] == pytest.approx(acts[own, j].mean(), abs=1e-5)
        assert audit.loc[j, "act_other"] == pytest.approx(acts[other, j].mean(), abs=1e-5)
    assert (audit["n_windows"] == 2).all() and audit["wins"].between(0, 1).all()


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


def test_evidence_verdict_is_the_share_of_attribution_inside_the_sourced_range_both_channels_on_one_axis():
    edges = "0;1000;2000;4000;8000"
    # prototype 0: all evidence in 2-4 kHz, though its peak row's low-channel band overlaps nothing and its high-channel
    # band 9-14 kHz neither; prototype 1: the row bands overlap the range (the old verdict passes) but the evidence lies
    # at 4-8 kHz; prototype 2: nothing positive; prototype 3: a species without a sourced range
    audit = pd.DataFrame([
        {"prototype": 0, "class_name": "parmaj", "high_lo_hz": 9000.0, "high_hi_hz": 14000.0, "low_lo_hz": 200.0, "low_hi_hz": 400.0,
         "attr_edges_hz": edges, "attr_occlusion_profile": "0;0;1;0", "attr_gxi_profile": "0;0.5;0.5;0"},
        {"prototype": 1, "class_name": "parmaj", "high_lo_hz": 3000.0, "high_hi_hz": 4500.0, "low_lo_hz": 900.0, "low_hi_hz": 1400.0,
         "attr_edges_hz": edges, "attr_occlusion_profile": "0;0;0.25;0.75", "attr_gxi_profile": "0;0;0;1"},
        {"prototype": 2, "class_name": "parmaj", "high_lo_hz": 3000.0, "high_hi_hz": 4500.0, "low_lo_hz": 900.0, "low_hi_hz": 1400.0,
         "attr_edges_hz": edges, "attr_occlusion_profile": "", "attr_gxi_profile": ""},
        {"prototype": 3, "class_name": "sylatr", "high_lo_hz": 3000.0, "high_hi_hz": 4500.0, "low_lo_hz": 900.0, "low_hi_hz": 1400.0,
         "attr_edges_hz": edges, "attr_occlusion_profile": "0;1;0;0", "attr_gxi_profile": "0;1;0;0"},
    ])
    bands = pd.DataFrame([{"species_code": "parmaj", "vocalisation": "song", "f_low_hz": 2000.0, "f_high_hz": 4000.0, "source": "x"},
                          {"species_code": "parmaj", "vocalisation": "call", "f_low_hz": 3000.0, "f_high_hz": 4000.0, "source": "y"},
                          {"species_code": "sylatr", "vocalisation": "song", "f_low_hz": np.nan, "f_high_hz": 3000.0, "source": "z"}])
    out = audit_summary(audit, bands)
    assert list(out["plausibility"]) == ["implausible", "plausible", "plausible", "no source"]
    assert list(out["plausibility_attr"]) == ["plausible", "implausible", "no evidence", "no source"]
    assert out.loc[0, "attr_share_range_occlusion"] == pytest.approx(1.0)  # overlapping ranges count once
    assert out.loc[0, "attr_share_range_gxi"] == pytest.approx(0.5)
    assert out.loc[1, "attr_share_range_occlusion"] == pytest.approx(0.25)
    assert out.loc[0, "attr_share_range_even"] == pytest.approx(0.25)  # one band of four
    assert np.isnan(out.loc[3, "attr_share_range_occlusion"])
    assert species_ranges(bands, "sylatr") == []  # a one-sided range is not a range
    assert species_ranges(bands, "parmaj") == [(2000.0, 4000.0), (3000.0, 4000.0)]


def test_shipped_song_band_table_has_a_source_for_every_number():
    t = song_bands()
    numbered = t.dropna(subset=["f_low_hz", "f_high_hz"], how="all")
    assert not numbered.empty
    assert numbered["source"].str.len().gt(10).all() and not numbered["source"].str.contains("none found").any()
    assert (numbered["f_low_hz"].fillna(0) < numbered["f_high_hz"].fillna(np.inf)).all()
