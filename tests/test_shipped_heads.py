"""The shipped heads on BirdNET's backbone: chosen by the documented rule, reproduce their cards, beat the reference."""

import json

import numpy as np
import pandas as pd
import pytest

from core.io.data import Dataset, build_windows, ids_sha256
from core.models.registry import CHECKPOINT_DIR, list_checkpoints, load_checkpoint, read_model_card
from core.studies.heads import choose_layer
from core.training.train import evaluate
from tests.conftest import ROOT

HEADS = ["birdnet_protopnet", "birdnet_linear"]
#: The AT-O / AT-E variants of the shipped prototype head and their matched control (clean fine-tuning, same epochs).
AT_HEADS = ["birdnet_protopnet_ato", "birdnet_protopnet_ate", "birdnet_protopnet_ft"]
STUDY = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "layers.csv")


def test_shipped_layer_is_the_one_the_rule_picks_from_the_study():
    layer = choose_layer(STUDY)
    for name in HEADS:  # the black box reads the same layer, for an honest comparison
        assert read_model_card(name)["config"]["layer"] == layer


@pytest.mark.slow
@pytest.mark.parametrize("name", HEADS + AT_HEADS)
def test_shipped_head_reproduces_its_card(name, data_dir):
    assert name in list_checkpoints()
    model = load_checkpoint(name, device="cpu")
    card = read_model_card(name)
    ds = Dataset(data_dir)
    assert card["data"]["split_scheme"] == ds.split_scheme == "recordist"
    assert card["data"]["test_recordings_sha256"] == ids_sha256(r.recording_id for r in ds.split("test"))
    c = model.config
    w = build_windows(ds, ds.split("test"), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    got = evaluate(model, w)  # the whole model from the waveform, not the cached features it was trained on
    for level in ("window", "recording"):
        assert got[level]["n"] == card["metrics"]["test"][level]["n"]
        for key in ("cmap", "top1"):
            assert got[level][key] == pytest.approx(card["metrics"]["test"][level][key], abs=0.01), (level, key)


@pytest.mark.parametrize("name", HEADS)
def test_shipped_head_beats_the_reference_by_a_clear_margin(name):
    ref = json.loads((CHECKPOINT_DIR / "reference_logreg.json").read_text())["metrics"]["test"]["recording"]["top1"]
    assert read_model_card(name)["metrics"]["test"]["recording"]["top1"] >= ref + 0.05


def test_prototype_head_card_says_where_each_prototype_sits_and_carries_the_licence():
    card = read_model_card("birdnet_protopnet")
    assert "CC BY-NC-SA 4.0" in card["licence"] and "CC BY-NC-SA 4.0" in card["config"]["licence"]
    protos = card["prototypes"]
    k = card["config"]["prototypes_per_class"]
    assert len(protos) == k * len(card["config"]["class_names"])
    for p in protos:
        assert p["f_low_hz"] < p["f_high_hz"] and p["low_channel_f_low_hz"] < p["low_channel_f_high_hz"] <= 3_100
        assert 0 <= p["t_end_s"] - p["t_start_s"] <= 0.2 and p["recording_id"].startswith("XC")
    assert sum(row["total"] for row in card["prototype_bands"].values()) == len(protos)
    assert np.isfinite(card["decision_threshold"]["value"])


@pytest.mark.parametrize("name", ["birdnet_protopnet"] + AT_HEADS)
def test_audit_in_the_card_is_the_shipped_audit_table(name):
    from core.studies.audit import load_audit

    card = read_model_card(name)
    table = load_audit(card)
    a = card["audit"]
    assert len(table) == len(card["prototypes"]) and a["split"] == "test"
    assert a["median_drop_ratio"] == pytest.approx(table["drop_ratio"].median(), rel=1e-3)
    assert a["share_beating_random"] == pytest.approx((table["wins"] > 0.5).mean())
    assert a["plausibility"] == table["plausibility"].value_counts().to_dict()
    # the audit's peak band is the band of a real feature row of the model
    assert table["high_lo_hz"].lt(table["high_hi_hz"]).all()


@pytest.mark.parametrize("name", AT_HEADS)
def test_finetuned_heads_start_from_the_shipped_head_with_the_documented_recipe(name):
    card = read_model_card(name)
    tc = card["train_config"]
    assert tc["init"] == "birdnet_protopnet" and tc["finetune_epochs"] == 4
    assert tc["adv"] == {"birdnet_protopnet_ato": "at-o", "birdnet_protopnet_ate": "at-e", "birdnet_protopnet_ft": "none"}[name]
    assert (tc["adv_eps"] == 1e-4) if tc["adv"] != "none" else tc["adv_eps"] is None
    assert card["command"] == f"python -m core finetune-head --init birdnet_protopnet --adv {tc['adv']} --name {name}"
    assert "CC BY-NC-SA 4.0" in card["licence"]
    base = read_model_card("birdnet_protopnet")
    assert card["data"]["test_recordings_sha256"] == base["data"]["test_recordings_sha256"]
    assert card["data"]["no_bird_negatives"] == base["data"]["no_bird_negatives"]  # the same training windows
