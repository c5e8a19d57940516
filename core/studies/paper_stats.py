"""Statistics of the paper check: bootstrap p-values, Holm's step-down correction, verdicts and their wording."""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.errors import ParameterError
from core.io.clips import recording_of  # noqa: F401  (re-exported: core.studies.papercheck)
from core.metrics import bootstrap_p, hierarchical_difference, holm  # noqa: F401  (re-exported)

#: Family-wise error rate of the Holm-Bonferroni correction.
ALPHA = 0.05
#: Values of the ``direction`` column.
DIRECTIONS = ("claimed", "opposite", "inconclusive")
#: Values of the ``kind`` column.
KINDS = ("paper claim", "our additional check")


def size_note(low: float, high: float, paper_effect: float | None, unit: str) -> str:
    """Where the paper's effect size lies relative to our 95 % interval ("" when the paper gives none)."""
    if paper_effect is None or not (np.isfinite(low) and np.isfinite(high)):
        return ""
    shown = f"{paper_effect:+g} %" if unit == "%" else f"{paper_effect:+g} {unit}"
    if high < paper_effect:
        return f"smaller than the paper's {shown}, which lies above our interval"
    if low > paper_effect:
        return f"larger than the paper's {shown}, which lies below our interval"
    return f"the paper's {shown} lies inside our interval"


def verdict(low: float, high: float, paper_effect: float | None = None) -> str:
    """Verdict from an unadjusted 95 % interval of an effect whose positive sign means the claim holds.

    The rule :func:`paper_check` used before it took comparability and multiplicity into account, kept for
    callers: ``"reproduced"`` if ``low > 0``; ``"not reproduced"`` if ``high < 0`` or the paper gives a
    positive effect size above ``high``; else ``"inconclusive"``. :func:`paper_check` now reports
    :func:`direction_of` and :func:`verdict_text` instead.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "reproduced"
    if high < 0 or (paper_effect is not None and paper_effect > 0 and high < paper_effect):
        return "not reproduced"
    return "inconclusive"


def direction_of(effect: float, p_holm: float, alpha: float = ALPHA) -> str:
    """``"claimed"`` if ``p_holm < alpha`` and ``effect > 0``, ``"opposite"`` if ``p_holm < alpha`` and ``effect < 0``, else ``"inconclusive"``."""
    if not (np.isfinite(effect) and np.isfinite(p_holm)) or p_holm >= alpha or effect == 0:
        return "inconclusive"
    return "claimed" if effect > 0 else "opposite"


def _p_text(p: float, n_boot: int | None) -> str:
    if not np.isfinite(p):
        return "no finite resample"
    if p == 0 and n_boot:
        return f"Holm-adjusted p = 0: none of {n_boot} resamples on the other side of 0"
    return f"Holm-adjusted p = {p:.3g}"


def verdict_text(direction: str, *, comparable: bool, kind: str = "paper claim", p_holm: float = float("nan"),
                 n_boot: int | None = None, alpha: float = ALPHA) -> str:
    """The ``verdict`` of one row: it calls a claim reproduced only where our conditions match the paper's.

    Parameters
    ----------
    direction : {"claimed", "opposite", "inconclusive"}
        From :func:`direction_of`.
    comparable : bool
        Whether our measurement is taken under conditions comparable to the paper's.
    kind : {"paper claim", "our additional check"}
    p_holm : float
        Holm-adjusted p-value, shown in parentheses.
    n_boot : int, optional
        Bootstrap resamples (the resolution of a p-value of 0).
    alpha : float

    Returns
    -------
    str
        A comparable paper claim: ``"reproduced"``, ``"not reproduced (opposite direction)"`` or
        ``"inconclusive"``; otherwise ``"not tested under comparable conditions; ours: ..."`` (paper claim) or
        ``"our additional check, no counterpart in the paper; ours: ..."``, with the direction in words.

    Raises
    ------
    ParameterError
        An unknown ``direction`` or ``kind``.
    """
    if direction not in DIRECTIONS:
        raise ParameterError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if kind not in KINDS:
        raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")
    p = _p_text(p_holm, n_boot)
    if direction == "inconclusive":
        p = f"{p}, not < {alpha:g}" if np.isfinite(p_holm) else p
    if kind == "paper claim" and comparable:
        return {"claimed": f"reproduced ({p})", "opposite": f"not reproduced: opposite direction ({p})", "inconclusive": f"inconclusive ({p})"}[direction]
    words = {"claimed": "in the claimed direction", "opposite": "opposite direction", "inconclusive": "inconclusive"}[direction]
    prefix = "not tested under comparable conditions" if kind == "paper claim" else "our additional check, no counterpart in the paper"
    return f"{prefix}; ours: {words} ({p})"


def multiplicity_note(table: pd.DataFrame, alpha: float = ALPHA) -> str:
    """How the rows of a :func:`paper_check` table were corrected for multiplicity, in words.

    Examples
    --------
    >>> multiplicity_note(pd.DataFrame({"p_two_sided": [0.01, 0.2], "kind": ["paper claim", "our additional check"]}))
    'Holm–Bonferroni over 2 tests (1 paper claim, 1 additional check) at family-wise 5 %'
    """
    tested = table[np.isfinite(table["p_two_sided"].to_numpy(dtype=float))] if "p_two_sided" in table else table.iloc[:0]
    kinds = tested["kind"] if "kind" in tested else pd.Series(["paper claim"] * len(tested))
    n_claims, n_checks = int((kinds == "paper claim").sum()), int((kinds == "our additional check").sum())
    parts = [f"{n_claims} paper claim{'s' if n_claims != 1 else ''}"] + ([f"{n_checks} additional check{'s' if n_checks != 1 else ''}"] if n_checks else [])
    return f"Holm–Bonferroni over {len(tested)} test{'s' if len(tested) != 1 else ''} ({', '.join(parts)}) at family-wise {100 * alpha:g} %"


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of every distinct score (ties count together)
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_cmap(scores: np.ndarray, targets: np.ndarray) -> float:
    """cmAP with the definition of :func:`core.metrics.cmap` (scikit-learn's average precision,
    classes without a positive left out), about 20x faster, for bootstrap loops.

    Parameters
    ----------
    scores, targets : np.ndarray [shape=(n, n_classes)]

    Returns
    -------
    float, NaN if no class has a positive.
    """
    y = np.asarray(targets) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(y.any(0))
    if not len(keep):
        return float("nan")
    return float(np.mean([_average_precision(y[:, c], s[:, c]) for c in keep]))
