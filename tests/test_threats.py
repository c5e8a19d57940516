"""Realistic threats (core.attacks.threats): the real MP3 codec, simulated playback, EOT and the survival study."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.attacks.threat_studies import survival_study, survival_summary
from core.attacks.threats import EOT, MP3, AmbientNoise, Mixture, Playback, Transform, mp3_roundtrip
from core.errors import ParameterError
from tests.conftest import tone


def _band_db(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    f = np.fft.rfftfreq(len(x), 1 / sr)
    return 10 * np.log10(spec[(f >= lo) & (f < hi)].sum() + 1e-20)


@pytest.mark.parametrize("sr", [32_000, 48_000])
def test_mp3_round_trip_is_aligned_and_really_lossy(sr):
    low = tone(1000, 2.0, sr, amp=0.3)
    x = low + tone(21_000 if sr == 48_000 else 15_500, 2.0, sr, amp=0.05)
    y = mp3_roundtrip(x, sr, 128)
    assert y.shape == x.shape and y.dtype == np.float32
    core = slice(sr // 10, -sr // 10)
    assert np.corrcoef(low[core], y[core])[0, 1] > 0.99  # aligned: the codec's delay removed
    assert _band_db(y, sr, 900, 1100) == pytest.approx(_band_db(x, sr, 900, 1100), abs=0.5)
    top = (20_500, 21_500) if sr == 48_000 else (15_000, 16_000)
    assert _band_db(y, sr, *top) < _band_db(x, sr, *top) - 10  # the encoder's low-pass removes the top band
    err = {b: float(np.sqrt(np.mean((mp3_roundtrip(low, sr, b) - low)[core] ** 2))) for b in (32, 192)}
    assert err[32] > 2 * err[192]  # the bit rate is honoured
    batch = mp3_roundtrip(np.stack([x, -x]), sr, 128)
    assert batch.shape == (2, len(x)) and np.allclose(batch[0], y, atol=1e-4)


def test_mp3_refuses_what_lame_cannot_encode():
    with pytest.raises(ParameterError, match="sample rate"):
        mp3_roundtrip(np.zeros(1000, np.float32), 96_000)
    with pytest.raises(ParameterError, match="bit rate"):
        mp3_roundtrip(np.zeros(1000, np.float32), 48_000, 1000)
    with pytest.raises(ParameterError, match="NaN"):
        mp3_roundtrip(np.full(1000, np.nan, np.float32), 48_000)


def test_mp3_transform_passes_gradients_straight_through():
    x = torch.as_tensor(tone(1000, 1.0, 32_000)[None]).requires_grad_(True)
    y = MP3(128)(x, 32_000)
    assert not torch.allclose(y, x, atol=1e-3)  # the forward pass is the codec
    w = torch.randn_like(x)
    (y * w).sum().backward()
    assert torch.equal(x.grad, w)  # backward: identity (BPDA)


@pytest.mark.parametrize("distance", [1.0, 10.0])
def test_playback_keeps_timing_and_level_adds_noise_by_distance_and_band_limits(distance):
    sr = 48_000
    click = torch.zeros(1, sr)
    click[0, 2000] = 1.0
    quiet = Playback(distance, snr_at_1m_db=300.0)  # no ambient noise
    assert int(quiet(click, sr).abs().argmax()) == 2000  # direct path aligned with the input
    x = torch.as_tensor((tone(2000, 1.0, sr, 0.2) + tone(40, 1.0, sr, 0.2))[None])
    clean_path = quiet(x, sr)
    noisy = Playback(distance)(x, sr)
    assert float(noisy.pow(2).mean().sqrt()) == pytest.approx(float(x.pow(2).mean().sqrt()), rel=1e-4)  # the recorder's gain
    resid = noisy - clean_path * (noisy.pow(2).mean() / clean_path.pow(2).mean()).sqrt()
    snr = 10 * np.log10(float(noisy.pow(2).mean() / resid.pow(2).mean()))
    assert snr == pytest.approx(40 - 20 * np.log10(distance), abs=1.5)  # a point source fades by 20 log10(d)
    y = clean_path[0].numpy()
    gain_40 = _band_db(y, sr, 35, 45) - _band_db(x[0].numpy(), sr, 35, 45)
    gain_2k = _band_db(y, sr, 1900, 2100) - _band_db(x[0].numpy(), sr, 1900, 2100)
    assert gain_2k - gain_40 > 20  # the loudspeaker does not play 40 Hz
    with pytest.raises(ParameterError, match="distance_m"):
        Playback(50.0)
    with pytest.raises(ParameterError, match="distance_m"):
        Playback(8.0, environment="room")
    with pytest.raises(ParameterError, match="environment"):
        Playback(1.0, environment="cave")


def test_random_draws_differ_and_are_differentiable_the_evaluation_draw_is_fixed():
    sr = 32_000
    x = torch.as_tensor(tone(3000, 1.0, sr)[None]).requires_grad_(True)
    for t in (Playback(3.0), Playback(2.0, environment="room"), AmbientNoise(20.0)):
        assert torch.equal(t(x, sr), t(x, sr))  # evaluation draw: the same for the clean and the adversarial clip
        rng = np.random.default_rng(0)
        a, b = t(x, sr, rng), t(x, sr, rng)
        assert not torch.allclose(a, b)
        (g,) = torch.autograd.grad(a.sum(), x)
        assert torch.isfinite(g).all() and g.abs().sum() > 0


class _Gain(Transform):
    """Multiplies by a gain drawn from the rng (1 for the evaluation draw): EOT's average is checkable."""

    name = "gain"

    def __init__(self):
        self.drawn = []

    def __call__(self, x, sample_rate, rng=None):
        g = 1.0 if rng is None else float(rng.uniform(0.5, 1.5))
        self.drawn.append(g)
        return x * g


def test_eot_loss_is_the_mean_over_draws_and_keeps_the_objective(tiny_proto):
    from core.attacks.objectives import OutputMargin

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000), tone(2000, 1.0, 16_000)]))
    gain = _Gain()
    eot = EOT(OutputMargin(), gain, samples=3, seed=1)
    state = eot.attack_state(tiny_proto, x)
    got = eot.loss(tiny_proto, x, state)
    want = sum(OutputMargin().loss(tiny_proto, x * g, state) for g in gain.drawn[-3:]) / 3
    assert len(gain.drawn) == 3 and torch.allclose(got, want, atol=1e-6)
    assert eot.success_definition == OutputMargin.success_definition and eot.describe()["samples"] == 3
    with pytest.raises(ParameterError, match="samples"):
        EOT(OutputMargin(), gain, samples=0)
    m = Mixture((AmbientNoise(10.0), MP3(64)))
    assert m.differentiable is False and len(m.describe()["transforms"]) == 2


@pytest.mark.slow
def test_survival_study_on_a_tiny_model(tiny_proto, tiny_dataset):
    from core.io.data import Dataset

    ds = Dataset(tiny_dataset)
    transforms = {"mp3-64": MP3(64), "noise-10": AmbientNoise(10.0)}
    t = survival_study({"tiny": tiny_proto}, ds, max_clips=3, snr_db=(10.0,), steps=2, eot_samples=2, transforms=transforms,
                       clips_per_batch=2)
    assert set(t["attack"]) == {"pgd", "eot-pgd"} and set(t["transform"]) == {"none", "mp3-64", "noise-10"}
    assert len(t) == 3 * 2 * 3
    assert (t["snr_measured_db"] >= 10.0 - 0.05).all()  # the budget is met
    none = t[t["transform"] == "none"]
    assert (none["t_adv_top1"] == none["adv_top1"]).all() and not none["control_changed"].any()
    assert (t["control_changed"] == (t["t_clean_top1"] != t["clean_top1"])).all()
    assert (t["fooled_after"] == (t["t_adv_top1"] != t["clean_top1"])).all()
    s = survival_summary(t)
    assert len(s) == 2 * 3 and (s["windows"] == 3).all()


def test_survival_summary_counts_survival_among_windows_the_transformation_leaves_alone():
    t = pd.DataFrame({"model": "m", "clip": list("abcd"), "snr_db": 30.0, "attack": "pgd", "transform": "mp3",
                      "snr_measured_db": 30.0, "fooled_digital": [True, True, True, False],
                      "control_changed": [False, False, True, False], "fooled_after": [True, False, True, False], "seconds": 1.0})
    s = survival_summary(t).iloc[0]
    assert s["windows"] == 4 and s["stable"] == 3 and s["control_changed"] == 0.25
    assert s["survives"] == pytest.approx(1 / 3) and s["fooled_after"] == 0.5 and s["fooled_digital"] == 0.75


@pytest.mark.slow
def test_sweep_scores_every_attack_again_after_each_transformation(tiny_proto):
    from core.attacks import PGD
    from core.attacks.sweep import run_sweep
    from core.studies.sweep import summarize, sweep_table

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000), tone(2000, 1.0, 16_000), tone(4000, 1.0, 16_000)]))
    transforms = {"inaudible": AmbientNoise(200.0), "drowned": AmbientNoise(-30.0)}
    atk = PGD(eps=0.0, steps=3)
    res = run_sweep(atk, tiny_proto, x, epsilons=[0.0, 0.01, 0.1], transforms=transforms)
    assert set(res.after) == set(transforms) and res.after["inaudible"].shape == (3, 3)
    assert np.array_equal(res.after["inaudible"], res.success)  # a transformation that changes nothing: the same outcome
    assert not res.clean_after["inaudible"].any()
    with torch.no_grad():  # the control: noise 30 dB above the clip decides by itself
        drowned = tiny_proto(transforms["drowned"](x, 16_000).clamp(-1, 1)).argmax(-1) != tiny_proto(x).argmax(-1)
    assert np.array_equal(res.clean_after["drowned"], drowned.numpy())
    table = sweep_table(res, model="tiny", attack=atk, clip_ids=["a", "b", "c"], class_names=["aaa", "bbb", "ccc"])
    assert {"after:inaudible", "after:drowned"} <= set(table.columns)
    clean_rows = table[table["budget_kind"] == "clean"]
    assert list(clean_rows["after:drowned"]) == list(res.clean_after["drowned"])
    s = summarize(table)
    assert np.allclose(s["success_rate_after:inaudible"], s["success_rate"])
