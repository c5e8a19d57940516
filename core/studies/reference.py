"""Simple reference: logistic regression on mean log-mel features.

Each 5 s window is summarised by the time average of its log-mel spectrogram
(``n_mels`` values, dB, from the same front end as the models), standardised,
and classified by one-vs-rest logistic regression (scikit-learn). The inverse
regularisation ``C`` is picked on the validation split by window cmAP. Metrics
are computed exactly as for the models (:func:`core.training.train.metrics_from_scores`).
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from core.io.data import Dataset, WindowSet, build_windows
from core.metrics import cmap, metrics_from_scores
from core.models.frontend import FrontendConfig, LogMel

__all__ = ["mean_logmel_features", "reference_logreg"]


@torch.no_grad()
def mean_logmel_features(waveforms: np.ndarray, frontend: FrontendConfig, *, batch_size: int = 64) -> np.ndarray:
    """Time-averaged log-mel [dB] per window, ``(n_windows, n_mels)`` float32."""
    mel = LogMel(frontend)
    out = [mel.db(torch.as_tensor(waveforms[i : i + batch_size])).mean(-1).numpy() for i in range(0, len(waveforms), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, frontend.n_mels), np.float32)


def reference_logreg(
    dataset: Dataset,
    *,
    frontend: FrontendConfig | None = None,
    window_s: float = 5.0,
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    class_names=None,
) -> dict:
    """Fit the reference on train, choose C on val, report val and test metrics.

    Returns
    -------
    dict
        ``{"method": str, "C": float, "metrics": {"val": ..., "test": ...}}`` with
        window- and recording-level cmAP, macro ROC-AUC and top-1.
    """
    frontend = frontend or FrontendConfig()
    class_names = list(class_names or dataset.class_names)
    sets: dict[str, WindowSet] = {
        s: build_windows(dataset, dataset.split(s), sample_rate=frontend.sample_rate, window_s=window_s, class_names=class_names)
        for s in ("train", "val", "test")
    }
    feats = {s: mean_logmel_features(w.waveforms, frontend) for s, w in sets.items()}
    y = sets["train"].targets.astype(int)
    present = y.sum(0) > 0

    def fit(c):
        clf = make_pipeline(StandardScaler(), OneVsRestClassifier(LogisticRegression(C=c, max_iter=5000)))
        clf.fit(feats["train"], y[:, present])
        return clf

    def scores(clf, s):
        out = np.zeros((len(feats[s]), len(class_names)), np.float32)
        out[:, present] = clf.predict_proba(feats[s])
        return out

    best_c, best, best_clf = None, -1.0, None
    for c in c_grid:
        clf = fit(c)
        v = cmap(scores(clf, "val"), sets["val"].targets)
        if v > best:
            best_c, best, best_clf = c, v, clf
    return {
        "method": "one-vs-rest logistic regression on the time-mean log-mel (dB, standardised); C chosen on val",
        "C": best_c,
        "metrics": {s: metrics_from_scores(scores(best_clf, s), sets[s], class_names) for s in ("val", "test")},
    }
