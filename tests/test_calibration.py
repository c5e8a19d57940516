"""Per-model decision thresholds on the validation split and the set-change success they define."""

import numpy as np
import pandas as pd
import pytest

from core.errors import CheckpointError, ParameterError
from core.io.data import Dataset
from core.metrics import set_changed
from core.models.registry import load_checkpoint, read_model_card
from core.studies.compare import ZOO
from core.studies.sweep import summarize
from core.training.calibration import calibrate_model, card_thresholds, choose_threshold, model_threshold


def test_threshold_separates_uncalibrated_scores_that_0_5_misses():
    rng = np.random.default_rng(0)
    targets = np.zeros((40, 3))
    targets[np.arange(40), rng.integers(0, 3, 40)] = 1
    # every present species scores 0.30-0.40, every absent one 0.05-0.25: perfect ranking, nothing above 0.5
    scores = np.where(targets == 1, rng.uniform(0.30, 0.40, targets.shape), rng.uniform(0.05, 0.25, targets.shape))
    out = choose_threshold(scores, targets)
    assert 0.25 < out["value"] <= scores[targets == 1].min()
    assert out["micro_f1"] == pytest.approx(1.0)
    assert out["micro_f1_at_0.5"] == 0.0
    assert out["mean_predicted"] == pytest.approx(1.0)
    assert out["n_windows"] == 40


def test_threshold_rejects_bad_input():
    with pytest.raises(ParameterError, match="equal 2-d"):
        choose_threshold(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ParameterError, match="positive label"):
        choose_threshold(np.full((4, 3), 0.5), np.zeros((4, 3)))
    with pytest.raises(ParameterError, match=r"\(0, 1\)"):
        set_changed(np.zeros((1, 2)), np.zeros((1, 2)), 1.0)


def test_set_changed_compares_sets_at_the_threshold_and_falls_back_to_top1():
    clean = np.array([[0.6, 0.2, 0.1], [0.2, 0.3, 0.1], [0.7, 0.65, 0.1]])
    adv = np.array([[0.7, 0.3, 0.1],    # same set {0}: scores moved, set did not
                    [0.25, 0.2, 0.1],   # nothing above 0.5 in both: top-1 fallback {1} -> {0}
                    [0.7, 0.4, 0.1]])   # {0, 1} -> {0}
    assert set_changed(clean, adv, 0.5).tolist() == [False, True, True]
    assert set_changed(clean, adv, 0.35).tolist() == [False, True, False]  # {0, 1} stays {0, 1} at 0.35


def _table(model: str) -> pd.DataFrame:
    base = {"model": model, "attack": "pgd", "norm": "linf", "objective": "output-untargeted", "success_definition": "top-1 species changed",
            "prs": 1.0, "drs": np.nan, "tars": np.nan, "snr_db": 60.0, "db_x": -60.0, "eps": 1e-4}
    rows = [
        {**base, "budget_kind": "clean", "budget": np.nan, "clip": "a", "success": False, "score:x": 0.6, "score:y": 0.2},
        {**base, "budget_kind": "clean", "budget": np.nan, "clip": "b", "success": False, "score:x": 0.3, "score:y": 0.45},
        {**base, "budget_kind": "eps", "budget": 1e-4, "clip": "a", "success": False, "score:x": 0.55, "score:y": 0.45},
        {**base, "budget_kind": "eps", "budget": 1e-4, "clip": "b", "success": False, "score:x": 0.3, "score:y": 0.42},
    ]
    return pd.DataFrame(rows)


def test_summarize_reports_set_change_only_with_a_threshold():
    df = pd.concat([_table("m1"), _table("m2")], ignore_index=True)
    s = summarize(df, thresholds={"m1": 0.4})
    adv = s[s["budget_kind"] == "eps"].set_index("model")
    # m1 at 0.4: clip a {x} -> {x, y} changed, clip b {y} -> {y} unchanged
    assert adv.loc["m1", "set_change_rate"] == pytest.approx(0.5)
    assert np.isnan(adv.loc["m2", "set_change_rate"])
    assert s[s["budget_kind"] == "clean"].set_index("model").loc["m1", "set_change_rate"] == 0.0
    assert summarize(df)["set_change_rate"].isna().all()


@pytest.mark.parametrize("name", list(ZOO))
def test_shipped_cards_carry_a_validation_threshold(name):
    card = read_model_card(name)
    t = card["decision_threshold"]
    assert t["split"] == "val" and t["split_scheme"] == card["data"]["split_scheme"]
    assert 0 < model_threshold(card) < 1
    assert t["micro_f1"] >= t["micro_f1_at_0.5"]  # the optimum over cut-offs includes 0.5
    assert card_thresholds([name, "no_such_model"]) == {name: model_threshold(card)}


def test_birdnet_threshold_is_stored_beside_its_metrics(tmp_path, monkeypatch):
    import json

    import core.training.calibration as calibration

    stored = json.loads(calibration.builtin_threshold_path("birdnet").read_text())
    assert stored["split"] == "val" and stored["split_scheme"] == "recordist" and stored["micro_f1"] >= stored["micro_f1_at_0.5"]
    assert card_thresholds(["birdnet"]) == {"birdnet": stored["value"]}
    bad = tmp_path / "decision_threshold.json"
    bad.write_text("{}")
    monkeypatch.setattr(calibration, "builtin_threshold_path", lambda name: bad)
    with pytest.raises(CheckpointError, match="not a decision threshold"):
        card_thresholds(["birdnet"])
    monkeypatch.setattr(calibration, "builtin_threshold_path", lambda name: tmp_path / "missing.json")
    assert card_thresholds(["birdnet"]) == {}


@pytest.mark.slow
def test_shipped_threshold_reproduces_on_the_validation_split(data_dir):
    name = "protopnet"
    got = calibrate_model(load_checkpoint(name, device="cpu"), Dataset(data_dir))
    assert got["value"] == pytest.approx(model_threshold(read_model_card(name)), abs=0.02)
