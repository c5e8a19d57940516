"""The documents: docs/'s figures are the stored results, regenerated here (no figure typed by hand), and the
README is a short user guide whose commands, links and page list match the code."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from core.studies.sweep import read_table, summarize, summary_markdown
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
RESULTS, MODELS = DOCS["results.md"], DOCS["models.md"]
ASSETS = ROOT / "assets" / "birdnet"

#: Marked blocks that no test here regenerates (the throughput benchmark's figures need the machine they ran on).
UNCHECKED_BLOCKS = {"throughput"}


def block(name: str) -> str:
    """The text between ``<!-- name:start -->`` and ``<!-- name:end -->``, found in exactly one file of docs/."""
    found = [m.group(1) for text in DOCS.values() for m in re.finditer(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.S)]
    assert len(found) == 1, f"docs/ should hold the {name} block exactly once, found {len(found)}"
    return found[0]


def test_birdnet_sweep_table_is_the_stored_sweeps():
    tables = [read_table(ASSETS / f"sweep_margin_{m}.csv") for m in ("birdnet", "protopnet", "baseline")]
    for t in tables:
        assert set(t["objective"]) == {"output-margin"} and set(t["steps"]) == {10} and t["clip"].nunique() == 96
    assert block("birdnet-sweep") == summary_markdown(summarize(pd.concat(tables, ignore_index=True)))


def test_birdnet_clean_metrics_in_docs_are_the_stored_ones():
    m = json.loads((ASSETS / "metrics.json").read_text())["test"]
    for value in (m["window"]["cmap"], m["window"]["top1"], m["recording"]["cmap"], m["recording"]["top1"]):
        assert f"{value:.3f}" in RESULTS
    assert f"cmAP {m['window']['cmap']:.3f} ({m['window']['n']} windows of 3 s)" in RESULTS


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


@pytest.mark.slow
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
            f"AudioProtoPNet below and {ref['metrics']['test']['recording']['top1']:.3f} for the reference") in MODELS



def test_cutoff_table_is_the_stored_one():
    from core.studies.leakage import cutoff_markdown

    t = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "cutoff.csv", keep_default_na=False, na_values=[""])
    assert block("cutoff") == cutoff_markdown(t)
    rows = t.set_index(["model", "recordings", "side"])

    def top1(model, scope, side):
        r = rows.loc[(model, scope, side)]
        return f"{r['recording_top1']:.3f} ({int(r['recording_correct'])} of {int(r['n_recordings'])})"

    # the prose's headline figures are the table's
    assert (f"top-1 of {top1('birdnet_protopnet', 'test', 'all')} is {top1('birdnet_protopnet', 'test', 'pre')} up to the cut-off "
            f"and {top1('birdnet_protopnet', 'test', 'post')} after it") in re.sub(r"\s+", " ", RESULTS)
    assert (f"recording top-1 {top1('birdnet', 'all', 'pre')} up to the cut-off, {top1('birdnet', 'all', 'post')} after it"
            in re.sub(r"\s+", " ", RESULTS))


def test_cutoff_recordings_table_is_the_dataset(data_dir):
    from core.io.data import Dataset
    from core.studies.leakage import cutoff_counts, cutoff_counts_markdown

    ds = Dataset(data_dir)
    names = {code: row["english_name"] for code, row in ds.species.items()}
    assert block("cutoff-recordings") == cutoff_counts_markdown(cutoff_counts(ds), names)

def test_seed_table_is_the_stored_arms():
    from core.training.seeds import arm_markdown

    t = pd.read_csv(ROOT / "assets" / "robustness" / "at_seeds.csv")
    assert set(t["arm"]) == {"AT-O", "OT+FT"} and t.groupby("arm")["train_seed"].nunique().min() == 3
    assert set(t["split_scheme"]) == {"recordist"}
    assert block("at-seeds") == arm_markdown(t) + "\n"


def no_bird_top1() -> dict:
    """Test recording top-1 of every model of the no-bird table (cards; BirdNET's stored metrics)."""
    from core.models.registry import read_model_card

    top1 = {n: read_model_card(n)["metrics"]["test"]["recording"]["top1"]
            for n in ("baseline", "protopnet", "birdnet_protopnet", "birdnet_protopnet_gated", "birdnet_linear")}
    return top1 | {"birdnet": json.loads((ASSETS / "metrics.json").read_text())["test"]["recording"]["top1"]}


def test_no_bird_table_is_the_stored_check():
    from core.field.nobird import held_out_summary, no_bird_markdown

    t = pd.read_csv(ROOT / "assets" / "analyze" / "no_bird.csv")
    assert {"baseline", "protopnet", "birdnet_protopnet", "birdnet_protopnet_gated", "birdnet_linear", "birdnet"} == set(t["model"])
    assert block("no-bird") == no_bird_markdown(t, top1=no_bird_top1()) + "\n"
    held = held_out_summary(t).set_index("model")
    assert (held["windows"] == 105).all()
    from core.models.registry import read_model_card

    for name in set(t["model"]) - {"birdnet"}:  # every card carries its pooled held-out figures (record_in_cards)
        card = read_model_card(name)["no_bird"]
        assert (card["false_windows"], card["held_out_windows"]) == (held.loc[name, "false_windows"], 105)
        assert card["false_per_hour"] == pytest.approx(held.loc[name, "false_per_hour"])
    gated, ungated = held.loc["birdnet_protopnet_gated"], held.loc["birdnet_protopnet"]
    assert (f"{int(gated.false_windows)} false windows of 105 ({100 * gated.false_rate:.1f} %), against "
            f"{int(ungated.false_windows)} ({100 * ungated.false_rate:.1f} %) without the gate") in " ".join(RESULTS.split())


def test_no_bird_negatives_row_is_the_shipped_head():
    from core.models.registry import read_model_card

    card = read_model_card("birdnet_protopnet")
    assert card["data"]["no_bird_negatives"]["synthetic"] == 256 and card["config"]["tuned_from"] == "BLOCK_3-4_ADD"
    m = card["metrics"]
    nb = pd.read_csv(ROOT / "assets" / "analyze" / "no_bird.csv").set_index(["model", "signal"]).loc["birdnet_protopnet"]
    row = (f"| with negatives (shipped) | {m['val']['window']['cmap']:.3f} | {m['val']['recording']['top1']:.3f} | "
           f"{m['test']['window']['cmap']:.3f} | {m['test']['recording']['top1']:.3f} | "
           f"{nb.loc['white noise, -30 dBFS', 'no_bird_rate']:.2f} / {nb.loc['pink noise, -50 dBFS', 'no_bird_rate']:.2f} | "
           f"{nb.loc['bird-free site noise, test split', 'no_bird_rate']:.2f} |")
    assert row in RESULTS


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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------- the documents' shape

#: What .ci/run runs last: the test command, which the README must show verbatim.
CI_TEST_COMMAND = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln.strip()][-1]
DASHBOARD_COMMAND = "python -m pip install -r requirements.txt && streamlit run app.py"


def fenced(text: str, lang: str = "bash") -> list[str]:
    """The lines of every fenced code block of a language."""
    return [ln for body in re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M) for ln in body.splitlines()]


def test_guided_demo_table_is_the_stored_record():
    from core.studies.demo import demo_markdown, read_demo_record

    assert block("guided-demo") == demo_markdown(read_demo_record())


def test_every_marked_block_is_regenerated_by_a_test():
    prose = [re.sub(r"`[^`\n]*`", "", text) for text in DOCS.values()]  # not the markers quoted in the text
    marked = {m for text in prose for m in re.findall(r"<!-- ([\w-]+):start -->", text)}
    ends = {m for text in prose for m in re.findall(r"<!-- ([\w-]+):end -->", text)}
    assert marked == ends, f"blocks without a matching start/end: {marked ^ ends}"
    checked = set(re.findall(r'block\("([\w-]+)"\)', (ROOT / "tests" / "test_docs.py").read_text()))
    assert marked - UNCHECKED_BLOCKS == checked, f"marked but not checked: {marked - UNCHECKED_BLOCKS - checked}; checked but gone: {checked - marked}"
    assert not re.search(r"<!-- [\w-]+:start -->", README), "the README holds no measured table: they live in docs/"


def test_readme_is_a_short_guide_with_the_two_commands():
    lines = README.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines (at most 300: results and methods belong in docs/)"
    assert CI_TEST_COMMAND == "python -m pip install -r requirements-dev.txt && python -m pytest -q"
    commands = fenced(README)
    assert DASHBOARD_COMMAND in commands
    assert CI_TEST_COMMAND in commands  # verbatim what CI runs
    for doc in ("docs/results.md", "docs/methods.md", "docs/models.md"):
        assert f"]({doc}" in README, f"the README does not link {doc}"


def test_readme_names_every_dashboard_page():
    for page in sorted((ROOT / "pages").glob("*.py")):
        stem = page.stem.split("_", 1)[1] if page.stem.split("_", 1)[0].isdigit() else page.stem
        assert f"**{stem.replace('_', ' ')}**" in README, f"the README's tour misses the page {page.name}"


def shell_commands(text: str) -> list[str]:
    """The shell commands of a document: fenced bash lines (comments dropped, continuations joined) and inline code."""
    logical, pending = [], ""
    for ln in fenced(text):
        ln = ln.split(" # ")[0].strip()
        if ln.startswith("#"):
            continue
        pending += " " + ln.rstrip("\\")
        if not ln.endswith("\\"):
            logical.append(pending)
            pending = ""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return logical + re.findall(r"`(python -m core [^`]+)`", prose)


def cli_options() -> dict[str, set[str]]:
    """Every subcommand of ``python -m core`` and its option strings, from the parser itself."""
    import argparse

    from core.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: set(parser._option_string_actions) for name, parser in sub.choices.items()}


def test_cli_commands_in_the_documents_use_real_subcommands_and_options():
    readme_calls = [m for ln in shell_commands(README) for m in re.findall(r"python -m core ([a-z][a-z-]*)(.*)", ln)]
    assert {"predict", "analyze", "sweep"} <= {c for c, _ in readme_calls}  # the README's three examples
    calls = readme_calls + [m for text in DOCS.values() for ln in shell_commands(text) for m in re.findall(r"python -m core ([a-z][a-z-]*)(.*)", ln)]
    known = cli_options()
    assert len(calls) >= 40 and {"train", "train-head", "finetune-head", "compare"} <= {c for c, _ in calls}
    for sub, rest in calls:
        assert sub in known, f"unknown subcommand in README/docs: python -m core {sub}"
        for option in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest):
            assert option in known[sub], f"python -m core {sub} has no {option}"


def test_every_subcommand_the_documents_name_exists():
    named = {m for text in [README, *DOCS.values()] for m in re.findall(r"python -m core ([a-z][a-z-]*)", text)}
    assert named and named <= set(cli_options()), f"unknown subcommands in README/docs: {sorted(named - set(cli_options()))}"
    assert "python -m core --help" in README


def test_every_shipped_checkpoint_command_is_in_the_models_doc():
    cards = sorted((ROOT / "checkpoints").glob("*.json"))
    commands = {c.stem: json.loads(c.read_text()).get("command") for c in cards}
    assert commands.get("birdnet_protopnet"), "the default model's card records no command"
    for name, command in commands.items():
        if command:
            assert command in MODELS, f"docs/models.md does not show how {name} was trained: {command}"


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose, re.M):
        s = slug(heading)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def test_slug_follows_github():
    assert slug("AudioProtoPNet on BirdNET's backbone") == "audioprotopnet-on-birdnets-backbone"
    assert slug("Realistic threats: MP3, a loudspeaker, and what the ear masks") == "realistic-threats-mp3-a-loudspeaker-and-what-the-ear-masks"
    assert slug("Measured: PGD-10, L-inf, output space, the whole test split (278 windows, 48 recordings)") == (
        "measured-pgd-10-l-inf-output-space-the-whole-test-split-278-windows-48-recordings")
    assert slug("BirdNET V2.4") == "birdnet-v24"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_every_relative_link_points_to_a_file_and_anchor():
    files = {ROOT / "README.md": README} | {ROOT / "docs" / n: t for n, t in DOCS.items()}
    checked = 0
    for path, text in files.items():
        prose = re.sub(r"`[^`\n]*`", "", re.sub(r"^```.*?^```", "", text, flags=re.S | re.M))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here (no network)
                continue
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            assert dest.exists(), f"{path.name}: link to a missing file: {target}"
            if anchor:
                assert anchor in anchors(dest.read_text()), f"{path.name}: link to a missing anchor: {target}"
            checked += 1
    assert checked >= 20  # the documents cross-link; a parser that finds nothing must not pass


def test_readme_python_example_uses_the_public_api():
    if "api" not in (ROOT / "core" / "__init__.py").read_text():
        pytest.skip("core does not re-export core/api.py yet (issue 23)")
    import core

    code = "\n".join(fenced(README, "python"))
    used = set(re.findall(r"\bcore\.([a-z_A-Z]+)", code)) - {"errors"}
    assert {"load_model", "load_audio", "predict", "attack", "worst_case", "explain", "analyze"} <= used
    missing = sorted(n for n in used if not hasattr(core, n))
    assert not missing, f"the README's Python example uses names core does not export: {missing}"
    assert core.DEFAULT_MODEL == "birdnet_protopnet_gated"


def test_every_module_and_path_the_documents_name_exists():
    """After a move (core/ in wings, issue 23) no document may point at the old place of a module, file or name."""
    import importlib

    text = "\n".join([README, *DOCS.values()])
    # paths inside the repository, not templates such as audit_<arm>.csv
    paths = set(re.findall(r"(?<![\w./-])((?:assets|bench|tests|core|pages|ui|\.ci|\.streamlit)/[\w./-]*[\w/])(?![\w./<-])", text))
    assert len(paths) >= 40
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README/docs name paths that do not exist: {missing}"
    names = set(re.findall(r"\bcore\.[A-Za-z_][\w.]*[A-Za-z_]", text))
    assert len(names) >= 15
    for name in sorted(names):
        parts = name.split(".")
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                continue
            for attr in parts[i:]:
                assert hasattr(obj, attr), f"README/docs name {name}, but {attr} is not in {obj!r}"
                obj = getattr(obj, attr)
            break


def test_open_set_seeds_table_is_the_stored_one_and_names_the_shipped_heads():
    from core.field.nobird import held_out_summary
    from core.field.open_set_seeds import best_recipe, recipe_markdown
    from core.models.defaults import DEFAULT_MODEL
    from core.models.registry import read_model_card

    t = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "open_set_seeds.csv")
    assert t.groupby("recipe")["train_seed"].apply(sorted).map(list).eq([[0, 1, 2]] * 5).all()
    assert set(t["split_scheme"]) == {read_model_card(DEFAULT_MODEL)["data"]["split_scheme"]}
    assert block("open-set-seeds") == recipe_markdown(t) + "\n"
    # seed 0 of the shipped recipe is the shipped pair: its figures are theirs (cards and the no-bird check)
    held = held_out_summary(pd.read_csv(ROOT / "assets" / "analyze" / "no_bird.csv")).set_index("model")
    for name in ("birdnet_protopnet", DEFAULT_MODEL):
        row, card = t.set_index("model").loc[name], read_model_card(name)
        assert row["val_rec_top1"] == pytest.approx(card["metrics"]["val"]["recording"]["top1"])
        assert row["test_rec_top1"] == pytest.approx(card["metrics"]["test"]["recording"]["top1"])
        assert row["held_out_false"] == held.loc[name, "false_windows"]
    chosen = best_recipe(t, reference=REFERENCE_RECIPE)
    assert DEFAULT_MODEL in set(t[t["recipe"] == chosen]["model"])  # the default is the recipe the rule picks
    assert f"the rule picks **{chosen}**" in " ".join(RESULTS.split())
    # the fresh draw of the held-out families: the same heads, their held-out false windows only differ
    fresh = pd.read_csv(ROOT / "assets" / "birdnet_heads" / "open_set_seeds_2027.csv").set_index("model")
    same = t.set_index("model").loc[fresh.index]
    assert (fresh["recipe"] == same["recipe"]).all() and np.allclose(fresh["test_recall"], same["test_recall"])
    assert best_recipe(fresh.reset_index(), reference=REFERENCE_RECIPE) == chosen
    pooled = fresh.groupby("recipe")["held_out_false"].sum()
    assert f"gate passes {pooled[chosen]} of 315 ({100 * pooled[chosen] / 315:.1f} %;" in " ".join(RESULTS.split())


def test_open_set_person_table_is_the_person_splits_study():
    from core.field.open_set_seeds import best_recipe, recipe_markdown, recipe_summary

    t = pd.read_csv(ROOT / "checkpoints" / "person" / "studies" / "open_set_seeds.csv")
    assert set(t["split_scheme"]) == {"person"} and t.groupby("recipe")["train_seed"].apply(sorted).map(list).eq([[0, 1, 2]] * 2).all()
    assert block("open-set-person") == recipe_markdown(t) + "\n"
    assert best_recipe(t, reference="ungated") == "shipped"
    s = recipe_summary(t).set_index("recipe")
    cost = s.loc["ungated", "test_recall mean"] - s.loc["shipped", "test_recall mean"]
    false = t.groupby("recipe")["held_out_false"].sum()
    text = " ".join(RESULTS.split())
    assert f"costs {cost:.3f} of test window recall ({s.loc['ungated', 'test_recall mean']:.3f} to " \
           f"{s.loc['shipped', 'test_recall mean']:.3f})" in text
    assert f"passes {false['shipped']} of 306 held-out windows" in text and f"against {false['ungated']} of 306" in text


#: The ungated recipe the open-set rule holds the gated ones to (docs/results.md#sounds-without-birds).
REFERENCE_RECIPE = "v1 (256: noise, tones)"


def test_explanation_attack_budget_table_is_the_stored_one():
    from core.studies.explanation_budgets import budgets_markdown

    tables = [pd.read_csv(ROOT / "assets" / "explanation_attack" / f"budgets_{m}.csv") for m in ("protopnet", "birdnet_protopnet_gated")]
    assert block("explanation-attack-budgets") == budgets_markdown(pd.concat(tables, ignore_index=True))


def test_certified_accuracy_tables_are_the_stored_run():
    from core.studies.certified_accuracy import (
        certified_differences,
        certified_differences_markdown,
        certified_markdown,
        certified_summary,
    )

    rows = pd.read_csv(ROOT / "assets" / "certify" / "certified_accuracy_windows.csv")
    assert rows.groupby(["sigma", "arm"])["model"].nunique().ge(1).all() and rows["window"].nunique() == 96
    summary = certified_summary(rows)
    assert block("certified-accuracy") == certified_markdown(summary) + "\n"
    assert block("certified-accuracy-snr") == certified_markdown(summary, "snr") + "\n"
    assert block("certified-accuracy-differences") == certified_differences_markdown(certified_differences(rows)) + "\n"
    assert block("certified-accuracy-post-cutoff") == certified_markdown(certified_summary(rows, subset="post-cutoff")) + "\n"
    text = " ".join(RESULTS.split())
    small, large = rows[rows["sigma"] == 3e-4], rows[rows["sigma"] == 3e-3]
    given = small[~small["abstain"].astype(bool)]
    at_cap = np.isclose(given["radius"], given["max_radius"]).mean()
    assert f"{100 * at_cap:.0f} % of the {len(given):,} certificates given (of {len(small):,} head-windows)" in text
    # sigma 3e-3: seed 0 of each arm, the noise arm trained at that sigma; the share at the cap per arm as the prose says
    assert large.groupby("arm")["model"].nunique().eq(1).all() and large["model"].str.contains("noise_sigma3e-3").any()
    given = large[~large["abstain"].astype(bool)]
    caps = given.assign(cap=np.isclose(given["radius"], given["max_radius"])).groupby("arm")["cap"].mean()
    assert f"({100 * caps.min():.0f}-{100 * caps.max():.0f} % of certificates at R = 2.46 sigma)" in text
    diff = certified_differences(rows).set_index(["sigma", "arm", "radius_sigma"])
    noise = diff.loc[(3e-3, "noise", 2.0)]
    assert f"{noise['effect']:+.2f} [{noise['ci_low']:+.2f}, {noise['ci_high']:+.2f}]" in text
    # where g's answer differs from f's, who is right: g at 3e-4, f at 3e-3
    for part, words in ((small, "g is the more often right of the two there ({g} against {f} of those {n} head-windows)"),
                        (large[large["arm"] != "noise"],  # the heads not trained for this noise
                         "where f, not g, is now the more often right ({f} against {g} of those {n} head-windows)")):
        ans = part[~part["abstain"].astype(bool)]
        differ = ans[ans["class_name"] != ans["clean_class"]]
        assert words.format(g=int(differ["correct"].sum()), f=int(differ["clean_correct"].sum()), n=len(differ)) in text


def test_certificate_check_table_is_the_stored_run():
    import json

    from core.studies.certificate_check import check_markdown, check_summary

    table = pd.read_csv(ROOT / "assets" / "certify" / "check_30windows.csv", converters={"flip_leg": str})
    settings = json.loads((ROOT / "assets" / "certify" / "check_30windows.json").read_text())
    assert settings["windows"] == len(table) == 30 and settings["n"] == 1000 and settings["sigma"] == 3e-4
    assert block("certificate-check") == check_markdown(table) + "\n"
    s = check_summary(table)
    assert s["flips_below"] == 0 and s["checked"] == 30
    text = " ".join(RESULTS.split())
    assert f"{s['gap_min']:.0f}-{s['gap_max']:.0f} times below the budget at which PGD flipped g" in text
    # the first nine windows are the earlier one-per-species run, row for row
    nine = pd.read_csv(ROOT / "assets" / "certify" / "check_9windows.csv", converters={"flip_leg": str})
    cols = ["window", "label", "p_lower", "radius", "attacked_radius"]
    pd.testing.assert_frame_equal(table[cols].iloc[:9].reset_index(drop=True), nine[cols])


def test_explanation_stability_tables_are_the_stored_run():
    from core.studies.explanation_stability import (
        stability_differences,
        stability_differences_markdown,
        stability_markdown,
        stability_summary,
    )

    rows = pd.read_csv(ROOT / "assets" / "explanation_attack" / "stability_windows.csv")
    main = rows[rows["eps"] == 1e-4]
    assert main.groupby("arm")["model"].nunique().ge(3).all() and len(set(main["arm"])) == 6
    text = " ".join(RESULTS.split())
    summary = stability_summary(main)
    assert block("explanation-stability") == stability_markdown(summary) + "\n"
    assert block("explanation-stability-differences") == stability_differences_markdown(stability_differences(main)) + "\n"
    low, high = summary["swap success mean"].min(), summary["swap success mean"].max()
    assert f"on {100 * low:.0f}-{100 * high:.0f} % of windows in every arm" in text
    small = stability_summary(rows[rows["eps"] == 3e-5])
    assert block("explanation-stability-3e-5") == stability_markdown(small) + "\n"
    assert f"succeeds on {100 * small['swap success mean'].min():.0f}-{100 * small['swap success mean'].max():.0f} % of windows" in text
    rms = summary.set_index("arm")["activation RMS change (swap) mean"]
    assert (f"falls from {rms['OT+FT']:.3f} (OT+FT) to {rms['AT-O']:.3f} (AT-O), {rms['AT-E']:.3f} (AT-E) and "
            f"{rms['AT-X']:.3f} (AT-X)") in text


@pytest.mark.parametrize("family", ["heads", "baseline", "protopnet"])
def test_person_split_arms_tables_are_the_stored_studies(family):
    """The people-disjoint split's seed tables: three seeds of every arm, the stored rows, and differences that are the
    hierarchical bootstrap of the stored per-window rows."""
    from core.training.seeds import arm_differences, arm_markdown, differences_markdown

    stem = ROOT / "checkpoints" / "person" / "studies" / f"arms_{family}"
    t, d = pd.read_csv(f"{stem}.csv"), pd.read_csv(f"{stem}_differences.csv")
    assert set(t["split_scheme"]) == {"person"} and t.groupby("arm")["train_seed"].nunique().min() == 3
    windows = pd.read_csv(f"{stem}_windows.csv")
    assert len(windows) == t["n_clips"].sum() and windows.groupby("model")["clip_id"].nunique().eq(48).all()
    pd.testing.assert_frame_equal(arm_differences(windows), d, check_exact=False, check_dtype=False)
    shown = {"heads": lambda: block("arms-person-heads"), "baseline": lambda: block("arms-person-baseline"),
             "protopnet": lambda: block("arms-person-protopnet")}[family]()
    assert shown == arm_markdown(t) + "\n\n" + differences_markdown(d) + "\n"
