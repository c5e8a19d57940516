import numpy as np
import pytest
import torch

from core.errors import ParameterError
from core.io.data import Dataset, build_windows
from core.models.protopnet import orthogonality_loss
from core.training.train import push_prototypes
from tests.conftest import CLASSES


def test_shapes_and_interface(tiny_model):
    x = torch.randn(3, 16_000) * 0.1
    out = tiny_model.forward_all(x)
    assert out.logits.shape == (3, len(CLASSES))
    assert torch.allclose(tiny_model(x), out.logits, atol=1e-6)
    assert out.embedding.shape == (3, 16)
    assert torch.allclose(tiny_model.embed(x), out.embedding, atol=1e-6)
    if tiny_model.config.arch == "protopnet":
        n_p = len(CLASSES) * 2
        assert tiny_model.prototype_vectors.shape == (n_p, 16, 1, 1)
        assert out.similarity_maps.shape[:2] == (3, n_p)
        assert out.similarity_maps.shape[2:] == out.feature_map.shape[2:]
        assert (out.similarity_maps >= 0).all() and (out.similarity_maps <= 1 + 1e-5).all()
        assert torch.allclose(out.prototype_activations, out.similarity_maps.amax(dim=(2, 3)))
    else:
        assert out.similarity_maps is None


def test_gradients_reach_waveform(tiny_model):
    x = (torch.randn(2, 16_000) * 0.1).requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_model(x).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_rejects_bad_waveform(tiny_model):
    with pytest.raises(ParameterError):
        tiny_model(torch.zeros(16_000))
    with pytest.raises(ParameterError, match="n_fft"):
        tiny_model(torch.zeros(1, 10))


def test_last_layer_non_negative_and_class_connected(tiny_proto):
    with torch.no_grad():
        tiny_proto.last_layer.fill_(-1.0)
        tiny_proto.last_layer[1, 0] = 2.0
    acts = torch.ones(1, tiny_proto.n_prototypes)
    logits = tiny_proto.classify(acts)
    # negative stored weights contribute nothing; class 1 gets only its own prototype's 2.0
    assert torch.allclose(logits - tiny_proto.last_layer_bias, torch.tensor([[0.0, 2.0, 0.0]]))
    w = tiny_proto.class_connection()
    assert (w >= 0).all() and w[0, 2:].abs().sum() == 0


def test_orthogonality_loss():
    eye = torch.eye(4).view(4, 4, 1, 1)  # two classes x two orthonormal prototypes
    assert orthogonality_loss(eye, 2).item() == pytest.approx(0.0, abs=1e-6)
    same = torch.ones(4, 4, 1, 1)
    assert orthogonality_loss(same, 2).item() > 0.1


def test_push_provenance(tiny_proto, tiny_dataset):
    ds = Dataset(tiny_dataset)
    cfg = tiny_proto.config
    w = build_windows(ds, ds.split("train"), sample_rate=16_000, window_s=1.0, class_names=cfg.class_names)
    sources = push_prototypes(tiny_proto, w)
    assert len(sources) == tiny_proto.n_prototypes
    feats = tiny_proto.forward_features(torch.as_tensor(w.waveforms))
    rec_ids = [r.recording_id for r in w.recordings]
    for s in sources:
        j = s.prototype
        assert s.class_name == CLASSES[j // 2]
        # pushed to a clip of its own class
        rec = w.recordings[rec_ids.index(s.recording_id)]
        assert s.class_name in rec.labels
        # the prototype now equals the recorded feature vector: similarity 1 there
        idx = [i for i in range(len(w.starts)) if w.recordings[w.recording_index[i]].recording_id == s.recording_id
               and w.starts[i] / 16_000 == s.window_start_s]
        assert idx
        v = feats[idx[0], :, s.freq_index, s.time_index]
        assert torch.allclose(tiny_proto.prototype_vectors[j].flatten(), v, atol=1e-5)
        assert s.window_start_s <= s.t_start_s < s.t_end_s <= s.window_start_s + 1.0 + 1e-6
        assert 0 < s.f_low_hz <= s.f_high_hz <= 8000
    with torch.no_grad():
        acts = tiny_proto.forward_all(torch.as_tensor(w.waveforms)).prototype_activations
    assert np.allclose(acts.max(0).values.numpy(), 1.0, atol=1e-4)
