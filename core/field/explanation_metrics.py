"""How far an explanation moved: top-k prototype overlap, rank correlation of maps, the evidence centroid in Hz and s.

Pure functions on numpy arrays, used by :mod:`core.field.explanation_attack` to compare a window's explanation before
and after a perturbation (and usable on any two explanations of one window):

- :func:`topk_overlap`: ``|top_k(before) ∩ top_k(after)| / k`` of prototype activations (the measure of Hoffmann et
  al. 2021, "This looks like that... does it?", of how much a perturbation changes which prototypes explain a window).
- :func:`map_rank_correlation`: Spearman's rank correlation of two maps cell by cell (as Dombrowski et al. 2019,
  "Explanations can be manipulated and geometry is to blame", NeurIPS, compare explanation maps; also Adebayo et al.
  2018): 1 when the cells keep their order, about 0 when the order is unrelated.
- :func:`evidence_centroid`: the centre of the positive attribution over Hz x s cells (linear in Hz and in s), whose
  shift says in plain units where the evidence moved.
- :func:`peak_cell`: the cell of a map's maximum (its first in row-major order on ties).
"""

from __future__ import annotations

import warnings

import numpy as np

from core.errors import ParameterError

__all__ = ["topk_overlap", "map_rank_correlation", "evidence_centroid", "peak_cell", "chebyshev_distance"]


def _top(values: np.ndarray, k: int) -> set[int]:
    """Indices of the ``k`` largest values (ties: the lower index first)."""
    return set(np.argsort(-values, kind="stable")[:k].tolist())


def topk_overlap(before, after, k: int = 3) -> float:
    """Share of the ``k`` most activated prototypes that are still among the ``k`` most activated.

    ``|top_k(before) ∩ top_k(after)| / k`` (Hoffmann et al. 2021, arXiv:2105.02968): 1 when the same ``k`` prototypes
    explain the window, 0 when none of them does any more. Ties are broken by the lower index, the same way for both.

    Parameters
    ----------
    before, after : array [shape=(n_prototypes,)]
        Prototype activations (max similarity of each map) of the clean and the perturbed window.
    k : int in [1, n_prototypes]

    Returns
    -------
    float in [0, 1], a multiple of ``1 / k``

    Raises
    ------
    ParameterError
        Shapes differ or are not 1-D, non-finite values, or ``k`` not an integer in [1, n_prototypes].
    """
    a, b = np.asarray(before, np.float64), np.asarray(after, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ParameterError(f"before and after must be activation vectors of one shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ParameterError("activations must be finite")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(a):
        raise ParameterError(f"k must be an integer in [1, {len(a)}], got {k!r}")
    return len(_top(a, int(k)) & _top(b, int(k))) / int(k)


def map_rank_correlation(before, after) -> float:
    """Spearman's rank correlation of two maps of one shape, cell by cell (``scipy.stats.spearmanr``).

    Parameters
    ----------
    before, after : array [shape=(n_freq, n_time)] (any shape, the same for both)
        Similarity maps or attribution maps of the clean and the perturbed window.

    Returns
    -------
    float in [-1, 1]; NaN when either map is constant (its ranks say nothing).

    Raises
    ------
    ParameterError
        Shapes differ, fewer than 2 cells, or non-finite values.
    """
    from scipy.stats import spearmanr

    a, b = np.asarray(before, np.float64).ravel(), np.asarray(after, np.float64).ravel()
    if np.shape(before) != np.shape(after) or a.size < 2:
        raise ParameterError(f"maps must have one shape with >= 2 cells, got {np.shape(before)} and {np.shape(after)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ParameterError("maps must be finite")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(a, b).statistic)


def evidence_centroid(values, frequency_hz, time_s) -> tuple[float, float]:
    """Centre of the positive attribution of a Hz x s map: ``(sum p f / sum p, sum p t / sum p)``, ``p = max(values, 0)``.

    Parameters
    ----------
    values : array [shape=(n_freq, n_time)]
        Attribution per cell (:attr:`core.field.attribution.AttributionMap.values` of one target).
    frequency_hz : array [shape=(n_freq,)] [Hz]
        Centre of each frequency cell (:attr:`~core.field.attribution.AttributionMap.frequency_hz`).
    time_s : array [shape=(n_time,)] [s]
        Centre of each time cell (:attr:`~core.field.attribution.AttributionMap.time_s`).

    Returns
    -------
    (float, float) [Hz], [s]
        NaN, NaN when no cell is positive.

    Raises
    ------
    ParameterError
        Axes that do not match ``values``, or non-finite values.
    """
    v = np.asarray(values, np.float64)
    f, t = np.asarray(frequency_hz, np.float64), np.asarray(time_s, np.float64)
    if v.ndim != 2 or v.shape != (len(f), len(t)):
        raise ParameterError(f"values of shape {v.shape} do not match {len(f)} frequency and {len(t)} time cells")
    if not np.isfinite(v).all():
        raise ParameterError("attribution values must be finite")
    p = np.clip(v, 0.0, None)
    total = p.sum()
    if total <= 0:
        return float("nan"), float("nan")
    return float((p.sum(1) * f).sum() / total), float((p.sum(0) * t).sum() / total)


def peak_cell(values) -> tuple[int, int]:
    """``(row, column)`` of a 2-D map's maximum (the first in row-major order on ties)."""
    v = np.asarray(values)
    if v.ndim != 2 or v.size == 0:
        raise ParameterError(f"a map must be 2-D and non-empty, got shape {v.shape}")
    i, j = np.unravel_index(int(np.argmax(v)), v.shape)
    return int(i), int(j)


def chebyshev_distance(a: tuple[int, int], b: tuple[int, int]) -> int:
    """Cells between two map cells along the farther axis: ``max(|Δrow|, |Δcolumn|)``."""
    return int(max(abs(a[0] - b[0]), abs(a[1] - b[1])))
