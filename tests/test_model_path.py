"""One model path (issue 23): every model has the same interface, and every study computes what the model computes.

- Fast: the interface on tiny models built here, and an ``ast`` walk that fails when code
  outside ``core/models`` reaches into a model's layers (``.backbone``, ``.stage``, ``.trunk``).
- Slow: every shipped checkpoint (``list_checkpoints()``, BirdNET, and ``birdnet-all``; the
  published loaders are excluded, their weights are not shipped) through every study that
  computes scores, logits, embeddings or maps (the audit, the clip explanation, embeddings,
  the sweep, compare, field analysis) on a few real test windows, compared with
  ``model(waveform)`` / ``model.forward_all(waveform)`` on the same windows.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from core.errors import ParameterError
from core.models.base import BirdClassifier, ModelOutput
from core.models.registry import build_model, list_checkpoints, load_checkpoint
from tests.conftest import CLASSES, TINY_BACKBONE, tiny_config

ROOT = Path(__file__).resolve().parent.parent
ATOL = 1e-5
N_WINDOWS = 4  # per study and model (the issue allows 16)
SHIPPED = list_checkpoints() + ["birdnet-all"]

# -- nothing outside core/models reaches into a model ---------------------------------------------------------------

INTERNALS = ("backbone", "stage", "trunk")
#: Attribute reads of these names that are not a model's layers: (file, expression) with the reason.
NOT_A_MODEL = {
    ("core/studies/report.py", "r.backbone"): "a row of the head fine-tuning table (its 'backbone' column)",
}


def _internal_accesses(root: Path = ROOT) -> list[str]:
    found = []
    files = [root / "app.py"] + sorted((root / "core").rglob("*.py")) + sorted((root / "pages").rglob("*.py")) \
        + sorted((root / "ui").rglob("*.py"))
    for path in files:
        rel = path.relative_to(root).as_posix()
        if rel.startswith("core/models/") or not path.is_file():
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, ast.Attribute) or node.attr not in INTERNALS:
                continue
            owner = node.value
            owner_name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
            if owner_name in ("config", "cfg"):  # a configuration field (ModelConfig.backbone), not a layer
                continue
            expr = ast.unparse(node)
            if (rel, expr) not in NOT_A_MODEL:
                found.append(f"{rel}:{node.lineno}: {expr}")
    return found


def test_nothing_outside_core_models_reaches_into_a_model():
    found = _internal_accesses()
    assert not found, "ask the model through a method (core/models/base.py) instead of reading its layers:\n" + "\n".join(found)


def test_the_walk_finds_a_layer_access(tmp_path):
    # the check itself can fail: a page that reads model.stage is found, a config field and core/models are not
    for folder, text in (("pages", "feats = model.stage(model.backbone(s))\nok = model.config.backbone\n"),
                         ("core/models", "x = self.trunk(s)\n"), ("ui", "t = head.trunk\n")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "x.py").write_text(text)
    found = _internal_accesses(tmp_path)
    assert sorted(f.split(": ", 1)[1] for f in found) == ["head.trunk", "model.backbone", "model.stage"]


# -- the interface on tiny models ----------------------------------------------------------------------------------


def _check_interface(model: BirdClassifier, x: torch.Tensor) -> ModelOutput:
    """Everything the issue asks of a model, and that the path pieces compose to ``forward``."""
    assert isinstance(model, torch.nn.Module) and isinstance(model, BirdClassifier)
    assert isinstance(model.sample_rate, int) and model.sample_rate > 0
    assert model.clip_seconds > 0 and isinstance(model.class_names, tuple) and model.class_names
    with torch.no_grad():
        spec = model.frontend(x)
        feats = model.forward_features(x)
        logits = model(x)
        out = model.forward_all(x)
        emb = model.embed(x)
        assert spec.ndim == 4 and spec.shape[0] == x.shape[0]
        assert torch.allclose(model.features_from_spectrogram(spec), feats, atol=ATOL)
        assert logits.shape == (x.shape[0], len(model.class_names))
        assert torch.allclose(model.forward_head(feats), logits, atol=ATOL)
        assert isinstance(out, ModelOutput) and torch.allclose(out.logits, logits, atol=ATOL)
        head_map = model.head_map(feats) if hasattr(model, "head_map") else feats  # a tuned BirdNET head: the stage's map
        assert torch.allclose(out.embedding, emb, atol=ATOL) and torch.allclose(out.feature_map, head_map, atol=ATOL)
        assert torch.allclose(model.forward_head(feats, pre_logits=True), emb, atol=ATOL)
        if out.similarity_maps is not None:
            assert out.similarity_maps.shape[:2] == (x.shape[0], model.n_prototypes)
            assert torch.allclose(out.similarity_maps, model.similarity_maps(feats), atol=ATOL)
            assert torch.allclose(out.prototype_activations, out.similarity_maps.amax(dim=(2, 3)), atol=ATOL)
            head_logits = model.classify(out.prototype_activations)
            if getattr(model.config, "bird_gate", None) is not None:  # the class connection, then the bird gate
                from core.models.birdnet_proto import gated_logits

                head_logits = gated_logits(head_logits, model.bird_evidence(feats), model.config.bird_gate, model.config.gate_slope)
            assert torch.allclose(head_logits, logits, atol=ATOL)
    backbone = {id(p) for p in model.backbone_parameters()}
    head = {id(p) for p in model.head_parameters()}
    assert backbone and not backbone & head and backbone | head == {id(p) for p in model.parameters()}
    return out


@pytest.mark.parametrize("arch", ["protopnet", "baseline"])
def test_tiny_models_share_one_interface(arch):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch)).eval()
    x = torch.randn(2, 16_000) * 0.1
    out = _check_interface(model, x)
    assert model.sample_rate == 16_000 and model.clip_seconds == 1.0 and model.class_names == CLASSES
    assert (out.similarity_maps is not None) == (arch == "protopnet")


@pytest.mark.slow
def test_published_models_share_one_interface():
    from core.models.published import (
        AUDIOPROTOPNET_FRONTEND,
        CONVNEXT_FRONTEND,
        PublishedAudioProtoPNet,
        PublishedConfig,
        PublishedConvNeXt,
        convnext_base_config,
    )

    small = dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64])
    torch.manual_seed(0)
    proto = PublishedAudioProtoPNet(PublishedConfig("published-audioprotopnet", ("a", "b"), 2, AUDIOPROTOPNET_FRONTEND),
                                    convnext_base_config(**small)).eval()
    convnext = PublishedConvNeXt(PublishedConfig("published-convnext", ("a", "b"), 0, CONVNEXT_FRONTEND),
                                 convnext_base_config(**small)).eval()
    x = torch.randn(1, 32_000 * 5) * 0.1
    for model in (proto, convnext):
        out = _check_interface(model, x)
        assert model.sample_rate == 32_000 and model.clip_seconds == 5.0 and model.class_names == ("a", "b")
        assert out.similarity_maps is None  # the published AudioProtoPNet's maps only per class (memory)
    assert proto.forward_all(x).prototype_activations.shape == (1, 4)


def test_backbone_freezing_and_copying_go_through_methods():
    torch.manual_seed(0)
    proto, base = build_model(tiny_config("protopnet")), build_model(tiny_config("baseline"))
    proto.train()
    proto.eval_backbone()
    assert proto.training and not any(m.training for m in proto.backbone_modules())
    proto.copy_backbone_from(base)
    for p, q in zip(proto.backbone_parameters(), base.backbone_parameters(), strict=True):
        assert torch.equal(p, q)
    other = build_model(replace(tiny_config("baseline"), backbone=replace(TINY_BACKBONE, dims=(8, 24))))
    with pytest.raises(ParameterError, match="backbone"):
        proto.copy_backbone_from(other)


def test_spectrogram_region_covers_the_cell():
    model = build_model(tiny_config("protopnet"))
    rows, frames = model.spectrogram_region((1, 2), (4, 8), (32, 63))  # log-mel: row 0 lowest, as the map
    assert (rows.start, rows.stop) == (8, 16) and (frames.start, frames.stop) == (15, 23)


# -- every shipped checkpoint through every study -------------------------------------------------------------------


@functools.cache
def _model(name: str) -> BirdClassifier:
    return load_checkpoint(name, device="cpu").eval()


@pytest.fixture(scope="module")
def dataset(data_dir):
    from core.io.data import open_dataset

    return open_dataset(data_dir)


_CLIPS: dict = {}


def _clips(dataset, sample_rate: int, window_samples: int, max_clips: int = N_WINDOWS, split: str = "test"):
    """Real windows of the test split, evenly spread over its species (as the studies pick them)."""
    from core.io.clips import dataset_clips

    key = (str(dataset.root), sample_rate, window_samples, max_clips, split)
    if key not in _CLIPS:
        _CLIPS[key] = dataset_clips(dataset, split=split, class_names=dataset.class_names, sample_rate=sample_rate,
                                    window_samples=window_samples, max_clips=max_clips)
    return _CLIPS[key]


def _windows(dataset, model) -> torch.Tensor:
    return torch.as_tensor(_clips(dataset, model.sample_rate, model.config.window_samples).waveforms)


def _truth(model, x: torch.Tensor) -> ModelOutput:
    with torch.no_grad():
        return model.forward_all(x)


def _close(got, want, what: str) -> None:
    """Equal within 1e-5 (relative to the largest value where that exceeds 1: logits and embeddings)."""
    got, want = np.asarray(got, np.float64), np.asarray(torch.as_tensor(want).double().cpu().numpy())
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs the model's {want.shape}"
    err = float(np.abs(got - want).max()) if got.size else 0.0
    assert err <= ATOL * max(1.0, float(np.abs(want).max()) if want.size else 1.0), f"{what}: differs from the model by {err:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_interface(name, dataset):
    model = _model(name)
    x = _windows(dataset, model)[:2]
    _check_interface(model, x)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_clip_explanation_is_the_model(name, dataset):
    from core.field.inference import analyze_waveform

    model = _model(name)
    x = _windows(dataset, model)
    res = analyze_waveform(model, x.reshape(-1).numpy())  # the windows back to back: the page cuts the same windows
    assert np.array_equal(res.windows, x.numpy())
    truth = _truth(model, x)
    _close(res.scores, torch.sigmoid(truth.logits), "clip scores")
    _close(res.embedding, truth.embedding, "clip embedding")
    if truth.similarity_maps is None:
        assert res.similarity_maps is None
    else:
        _close(res.similarity_maps, truth.similarity_maps, "clip similarity maps")
        _close(res.prototype_activations, truth.prototype_activations, "clip prototype activations")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_embeddings_are_the_model(name, dataset):
    from core.studies.embeddings import embed, prototype_anchors

    model = _model(name)
    x = _windows(dataset, model)
    emb, scores = embed(model, x.numpy(), batch_size=4)
    truth = _truth(model, x)
    _close(emb, truth.embedding, "embeddings")
    _close(emb, model.embed(x).detach(), "embeddings vs model.embed")
    _close(scores, torch.sigmoid(truth.logits), "embedding-study scores")
    if truth.prototype_activations is not None:
        index, sim = prototype_anchors(model, x.numpy(), batch_size=4)
        _close(sim, truth.prototype_activations.amax(0), "prototype anchor similarities")
        assert np.array_equal(index, truth.prototype_activations.argmax(0).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_sweep_clean_scores_are_the_model(name, dataset):
    from core.attacks import PGD, OutputUntargeted
    from core.attacks.sweep import run_sweep
    from core.studies.sweep import sweep_table

    model = _model(name)
    clips = _clips(dataset, model.sample_rate, model.config.window_samples)
    x = torch.as_tensor(clips.waveforms)
    attack = PGD(eps=0.0, steps=1, objective=OutputUntargeted())
    res = run_sweep(attack, model, x, epsilons=[0.0], max_rows=4)
    want = torch.sigmoid(_truth(model, x).logits)
    _close(res.clean_scores, want, "sweep clean scores")
    _close(res.scores[0], want, "sweep scores at eps 0")
    table = sweep_table(res, model=name, attack=attack, clip_ids=clips.clip_ids, class_names=model.class_names)
    clean = table[table["budget_kind"] == "clean"]
    _close(clean[[f"score:{c}" for c in model.class_names]].to_numpy(), want, "sweep table clean rows")


@pytest.fixture(scope="module")
def comparison(dataset):
    """One comparison of every shipped model with the dataset's classes, at the smallest settings."""
    from core.studies.compare import CompareSettings, run_compare

    names = [n for n in SHIPPED if list(_model(n).class_names) == list(dataset.class_names)]
    settings = CompareSettings(max_clips=2, shift_max_clips=2, epsilons=(1e-5,), target_epsilons=(1e-5,), steps=1)
    return settings, run_compare({n: _model(n) for n in names}, dataset, settings)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in SHIPPED if n != "birdnet-all"])  # compare needs the dataset's classes
def test_compare_clean_scores_are_the_model(name, dataset, comparison):
    settings, result = comparison
    model = _model(name)
    cols = [f"score:{c}" for c in model.class_names]
    # the clean rows of the shift table (shift_max_clips windows) and of the attack table (max_clips windows)
    for table, column, max_clips in ((result.shift, "condition", settings.shift_max_clips),
                                     (result.robustness, "budget_kind", settings.max_clips)):
        rows = table[(table["model"] == name) & (table[column] == "clean")]
        clips = _clips(dataset, model.sample_rate, model.config.window_samples, max_clips, settings.split)
        assert len(rows) == len(clips)
        order = [clips.clip_ids.index(c) for c in rows["clip"]]
        want = torch.sigmoid(_truth(model, torch.as_tensor(clips.waveforms[order])).logits)
        _close(rows[cols].to_numpy(), want, f"compare clean rows ({column})")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_field_analysis_is_the_model(name, dataset, tmp_path):
    from core.field.analyze import analyze_file, iter_windows

    model = _model(name)
    rec = next(r for r in dataset.split("test") if r.path.is_file())
    sr = sf.info(str(rec.path)).samplerate
    audio, _ = sf.read(str(rec.path), dtype="float32", frames=int(10 * sr), always_2d=True)
    assert len(audio) == int(10 * sr)
    path = tmp_path / "excerpt.wav"
    sf.write(path, audio, sr)  # 10 s of a real test recording: 2 windows of 5 s, 3 of 3 s
    res = analyze_file(model, path, batch_size=2)
    windows = [w for _, w, _, _ in iter_windows(path, model.sample_rate, model.config.window_samples)]
    assert 2 <= len(windows) <= 3 and len(res.scores) == len(windows)
    with torch.no_grad():
        want = torch.sigmoid(model(torch.as_tensor(np.stack(windows))))
    _close(res.scores, want, "field analysis scores")


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_audit_is_the_model(name, dataset):
    from core.studies.audit import audit_maps, deletion_scores

    model = _model(name)
    x = _windows(dataset, model)
    if model.config.arch != "birdnet-protopnet":
        with pytest.raises(ParameterError, match="prototype head on BirdNET"):
            audit_maps(model, x.numpy())
        return
    spec, sims, logits = audit_maps(model, x.numpy(), batch_size=4)
    truth = _truth(model, x)
    _close(sims, truth.similarity_maps, "audit similarity maps")
    _close(logits, truth.logits, "audit logits")
    _close(spec, model.frontend(x).detach(), "audit spectrograms")
    # the deletion path with nothing deleted is the model itself, for each class
    nothing = [(i, slice(0, 0), slice(0, 0)) for i in range(len(x))]
    for c in (0, len(model.class_names) - 1):
        _close(deletion_scores(model, spec, nothing, c, batch_size=4), torch.sigmoid(truth.logits[:, c]), f"audit deletion class {c}")
