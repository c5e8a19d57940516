"""The README's BirdNET figures are the stored results, regenerated here (no figure typed by hand)."""

import json
import re

import pandas as pd

from core.studies.sweep import read_table, summarize, summary_markdown
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
ASSETS = ROOT / "assets" / "birdnet"


def block(name: str) -> str:
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert m, f"README has no {name} block"
    return m.group(1)


def test_birdnet_sweep_table_is_the_stored_sweeps():
    tables = [read_table(ASSETS / f"sweep_margin_{m}.csv") for m in ("birdnet", "protopnet", "baseline")]
    for t in tables:
        assert set(t["objective"]) == {"output-margin"} and set(t["steps"]) == {10} and t["clip"].nunique() == 96
    assert block("birdnet-sweep") == summary_markdown(summarize(pd.concat(tables, ignore_index=True)))


def test_birdnet_clean_metrics_in_readme_are_the_stored_ones():
    m = json.loads((ASSETS / "metrics.json").read_text())["test"]
    for value in (m["window"]["cmap"], m["window"]["top1"], m["recording"]["cmap"], m["recording"]["top1"]):
        assert f"{value:.3f}" in README
    assert f"cmAP {m['window']['cmap']:.3f} ({m['window']['n']} windows of 3 s)" in README


def test_transfer_table_is_the_stored_tables():
    from core.studies.transfer import transfer_markdown, transfer_summary

    parts = []
    for eps in ("1e-4", "1e-3"):
        t = pd.read_csv(ASSETS / f"transfer_eps{eps}.csv")
        assert len(t) == 3 * 3 * 24 and set(t["source"]) == set(t["target"]) == {"birdnet", "protopnet", "baseline"}
        parts.append(transfer_markdown(transfer_summary(t), float(eps)))
    expected = parts[0] + "".join(p.split("\n", 2)[2] for p in parts[1:])
    assert block("birdnet-transfer") == expected


def test_embedding_table_is_the_stored_one():
    from core.studies.embeddings import embedding_markdown

    t = pd.read_csv(ROOT / "assets" / "embeddings" / "metrics_test_eps1e-4.csv")
    assert set(t["model"]) == {"baseline", "protopnet", "birdnet"} and set(t["points"]) == {"clean", "attacked"}
    assert (t["retrieval_roc_auc"] <= t["retrieval_roc_auc_all_pairs"] + 1e-9).all()  # same-recording pairs flattered it
    assert block("embeddings") == embedding_markdown(t)


def test_robustness_tables_are_the_stored_sweeps():
    from core.studies.report import minimal_eps_markdown, robustness_markdown, targeted_markdown

    rob = ROOT / "assets" / "robustness"
    labels = {"baseline": "baseline", "protopnet": "AudioProtoPNet"}
    whole = read_table(rob / "sweep_test_pgd10.csv")
    assert whole["clip"].nunique() == 278 and set(whole["success_definition"]) == {"top-1 species changed"}
    assert block("robustness-sweep") == robustness_markdown(whole, ["baseline", "protopnet"], labels)
    assert block("robustness-minimal-eps") == minimal_eps_markdown(pd.read_csv(rob / "minimal_eps_40_min_eps.csv"), labels)
    tables = {"output-targeted: make Great Tit appear, eps 1e-3": read_table(rob / "targeted_parmaj_add.csv"),
              "embedding-targeted: towards XC215926 (Sedge Warbler), eps 1e-3": read_table(rob / "targeted_embedding_XC215926.csv"),
              "prototype-suppress (k = 3), eps 1e-3": read_table(rob / "prototype_suppress_k3.csv")}
    assert block("robustness-targeted") == targeted_markdown(tables, labels)


ZOO_LABELS = {"baseline": "Baseline", "baseline_ato": "Baseline, AT-O (`baseline_ato`)", "baseline_ate": "Baseline, AT-E (`baseline_ate`)",
              "baseline_ft": "Baseline, OT+FT control (`baseline_ft`)", "protopnet": "AudioProtoPNet",
              "protopnet_ato": "AudioProtoPNet, AT-O (`protopnet_ato`)", "protopnet_ate": "AudioProtoPNet, AT-E (`protopnet_ate`)",
              "protopnet_ft": "AudioProtoPNet, OT+FT control (`protopnet_ft`)"}


def test_model_table_is_the_model_cards():
    from core.models.registry import read_model_card
    from core.studies.report import model_table_markdown

    cards = {n: read_model_card(n) for n in ZOO_LABELS}
    assert block("models") == model_table_markdown(cards, ZOO_LABELS) + "\n"


def test_prototype_band_table_is_the_card():
    from core.models.registry import read_model_card
    from core.studies.report import prototype_bands_markdown

    card = read_model_card("protopnet")
    assert block("prototype-bands") == prototype_bands_markdown(card["prototypes"], card["config"]["class_names"]) + "\n"


def test_comparison_table_is_the_shipped_comparison():
    from core.studies.compare import SHIPPED_DIR
    from core.studies.compare_store import CompareStore
    from core.studies.report import compare_markdown

    results = list(CompareStore(directory=SHIPPED_DIR, shipped=None).results())
    assert len(results) == 1, "assets/compare must hold exactly the shipped comparison"
    assert block("compare") == compare_markdown(results[0], ZOO_LABELS) + "\n"
    from core.studies.report import claims_markdown

    assert block("paper-check") == claims_markdown(results[0].claims) + "\n"


HEAD_LABELS = {"birdnet_protopnet": "AudioProtoPNet on BirdNET (`birdnet_protopnet`)",
               "birdnet_protopnet_ft": "same + 4 clean epochs, the control (`birdnet_protopnet_ft`)",
               "birdnet_protopnet_ato": "same + 4 AT-O epochs (`birdnet_protopnet_ato`)",
               "birdnet_protopnet_ate": "same + 4 AT-E epochs (`birdnet_protopnet_ate`)",
               "birdnet_linear": "linear head on BirdNET (`birdnet_linear`)",
               "birdnet": "BirdNET V2.4, its own classifier (9 species)",
               "protopnet": "AudioProtoPNet, small (own weights)", "baseline": "ConvNeXt baseline, small (own weights)"}


def head_cards():
    """Cards of the heads, BirdNET (its stored metrics) and the small models, and the reference's results."""
    from core.models.registry import CHECKPOINT_DIR, read_model_card

    birdnet = json.loads((ASSETS / "metrics.json").read_text())
    cards = {n: read_model_card(n) for n in ("birdnet_protopnet", "birdnet_linear")}
    cards["birdnet"] = {"metrics": {"test": birdnet["test"], "val": birdnet["val"]}}
    cards |= {n: read_model_card(n) for n in ("protopnet", "baseline")}
    return cards, json.loads((CHECKPOINT_DIR / "reference_logreg.json").read_text())


def test_head_tables_are_the_stored_results():
    from core.models.registry import read_model_card
    from core.studies.audit import load_audit
    from core.studies.report import audit_markdown, finetune_markdown, layer_study_markdown, model_table_markdown

    assert block("head-layers") == layer_study_markdown(pd.read_csv(ROOT / "assets" / "birdnet_heads" / "layers.csv")) + "\n"
    tuned = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "finetune.csv")
    assert block("head-finetune") == finetune_markdown(tuned) + "\n"
    layers = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "layers.csv").set_index(["layer", "head"])
    for r in tuned[tuned["backbone"] == "frozen"].itertuples():  # the frozen arm reproduces the layer study
        assert abs(layers.loc[(r.layer, r.head), "val_window_cmap"] - r.val_window_cmap) < 1e-3
    cards, ref = head_cards()
    assert block("head-models") == model_table_markdown(cards, HEAD_LABELS, reference=ref) + "\n"
    assert block("head-audit") == audit_markdown(load_audit(read_model_card("birdnet_protopnet"))) + "\n"
    top1 = {n: f"{c['metrics']['test']['recording']['top1']:.3f}" for n, c in cards.items() if n != "birdnet"}
    assert (f"recording top-1 {top1['birdnet_protopnet']} on the\nheld-out test split against {top1['protopnet']} for the small "
            f"AudioProtoPNet below and {ref['metrics']['test']['recording']['top1']:.3f} for the reference") in README


def test_seed_table_is_the_stored_arms():
    from core.training.seeds import arm_markdown

    t = pd.read_csv(ROOT / "assets" / "robustness" / "at_seeds.csv")
    assert set(t["arm"]) == {"AT-O", "OT+FT"} and t.groupby("arm")["train_seed"].nunique().min() == 3
    assert set(t["split_scheme"]) == {"recordist"}
    assert block("at-seeds") == arm_markdown(t) + "\n"


def test_no_bird_table_is_the_stored_check():
    from core.field.nobird import no_bird_markdown

    t = pd.read_csv(ROOT / "assets" / "analyze" / "no_bird.csv")
    assert {"baseline", "protopnet", "birdnet_protopnet", "birdnet_linear", "birdnet"} == set(t["model"])
    assert block("no-bird") == no_bird_markdown(t) + "\n"


def test_no_bird_negatives_row_is_the_shipped_head():
    from core.models.registry import read_model_card

    card = read_model_card("birdnet_protopnet")
    assert card["data"]["no_bird_negatives"]["synthetic"] == 256 and card["config"]["tuned_from"] == "BLOCK_3-4_ADD"
    m = card["metrics"]
    nb = pd.read_csv(ROOT / "assets" / "analyze" / "no_bird.csv").set_index(["model", "signal"]).loc["birdnet_protopnet"]
    row = (f"| with negatives (shipped) | {m['val']['window']['cmap']:.3f} | {m['val']['recording']['top1']:.3f} | "
           f"{m['test']['window']['cmap']:.3f} | {m['test']['recording']['top1']:.3f} | "
           f"{nb.loc['white noise, -30 dBFS', 'no_bird_rate']:.2f} / {nb.loc['pink noise, -50 dBFS', 'no_bird_rate']:.2f} | "
           f"{nb.loc['bird-free site noise (BirdNET-vetted)', 'no_bird_rate']:.2f} |")
    assert row in README


def test_threat_tables_are_the_stored_studies():
    from core.attacks.threat_studies import masking_summary, survival_summary
    from core.studies.report import masking_markdown, survival_markdown

    survival = pd.read_csv(ROOT / "assets" / "threats" / "survival.csv")
    assert {"birdnet", "birdnet_protopnet"} == set(survival["model"]) and set(survival["attack"]) == {"pgd", "eot-pgd"}
    assert {"none", "mp3-128", "playback-1m", "playback-10m"} == set(survival["transform"])
    assert block("threats-survival") == survival_markdown(survival_summary(survival)) + "\n"
    masking = pd.read_csv(ROOT / "assets" / "threats" / "masking.csv")
    assert block("threats-masking") == masking_markdown(masking_summary(masking)) + "\n"


def test_head_comparison_is_the_stored_one_for_the_shipped_heads():
    from core.models.registry import load_checkpoint
    from core.studies.compare_store import CompareStore
    from core.studies.embeddings import model_fingerprint
    from core.studies.report import compare_markdown

    results = list(CompareStore(directory=ROOT / "assets" / "birdnet_heads" / "compare", shipped=None).results())
    assert len(results) == 1
    r = results[0]
    assert r.fingerprints == {n: model_fingerprint(load_checkpoint(n, device="cpu")) for n in r.models}  # not stale
    assert not r.prototypes.empty and set(r.prototypes["model"]) == {"birdnet_protopnet"}
    assert block("head-compare") == compare_markdown(r, HEAD_LABELS) + "\n"


def test_head_adversarial_training_table_is_the_stored_worst_case_comparison():
    from core.models.registry import load_checkpoint
    from core.studies.compare_store import CompareStore
    from core.studies.embeddings import model_fingerprint
    from core.studies.report import compare_markdown

    results = list(CompareStore(directory=ROOT / "assets" / "birdnet_heads" / "compare_at", shipped=None).results())
    assert len(results) == 1
    r = results[0]
    assert sorted(r.models) == sorted(["birdnet_protopnet", "birdnet_protopnet_ft", "birdnet_protopnet_ato", "birdnet_protopnet_ate"])
    assert r.settings.strong and r.settings.split == "test"  # the worst case over attacks, on held-out recordings
    assert r.fingerprints == {n: model_fingerprint(load_checkpoint(n, device="cpu")) for n in r.models}  # not stale
    assert block("head-at") == compare_markdown(r, HEAD_LABELS) + "\n"
