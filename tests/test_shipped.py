"""Shipped checkpoints reproduce the test metrics recorded in their model cards and beat the reference;
the shipped comparison of the zoo belongs to their weights and reproduces."""

import numpy as np
import pytest
import torch

from core.io.data import Dataset, build_windows, ids_sha256
from core.models.registry import list_checkpoints, load_checkpoint, read_model_card
from core.studies.compare import ZOO, CompareSettings, card_robustness
from core.studies.compare_store import CompareStore
from core.studies.embeddings import model_fingerprint
from core.training.train import evaluate

SHIPPED = list(ZOO)
ADVERSARIAL = [n for n in ZOO if ZOO[n][1] in ("AT-O", "AT-E")]
CONTROLS = [n for n in ZOO if ZOO[n][1] == "OT+FT"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_card(name, data_dir):
    assert name in list_checkpoints()
    model = load_checkpoint(name, device="cpu")
    card = read_model_card(name)
    ds = Dataset(data_dir)
    c = model.config
    assert list(c.class_names) == ds.class_names
    # trained and measured on the recordist-disjoint split of today's code (the hash pins its test recordings)
    assert card["data"]["split_scheme"] == ds.split_scheme == "recordist"
    assert card["data"]["test_recordings_sha256"] == ids_sha256(r.recording_id for r in ds.split("test"))
    w = build_windows(ds, ds.split("test"), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    got = evaluate(model, w)
    want = card["metrics"]["test"]
    for level in ("window", "recording"):
        assert got[level]["n"] == want[level]["n"]
        for key in ("cmap", "roc_auc", "top1"):
            assert got[level][key] == pytest.approx(want[level][key], abs=0.01), (level, key)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_beats_reference_on_cmap(name):
    card = read_model_card(name)
    ref = card["reference"]["metrics"]["test"]["window"]
    mine = card["metrics"]["test"]["window"]
    assert mine["cmap"] > ref["cmap"] + 0.05


#: Measured on the recordist-disjoint split: these AudioProtoPNets rank windows worse than the reference across
#: species (window ROC-AUC 0.795 / 0.770 / 0.779 against 0.807). A known, reported shortfall (docs/results.md), expected to be
#: fixed by the pretrained backbone of issue 13; strict, so the marker must go when they pass.
ROC_AUC_BELOW_REFERENCE = ("protopnet", "protopnet_ato", "protopnet_ate")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason="window ROC-AUC below the reference"))
                                  if n in ROC_AUC_BELOW_REFERENCE else n for n in SHIPPED])
def test_shipped_checkpoint_beats_reference_on_roc_auc(name):
    card = read_model_card(name)
    assert card["metrics"]["test"]["window"]["roc_auc"] > card["reference"]["metrics"]["test"]["window"]["roc_auc"]


def test_protopnet_card_has_provenance():
    card = read_model_card("protopnet")
    protos = card["prototypes"]
    k = card["config"]["prototypes_per_class"]
    assert len(protos) == k * len(card["config"]["class_names"])
    assert all(p["t_end_s"] > p["t_start_s"] and p["f_high_hz"] > p["f_low_hz"] for p in protos)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_adversarial_cards_record_their_recipe(name):
    card = read_model_card(name)
    tc = card["train_config"]
    assert tc["adv"] == {"AT-O": "at-o", "AT-E": "at-e"}[ZOO[name][1]]
    assert tc["adv_eps"] == pytest.approx(1e-4) and tc["adv_steps"] == 1
    assert tc["adv_random_start"] is True  # FGSM-RS (Wong et al. 2020), not plain FGSM
    assert card["init"] == name.rsplit("_", 1)[0]  # fine-tuned from the ordinarily trained model
    assert card["command"].startswith("python -m core train") and f"--adv {tc['adv']}" in card["command"]
    assert card["train_seconds"] < 45 * 60  # each trains here in under 45 minutes
    assert "adv_term" in card["history"][0]


@pytest.mark.parametrize("name", CONTROLS)
def test_control_arm_matches_its_at_models_but_the_adversary(name):
    card, tc = read_model_card(name), read_model_card(name)["train_config"]
    at = read_model_card(name.replace("_ft", "_ato"))
    assert tc["adv"] == "none" and card["init"] == at["init"]
    for key in ("epochs", "lr", "seed", "batch_size", "warm_epochs", "loss"):
        assert tc[key] == at["train_config"][key], key


@pytest.fixture(scope="module")
def shipped_comparison():
    models = {n: load_checkpoint(n, device="cpu") for n in SHIPPED}
    store, fingerprints = CompareStore(directory="/nonexistent-birdshield-cache"), {n: model_fingerprint(m) for n, m in models.items()}
    # the worst case with AutoAttack's APGD legs, else the one made before they existed (apgd_steps 0; issue 24)
    result = store.find(CompareSettings(strong=True), fingerprints) or store.find(CompareSettings(strong=True, apgd_steps=0), fingerprints)
    assert result is not None, ("assets/compare holds no comparison for the current weights: "
                                "run python -m core compare --strong --out assets/compare --update-cards")
    return result, models


def test_shipped_comparison_names_its_data_by_content_not_by_place(shipped_comparison):
    # found on any machine: CI checks out the data elsewhere (/check/work/shared/...), so a match on the
    # directory alone would hide the shipped comparison there (CI of stop 28)
    from core.io.data import find_data_dir
    from core.io.journal import dataset_identity
    from core.studies.compare_store import same_data

    result, _ = shipped_comparison
    here = dataset_identity(find_data_dir())
    assert result.info["data"]["content"] == here["content"]
    assert same_data(result, {"root": "/elsewhere/xc9", "content": here["content"]})
    assert not same_data(result, {"root": here["root"], "content": "0" * 16})


def test_shipped_comparison_has_every_table_and_the_paper_check(shipped_comparison):
    result, _ = shipped_comparison
    assert result.models == SHIPPED
    assert set(result.shift["condition"]) == {"clean", "noise", "gain", "mixup"}
    assert result.robustness["clip"].nunique() == CompareSettings().max_clips
    assert set(result.prototypes["model"]) == {"protopnet", "protopnet_ato", "protopnet_ate", "protopnet_ft"}
    assert result.claims is not None and len(result.claims) == 7
    assert set(result.claims["direction"]) <= {"claimed", "opposite", "inconclusive"}
    assert set(result.robustness["attack"]) == {"pgd", "transfer", "worst-case"}  # the shipped comparison is the worst case
    claims = result.claims.set_index("key")
    assert claims.loc["robust", "unit"] == "top-1 kept" and "worst case over PGD-10" in claims.loc["robust", "measure"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_model_card_robustness_comes_from_the_shipped_comparison(shipped_comparison, name):
    result, _ = shipped_comparison
    assert read_model_card(name)["robustness"] == card_robustness(result, name)  # JSON floats round-trip exactly


@pytest.mark.slow
@pytest.mark.parametrize("name", ["baseline_ato", "protopnet_ate"])
def test_shipped_comparison_reproduces_on_a_few_clips(shipped_comparison, name, data_dir):
    from core.attacks import PGD, OutputUntargeted
    from core.attacks.sweep import run_sweep
    from core.io.clips import dataset_clips

    result, models = shipped_comparison
    model = models[name]
    c = model.config
    s = result.settings
    clips = dataset_clips(Dataset(data_dir), split=s.split, class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                          window_samples=c.window_samples, max_clips=s.max_clips)
    idx = [0, len(clips) // 2, len(clips) - 1]
    attack = PGD(eps=0.0, steps=s.steps, seed=s.seed, objective=OutputUntargeted())
    res = run_sweep(attack, model, torch.as_tensor(clips.waveforms[idx]), torch.as_tensor(clips.labels[idx]),
                    epsilons=[1e-4], masks=torch.as_tensor(clips.masks[idx]))
    rob = result.robustness
    for j, i in enumerate(idx):
        row = rob[(rob["model"] == name) & (rob["attack"] == "pgd") & (rob["clip"] == clips.clip_ids[i]) & np.isclose(rob["eps"], 1e-4)]
        assert len(row) == 1
        np.testing.assert_allclose(row[[f"score:{k}" for k in c.class_names]].to_numpy()[0], res.scores[0, j], atol=2e-3)
