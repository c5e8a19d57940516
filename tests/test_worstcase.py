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

SETTINGS = CompareSettings(strong=True, max_clips=6, epsilons=(1e-4, 3e-2), target_epsilons=(1e-2,), steps=2, strong_steps=3, restarts=2,
                           apgd_steps=4)


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
    assert card["attack"].startswith("success: " + worst_case_label(2, 3, 2, apgd_steps=4)) and "top-1" in card["attack"]
    assert "APGD-CE-4, APGD-DLR-4" in card["attack"]  # the comparison's worst case names AutoAttack's legs
    assert "cmAP: under PGD-2" in card["attack"]
    big = card["by_eps"][-1]
    assert big["success_rate"] == pytest.approx(summary.loc["masked", f"success worst eps {big['eps']:.0e}"])
    assert big["cmap"] == pytest.approx(summary.loc["masked", f"cmAP PGD eps {big['eps']:.0e}"])
    assert masking_check(pd.DataFrame(columns=["budget_kind", "attack"])).empty


# -- AutoAttack's losses, APGD's schedule, the legs and the true-top-1 rule (issue 24) -----------------------------------


def test_dlr_losses_follow_the_paper():
    from core.attacks.losses import dlr_loss, softmax_cross_entropy, targeted_dlr_loss
    from core.errors import ParameterError

    z = torch.tensor([[3.0, 1.0, 0.0, -2.0], [3.0, 1.0, 0.0, -2.0]])
    c = torch.tensor([0, 1])
    # Eq. 5 by hand: -(z_c - max_{i != c} z_i) / (z_pi1 - z_pi3)
    torch.testing.assert_close(dlr_loss(z, c), torch.tensor([-(3 - 1) / 3.0, -(1 - 3) / 3.0]))
    # > 0 exactly when c is not the top-1; invariant to a shift and a positive scale of the logits
    torch.testing.assert_close(dlr_loss(2.5 * z - 7.0, c), dlr_loss(z, c))
    # Eq. 6 by hand: -(z_c - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(targeted_dlr_loss(z, c, torch.tensor([2, 0])), torch.tensor([-(3 - 0) / 4.0, -(1 - 3) / 4.0]))
    torch.testing.assert_close(softmax_cross_entropy(z, c), -torch.log_softmax(z, -1)[[0, 1], [0, 1]])
    with pytest.raises(ParameterError, match=">= 3"):
        dlr_loss(z[:, :2], c)
    with pytest.raises(ParameterError, match=">= 4"):
        targeted_dlr_loss(z[:, :3], c, c)


def test_halving_rule_is_conditions_1_and_2():
    from core.attacks.apgd import halve_step

    best = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # span 10, rho 0.75: Condition 1 needs fewer than 7.5 increases
    increases = torch.tensor([7.0, 8.0, 8.0, 10.0])
    halved_last = torch.tensor([False, False, True, False])
    best_before = torch.tensor([0.5, 1.0, 1.0, 0.5])  # rows 1 and 2: f_max did not grow since the last checkpoint
    got = halve_step(increases, 10, halved_last, best, best_before)
    # row 0: Condition 1; row 1: Condition 2; row 2: f_max unchanged but halved last time, so no; row 3: neither
    assert got.tolist() == [True, True, False, False]


class _Constant(torch.nn.Module):
    """Logits that do not depend on the input (zero gradient): every APGD checkpoint must halve the step."""

    def __init__(self, n_classes=4):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.n_classes = n_classes

    def forward(self, x):
        return torch.arange(self.n_classes, dtype=x.dtype).expand(len(x), -1) + 0 * x.sum(-1, keepdim=True) * self.w


class _Rising(_Constant):
    """Logits whose DLR grows at every call (the runner-up creeps up): no checkpoint may halve the step."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        z = super().forward(x).clone()
        z[:, 2] = 2.0 + 0.9 * (1 - 0.9 ** self.calls)  # stays below z_3 = 3, rises at every call
        return z


@pytest.mark.parametrize("model,halves", [(_Constant(), True), (_Rising(), False)])
def test_apgd_step_follows_the_checkpoints(model, halves, monkeypatch):
    from core.attacks.apgd import APGD, apgd_checkpoints
    from core.attacks.logit_objectives import OutputDLR

    attack = APGD(eps=0.01, steps=50, objective=OutputDLR(), random_start=False)
    seen = []
    step = attack.step
    monkeypatch.setattr(attack, "step", lambda grad, alpha: (seen.append(float(alpha[0])), step(grad, alpha))[1])
    x = torch.zeros(1, 16)
    state = {"clean_top1": torch.tensor([3])}
    attack.ascent(model, x, torch.tensor([0.01]), state)
    assert len(seen) == 50
    checks = [w for w in apgd_checkpoints(50) if w < 50]
    assert checks == [11, 21, 29, 35, 40, 44, 47]
    # the step that makes x^(k+1) uses the step size after every checkpoint w <= k
    want = [0.02 * 0.5 ** sum(w <= k for w in checks) if halves else 0.02 for k in range(50)]
    np.testing.assert_allclose(seen, want, rtol=1e-6)


@pytest.mark.slow
def test_apgd_keeps_an_iterate_that_flipped(tiny_model):
    """A high cross-entropy need not be a changed top-1: whenever some iterate flipped, the result is flipped."""
    from core.attacks.apgd import APGD
    from core.attacks.logit_objectives import OutputCrossEntropy

    g = torch.Generator().manual_seed(3)
    x = (torch.rand(6, 16_000, generator=g) * 2 - 1) * 0.3
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = tiny_model

        def forward(self, xs):
            z = self.inner(xs)
            seen.append(z.detach().argmax(-1))
            return z

    spy = Spy()
    attack = APGD(eps=0.01, steps=12, objective=OutputCrossEntropy())
    with torch.no_grad():
        top = tiny_model(x).argmax(-1)
    adv = attack.ascent(spy, x, torch.full((6,), 0.01), {"clean_top1": top}, None, attack.start_noise(x))
    ever = torch.stack(seen).ne(top).any(0)
    with torch.no_grad():
        now = tiny_model(adv).argmax(-1) != top
    assert ever.any()  # the case this test is about happens
    assert torch.equal(now, ever)
    assert (adv - x).abs().amax() <= 0.01 + 1e-6


def test_strong_attacks_fit_the_number_of_classes():
    from core.attacks.worstcase import APGD_LEGS, BASE_LEGS, strong_attacks

    names = lambda **kw: [name for name, _, _ in strong_attacks(20, 2, 0, **kw)]  # noqa: E731
    assert names() == list(BASE_LEGS[2:] + APGD_LEGS)
    assert names(n_classes=9) == list(BASE_LEGS[2:] + APGD_LEGS)
    assert names(n_classes=3) == ["apgd", "pgd-restarts", "apgd-ce", "apgd-dlr"]  # targeted DLR needs 4 classes
    assert names(n_classes=2) == ["apgd", "pgd-restarts", "apgd-ce"]
    assert names(apgd_steps=0) == ["apgd", "pgd-restarts"]  # the worst case before issue 24
    legs = strong_attacks(20, 2, 0, n_classes=9)
    assert [a.steps for _, a, _ in legs[2:]] == [50] * 5 and len({a.seed for _, a, _ in legs[2:]}) == 5
    assert [a.objective.rank for _, a, _ in legs[4:]] == [1, 2, 3]


def test_success_counts_only_windows_with_a_true_top1():
    from core.attacks.worstcase import success_over_true_top1, true_top1

    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.6], [0.5, 0.4, 0.1]])
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 1, 1]], dtype=np.float32)
    is_true = true_top1(scores, labels)
    assert is_true.tolist() == [True, False, True, False]
    assert true_top1(scores, None).all()
    s = success_over_true_top1(np.array([True, True, False, True]), is_true)
    assert s == {"success_rate": 0.5, "n_success": 1, "n_counted": 2, "n_excluded": 2, "n_windows": 4}
    assert np.isnan(success_over_true_top1(np.array([True]), np.array([False]))["success_rate"])


def _five_class_model(seed=0):
    from core.models.registry import ModelConfig
    from tests.conftest import TINY_BACKBONE, TINY_FRONTEND

    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="baseline", class_names=("a", "b", "c", "d", "e"), frontend=TINY_FRONTEND,
                                   backbone=TINY_BACKBONE, clip_seconds=1.0)).eval()


@pytest.mark.slow
def test_autoattack_legs_run_after_the_old_ones_on_what_they_left():
    from core.attacks.worstcase import APGD_LEGS, BASE_LEGS, worst_case_windows
    from core.errors import ParameterError

    model = _five_class_model()
    g = np.random.default_rng(0)
    x = (g.uniform(-1, 1, (8, 16_000)) * 0.3).astype(np.float32)
    with torch.no_grad():
        top = model(torch.as_tensor(x)).argmax(-1).numpy()
    labels = np.eye(5, dtype=np.float32)[top]
    labels[:2] = np.eye(5, dtype=np.float32)[(top[:2] + 1) % 5]  # two windows whose clean top-1 is wrong
    eps = 2e-3
    kw = dict(labels=labels, steps=2, strong_steps=3, apgd_steps=8, seed=0)
    full = worst_case_windows(model, x, eps, **kw)
    base = worst_case_windows(model, x, eps, legs=BASE_LEGS, **kw)
    assert full["legs"] == ("pgd", "apgd", "pgd-restarts") + APGD_LEGS and base["legs"] == ("pgd", "apgd", "pgd-restarts")
    # per window: success is a changed top-1, found by the first leg that broke it; the old legs decide as before
    changed = full["scores"].argmax(-1) != full["clean_scores"].argmax(-1)
    assert np.array_equal(full["success"], changed) and (np.abs(full["adversarial"] - x).max(-1) <= eps + 1e-6).all()
    old = np.isin(full["attack"].astype(str), BASE_LEGS) & full["success"]
    assert np.array_equal(old, base["success"]) and (full["success"] >= base["success"]).all()
    assert full["true_top1"].tolist() == [False, False] + [True] * 6
    assert full["summary"]["n_counted"] == 6 and full["summary"]["n_excluded"] == 2
    # only_true_top1: the two wrong windows are reported, not attacked
    only = worst_case_windows(model, x, eps, only_true_top1=True, **kw)
    assert list(only["attack"][:2]) == ["", ""] and not only["success"][:2].any() and np.array_equal(only["adversarial"][:2], x[:2])
    assert np.array_equal(only["success"][2:], full["success"][2:])
    with pytest.raises(ParameterError, match="legs"):
        worst_case_windows(model, x, eps, legs=("fgsm",))


@pytest.mark.slow
def test_worst_case_study_resumes_where_it_stopped(tmp_path):
    from core.studies.worst_case_study import worst_case_study, worst_case_study_summary

    root = make_tiny_dataset(tmp_path / "ds")
    kw = dict(epsilons=[1e-3, 3e-2], steps=1, strong_steps=1, restarts=1, apgd_steps=2, chunk=2, only_true_top1=False)

    class Stop(Exception):
        pass

    def stop_after_first(model_name, done, total):
        raise Stop

    out = tmp_path / "wc.csv"
    torch.manual_seed(2)
    tiny = build_model(tiny_config("baseline")).eval()
    with pytest.raises(Stop):
        worst_case_study({"m": tiny}, Dataset(root), out=out, progress=stop_after_first, **kw)
    first = pd.read_csv(out, keep_default_na=False)
    assert len(first) == 2  # one chunk was written before the interruption
    rest = worst_case_study({"m": tiny}, Dataset(root), out=out, **kw)
    table = pd.read_csv(out, keep_default_na=False)
    assert len(rest) == len(table) - 2 and not table.duplicated(["model", "clip", "eps"]).any()
    assert len(table) == 2 * table["clip"].nunique()
    # a fresh, uninterrupted run gives the same rows
    fresh = worst_case_study({"m": tiny}, Dataset(root), out=tmp_path / "fresh.csv", **kw)
    cols = ["clip", "eps", "clean_top1", "success", "attack", "adv_top1"]
    pd.testing.assert_frame_equal(table[cols].sort_values(["clip", "eps"]).reset_index(drop=True),
                                  fresh[cols].sort_values(["clip", "eps"]).reset_index(drop=True), check_dtype=False)
    # another setting, or other weights under the same name, is another row; the summary counts only windows with a
    # true clean top-1
    assert len(worst_case_study({"m": tiny}, Dataset(root), out=out, **{**kw, "apgd_steps": 3})) == len(table)
    torch.manual_seed(5)
    retrained = build_model(tiny_config("baseline")).eval()
    assert len(worst_case_study({"m": retrained}, Dataset(root), out=tmp_path / "wc.csv", **{**kw, "apgd_steps": 3})) == len(table)
    assert pd.read_csv(out)["fingerprint"].nunique() == 2
    summary = worst_case_study_summary(pd.read_csv(out, keep_default_na=False))
    assert len(summary) == 6 and (summary["true_top1"] + summary["excluded"] == summary["windows"]).all()
    counted = table[table["clean_top1_true"]]
    row = summary[(summary["apgd_steps"] == 2) & np.isclose(summary["eps"], 3e-2)].iloc[0]
    c = counted[np.isclose(counted["eps"], 3e-2)]
    assert row["true_top1"] == len(c) and row["success_after"] == pytest.approx(c["success"].mean() if len(c) else np.nan, nan_ok=True)


@pytest.mark.slow
def test_worst_case_command_says_what_is_wrong_in_one_line(capsys, tmp_path, data_dir):
    from core.cli import main

    out = tmp_path / "wc.csv"
    assert main(["worst-case", "--models", "baseline_ato", "--sources", "baseline_ato", "--out", str(out), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --sources must be model=source pairs") and "\n" not in err
    assert main(["worst-case", "--models", "baseline_ato", "--max-minutes", "0", "--out", str(out), "--data-dir", str(data_dir)]) == 0
    assert "no window finished yet" in capsys.readouterr().out and not out.exists()


def test_an_interrupted_worst_case_resumes_model_by_model(compared, tmp_path, monkeypatch):
    """The comparison's worst case is hours long on the zoo: a run stopped after one model's worst-case rows keeps them
    (and the transfer attack) and a rerun attacks only the other models, ending with the uninterrupted run's table."""
    import core.attacks.worstcase as wc

    result, models = compared
    ds = Dataset(make_tiny_dataset(tmp_path / "ds"))
    attacked, rows_attack = [], wc._rows_attack

    def counting(attack, model, *a, **k):
        attacked.append(next(n for n, m in models.items() if m is model))
        return rows_attack(attack, model, *a, **k)

    monkeypatch.setattr(wc, "_rows_attack", counting)
    units = tmp_path / "units"
    kept = lambda: sorted(p.name for p in units.glob("worst_case_*"))  # noqa: E731
    with pytest.raises(InterruptedError):  # stop at the first poll after the first model's rows are kept
        run_compare(models, ds, SETTINGS, units_dir=units, cancel=lambda: len(kept()) >= 1)
    assert len(kept()) == 1 and list(units.glob("transfer_*"))
    first = {n for n in models if f"_{n}-" in kept()[0]}
    assert len(first) == 1 and set(attacked) == first
    attacked.clear()
    resumed = run_compare(models, ds, SETTINGS, units_dir=units)
    assert first.isdisjoint(attacked) and set(attacked) == set(models) - first  # only the models that were missing
    pd.testing.assert_frame_equal(resumed.robustness, result.robustness)
