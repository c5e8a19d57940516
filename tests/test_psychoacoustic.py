"""The psychoacoustic budget (core.attacks.psychoacoustic): masking threshold of Qin et al. 2019 and the masked attack."""

import numpy as np
import pytest
import torch

from core.attacks.psychoacoustic import (
    N_FFT,
    MaskedPGD,
    absolute_threshold_db,
    bark,
    masking_excess,
    masking_threshold,
    perturbation_psd_db,
    project_under_threshold,
)
from core.errors import ParameterError
from tests.conftest import tone


def test_bark_and_absolute_threshold_have_their_textbook_shape():
    assert bark(np.array([100.0]))[0] == pytest.approx(1.0, abs=0.1) and bark(np.array([16_000.0]))[0] == pytest.approx(24.5, abs=0.5)
    ath = absolute_threshold_db(np.array([50.0, 1000.0, 3300.0, 15_000.0]))
    assert np.isneginf(ath[0])  # below 1 Bark: no absolute threshold
    assert ath[2] < ath[1] < ath[3]  # hearing is most sensitive near 3-4 kHz, least at the top


def test_a_loud_tone_masks_its_neighbourhood_more_above_than_below_and_silence_masks_nothing():
    sr = 32_000
    th = masking_threshold(tone(2000, 1.0, sr, amp=0.5), sr)
    theta = th.theta_db[0][:, th.theta_db.shape[2] // 2]  # a middle frame
    f = np.fft.rfftfreq(N_FFT, 1 / sr)
    at = lambda hz: theta[np.argmin(np.abs(f - hz))]  # noqa: E731
    assert at(2000) > 75  # right under a 96 dB tone: masked up to about 10 dB below it
    assert at(2000) - at(1000) > 20 and at(2000) - at(4000) > 5  # falls off, faster below than above (2 Bark each side)
    assert at(2000) - at(4000) < at(2000) - at(1000)
    assert at(8000) < at(4000) - 15  # far above it still falls (about 6 dB per Bark for a 96 dB masker)
    with pytest.raises(ParameterError, match="silent"):
        masking_threshold(np.zeros(sr, np.float32), sr)
    with pytest.raises(ParameterError, match="2048 samples"):
        masking_threshold(np.ones(100, np.float32), sr)


@pytest.mark.slow
def test_projection_brings_noise_under_the_threshold_and_keeps_what_was_already_under():
    sr = 32_000
    rng = np.random.default_rng(0)
    x = torch.as_tensor(np.stack([tone(1500, 1.0, sr, 0.4) + tone(5000, 1.0, sr, 0.1), tone(3000, 1.0, sr, 0.3)])).double()
    th = masking_threshold(x, sr)
    loud = torch.as_tensor(rng.standard_normal(x.shape) * 0.05)
    before = masking_excess(loud, th)
    assert (before["share_above"] > 0.3).all()
    projected = project_under_threshold(loud, th, iterations=30)
    after = masking_excess(projected, th)
    assert (after["p99_excess_db"] < 1.0).all() and (after["share_above_3db"] < 0.01).all()
    quiet = project_under_threshold(loud, th, iterations=30) * 0.1  # 20 dB under what was allowed
    again = project_under_threshold(quiet, th, iterations=3)
    assert torch.allclose(again, quiet, atol=1e-4 * float(quiet.abs().max()))  # under the threshold: left alone
    psd = perturbation_psd_db(loud, th)
    assert psd.shape == th.theta_db.shape


@pytest.mark.slow
def test_masked_attack_fools_a_model_under_the_threshold_where_linf_at_the_same_snr_does_not_stay(tiny_proto):
    from core.attacks import PGD
    from core.attacks.objectives import OutputMargin
    from core.metrics import snr_db

    sr = 16_000
    x = torch.as_tensor(np.stack([tone(500, 1.0, sr, 0.3), tone(2000, 1.0, sr, 0.3)]))
    atk = MaskedPGD(steps=20, eps=0.1)
    adv = atk(tiny_proto, x)
    ex = masking_excess(adv - x, atk.threshold)
    assert (ex["p99_excess_db"] < 1.0).all()  # the budget holds
    with torch.no_grad():
        assert (tiny_proto(adv).argmax(-1) != tiny_proto(x).argmax(-1)).any()
    snr = snr_db(x, adv)
    ctrl = torch.cat([PGD(snr_db=float(s), steps=5, objective=OutputMargin())(tiny_proto, x[i : i + 1]) for i, s in enumerate(snr)])
    assert (masking_excess(ctrl - x, atk.threshold)["share_above"] > ex["share_above"] + 0.2).all()  # same SNR, audible
    assert atk.describe()["budget"] == "masking threshold"
    with pytest.raises(ParameterError):
        MaskedPGD(eps=0)


@pytest.mark.slow
def test_nothing_is_allowed_above_16_khz_where_the_threshold_of_hearing_would_allow_anything():
    sr = 48_000
    x = torch.as_tensor(tone(2000, 1.0, sr, 0.3)[None]).double()
    th = masking_threshold(x, sr)
    f = np.fft.rfftfreq(N_FFT, 1 / sr)
    assert (th.theta_db[0][f > 16_000] <= -299).all()
    ultrasonic = torch.as_tensor(tone(20_000, 1.0, sr, 0.3)[None]).double()  # as loud as the song, above 16 kHz
    kept = project_under_threshold(ultrasonic, th, iterations=30)
    assert float(kept.pow(2).mean().sqrt()) < 1e-2 * float(ultrasonic.pow(2).mean().sqrt())  # at least 40 dB down


@pytest.mark.slow
def test_sweeps_report_audibility_beside_snr(tiny_proto):
    from core.attacks import PGD
    from core.attacks.sweep import run_sweep
    from core.studies.sweep import summarize, sweep_table

    x = torch.as_tensor(np.stack([tone(500, 1.0, 16_000, 0.3), tone(2000, 1.0, 16_000, 0.3)]))
    atk = PGD(eps=0.0, steps=2)
    res = run_sweep(atk, tiny_proto, x, epsilons=[0.0, 1e-4, 3e-2], masking=True, max_rows=3)
    above = res.above_masking
    assert above.shape == (3, 2) and (above[0] == 0).all()  # eps 0: nothing added
    assert (above[2] > above[1]).all() and (above[2] > 0.2).all()  # a louder L-inf sign pattern pokes out more
    res_kept = run_sweep(atk, tiny_proto, x, epsilons=[3e-2], masking=True, keep_waveforms=True)
    direct = masking_excess(torch.as_tensor(res_kept.adversarial[0]) - x, masking_threshold(x, 16_000))["share_above"]
    assert np.allclose(res_kept.above_masking[0], direct)  # the same measure as masking_excess on the clip itself
    s = summarize(sweep_table(res, model="tiny", attack=atk, clip_ids=["a", "b"], class_names=["aaa", "bbb", "ccc"]))
    assert "above_masking" in s and s["above_masking"].iloc[-1] == pytest.approx(float(np.median(above[2])))


@pytest.mark.slow
def test_a_margin_keeps_the_perturbation_that_many_db_below_the_threshold_where_it_is_constrained():
    sr = 32_000
    rng = np.random.default_rng(1)
    x = torch.as_tensor(np.stack([tone(1500, 1.0, sr, 0.4) + tone(5000, 1.0, sr, 0.1), tone(3000, 1.0, sr, 0.3)])).double()
    th = masking_threshold(x, sr)
    loud = torch.as_tensor(rng.standard_normal(x.shape) * 0.05)
    at = {m: project_under_threshold(loud, th, margin_db=m, iterations=30) for m in (0.0, 6.0, 10.0)}
    psd = {m: perturbation_psd_db(d, th).numpy() for m, d in at.items()}
    theta = th.theta_db
    f = np.fft.rfftfreq(N_FFT, 1 / sr)
    heard = ((bark(f) > 1.0) & (f <= 16_000))[None, :, None]
    constrained = heard & (perturbation_psd_db(loud, th).numpy() > theta + 3)  # cells the budget had to cut
    assert constrained.mean() > 0.2
    for m in (6.0, 10.0):
        below = psd[m][constrained] - theta[constrained]
        assert np.percentile(below, 99) == pytest.approx(-m, abs=0.25)  # it reaches the margin, and 99 % of cells stay under it
        drop = psd[0.0][constrained] - psd[m][constrained]
        assert np.median(drop) == pytest.approx(m, abs=0.25)  # m dB less than the 0 dB budget allows, cell by cell
        energy = 10 * np.log10(np.sum(10 ** (psd[0.0][constrained] / 10)) / np.sum(10 ** (psd[m][constrained] / 10)))
        assert energy == pytest.approx(m, abs=0.25)
    ex = masking_excess(at[6.0], th)
    assert (ex["share_above"] < 0.01).all() and (ex["p99_excess_db"] < -4.0).all()


def test_the_masked_attack_keeps_6_db_by_default_and_refuses_a_bad_margin():
    from core.attacks.psychoacoustic import DEFAULT_MARGIN_DB

    assert DEFAULT_MARGIN_DB == 6.0 and MaskedPGD().margin_db == 6.0 and MaskedPGD().describe()["margin_db"] == 6.0
    assert MaskedPGD(margin_db=0).margin_db == 0.0
    for bad in (-1.0, float("nan"), 100.0, "loud"):
        with pytest.raises(ParameterError, match="margin_db"):
            MaskedPGD(margin_db=bad)
    th = masking_threshold(tone(1000, 0.5, 16_000), 16_000)
    with pytest.raises(ParameterError, match="margin_db"):
        project_under_threshold(torch.zeros(1, 8000, dtype=torch.float64), th, margin_db=-3)
