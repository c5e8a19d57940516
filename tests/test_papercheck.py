"""The paper check (core.studies.papercheck): multiplicity, comparability, control arm, worst-case rows, traceable numbers.

Every comparison here is a tiny synthetic CompareResult: scores are noise plus ``skill`` times the labels, so a
model with more skill ranks the clips better; nothing is trained and no dataset is read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import core.studies.compare
from core.errors import ParameterError
from core.studies.compare import CompareResult, CompareSettings
from core.studies.paper_stats import bootstrap_p, direction_of, holm, multiplicity_note, verdict_text
from core.studies.papercheck import CLAIMS, COLUMNS, PAPER_SOURCES, PAPER_URL, Claim, paper_check

RECIPES = {"baseline": ("ConvNeXt baseline", "OT"), "baseline_ato": ("ConvNeXt baseline", "AT-O"), "baseline_ate": ("ConvNeXt baseline", "AT-E"),
           "protopnet": ("AudioProtoPNet", "OT"), "protopnet_ato": ("AudioProtoPNet", "AT-O"), "protopnet_ate": ("AudioProtoPNet", "AT-E"),
           "baseline_ft": ("ConvNeXt baseline", "OT+FT"), "protopnet_ft": ("AudioProtoPNet", "OT+FT")}
SIX = ["baseline", "baseline_ato", "baseline_ate", "protopnet", "protopnet_ato", "protopnet_ate"]


@pytest.fixture(autouse=True)
def zoo(monkeypatch):
    """The zoo with the OT+FT controls, whether or not core.studies.compare ships them yet."""
    for name, recipe in RECIPES.items():
        monkeypatch.setitem(core.studies.compare.ZOO, name, recipe)


def _skills(**by_recipe) -> dict:
    """skill per model from a skill per recipe (``AT_O`` for "AT-O", ``OT_FT`` for "OT+FT")."""
    return {m: by_recipe.get(r.replace("+", "_").replace("-", "_"), 0.0) for m, (_, r) in RECIPES.items()}


def _result(shift: dict, rob: dict | None = None, tars: dict | None = None, *, attacks: dict | None = None,
            models=SIX, n_rec: int = 30, seed: int = 0) -> CompareResult:
    """Tables for ``models``: ``shift``/``rob`` map model -> skill (``rob`` defaults to ``shift``); ``attacks`` maps an
    ``attack`` column value -> {model: skill} (robustness rows per attack); ``tars`` maps model -> per-clip TARS."""
    rng = np.random.default_rng(seed)
    clips = [f"XC{r}@{w * 5}s" for r in range(n_rec) for w in range(2)]
    y = np.zeros((len(clips), 3))
    y[np.arange(len(clips)), np.arange(len(clips)) // 2 % 3] = 1

    def tidy(skill: dict, extra):
        parts = []
        for m in models:
            s = rng.random(y.shape) + skill[m] * y
            cols = extra(m)
            if "budget_kind" in cols:  # attacked rows: success = the top-1 is not the labelled species (as top-1 changed)
                cols["success"] = s.argmax(1) != y.argmax(1)
            parts.append(pd.concat([pd.DataFrame({"model": m, "clip": clips, **cols}),
                                    pd.DataFrame({f"score:{c}": s[:, k] for k, c in enumerate("abc")}),
                                    pd.DataFrame({f"label:{c}": y[:, k] for k, c in enumerate("abc")})], axis=1))
        return pd.concat(parts, ignore_index=True)

    shift_tab = pd.concat([tidy(shift, lambda m, c=c: {"condition": c, "setting": ""}) for c in ("clean", "noise")], ignore_index=True)
    per_attack = attacks if attacks is not None else {None: rob or shift}
    rob_tab = pd.concat([tidy(sk, lambda m, e=e, a=a: {"budget_kind": "eps", "eps": e, **({"attack": a} if a else {})})
                         for a, sk in per_attack.items() for e in (1e-4, 1e-3)], ignore_index=True)
    tars = tars or {m: 0.5 for m in models}
    tgt = tidy(shift, lambda m: {"budget_kind": "eps", "eps": 1e-3, "tars": np.broadcast_to(tars[m], len(clips))})
    settings = CompareSettings(max_clips=len(clips), epsilons=(1e-4, 1e-3), target_epsilons=(1e-3,))
    return CompareResult(settings=settings, fingerprints={m: "f" for m in models}, shift=shift_tab, robustness=rob_tab,
                         targeted=tgt, prototypes=pd.DataFrame())


# -- statistics -------------------------------------------------------------------------------------


def _holm_rejects(p, alpha):
    """Holm's step-down procedure written out: reject the i-th smallest while p_(j) <= alpha / (m - j + 1) for all j <= i."""
    order, m, out = np.argsort(p), len(p), np.zeros(len(p), bool)
    for j, i in enumerate(order):
        if p[i] > alpha / (m - j):
            break
        out[i] = True
    return out


def test_holm_matches_hand_computed_values_and_the_step_down_procedure():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])  # 0.03 * 2 = 0.06 carries over to 0.04
    np.testing.assert_allclose(holm([0.02, np.nan, 0.01]), [0.02, np.nan, 0.02])  # NaN is not tested and does not count in m
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = rng.random(int(rng.integers(1, 9))) ** 3
        adj = holm(p)
        assert (adj >= p - 1e-15).all() and (adj <= np.minimum(1, len(p) * p) + 1e-15).all()  # between raw and Bonferroni
        assert (np.diff(adj[np.argsort(p, kind="stable")]) >= 0).all()  # monotone in the raw p
        for alpha in (0.01, 0.05, 0.2):
            np.testing.assert_array_equal(adj <= alpha, _holm_rejects(p, alpha))
    with pytest.raises(ParameterError):
        holm([0.5, 1.5])


def test_bootstrap_p_is_two_sided():
    assert bootstrap_p([1.0, 2.0, 3.0, -1.0]) == 0.5  # 2 * 1/4
    assert bootstrap_p([1.0, 2.0, 3.0]) == 0.0
    assert bootstrap_p([-1.0, -2.0, 3.0, -4.0]) == 0.5  # symmetric: the smaller tail counts
    assert bootstrap_p([0.0, 0.0, 1.0, 1.0]) == 1.0  # zeros count on both sides; capped at 1
    assert bootstrap_p([1.0, np.nan, -1.0, 2.0, 3.0]) == 0.5  # NaN resamples left out
    assert np.isnan(bootstrap_p([np.nan]))


def test_direction_comes_from_the_adjusted_p_so_multiplicity_can_make_a_raw_effect_inconclusive():
    assert direction_of(0.3, 0.01) == "claimed"
    assert direction_of(-0.3, 0.01) == "opposite"
    assert direction_of(0.3, 0.05) == "inconclusive"  # not below alpha
    assert direction_of(0.3, np.nan) == "inconclusive"
    raw = np.array([0.04, 0.03, 0.001])  # each below 0.05 alone
    adj = holm(raw)
    assert [direction_of(1.0, p) for p in raw] == ["claimed"] * 3
    assert [direction_of(1.0, p) for p in adj] == ["inconclusive", "inconclusive", "claimed"]  # 0.03 * 2 = 0.06


def test_verdict_says_reproduced_only_under_comparable_conditions():
    for d, words in (("claimed", "in the claimed direction"), ("opposite", "opposite direction"), ("inconclusive", "inconclusive")):
        v = verdict_text(d, comparable=False, p_holm=0.01, n_boot=1000)
        assert v.startswith(f"not tested under comparable conditions; ours: {words} (") and "reproduced" not in v
        extra = verdict_text(d, comparable=True, kind="our additional check", p_holm=0.01)
        assert extra.startswith(f"our additional check, no counterpart in the paper; ours: {words}") and "reproduced" not in extra
    assert verdict_text("claimed", comparable=True, p_holm=0.01).startswith("reproduced (Holm-adjusted p = 0.01)")
    assert verdict_text("opposite", comparable=True, p_holm=0.01).startswith("not reproduced: opposite direction")
    assert verdict_text("inconclusive", comparable=True, p_holm=0.2) == "inconclusive (Holm-adjusted p = 0.2, not < 0.05)"
    assert "none of 1000 resamples" in verdict_text("claimed", comparable=False, p_holm=0.0, n_boot=1000)
    with pytest.raises(ParameterError):
        verdict_text("reproduced", comparable=False)
    with pytest.raises(ParameterError):
        verdict_text("claimed", comparable=False, kind="claim")


def test_claim_keeps_its_positional_fields():
    c = Claim("k", "a claim", "the paper's words", None, "what we measure", "%")
    assert (c.kind, c.comparable, c.conditions, c.source) == ("paper claim", False, "", "")


# -- the table ------------------------------------------------------------------------------------------


def test_one_row_per_claim_with_kind_conditions_and_only_traceable_numbers():
    t = paper_check(_result(_skills(AT_O=1.0), tars={m: 0.8 if "ato" in m else 0.3 for m in SIX}), n_boot=100)
    assert list(t.columns) == COLUMNS and tuple(t["key"]) == CLAIMS
    t = t.set_index("key")
    assert set(t.index[t["kind"] == "our additional check"]) == {"shift", "robust_big"}
    assert set(t.index[t["kind"] == "paper claim"]) == {"clean", "robust", "ato_vs_ate", "ato_vs_ate_robust", "tars"}
    # the paper's +10.5 % is carried by one row only, traced to the abstract
    assert t["paper"].str.contains("10.5").sum() == 1 and t.loc["clean", "paper_effect"] == 10.5
    assert PAPER_SOURCES["clean"]["figure"] == 10.5 and PAPER_URL in PAPER_SOURCES["clean"]["source"]
    assert t.drop(index="clean")["paper_effect"].isna().all()
    assert t.loc["shift", "paper"] == "no number in the paper for this setting" and t.loc["shift", "size"] == ""
    assert "(figure not traceable here)" in t.loc["tars", "paper"] and "0.27" not in t.loc["tars", "paper"]
    assert t.loc["tars", "ours"] == pytest.approx(0.5)
    for key, r in t[t["kind"] == "paper claim"].iterrows():  # every paper number or wording has a source
        assert PAPER_URL in r["source"], key
    # nothing is comparable to the paper, and the verdict says so
    assert not t["comparable"].any() and t["conditions"].str.len().gt(0).all()
    assert t.loc["clean", "conditions"].startswith("not comparable") and "recordist-disjoint" in t.loc["clean", "conditions"]
    assert "input domain" in t.loc["robust", "conditions"]
    claims = t[t["kind"] == "paper claim"]
    assert claims["verdict"].str.startswith("not tested under comparable conditions; ours: in the claimed direction").all()
    assert t.loc["shift", "verdict"].startswith("our additional check, no counterpart in the paper; ours: in the claimed direction")
    assert not t["verdict"].str.contains("reproduced").any()
    assert (t["direction"] == "claimed").all(), t[["ours", "ci_low", "ci_high", "p_holm"]]
    assert (t.drop(index=["ato_vs_ate", "ato_vs_ate_robust"])["control"] == "OT").all()  # no OT+FT model in this result
    assert t.loc["clean", "measure"].startswith("relative cmAP change, AT-O vs OT (ordinary training; no OT+FT control")
    assert t.loc["robust", "measure"].startswith("cmAP under PGD-10 ")  # a table without an attack column is PGD only


def test_p_values_are_holm_adjusted_over_every_row_and_decide_the_direction():
    t = paper_check(_result(_skills(AT_O=1.0, AT_E=0.9), tars={m: 0.5 for m in SIX}), n_boot=200)
    np.testing.assert_allclose(t["p_holm"], holm(t["p_two_sided"]))
    assert (t["p_holm"] >= t["p_two_sided"]).all() and (t["p_two_sided"] <= 2 * t["p_not_claimed"] + 1e-12)[t["ours"] > 0].all()
    assert list(t["direction"]) == [direction_of(e, p) for e, p in zip(t["ours"], t["p_holm"])]
    t = t.set_index("key")
    assert t.loc["clean", "direction"] == "claimed" and t.loc["tars", "direction"] == "inconclusive"  # equal TARS: no effect
    assert t.loc["tars", "p_two_sided"] == 1.0 and t.loc["tars", "ours"] == 0.0
    assert multiplicity_note(t) == "Holm–Bonferroni over 7 tests (5 paper claims, 2 additional checks) at family-wise 5 %"
    assert (t["multiplicity"] == multiplicity_note(t)).all()


def test_the_opposite_effect_is_reported_as_the_opposite_direction():
    t = paper_check(_result(_skills(OT=1.0, AT_E=1.0), tars={m: 0.3 if "ato" in m else 0.8 for m in SIX}), n_boot=200).set_index("key")
    assert (t["direction"] == "opposite").all(), t[["ours", "p_holm", "direction"]]
    assert t.loc["clean", "verdict"].startswith("not tested under comparable conditions; ours: opposite direction")
    assert t.loc["clean", "size"] == "smaller than the paper's +10.5 %, which lies above our interval"


@pytest.mark.slow
def test_at_models_are_compared_with_the_matched_ot_ft_control_when_there_is_one():
    # fine-tuning without the adversary helps more than AT-O; plain OT is worst
    skills = _skills(OT=0.0, OT_FT=1.0, AT_O=0.5, AT_E=0.0)
    tars = {m: {"protopnet": 0.2, "protopnet_ft": 0.9, "protopnet_ato": 0.5}.get(m, 0.5) for m in RECIPES}
    full = _result(skills, tars=tars, models=list(RECIPES))
    t = paper_check(full, n_boot=200).set_index("key")
    for key in ("clean", "shift", "robust", "robust_big", "tars"):
        assert t.loc[key, "control"] == "OT+FT", key
        assert "AT-O vs OT+FT (ordinary training fine-tuned for the same epochs without the adversary" in t.loc[key, "measure"], key
        assert t.loc[key, "direction"] == "opposite", key  # AT-O loses against its matched control
    assert "baseline_ft (OT+FT)" in t.loc["clean", "detail"] and "protopnet_ft (OT+FT)" in t.loc["tars", "detail"]
    assert t.loc["ato_vs_ate", "control"] == "AT-E" and t.loc["ato_vs_ate", "direction"] == "claimed"
    # the same tables without the controls: AT-O is compared with OT and wins
    t = paper_check(full.subset(SIX), n_boot=200).set_index("key")
    for key in ("clean", "shift", "robust", "robust_big", "tars"):
        assert t.loc[key, "control"] == "OT" and t.loc[key, "direction"] == "claimed", key
    # one control only: the arm is mixed, per architecture, and says so
    t = paper_check(full.subset(SIX + ["baseline_ft"]), n_boot=100).set_index("key")
    assert t.loc["clean", "control"] == "OT+FT, OT" and "mixed control arm: baseline_ft (OT+FT); protopnet (OT)" in t.loc["clean", "measure"]
    assert t.loc["tars", "control"] == "OT"  # AudioProtoPNet only


def test_robustness_claims_use_worst_case_rows_when_present_else_pgd_rows():
    pgd = _skills(AT_O=1.0)  # AT-O looks robust under PGD ...
    worst = _skills(OT=1.0)  # ... but not under the worst case over attacks
    transfer = _skills(AT_E=1.0)
    r = _result(_skills(AT_O=1.0), attacks={"pgd": pgd, "transfer": transfer, "worst-case": worst})
    t = paper_check(r, n_boot=100).set_index("key")
    for key in ("robust", "robust_big"):
        assert t.loc[key, "direction"] == "opposite", key
        assert "worst case over PGD-10" in t.loc[key, "measure"] and "APGD-20, PGD-20x2" in t.loc[key, "measure"], key
        # under the worst case robustness is the share of windows whose top-1 survives, not a cmAP of mixed attacks
        assert t.loc[key, "measure"].startswith("share of windows whose top-1 species survives") and t.loc[key, "unit"] == "top-1 kept"
    assert t.loc["clean", "direction"] == "claimed"  # the shift table is untouched
    r.robustness = r.robustness[r.robustness["attack"] != "worst-case"]  # an older table: PGD and transfer rows only
    t = paper_check(r, n_boot=100).set_index("key")
    for key in ("robust", "robust_big"):
        assert t.loc[key, "direction"] == "claimed" and "worst case" not in t.loc[key, "measure"], key
        assert t.loc[key, "measure"].startswith("cmAP under PGD-10 "), key
    r.robustness = r.robustness[r.robustness["attack"] == "transfer"]
    with pytest.raises(ParameterError, match="neither 'worst-case' nor 'pgd'"):
        paper_check(r, n_boot=100)


def test_paper_check_is_deterministic_per_seed():
    r = _result(_skills(AT_O=0.3))
    pd.testing.assert_frame_equal(paper_check(r, n_boot=100, seed=1), paper_check(r, n_boot=100, seed=1))
    assert not np.allclose(paper_check(r, n_boot=100, seed=2)["ci_low"], paper_check(r, n_boot=100, seed=1)["ci_low"])


def test_several_seeds_of_an_arm_are_averaged_and_resampled(monkeypatch):
    """Every model of an (architecture, recipe) is a seed of that arm: the effect is the mean over seeds and the interval
    also resamples seeds (hierarchical bootstrap), so one lucky seed no longer decides the verdict."""
    # seeds are not shipped models: their recipe comes from their cards (core.studies.compare.model_recipe)
    seeds = {f"ckpts/seeds/{m}_s{k}.safetensors": RECIPES[m] for m in ("baseline_ato", "baseline_ft", "protopnet_ato", "protopnet_ft")
             for k in (1, 2)}
    monkeypatch.setattr(core.studies.compare, "model_recipe", lambda name, card=None: RECIPES.get(name) or seeds[name])
    ato, ft = ["baseline_ato", "protopnet_ato"], ["baseline_ft", "protopnet_ft"]
    models = ato + ft + list(seeds)
    skill = {m: 2.0 if m in ato else 0.0 for m in models}  # seed 0 of AT-O is lucky; seeds 1 and 2 are not
    one = paper_check(_result(skill, models=ato + ft, n_rec=40), n_boot=300).set_index("key")
    three = paper_check(_result(skill, models=models, n_rec=40), n_boot=300).set_index("key")
    assert one.loc["clean", "n_seeds"] == "1 vs 1" and three.loc["clean", "n_seeds"] == "3 vs 3"
    assert one.loc["clean", "direction"] == "claimed" and one.loc["clean", "ci_low"] > 20
    # the mean over seeds: a third of the lucky seed's gain (skill is not linear in cmAP, so only roughly)
    assert 0 < three.loc["clean", "ours"] < one.loc["clean", "ours"] / 2
    # resampling seeds: a third of the draws hold no lucky seed ((2/3)^3 = 0.30 per arm), so the interval reaches ~0
    assert three.loc["clean", "ci_low"] < 0.1 * one.loc["clean", "ci_low"]
    assert (three.loc["clean", "ci_high"] - three.loc["clean", "ci_low"]) > 2 * (one.loc["clean", "ci_high"] - one.loc["clean", "ci_low"])
    assert "baseline_ato and 2 more seeds" in three.loc["clean", "detail"]
