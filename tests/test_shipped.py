"""Shipped checkpoints reproduce the test metrics recorded in their model cards and beat the reference."""

import pytest

from core.data import Dataset, build_windows
from core.models.registry import list_checkpoints, load_checkpoint, read_model_card
from core.train import evaluate

SHIPPED = ["baseline", "protopnet"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_card(name, data_dir):
    assert name in list_checkpoints()
    model = load_checkpoint(name, device="cpu")
    card = read_model_card(name)
    ds = Dataset(data_dir)
    c = model.config
    assert list(c.class_names) == ds.class_names
    w = build_windows(ds, ds.split("test"), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    got = evaluate(model, w)
    want = card["metrics"]["test"]
    for level in ("window", "recording"):
        assert got[level]["n"] == want[level]["n"]
        for key in ("cmap", "roc_auc", "top1"):
            assert got[level][key] == pytest.approx(want[level][key], abs=0.01), (level, key)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_beats_reference(name):
    card = read_model_card(name)
    ref = card["reference"]["metrics"]["test"]["window"]
    mine = card["metrics"]["test"]["window"]
    assert mine["cmap"] > ref["cmap"] + 0.05
    assert mine["roc_auc"] > ref["roc_auc"]


def test_protopnet_card_has_provenance():
    card = read_model_card("protopnet")
    protos = card["prototypes"]
    k = card["config"]["prototypes_per_class"]
    assert len(protos) == k * len(card["config"]["class_names"])
    assert all(p["t_end_s"] > p["t_start_s"] and p["f_high_hz"] > p["f_low_hz"] for p in protos)
