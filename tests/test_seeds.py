"""Training arms over seeds: parsing, per-model evaluation and the mean/sd summary."""

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import ParameterError
from core.io.data import Dataset
from core.models.registry import build_model, save_checkpoint
from core.training.seeds import arm_markdown, arm_summary, arm_table, parse_arms
from tests.conftest import make_tiny_dataset, tiny_config


def test_parse_arms():
    assert parse_arms(["AT-O=a, b", "OT+FT=c"]) == {"AT-O": ["a", "b"], "OT+FT": ["c"]}
    for bad in (["AT-O"], ["=a"], ["AT-O="], ["A=a", "A=b"]):
        with pytest.raises(ParameterError):
            parse_arms(bad)


def test_summary_gives_mean_and_sample_sd_per_arm():
    t = pd.DataFrame({"arm": ["A", "A", "A", "B"], "test_cmap": [0.5, 0.6, 0.7, 0.4], "test_rec_cmap": 0.0, "test_rec_top1": 0.0,
                      "pgd_success": [0.2, 0.4, 0.6, 1.0], "worst_success": [0.3, 0.5, 0.7, 1.0], "eps": 1e-4})
    s = arm_summary(t).set_index("arm")
    assert s.loc["A", "n_seeds"] == 3 and s.loc["A", "test_cmap mean"] == pytest.approx(0.6)
    assert s.loc["A", "pgd_success sd"] == pytest.approx(0.2)  # ddof 1
    assert np.isnan(s.loc["B", "test_cmap sd"])
    md = arm_markdown(t).splitlines()
    assert md[2].startswith("| A | 3 | 0.600 ± 0.100 |") and md[3] == "| B | 1 | 0.400 | 0.000 | 1.000 | 1.000 |"


@pytest.mark.slow
def test_arm_table_attacks_every_model_and_reads_its_card(tmp_path):
    ds = Dataset(make_tiny_dataset(tmp_path / "ds"))
    paths = []
    for s in (0, 1):
        torch.manual_seed(s)
        card = {"train_config": {"seed": s}, "metrics": {"test": {"window": {"cmap": 0.5 + s / 10}}}}
        paths.append(str(save_checkpoint(build_model(tiny_config("baseline")), tmp_path / f"m{s}.safetensors", card)))
    rows: list = []
    t = arm_table({"X": paths, "OT": paths[::-1]}, ds, eps=5e-2, max_clips=4, steps=2, strong_steps=3, windows=rows)
    assert list(t["train_seed"]) == [0, 1, 1, 0] and t["test_cmap"].tolist() == pytest.approx([0.5, 0.6, 0.6, 0.5])
    assert (t["worst_success"] >= t["pgd_success"]).all() and t["n_clips"].eq(4).all()
    # the per-window rows behind each model's rates, with the recording of every window (the bootstrap's unit)
    w = pd.DataFrame(rows)
    assert len(w) == 16 and (w["recording"] == w["clip_id"].str.split("@").str[0]).all()
    rates = w.groupby(["arm", "model"], sort=False)[["pgd_broken", "worst_broken"]].mean().to_numpy()
    assert rates == pytest.approx(t[["pgd_success", "worst_success"]].to_numpy())
    from core.training.seeds import arm_differences

    d = arm_differences(w, n_boot=100).set_index("measure")
    assert d.loc["pgd_success", "effect"] == pytest.approx(0.0) and d.loc["pgd_success", "control"] == "OT"  # same models


@pytest.mark.slow
def test_arm_table_resumes_an_interrupted_run(tmp_path, monkeypatch):
    """A run stopped after its first model, started again, attacks only the rest and gives the uninterrupted table."""
    import core.attacks

    ds = Dataset(make_tiny_dataset(tmp_path / "ds"))
    paths = []
    for s in (0, 1):
        torch.manual_seed(s)
        paths.append(str(save_checkpoint(build_model(tiny_config("baseline")), tmp_path / f"m{s}.safetensors",
                                         {"train_config": {"seed": s}})))
    arms = {"X": paths, "OT": paths[::-1]}
    kw = dict(eps=5e-2, max_clips=4, steps=2, strong_steps=3)
    whole = arm_table(arms, ds, **kw)

    def stop(done, total):
        if done == 1:
            raise KeyboardInterrupt

    out = tmp_path / "w.csv"
    with pytest.raises(KeyboardInterrupt):
        arm_table(arms, ds, **kw, out=out, progress=stop)
    assert len(pd.read_csv(out)) == 4  # the first model's windows were kept
    calls = []
    real = core.attacks.PGD

    class CountingPGD(real):
        def __call__(self, model, *a, **k):
            calls.append(1)
            return super().__call__(model, *a, **k)

    monkeypatch.setattr(core.attacks, "PGD", CountingPGD)
    rows: list = []
    again = arm_table(arms, ds, **kw, out=out, windows=rows)
    assert len(calls) == 3  # one batch of 4 windows per model still to do
    pd.testing.assert_frame_equal(again, whole)
    assert len(rows) == 16 and len(pd.read_csv(out)) == 16
    with pytest.raises(ParameterError, match="other settings"):  # another budget is another study
        arm_table(arms, ds, **{**kw, "eps": 1e-2}, out=out)
    assert len(arm_table(arms, ds, **{**kw, "eps": 1e-2}, out=out, resume=False)) == 4
