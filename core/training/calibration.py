"""Per-model decision thresholds chosen on the validation split, and the set-change success they define.

The models' sigmoid scores are not calibrated (an asymmetric-loss AudioProtoPNet
scores absent species around 0.4), so a fixed cut-off of 0.5 says more about the
loss than about the model. Where a *predicted species set* is needed, each model
gets its own cut-off: the one that maximises micro-F1 over every (window, class)
pair of the validation split (never the test split), stored in its model card as
``decision_threshold``. The default success of every attack stays threshold-free
(top-1 changed, :mod:`core.attacks.objectives`); "predicted set changed at the
validation threshold" is the secondary definition the Sweep page and
:func:`core.studies.sweep.summarize` add when a card carries a threshold.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from core.errors import ParameterError

__all__ = ["choose_threshold", "model_threshold", "calibrate_model", "threshold_entry", "card_thresholds", "builtin_threshold_path"]


def choose_threshold(scores: np.ndarray, targets: np.ndarray) -> dict:
    """The score cut-off that maximises micro-F1 over all (window, class) pairs.

    Parameters
    ----------
    scores : np.ndarray [shape=(n_windows, n_classes)], float in [0, 1]
        Sigmoid scores on validation windows.
    targets : np.ndarray [shape=(n_windows, n_classes)], {0, 1}
        Multi-hot labels of the same windows.

    Returns
    -------
    dict
        ``value`` (the cut-off: a class is predicted when its score >= value),
        ``micro_f1`` at that cut-off, ``micro_f1_at_0.5`` for comparison,
        ``mean_predicted`` (species predicted per window at the cut-off) and
        ``n_windows``.

    Raises
    ------
    ParameterError
        Shapes differ, fewer than 2 windows, or no positive label.
    """
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ParameterError(f"scores and targets must be equal 2-d arrays, got {scores.shape} and {targets.shape}")
    if len(scores) < 2 or targets.sum() == 0:
        raise ParameterError("choosing a threshold needs at least 2 windows and one positive label")
    from sklearn.metrics import precision_recall_curve  # loaded here: reading a card's threshold needs no scikit-learn

    precision, recall, cut = precision_recall_curve(targets.ravel(), scores.ravel())
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)[:-1]
    best = int(np.argmax(f1))
    value = float(cut[best])

    def micro_f1(t: float) -> float:
        pred = scores >= t
        tp = float((pred * targets).sum())
        return 2 * tp / max(float(pred.sum() + targets.sum()), 1e-12)

    return {"value": value, "micro_f1": micro_f1(value), "micro_f1_at_0.5": micro_f1(0.5),
            "mean_predicted": float((scores >= value).sum(1).mean()), "n_windows": int(len(scores))}


def model_threshold(card: Mapping) -> float | None:
    """The validation threshold stored in a model card, or None when it has none."""
    t = (card or {}).get("decision_threshold")
    return float(t["value"]) if isinstance(t, Mapping) and "value" in t else None


def builtin_threshold_path(name: str) -> Path:
    """Where the validation threshold of a built-in model (BirdNET) is stored: ``assets/<name>/decision_threshold.json``."""
    return Path(__file__).resolve().parents[2] / "assets" / str(name) / "decision_threshold.json"


def card_thresholds(names) -> dict[str, float]:
    """``{name: threshold}`` for the named checkpoints whose model cards carry one.

    A built-in model (BirdNET) has no card: its threshold is read from
    :func:`builtin_threshold_path` (written by ``python -m core calibrate --model
    birdnet``). Names without either (models of a loaded table that are not
    installed here) are left out, so their set-change rate shows as NaN.

    Raises
    ------
    CheckpointError
        A card or a stored threshold exists but is corrupt (never silently ignored).
    """
    from core.errors import CheckpointError
    from core.models.registry import BUILTIN_MODELS, read_model_card

    out = {}
    for name in names:
        if str(name) in BUILTIN_MODELS:
            path = builtin_threshold_path(name)
            if path.is_file():
                try:
                    out[str(name)] = float(json.loads(path.read_text())["value"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise CheckpointError(f"{path}: not a decision threshold ({exc})") from exc
            continue
        t = model_threshold(read_model_card(name))
        if t is not None:
            out[str(name)] = t
    return out


def calibrate_model(model, dataset, *, batch_size: int = 32) -> dict:
    """Choose a model's decision threshold on the validation split of ``dataset``.

    Parameters
    ----------
    model : BirdClassifier
    dataset : core.io.data.Dataset
        Its split scheme decides which recordings are "val".

    Returns
    -------
    dict
        :func:`choose_threshold`'s fields plus ``split``, ``split_scheme`` and
        ``criterion``: the ``decision_threshold`` entry of a model card.
    """
    from core.io.data import build_windows
    from core.models.scoring import predict_scores

    cfg = model.config
    val = build_windows(dataset, dataset.split("val"), sample_rate=cfg.frontend.sample_rate, window_s=cfg.clip_seconds,
                        class_names=cfg.class_names)
    return threshold_entry(predict_scores(model, val.waveforms, batch_size=batch_size), val.targets, dataset.split_scheme)


def threshold_entry(val_scores: np.ndarray, val_targets: np.ndarray, split_scheme: str) -> dict:
    """A model card's ``decision_threshold`` entry from validation scores and labels (:func:`choose_threshold`)."""
    return {**choose_threshold(val_scores, val_targets), "split": "val", "split_scheme": split_scheme,
            "criterion": "maximises micro-F1 over (window, class) pairs of the validation windows"}
