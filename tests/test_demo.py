"""The guided demo's one source of truth (core/studies/demo.py, assets/home/demo.json): its logic, and the shipped record
recomputed from the shipped default model and the data."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from core.errors import ParameterError
from core.studies.demo import (
    RECORD_COMMAND,
    SNR_CHOICES_DB,
    SOURCE_SPECIES,
    TARGET_SPECIES,
    DemoAttack,
    DemoRecord,
    demo_attack,
    demo_sentence,
    demo_window,
    find_demo_clip,
    read_demo_record,
    write_demo_record,
)


def attack(snr: float, top: str, score: float = 0.9) -> DemoAttack:
    return DemoAttack(snr_db=snr, eps=1e-4, measured_snr_db=snr + 2, top=top, top_score=score, source_score=0.5,
                      target_score=score if top == TARGET_SPECIES else 0.3, share_above_masking=0.01)


def record(*attacks: DemoAttack) -> DemoRecord:
    return DemoRecord(model="m", fingerprint="f", recording_id="XC1", start_s=3.0, window_s=3.0, clean_top=SOURCE_SPECIES,
                      clean_score=0.97, attacks=list(attacks))


def test_default_change_is_the_quietest_that_flips_else_the_loudest_tried():
    r = record(attack(50, SOURCE_SPECIES), attack(45, SOURCE_SPECIES), attack(40, TARGET_SPECIES, 0.8))
    assert r.default_snr_db == 40 and r.outcome.flipped and r.outcome.top_score == 0.8
    resisted = record(attack(50, SOURCE_SPECIES), attack(30, SOURCE_SPECIES, 0.6))
    assert resisted.default_snr_db == 30 and not resisted.outcome.flipped


def test_sentence_names_the_birds_and_says_when_the_model_resisted():
    flipped = demo_sentence(record(attack(50, SOURCE_SPECIES), attack(35, TARGET_SPECIES, 0.96)))
    assert flipped.startswith("The model hears a **Sedge Warbler** (score 0.97)")
    assert "35 dB quieter than the song" in flipped and flipped.endswith("it says **Marsh Warbler** (0.96).")
    resisted = demo_sentence(record(attack(30, SOURCE_SPECIES, 0.61)))
    assert "still says **Sedge Warbler** (0.61)" in resisted and "resisted" in resisted and "Marsh" not in resisted


def test_record_survives_the_round_trip_and_bad_files_are_one_line_errors(tmp_path):
    r = record(attack(45, SOURCE_SPECIES), attack(40, TARGET_SPECIES))
    path = write_demo_record(r, tmp_path / "demo.json")
    stored = json.loads(path.read_text())
    assert stored["default_snr_db"] == 40 and stored["command"] == RECORD_COMMAND
    assert read_demo_record(path) == r
    with pytest.raises(ParameterError, match="no demo record"):
        read_demo_record(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text('{"model": "m"}')
    with pytest.raises(ParameterError, match="not a demo record"):
        read_demo_record(tmp_path / "bad.json")


def test_window_is_cut_and_zero_padded():
    w = demo_window(np.arange(10, dtype=np.float32), 6, 8)
    assert w.dtype == np.float32 and list(w) == [6, 7, 8, 9, 0, 0, 0, 0]


def test_demo_refuses_models_without_its_birds_and_silent_windows():
    stub = SimpleNamespace(config=SimpleNamespace(class_names=("parmaj", "sylatr"), frontend=SimpleNamespace(sample_rate=32_000)))
    with pytest.raises(ParameterError, match="acrsch"):
        find_demo_clip(stub, [])
    with pytest.raises(ParameterError, match="acrpal"):
        demo_attack(stub, np.ones(100, np.float32), 40)
    both = SimpleNamespace(config=SimpleNamespace(class_names=(SOURCE_SPECIES, TARGET_SPECIES)))
    with pytest.raises(ParameterError, match="silent"):
        demo_attack(both, np.zeros(100, np.float32), 40)


def test_shipped_record_is_complete_and_ordered():
    from core.models.registry import DEFAULT_MODEL

    r = read_demo_record()
    assert r.model == DEFAULT_MODEL  # the home page and the README speak of the default model
    tried = [a.snr_db for a in r.attacks]
    assert tried == sorted(tried, reverse=True) and set(tried) <= set(SNR_CHOICES_DB)  # quietest change first
    assert [a.flipped for a in r.attacks] == [False] * (len(r.attacks) - 1) + [r.attacks[-1].flipped]  # stopped at the first flip
    assert all(a.measured_snr_db >= a.snr_db - 0.1 for a in r.attacks)  # an L-inf budget of that SNR keeps the change at least as quiet


def test_readme_and_home_page_state_the_recorded_outcome():
    from tests.conftest import ROOT

    r = read_demo_record()
    readme = (ROOT / "README.md").read_text()
    assert demo_sentence(r) in readme
    assert f"Recording {r.recording_id}," in readme and f"measured {r.outcome.measured_snr_db:.1f} dB" in readme
    assert f"a change {r.default_snr_db:g} dB below" in readme  # the tour's Guided demo line
    assert "demo_sentence(record)" in (ROOT / "app.py").read_text()  # the home page prints it (its AppTest checks the text)


@pytest.mark.slow
def test_shipped_record_is_what_the_shipped_model_does(data_dir):
    """Recompute the record's clip and its last two change sizes with the shipped default model (minutes on 2 cores)."""
    from core.io.data import Dataset
    from core.models.registry import load_checkpoint
    from core.studies.demo import run_demo
    from core.studies.embeddings import model_fingerprint

    r = read_demo_record()
    model = load_checkpoint(r.model, device="cpu")
    assert model_fingerprint(model) == r.fingerprint, (
        f"{r.model}'s weights changed since assets/home/demo.json was written: rerun `{RECORD_COMMAND}` and commit its "
        "record and picture (the home page, the Guided demo and the README read them)")
    clip = find_demo_clip(model, Dataset(data_dir).split("test"))
    assert (clip.recording_id, round(clip.start / model.config.frontend.sample_rate, 4)) == (r.recording_id, r.start_s)
    checked = r.attacks[-2:]  # the outcome and the quieter change before it (resisted)
    again, _, _ = run_demo(model, Dataset(data_dir), model_name=r.model, clip=clip, snr_choices=[a.snr_db for a in checked])
    assert again.clean_top == r.clean_top and again.clean_score == pytest.approx(r.clean_score, abs=0.01)
    assert [a.top for a in again.attacks] == [a.top for a in checked]
    for new, old in zip(again.attacks, checked):
        assert new.top_score == pytest.approx(old.top_score, abs=0.02)
        assert new.measured_snr_db == pytest.approx(old.measured_snr_db, abs=0.3)
