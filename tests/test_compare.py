"""Model comparison (clean, shifted, attacked, prototype stability), its disk store, and the paper check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from core.attacks import PGD, OutputUntargeted
from core.attacks.sweep import run_sweep
from core.errors import ParameterError
from core.io.clips import dataset_clips
from core.io.data import Dataset
from core.metrics import cmap
from core.models.registry import build_model
from core.studies.compare import CompareResult, CompareSettings, model_summary, prototype_stability, run_compare
from core.studies.compare_store import CompareStore
from core.studies.paper_stats import fast_cmap, verdict
from core.studies.papercheck import paper_check
from tests.conftest import CLASSES, make_tiny_dataset, tiny_config

SETTINGS = CompareSettings(max_clips=6, epsilons=(1e-9, 1e-2), target_epsilons=(1e-2,), steps=2)


def _models():
    torch.manual_seed(0)
    proto = build_model(tiny_config("protopnet")).eval()
    torch.manual_seed(1)
    base = build_model(tiny_config("baseline")).eval()
    return {"tiny_proto": proto, "tiny_base": base}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = make_tiny_dataset(tmp_path_factory.mktemp("ds"))
    models = _models()
    ds = Dataset(root)
    stages = []
    result = run_compare(models, ds, SETTINGS, progress=lambda s, d, t: stages.append((s, d, t)))
    return result, models, ds, stages


@pytest.mark.slow
def test_compare_tables_cover_every_model_clip_and_condition(compared):
    result, models, ds, stages = compared
    n_shift = result.info["n_shift_clips"]
    n_attack = result.info["n_attack_clips"]
    assert n_attack == 6 and n_shift == 9  # 3 test recordings x 3 windows of 1 s
    assert len(result.shift) == 2 * 4 * n_shift
    assert set(result.shift["condition"]) == {"clean", "noise", "gain", "mixup"}
    for name in models:
        rob = result.robustness[(result.robustness["model"] == name) & (result.robustness["attack"] == "pgd")]
        assert len(rob) == n_attack * (1 + 2)  # clean + two eps
        attacked = rob[rob["budget_kind"] == "eps"]
        assert (attacked["linf"] <= attacked["eps"] * (1 + 1e-5) + 1e-7).all()
    assert {s for s, _, _ in stages} >= {"clips", "shift", "robustness", "targeted"}
    assert stages[-1][1] == stages[-1][2]  # the last stage finished


@pytest.mark.slow
def test_compare_rows_equal_an_independent_sweep(compared):
    # the clips are attacked in batches of 4; a clip attacked alone gets the same result (seeded per clip)
    result, models, ds, _ = compared
    c = models["tiny_base"].config
    clips = dataset_clips(ds, split="test", class_names=c.class_names, sample_rate=c.frontend.sample_rate, window_samples=c.window_samples, max_clips=6)
    i = 5
    attack = PGD(eps=0.0, steps=2, seed=0, objective=OutputUntargeted())
    res = run_sweep(attack, models["tiny_base"], torch.as_tensor(clips.waveforms[i : i + 1]), torch.as_tensor(clips.labels[i : i + 1]),
                    epsilons=[1e-2], masks=torch.as_tensor(clips.masks[i : i + 1]))
    row = result.robustness[(result.robustness["model"] == "tiny_base") & (result.robustness["attack"] == "pgd")
                            & (result.robustness["clip"] == clips.clip_ids[i])
                            & np.isclose(result.robustness["eps"], 1e-2)]
    np.testing.assert_allclose(row[[f"score:{k}" for k in CLASSES]].to_numpy()[0], res.scores[0, 0], atol=1e-5)
    assert bool(row["success"].iloc[0]) == bool(res.success[0, 0])


def test_targeted_attack_pulls_towards_another_species(compared):
    result, *_ = compared
    t = result.targeted
    species = {cid: cid[:3] for cid in t["clip"]}  # tiny dataset: recording ids start with the species code
    assert all(species[a] != b[:3] for a, b in zip(t["clip"], t["target_clip"]))
    attacked = t[t["budget_kind"] == "eps"]
    assert attacked["drs"].notna().all() and (attacked["drs"] >= 0).all()
    assert attacked["tars"].between(0, 1 + 1e-6).all()


def test_prototype_stability_moves_with_eps(compared):
    result, models, *_ = compared
    p = result.prototypes
    assert set(p["model"]) == {"tiny_proto"}  # the baseline has no prototypes
    n_proto = models["tiny_proto"].n_prototypes
    assert len(p) == (2 + 1) * n_proto  # two untargeted eps, one targeted
    untargeted = p[p["objective"] == "output-untargeted"]
    tiny = untargeted[untargeted["eps"] == 1e-9]["mean_abs_change"]
    big = untargeted[untargeted["eps"] == 1e-2]["mean_abs_change"]
    assert tiny.max() < 1e-4 < big.mean()
    stab = prototype_stability(result)
    assert set(stab["objective"]) == {"output-untargeted", "embedding-targeted"}
    summary = model_summary(result)
    assert summary.set_index("model").loc["tiny_proto", "prototype change PGD eps 1e-02"] > 0
    assert np.isnan(summary.set_index("model").loc["tiny_base", "prototype change PGD eps 1e-02"])


def test_store_round_trip_subset_and_stale_weights(compared, tmp_path):
    result, models, ds, _ = compared
    store = CompareStore(tmp_path / "store", shipped=None)
    where = store.save(result)
    assert (where / "meta.json").is_file()
    found = store.find(SETTINGS, result.fingerprints, ds)
    pd.testing.assert_frame_equal(found.robustness, result.robustness)
    one = store.find(SETTINGS, {"tiny_proto": result.fingerprints["tiny_proto"]}, ds)
    assert one.models == ["tiny_proto"] and set(one.robustness["model"]) == {"tiny_proto"}
    assert store.find(SETTINGS, {"tiny_proto": "0" * 16}, ds) is None  # other weights: never shown
    assert store.find(CompareSettings(max_clips=7), result.fingerprints, ds) is None  # other settings
    (where / "robustness.parquet").write_bytes(b"garbage")  # a damaged store is ignored, not a crash
    assert store.find(SETTINGS, result.fingerprints, ds) is None


def test_store_key_holds_the_data(compared, tmp_path):
    import shutil

    from core.io.journal import dataset_identity
    from core.studies.compare_store import _key

    result, models, ds, _ = compared
    store = CompareStore(tmp_path / "store", shipped=None)
    store.save(result)
    assert result.info["data"] == dataset_identity(ds)
    copy = Path(shutil.copytree(ds.root, tmp_path / "copy"))  # the same recordings elsewhere
    other = Path(shutil.copytree(ds.root, tmp_path / "other"))
    manifest = (other / "manifest.csv").read_text().splitlines()
    (other / "manifest.csv").write_text("\n".join(manifest[:-1]) + "\n")  # one recording fewer
    keys = {_key(SETTINGS, result.fingerprints, dataset_identity(d)) for d in (ds.root, copy, other)}
    assert len(keys) == 3  # every data directory its own key
    assert dataset_identity(copy)["content"] == dataset_identity(ds.root)["content"] != dataset_identity(other)["content"]
    assert store.find(SETTINGS, result.fingerprints, Dataset(other)) is None  # other data: never shown
    assert store.find(SETTINGS, result.fingerprints, copy) is not None  # the same content found elsewhere
    assert store.units_dir(SETTINGS, result.fingerprints, ds) != store.units_dir(SETTINGS, result.fingerprints, copy)
    legacy = CompareResult(settings=result.settings, fingerprints=result.fingerprints, shift=result.shift, robustness=result.robustness,
                           targeted=result.targeted, prototypes=result.prototypes, info={"dataset": str(ds.root)})
    old = CompareStore(tmp_path / "old", shipped=None)
    old.save(legacy)  # stored before the data identity: matched by its directory alone
    assert old.find(SETTINGS, result.fingerprints, ds) is not None and old.find(SETTINGS, result.fingerprints, copy) is None


@pytest.mark.slow
def test_an_interrupted_comparison_resumes_to_the_same_tables(compared, tmp_path, monkeypatch):
    import core.attacks.sweep as engine
    import core.studies.shift as shift_module

    result, _, ds, _ = compared
    models = _models()
    calls = {"sweep": 0, "shift": 0}
    sweep, shift = engine.run_sweep, shift_module.shift_scores

    def counting(name, fn):
        def wrapped(*a, **k):
            calls[name] += 1
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(engine, "run_sweep", counting("sweep", sweep))
    monkeypatch.setattr(shift_module, "shift_scores", counting("shift", shift))
    polls = []
    with pytest.raises(InterruptedError):  # stopped before the 4th of 8 attack batches (2 models x 2 objectives x 2 batches)
        run_compare(models, ds, SETTINGS, units_dir=tmp_path / "units", cancel=lambda: polls.append(1) or len(polls) > 3)
    assert calls == {"sweep": 3, "shift": 1}
    calls.update(sweep=0, shift=0)
    resumed = run_compare(models, ds, SETTINGS, units_dir=tmp_path / "units")
    assert calls == {"sweep": 8 - 3, "shift": 0}  # only what was missing
    for name in CompareResult.TABLES:
        pd.testing.assert_frame_equal(getattr(resumed, name), getattr(result, name))
    with pytest.raises(ParameterError, match="another comparison.*settings"):
        run_compare(models, ds, CompareSettings(max_clips=4, epsilons=(1e-2,), target_epsilons=(1e-2,), steps=2), units_dir=tmp_path / "units")


def test_compare_cancel_and_bad_input(tiny_dataset):
    ds = Dataset(tiny_dataset)
    with pytest.raises(InterruptedError):
        run_compare(_models(), ds, SETTINGS, cancel=lambda: True)
    with pytest.raises(ParameterError, match="no models"):
        run_compare({}, ds, SETTINGS)
    for bad in ({"max_clips": 1}, {"epsilons": ()}, {"epsilons": (2.0,)}, {"split": "dev"}, {"steps": 0}, {"lam": 2.0}):
        with pytest.raises(ParameterError):
            CompareSettings(**bad)


# -- paper check -------------------------------------------------------------------------------


def test_fast_cmap_matches_scikit_learn_with_ties_and_duplicates():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(2, 40))
        s = rng.random((n, 5)).round(int(rng.integers(1, 3)))  # coarse scores: many ties
        y = (rng.random((n, 5)) < 0.3).astype(float)
        idx = rng.integers(n, size=n)  # a bootstrap resample: duplicated rows
        a, b = fast_cmap(s[idx], y[idx]), cmap(s[idx], y[idx])
        assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b, abs=1e-12)


def test_verdict_rules():
    assert verdict(0.1, 5.0) == "reproduced"
    assert verdict(-5.0, -0.1) == "not reproduced"
    assert verdict(-2.0, 3.0) == "inconclusive"
    assert verdict(-2.0, 3.0, paper_effect=10.5) == "not reproduced"  # the paper's size is ruled out
    assert verdict(-2.0, 12.0, paper_effect=10.5) == "inconclusive"
    assert verdict(float("nan"), 1.0) == "inconclusive"


def _zoo_result(better: str, n_rec: int = 30, seed: int = 0) -> CompareResult:
    """Synthetic tables for the six zoo names: the ``better`` recipe ranks clips well, the others at random."""
    rng = np.random.default_rng(seed)
    clips = [f"XC{r}@{w * 5}s" for r in range(n_rec) for w in range(2)]
    y = np.zeros((len(clips), 3))
    y[np.arange(len(clips)), np.arange(len(clips)) // 2 % 3] = 1
    names = {"OT": ["baseline", "protopnet"], "AT-O": ["baseline_ato", "protopnet_ato"], "AT-E": ["baseline_ate", "protopnet_ate"]}

    def scores(recipe):
        noise = rng.random(y.shape)
        return 0.5 * noise + (0.5 * y if recipe == better else 0.5 * rng.random(y.shape))

    def tidy(extra):
        parts = []
        for recipe, ms in names.items():
            for m in ms:
                s = scores(recipe)
                df = pd.DataFrame({"model": m, "clip": clips, **extra(recipe)})
                parts.append(pd.concat([df, pd.DataFrame({f"score:{c}": s[:, k] for k, c in enumerate("abc")}),
                                        pd.DataFrame({f"label:{c}": y[:, k] for k, c in enumerate("abc")})], axis=1))
        return pd.concat(parts, ignore_index=True)

    shift = pd.concat([tidy(lambda r, c=c: {"condition": c, "setting": ""}) for c in ("clean", "noise")], ignore_index=True)
    rob = pd.concat([tidy(lambda r, e=e: {"budget_kind": "eps", "eps": e}) for e in (1e-4, 1e-3)], ignore_index=True)
    tgt = tidy(lambda r: {"budget_kind": "eps", "eps": 1e-3, "tars": 0.8 if r == better else 0.3})
    settings = CompareSettings(max_clips=len(clips), epsilons=(1e-4, 1e-3), target_epsilons=(1e-3,))
    return CompareResult(settings=settings, fingerprints={m: "f" for ms in names.values() for m in ms}, shift=shift,
                         robustness=rob, targeted=tgt, prototypes=pd.DataFrame())


@pytest.mark.slow
def test_paper_check_reproduces_a_real_effect_and_rejects_the_opposite():
    good = paper_check(_zoo_result("AT-O"), n_boot=200).set_index("key")
    assert set(good.index) == {"clean", "shift", "robust", "robust_big", "ato_vs_ate", "ato_vs_ate_robust", "tars"}
    assert (good["direction"] == "claimed").all(), good[["ours", "ci_low", "ci_high", "direction"]]
    assert good["verdict"].str.contains("not tested under comparable conditions|our additional check").all()
    assert good.loc["tars", "ours"] == pytest.approx(0.5)
    assert (good["ci_low"] <= good["ours"]).all() and (good["ours"] <= good["ci_high"]).all()
    assert good["n_recordings"].eq(30).all() and good.loc["clean", "n_clips"] == 60
    bad = paper_check(_zoo_result("OT"), n_boot=200).set_index("key")
    for key in ("clean", "shift", "robust", "robust_big", "tars"):
        assert bad.loc[key, "direction"] == "opposite", key
    ate = paper_check(_zoo_result("AT-E"), n_boot=200).set_index("key")
    assert ate.loc["ato_vs_ate", "direction"] == "opposite"


def test_paper_check_is_deterministic_and_skips_missing_models():
    r = _zoo_result("AT-O")
    a, b = paper_check(r, n_boot=100, seed=3), paper_check(r, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(a, b)
    partial = paper_check(r.subset(["baseline", "baseline_ato"]), n_boot=100)
    assert set(partial["key"]) == {"clean", "shift", "robust", "robust_big"}  # no AT-E model, no AudioProtoPNet pair
    with pytest.raises(ParameterError):
        paper_check(r, n_boot=10)


def test_model_recipe_from_zoo_card_or_unknown(tmp_path):
    from core.models.registry import save_checkpoint
    from core.studies.compare import model_recipe

    assert model_recipe("protopnet_ate") == ("AudioProtoPNet", "AT-E")
    path = save_checkpoint(_models()["tiny_base"], tmp_path / "m.safetensors", {"train_config": {"adv": "at-o"}})
    assert model_recipe(str(path)) == ("ConvNeXt baseline", "AT-O")  # read from the card beside the weights
    assert model_recipe("no-such-checkpoint") == ("unknown", "unknown")


def test_summary_keeps_eps_that_round_alike_apart(compared):
    from dataclasses import replace

    result, *_ = compared
    rob = result.robustness.copy()
    rob.loc[np.isclose(rob["eps"], 1e-9), ["eps", "budget"]] = 1.5e-2  # 1.5e-2 and 2e-2 both print as 2e-02
    rob.loc[np.isclose(rob["eps"], 1e-2), ["eps", "budget"]] = 2e-2
    moved = replace(result, robustness=rob, prototypes=result.prototypes.iloc[0:0], settings=replace(result.settings, epsilons=(1.5e-2, 2e-2)))
    cols = [c for c in model_summary(moved).columns if c.startswith("cmAP PGD")]
    assert cols == ["cmAP PGD eps 0.015", "cmAP PGD eps 0.02"]


@pytest.mark.slow
def test_compare_models_with_other_windows_on_the_same_recordings(tiny_dataset):
    """A model with another rate and window (as BirdNET beside the 32 kHz models) gets its own windows of the same recordings."""
    from core.models.frontend import FrontendConfig
    from core.models.registry import ModelConfig
    from tests.conftest import TINY_BACKBONE

    low = FrontendConfig(sample_rate=8_000, n_fft=256, hop_length=128, n_mels=16, f_min=50.0, f_max=4_000.0)
    torch.manual_seed(2)
    other = build_model(ModelConfig(arch="baseline", class_names=CLASSES, frontend=low, backbone=TINY_BACKBONE, clip_seconds=0.5)).eval()
    models = {**_models(), "tiny_8k": other}
    result = run_compare(models, Dataset(tiny_dataset), SETTINGS)
    windows = result.info["windows"]
    assert windows["16000 Hz, 1 s"]["models"] == ["tiny_proto", "tiny_base"]
    assert windows["8000 Hz, 0.5 s"] == {"models": ["tiny_8k"], "n_shift_clips": 15, "n_attack_clips": 6}  # 3 recordings x 5 windows
    rob = result.robustness
    assert set(rob["model"]) == set(models)
    same = {m: set(rob.loc[rob["model"] == m, "clip"]) for m in models}
    assert same["tiny_proto"] == same["tiny_base"] != same["tiny_8k"]  # clip ids carry each model's own window starts
    recs = {m: {c.split("@")[0] for c in same[m]} for m in models}
    assert recs["tiny_8k"] == recs["tiny_base"] and len(recs["tiny_base"]) == 3  # the same three test recordings
    assert set(result.shift["model"]) == set(models)
    with pytest.raises(ParameterError, match="classes"):
        bad = build_model(ModelConfig(arch="baseline", class_names=("x", "y", "z"), frontend=low, backbone=TINY_BACKBONE, clip_seconds=0.5))
        run_compare({**_models(), "bad": bad}, Dataset(tiny_dataset), SETTINGS)


def test_time_estimate_scales_from_a_stored_run_of_the_same_kind():
    from types import SimpleNamespace

    from core.studies.compare import SECONDS_PER_UNIT, CompareSettings, estimate_minutes

    pgd = CompareSettings()
    stored = SimpleNamespace(settings=pgd, seconds=1200.0, models=list("abcdefgh"), info={"device": "cpu"})
    minutes, basis = estimate_minutes(CompareSettings(max_clips=24), 4, [stored])
    assert minutes == pytest.approx(1200 / 4 / 60) and "scaled from a stored run of 20 min" in basis  # half the models, half the clips
    strong = CompareSettings(strong=True)
    minutes, basis = estimate_minutes(strong, 8, [stored])  # a PGD-only run says nothing about a worst case
    assert "rough" in basis and minutes == pytest.approx(SECONDS_PER_UNIT * 8 * 48 * 7 * 10 * 4 / 60)
