"""Natural perturbations for the distribution-shift evaluation."""

import numpy as np
import pytest

from core.errors import ParameterError
from core.io.audio import pink_noise
from core.io.clips import ClipSet
from core.studies.shift import add_noise, apply_gain, mix, noise_bank, shift_clips
from tests.conftest import tone


def _snr(clean, noisy):
    d = noisy.astype(np.float64) - clean
    return 10 * np.log10((clean.astype(np.float64) ** 2).sum() / (d**2).sum())


def test_noise_at_the_requested_snr_and_pink_fallback():
    rng = np.random.default_rng(0)
    clean = tone(1000, 1.0, 16_000, amp=0.1)
    site = (rng.standard_normal(5000) * 0.01).astype(np.float32)
    for snr in (20.0, 5.0, 0.0):
        assert _snr(clean, add_noise(clean, site, snr)) == pytest.approx(snr, abs=0.05)
    pink = add_noise(clean, None, 10.0, rng=rng)
    assert _snr(clean, pink) == pytest.approx(10.0, abs=0.05)
    p = pink_noise(2**15, rng)
    spec = np.abs(np.fft.rfft(p)) ** 2
    low, high = spec[10:100].mean(), spec[10_000:11_000].mean()
    assert low > 20 * high  # 1/f: much more power at low frequencies
    with pytest.raises(ParameterError, match="snr_db"):
        add_noise(clean, site, float("nan"))


def test_noise_bank_takes_the_quietest_window():
    loud = np.ones(300, np.float32) * 0.5
    quiet = np.full(100, 0.01, np.float32)
    w = np.concatenate([loud, quiet, np.zeros(100, np.float32)])  # 5 windows of 100; the silent one is skipped
    bank = noise_bank([w, np.zeros(50, np.float32)], 100, recording_ids=["r1", "r2"])
    assert [rid for rid, _ in bank] == ["r1"]  # r2 is shorter than one window
    np.testing.assert_array_equal(bank[0][1], quiet)


def test_gain_mix_and_shift_clips():
    x = tone(500, 1.0, 16_000, amp=0.5)
    assert np.abs(apply_gain(x, -20.0)).max() == pytest.approx(0.05, rel=1e-3)
    assert np.abs(apply_gain(x, 20.0)).max() == 1.0  # clipped to full scale
    np.testing.assert_allclose(mix(x, -x, 0.5), 0.0, atol=1e-7)
    waves = np.stack([tone(f, 1.0, 16_000, amp=0.3) for f in (500, 2000, 4000)])
    masks = np.ones_like(waves)
    masks[2, 8000:] = 0
    waves[2, 8000:] = 0
    clips = ClipSet(waveforms=waves, clip_ids=["a@0s", "b@0s", "c@0s"], labels=np.eye(3, dtype=np.float32),
                    masks=masks, species=["aaa", "bbb", "ccc"])
    bank = [("a", np.full(16_000, 0.01, np.float32)), ("z", np.random.default_rng(1).standard_normal(16_000).astype(np.float32))]
    noisy = shift_clips(clips, "noise", snr_db=10.0, bank=bank, seed=0)
    assert noisy.clip_ids == clips.clip_ids
    assert _snr(waves[0], noisy.waveforms[0]) == pytest.approx(10.0, abs=0.1)
    d = noisy.waveforms[0] - waves[0]
    assert d.std() > abs(d.mean())  # not its own recording's (constant) noise: the random one of "z"
    assert (noisy.waveforms[2, 8000:] == 0).all()  # padding stays silent
    mixed = shift_clips(clips, "mixup", lam=0.6, seed=0)
    assert (mixed.labels.sum(1) == 2).all()  # the union of two species
    assert clips.labels.sum() == 3  # the input is untouched
    with pytest.raises(ParameterError, match="kind"):
        shift_clips(clips, "reverb")


@pytest.mark.slow
def test_shift_evaluation_rows(tiny_proto, tiny_model):
    from core.studies.shift import shift_evaluation

    rng = np.random.default_rng(0)
    waves = np.stack([tone(f, 1.0, 16_000, amp=0.3) + rng.standard_normal(16_000).astype(np.float32) * 0.01
                      for f in (500, 2000, 5000, 500, 2000, 5000)])
    clips = ClipSet(waveforms=waves, clip_ids=[f"r{i}@0s" for i in range(6)], labels=np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]],
                    masks=np.ones_like(waves), species=["aaa", "bbb", "ccc"] * 2)
    df = shift_evaluation({"p": tiny_proto, "m": tiny_model}, clips, snr_db=0.0, gain_db=-30.0)
    assert list(df["condition"].unique()) == ["clean", "noise", "gain", "mixup"] and len(df) == 8
    assert (df[df["condition"] == "clean"]["cmap_change"] == 0).all()
    assert df["cmap"].between(0, 1).all() and (df["n"] == 6).all()
    assert "pink" in df[df["condition"] == "noise"]["setting"].iloc[0]
    with pytest.raises(ParameterError, match="labelled"):
        shift_evaluation({"p": tiny_proto}, ClipSet(waves, clips.clip_ids, None, clips.masks, clips.species))
