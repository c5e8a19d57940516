"""BirdNET's xeno-canto training cut-off (XC694204): which recordings lie after it, the figures of BirdNET and its
heads on either side measured through the model itself, the ``cutoff`` subcommand and the model cards' field."""

import csv
import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from core.errors import DatasetError, ParameterError
from core.io.data import Dataset, build_windows
from core.models.registry import CHECKPOINT_DIR, DEFAULT_MODEL, load_checkpoint, read_model_card
from core.studies.leakage import (
    BIRDNET_TRAINING_CUTOFF_XC,
    after_cutoff,
    card_post_cutoff,
    check_trained_on,
    cutoff_counts,
    cutoff_rows,
    cutoff_side,
    merge_cutoff_tables,
    post_cutoff_sentence,
    xc_number,
)
from tests.conftest import ROOT

STORED = ROOT / "assets" / "birdnet_heads" / "cutoff.csv"


def stored_table() -> pd.DataFrame:
    return pd.read_csv(STORED, keep_default_na=False, na_values=[""])


def test_cutoff_is_the_maintainers_number():
    assert BIRDNET_TRAINING_CUTOFF_XC == 694204


@pytest.mark.parametrize("rid,number,after", [("XC694204", 694204, False), ("XC694205", 694205, True), ("xc136005", 136005, False),
                                              (" XC900000 ", 900000, True), ("XC", None, None), ("XC12a", None, None),
                                              ("ML399952111", None, None), ("aaatest0", None, None)])
def test_ids_are_parsed_and_non_xeno_canto_ids_are_unknown(rid, number, after):
    assert xc_number(rid) == number
    assert after_cutoff(rid) is after
    assert cutoff_side(rid) == {None: "unknown", True: "post", False: "pre"}[after]


def test_a_recording_id_that_is_no_string_is_refused():
    with pytest.raises(ParameterError, match="must be a string"):
        after_cutoff(694205)


def test_xc9_has_172_recordings_up_to_the_cutoff_and_56_after(data_dir):
    with (data_dir / "manifest.csv").open(newline="", encoding="utf-8") as f:
        ids = [row["recording_id"] for row in csv.DictReader(f)]
    numbers = [int(i.removeprefix("XC")) for i in ids]  # by hand, not through xc_number
    assert (sum(n <= 694204 for n in numbers), sum(n > 694204 for n in numbers)) == (172, 56)
    counts = cutoff_counts(Dataset(data_dir)).set_index("split")
    assert (counts.loc["all", "pre"], counts.loc["all", "post"], counts.loc["all", "unknown"]) == (172, 56, 0)
    assert counts.loc[["train", "val", "test"], "post"].sum() == 56  # splits as in force (Recording.split)


def test_a_model_trained_on_another_split_is_refused(data_dir):
    ds = Dataset(data_dir)
    card = read_model_card("birdnet_protopnet")
    check_trained_on("birdnet_protopnet", card, ds)  # the shipped head: same split
    check_trained_on("birdnet", {}, ds)  # BirdNET trained on none of ours
    bad = {**card, "data": {**card["data"], "test_recordings_sha256": "0" * 16}}
    with pytest.raises(DatasetError, match="trained on another split"):
        check_trained_on("birdnet_protopnet", bad, ds)


@pytest.mark.slow
def test_the_whole_test_split_gives_the_card_metrics_through_the_model(data_dir):
    """All 466 test windows through model(x): the row with every test recording is the card's test metrics."""
    ds = Dataset(data_dir)
    model = load_checkpoint("birdnet_protopnet", device="cpu")
    c = model.config
    w = build_windows(ds, ds.split("test"), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    rows = {r["side"]: r for r in cutoff_rows(model, w, ["test"], name="birdnet_protopnet")}
    want = read_model_card("birdnet_protopnet")["metrics"]["test"]
    got = rows["all"]
    assert (got["n_recordings"], got["n_windows"]) == (want["recording"]["n"], want["window"]["n"]) == (48, 466)
    assert got["recording_top1"] == pytest.approx(want["recording"]["top1"], abs=1e-6)
    assert got["window_cmap"] == pytest.approx(want["window"]["cmap"], abs=1e-3)
    assert got["window_top1"] == pytest.approx(want["window"]["top1"], abs=1e-3)
    assert rows["pre"]["n_recordings"] + rows["post"]["n_recordings"] == 48
    assert rows["pre"]["n_windows"] + rows["post"]["n_windows"] == 466


def test_the_stored_table_holds_the_card_figures_on_the_whole_test_split():
    table = stored_table()
    for name in sorted(set(table["model"]) - {"birdnet"}):
        row = table[(table["model"] == name) & (table["recordings"] == "test") & (table["side"] == "all")].iloc[0]
        want = read_model_card(name)["metrics"]["test"]
        assert (row["n_recordings"], row["n_windows"]) == (want["recording"]["n"], want["window"]["n"])
        assert row["recording_top1"] == pytest.approx(want["recording"]["top1"], abs=1e-4), name
        assert row["window_cmap"] == pytest.approx(want["window"]["cmap"], abs=2e-3), name
    birdnet = table[(table["model"] == "birdnet") & (table["side"] != "all")].set_index(["recordings", "side"])["n_recordings"]
    assert birdnet["all"].to_dict() == {"pre": 172, "post": 56}


def test_post_cutoff_top1_is_the_models_own_scores_by_hand(data_dir):
    """Three test recordings after the cut-off: top-1 of the max over windows of sigmoid(model(x)), by hand."""
    ds = Dataset(data_dir)
    post = [r for r in ds.split("test") if xc_number(r.recording_id) > BIRDNET_TRAINING_CUTOFF_XC][:3]
    pre = [r for r in ds.split("test") if xc_number(r.recording_id) <= BIRDNET_TRAINING_CUTOFF_XC][:1]
    model = load_checkpoint("birdnet_protopnet", device="cpu")
    c = model.config
    w = build_windows(ds, post + pre, sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    rows = {r["side"]: r for r in cutoff_rows(model, w, ["test"], name="birdnet_protopnet")}
    right = []
    with torch.no_grad():
        for i, rec in enumerate(post):
            x = torch.as_tensor(w.waveforms[w.recording_index == i])
            best = torch.sigmoid(model(x)).max(0).values.argmax().item()
            right.append(c.class_names[best] in rec.labels)
    got = rows["post"]
    assert (got["n_recordings"], got["n_windows"]) == (3, int(np.isin(w.recording_index, [0, 1, 2]).sum()))
    assert got["recording_correct"] == sum(right)
    assert got["recording_top1"] == pytest.approx(sum(right) / 3)
    assert rows["pre"]["n_recordings"] == 1 and rows["all"]["n_recordings"] == 4


def test_cli_refuses_an_unknown_model_in_one_line(capsys):
    from core.cli import main

    assert main(["cutoff", "--models", "birdnet_linear,no_such_model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'no_such_model'") and len(err.splitlines()) == 1


def test_cli_refuses_a_model_not_built_on_birdnet(capsys):
    from core.cli import main

    assert main(["cutoff", "--models", "protopnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: protopnet does not run BirdNET's backbone: BirdNET's training cut-off does not concern it"


def test_update_cards_writes_the_field_and_leaves_the_weights_alone(tmp_path, monkeypatch, data_dir, capsys):
    """``--update-cards`` on a copy of a head: its card gains post_cutoff, its safetensors file keeps every byte."""
    import core.studies.leakage as leakage
    from core.cli import main

    shutil.copy(CHECKPOINT_DIR / "birdnet_linear.safetensors", tmp_path / "birdnet_linear.safetensors")
    shipped = {k: v for k, v in read_model_card("birdnet_linear").items() if k != "post_cutoff"}
    (tmp_path / "birdnet_linear.json").write_text(json.dumps(shipped, indent=2) + "\n")  # the card before any cut-off run
    weights = tmp_path / "birdnet_linear.safetensors"
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    card_before = read_model_card(weights)
    stored = stored_table()

    def measured(models, dataset, **kw):  # the stored figures of birdnet_linear, under the copy's name
        assert list(models) == [str(weights)]
        return stored[stored["model"] == "birdnet_linear"].assign(model=str(weights)).reset_index(drop=True)

    monkeypatch.setattr(leakage, "cutoff_table", measured)
    out = tmp_path / "cutoff.csv"
    assert main(["cutoff", "--models", str(weights), "--out", str(out), "--update-cards", "--data-dir", str(data_dir)]) == 0
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before
    card = read_model_card(weights)
    assert {k: v for k, v in card.items() if k != "post_cutoff"} == card_before
    field = card["post_cutoff"]
    assert field["cutoff_xc"] == 694204 and field["source"].endswith("BirdNET-Analyzer/issues/152")
    assert field["test"]["post"]["n_recordings"] + field["test"]["pre"]["n_recordings"] == 48
    assert field["command"].startswith("python -m core cutoff")
    load_checkpoint(weights, device="cpu")  # the card still belongs to the weights (weights_sha256)
    assert set(pd.read_csv(out)["model"]) == {str(weights)}
    assert "model cards updated (post_cutoff)" in capsys.readouterr().out


def test_merging_keeps_the_other_models_rows_in_place():
    table = stored_table()
    first, second = table["model"].unique()[:2]
    redo = table[table["model"] == first].assign(recording_top1=0.0)
    merged = merge_cutoff_tables(table, redo)
    assert list(merged["model"]) == list(table["model"])
    assert (merged[merged["model"] == first]["recording_top1"] == 0).all()
    pd.testing.assert_frame_equal(merged[merged["model"] == second].reset_index(drop=True),
                                  table[table["model"] == second].reset_index(drop=True))


def test_sentence_gives_the_figure_only_when_the_card_has_it():
    table = stored_table()
    bare = post_cutoff_sentence("birdnet_linear", {})
    assert bare.startswith("BirdNET V2.4 was trained on xeno-canto recordings up to XC694204") and "names the right" not in bare
    field = card_post_cutoff(table, "birdnet_linear")
    post = field["test"]["post"]
    text = post_cutoff_sentence("birdnet_linear", {"post_cutoff": field})
    assert (f"on the {post['n_recordings']} test recordings after it, birdnet_linear names the right species in "
            f"{post['recording_correct']} (recording top-1 {post['recording_top1']:.3f}") in text


def test_home_page_says_where_birdnet_trained_and_the_default_models_figure():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120).run()
    assert not at.exception
    sentence = post_cutoff_sentence(DEFAULT_MODEL, read_model_card(DEFAULT_MODEL))
    assert any(sentence in c.value for c in at.caption), "the home page lacks the cut-off sentence"
