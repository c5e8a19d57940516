"""The open-set judgement: synthetic non-bird families, the bird gate, the bird-free-constrained threshold, the no-bird check."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from core.errors import ParameterError
from core.io.synth import FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES, VALIDATION_FAMILIES, nonbird_sound, nonbird_windows
from core.models.birdnet_proto import gated_logits
from core.training.open_set import choose_gate, constrained_threshold

SR = 48_000


def test_families_are_split_into_train_validation_and_held_out_without_overlap():
    groups = [set(TRAIN_FAMILIES), set(VALIDATION_FAMILIES), set(HELD_OUT_FAMILIES)]
    assert set.union(*groups) == set(FAMILIES)
    assert sum(len(g) for g in groups) == len(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_a_finite_window_at_its_level(family):
    rng = np.random.default_rng(3)
    x = nonbird_sound(family, 3 * SR, SR, rng, level_dbfs=-30.0)
    assert x.dtype == np.float32 and x.shape == (3 * SR,) and np.all(np.isfinite(x)) and np.abs(x).max() <= 1.0
    rms_db = 20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
    assert rms_db == pytest.approx(-30.0, abs=0.5)  # no clipping at -30 dBFS for any family


def test_families_differ_where_they_should():
    rng = np.random.default_rng(0)
    spec = {f: np.abs(np.fft.rfft(nonbird_sound(f, SR, SR, rng, level_dbfs=-30.0))) for f in ("hum", "wind", "white")}
    freqs = np.fft.rfftfreq(SR, 1 / SR)

    def centroid(m):
        return float((m**2 * freqs).sum() / (m**2).sum())  # power-weighted

    assert centroid(spec["hum"]) < 1000 and centroid(spec["wind"]) < 1500 and centroid(spec["white"]) > 8000
    hum = spec["hum"]
    peak = freqs[np.argmax(hum)]
    assert np.min(np.abs(peak - np.array([50.0, 60.0, 100.0, 120.0, 150.0, 180.0]))) < 2.0  # mains or a harmonic


def test_windows_of_a_family_do_not_depend_on_the_other_families():
    a, fa = nonbird_windows(["bells", "music"], 2, SR, SR, seed=5)
    b, fb = nonbird_windows(["music"], 2, SR, SR, seed=5)
    assert fa == ["bells", "bells", "music", "music"] and fb == ["music", "music"]
    np.testing.assert_array_equal(a[2:], b)
    c, _ = nonbird_windows(["music"], 2, SR, SR, seed=6)
    assert not np.array_equal(b, c)


def test_bad_family_or_counts_are_refused():
    with pytest.raises(ParameterError, match="unknown non-bird family 'jazz'"):
        nonbird_windows(["jazz"], 1, SR, SR)
    with pytest.raises(ParameterError, match="per_family"):
        nonbird_windows(["hum"], -1, SR, SR)
    with pytest.raises(ParameterError, match="n_samples"):
        nonbird_sound("hum", 0, SR, np.random.default_rng(0))


def test_gate_is_the_product_of_head_and_evidence_probabilities():
    logits = torch.tensor([[2.0, -1.0, 0.0], [-3.0, 4.0, 1.0]])
    evidence = torch.tensor([0.5, -6.0])
    out = gated_logits(logits, evidence, tau=-2.0, slope=1.5)
    want = torch.sigmoid(logits) * torch.sigmoid(1.5 * (evidence + 2.0))[:, None]
    torch.testing.assert_close(torch.sigmoid(out), want, rtol=1e-5, atol=1e-6)
    assert torch.all(out <= logits)
    strong = gated_logits(logits, torch.tensor([60.0, 60.0]), tau=-2.0)  # overwhelming evidence: the head's own scores
    torch.testing.assert_close(strong, logits, rtol=1e-4, atol=1e-4)
    logits.requires_grad_(True)
    gated_logits(logits, evidence, -2.0).sum().backward()  # differentiable for attacks
    assert torch.all(torch.isfinite(logits.grad)) and torch.all(logits.grad > 0)


def test_choose_gate_is_the_quantile_and_checks_its_input():
    ev = np.arange(100, dtype=float)
    assert choose_gate(ev, 0.05) == pytest.approx(np.quantile(ev, 0.05))
    for bad in ([], [np.nan, 1.0]):
        with pytest.raises(ParameterError, match="evidence"):
            choose_gate(np.asarray(bad, float))
    with pytest.raises(ParameterError, match="quantile"):
        choose_gate(ev, 0.7)


def test_threshold_is_raised_until_bird_free_windows_pass_at_most_the_rate():
    rng = np.random.default_rng(0)
    targets = np.zeros((200, 3))
    targets[np.arange(200), rng.integers(0, 3, 200)] = 1
    scores = np.clip(targets * rng.uniform(0.5, 1.0, (200, 3)) + rng.uniform(0, 0.45, (200, 3)), 0, 1)
    free = rng.uniform(0.0, 0.3, (100, 3))
    free[:5, 0] = [0.9, 0.85, 0.8, 0.75, 0.7]  # five loud bird-free windows
    loose = constrained_threshold(scores, targets, free[5:], max_false_rate=0.01)
    assert loose["value"] == loose["f1_threshold"] and loose["false_rate"] <= 0.01
    tight = constrained_threshold(scores, targets, free, max_false_rate=0.01)
    assert tight["value"] > tight["f1_threshold"] and tight["value"] > 0.85
    assert tight["false_rate"] == pytest.approx(np.mean(free.max(1) >= tight["value"])) and tight["false_rate"] <= 0.01
    assert constrained_threshold(scores, targets, free, max_false_rate=0.03)["false_rate"] == pytest.approx(0.03)
    with pytest.raises(ParameterError, match="max_false_rate"):
        constrained_threshold(scores, targets, free, max_false_rate=1.0)


@pytest.fixture(scope="module")
def shipped_head():
    from core.models.registry import DEFAULT_MODEL, list_checkpoints, load_checkpoint

    if DEFAULT_MODEL not in list_checkpoints():
        pytest.skip("shipped checkpoints missing")
    return load_checkpoint(DEFAULT_MODEL, device="cpu")  # birdnet_protopnet_gated


@pytest.mark.slow
def test_shipped_default_is_gated_by_birdnets_own_bird_evidence(shipped_head, data_dir):
    from core.io.data import Dataset
    from core.models.birdnet import class_groups, load_birdnet
    from core.training.heads import split_windows
    from core.training.open_set import GATE_EVIDENCE, GATE_QUANTILE, GATE_SLOPE

    model = shipped_head
    assert model.config.bird_gate is not None and model.card["open_set"]["tau"] == pytest.approx(model.config.bird_gate)
    # the shipped default is gated with the module's defaults (the recipe docs/results.md reports)
    assert (model.config.gate_evidence, model.config.gate_slope, model.card["open_set"]["quantile"]) == (
        GATE_EVIDENCE, GATE_SLOPE, GATE_QUANTILE)
    x = torch.as_tensor(split_windows(Dataset(data_dir), "test").waveforms[:4])
    x = torch.cat([x, torch.zeros(1, x.shape[1])])
    birdnet = load_birdnet("all", device="cpu")
    bird = torch.as_tensor(class_groups() == "bird")
    with torch.no_grad():
        feats = model.forward_features(x)
        evidence = model.bird_evidence(feats)
        want = birdnet.all_logits(x).masked_fill(~bird, float("-inf")).amax(1)
        torch.testing.assert_close(evidence, want, rtol=1e-4, atol=1e-3)  # BirdNET V2.4's own output
        head = model.head(model.head_map(feats))
        expect = torch.sigmoid(head) * torch.sigmoid(model.config.gate_slope * (evidence - model.config.bird_gate))[:, None]
        torch.testing.assert_close(torch.sigmoid(model(x)), expect, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model.forward_all(x).logits, model(x))
    ungated = type(model)(dataclasses.replace(model.config, bird_gate=None))
    ungated.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(ungated.eval()(x), head)
    with pytest.raises(ParameterError, match="no bird gate"):
        ungated.bird_evidence(feats)


@pytest.mark.slow
def test_no_bird_check_reports_held_out_signals_and_false_windows_per_hour(shipped_head):
    from core.field.nobird import held_out_summary, no_bird_check

    table = no_bird_check({"birdnet_protopnet_gated": shipped_head}, n_windows=2, families=["hum", "bark"], per_family=3)
    t = table.set_index("signal")
    assert list(t.index) == ["digital silence", "3 kHz tone, -20 dBFS", "white noise, -30 dBFS", "pink noise, -50 dBFS",
                             "synthetic hum", "synthetic bark (held out)"]
    assert t["held_out"].tolist() == [False] * 5 + [True]
    np.testing.assert_allclose(t["false_per_hour"], (1 - t["no_bird_rate"]) * 3600 / 3.0)
    s = held_out_summary(table).iloc[0]
    assert s["windows"] == 3 and s["false_rate"] == pytest.approx(1 - t.loc["synthetic bark (held out)", "no_bird_rate"])
    with pytest.raises(ParameterError, match="per_family"):
        no_bird_check({"birdnet_protopnet_gated": shipped_head}, per_family=0)


def test_birdnet_classes_are_grouped_into_birds_other_animals_and_the_rest():
    from core.models.birdnet import NON_SPECIES, birdnet_labels, class_groups

    groups, labels = class_groups(), birdnet_labels()
    assert len(groups) == len(labels) == 6522
    assert (groups == "bird").sum() == 6421 and (groups == "other animal").sum() == 90 and (groups == "other").sum() == 11
    by_name = dict(zip((sci for sci, _ in labels), groups))
    assert {by_name[s] for s in NON_SPECIES} == {"other"}
    assert by_name["Parus major"] == by_name["Athene noctua"] == "bird"
    assert by_name["Canis lupus"] == by_name["Pseudacris crucifer"] == by_name["Gryllus pennsylvanicus"] == "other animal"


def test_gate_evidence_is_checked_and_stored_only_when_it_is_not_the_first_gates():
    from core.models.birdnet_proto import BirdNETHeadConfig

    base = BirdNETHeadConfig(arch="birdnet-linear", class_names=("a", "b"), layer="L", channels=4)
    assert "gate_evidence" not in base.to_dict()  # no gate: nothing stored, old fingerprints kept
    animal = dataclasses.replace(base, bird_gate=-2.0)
    assert "gate_evidence" not in animal.to_dict() and BirdNETHeadConfig.from_dict(animal.to_dict()).gate_evidence == "animal"
    bird = dataclasses.replace(base, bird_gate=-2.0, gate_evidence="bird")
    assert bird.to_dict()["gate_evidence"] == "bird" and BirdNETHeadConfig.from_dict(bird.to_dict()) == bird
    with pytest.raises(ParameterError, match="gate_evidence"):
        dataclasses.replace(base, gate_evidence="mammal")


def test_open_set_command_defaults_are_the_modules_defaults():
    from core.cli import build_parser
    from core.training.open_set import GATE_EVIDENCE, GATE_QUANTILE, GATE_SLOPE, MAX_FALSE_RATE

    args = build_parser().parse_args(["open-set", "--model", "x"])
    assert (args.evidence, args.quantile, args.slope, args.max_false_rate) == (GATE_EVIDENCE, GATE_QUANTILE, GATE_SLOPE, MAX_FALSE_RATE)


@pytest.mark.slow
def test_bird_evidence_reads_birdnets_bird_classes_only(shipped_head, data_dir):
    from core.io.data import Dataset
    from core.io.synth import nonbird_windows
    from core.models.birdnet import class_groups, load_birdnet
    from core.training.heads import split_windows

    config = dataclasses.replace(shipped_head.config, gate_evidence="bird")
    model = type(shipped_head)(config)
    model.load_state_dict(shipped_head.state_dict())
    model.eval()
    barks, _ = nonbird_windows(["bark"], 2, 144_000, 48_000, seed=2026)
    x = torch.cat([torch.as_tensor(split_windows(Dataset(data_dir), "test").waveforms[:2]), torch.as_tensor(barks)])
    bird = torch.as_tensor(class_groups() == "bird")
    with torch.no_grad():
        logits = load_birdnet("all", device="cpu").all_logits(x)
        torch.testing.assert_close(model.bird_evidence(model.forward_features(x)),
                                   logits.masked_fill(~bird, float("-inf")).amax(1), rtol=1e-4, atol=1e-3)
