"""Embeddings: metrics against scikit-learn and hand-computed cases, the disk cache, UMAP placement."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score

from core.attacks import PGD
from core.errors import ParameterError
from core.io.clips import ClipSet
from core.studies.embeddings import EmbeddingCache, compute_embeddings, embedding_metrics, model_fingerprint, retrieval_roc_auc, umap_map


def _blobs(n_per=20, k=3, d=8, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 3
    x = np.concatenate([c + rng.standard_normal((n_per, d)) * spread for c in centres])
    return x, np.repeat([f"s{i}" for i in range(k)], n_per)


def test_metrics_perfect_clusters_and_sklearn_agreement():
    x, y = _blobs()
    m = embedding_metrics(x, y)
    assert m["k"] == 3 and m["n"] == 60
    assert m["nmi"] == pytest.approx(1.0) and m["ari"] == pytest.approx(1.0) and m["v_measure"] == pytest.approx(1.0)
    assert m["silhouette"] > 0.9 and m["retrieval_roc_auc"] == pytest.approx(1.0)
    # overlapping blobs: the numbers are scikit-learn's on the same KMeans clustering
    x, y = _blobs(spread=3.0, seed=1)
    m = embedding_metrics(x, y, seed=0)
    clusters = KMeans(n_clusters=3, n_init=10, random_state=0).fit_predict(x)
    assert m["nmi"] == pytest.approx(normalized_mutual_info_score(y, clusters))
    assert m["ari"] == pytest.approx(adjusted_rand_score(y, clusters))
    assert m["silhouette"] == pytest.approx(silhouette_score(x, y, metric="cosine"))
    assert 0 < m["nmi"] < 1


def test_retrieval_roc_auc_hand_computed():
    # pairs: (a,b) same, cos 1; (a,c) diff, cos 0; (b,c) diff, cos 0 -> AUC 1
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert retrieval_roc_auc(x, ["p", "p", "q"]) == 1.0
    # the same-label pair is the least similar one -> AUC 0
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1]])
    assert retrieval_roc_auc(x, ["p", "p", "q"]) == 0.0
    assert np.isnan(retrieval_roc_auc(x, ["p", "p", "p"]))  # no negative pairs
    # Euclidean (2-D maps): a far same-label pair ranks below a close different-label pair
    pts = np.array([[0.0, 0.0], [10.0, 0.0], [0.5, 0.0]])
    assert retrieval_roc_auc(pts, ["p", "p", "q"], metric="euclidean") == 0.0
    assert retrieval_roc_auc(pts, ["p", "q", "p"], metric="euclidean") == 1.0
    with pytest.raises(ParameterError, match="metric"):
        retrieval_roc_auc(pts, ["p", "q", "p"], metric="manhattan")
    one = embedding_metrics(np.eye(4), ["a"] * 4)
    assert np.isnan(one["nmi"]) and np.isnan(one["silhouette"])  # one species: clustering is undefined


def _clipset(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = ((torch.rand(n, 16_000, generator=gen) * 2 - 1) * 0.3).numpy()
    labels = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    return ClipSet(waveforms=w, clip_ids=[f"c{i}" for i in range(n)], labels=labels, masks=np.ones_like(w),
                   species=[("aaa", "bbb", "ccc")[i % 3] for i in range(n)])


def test_cache_hits_and_invalidates_on_new_weights(tmp_path, tiny_proto):
    clips = _clipset()
    cache = EmbeddingCache(tmp_path)
    attack = PGD(eps=0.01, steps=2)
    first = compute_embeddings(tiny_proto, clips, attack=attack, eps=0.01, cache=cache)
    assert not first.from_cache and first.embeddings.shape == (6, 16) and first.adv_embeddings.shape == (6, 16)
    assert (first.snr_db > 20).all() and not np.allclose(first.embeddings, first.adv_embeddings)
    again = compute_embeddings(tiny_proto, clips, attack=attack, eps=0.01, cache=cache)
    assert again.from_cache
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    np.testing.assert_array_equal(again.adv_embeddings, first.adv_embeddings)
    # another eps is another cache entry
    assert not compute_embeddings(tiny_proto, clips, attack=attack, eps=0.02, cache=cache).from_cache
    before = model_fingerprint(tiny_proto)
    with torch.no_grad():
        tiny_proto.last_layer_bias += 0.5
    assert model_fingerprint(tiny_proto) != before
    changed = compute_embeddings(tiny_proto, clips, cache=cache)
    assert not changed.from_cache
    np.testing.assert_allclose(changed.embeddings, first.embeddings)  # the bias is after the embedding
    assert not np.allclose(changed.scores, first.scores)
    # a corrupt cache file is recomputed, not trusted
    for p in tmp_path.glob("*.npz"):
        p.write_bytes(b"garbage")
    assert not compute_embeddings(tiny_proto, clips, cache=cache).from_cache
    assert not list(tmp_path.glob("*.tmp*"))
    with pytest.raises(ParameterError, match="eps"):
        compute_embeddings(tiny_proto, clips, attack=attack)


@pytest.mark.slow
def test_umap_transform_places_a_clip_next_to_itself():
    x, y = _blobs(n_per=30, spread=0.3)
    coords, (again,) = umap_map(x, extra=[x[::10]])
    spread = np.linalg.norm(coords.max(0) - coords.min(0))
    dist = np.linalg.norm(again - coords[::10], axis=1)
    assert np.median(dist) < 0.1 * spread, (dist, spread)
    # the species are separated in the map too
    assert embedding_metrics(coords, y, metric="euclidean")["nmi"] > 0.9
    coords2, _ = umap_map(x)
    np.testing.assert_allclose(coords, coords2, atol=1e-4)  # fixed seed: the same map
    with pytest.raises(ParameterError, match="at least 4"):
        umap_map(x[:3])
    with pytest.raises(ParameterError, match="extra"):
        umap_map(x, extra=[np.zeros((2, 3))])


def test_retrieval_leaves_out_pairs_from_one_recording():
    """Windows of one recording are near-duplicates; counted as positives they flatter retrieval."""
    from core.studies.embeddings import recording_ids, retrieval_roc_auc

    rng = np.random.default_rng(0)
    recs = [f"XC{i}" for i in range(12)]
    species = np.array(["a", "b", "c"] * 4)
    x, labels, clip_ids = [], [], []
    for rec, sp in zip(recs, species):
        v = rng.standard_normal(16)  # each recording its own random point: species carry no signal
        for w in range(4):
            x.append(v + 0.01 * rng.standard_normal(16))
            labels.append(sp)
            clip_ids.append(f"{rec}@{5 * w}s")
    x, labels = np.array(x), np.array(labels)
    groups = recording_ids(clip_ids)
    assert list(groups[:5]) == ["XC0"] * 4 + ["XC1"]
    assert retrieval_roc_auc(x, labels) > 0.57  # the same-recording pairs (20 % of positives) alone lift it to about 0.6
    assert abs(retrieval_roc_auc(x, labels, groups=groups) - 0.5) < 0.1  # honest: chance
    with pytest.raises(ParameterError, match="one entry per clip"):
        retrieval_roc_auc(x, labels, groups=groups[:-1])


def test_prototype_anchor_is_the_clip_each_prototype_fires_most_on(tiny_proto):
    from core.studies.embeddings import prototype_anchors

    gen = torch.Generator().manual_seed(3)
    w = ((torch.rand(5, 16_000, generator=gen) * 2 - 1) * 0.3).numpy()
    at, sim = prototype_anchors(tiny_proto.eval(), w, batch_size=2)
    with torch.no_grad():
        acts = tiny_proto.forward_all(torch.as_tensor(w)).prototype_activations.numpy()
    assert at.shape == (acts.shape[1],) and (at == acts.argmax(0)).all()
    np.testing.assert_allclose(sim, acts.max(0), atol=1e-6)
    with pytest.raises(ParameterError):
        prototype_anchors(tiny_proto, w[:0])
