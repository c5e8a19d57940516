"""Explanation stability (issue 26, item 6): three perturbations per (model, window) measured through the model, noise
of the attack's energy, resumable rows, and the per-arm summary and differences computed as documented."""

import numpy as np
import pandas as pd
import pytest

from core.field.explanation_attack import prototype_swap
from core.io.data import Dataset
from core.studies.certified_accuracy import stratified_test_windows
from core.studies.explanation_stability import (
    stability_differences,
    stability_differences_markdown,
    stability_markdown,
    stability_rows,
    stability_summary,
)
from tests.conftest import CLASSES, tiny_config


def test_rows_measure_swap_peak_and_noise_of_the_same_energy(tiny_proto, tiny_dataset):
    c = tiny_config("protopnet")
    windows = stratified_test_windows(Dataset(tiny_dataset), class_names=CLASSES, sample_rate=c.frontend.sample_rate,
                                      window_samples=16_000, per_species=1)
    rows = stability_rows({"p": tiny_proto}, windows, eps=3e-3, steps=5, seed=2, info={"p": {"arm": "OT", "train_seed": 0}})
    assert len(rows) == 9 and list(rows["perturbation"][:3]) == ["swap", "peak", "noise"]
    for w in windows:
        part = rows[rows["window"] == w.window_id].set_index("perturbation")
        alone = prototype_swap(tiny_proto, np.clip(w.waveform, -1, 1), eps=3e-3, steps=5, seed=2)
        assert part.loc["swap", "success"] == float(alone.success)
        assert part.loc["swap", "topk_overlap"] == pytest.approx(alone.topk_overlap)
        # the noise has the swap perturbation's L2 norm, so (clipping aside) the same SNR
        assert part.loc["noise", "snr_db"] == pytest.approx(part.loc["swap", "snr_db"], abs=0.05)
        assert np.isnan(part.loc["noise", "success"]) and part.loc["peak", "success"] in (0.0, 1.0)
    assert set(rows["arm"]) == {"OT"}
    again = stability_rows({"p": tiny_proto}, windows, eps=3e-3, steps=5, seed=2, skip={("p", windows[0].window_id)})
    assert len(again) == 6 and windows[0].window_id not in set(again["window"])


def _synthetic():
    rows = []
    for arm, models in (("OT+FT", {"c0": [1, 1, 0, 0], "c1": [1, 0, 0, 0]}), ("AT-X", {"x0": [0, 0, 0, 0], "x1": [1, 0, 0, 0]})):
        for seed, (model, values) in enumerate(models.items()):
            for k, v in enumerate(values):
                for kind in ("swap", "peak", "noise"):
                    rows.append({"arm": arm, "model": model, "train_seed": seed, "window": f"w{k}", "recording": f"r{k // 2}",
                                 "perturbation": kind, "success": float(v), "topk_overlap": 1.0 - v, "attribution_spearman": 0.5 + 0.1 * v,
                                 "centroid_shift_abs_hz": 100.0 * v, "moved": bool(v), "snr_db": 40.0,
                                 "activation_rms_change": 0.1 * v})
    return pd.DataFrame(rows)


def test_summary_and_differences_are_means_over_windows_then_seeds():
    s = stability_summary(_synthetic()).set_index("arm")
    assert s.loc["OT+FT", "swap success mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert s.loc["OT+FT", "swap success sd"] == pytest.approx(np.std([0.5, 0.25], ddof=1))
    assert s.loc["AT-X", "swap success mean"] == pytest.approx(0.125) and s.loc["AT-X", "n_models"] == 2
    d = stability_differences(_synthetic(), n_boot=200).set_index(["perturbation", "measure"])
    assert d.loc[("swap", "success"), "effect"] == pytest.approx(0.125 - 0.375)
    assert d.loc[("swap", "success"), "ci_low"] <= -0.25 <= d.loc[("swap", "success"), "ci_high"]
    assert d.loc[("swap", "success"), "n_recordings"] == 2 and d.loc[("swap", "success"), "n_seeds_arm"] == 2
    md = stability_markdown(stability_summary(_synthetic()))
    assert "| AT-X | 2 | 4 | 0.12 ± 0.18 |" in md
    assert stability_differences(_synthetic()[lambda t: t["arm"] == "AT-X"]).empty
    md = stability_differences_markdown(stability_differences(_synthetic(), n_boot=200))
    assert "| AT-X | OT+FT | swap | success | -0.250 [" in md and "| 2 | 2 vs 2 |" in md
