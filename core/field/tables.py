"""Detection tables of an analysed file: per-window outcomes, detections, BirdNET CSV and Raven selection tables.

Species are named as BirdNET-Analyzer names them (:mod:`core.io.names`): the eBird code (the Raven table's
``Species Code``) and the common name in a chosen locale (``Common Name``), looked up by scientific name. Species
that the location/week filter left out (:attr:`FileAnalysis.allowed`) appear in no table.
"""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pandas as pd

from core.errors import ParameterError
from core.field.analyze import NO_BIRD, SILENCE_DBFS, SILENT, FileAnalysis, species_names
from core.io.names import check_locale, common_name, ebird_code, known_species, scientific_name_of


def _check_threshold(analysis: FileAnalysis, threshold: float | None) -> float:
    t = analysis.threshold if threshold is None else threshold
    if t is None:
        raise ParameterError(f"model {analysis.model or '?'} has no validation threshold; give one (e.g. --threshold 0.5)")
    if not (0.0 < float(t) < 1.0):
        raise ParameterError(f"threshold must lie in (0, 1), got {t}")
    return float(t)


def local_names(names: dict, locale: str | None = None, ebird: dict | None = None) -> dict[str, tuple[str, str | None]]:
    """``{code: (common name in locale, eBird code or None)}`` for the classes of ``names``.

    Parameters
    ----------
    names : dict
        :func:`species_names` (``{code: (scientific name, English name)}``).
    locale : str, optional
        One of :func:`core.io.names.available_locales`; None keeps the English names of ``names`` (the dataset's).
        A species BirdNET does not know keeps its English name in every locale.
    ebird : dict, optional
        ``{code: eBird code}`` overriding the lookup by scientific name (e.g. classes that are eBird codes).

    Raises
    ------
    ParameterError
        Unknown locale (the message lists the valid ones).
    """
    locale = None if locale is None else check_locale(locale)
    out = {}
    for code, (sci, eng) in names.items():
        known = known_species(sci)
        common = common_name(sci, locale) if locale is not None and known else eng
        code_ = (ebird or {}).get(code) or (ebird_code(sci) if known else code if scientific_name_of(code) else None)
        out[code] = (common, code_)
    return out


def window_outcomes(analysis: FileAnalysis, threshold: float | None = None, names: dict | None = None,
                    locale: str | None = None) -> pd.DataFrame:
    """One row per window: what the model says, including "no bird detected".

    Parameters
    ----------
    analysis : FileAnalysis
    threshold : float, optional
        Default the analysis's (validation) threshold.
    names : dict, optional
        :func:`species_names`.
    locale : str, optional
        Language of the species names (:func:`local_names`); default the English names of ``names``.

    Returns
    -------
    pandas.DataFrame
        ``start_s``, ``end_s``, ``outcome`` (names of the species at or above
        the threshold, ``"no bird detected"``, or :data:`SILENT` for a window below
        :data:`SILENCE_DBFS`, whatever its scores), ``n_species``, ``top_species``,
        ``top_score``, ``level_dbfs``, ``padded``. Species left out by the location
        filter count nowhere, not even as the top species.

    Raises
    ------
    ParameterError
        No threshold given and none stored; unknown locale.
    """
    t = _check_threshold(analysis, threshold)
    names = names or species_names(analysis.class_names)
    local = local_names(names, locale)
    silent = _silent(analysis)
    scores = _allowed_scores(analysis)
    rows = []
    for i, s in enumerate(scores):
        above = [] if silent[i] else [j for j in np.argsort(-s) if s[j] >= t]
        top = int(np.argmax(s))
        outcome = SILENT if silent[i] else ", ".join(local[analysis.class_names[j]][0] for j in above) if above else NO_BIRD
        rows.append({"start_s": analysis.starts_s[i], "end_s": analysis.starts_s[i] + analysis.valid_s[i], "outcome": outcome,
                     "n_species": len(above), "top_species": local[analysis.class_names[top]][0] if s[top] >= 0 else "",
                     "top_score": float(s[top]) if s[top] >= 0 else np.nan,
                     "level_dbfs": float(analysis.level_dbfs[i]) if analysis.level_dbfs is not None else np.nan,
                     "padded": bool(analysis.padded[i])})
    return pd.DataFrame(rows)


def _allowed_scores(analysis: FileAnalysis) -> np.ndarray:
    """The scores with the species the location filter left out set to -1 (below every threshold)."""
    if analysis.allowed is None:
        return analysis.scores
    return np.where(np.asarray(analysis.allowed, bool)[None, :], analysis.scores, np.float32(-1.0))


def _silent(analysis: FileAnalysis) -> np.ndarray:
    if analysis.level_dbfs is None:
        return np.zeros(len(analysis.scores), bool)
    return np.asarray(analysis.level_dbfs) < SILENCE_DBFS


def detections(analysis: FileAnalysis, threshold: float | None = None, names: dict | None = None, locale: str | None = None,
               ebird: dict | None = None) -> pd.DataFrame:
    """Every (window, species) whose score reaches the threshold, by time then score (silent windows and species
    left out by the location filter excluded).

    Parameters
    ----------
    analysis : FileAnalysis
    threshold : float in (0, 1), optional
        Default the analysis's (validation) threshold.
    names : dict, optional
        :func:`species_names`.
    locale : str, optional
        Language of ``common_name`` (:func:`local_names`); default the English names of ``names``.
    ebird : dict, optional
        ``{code: eBird code}`` overriding the lookup by scientific name.

    Returns
    -------
    pandas.DataFrame
        ``start_s``, ``end_s`` (the window's real audio) [s], ``species_code`` (the model's class), ``ebird_code``
        (None where BirdNET's table has none), ``scientific_name``, ``common_name`` (in ``locale``),
        ``english_name`` (the model's or dataset's), ``confidence`` (the score), ``padded``, ``file``.

    Raises
    ------
    ParameterError
        No threshold given and none stored; unknown locale.
    """
    t = _check_threshold(analysis, threshold)
    names = names or species_names(analysis.class_names)
    local = local_names(names, locale, ebird)
    w, j = np.nonzero((_allowed_scores(analysis) >= t) & ~_silent(analysis)[:, None])
    rows = []
    for a, b in zip(w, j):
        code = analysis.class_names[b]
        rows.append({"start_s": float(analysis.starts_s[a]), "end_s": float(analysis.starts_s[a] + analysis.valid_s[a]),
                     "species_code": code, "ebird_code": local[code][1], "scientific_name": names[code][0], "common_name": local[code][0],
                     "english_name": names[code][1], "confidence": float(analysis.scores[a, b]), "padded": bool(analysis.padded[a]),
                     "file": analysis.path})
    cols = ["start_s", "end_s", "species_code", "ebird_code", "scientific_name", "common_name", "english_name", "confidence", "padded", "file"]
    df = pd.DataFrame(rows, columns=cols)
    return df.sort_values(["start_s", "confidence"], ascending=[True, False], kind="stable").reset_index(drop=True)


def to_birdnet_csv(dets: pd.DataFrame) -> str:
    """Detections in BirdNET-Analyzer's CSV format (``Start (s),End (s),Scientific name,Common name,Confidence,File``);
    ``Common name`` in the locale :func:`detections` was given."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File"])
    for r in dets.itertuples(index=False):
        w.writerow([f"{r.start_s:.1f}", f"{r.end_s:.1f}", r.scientific_name, r.common_name, f"{r.confidence:.4f}", r.file])
    return out.getvalue()


RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)",
                 "Common Name", "Species Code", "Confidence", "Begin Path", "File Offset (s)")


def to_raven_table(dets: pd.DataFrame, *, low_hz: float = 0.0, high_hz: float = 15_000.0) -> str:
    """Detections as a Raven selection table (tab-separated; BirdNET-Analyzer 2.4.0's columns, ``RAVEN_TABLE_HEADER``
    in its ``analyze/utils.py``): ``Species Code`` is the eBird code (the model's class code where BirdNET's table has
    none), ``Common Name`` the name in the locale :func:`detections` was given.

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
                                r.common_name, r.ebird_code or r.species_code, f"{r.confidence:.4f}", str(r.file), f"{r.start_s:.4f}"]))
    return "\n".join(lines) + "\n"


def to_records(dets: pd.DataFrame) -> list[dict]:
    """Detections as birdnetlib's dicts (``Recording.detections``), plus the eBird code.

    Parameters
    ----------
    dets : pandas.DataFrame
        :func:`detections`.

    Returns
    -------
    list of dict
        ``start_time``, ``end_time`` [s], ``scientific_name``, ``common_name`` (in the locale :func:`detections` was
        given), ``label`` (``"Scientific name_Common name"``, birdnetlib's), ``confidence``, ``ebird_code`` (None where
        BirdNET's eBird table has none), JSON-ready.
    """
    return [{"start_time": float(r.start_s), "end_time": float(r.end_s), "scientific_name": r.scientific_name, "common_name": r.common_name,
             "label": f"{r.scientific_name}_{r.common_name}", "confidence": float(r.confidence),
             "ebird_code": None if r.ebird_code is None or (isinstance(r.ebird_code, float) and math.isnan(r.ebird_code)) else str(r.ebird_code)}
            for r in dets.itertuples(index=False)]
