"""What an explanation attack did to one window, measured through the model's own path; its result record.

:func:`measure_window` reads a window's explanation the way the Clip page shows it: ``model.forward_all`` for the
logits, the prototype activations and the similarity maps (Heinrich et al. 2025, after Chen et al. 2019), and
:func:`core.field.attribution.grad_x_input` for where in the input (Hz x s) the evidence for a class lies.
:func:`build_result` compares the clean and the perturbed window with :mod:`core.field.explanation_metrics` and
decides success from these measurements alone (never from the attack's own bookkeeping).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.attacks.pgd import PGD
from core.errors import ParameterError
from core.field.attribution import AttributionMap, grad_x_input, overlap_fractions
from core.field.explanation import cell_centres
from core.field.explanation_metrics import (
    chebyshev_distance,
    evidence_centroid,
    map_rank_correlation,
    peak_cell,
    topk_overlap,
)
from core.metrics import linf, snr_db
from core.models.frontend import mel_band_centres

__all__ = ["WindowExplanation", "ExplanationAttackResult", "measure_window", "map_axes", "region_weights", "build_result"]


@dataclass(frozen=True)
class WindowExplanation:
    """One window's explanation, measured through the model's own path.

    Attributes
    ----------
    logits : np.ndarray [shape=(n_classes,)]
        ``model.forward_all(window).logits``.
    activations : np.ndarray or None [shape=(n_prototypes,)]
        Prototype activations (the max of each similarity map); None for a model without prototypes.
    similarity_maps : np.ndarray or None [shape=(n_prototypes, map_freq, map_time)]
    attribution : AttributionMap
        Gradient x input of the logit of one class on the Hz x s grid (:func:`~core.field.attribution.grad_x_input`).
    """

    logits: np.ndarray
    activations: np.ndarray | None
    similarity_maps: np.ndarray | None
    attribution: AttributionMap


def measure_window(model, window, class_index: int, *, bands_per_octave: int = 3, cell_s: float = 0.25) -> WindowExplanation:
    """Logits, prototype activations, similarity maps and the gradient x input map of one class, for one window.

    Parameters
    ----------
    model : BirdClassifier
    window : torch.Tensor or np.ndarray [shape=(n_samples,) or (1, n_samples), dtype=float32], full-scale amplitude
    class_index : int
        The class whose logit is attributed.
    bands_per_octave, cell_s :
        The attribution grid (:func:`core.field.attribution.attribution_grid`).

    Returns
    -------
    WindowExplanation

    Raises
    ------
    ParameterError
        A bad window, class or grid (as :func:`~core.field.attribution.grad_x_input`).
    """
    x = torch.as_tensor(np.asarray(window.detach().cpu() if isinstance(window, torch.Tensor) else window, np.float32))
    x = x.reshape(1, -1).to(next(model.parameters()).device)
    with PGD.eval_mode(model), torch.no_grad():
        out = model.forward_all(x)
    attribution = grad_x_input(model, x[0].cpu().numpy(), indices=[class_index], bands_per_octave=bands_per_octave, cell_s=cell_s)
    acts = None if out.prototype_activations is None else out.prototype_activations[0].float().cpu().numpy()
    maps = None if out.similarity_maps is None else out.similarity_maps[0].float().cpu().numpy()
    return WindowExplanation(logits=out.logits[0].float().cpu().numpy(), activations=acts, similarity_maps=maps, attribution=attribution)


def map_axes(model, n_samples: int, map_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Where the Clip page draws each similarity-map cell: centres in Hz ``(map_freq,)`` and s ``(map_time,)``.

    The map stretched over the log-mel spectrogram of ``model.config.frontend`` (:func:`core.field.explanation.explain`'s
    ``map_frequency_hz`` and ``map_time_s``). For BirdNET's heads a map row draws evidence from outside this band too.
    """
    fe = model.config.frontend
    freq = mel_band_centres(fe.n_mels, fe.f_min, fe.f_max, htk=bool(getattr(fe, "htk", False)))
    times = np.arange(1 + n_samples // fe.hop_length) * fe.hop_length / fe.sample_rate
    return cell_centres(freq, map_shape[0]), cell_centres(times, map_shape[1])


def region_weights(frequency_edges_hz: np.ndarray, time_edges_s: np.ndarray, band_hz, span_s) -> np.ndarray:
    """Share of each Hz x s cell inside a rectangle, ``(n_freq, n_time)`` in [0, 1] (linear in Hz and in s).

    Parameters
    ----------
    frequency_edges_hz : np.ndarray [shape=(n_freq + 1,)] [Hz]
    time_edges_s : np.ndarray [shape=(n_time + 1,)] [s]
    band_hz : (float, float) [Hz], low < high
    span_s : (float, float) [s], start < end

    Raises
    ------
    ParameterError
        A band or span that is not two finite numbers in increasing order.
    """
    for name, pair in (("band_hz", band_hz), ("span_s", span_s)):
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ParameterError(f"{name} must be two numbers (low, high), got {pair!r}") from None
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ParameterError(f"{name} must be finite with low < high, got {pair!r}")
    te = np.asarray(time_edges_s, np.float64)
    t_in = np.clip(np.minimum(te[1:], float(span_s[1])) - np.maximum(te[:-1], float(span_s[0])), 0.0, None) / np.diff(te)
    return np.outer(overlap_fractions(frequency_edges_hz, [tuple(float(v) for v in band_hz)]), t_in)


def _share(values: np.ndarray, weights: np.ndarray) -> float:
    pos = np.clip(np.asarray(values, np.float64), 0.0, None)
    return float((pos * weights).sum() / pos.sum()) if pos.sum() > 0 else float("nan")


@dataclass(frozen=True)
class ExplanationAttackResult:
    """An attack on one window's explanation, measured before and after through the model's own path.

    Attributes
    ----------
    kind : {"prototype_swap", "peak_shift", "attribution_shift"}
    adversarial : np.ndarray [shape=(n_samples,), dtype=float32]
        The perturbed window (the input's length), full-scale amplitude; ``|adversarial - clean| <= eps``, in [-1, 1].
    success : bool
        ``label_kept and moved``: a window whose top-1 changed is never a success.
    label_kept : bool
        The top-1 class after is the clean top-1 class.
    moved : bool
        The explanation moved by the attack's criterion (:attr:`criterion`).
    criterion : str
        What "moved" means for this attack, in words.
    class_index, class_after : int
        Top-1 class before and after.
    class_name, class_name_after : str
        The top-1 class before and after.
    eps, alpha : float [full-scale amplitude]
    steps, seed : int
    snr_db : float [dB]
        SNR of the perturbation (:func:`core.metrics.snr_db`), over the window's own samples.
    linf : float [full-scale amplitude]
    margin_before, margin_after : float [logit]
        ``z_c - max_{j != c} z_j`` of the clean top-1 class ``c``.
    prototype : int or None
        The clean window's most active prototype of class ``c`` (the map shown); None without prototypes.
    top_prototype_after : int or None
        The most active prototype of class ``c`` after.
    prototype_gap_before : float or None
        On the clean window, ``prototype``'s activation minus that of the runner-up of class ``c`` (a small gap makes
        a swap cheap: read it with the overlap and the rank correlations, which say how much else moved).
    target_prototype : int or None
        The prototype :func:`~core.field.explanation_attack.prototype_swap` was told to raise.
    k : int
    topk_overlap : float in [0, 1]
        ``|top_k before ∩ top_k after| / k`` over all prototypes; NaN without prototypes.
    similarity_spearman : float
        Spearman correlation of ``prototype``'s similarity map before and after; NaN without prototypes.
    attribution_spearman : float
        Spearman correlation of the gradient x input maps of ``c``'s logit before and after.
    centroid_before, centroid_after : (float, float) [Hz], [s]
        Centre of the positive attribution (:func:`core.field.explanation_metrics.evidence_centroid`).
    peak_cell_before, peak_cell_after : (int, int) or None
        ``(row, column)`` of the peak of ``prototype``'s map before and after.
    peak_before, peak_after : (float, float) or None [s], [Hz]
        The same peaks as ``(time, frequency)`` on the Clip page's axes.
    peak_gap_before : float or None
        :func:`~core.field.explanation_attack.peak_shift` only: on the clean map, the peak's similarity minus the
        highest similarity among the cells the peak was to move to (a small gap: a near-flat ridge, cheap to move).
    region_share_before, region_share_after : float or None
        Share of the positive attribution inside the attribution attack's rectangle.
    similarity_before, similarity_after : np.ndarray or None [shape=(map_freq, map_time)]
        ``prototype``'s similarity map.
    map_frequency_hz, map_time_s : np.ndarray or None [Hz], [s]
        Centres of the map's cells (:func:`map_axes`).
    attribution_before, attribution_after : AttributionMap
    activations_before, activations_after : np.ndarray or None [shape=(n_prototypes,)]
    """

    kind: str
    adversarial: np.ndarray
    success: bool
    label_kept: bool
    moved: bool
    criterion: str
    class_index: int
    class_after: int
    class_name: str
    class_name_after: str
    eps: float
    alpha: float
    steps: int
    seed: int
    snr_db: float
    linf: float
    margin_before: float
    margin_after: float
    prototype: int | None
    top_prototype_after: int | None
    prototype_gap_before: float | None
    target_prototype: int | None
    k: int
    topk_overlap: float
    similarity_spearman: float
    attribution_spearman: float
    centroid_before: tuple[float, float]
    centroid_after: tuple[float, float]
    peak_cell_before: tuple[int, int] | None
    peak_cell_after: tuple[int, int] | None
    peak_before: tuple[float, float] | None
    peak_after: tuple[float, float] | None
    peak_gap_before: float | None
    region_share_before: float | None
    region_share_after: float | None
    similarity_before: np.ndarray | None
    similarity_after: np.ndarray | None
    map_frequency_hz: np.ndarray | None
    map_time_s: np.ndarray | None
    attribution_before: AttributionMap
    attribution_after: AttributionMap
    activations_before: np.ndarray | None
    activations_after: np.ndarray | None

    @property
    def centroid_shift_hz(self) -> float:
        """How far the evidence's centre moved in frequency [Hz] (positive: up)."""
        return self.centroid_after[0] - self.centroid_before[0]

    @property
    def centroid_shift_s(self) -> float:
        """How far the evidence's centre moved in time [s] (positive: later)."""
        return self.centroid_after[1] - self.centroid_before[1]


def _margin(logits: np.ndarray, c: int) -> float:
    return float(logits[c] - np.delete(logits, c).max()) if len(logits) > 1 else float("inf")


def build_result(kind: str, model, clean: np.ndarray, adversarial: np.ndarray, class_index: int, *, settings: dict, k: int = 3,
                 target_prototype: int | None = None, target_cell: tuple[int, int] | None = None, min_cells: int = 2,
                 band_hz=None, span_s=None, min_gain: float = 0.1, bands_per_octave: int = 3,
                 cell_s: float = 0.25) -> ExplanationAttackResult:
    """Measure the clean and the perturbed window and decide success from the measurements.

    Parameters
    ----------
    kind : {"prototype_swap", "peak_shift", "attribution_shift"}
    model : BirdClassifier
    clean, adversarial : np.ndarray [shape=(window_samples,), dtype=float32]
        The model's window (zero-padded); ``settings["n_valid"]`` of its samples are the input's.
    class_index : int
        The clean window's top-1 class ``c`` (whose margin, prototypes and attribution are measured).
    settings : dict
        ``eps``, ``alpha``, ``steps``, ``seed``, ``n_valid``.
    k : int
        Of the top-k prototype overlap.
    target_prototype, target_cell, min_cells, band_hz, span_s, min_gain :
        The criterion of the attack (see :mod:`core.field.explanation_attack`).
    bands_per_octave, cell_s :
        The attribution grid.

    Returns
    -------
    ExplanationAttackResult
    """
    n = int(settings["n_valid"])
    c = int(class_index)
    before = measure_window(model, clean, c, bands_per_octave=bands_per_octave, cell_s=cell_s)
    after = measure_window(model, adversarial, c, bands_per_octave=bands_per_octave, cell_s=cell_s)
    c_after = int(np.argmax(after.logits))
    kept = c_after == c
    ab, aa = before.attribution, after.attribution
    out = dict(prototype=None, top_prototype_after=None, prototype_gap_before=None, topk_overlap=float("nan"), similarity_spearman=float("nan"),
               peak_cell_before=None, peak_cell_after=None, peak_before=None, peak_after=None, peak_gap_before=None, similarity_before=None,
               similarity_after=None, map_frequency_hz=None, map_time_s=None, region_share_before=None, region_share_after=None)
    if before.activations is not None:
        owner = model.prototype_class_identity.cpu().numpy()
        own = np.flatnonzero(owner == c)
        p = int(own[np.argmax(before.activations[own])])
        top_after = int(own[np.argmax(after.activations[own])])
        sb, sa = before.similarity_maps[p], after.similarity_maps[p]
        hz, ts = map_axes(model, len(clean), sb.shape)
        pb, pa = peak_cell(sb), peak_cell(sa)
        ranked = np.sort(before.activations[own])[::-1]
        out.update(prototype=p, top_prototype_after=top_after, prototype_gap_before=float(ranked[0] - ranked[1]) if len(own) > 1 else None,
                   topk_overlap=topk_overlap(before.activations, after.activations, min(k, len(before.activations))),
                   similarity_spearman=map_rank_correlation(sb, sa), peak_cell_before=pb, peak_cell_after=pa,
                   peak_before=(float(ts[pb[1]]), float(hz[pb[0]])), peak_after=(float(ts[pa[1]]), float(hz[pa[0]])),
                   similarity_before=sb, similarity_after=sa, map_frequency_hz=hz, map_time_s=ts)
    if kind == "prototype_swap":
        moved = out["top_prototype_after"] != out["prototype"] and (target_prototype is None or out["top_prototype_after"] == target_prototype)
        criterion = (f"prototype {target_prototype} becomes the most active of the class" if target_prototype is not None
                     else "another prototype of the class becomes its most active")
    elif kind == "peak_shift":
        rows, cols = np.indices(out["similarity_before"].shape)
        if target_cell is not None:
            moved = out["peak_cell_after"] == tuple(target_cell)
            criterion = f"the top prototype's peak is at map cell {tuple(target_cell)}"
            goal = (rows == target_cell[0]) & (cols == target_cell[1])
        else:
            moved = chebyshev_distance(out["peak_cell_before"], out["peak_cell_after"]) >= min_cells
            criterion = f"the top prototype's peak moves at least {min_cells} map cells"
            (pi, pj) = out["peak_cell_before"]
            goal = np.maximum(abs(rows - pi), abs(cols - pj)) >= min_cells
        out["peak_gap_before"] = float(out["similarity_before"].max() - out["similarity_before"][goal].max())
    elif kind == "attribution_shift":
        w = region_weights(ab.frequency_edges_hz, ab.time_edges_s, band_hz, span_s)
        out.update(region_share_before=_share(ab.values[0], w), region_share_after=_share(aa.values[0], w))
        moved = bool(out["region_share_after"] >= out["region_share_before"] + min_gain)
        criterion = (f"the share of positive attribution inside {band_hz[0]:g}-{band_hz[1]:g} Hz x {span_s[0]:g}-{span_s[1]:g} s "
                     f"rises by at least {min_gain:g}")
    else:
        raise ParameterError(f"kind must be one of prototype_swap, peak_shift, attribution_shift, got {kind!r}")
    moved = bool(moved)
    return ExplanationAttackResult(
        kind=kind, adversarial=np.asarray(adversarial[:n], np.float32), success=kept and moved, label_kept=kept, moved=moved,
        criterion=criterion, class_index=c, class_after=c_after, class_name=model.class_names[c],
        class_name_after=model.class_names[c_after], eps=float(settings["eps"]), alpha=float(settings["alpha"]),
        steps=int(settings["steps"]), seed=int(settings["seed"]),
        snr_db=float(snr_db(clean[:n], adversarial[:n])), linf=float(linf(clean[:n], adversarial[:n])),
        margin_before=_margin(before.logits, c), margin_after=_margin(after.logits, c), target_prototype=target_prototype,
        k=int(k), attribution_spearman=map_rank_correlation(ab.values[0], aa.values[0]),
        centroid_before=evidence_centroid(ab.values[0], ab.frequency_hz, ab.time_s),
        centroid_after=evidence_centroid(aa.values[0], aa.frequency_hz, aa.time_s),
        attribution_before=ab, attribution_after=aa, activations_before=before.activations, activations_after=after.activations,
        **out)

