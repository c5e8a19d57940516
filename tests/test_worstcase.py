"""Worst case over attacks (transfer, APGD, PGD with restarts) and the gradient-masking check."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from core.attacks.worstcase import ATTACK_ORDER, masking_check, transfer_sources, worst_case_label
from core.io.data import Dataset
from core.models.registry import build_model
from core.studies.compare import CompareSettings, card_robustness, model_summary, run_compare
from tests.conftest import CLASSES, make_tiny_dataset, tiny_config

SETTINGS = CompareSettings(strong=True, max_clips=6, epsilons=(1e-4, 3e-2), target_epsilons=(1e-2,), steps=2, strong_steps=3, restarts=2)


def _masked(model):
    """The same model behind an input quantiser: its gradient is zero everywhere (masked), its decisions are not."""
    m = copy.deepcopy(model)
    inner = m.frontend.forward
    m.frontend.forward = lambda x: inner(torch.round(x * 20) / 20)
    return m


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("ds"))
    torch.manual_seed(1)
    base = build_model(tiny_config("baseline")).eval()
    torch.manual_seed(0)
    proto = build_model(tiny_config("protopnet")).eval()
    models = {"baseline": base, "masked": _masked(base), "protopnet": proto}
    return run_compare(models, Dataset(root), SETTINGS), models


def test_transfer_sources_prefer_ordinary_models():
    assert transfer_sources(["baseline", "protopnet", "baseline_ato"]) == {
        "baseline": "protopnet", "protopnet": "baseline", "baseline_ato": "baseline"}
    assert transfer_sources(["a", "b"]) == {"a": "b", "b": "a"}
    assert transfer_sources(["birdnet"]) == {}


@pytest.mark.slow
def test_worst_case_is_a_superset_of_every_attack(compared):
    result, models = compared
    rob = result.robustness
    for name in models:
        t = rob[(rob["model"] == name) & (rob["budget_kind"] != "clean")]
        by = {a: t[t["attack"] == a].set_index(["clip", "eps"])["success"] for a in ("pgd", "transfer", "worst-case")}
        assert len(by["worst-case"]) == len(by["pgd"]) == 6 * 2
        wc, pgd, tr = by["worst-case"], by["pgd"].reindex(by["worst-case"].index), by["transfer"].reindex(by["worst-case"].index)
        assert (wc >= pgd).all() and (wc >= tr).all()
        made = t[t["attack"] == "worst-case"]["worst_by"]
        assert set(made) <= set(ATTACK_ORDER)
        # a row made by PGD carries PGD's scores; a successful row's top-1 really changed
        w = t[t["attack"] == "worst-case"].set_index(["clip", "eps"])
        p = t[t["attack"] == "pgd"].set_index(["clip", "eps"]).reindex(w.index)
        cols = [f"score:{c}" for c in CLASSES]
        from_pgd = (w["worst_by"] == "pgd").to_numpy()
        np.testing.assert_allclose(w[cols].to_numpy()[from_pgd], p[cols].to_numpy()[from_pgd], atol=1e-6)
        clean = rob[(rob["model"] == name) & (rob["budget_kind"] == "clean") & (rob["attack"] == "pgd")].set_index("clip")
        top_clean = clean.loc[[c for c, _ in w.index], cols].to_numpy().argmax(1)
        assert ((w[cols].to_numpy().argmax(1) != top_clean) == w["success"].to_numpy()).all()
        assert (w["linf"] <= w.index.get_level_values("eps") * (1 + 1e-5) + 1e-7).all()


def test_masked_gradients_are_caught(compared):
    result, _ = compared
    rob = result.robustness
    big = rob[(rob["budget_kind"] != "clean") & np.isclose(rob["eps"], 3e-2)]
    rate = big.groupby(["model", "attack"])["success"].mean()
    # the quantiser hides the gradient: white-box PGD does no better than on the clean clip, the transfer attack
    # from the unmasked twin does, and the check says so
    assert rate[("masked", "transfer")] > rate[("masked", "pgd")]
    warn = masking_check(rob)
    row = warn[(warn["model"] == "masked") & np.isclose(warn["eps"], 3e-2)].iloc[0]
    assert "transfer" in row["warning"] and row["worst_case"] >= row["transfer"]
    assert warn[warn["model"] == "baseline"]["worst_case"].ge(warn[warn["model"] == "baseline"]["pgd"]).all()


def test_summary_and_card_use_the_worst_case(compared):
    result, _ = compared
    summary = model_summary(result).set_index("model")
    assert (summary["success worst eps 3e-02"] >= summary["success PGD eps 3e-02"]).all()
    assert not any(c.startswith("cmAP worst") for c in summary.columns)  # the worst case is chosen by top-1, not by cmAP
    card = card_robustness(result, "masked")
    assert card["attack"].startswith("success: " + worst_case_label(2, 3, 2)) and "top-1" in card["attack"]
    assert "cmAP: under PGD-2" in card["attack"]
    big = card["by_eps"][-1]
    assert big["success_rate"] == pytest.approx(summary.loc["masked", f"success worst eps {big['eps']:.0e}"])
    assert big["cmap"] == pytest.approx(summary.loc["masked", f"cmAP PGD eps {big['eps']:.0e}"])
    assert masking_check(pd.DataFrame(columns=["budget_kind", "attack"])).empty
