"""Embeddings of clean and adversarial clips, a disk cache, a UMAP map, and cluster/retrieval metrics.

- :func:`embed` gives the pre-logits embedding (global average of the feature map,
  :meth:`~core.models.base.BirdClassifier.embed`) of a batch of clips.
- :func:`compute_embeddings` embeds a :class:`~core.studies.sweep.ClipSet` clean and,
  optionally, after an attack, and caches the arrays on disk keyed by the model's
  weights (:func:`model_fingerprint`), the clips and the attack settings.
- :func:`umap_map` fits UMAP (umap-learn; McInnes et al. 2018) on the clean
  embeddings with a fixed seed and places adversarial embeddings and prototype
  vectors into the same map with ``transform``, so a displacement means something.
- :func:`embedding_metrics` follows the bioacoustics embedding benchmarks (AVEX;
  "No Free Lunch from Audio Pretraining in Bioacoustics"): KMeans with k = number
  of species present, NMI, ARI, V-measure; silhouette of the species labels; and
  retrieval ROC-AUC (cosine similarity of every pair, same species vs. not).

Multi-label clips: every clip is labelled with its recording's first focal species
(its *primary label*); secondary species are ignored by these metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, roc_auc_score, silhouette_score, v_measure_score

from core.errors import ParameterError
from core.io.fileio import atomic_path

__all__ = [
    "CACHE_ENV_VAR", "default_cache_dir", "model_fingerprint", "embed", "EmbeddingCache", "EmbeddingSet",
    "compute_embeddings", "umap_map", "prototype_anchors", "embedding_metrics", "retrieval_roc_auc", "recording_ids", "embedding_table", "embedding_markdown",
]

CACHE_ENV_VAR = "BIRDSHIELD_CACHE_DIR"


def default_cache_dir() -> Path:
    """``$BIRDSHIELD_CACHE_DIR`` or ``.cache/embeddings`` in the repository."""
    env = os.environ.get(CACHE_ENV_VAR)
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".cache" / "embeddings"


def model_fingerprint(model) -> str:
    """SHA-256 (hex, 16 chars) of a model's config and every weight: changes whenever a weight does."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def embed(model, waveforms: np.ndarray, *, batch_size: int = 32, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Pre-logits embeddings and sigmoid scores of clips.

    Parameters
    ----------
    model : BirdClassifier
    waveforms : np.ndarray [shape=(n_clips, n_samples), dtype=float32], full-scale amplitude
    batch_size : int >= 1
        Clips per pass on a CPU (on CUDA :func:`core.io.device.scoring_batch_size`, in bfloat16
        autocast: :func:`core.io.device.scoring_autocast`).
    progress : callable, optional
        ``progress(done, total)``.

    Returns
    -------
    (embeddings, scores) : np.ndarray [shape=(n_clips, embed_dim)], np.ndarray [shape=(n_clips, n_classes)], float32
    """
    from core.io.device import scoring_autocast, scoring_batch_size

    device = next(model.parameters()).device
    batch_size = scoring_batch_size(device, batch_size)
    was_training = model.training
    model.eval()
    embs, scores = [], []
    try:
        for i in range(0, len(waveforms), batch_size):
            with scoring_autocast(device):
                out = model.forward_all(torch.as_tensor(np.asarray(waveforms[i : i + batch_size], np.float32), device=device))
            embs.append(out.embedding.float().cpu().numpy())
            scores.append(torch.sigmoid(out.logits).float().cpu().numpy())
            if progress:
                progress(min(i + batch_size, len(waveforms)), len(waveforms))
    finally:
        model.train(was_training)
    n_classes = len(model.config.class_names)
    if not embs:
        return np.zeros((0, 0), np.float32), np.zeros((0, n_classes), np.float32)
    return np.concatenate(embs), np.concatenate(scores)


class EmbeddingCache:
    """Arrays on disk (``.npz``), one file per key; writes go to a temporary file, then a rename.

    Parameters
    ----------
    directory : path, optional
        Default :func:`default_cache_dir`.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    @staticmethod
    def key(*parts) -> str:
        """A stable hex key from JSON-ready parts."""
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def load(self, key: str) -> dict | None:
        """The arrays stored under ``key``, or None (missing or unreadable file)."""
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError):
            return None

    def save(self, key: str, **arrays: np.ndarray) -> None:
        with atomic_path(self.path(key)) as tmp:  # the temporary name ends in .npz, so np.savez keeps it
            np.savez(tmp, **arrays)


@dataclass
class EmbeddingSet:
    """Embeddings of clips, clean and (optionally) attacked.

    Attributes
    ----------
    embeddings, scores : np.ndarray [shape=(n_clips, embed_dim)], [shape=(n_clips, n_classes)]
    adv_embeddings, adv_scores : np.ndarray or None
        Same shapes, after the attack.
    snr_db : np.ndarray [shape=(n_clips,)] or None [dB]
        SNR of each clip's perturbation.
    from_cache : bool
        True when everything came from the disk cache.
    """

    embeddings: np.ndarray
    scores: np.ndarray
    adv_embeddings: np.ndarray | None = None
    adv_scores: np.ndarray | None = None
    snr_db: np.ndarray | None = None
    from_cache: bool = False


def compute_embeddings(
    model,
    clips,
    *,
    attack=None,
    eps: float | None = None,
    cache: EmbeddingCache | None = None,
    batch_size: int = 16,
    progress: Callable[[str, int, int], None] | None = None,
) -> EmbeddingSet:
    """Clean (and adversarial) embeddings of a clip set, from the cache when possible.

    Parameters
    ----------
    model : BirdClassifier
    clips : ClipSet
        :class:`core.studies.sweep.ClipSet` (waveforms, clip ids, labels, masks).
    attack : Attack, optional
        Applied at ``eps`` (full-scale amplitude) to every clip, padding masked.
    eps : float, optional
        Required with ``attack``.
    cache : EmbeddingCache, optional
        None: no caching.
    progress : callable, optional
        ``progress(stage, done, total)``, stage ``"clean"`` or ``"attack"``.

    Returns
    -------
    EmbeddingSet

    Raises
    ------
    ParameterError
        An attack without eps, or invalid attack inputs.
    """
    from core.attacks.sweep import run_sweep
    from core.metrics import snr_db as snr

    if attack is not None and eps is None:
        raise ParameterError("an attack needs eps")
    fp = model_fingerprint(model)
    ids = list(clips.clip_ids)
    clip_hash = hashlib.sha256(np.ascontiguousarray(clips.waveforms).tobytes()).hexdigest()[:16]
    clean_key = EmbeddingCache.key("clean", fp, ids, clip_hash)
    stored = cache.load(clean_key) if cache else None
    from_cache = stored is not None
    if stored is None:
        emb, scores = embed(model, clips.waveforms, batch_size=batch_size, progress=(lambda d, t: progress("clean", d, t)) if progress else None)
        if cache:
            cache.save(clean_key, embeddings=emb, scores=scores)
    else:
        emb, scores = stored["embeddings"], stored["scores"]
    out = EmbeddingSet(embeddings=emb, scores=scores)
    if attack is None:
        out.from_cache = from_cache
        return out
    adv_key = EmbeddingCache.key("adv", fp, ids, clip_hash, attack.describe(), float(eps))
    stored = cache.load(adv_key) if cache else None
    if stored is None:
        from_cache = False
        device = next(model.parameters()).device
        adv_e, adv_s, s = [], [], []
        n = len(ids)
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            x = torch.as_tensor(clips.waveforms[sl], device=device)
            labels = None if clips.labels is None else torch.as_tensor(clips.labels[sl], device=device)
            res = run_sweep(attack, model, x, labels, epsilons=[eps], masks=torch.as_tensor(clips.masks[sl], device=device), keep_waveforms=True)
            e, sc = embed(model, res.adversarial[0], batch_size=batch_size)
            adv_e.append(e)
            adv_s.append(sc)
            s.append(snr(clips.waveforms[sl], res.adversarial[0]).numpy())
            if progress:
                progress("attack", min(i + batch_size, n), n)
        stored = {"embeddings": np.concatenate(adv_e), "scores": np.concatenate(adv_s), "snr_db": np.concatenate(s)}
        if cache:
            cache.save(adv_key, **stored)
    out.adv_embeddings, out.adv_scores, out.snr_db = stored["embeddings"], stored["scores"], stored["snr_db"]
    out.from_cache = from_cache
    return out


@torch.no_grad()
def prototype_anchors(model, waveforms: np.ndarray, *, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """For every prototype, the clip on which it fires most (AudioProtoPNet).

    A prototype is a patch vector of the feature map, not a clip embedding, so
    placing it in a map of pooled embeddings with UMAP's ``transform`` puts it
    wherever the out-of-distribution vector lands (often far outside the fitted
    points). Its *anchor* is instead the clip whose best-matching patch is closest
    to it (highest max cosine similarity), a point that really is on the map.

    Parameters
    ----------
    model : AudioProtoPNet
    waveforms : np.ndarray [shape=(n_clips, n_samples), dtype=float32], full-scale amplitude
    batch_size : int

    Returns
    -------
    (clip_index, similarity) : np.ndarray [shape=(n_prototypes,)] int64 and float32
        Index of the anchor clip and the prototype's activation there (cosine similarity).

    Raises
    ------
    ParameterError
        A model without prototypes, or no clips.
    """
    if getattr(model, "prototype_vectors", None) is None:
        raise ParameterError("prototype anchors need a model with prototypes (AudioProtoPNet)")
    if len(waveforms) == 0:
        raise ParameterError("no clips")
    device = next(model.parameters()).device
    acts = []
    for i in range(0, len(waveforms), batch_size):
        out = model.forward_all(torch.as_tensor(np.asarray(waveforms[i : i + batch_size], np.float32), device=device))
        acts.append(out.prototype_activations.float().cpu().numpy())
    a = np.concatenate(acts)  # (n_clips, P)
    return a.argmax(0).astype(np.int64), a.max(0).astype(np.float32)


def umap_map(
    embeddings: np.ndarray,
    *,
    extra: Sequence[np.ndarray] = (),
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "cosine",
) -> tuple[np.ndarray, list[np.ndarray]]:
    """2-D UMAP of clean embeddings; other point sets placed in the same map.

    UMAP is fitted on ``embeddings`` only (fixed ``random_state``, so repeated calls
    give the same map); each array in ``extra`` (adversarial embeddings, prototype
    vectors) is placed with ``transform``.

    Parameters
    ----------
    embeddings : np.ndarray [shape=(n, d)], n >= 4
    extra : sequence of np.ndarray [shape=(m, d)]
    seed : int
    n_neighbors : int
        Capped at ``n - 1``.
    min_dist : float
    metric : str

    Returns
    -------
    (coords, extra_coords) : np.ndarray [shape=(n, 2)], list of np.ndarray [shape=(m, 2)]

    Raises
    ------
    ParameterError
        Fewer than 4 clips, non-finite values, or dimensions that do not match.
    """
    import umap  # heavy import (numba): only when a map is asked for

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ParameterError(f"a UMAP map needs at least 4 clips, got {len(x)}")
    if not np.isfinite(x).all():
        raise ParameterError("embeddings contain NaN or inf")
    for e in extra:
        if np.ndim(e) != 2 or np.shape(e)[1] != x.shape[1]:
            raise ParameterError(f"extra points must be (m, {x.shape[1]}), got {np.shape(e)}")

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(x) - 1), min_dist=min_dist, metric=metric,
                        random_state=seed, init="spectral" if len(x) > 10 else "random")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # a fixed random_state implies one thread
        coords = reducer.fit_transform(x)
    return coords, [reducer.transform(np.asarray(e, np.float32)) if len(e) else np.zeros((0, 2), np.float32) for e in extra]


def _check_metric(metric: str) -> None:
    if metric not in ("cosine", "euclidean"):
        raise ParameterError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def retrieval_roc_auc(embeddings: np.ndarray, labels: Sequence, *, metric: str = "cosine", groups: Sequence | None = None) -> float:
    """ROC-AUC of pair similarity for telling same-label pairs from different-label pairs (AVEX).

    Every unordered pair of distinct clips is scored by the cosine similarity of
    their embeddings (``metric="cosine"``), or by minus their Euclidean distance
    (``"euclidean"``, for a 2-D map where angles mean nothing); positives are pairs
    with the same label.

    Parameters
    ----------
    embeddings : np.ndarray [shape=(n, d)]
    labels : sequence [shape=(n,)]
    metric : {"cosine", "euclidean"}
    groups : sequence [shape=(n,)], optional
        Source recording of each clip: pairs from the same recording are left out,
        since two windows of one recording share the recordist, site and individual
        bird and would make retrieval look easier than recognising a species.

    Returns
    -------
    float in [0, 1], NaN without both kinds of pairs.
    """
    _check_metric(metric)
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    if len(x) < 2:
        return float("nan")
    i, j = np.triu_indices(len(x), k=1)
    if groups is not None:
        groups = np.asarray(groups)
        if len(groups) != len(x):
            raise ParameterError(f"groups must have one entry per clip ({len(x)}), got {len(groups)}")
        keep = groups[i] != groups[j]
        i, j = i[keep], j[keep]
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sims = np.einsum("ij,ij->i", x[i], x[j])
    else:
        sims = -np.linalg.norm(x[i] - x[j], axis=1)
    same = labels[i] == labels[j]
    if same.all() or not same.any():
        return float("nan")
    return float(roc_auc_score(same, sims))


def recording_ids(clip_ids: Sequence[str]) -> np.ndarray:
    """Source recording of each clip id (``XC123@5s`` -> ``XC123``)."""
    return np.array([str(c).rsplit("@", 1)[0] for c in clip_ids])


def embedding_metrics(embeddings: np.ndarray, labels: Sequence, *, seed: int = 0, metric: str = "cosine", groups: Sequence | None = None) -> dict:
    """Cluster and retrieval quality of embeddings against species labels.

    KMeans (k = number of distinct labels, 10 restarts, ``random_state=seed``) gives
    clusters scored by NMI, ARI and V-measure against the labels; silhouette uses the
    labels themselves; retrieval ROC-AUC as :func:`retrieval_roc_auc`. Silhouette and
    retrieval use ``metric``: cosine for embeddings, Euclidean for a 2-D UMAP map.

    Parameters
    ----------
    embeddings : np.ndarray [shape=(n, d)]
    labels : sequence [shape=(n,)]
        One label per clip (the primary species).
    seed : int
    metric : {"cosine", "euclidean"}
    groups : sequence [shape=(n,)], optional
        Source recording of each clip; retrieval ignores pairs from one recording
        (see :func:`retrieval_roc_auc`).

    Returns
    -------
    dict
        ``nmi, ari, v_measure, silhouette, retrieval_roc_auc, k, n``; NaN where a
        metric is undefined (fewer than 2 labels or fewer clips than labels + 1).
    """
    _check_metric(metric)
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    k = len(np.unique(labels))
    out = {"k": k, "n": len(x), "nmi": np.nan, "ari": np.nan, "v_measure": np.nan, "silhouette": np.nan,
           "retrieval_roc_auc": retrieval_roc_auc(x, labels, metric=metric, groups=groups)}
    if k < 2 or len(x) <= k:
        return out
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    out["nmi"] = float(normalized_mutual_info_score(labels, clusters))
    out["ari"] = float(adjusted_rand_score(labels, clusters))
    out["v_measure"] = float(v_measure_score(labels, clusters))
    out["silhouette"] = float(silhouette_score(x, labels, metric=metric))
    out["clusters"] = clusters
    return out


def embedding_table(
    models: dict,
    dataset,
    *,
    split: str = "test",
    eps: float = 1e-4,
    steps: int = 10,
    seed: int = 0,
    cache: EmbeddingCache | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> pd.DataFrame:
    """Cluster and retrieval quality of every model's embedding on a split, clean and under PGD.

    Each model embeds every window of the split at its own rate and window length (BirdNET: 3 s at
    48 kHz), clean and after an L-inf PGD (output-untargeted objective against the true labels,
    random start seeded per clip); UMAP is fitted on the clean embeddings and the attacked ones
    are placed with ``transform``.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    dataset : core.io.data.Dataset
    split : {"train", "val", "test"}
    eps : float > 0 [full-scale amplitude]
    steps : int >= 1
    seed : int
    cache : EmbeddingCache, optional
    progress : callable, optional
        ``progress(model_name, done, total)``.

    Returns
    -------
    pandas.DataFrame
        One row per model and ``points`` (clean / attacked): ``n, median_snr_db, nmi, ari, silhouette,
        retrieval_roc_auc`` (pairs from other recordings only), ``retrieval_roc_auc_all_pairs`` (the
        old, flattering definition), ``nmi_map, retrieval_roc_auc_map`` (2-D UMAP, Euclidean).

    Raises
    ------
    ParameterError
        eps <= 0, steps < 1, or a split without recordings.
    """
    from core.attacks import PGD
    from core.io.clips import dataset_clips

    if not eps > 0:
        raise ParameterError(f"eps must be > 0, got {eps}")
    rows = []
    for name, model in models.items():
        c = model.config
        clips = dataset_clips(dataset, split=split, class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                              window_samples=c.window_samples)
        emb = compute_embeddings(model, clips, attack=PGD(eps=0.0, steps=steps, seed=seed), eps=eps, cache=cache,
                                 progress=(lambda st, d, t, name=name: progress(name, d, t)) if progress else None)
        coords, (adv_coords,) = umap_map(emb.embeddings, extra=[emb.adv_embeddings], seed=seed)
        primary = np.array([s.split(";")[0] for s in clips.species])
        groups = recording_ids(clips.clip_ids)
        for points, e, xy, snr in (("clean", emb.embeddings, coords, np.inf), ("attacked", emb.adv_embeddings, adv_coords, None)):
            m = embedding_metrics(e, primary, seed=seed, groups=groups)
            m_map = embedding_metrics(xy, primary, seed=seed, metric="euclidean", groups=groups)
            rows.append({"model": name, "points": points, "n": m["n"],
                         "median_snr_db": float(np.median(emb.snr_db)) if snr is None else snr,
                         "nmi": m["nmi"], "ari": m["ari"], "silhouette": m["silhouette"], "retrieval_roc_auc": m["retrieval_roc_auc"],
                         "retrieval_roc_auc_all_pairs": retrieval_roc_auc(e, primary),
                         "nmi_map": m_map["nmi"], "retrieval_roc_auc_map": m_map["retrieval_roc_auc"]})
    table = pd.DataFrame(rows)
    table.attrs["settings"] = {"split": split, "eps": eps, "steps": steps, "seed": seed}
    return table


def embedding_markdown(table) -> str:
    """An :func:`embedding_table` as the README's Markdown table (tests regenerate and compare it)."""
    lines = ["| model | points | windows | median SNR (dB) | NMI | ARI | silhouette | retrieval ROC-AUC (other recordings) "
             "| retrieval ROC-AUC (all pairs) | NMI (2-D map) | retrieval ROC-AUC (2-D map) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        snr = "inf" if not np.isfinite(r["median_snr_db"]) else f"{r['median_snr_db']:.1f}"
        lines.append(f"| {r['model']} | {r['points']} | {r['n']} | {snr} | {r['nmi']:.3f} | {r['ari']:.3f} | {r['silhouette']:.3f} | "
                     f"{r['retrieval_roc_auc']:.3f} | {r['retrieval_roc_auc_all_pairs']:.3f} | {r['nmi_map']:.3f} | {r['retrieval_roc_auc_map']:.3f} |")
    return "\n".join(lines) + "\n"
