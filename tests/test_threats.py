"""Realistic threats (core.attacks.threats): the real MP3 codec, simulated playback, EOT and the survival study."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.attacks.threat_studies import survival_study, survival_summary
from core.attacks.threats import EOT, MP3, AmbientNoise, Loudspeaker, Mixture, Playback, Transform, mp3_roundtrip, transform_waveform
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

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
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
    g = torch.tensor(gain.drawn).reshape(3, 2)  # per sample, per clip: each clip draws its own gain
    want = sum(OutputMargin().loss(tiny_proto, x * g[k][:, None], state) for k in range(3)) / 3
    assert len(gain.drawn) == 6 and torch.allclose(got, want, atol=1e-6)
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


# -- the perturbation from its own loudspeaker, and EOT's draws ------------------------------------------


@pytest.mark.parametrize("distance", [1.0, 10.0])
def test_loudspeaker_plays_the_perturbation_from_its_own_position_late_and_attenuated(distance):
    sr = 48_000
    clean = torch.as_tensor(tone(2000, 1.0, sr, 0.3)[None])
    x = clean.clone()
    x[0, 5000] += 0.5  # a click of perturbation
    speaker = Loudspeaker(distance)
    delay = round((distance / 343.0 + 0.010) * sr)  # propagation plus the evaluation lag (10 ms, the middle of 0-20 ms)
    assert speaker.delay_samples(sr) == delay
    y = speaker(x, sr, clean=clean)
    arrived = (y - clean)[0]
    assert int(arrived.abs().argmax()) == 5000 + delay  # the click arrives late, at the recorder
    assert float(arrived[: 5000 + delay - 80].abs().max()) < 1e-3 * float(arrived.abs().max())  # and not before
    assert torch.equal(speaker(clean, sr, clean=clean), clean)  # the bird's own path is the recording: unchanged
    whole = Playback(distance, snr_at_1m_db=300.0)(clean, sr)
    assert not torch.allclose(whole, clean, atol=1e-3)  # replaying the whole clip would send the bird through the room too
    fixed_volume = Loudspeaker(distance, calibrated_at_m=1.0)(x, sr, clean=clean) - clean
    peak = float(fixed_volume.abs().max())
    assert peak == pytest.approx(float(arrived.abs().max()) / distance, rel=0.1)  # 1/r from the volume set at 1 m
    assert peak == pytest.approx(0.5 * 0.47 / distance, rel=0.15)  # the click's direct sound through the band-pass
    with pytest.raises(ParameterError, match="clean"):
        speaker(x, sr)
    with pytest.raises(ParameterError, match="clean"):
        transform_waveform(x[0].numpy(), sr, speaker)
    assert np.allclose(transform_waveform(x[0].numpy(), sr, speaker, clean=clean[0].numpy()), y[0].clamp(-1, 1).numpy())


def test_loudspeaker_draws_its_lag_within_0_to_20_ms_and_its_room_per_draw():
    sr = 48_000
    clean = torch.zeros(1, sr)
    x = clean.clone()
    x[0, 1000] = 0.5
    speaker = Loudspeaker(1.0)
    arrivals = []
    for k in range(12):
        y = speaker(x, sr, np.random.default_rng(k), clean=clean)
        arrivals.append(int(y.abs().argmax()) - 1000)
    # distance within 0.8-1.25 m: 112-175 samples of propagation, plus a lag of 0-960 samples
    assert min(arrivals) >= 112 - 2 and max(arrivals) <= 175 + 960 + 2
    assert len(set(arrivals)) >= 10 and max(arrivals) - min(arrivals) > 300  # the lag really varies


class _Tag(Transform):
    """Adds its tag times a draw from the rng to the clip (0 for the evaluation draw); records every draw."""

    def __init__(self, tag):
        self.tag, self.drawn = tag, []
        self.name = f"tag{tag}"

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        u = 0.0 if rng is None else float(rng.uniform())
        self.drawn.append((self.tag, u, x.shape[0]))
        return x + 1e-3 * self.tag * u


def test_eot_draws_each_clip_each_step_and_each_sample_its_own_transformation(tiny_proto):
    from core.attacks.objectives import OutputMargin

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000), tone(2000, 1.0, 16_000), tone(4000, 1.0, 16_000)]))
    a, b = _Tag(1), _Tag(2)
    eot = EOT(OutputMargin(), Mixture((a, b)), samples=4, seed=3)
    state = eot.attack_state(tiny_proto, x)
    batch_loss = eot.loss(tiny_proto, x, state)
    drawn = a.drawn + b.drawn
    assert len(drawn) == 3 * 4 and all(n == 1 for _, _, n in drawn)  # one call per clip and sample
    assert a.drawn and b.drawn  # the mixture picks per clip and sample, not once for the batch
    assert len({u for _, u, _ in drawn}) == len(drawn)  # every call its own parameters
    a.drawn.clear()
    b.drawn.clear()
    eot.loss(tiny_proto, x, state)  # the next step draws anew
    assert not {u for _, u, _ in drawn} & {u for _, u, _ in a.drawn + b.drawn}
    alone = eot.loss(tiny_proto, x[1:2], eot.attack_state(tiny_proto, x[1:2]))
    assert torch.allclose(alone, batch_loss[1:2], atol=1e-6)  # a clip's draws do not depend on its batch


def test_eot_gives_the_loudspeaker_the_clean_clip(tiny_proto):
    from core.attacks.objectives import OutputMargin

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000), tone(2000, 1.0, 16_000)]))
    eot = EOT(OutputMargin(), Mixture((Loudspeaker(1.0), Loudspeaker(10.0))), samples=2)
    state = eot.attack_state(tiny_proto, x)
    assert torch.allclose(eot.loss(tiny_proto, x, state), OutputMargin().loss(tiny_proto, x, state), atol=1e-6)  # no perturbation: the clip
    adv = x + 0.01 * torch.randn_like(x)
    assert not torch.allclose(eot.loss(tiny_proto, adv, state), OutputMargin().loss(tiny_proto, adv, state), atol=1e-6)


@pytest.mark.slow
def test_an_interrupted_survival_study_resumes_to_the_same_table(tiny_proto, tiny_dataset, tmp_path, monkeypatch):
    import core.attacks.pgd as pgd_module
    from core.io.data import Dataset

    ds = Dataset(tiny_dataset)
    transforms = {"mp3-64": MP3(64), "speaker-1m": Loudspeaker(1.0)}
    kw = dict(max_clips=3, snr_db=(10.0,), steps=2, eot_samples=2, transforms=transforms, clips_per_batch=2)
    whole = survival_study({"tiny": tiny_proto}, ds, out=tmp_path / "whole.csv", **kw)  # 2 attacks x 2 batches = 4 units
    calls = []
    original = pgd_module.PGD.__call__
    monkeypatch.setattr(pgd_module.PGD, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    part = survival_study({"tiny": tiny_proto}, ds, out=tmp_path / "t.csv", max_units=3, **kw)
    assert len(calls) == 3 and len(part) == (2 + 2 + 1) * 3  # 3 units of 2, 2 and 1 clips, 3 rows each (none + 2 threats)
    calls.clear()
    resumed = survival_study({"tiny": tiny_proto}, ds, out=tmp_path / "t.csv", **kw)
    assert len(calls) == 1  # only the missing unit
    cols = [c for c in whole.columns if c != "seconds"]
    pd.testing.assert_frame_equal(resumed[cols], whole[cols])
    with pytest.raises(ParameterError, match="other settings.*steps"):
        survival_study({"tiny": tiny_proto}, ds, out=tmp_path / "t.csv", **{**kw, "steps": 3})
    fresh = survival_study({"tiny": tiny_proto}, ds, out=tmp_path / "t.csv", resume=False, max_units=1, **{**kw, "steps": 3})
    assert len(fresh) == 2 * 3 and set(fresh["steps"]) == {3}


def test_sweeps_give_the_loudspeaker_the_clean_clips(tiny_proto):
    from core.attacks import PGD
    from core.attacks.sweep import run_sweep

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000), tone(2000, 1.0, 16_000)]))
    res = run_sweep(PGD(eps=0.0, steps=1), tiny_proto, x, epsilons=[0.0, 0.05], transforms={"speaker-1m": Loudspeaker(1.0)})
    assert not res.clean_after["speaker-1m"].any()  # the clean clip passes the loudspeaker threat unchanged
    assert np.array_equal(res.after["speaker-1m"][0], res.success[0])  # eps 0: nothing to play


def test_masking_attack_command_runs_margins_resumes_and_refuses_other_settings(tiny_proto, tiny_dataset, tmp_path, capsys):
    from core.cli import main
    from core.models.registry import save_checkpoint

    model = save_checkpoint(tiny_proto, tmp_path / "tiny.safetensors", {"note": "test"})
    out = tmp_path / "masking.csv"
    args = ["masking-attack", "--models", str(model), "--data-dir", str(tiny_dataset), "--max-clips", "2", "--steps", "1",
            "--margin-db", "0,6", "--out", str(out)]
    assert main([*args, "--max-units", "1"]) == 0
    first = pd.read_csv(out)
    assert set(first["margin_db"]) == {0} and len(first) == 2 * 2  # one unit: 2 windows, masked and its L-inf control
    assert main(args) == 0  # the rest: only the 6 dB unit
    table = pd.read_csv(out)
    assert len(table) == 2 * 2 * 2 and set(table["margin_db"]) == {0, 6}
    pd.testing.assert_frame_equal(table.iloc[:4], first)  # the first unit kept as it was
    masked = table[table["attack"] == "masked"].groupby("margin_db")["p99_excess_db"].median()
    assert masked[6] < masked[0] - 3  # 6 dB below the threshold where the 0 dB attack reaches it
    capsys.readouterr()
    assert main([*args[:-2], "--steps", "2", "--out", str(out)]) == 2  # other settings: one line, nothing overwritten
    err = capsys.readouterr().err
    assert "other settings (steps)" in err and "--fresh" in err and "Traceback" not in err
    assert main([*args[:-4], "--margin-db", "-1", "--out", str(out)]) == 2
    assert "--margin-db" in capsys.readouterr().err
