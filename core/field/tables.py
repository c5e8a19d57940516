"""Detection tables of an analysed file: per-window outcomes, detections, BirdNET CSV and Raven selection tables."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd

from core.errors import ParameterError
from core.field.analyze import NO_BIRD, SILENCE_DBFS, SILENT, FileAnalysis, species_names


def _check_threshold(analysis: FileAnalysis, threshold: float | None) -> float:
    t = analysis.threshold if threshold is None else threshold
    if t is None:
        raise ParameterError(f"model {analysis.model or '?'} has no validation threshold; give one (e.g. --threshold 0.5)")
    if not (0.0 < float(t) < 1.0):
        raise ParameterError(f"threshold must lie in (0, 1), got {t}")
    return float(t)


def window_outcomes(analysis: FileAnalysis, threshold: float | None = None, names: dict | None = None) -> pd.DataFrame:
    """One row per window: what the model says, including "no bird detected".

    Parameters
    ----------
    analysis : FileAnalysis
    threshold : float, optional
        Default the analysis's (validation) threshold.
    names : dict, optional
        :func:`species_names`.

    Returns
    -------
    pandas.DataFrame
        ``start_s``, ``end_s``, ``outcome`` (English names of the species at or above
        the threshold, ``"no bird detected"``, or :data:`SILENT` for a window below
        :data:`SILENCE_DBFS`, whatever its scores), ``n_species``, ``top_species``,
        ``top_score``, ``level_dbfs``, ``padded``.

    Raises
    ------
    ParameterError
        No threshold given and none stored.
    """
    t = _check_threshold(analysis, threshold)
    names = names or species_names(analysis.class_names)
    silent = _silent(analysis)
    rows = []
    for i, s in enumerate(analysis.scores):
        above = [] if silent[i] else [j for j in np.argsort(-s) if s[j] >= t]
        top = int(np.argmax(s))
        outcome = SILENT if silent[i] else ", ".join(names[analysis.class_names[j]][1] for j in above) if above else NO_BIRD
        rows.append({"start_s": analysis.starts_s[i], "end_s": analysis.starts_s[i] + analysis.valid_s[i], "outcome": outcome,
                     "n_species": len(above), "top_species": names[analysis.class_names[top]][1],
                     "top_score": float(s[top]), "level_dbfs": float(analysis.level_dbfs[i]) if analysis.level_dbfs is not None else np.nan,
                     "padded": bool(analysis.padded[i])})
    return pd.DataFrame(rows)


def _silent(analysis: FileAnalysis) -> np.ndarray:
    if analysis.level_dbfs is None:
        return np.zeros(len(analysis.scores), bool)
    return np.asarray(analysis.level_dbfs) < SILENCE_DBFS


def detections(analysis: FileAnalysis, threshold: float | None = None, names: dict | None = None) -> pd.DataFrame:
    """Every (window, species) whose score reaches the threshold, by time then score (silent windows excluded).

    Returns
    -------
    pandas.DataFrame
        ``start_s``, ``end_s`` (the window's real audio), ``species_code``,
        ``scientific_name``, ``english_name``, ``confidence`` (the score), ``padded``, ``file``.
    """
    t = _check_threshold(analysis, threshold)
    names = names or species_names(analysis.class_names)
    w, j = np.nonzero((analysis.scores >= t) & ~_silent(analysis)[:, None])
    rows = [{"start_s": float(analysis.starts_s[a]), "end_s": float(analysis.starts_s[a] + analysis.valid_s[a]),
             "species_code": analysis.class_names[b], "scientific_name": names[analysis.class_names[b]][0],
             "english_name": names[analysis.class_names[b]][1], "confidence": float(analysis.scores[a, b]),
             "padded": bool(analysis.padded[a]), "file": analysis.path} for a, b in zip(w, j)]
    cols = ["start_s", "end_s", "species_code", "scientific_name", "english_name", "confidence", "padded", "file"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["start_s", "confidence"], ascending=[True, False], kind="stable").reset_index(drop=True)


def to_birdnet_csv(dets: pd.DataFrame) -> str:
    """Detections in BirdNET-Analyzer's CSV format (``Start (s),End (s),Scientific name,Common name,Confidence,File``)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File"])
    for r in dets.itertuples(index=False):
        w.writerow([f"{r.start_s:.1f}", f"{r.end_s:.1f}", r.scientific_name, r.english_name, f"{r.confidence:.4f}", r.file])
    return out.getvalue()


RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")


def to_raven_table(dets: pd.DataFrame, *, low_hz: float = 0.0, high_hz: float = 15_000.0) -> str:
    """Detections as a Raven selection table (tab-separated; BirdNET-Analyzer's columns).

    Parameters
    ----------
    dets : pandas.DataFrame
        :func:`detections`.
    low_hz, high_hz : float [Hz]
        The selection's band: the band the model sees (the models classify whole
        windows; they do not localise a call in frequency).
    """
    if not (0 <= low_hz < high_hz) or not math.isfinite(high_hz):
        raise ParameterError(f"need 0 <= low_hz < high_hz, got {low_hz}, {high_hz}")
    lines = ["\t".join(RAVEN_COLUMNS)]
    for i, r in enumerate(dets.itertuples(index=False), start=1):
        lines.append("\t".join([str(i), "Spectrogram 1", "1", f"{r.start_s:.4f}", f"{r.end_s:.4f}", f"{low_hz:.1f}", f"{high_hz:.1f}",
                                r.english_name, r.species_code, f"{r.confidence:.4f}", str(r.file), f"{r.start_s:.4f}"]))
    return "\n".join(lines) + "\n"
