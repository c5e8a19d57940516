"""The budget each explanation attack needs, window by window: a table, and its Markdown for docs/methods.md.

For each window and each attack of :mod:`core.field.explanation_attack`, :func:`budget_table` tries a grid of L-inf
budgets in increasing order (:func:`~core.field.explanation_attack.smallest_eps`) and records the first that keeps
the top-1 class and moves the explanation, with its SNR and how far the explanation moved there (top-3 prototype
overlap, Spearman rank correlations of the maps, evidence centroid shift in Hz and s) and the clean gap that made the
move cheap. ``bench/explanation_attack_budgets.py`` writes the tables stored in ``assets/explanation_attack/``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from core.errors import ParameterError
from core.field.explanation_attack import KINDS, smallest_eps

__all__ = ["BUDGET_COLUMNS", "budget_table", "budgets_markdown"]

BUDGET_COLUMNS = ["model", "recording_id", "start_s", "top1", "kind", "eps", "snr_db", "budgets_tried", "label_changed",
                  "clean_gap", "topk_overlap", "similarity_spearman", "attribution_spearman", "centroid_shift_hz",
                  "centroid_shift_s"]


def budget_table(model, model_name: str, windows: Sequence[tuple[str, float, np.ndarray]], *, epsilons: Sequence[float],
                 kinds: Sequence[str] = KINDS, steps: int = 10, band_hz: tuple[float, float] = (4000.0, 8000.0),
                 progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The smallest budget of a grid at which each explanation attack succeeds, per window.

    Parameters
    ----------
    model : BirdClassifier
    model_name : str
        Written in the ``model`` column.
    windows : sequence of (recording_id, start [s], waveform [shape=(n_samples,), dtype=float32])
    epsilons : sequence of float in (0, 1] [full-scale amplitude]
    kinds : sequence of str
        Attacks of :data:`~core.field.explanation_attack.KINDS`.
    steps : int
        PGD steps (seed 0).
    band_hz : (float, float) [Hz]
        The attribution attack's band, over the whole window.
    progress : callable(done, total), optional

    Returns
    -------
    pandas.DataFrame
        :data:`BUDGET_COLUMNS`, one row per window and attack: ``eps`` [full-scale amplitude] and ``snr_db`` [dB] of the
        first success (NaN when none), ``budgets_tried``, ``label_changed`` (budgets of those whose top-1 changed),
        ``clean_gap`` (swap: the top prototype's activation over the class's runner-up; peak: the peak's similarity
        over the best allowed cell; attribution: the clean share inside the band), and the metrics at the success.

    Raises
    ------
    ParameterError
        An unknown kind, or the attacks' errors.
    """
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ParameterError(f"kinds must be among {KINDS}, got {bad}")
    rows, total = [], len(windows) * len(kinds)
    for w, (rid, start, x) in enumerate(windows):
        for j, kind in enumerate(kinds):
            extra = {"band_hz": tuple(band_hz)} if kind == "attribution_shift" else {}
            r, tried = smallest_eps(kind, model, x, epsilons, steps=steps, **extra)
            row = dict(model=model_name, recording_id=rid, start_s=float(start), kind=kind, budgets_tried=len(tried),
                       label_changed=sum(not t["label_kept"] for t in tried), eps=math.nan, snr_db=math.nan, top1="",
                       clean_gap=math.nan, topk_overlap=math.nan, similarity_spearman=math.nan, attribution_spearman=math.nan,
                       centroid_shift_hz=math.nan, centroid_shift_s=math.nan)
            if r is not None:
                gap = {"prototype_swap": r.prototype_gap_before, "peak_shift": r.peak_gap_before,
                       "attribution_shift": r.region_share_before}[kind]
                row.update(eps=r.eps, snr_db=r.snr_db, top1=r.class_name, clean_gap=gap, topk_overlap=r.topk_overlap,
                           similarity_spearman=r.similarity_spearman, attribution_spearman=r.attribution_spearman,
                           centroid_shift_hz=r.centroid_shift_hz, centroid_shift_s=r.centroid_shift_s)
            rows.append(row)
            if progress is not None:
                progress(w * len(kinds) + j + 1, total)
    return pd.DataFrame(rows, columns=BUDGET_COLUMNS)


def _fmt(v: float, spec: str, none: str = "none") -> str:
    return none if not np.isfinite(v) else format(v, spec)


def budgets_markdown(table: pd.DataFrame) -> str:
    """One Markdown table per model: each window's smallest successful budget per attack, then successes per attack.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`budget_table`'s columns (several models may be stacked).

    Returns
    -------
    str
        Markdown, ending in a newline.
    """
    out = []
    for model, t in table.groupby("model", sort=False):
        out.append(f"`{model}`: the smallest eps of the grid that keeps the top-1 and moves the explanation (SNR in dB; "
                   "clean gap; at that budget: top-3 overlap, Spearman of the similarity and attribution maps, evidence "
                   "centroid shift)\n")
        out.append("| recording | start (s) | attack | eps | SNR (dB) | clean gap | top-3 overlap | Spearman sim / attr | centroid shift |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in t.itertuples():
            shift = ("" if not np.isfinite(r.centroid_shift_hz) else f"{r.centroid_shift_hz:+.0f} Hz, {r.centroid_shift_s:+.2f} s")
            rho = ("" if not np.isfinite(r.attribution_spearman)
                   else f"{_fmt(r.similarity_spearman, '.2f', '–')} / {r.attribution_spearman:.2f}")
            out.append(f"| {r.recording_id} | {r.start_s:g} | {r.kind} | {_fmt(r.eps, '.0e')} | {_fmt(r.snr_db, '.1f', '')} | "
                       f"{_fmt(r.clean_gap, '.3f', '')} | {_fmt(r.topk_overlap, '.2f', '')} | "
                       f"{rho} | {shift} |")
        counts = t.groupby("kind", sort=False).agg(ok=("eps", lambda e: int(np.isfinite(e).sum())), n=("eps", "size"),
                                                   changed=("label_changed", "sum"))
        out.append("")
        out.append("Succeeded: " + "; ".join(f"{k} {c.ok}/{c.n} (label changed at {c.changed} budgets tried)"
                                             for k, c in counts.iterrows()) + ".\n")
    return "\n".join(out)
