import librosa
import numpy as np
import pytest
import torch

from core.errors import ParameterError
from core.frontend import FrontendConfig, LogMel


@pytest.mark.parametrize("cfg", [FrontendConfig(), FrontendConfig(sample_rate=16_000, n_fft=512, hop_length=160, n_mels=64, f_max=8000.0)])
def test_matches_librosa(cfg):
    rng = np.random.default_rng(0)
    y = (rng.standard_normal(cfg.sample_rate) * 0.1).astype(np.float32)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                       n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max, power=2.0, center=True,
                                       pad_mode="constant"),
        ref=1.0, amin=cfg.amin, top_db=None)
    out = LogMel(cfg).db(torch.from_numpy(y)[None])[0].numpy()
    assert out.shape == ref.shape == (cfg.n_mels, cfg.n_frames(len(y)))
    np.testing.assert_allclose(out, ref, atol=1e-3)


def test_silence_is_finite_and_normalised():
    fixed = FrontendConfig(normalization="fixed")
    out = LogMel(fixed)(torch.zeros(2, 16_000))
    expected = (10 * np.log10(fixed.amin) - fixed.mean_db) / fixed.std_db
    assert torch.allclose(out, torch.full_like(out, expected))
    out = LogMel(FrontendConfig())(torch.zeros(2, 16_000))
    assert torch.isfinite(out).all() and (out == 0).all()


def test_band_median_is_gain_invariant():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.standard_normal((1, 32_000)).astype(np.float32) * 0.05)
    mel = LogMel(FrontendConfig())
    # a 20 dB gain shifts every band by 20 dB, which the per-band median removes
    assert torch.allclose(mel(x), mel(x * 10), atol=1e-3)
    db = mel.db(x)[0]
    assert torch.allclose(mel(x)[0, 0], (db - db.median(-1, keepdim=True).values) / 20.0, atol=1e-5)


def test_gradient_reaches_waveform():
    x = (torch.randn(1, 16_000) * 0.1).requires_grad_(True)
    LogMel(FrontendConfig())(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_bad_config():
    with pytest.raises(ParameterError):
        FrontendConfig(f_max=20_000.0)
    with pytest.raises(ParameterError):
        LogMel(FrontendConfig())(torch.zeros(16_000))
