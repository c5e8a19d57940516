"""Published BirdSet models: loaders tested on random-weight stand-ins saved in the published layout (never the hub)."""

from __future__ import annotations

import json

import librosa
import numpy as np
import pytest
import torch

from core.cli import main
from core.errors import CheckpointError, ParameterError
from core.models import published as pub
from core.models.published import (
    AUDIOPROTOPNET_FRONTEND,
    CONVNEXT_FRONTEND,
    PublishedAudioProtoPNet,
    PublishedConfig,
    PublishedConvNeXt,
    PublishedLogMel,
    convnext_base_config,
    published_cosine_similarity,
)
from core.models.published_io import explain_clip, fetch_model, load_published, save_published

SMALL = dict(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 64])
SR = 32_000


def _clip(seed: int, freq_hz: float = 3000.0, level: float = 0.1, n: int = 5 * SR) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    return (level * np.sin(2 * np.pi * freq_hz * t) + 0.01 * level * rng.standard_normal(n)).astype(np.float32)


def _small_protopnet(n_classes: int = 12, k: int = 3, seed: int = 0) -> PublishedAudioProtoPNet:
    torch.manual_seed(seed)
    cfg = PublishedConfig("published-audioprotopnet", tuple(f"sp{i}" for i in range(n_classes)), k, AUDIOPROTOPNET_FRONTEND)
    return PublishedAudioProtoPNet(cfg, convnext_base_config(**SMALL)).eval()


@pytest.mark.slow
def test_full_size_stand_in_loads_in_the_published_layout_and_explains_a_clip(tmp_path):
    """AudioProtoPNet-1-BirdSet-XCL's exact parameter names and shapes: ConvNeXt-Base, 9,736 prototypes and classes."""
    torch.manual_seed(0)
    names = tuple(f"ebird{i}" for i in range(pub.XCL_N_CLASSES))
    model = PublishedAudioProtoPNet(PublishedConfig("published-audioprotopnet", names, 1, AUDIOPROTOPNET_FRONTEND)).eval()
    state = model.state_dict()
    assert state["head.prototype_vectors"].shape == (9736, 1024, 1, 1)
    assert state["head.last_layer.weight"].shape == (9736, 1) and state["head.last_layer.bias"].shape == (9736,)
    assert state["model.backbone.embeddings.patch_embeddings.weight"].shape == (128, 1, 4, 4)  # one input channel
    assert "model.backbone.encoder.stages.2.layers.26.pwconv2.weight" in state  # depth 27 in stage 3
    assert "model.backbone.encoder.stages.3.layers.3.dwconv.weight" not in state
    n_backbone = sum(v.numel() for k, v in state.items() if k.startswith("model.backbone."))
    assert 87_000_000 < n_backbone < 88_500_000  # ConvNeXt-Base with one input channel
    folder = save_published(model, tmp_path / "apn1")
    doc = json.loads((folder / "config.json").read_text())
    assert doc["id2label"]["9735"] == "ebird9735"

    loaded = load_published(folder, device="cpu")
    assert isinstance(loaded, PublishedAudioProtoPNet) and loaded.config.prototypes_per_class == 1
    assert loaded.config.class_names[17] == "ebird17"
    clip = _clip(1)
    res = explain_clip(loaded, clip, top_k=3)
    with torch.no_grad():
        logits = model(torch.from_numpy(clip)[None])[0]
    assert [c["class_index"] for c in res] == torch.topk(logits, 3).indices.tolist()
    assert res[0]["score"] == pytest.approx(float(torch.sigmoid(logits[res[0]["class_index"]])), abs=1e-5)
    p = res[0]["prototypes"][0]
    assert p["map"].shape == (16, 38)  # 256 x 626 -> 8 x 19 after ConvNeXt, then upsampled 2x
    assert 0 <= p["t_s"] <= 5 and 0 <= p["f_hz"] <= 16_000
    assert p["similarity"] == pytest.approx(float(p["map"].max()))


def test_twenty_prototype_layout_builds_without_memory():
    with torch.device("meta"):
        names = tuple(str(i) for i in range(pub.XCL_N_CLASSES))
        model = PublishedAudioProtoPNet(PublishedConfig("published-audioprotopnet", names, 20, AUDIOPROTOPNET_FRONTEND))
    assert model.head.prototype_vectors.shape == (194_720, 1024, 1, 1)
    assert model.head.last_layer.weight.shape == (9736, 20)


def test_frontend_matches_librosa_with_a_per_clip_floor():
    clip = _clip(2)
    ours = PublishedLogMel(AUDIOPROTOPNET_FRONTEND)(torch.from_numpy(clip)[None])[0, 0].numpy()
    mel = librosa.feature.melspectrogram(y=clip, sr=SR, n_fft=2048, hop_length=256, n_mels=256, htk=True, norm=None,
                                         center=True, pad_mode="reflect", power=2.0, fmin=0.0, fmax=16_000)
    ref = (librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0) + 13.369) / 13.162
    assert ours.shape == (256, 626)
    np.testing.assert_allclose(ours, ref, atol=2e-3)
    conv = PublishedLogMel(CONVNEXT_FRONTEND)(torch.from_numpy(clip)[None])
    assert conv.shape == (1, 1, 128, 501)


def test_batching_never_changes_a_clip_unlike_the_batch_wide_floor():
    """The documented difference from upstream: the dB floor is per clip, so a loud neighbour cannot move a quiet clip."""
    fe = PublishedLogMel(AUDIOPROTOPNET_FRONTEND)
    quiet, loud = _clip(3, level=1e-3), _clip(4, freq_hz=500, level=0.9)
    alone = fe(torch.from_numpy(quiet)[None])[0]
    batched = fe(torch.from_numpy(np.stack([quiet, loud])))[0]
    torch.testing.assert_close(alone, batched)
    # the upstream clamp over the whole batch would have changed the quiet clip: its floor rises to the loud clip's
    db = fe.db(torch.from_numpy(np.stack([quiet, loud])))
    raw = 10 * torch.log10(torch.clamp(torch.matmul(fe.mel_basis, torch.stft(torch.from_numpy(np.stack([quiet, loud])), 2048, 256,
                           window=fe.window, center=True, pad_mode="reflect", return_complex=True).abs() ** 2), min=1e-10))
    batch_wide = torch.maximum(raw, raw.max() - 80)
    assert (batch_wide[0] - db[0]).abs().max() > 10  # dB

    model = _small_protopnet()
    with torch.no_grad():
        assert torch.allclose(model(torch.from_numpy(quiet)[None]), model(torch.from_numpy(np.stack([quiet, loud])))[:1], atol=1e-5)


def test_similarity_follows_the_published_formula():
    """Cosine of (x, 1e-4, 1e-4) and (p, 1e-4, 1e-4) up to the published 1.01 and epsilon terms, ReLU'd."""
    torch.manual_seed(1)
    feats, protos = torch.randn(2, 6, 3, 4), torch.randn(5, 6, 1, 1)
    sims = published_cosine_similarity(feats, protos)
    xe = torch.cat([feats, torch.full((2, 2, 3, 4), 1e-4)], 1)
    pe = torch.cat([protos, torch.full((5, 2, 1, 1), 1e-4)], 1)[:, :, 0, 0]
    cos = torch.einsum("bchw,pc->bphw", torch.nn.functional.normalize(xe, dim=1), torch.nn.functional.normalize(pe, dim=1))
    torch.testing.assert_close(sims, torch.relu(cos / 1.01), atol=1e-4, rtol=1e-3)
    assert sims.min() >= 0 and sims.max() < 1


@pytest.mark.slow
def test_chunked_activations_equal_the_full_maps_with_gradients(monkeypatch):
    model = _small_protopnet(n_classes=10, k=3)
    x = torch.from_numpy(_clip(5))[None].requires_grad_(True)
    feats = model.forward_features(x)
    full = model.similarity_maps(feats).amax(dim=(2, 3))
    (g_full,) = torch.autograd.grad(full.sum(), x, retain_graph=True)
    monkeypatch.setattr(pub, "PROTOTYPE_CHUNK", 7)  # 30 prototypes in 5 chunks, recomputed in the backward pass
    chunked = model.prototype_activations(feats)
    (g_chunk,) = torch.autograd.grad(chunked.sum(), x)
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(g_chunk, g_full)
    # logits: each class sums only its own prototypes, with ReLU'd weights
    with torch.no_grad():
        model.head.last_layer.weight[4] = torch.tensor([-1.0, 2.0, 0.5])
        logits = model.class_logits(full.detach())
    expected = (2.0 * full[0, 13] + 0.5 * full[0, 14] + model.head.last_layer.bias[4]).detach()
    assert float(logits[0, 4]) == pytest.approx(float(expected), abs=1e-5)


def test_convnext_stand_in_round_trips(tmp_path):
    torch.manual_seed(0)
    cfg = PublishedConfig("published-convnext", ("a", "b", "c"), 0, CONVNEXT_FRONTEND)
    model = PublishedConvNeXt(cfg, convnext_base_config(**SMALL)).eval()
    keys = set(model.state_dict())
    assert {"classifier.weight", "classifier.bias", "convnext.layernorm.weight"} <= keys
    assert all(k.startswith(("convnext.", "classifier.")) for k in keys)
    folder = save_published(model, tmp_path / "cnx")
    loaded = load_published(folder, device="cpu", backbone_config=convnext_base_config(**SMALL))
    x = torch.from_numpy(_clip(6))[None]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
        assert loaded.forward_all(x).feature_map.shape == (1, 64, 4, 15)
    assert loaded.config.class_names == ("a", "b", "c")
    with pytest.raises(ParameterError, match="published AudioProtoPNet"):
        explain_clip(loaded, _clip(6))


def test_bad_checkpoints_are_refused_clearly(tmp_path):
    with pytest.raises(CheckpointError, match="no model.safetensors.*fetch-model"):
        load_published(tmp_path)
    model = _small_protopnet()
    folder = save_published(model, tmp_path / "m")
    with pytest.raises(CheckpointError, match="does not match the published"):
        load_published(folder, device="cpu")  # small stand-in read as the full ConvNeXt-Base: shapes differ
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="neither the AudioProtoPNet"):
        load_published(folder)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_published(folder)


def test_fetch_model_downloads_weights_and_config_only(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda **kw: calls.append(kw) or str(tmp_path / kw["filename"]))
    fetch_model("audioprotopnet-20-birdset-xcl", tmp_path / "x")
    assert [c["filename"] for c in calls] == ["model.safetensors", "config.json"]
    assert {c["repo_id"] for c in calls} == {"DBD-research-group/AudioProtoPNet-20-BirdSet-XCL"}

    def offline(**kw):
        raise OSError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="could not download model.safetensors.*network unreachable"):
        fetch_model("convnext-base-birdset-xcl", tmp_path / "y")
    with pytest.raises(ParameterError, match="unknown published model"):
        fetch_model("audioprotopnet-3-birdset-xcl", tmp_path / "z")


def test_cli_explains_a_clip_and_refuses_bad_input(tmp_path, monkeypatch, capsys):
    import soundfile as sf

    model = _small_protopnet()
    folder = save_published(model, tmp_path / "m")
    monkeypatch.setattr(pub, "convnext_base_config", lambda **kw: convnext_base_config(**{**SMALL, **kw}))
    wav = tmp_path / "clip.wav"
    sf.write(wav, np.concatenate([_clip(7), _clip(8)]), SR)
    assert main(["explain-published", "--model", str(folder), "--audio", str(wav), "--offset", "5", "--top-k", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    expected = explain_clip(model, _clip(8), top_k=2)
    assert [c["class_name"] for c in res] == [c["class_name"] for c in expected]
    assert res[0]["score"] == pytest.approx(expected[0]["score"], abs=1e-4)
    assert main(["explain-published", "--model", str(tmp_path / "none"), "--audio", str(wav)]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
    assert main(["fetch-model", "birdnet-9000"]) == 2
    assert "unknown published model" in capsys.readouterr().err


@pytest.mark.parametrize("field,value", [("relu_on_cos", False), ("input_vector_length", 32), ("epsilon_val", 1e-3),
                                         ("n_eps_channels", 1), ("non_negative_last_layer", False),
                                         ("incorrect_class_connection", -0.5), ("topk_k", 3), ("add_on_layers_type", "bottleneck")])
def test_config_fields_the_loader_does_not_compute_are_refused(tmp_path, field, value):
    """Every config.json field that changes what the published model computes is honoured or refused by name."""
    folder = save_published(_small_protopnet(), tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    json.dump({**cfg, field: value}, (folder / "config.json").open("w"))
    with pytest.raises(CheckpointError, match=f"config.json has {field}={value!r}, which this loader does not implement"):
        load_published(folder, device="cpu", backbone_config=convnext_base_config(**SMALL))


def test_config_fields_with_the_published_values_load(tmp_path):
    model = _small_protopnet()
    folder = save_published(model, tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    published = {"relu_on_cos": True, "input_vector_length": 64.0, "epsilon_val": 0.0001, "n_eps_channels": 2,
                 "non_negative_last_layer": True, "incorrect_class_connection": None, "topk_k": 1, "add_on_layers_type": "upsample",
                 "margin": 0.5}  # margin: training only, not checked
    json.dump({**cfg, **published}, (folder / "config.json").open("w"))
    loaded = load_published(folder, device="cpu", backbone_config=convnext_base_config(**SMALL))
    x = torch.as_tensor(_clip(3))[None]
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
