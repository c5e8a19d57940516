"""Markdown tables of stored results, as the README shows them.

Each function turns a stored table (written by a documented ``python -m core ...`` command into
``assets/``) into the exact Markdown of a README block; ``tests/test_readme.py`` regenerates every
block and compares, so no figure in the README is typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.sweep import summarize

__all__ = ["robustness_markdown", "minimal_eps_markdown", "targeted_markdown"]


def _f(v: float, digits: int = 3) -> str:
    return "nan" if pd.isna(v) else f"{v:.{digits}f}"


def robustness_markdown(table: pd.DataFrame, models: Sequence[str], labels: dict[str, str] | None = None) -> str:
    """Models side by side per eps: median SNR, cmAP, top-1, success rate and PRS.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy sweep table (:func:`core.sweep.sweep_table` rows) of one objective.
    models : sequence of str
        Column order.
    labels : dict, optional
        Display name per model.
    """
    labels = labels or {}
    s = summarize(table)
    s = s[s["budget"].notna()]
    names = [labels.get(m, m) for m in models]
    head = ["eps", "median SNR (dB)"] + [f"{n} {k}" for k in ("cmAP", "top-1", "success", "PRS") for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in sorted(s["budget"].unique()):
        rows = {m: s[(s["model"] == m) & (s["budget"] == b)].iloc[0] for m in models}
        snr = " / ".join("inf" if not np.isfinite(rows[m]["snr_db"]) else f"{rows[m]['snr_db']:.1f}" for m in models)
        cells = [f"{b:g}", snr]
        for key in ("cmap", "top1", "success_rate", "prs"):
            cells += [_f(rows[m][key]) for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def minimal_eps_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """Per model: clips, searches that found a flip, median minimal eps with its interquartile range, median SNR.

    Parameters
    ----------
    table : pandas.DataFrame
        The ``*_min_eps`` table of ``python -m core sweep --minimal-eps`` (``model, clip, min_eps, snr_db, found``).
    """
    labels = labels or {}
    lines = ["| model | clips | flipped below 0.1 | median minimal eps | interquartile eps | median SNR (dB) |", "|---|---|---|---|---|---|"]
    for m, g in table.groupby("model", sort=False):
        f = g[g["found"].astype(str).str.lower().isin(("true", "1"))]
        q1, med, q3 = np.quantile(f["min_eps"], [0.25, 0.5, 0.75]) if len(f) else (np.nan,) * 3
        lines.append(f"| {labels.get(m, m)} | {len(g)} | {len(f)} | {med:.2g} | {q1:.2g} to {q3:.2g} | {np.median(f['snr_db']):.1f} |")
    return "\n".join(lines) + "\n"


def targeted_markdown(tables: dict[str, pd.DataFrame], labels: dict[str, str] | None = None) -> str:
    """One row per (attack description, model) at the table's attacked budget: success (and before), PRS, DRS, TARS.

    Parameters
    ----------
    tables : dict of description -> tidy sweep table
        Each of one objective and one budget.
    """
    labels = labels or {}
    lines = ["| attack | model | success definition | median SNR (dB) | success (before the attack) | PRS | DRS | TARS |",
             "|---|---|---|---|---|---|---|---|"]
    for desc, table in tables.items():
        s = summarize(table)
        for m in s["model"].unique():
            clean = s[(s["model"] == m) & (s["budget_kind"] == "clean")].iloc[0]
            adv = s[(s["model"] == m) & (s["budget_kind"] != "clean")].iloc[-1]
            lines.append(f"| {desc} | {labels.get(m, m)} | {adv.get('success_definition', '')} | {adv['snr_db']:.1f} | "
                         f"{_f(adv['success_rate'], 2)} ({_f(clean['success_rate'], 2)}) | {_f(adv['prs'], 2)} | {_f(adv['drs'], 2)} | "
                         f"{_f(adv['tars'], 2)} |")
    return "\n".join(lines) + "\n"
