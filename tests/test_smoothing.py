"""Randomized smoothing (Cohen, Rosenfeld & Kolter 2019): CERTIFY and PREDICT on models whose answer is known in closed
form, the bound, the SNR, the time budget, bad settings; core.certify on the default model; the certify subcommand."""

import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from scipy.stats import beta, binom, norm
from torch import nn

from core.attacks.smoothing import (
    DEFAULT_ALPHA,
    DEFAULT_SIGMA,
    certified_radius,
    certify_window,
    lower_confidence_bound,
    max_certifiable_radius,
    radius_snr_db,
    smoothed_predict,
)
from core.errors import ParameterError
from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone


def linear_case(seed: int = 0, samples: int = 64):
    """A 2-class nn.Linear on a ``samples``-long "waveform", a point, its class and its distance to the boundary."""
    torch.manual_seed(seed)
    lin = nn.Linear(samples, 2)
    x = torch.randn(samples) * 0.05
    w, b = (lin.weight[1] - lin.weight[0]).detach(), float((lin.bias[1] - lin.bias[0]).detach())
    margin = float(w @ x) + b
    return lin, x, int(margin > 0), abs(margin) / float(w.norm())


class SignOfNoise(nn.Module):
    """Class 1 when the first sample is positive, else 0: on a silent window the noise alone decides, a fair coin."""

    def forward(self, x):
        return torch.stack([-x[:, 0], x[:, 0]], -1)


class Slow(nn.Module):
    """Always class 0, sleeping ``delay`` seconds per batch: at most ``batch / delay`` copies per second."""

    def __init__(self, delay: float):
        super().__init__()
        self.delay = delay
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x):
        time.sleep(self.delay)
        return torch.stack([x.sum(-1) * 0 + self.scale, x.sum(-1) * 0], -1)


@pytest.mark.parametrize("seed", range(4))
def test_linear_classifier_radius_approaches_its_distance_to_the_boundary_from_below(seed):
    """g(x) = c with probability Phi(|w.x + b| / (sigma ||w||)), so the exact radius is the distance |w.x + b| / ||w||."""
    lin, x, cls, dist = linear_case(seed)
    sigma = dist / norm.ppf(0.9)  # chosen so that p_A = 0.9 exactly
    c = certify_window(lin, x, sigma=sigma, n=100_000, n0=100, batch_size=20_000, seed=seed)
    p_exact = norm.cdf(dist / sigma)
    assert c.label == cls and c.n == 100_000 and c.counts.sum() == 100_000
    assert c.counts[cls] / c.n == pytest.approx(p_exact, abs=0.006)  # the draws are N(0, sigma^2 I)
    assert certified_radius(p_exact, sigma) == pytest.approx(dist, rel=1e-9)
    assert c.p_lower < p_exact and c.radius < dist  # a lower bound (fails with probability <= alpha)
    assert c.radius > 0.95 * dist  # and a tight one at n = 100,000
    assert c.max_radius == pytest.approx(sigma * norm.ppf(DEFAULT_ALPHA ** (1 / 100_000)))


def test_a_tie_abstains_in_certify_and_predict():
    silent = torch.zeros(64)
    c = certify_window(SignOfNoise(), silent, sigma=0.1, n=2000, n0=100, seed=1)
    assert c.abstained and c.radius is None and c.snr_db is None
    assert c.p_lower < 0.5 and 0.45 < c.counts[c.label] / c.n < 0.55
    p = smoothed_predict(SignOfNoise(), silent, sigma=0.1, n=2000, seed=1)
    assert p.label is None and p.p_value > DEFAULT_ALPHA and p.counts.sum() == 2000
    # away from the boundary both answer
    far = torch.zeros(64)
    far[0] = 0.3  # 3 sigma: P(class 1) = Phi(3) = 0.9987
    p = smoothed_predict(SignOfNoise(), far, sigma=0.1, n=2000, seed=1)
    assert p.label == 1 and p.p_value <= DEFAULT_ALPHA
    c = certify_window(SignOfNoise(), far, sigma=0.1, n=2000, seed=1)
    assert c.label == 1 and not c.abstained and c.radius < 0.3  # the distance to the boundary x[0] = 0


def test_clopper_pearson_bound_by_hand():
    k, n, alpha = 930, 1000, 0.001
    bound = lower_confidence_bound(k, n, alpha)
    assert bound == pytest.approx(beta.ppf(alpha, k, n - k + 1), rel=1e-12)
    # the one-sided bound p solves P(Binomial(n, p) >= k) = alpha: a larger p makes k successes less surprising
    assert binom.sf(k - 1, n, bound) == pytest.approx(alpha, rel=1e-4)
    assert 0.90 < bound < k / n
    assert lower_confidence_bound(0, n, alpha) == 0.0
    assert lower_confidence_bound(n, n, alpha) == pytest.approx(alpha ** (1 / n))
    assert max_certifiable_radius(1.0, 1000, 0.001) == pytest.approx(norm.ppf(0.001 ** (1 / 1000)))
    assert 2.4 < max_certifiable_radius(1.0, 1000, 0.001) < 2.5  # "about 2.5 sigma at N = 1,000"
    assert max_certifiable_radius(1.0, 9, 0.001) == 0.0  # 0.001^(1/9) < 1/2: nothing certifiable


def test_snr_of_the_radius_is_the_window_over_a_perturbation_of_that_norm():
    from core.metrics import snr_db

    assert radius_snr_db(1.0, 0.01) == pytest.approx(40.0)
    assert radius_snr_db(0.0, 0.01) == -math.inf
    lin, x, _, dist = linear_case(0)
    c = certify_window(lin, x, sigma=dist / 3, n=500, n0=50, seed=0)
    assert c.signal_norm == pytest.approx(float(x.norm()), rel=1e-6)
    delta = torch.randn(64)
    delta *= c.radius / delta.norm()
    assert c.snr_db == pytest.approx(float(snr_db(x, x + delta)), abs=1e-3)  # the project's SNR of such a perturbation


def test_time_budget_chooses_n_from_the_measured_rate_and_reports_it():
    model = Slow(delay=0.01)  # batches of 10: at most 1,000 copies per second
    seen = []
    c = certify_window(model, torch.zeros(32), sigma=0.01, seconds=0.4, n0=20, min_n=50, batch_size=10,
                       progress=lambda done, total: seen.append((done, total)))
    assert 50 <= c.n <= 400  # at least the minimum, at most what the rate allows in the budget
    assert c.counts.sum() == c.n and c.counts_selection.sum() == 20
    assert seen[-1] == (20 + c.n, 20 + c.n)  # the total shown is the n chosen
    c = certify_window(model, torch.zeros(32), sigma=0.01, seconds=0.05, n0=20, min_n=120, batch_size=10)
    assert c.n == 120  # the budget is spent on the selection copies: the minimum


@pytest.mark.parametrize("settings,needle", [
    ({"sigma": 0.0}, "sigma must lie in (0, 1)"),
    ({"sigma": -1e-3}, "sigma must lie in (0, 1)"),
    ({"sigma": float("nan")}, "sigma must be a number"),
    ({"alpha": 1.0}, "alpha must lie in (0, 1)"),
    ({"alpha": 0}, "alpha must lie in (0, 1)"),
    ({"n": 50}, "n must be at least n0 = 100"),
    ({"n": 200, "seconds": 5.0}, "not both"),
    ({"seconds": 0.0}, "seconds must lie in (0, inf)"),
    ({"n0": 0, "n": 10}, "n0 must be an integer >= 1"),
    ({"n": 200, "batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"n": 200.5}, "n must be an integer"),
])
def test_bad_settings_raise_parameter_error(settings, needle):
    with pytest.raises(ParameterError) as err:
        certify_window(SignOfNoise(), torch.zeros(8), **settings)
    assert needle in str(err.value)


@pytest.mark.parametrize("window", [torch.zeros(2, 8), torch.full((8,), float("nan")), torch.zeros(0), "not audio"])
def test_a_window_that_is_not_one_finite_row_raises_parameter_error(window):
    for run in (certify_window, smoothed_predict):
        with pytest.raises(ParameterError, match="window must be a"):
            run(SignOfNoise(), window, n=100)


def test_api_certifies_the_windows_predict_scores_within_a_span(tiny_proto):
    import core

    sr = tiny_proto.config.frontend.sample_rate  # 1 s windows
    x = torch.as_tensor(tone(1000, 3.6, sr, amp=0.1))
    certs = core.certify(tiny_proto, x, n0=5, n=5, start_s=1.2, end_s=2.5, seed=3)
    assert [(c.start_s, c.end_s) for c in certs] == [(1.0, 2.0), (2.0, 3.0)]
    again = core.certify(tiny_proto, x, n0=5, n=5, start_s=1.2, end_s=2.5, seed=3)
    assert all((a.counts == b.counts).all() for a, b in zip(certs, again))  # the seed fixes the noise
    assert len(core.certify(tiny_proto, x, n0=5, n=5)) == 4  # the last 0.6 s is over half a window: kept, padded
    with pytest.raises(ParameterError, match="no window overlaps"):
        core.certify(tiny_proto, x, n0=5, n=5, start_s=10.0)
    with pytest.raises(ParameterError, match="certify needs at least 0.5 s"):
        core.certify(tiny_proto, x[:100], n0=5, n=5)


def test_api_certify_on_the_default_model_and_a_real_test_window(data_dir):
    import core
    from core.io.data import open_dataset

    model = core.load_model()
    ds = open_dataset(data_dir)
    rec = ds.split("test")[0]
    sr = model.config.frontend.sample_rate
    waveform = torch.as_tensor(ds.load(rec, sr)[: model.config.window_samples])
    (c,) = core.certify(model, waveform, n0=10, n=20, seed=0)
    assert (c.n0, c.n, c.sigma, c.alpha) == (10, 20, DEFAULT_SIGMA, DEFAULT_ALPHA)
    assert c.counts_selection.sum() == 10 and c.counts.sum() == 20
    assert c.label == int(np.argmax(c.counts_selection)) and c.class_name == model.config.class_names[c.label]
    assert c.label == int(np.argmax(c.counts))  # sigma 3e-4 leaves a real window's answer intact
    assert c.p_lower == pytest.approx(lower_confidence_bound(int(c.counts[c.label]), 20, DEFAULT_ALPHA))
    assert (c.radius is None) == (c.p_lower <= 0.5)
    if c.radius is not None:
        assert c.radius <= c.max_radius and c.snr_db == pytest.approx(20 * math.log10(float(waveform.norm()) / c.radius), rel=1e-5)
    assert (c.start_s, c.end_s) == (0.0, pytest.approx(3.0)) and c.seconds > 0


def test_cli_defaults_are_the_modules():
    import argparse

    from core.attacks import smoothing
    from core.cli import build_parser

    p = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["certify"]
    assert (p.get_default("sigma"), p.get_default("alpha"), p.get_default("n0")) == (smoothing.DEFAULT_SIGMA, smoothing.DEFAULT_ALPHA,
                                                                                       smoothing.N0)
    text = " ".join(p.format_help().split())
    assert f"(default {smoothing.DEFAULT_SECONDS:g})" in text and f"at least {smoothing.MIN_N:,}" in text


@pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
def test_cli_certify_prints_each_window_and_refuses_bad_input_in_one_line(tmp_path, capsys):
    from core.cli import main

    path = tmp_path / "clip.wav"
    sf.write(path, tone(3000, 6.0, 32_000, amp=0.2), 32_000)
    r = subprocess.run([sys.executable, "-m", "core", "certify", str(path), "--model", "protopnet", "--n0", "10", "--n", "20", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    (w,) = out["windows"]  # 6 s at 5 s windows: the 1 s tail is under half a window
    assert (w["start_s"], w["end_s"], w["n"], w["n0"]) == (0.0, 5.0, 20, 10)
    assert sum(w["counts"].values()) == 20 and w["species_code"] == max(w["counts"], key=w["counts"].get)
    assert w["common_name"] and (w["radius"] is None) == w["abstain"] == (w["p_lower"] <= 0.5)
    for args, needle in ((["certify", str(tmp_path / "missing.wav"), "--model", "protopnet"], "no such file"),
                         (["certify", str(path), "--sigma", "0"], "sigma must lie in (0, 1)"),
                         (["certify", str(path), "--n", "50"], "n must be at least n0 = 100"),
                         (["certify", str(path), "--alpha", "1.5"], "alpha must lie in (0, 1)")):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1
