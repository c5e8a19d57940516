"""Transfer table between models of different sample rates, on tiny models and the generated dataset."""

import numpy as np
import pytest
import torch

from core.errors import ParameterError
from core.field.inference import analyze_waveform
from core.io.audio import resample
from core.io.data import Dataset
from core.models.frontend import FrontendConfig
from core.models.registry import ModelConfig, build_model
from core.studies.transfer import TransferSettings, dataset_segments, transfer_segment, transfer_summary, transfer_table
from tests.conftest import CLASSES, TINY_BACKBONE, tiny_config

LOW_RATE = FrontendConfig(sample_rate=8_000, n_fft=256, hop_length=128, n_mels=16, f_min=50.0, f_max=4_000.0)


@pytest.fixture
def two_rates():
    torch.manual_seed(0)
    a = build_model(tiny_config("baseline")).eval()  # 16 kHz, 1 s windows
    b = build_model(ModelConfig(arch="baseline", class_names=CLASSES, frontend=LOW_RATE, backbone=TINY_BACKBONE, clip_seconds=0.5)).eval()
    return {"a16k": a, "b8k": b}


def test_table_covers_every_pair_and_uses_the_same_resampled_reference(two_rates, tiny_dataset):
    ds = Dataset(tiny_dataset)
    s = TransferSettings(max_segments=2, segment_seconds=2.0, eps=0.05, steps=2)
    table = transfer_table(two_rates, ds, s)
    assert len(table) == 2 * 2 * 2
    assert set(zip(table["source"], table["target"])) == {(x, y) for x in two_rates for y in two_rates}
    assert (table["white_box"] == (table["source"] == table["target"])).all()
    assert table.loc[table["source"] == "a16k", "snr_db_attack"].between(0, 60).all()  # (the 5 kHz tone is gone at 8 kHz)
    # the target's clean reference is its prediction on the clean segment resampled from the source rate
    seg = dataset_segments(ds, s, CLASSES)[0]
    out = transfer_segment(two_rates, "a16k", ds, seg, s, index=0)
    assert out["sample_rate"] == 16_000 and out["clean"].shape == (32_000,)
    ref = analyze_waveform(two_rates["b8k"], np.clip(resample(out["clean"], 16_000, 8_000), -1, 1)).recording_scores
    row = next(r for r in out["rows"] if r["target"] == "b8k")
    assert row["clean_top1"] == CLASSES[int(ref.argmax())]
    assert np.abs(out["noise"] - out["clean"]).max() <= 0.05 + 1e-6
    assert np.abs(out["attack"] - out["clean"]).max() <= 0.05 + 1e-6
    # reproducible
    again = transfer_table(two_rates, ds, s)
    assert again.equals(table)
    summary = transfer_summary(table)
    assert len(summary) == 4 and summary["segments"].eq(2).all()


def test_white_box_attack_beats_noise_at_a_large_budget(two_rates, tiny_dataset):
    table = transfer_table(two_rates, Dataset(tiny_dataset), TransferSettings(max_segments=3, segment_seconds=2.0, eps=0.2, steps=10,
                                                                              objective="output-margin"))
    wb = table[table["white_box"]]
    assert wb["attack_flipped"].mean() > wb["noise_flipped"].mean()


def test_bad_settings_and_models(two_rates, tiny_dataset):
    with pytest.raises(ParameterError, match="eps"):
        TransferSettings(eps=0)
    with pytest.raises(ParameterError, match="objective"):
        TransferSettings(objective="nope")
    other = build_model(ModelConfig(arch="baseline", class_names=("x", "y", "z"), frontend=LOW_RATE, backbone=TINY_BACKBONE, clip_seconds=0.5))
    with pytest.raises(ParameterError, match="other classes"):
        transfer_table({"a": two_rates["a16k"], "o": other}, Dataset(tiny_dataset))
