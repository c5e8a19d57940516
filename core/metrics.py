"""Classification and perceptibility metrics.

Classification metrics follow BirdSet (Rauch et al. 2024): cmAP is the mean
over classes of the average precision (scikit-learn's ``average_precision_score``),
macro ROC-AUC likewise; classes with no positive (or no negative) example in
the evaluated set are left out of the mean and counted in the result.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from core.errors import ParameterError

__all__ = ["cmap", "macro_roc_auc", "top1_accuracy", "classification_metrics", "snr_db", "linf", "eps_for_snr"]


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ParameterError(f"scores and targets must both be (n, n_classes), got {scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ParameterError("scores contain NaN or inf")
    return scores, (targets > 0.5).astype(np.int64)


def cmap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Class-wise mean average precision (cmAP).

    Parameters
    ----------
    scores : np.ndarray [shape=(n, n_classes)]
    targets : np.ndarray [shape=(n, n_classes)], multi-hot {0, 1}

    Returns
    -------
    float in [0, 1], NaN if no class has a positive.
    """
    scores, targets = _check(scores, targets)
    keep = targets.sum(0) > 0
    if not keep.any():
        return float("nan")
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(keep)]))


def macro_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of ROC-AUC (classes with both positives and negatives)."""
    scores, targets = _check(scores, targets)
    pos = targets.sum(0)
    keep = (pos > 0) & (pos < targets.shape[0])
    if not keep.any():
        return float("nan")
    return float(np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(keep)]))


def top1_accuracy(scores: np.ndarray, focal: np.ndarray) -> float:
    """Fraction of rows whose highest-scoring class is one of the focal labels.

    Parameters
    ----------
    scores : np.ndarray [shape=(n, n_classes)]
    focal : np.ndarray [shape=(n, n_classes)], multi-hot focal (primary) labels
    """
    scores, focal = _check(scores, focal)
    if scores.shape[0] == 0:
        return float("nan")
    return float(focal[np.arange(scores.shape[0]), scores.argmax(1)].mean())


def classification_metrics(scores: np.ndarray, targets: np.ndarray, focal: np.ndarray | None = None) -> dict:
    """cmAP, macro ROC-AUC and top-1 accuracy in one dict (keys ``cmap``, ``roc_auc``, ``top1``, ``n``)."""
    out = {"cmap": cmap(scores, targets), "roc_auc": macro_roc_auc(scores, targets), "n": int(np.shape(scores)[0])}
    out["top1"] = top1_accuracy(scores, targets if focal is None else focal)
    return out


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))


def snr_db(clean, perturbed) -> torch.Tensor:
    """Signal-to-noise ratio of a perturbation [dB].

    ``SNR = 10 log10(sum(x^2) / sum((x' - x)^2))`` per clip.

    Parameters
    ----------
    clean, perturbed : array or tensor [shape=(batch, n_samples) or (n_samples,)]

    Returns
    -------
    torch.Tensor [shape=(batch,) or ()]
        ``inf`` for an unchanged clip, ``-inf`` for a silent clean clip.
    """
    x, xp = _as_tensor(clean).double(), _as_tensor(perturbed).double()
    if x.shape != xp.shape:
        raise ParameterError(f"clean and perturbed shapes differ: {tuple(x.shape)} vs {tuple(xp.shape)}")
    sig = x.square().sum(-1)
    noise = (xp - x).square().sum(-1)
    return (10 * torch.log10(sig) - 10 * torch.log10(noise)).float()


def linf(clean, perturbed) -> torch.Tensor:
    """L-infinity norm of the perturbation per clip [full-scale amplitude]."""
    return (_as_tensor(perturbed) - _as_tensor(clean)).abs().amax(-1)


def eps_for_snr(clean: Sequence[float] | np.ndarray, target_snr_db: float) -> float:
    """L-inf ``eps`` whose uniform +-eps perturbation gives ``target_snr_db``.

    A sign perturbation of amplitude eps has power eps^2, so
    ``eps = rms(x) * 10^(-SNR/20)``. PGD's perturbation is close to a sign
    pattern, so this is the budget shown beside an SNR target.

    Parameters
    ----------
    clean : array [shape=(n_samples,)]
    target_snr_db : float [dB]

    Returns
    -------
    float [full-scale amplitude]
    """
    x = np.asarray(clean, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if x.size else 0.0
    return rms * 10 ** (-target_snr_db / 20)
