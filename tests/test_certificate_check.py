"""The certificate check (core.studies.certificate_check): attacks on the smoothed classifier find no flip below a
correct certificate, find one above it, and do find flips below a certificate that overstates the radius."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm
from torch import nn

from core.errors import ParameterError
from core.models.base import ModelOutput
from core.studies.certificate_check import check_certificates, check_markdown, check_summary


class LinearBird(nn.Module):
    """Three classes on a 64-sample "waveform": logits (0, w.x + b, -50). Class 2 never wins, so the smoothed classifier
    equals the base one (P(class 1) = Phi((w.x + b) / (sigma ||w||))) and its exact robust radius at x is the distance
    |w.x + b| / ||w|| to the boundary."""

    def __init__(self, seed: int = 0, samples: int = 64):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(samples, generator=g))
        self.b = nn.Parameter(torch.tensor(0.0))
        self.config = SimpleNamespace(frontend=SimpleNamespace(sample_rate=1000), class_names=("a", "b", "c"))

    def forward(self, x):
        z = x @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z, torch.full_like(z, -50.0)], -1)

    def forward_all(self, x):
        return ModelOutput(logits=self(x), embedding=x, feature_map=x[:, None, None, :])

    def distance(self, x: np.ndarray) -> float:
        with torch.no_grad():
            return float(abs(torch.as_tensor(x) @ self.w + self.b) / self.w.norm())


def _case(seed=0):
    model = LinearBird(seed)
    rng = np.random.default_rng(seed)
    x = (0.1 * rng.standard_normal(64)).astype(np.float32)
    d = model.distance(x)
    sigma = d / norm.ppf(0.99)  # p_A = 0.99: certified radius about 2 sigma, the exact one 2.33 sigma
    return model, x, d, sigma


SETTINGS = dict(n=2000, n0=100, steps=10, steps_above=10, samples=4, n_predict=1000, n_predict_above=500)


@pytest.mark.parametrize("seed", range(3))
def test_no_flip_below_a_correct_certificate_and_a_flip_above_the_exact_radius(seed):
    model, x, d, sigma = _case(seed)
    t = check_certificates(model, x[None], sigma=sigma, seed=seed, **SETTINGS)
    r = t.iloc[0]
    assert r.status == "checked" and 0 < r.radius < d  # a lower bound of the exact radius
    assert not r.flip_below and not r.abstain_below  # every leg ran, none flipped g below 0.95 R
    assert d <= r.attacked_radius <= 4 * r.radius * (1 + 1e-6)  # the first budget above the exact radius flips
    assert r.gap == pytest.approx(r.attacked_radius / r.radius) and r.gap > 1
    assert np.isfinite(r.attacked_snr_db) and r.attacked_snr_db < r.snr_db  # louder than what was certified


def test_a_certificate_that_overstates_the_radius_is_caught(monkeypatch):
    import core.attacks.smoothing as smoothing

    model, x, d, sigma = _case(1)
    real = smoothing.certify_window

    def inflated(*args, **kwargs):  # a bug: the radius reported 5x too large
        c = real(*args, **kwargs)
        return dataclasses.replace(c, radius=5 * c.radius)

    monkeypatch.setattr(smoothing, "certify_window", inflated)
    r = check_certificates(model, x[None], sigma=sigma, **SETTINGS).iloc[0]
    assert r.flip_below and r.flip_leg == "pgd"  # 0.95 x 5 R is beyond the exact radius: the first leg flips g


def test_abstaining_windows_and_base_disagreement_are_left_out_and_counted():
    model, x, d, sigma = _case(2)
    on_boundary = x - (float(torch.as_tensor(x) @ model.w.detach() + model.b.detach()) / float(model.w.detach().norm() ** 2)) * \
        model.w.detach().numpy()  # distance 0: a fair coin under the noise
    t = check_certificates(model, np.stack([x, on_boundary.astype(np.float32)]), sigma=sigma, names=["far", "tie"], **SETTINGS)
    assert t.status.tolist() == ["checked", "abstain"] and t.window.tolist() == ["far", "tie"]
    s = check_summary(t)
    assert (s["windows"], s["checked"], s["abstain"], s["flips_below"]) == (2, 1, 1, 0)
    assert "| 2 | 1 | 0 (0.00) |" in check_markdown(t)


@pytest.mark.parametrize("kwargs,needle", [({"legs": ("fgsm",)}, "legs"), ({"below": 1.0}, "below"), ({"factor": 1.0}, "factor"),
                                           ({"steps": 0}, "steps"), ({"names": ["one", "two"]}, "names")])
def test_bad_settings_raise_parameter_error(kwargs, needle):
    model, x, d, sigma = _case(0)
    with pytest.raises(ParameterError, match=needle):
        check_certificates(model, x[None], sigma=sigma, **kwargs)


def test_bad_windows_raise_parameter_error():
    model, x, d, sigma = _case(0)
    with pytest.raises(ParameterError, match="windows"):
        check_certificates(model, x, sigma=sigma)  # one row, not (n_windows, n_samples)
    with pytest.raises(ParameterError, match="windows"):
        check_certificates(model, np.full((1, 64), np.nan, np.float32), sigma=sigma)


def test_a_run_resumed_window_by_window_gives_the_rows_of_one_run():
    model, x, d, sigma = _case(0)
    rng = np.random.default_rng(5)
    windows = np.stack([x, (x + 0.02 * rng.standard_normal(64)).astype(np.float32)])
    settings = {**SETTINGS, "n": 500, "n_predict": 300, "n_predict_above": 200}
    whole = check_certificates(model, windows, sigma=sigma, names=["a", "b"], **settings)
    second = check_certificates(model, windows[1:], sigma=sigma, names=["b"], first_index=1, **settings)
    alone = check_certificates(model, windows[1:], sigma=sigma, names=["b"], **settings)
    cols = ["label", "p_lower", "radius", "attacked_radius"]
    assert second[cols].to_numpy() == pytest.approx(whole[cols].iloc[1:].to_numpy())  # the noise and attacks of window 1
    assert alone["p_lower"].iloc[0] != whole["p_lower"].iloc[1] or \
        alone["attacked_radius"].iloc[0] != whole["attacked_radius"].iloc[1]  # window 0's seeds differ
    with pytest.raises(ParameterError, match="first_index"):
        check_certificates(model, windows, sigma=sigma, first_index=-1)
