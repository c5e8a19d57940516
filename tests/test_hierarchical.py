"""The hierarchical bootstrap over recordings and seeds (core.metrics.hierarchical_difference) and the arms
study's differences against the control (core.training.seeds.arm_differences)."""

import numpy as np
import pandas as pd
import pytest

from core.errors import ParameterError
from core.metrics import hierarchical_difference
from core.training.seeds import arm_differences, control_arm, differences_markdown


def _windows(effects: dict, n_rec: int = 20, per_rec: int = 3, seed_sd: float = 0.0, seed: int = 0):
    """Binary outcomes per (arm, seed, window): P(1) = the arm's rate + a seed offset (sd ``seed_sd``)."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, (p, seeds) in effects.items():
        for s in range(seeds):
            off = rng.normal(0, seed_sd)
            for r in range(n_rec):
                for k in range(per_rec):
                    q = float(np.clip(p + off, 0, 1))
                    rows.append({"arm": arm, "train_seed": s, "recording": f"XC{r}", "clip_id": f"XC{r}@{3 * k}s",
                                 "pgd_broken": int(rng.random() < q), "worst_broken": int(rng.random() < min(1.0, q + 0.1))})
    return pd.DataFrame(rows)


def test_effect_is_the_difference_of_means_and_the_interval_covers_it():
    w = _windows({"AT-O": (0.3, 3), "OT+FT": (0.6, 3)}, n_rec=30)
    r = hierarchical_difference(w, "AT-O", "OT+FT", "pgd_broken", n_boot=500)
    want = w[w.arm == "AT-O"].pgd_broken.mean() - w[w.arm == "OT+FT"].pgd_broken.mean()
    assert r["effect"] == pytest.approx(want)
    assert r["ci_low"] < r["effect"] < r["ci_high"] < 0 and r["p_two_sided"] < 0.01
    assert (r["n_recordings"], r["n_seeds_arm"], r["n_seeds_control"], r["n_boot"]) == (30, 3, 3, 500)


def test_seed_spread_widens_the_interval_that_a_recording_bootstrap_alone_would_miss():
    calm = _windows({"A": (0.5, 3), "B": (0.5, 3)}, n_rec=30, seed_sd=0.0, seed=1)
    noisy = _windows({"A": (0.5, 3), "B": (0.5, 3)}, n_rec=30, seed_sd=0.2, seed=1)

    def width(w):
        r = hierarchical_difference(w, "A", "B", "pgd_broken", n_boot=400)
        return r["ci_high"] - r["ci_low"]

    assert width(noisy) > 1.5 * width(calm)
    one_seed = _windows({"A": (0.5, 1), "B": (0.5, 1)}, n_rec=30, seed=1)
    r = hierarchical_difference(one_seed, "A", "B", "pgd_broken", n_boot=200)  # one seed: only recordings vary
    assert r["n_seeds_arm"] == 1 and r["ci_low"] < r["ci_high"]


def test_the_same_seed_gives_the_same_interval_and_bad_input_is_refused():
    w = _windows({"A": (0.4, 2), "B": (0.5, 2)})
    assert hierarchical_difference(w, "A", "B", "pgd_broken", n_boot=200, seed=3) == hierarchical_difference(
        w, "A", "B", "pgd_broken", n_boot=200, seed=3)
    with pytest.raises(ParameterError, match="no windows of arm"):
        hierarchical_difference(w, "A", "C", "pgd_broken")
    with pytest.raises(ParameterError, match="n_boot"):
        hierarchical_difference(w, "A", "B", "pgd_broken", n_boot=10)
    with pytest.raises(ParameterError, match="column"):
        hierarchical_difference(w.drop(columns="recording"), "A", "B", "pgd_broken")
    other = w.copy()
    other.loc[other.arm == "B", "recording"] = "XC999"
    with pytest.raises(ParameterError, match="different windows"):
        hierarchical_difference(other, "A", "B", "pgd_broken", n_boot=100)


def test_arm_differences_compare_every_arm_with_the_matched_control():
    w = _windows({"OT": (0.7, 3), "AT-O": (0.3, 3), "OT+FT": (0.6, 3)})
    assert control_arm(["OT", "AT-O", "OT+FT"]) == "OT+FT" and control_arm(["OT", "AT-O"]) == "OT" and control_arm(["A"]) is None
    d = arm_differences(w, n_boot=200)
    assert list(zip(d.arm, d.measure)) == [("OT", "pgd_success"), ("OT", "worst_success"), ("AT-O", "pgd_success"),
                                           ("AT-O", "worst_success")]
    assert set(d.control) == {"OT+FT"}
    md = differences_markdown(d)
    r = d.set_index(["arm", "measure"]).loc[("AT-O", "worst_success")]
    assert "| AT-O | OT+FT | " in md and f"{100 * r.effect:+.1f} [{100 * r.ci_low:+.1f}, {100 * r.ci_high:+.1f}]" in md
    # p beside each difference and Holm's adjustment over the table's 4 differences (both measures of both arms)
    from core.metrics import holm_cells

    row = next(ln for ln in md.splitlines() if ln.startswith("| AT-O |")).split(" | ")
    assert "p (Holm, 4)" in md and row[7] == holm_cells(d["p_two_sided"], d["n_boot"])[3]
    assert arm_differences(w[w.arm == "AT-O"], n_boot=200).empty


def test_models_are_the_units_resampled_and_a_missing_seed_is_refused_not_dropped():
    w = _windows({"A": (0.4, 2), "B": (0.5, 2)})
    w["model"] = w["arm"] + "_s" + w["train_seed"].astype(str)
    by_model = hierarchical_difference(w, "A", "B", "pgd_broken", n_boot=200)
    w2 = w.copy()
    w2["train_seed"] = None  # cards without a seed: the models still count
    assert hierarchical_difference(w2, "A", "B", "pgd_broken", n_boot=200) == by_model
    with pytest.raises(ParameterError, match="without a train_seed"):
        hierarchical_difference(w2.drop(columns="model"), "A", "B", "pgd_broken", n_boot=200)


def test_windows_named_by_a_column_are_matched_by_name_not_by_row_order():
    w = _windows({"AT-O": (0.3, 3), "OT+FT": (0.6, 3)}, n_rec=10)
    by_order = hierarchical_difference(w, "AT-O", "OT+FT", "pgd_broken", n_boot=300)
    shuffled = w.sample(frac=1.0, random_state=3)
    by_name = hierarchical_difference(shuffled, "AT-O", "OT+FT", "pgd_broken", n_boot=300, window="clip_id")
    assert by_name["effect"] == pytest.approx(by_order["effect"]) and by_name["n_recordings"] == by_order["n_recordings"] == 10
    assert by_name["ci_low"] == pytest.approx(by_order["ci_low"], abs=0.05)
    with pytest.raises(ParameterError, match="same windows"):
        hierarchical_difference(w.drop(index=w.index[(w["arm"] == "AT-O") & (w["train_seed"] == 1)][:1]), "AT-O", "OT+FT",
                                "pgd_broken", n_boot=300, window="clip_id")
    other = w.assign(clip_id=np.where(w["arm"] == "AT-O", w["clip_id"] + "x", w["clip_id"]))
    with pytest.raises(ParameterError, match="different windows"):
        hierarchical_difference(other, "AT-O", "OT+FT", "pgd_broken", n_boot=300, window="clip_id")
