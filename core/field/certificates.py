"""A certificate beside what the plain model says on the same window, in words an ecologist reads.

A randomized-smoothing certificate (:mod:`core.attacks.smoothing`; Cohen, Rosenfeld & Kolter 2019) is about the
*smoothed* model's top-1 class: the species that wins most often on noisy copies of the window. That class is always
one of the model's species, so a certificate names a species even where the plain model detects no bird, on silence,
or on a window whose answer differs from the plain model's. :func:`certificate_notes` says so beside every
certificate, for the CLI (``python -m core certify``), its JSON and the pages' Certify panel alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.attacks.smoothing import Certificate
from core.field.analyze import SILENCE_DBFS

__all__ = ["PlainReading", "plain_reading", "reading_threshold", "window_reading", "certificate_notes", "at_cap"]

#: How much larger than the certified radius the attacks on the smoothed default model had to be, on 30 test windows
#: (``assets/certify/check_30windows.csv``; docs/methods.md, *Checking the certificates*): 4x to 256x.
MEASURED_GAP = (4, 256)


@dataclass(frozen=True)
class PlainReading:
    """What the plain model says on the clean window a certificate is about.

    Attributes
    ----------
    top_class : str
        The plain model's top-1 class code.
    top_score : float in [0, 1]
        Its score (sigmoid of the logit).
    detected : tuple of str
        Class codes whose score reaches ``threshold`` (what ``predict`` reports); empty: "no bird detected".
    threshold : float in (0, 1)
        The decision threshold used.
    level_dbfs : float [dB re full scale]
        RMS level of the window's audio; -inf for digital silence.
    """

    top_class: str
    top_score: float
    detected: tuple
    threshold: float
    level_dbfs: float

    @property
    def silent(self) -> bool:
        """The window is below :data:`core.field.analyze.SILENCE_DBFS` (where ``predict`` never detects)."""
        return not self.level_dbfs > SILENCE_DBFS


def plain_reading(scores: np.ndarray, class_names: Sequence[str], threshold: float, waveform: np.ndarray) -> PlainReading:
    """The plain model's reading of one window from its scores.

    Parameters
    ----------
    scores : np.ndarray [shape=(n_classes,)]
        The window's scores in [0, 1].
    class_names : sequence of str
        The model's class codes, in score order.
    threshold : float in (0, 1)
        The decision threshold (:func:`core.api.decision_threshold`).
    waveform : np.ndarray [shape=(n_samples,)] [full-scale amplitude]
        The window's real audio (no zero padding), for its level.

    Returns
    -------
    PlainReading
    """
    s = np.asarray(scores, dtype=float)
    top = int(np.argmax(s))
    x = np.asarray(waveform, dtype=np.float64)
    rms = math.sqrt(float(np.mean(x * x))) if len(x) else 0.0
    level = 20 * math.log10(rms) if rms > 0 else -math.inf
    detected = tuple(class_names[i] for i in np.flatnonzero(s >= threshold)) if level > SILENCE_DBFS else ()
    return PlainReading(class_names[top], float(s[top]), detected, float(threshold), level)


def reading_threshold(model) -> tuple[float, str]:
    """The threshold at which the plain model's reading beside a certificate counts a species as detected.

    Parameters
    ----------
    model : BirdClassifier

    Returns
    -------
    (threshold, source) : (float, str)
        :func:`core.field.detect.decision_threshold` (the one ``predict`` uses), else 0.5 for a model without a
        stored threshold (the certificate itself does not depend on it).
    """
    from core.errors import ParameterError
    from core.field.detect import decision_threshold

    try:
        return decision_threshold(model)
    except ParameterError:
        return 0.5, "0.5 (the model has no stored threshold)"


def window_reading(model, waveform, start_s: float, end_s: float, threshold: float) -> PlainReading:
    """The plain model's reading of the window ``[start_s, end_s)`` of a recording (zero-padded to the model's window,
    as the certificate's window is).

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray or torch.Tensor [shape=(n_samples,)] [full-scale amplitude]
        The whole recording at the model's rate.
    start_s, end_s : float [s]
        The window's real audio (a :class:`~core.attacks.smoothing.Certificate`'s ``start_s``, ``end_s``).
    threshold : float in (0, 1)

    Returns
    -------
    PlainReading
    """
    import torch

    sr = model.config.frontend.sample_rate
    a, b = int(round(start_s * sr)), int(round(end_s * sr))
    audio = np.asarray(waveform[a:b], dtype=np.float32)[: model.config.window_samples]
    x = np.zeros(model.config.window_samples, np.float32)
    x[: len(audio)] = audio
    with torch.no_grad():
        logits = model(torch.as_tensor(x[None], device=next(model.parameters()).device))
    return plain_reading(torch.sigmoid(logits).cpu().numpy()[0], model.config.class_names, threshold, audio)


def at_cap(c: Certificate) -> bool:
    """Every estimation copy agreed: the radius is the largest ``n`` copies can certify (more copies, larger radius)."""
    return c.radius is not None and c.radius >= c.max_radius * (1 - 1e-9)


def certificate_notes(c: Certificate, plain: PlainReading, name) -> list[str]:
    """Plain-language warnings that belong beside a certificate.

    Parameters
    ----------
    c : Certificate
    plain : PlainReading
        The plain model on the same clean window (:func:`plain_reading`).
    name : callable
        ``name(class_code) -> str``, the name to show for a species.

    Returns
    -------
    list of str
        In order of weight: a silent window; no bird detected by the plain model; the plain model's different answer;
        a radius at the cap. Empty when none applies.
    """
    notes = []
    if plain.silent:
        notes.append(f"The window is silent (below {SILENCE_DBFS:g} dBFS): the certificate names a species only because the "
                     "smoothed model must name one; it says nothing about a bird.")
    elif not plain.detected:
        notes.append(f"The plain model detects no bird here (no species reaches its threshold {plain.threshold:.2f}; its top "
                     f"score is {name(plain.top_class)} at {plain.top_score:.2f}): the certified species is only the one that "
                     "wins on noisy copies, not a detection.")
    if not c.abstained and c.class_name != plain.top_class:
        notes.append(f"The plain model's top species is {name(plain.top_class)}, not {name(c.class_name)}: the certificate "
                     "is about the smoothed model's answer.")
    if at_cap(c):
        notes.append(f"Every noisy copy agreed, so the radius is the largest {c.n:,} copies can certify: more copies would "
                     "certify a larger change (a lower dB figure); here the figure is a limit of the method, not of the model.")
    return notes
