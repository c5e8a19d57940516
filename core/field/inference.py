"""Clip-level inference and attack: windows in, per-window and per-recording results out.

The attack machinery (:mod:`core.attacks`) and the metrics (:mod:`core.metrics`, which loads scikit-learn) are
imported by the functions that attack, so ``predict`` and the Clip page's scoring do not pay for them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from core.errors import ParameterError
from core.io.audio import frame_windows, load_audio

if TYPE_CHECKING:
    from core.models.base import BirdClassifier, ModelOutput

__all__ = ["ClipAnalysis", "analyze_waveform", "confident_window", "attack_waveform", "predict_file", "attack_file", "top_classes"]


@dataclass
class ClipAnalysis:
    """Model outputs for every window of a clip.

    Attributes
    ----------
    windows : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
    starts : list of int [samples]
    scores : np.ndarray [shape=(n_windows, n_classes)]
        Sigmoid scores.
    similarity_maps : np.ndarray or None [shape=(n_windows, n_prototypes, freq, time)]
    prototype_activations : np.ndarray or None [shape=(n_windows, n_prototypes)]
    embedding : np.ndarray [shape=(n_windows, embed_dim)]
    """

    windows: np.ndarray
    starts: list[int]
    scores: np.ndarray
    similarity_maps: np.ndarray | None
    prototype_activations: np.ndarray | None
    embedding: np.ndarray

    @property
    def recording_scores(self) -> np.ndarray:
        """Max over windows, ``(n_classes,)``."""
        return self.scores.max(0)


def _device(model):
    return next(model.parameters()).device


@torch.no_grad()
def analyze_waveform(model: BirdClassifier, waveform: np.ndarray, *, batch_size: int = 16) -> ClipAnalysis:
    """Cut a mono waveform at the model's rate into windows and run the model on each.

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray [shape=(n_samples,)] at ``model.config.frontend.sample_rate``

    Returns
    -------
    ClipAnalysis
    """
    windows, starts = frame_windows(waveform, model.config.window_samples)
    from core.io.device import scoring_autocast, scoring_batch_size

    outs: list[ModelOutput] = []
    model.eval()
    device = _device(model)
    batch_size = scoring_batch_size(device, batch_size)
    for i in range(0, len(windows), batch_size):
        with scoring_autocast(device):
            outs.append(model.forward_all(torch.as_tensor(windows[i : i + batch_size], device=device)))

    def cat(name):
        parts = [getattr(o, name) for o in outs]
        return None if parts[0] is None else torch.cat(parts).float().cpu().numpy()

    return ClipAnalysis(
        windows=windows,
        starts=starts,
        scores=torch.sigmoid(torch.cat([o.logits for o in outs])).float().cpu().numpy(),
        similarity_maps=cat("similarity_maps"),
        prototype_activations=cat("prototype_activations"),
        embedding=cat("embedding"),
    )


def attack_waveform(
    model: BirdClassifier,
    waveform: np.ndarray,
    *,
    eps: float,
    steps: int = 10,
    alpha: float | None = None,
    random_start: bool = True,
    seed: int = 0,
    targets: np.ndarray | None = None,
    batch_size: int = 8,
    objective: str = "output-untargeted",
    target_class: int | None = None,
    eot=None,
    eot_samples: int = 4,
    masking: bool = False,
) -> np.ndarray:
    """PGD (L-inf, waveform domain) on every window of a clip; returns the perturbed clip.

    Zero padding of the last window is never perturbed, so the returned clip has
    the input's length and the model sees exactly what the user hears.

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray [shape=(n_samples,)], full-scale amplitude
    eps : float in [0, 1] [full-scale amplitude]
    steps : int >= 1
        1 with ``random_start=False`` is FGSM.
    alpha : float, optional
        Step size, default ``2.5 * eps / steps``.
    seed : int
        Seeds the random start.
    targets : np.ndarray [shape=(n_classes,)], optional
        True labels; default: the clean prediction of each window.
    objective : {"output-untargeted", "output-margin"}
        BCE against the labels (set of species above 0.5), or the margin loss
        that pushes each window's top-1 species below the runner-up
        (:class:`~core.attacks.objectives.OutputMargin`; threshold-free, the
        natural choice for BirdNET's many classes). ``"output-targeted-margin"``
        makes every window say ``target_class``
        (:class:`~core.attacks.objectives.OutputTargetedMargin`).
    target_class : int, optional
        Class index for ``"output-targeted-margin"``.
    eot : core.attacks.threats.Transform, optional
        Expectation over transformation: each step's loss is averaged over
        ``eot_samples`` random draws of this transformation (:class:`core.attacks.threats.EOT`),
        so the perturbation is made to survive it.
    eot_samples : int
    masking : bool
        Keep the perturbation under each window's psychoacoustic masking threshold
        (:class:`core.attacks.psychoacoustic.MaskedPGD`); ``eps`` is then only the search's L-inf cap.

    Raises
    ------
    ParameterError
        Bad eps, alpha, steps or objective.

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32]
    """
    from core.attacks import PGD, make_objective

    waveform = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    n = len(waveform)
    win = model.config.window_samples
    windows, starts = frame_windows(waveform, win)
    mask = np.zeros_like(windows)
    for i, s in enumerate(starts):
        mask[i, : min(win, n - s)] = 1.0
    if alpha is not None and not (eps > 0 and alpha > 0):
        raise ParameterError(f"alpha must be > 0 with eps > 0, got alpha={alpha}, eps={eps}")
    ratio = None if alpha is None or eps == 0 else alpha / eps
    if objective not in ("output-untargeted", "output-margin", "output-targeted-margin"):
        raise ParameterError(f"objective must be 'output-untargeted', 'output-margin' or 'output-targeted-margin', got {objective!r}")
    if objective == "output-targeted-margin":
        if target_class is None:
            raise ParameterError("output-targeted-margin needs a target_class")
        obj = make_objective(objective, class_index=target_class)
        obj.check_model(model)
    else:
        obj = make_objective(objective)
    if eot is not None:
        from core.attacks.threats import EOT

        obj = EOT(obj, eot, samples=eot_samples, seed=seed)
    if masking:
        from core.attacks.psychoacoustic import MaskedPGD

        attack = MaskedPGD(eps=eps, steps=steps, seed=seed, objective=obj)
    else:
        attack = PGD(eps=eps, alpha_ratio=ratio, steps=steps, random_start=random_start, seed=seed, objective=obj)
    device = _device(model)
    adv = np.empty_like(windows)
    for i in range(0, len(windows), batch_size):
        x = torch.as_tensor(windows[i : i + batch_size], device=device)
        y = None if targets is None else torch.as_tensor(np.repeat(targets[None], len(x), 0), device=device)
        adv[i : i + batch_size] = attack(model, x, y, mask=torch.as_tensor(mask[i : i + batch_size])).cpu().numpy()
    out = waveform.copy()
    for i, s in enumerate(starts):
        k = min(win, n - s)
        out[s : s + k] = adv[i, :k]
    return out


def confident_window(model: BirdClassifier, waveform: np.ndarray, class_index: int) -> tuple[int, float] | None:
    """The window of a clip where the model names ``class_index`` top-1 with the widest margin.

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray [shape=(n_samples,)] at the model's rate
    class_index : int

    Returns
    -------
    (start, margin) or None
        ``start`` in samples; ``margin`` = the class's logit minus the best other logit
        (> 0). None when no window has the class top-1.
    """
    res = analyze_waveform(model, waveform)
    logits = np.log(np.clip(res.scores, 1e-7, 1 - 1e-7)) - np.log(np.clip(1 - res.scores, 1e-7, 1))
    others = np.delete(logits, class_index, axis=1).max(1)
    margin = logits[:, class_index] - others
    best = int(np.argmax(margin))
    return (int(res.starts[best]), float(margin[best])) if margin[best] > 0 else None


def top_classes(scores: np.ndarray, class_names, k: int = 3) -> list[dict]:
    """The ``k`` best classes as ``[{"species": code, "score": float}]``."""
    order = np.argsort(-np.asarray(scores))[:k]
    return [{"species": class_names[i], "score": round(float(scores[i]), 4)} for i in order]


def _load_for(model, path):
    if not os.path.exists(path):
        raise ParameterError(f"no such file: {path}")
    return load_audio(path, sample_rate=model.config.frontend.sample_rate)


def predict_file(model: BirdClassifier, path: str) -> dict:
    """JSON-ready predictions for an audio file, per window and per recording."""
    clip = _load_for(model, path)
    res = analyze_waveform(model, clip.waveform)
    names = model.config.class_names
    sr = clip.sample_rate
    return {
        "file": str(path),
        "duration_s": clip.duration_s,
        "windows": [
            {"start_s": s / sr, "top": top_classes(res.scores[i], names), "scores": dict(zip(names, map(float, res.scores[i])))}
            for i, s in enumerate(res.starts)
        ],
        "top": top_classes(res.recording_scores, names),
    }


def attack_file(model: BirdClassifier, path: str, *, eps: float, steps: int = 10, alpha: float | None = None, seed: int = 0,
                objective: str | None = None, target_species: str | None = None, masking: bool = False):
    """Attack an audio file window by window (:func:`attack_waveform`); returns (JSON-ready result, perturbed waveform).

    Parameters
    ----------
    model : BirdClassifier
    path : str
        Audio file (any format soundfile or librosa reads), down-mixed and resampled to the model's rate.
    eps, steps, alpha, seed, masking
        As in :func:`attack_waveform`.
    objective : {"output-untargeted", "output-margin", "output-targeted-margin"}, optional
        Default: the margin loss for BirdNET itself (arch ``"birdnet"``: thousands of classes, no threshold to
        cross), BCE against the clean prediction otherwise (as the Attack page chooses).
    target_species : str, optional
        For ``"output-targeted-margin"``: a class name of the model (case-insensitive).

    Raises
    ------
    ParameterError
        Bad settings, a target species the model does not know, or one given without the targeted objective.
    AudioError
        The file cannot be read.
    """
    from core.attacks import clean_prediction_targets
    from core.metrics import linf, snr_db

    if not isinstance(steps, int) or steps < 1:
        raise ParameterError(f"steps must be an integer >= 1, got {steps}")
    names = list(model.config.class_names)
    objective = objective or ("output-margin" if model.config.arch == "birdnet" else "output-untargeted")
    target_class = None
    if (objective == "output-targeted-margin") != (target_species is not None):
        raise ParameterError("a target species goes with the output-targeted-margin objective, and only with it "
                             f"(got objective {objective!r}, target species {target_species!r})")
    if target_species is not None:
        lowered = [n.lower() for n in names]
        if target_species.strip().lower() not in lowered:
            close = [n for n in names if target_species.strip().lower() in n.lower()][:5]
            raise ParameterError(f"the model has no class {target_species!r}"
                                 + (f"; did you mean {', '.join(close)}?" if close else f"; its classes: {', '.join(names[:9])}"
                                    + (", ..." if len(names) > 9 else "")))
        target_class = lowered.index(target_species.strip().lower())
    clip = _load_for(model, path)
    adv = attack_waveform(model, clip.waveform, eps=eps, steps=steps, alpha=alpha, random_start=steps > 1, seed=seed,
                          objective=objective, target_class=target_class, masking=masking)
    before = analyze_waveform(model, clip.waveform)
    after = analyze_waveform(model, adv)
    sr = clip.sample_rate
    with torch.no_grad():
        pred_before = clean_prediction_targets(torch.logit(torch.as_tensor(before.scores).clamp(1e-6, 1 - 1e-6)))
        pred_after = clean_prediction_targets(torch.logit(torch.as_tensor(after.scores).clamp(1e-6, 1 - 1e-6)))
    changed = (pred_before != pred_after).any(-1).numpy()
    result = {
        "file": str(path),
        "eps": eps,
        "steps": steps,
        "objective": objective,
        "target_species": None if target_class is None else names[target_class],
        "masking": masking,
        "snr_db": float(snr_db(clip.waveform, adv)),
        "linf": float(linf(clip.waveform, adv)),
        "windows_changed": int(changed.sum()),
        "windows": [
            {
                "start_s": s / sr,
                "top_before": top_classes(before.scores[i], names),
                "top_after": top_classes(after.scores[i], names),
                "prediction_changed": bool(changed[i]),
            }
            for i, s in enumerate(before.starts)
        ],
        "top_before": top_classes(before.recording_scores, names),
        "top_after": top_classes(after.recording_scores, names),
    }
    return result, adv
