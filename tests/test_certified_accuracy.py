"""Certified accuracy (issue 26, item 2): windows chosen without a model, several models certified on the same noise
give what CERTIFY gives each alone, the shared BirdNET trunk gives model(x), the summary counts what it says."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.attacks.smoothing import certify_window
from core.errors import ParameterError
from core.io.data import Dataset
from core.studies.certified_accuracy import (
    SharedTrunk,
    _window_index,
    certified_differences,
    certified_differences_markdown,
    certified_markdown,
    certified_summary,
    certify_models,
    stratified_test_windows,
)
from tests.conftest import CLASSES, tiny_config


def _windows(tiny_dataset, per_species=2, seed=0):
    c = tiny_config("baseline")
    return stratified_test_windows(Dataset(tiny_dataset), class_names=CLASSES, sample_rate=c.frontend.sample_rate,
                                   window_samples=int(c.clip_seconds * c.frontend.sample_rate), per_species=per_species, seed=seed)


def test_windows_are_stratified_from_the_test_split_and_reproducible(tiny_dataset):
    ws = _windows(tiny_dataset)
    assert [w.species for w in ws] == ["aaa", "aaa", "bbb", "bbb", "ccc", "ccc"]
    assert {w.recording_id for w in ws} == {"aaatest0", "bbbtest0", "ccctest0"}
    assert all(w.labels == (w.species,) and w.waveform.shape == (16_000,) for w in ws)
    assert len({w.window_id for w in ws}) == 6
    assert [w.window_id for w in _windows(tiny_dataset)] == [w.window_id for w in ws]
    # 2.5 s recordings give windows at 0, 1 and 2 s (the last half padding, still kept at min_valid 0.5)
    assert len(_windows(tiny_dataset, per_species=10)) == 9
    with pytest.raises(ParameterError, match="per_species"):
        _windows(tiny_dataset, per_species=0)


def test_models_certified_together_match_each_certified_alone(tiny_dataset):
    torch.manual_seed(0)
    from core.models.registry import build_model

    models = {"proto": build_model(tiny_config("protopnet")).eval(), "base": build_model(tiny_config("baseline")).eval()}
    ws = _windows(tiny_dataset, per_species=1)
    rows = certify_models(models, ws, sigma=0.05, n=40, n0=10, alpha=0.01, batch_size=8, seed=3,
                          info={"proto": {"arm": "P"}, "base": {"arm": "B"}})
    assert len(rows) == 6 and set(rows["arm"]) == {"P", "B"}
    for _, r in rows.iterrows():
        win = next(w for w in ws if w.window_id == r["window"])
        alone = certify_window(models[r["model"]], win.waveform, sigma=0.05, n=40, n0=10, alpha=0.01, batch_size=8, seed=3,
                               index=_window_index(win.window_id))
        assert r["class_name"] == alone.class_name and r["p_lower"] == pytest.approx(alone.p_lower)
        assert r["abstain"] == alone.abstained
        assert r["correct"] == (alone.class_name in win.labels and not alone.abstained)
        with torch.no_grad():
            clean = models[r["model"]](torch.as_tensor(win.waveform)[None]).argmax(-1).item()
        assert r["clean_class"] == CLASSES[clean]
    # a resumed run certifies only what is missing, on the same noise
    first = ws[0].window_id
    skip = {(m, first, 0.05) for m in models}
    rest = certify_models(models, ws, sigma=0.05, n=40, n0=10, alpha=0.01, batch_size=8, seed=3, skip=skip)
    assert first not in set(rest["window"]) and len(rest) == 4
    full = rows[rows["window"] != first].reset_index(drop=True)
    assert list(rest["p_lower"]) == pytest.approx(list(full["p_lower"]))


def test_models_without_a_shared_trunk_run_whole():
    torch.manual_seed(0)
    from core.models.registry import build_model

    a, b = build_model(tiny_config("protopnet")).eval(), build_model(tiny_config("baseline")).eval()
    x = torch.randn(2, 16_000) * 0.1
    trunk = SharedTrunk([a, b])
    out = trunk(x)
    assert out.shape == (2, 2, 3)
    torch.testing.assert_close(out[1], b(x))


@pytest.mark.usefixtures("data_dir")
def test_shared_birdnet_trunk_gives_each_shipped_head_its_own_logits():
    from core.models.registry import load_checkpoint

    heads = [load_checkpoint(n).eval() for n in ("birdnet_protopnet", "birdnet_protopnet_ato")]
    trunk = SharedTrunk(heads)
    assert len(trunk.groups) == 1  # one BirdNET pass for both heads
    torch.manual_seed(1)
    x = torch.randn(2, heads[0].config.window_samples) * 0.02
    with torch.no_grad():
        shared = trunk(x)
        for i, h in enumerate(heads):
            torch.testing.assert_close(shared[i], h(x), rtol=1e-5, atol=1e-5)
    broken = load_checkpoint("birdnet_protopnet_ft").eval()
    own = broken.forward
    broken.forward = lambda w: own(w) + 1.0
    with pytest.raises(RuntimeError, match="differ from model"):
        SharedTrunk([heads[0], broken])(x)


def _rows():
    # two OT models, one noise model, 4 windows (each its own recording); snr_db and radius NaN where abstaining
    rows = []
    for model, arm, correct, snr, radius, clean in (
        ("ot0", "OT", [1, 1, 0, 1], [75, 85, np.nan, 95], [2.5, 1.2, np.nan, 0.4], [1, 1, 1, 0]),
        ("ot1", "OT", [1, 0, 0, 0], [65, 70, 80, np.nan], [2.1, 0.2, 0.3, np.nan], [1, 0, 0, 0]),
        ("nz0", "noise", [1, 1, 1, 1], [55, 60, 70, 80], [2.5, 2.5, 2.5, 2.0], [1, 1, 1, 1]),
    ):
        for k in range(4):
            rows.append({"sigma": 3e-4, "model": model, "arm": arm, "train_seed": 0, "window": f"w{k}", "recording": f"XC{k}",
                         "correct": bool(correct[k]), "abstain": bool(np.isnan(snr[k])), "snr_db": snr[k], "radius": radius[k] * 3e-4,
                         "clean_correct": bool(clean[k]), "after_cutoff": k == 3, "clean_class": "aaa",
                         "class_name": "aaa" if correct[k] else "bbb"})
    return pd.DataFrame(rows)


def test_summary_counts_certified_windows_per_radius_and_threshold_with_seed_spread():
    s = certified_summary(_rows(), thresholds=(90.0, 70.0), radii_sigma=(1.0, 2.0)).set_index("arm")
    # ot0: correct with snr <= 90 -> w0 (75), w1 (85): 0.5; <= 70: none -> 0. ot1: <= 90: w0: 0.25; <= 70: w0: 0.25
    assert s.loc["OT", "cert_90db mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert s.loc["OT", "cert_70db mean"] == pytest.approx(0.125)
    assert s.loc["OT", "cert_70db sd"] == pytest.approx(np.std([0.0, 0.25], ddof=1))
    # radius >= 1 sigma and correct: ot0 w0 (2.5), w1 (1.2) -> 0.5; ot1 w0 (2.1) -> 0.25. >= 2 sigma: ot0 w0, ot1 w0
    assert s.loc["OT", "cert_1sigma mean"] == pytest.approx(0.375) and s.loc["OT", "cert_2sigma mean"] == pytest.approx(0.25)
    assert s.loc["noise", "cert_2sigma mean"] == pytest.approx(1.0)
    assert s.loc["OT", "smoothed_top1 mean"] == pytest.approx((0.75 + 0.25) / 2)
    assert s.loc["OT", "abstain mean"] == pytest.approx((0.25 + 0.25) / 2)
    # g differs from f's clean class where g answers a wrong class: ot0 0 of its 3 answered windows, ot1 2 of 3
    assert s.loc["OT", "g_differs mean"] == pytest.approx((0 + 2 / 3) / 2)
    assert s.loc["OT", "n_models"] == 2 and s.loc["OT", "n_windows"] == 4
    assert s.loc["noise", "cert_70db mean"] == pytest.approx(0.75) and np.isnan(s.loc["noise", "cert_70db sd"])
    post = certified_summary(_rows(), thresholds=(90.0,), subset="post-cutoff").set_index("arm")
    assert post.loc["OT", "n_windows"] == 1 and post.loc["OT", "cert_90db mean"] == pytest.approx(0.0)
    summary = certified_summary(_rows(), thresholds=(90.0, 70.0), radii_sigma=(1.0, 2.0))
    md = certified_markdown(summary)
    assert "| R >= 1 sigma | R >= 2 sigma |" in md and "| 0.0003 | OT | 2 | 4 (4) |" in md and "0.25 ± 0.00 |" in md
    assert "certified at <= 90 dB | certified at <= 70 dB |" in certified_markdown(summary, "snr")
    with pytest.raises(ParameterError, match="subset"):
        certified_summary(_rows(), subset="pre")
    with pytest.raises(ParameterError, match="kind"):
        certified_markdown(summary, "db")


def test_differences_match_windows_by_name_and_give_the_arm_minus_control():
    rows = _rows()
    rows.loc[rows["arm"] == "OT", "arm"] = "OT+FT"
    d = certified_differences(rows, radii_sigma=(2.0,), n_boot=200).set_index("arm")
    assert d.loc["noise", "effect"] == pytest.approx(1.0 - 0.25) and d.loc["noise", "n_recordings"] == 4
    shuffled = rows.sample(frac=1.0, random_state=1)  # the order of the rows changes nothing
    assert certified_differences(shuffled, radii_sigma=(2.0,), n_boot=200).set_index("arm").loc["noise", "effect"] == pytest.approx(0.75)
    assert "| 0.0003 | noise | OT+FT | 2 sigma | +0.750 [" in certified_differences_markdown(d.reset_index())
