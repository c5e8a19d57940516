"""Where in the input the evidence lies: occlusion and gradient x input on the model's own spectrogram, in Hz and s.

Both methods work on ``model.frontend(waveform)`` (the spectrogram the model itself reads: the normalised log-mel of
the small models and the published ones, BirdNET's two compressed mel channels for BirdNET and the heads on it) and
send the altered spectrogram through the rest of the model's own path (``features_from_spectrogram``, then
``forward_head`` for class logits or ``outputs_from_features`` for prototype activations), so the unaltered value is
``model(waveform)``'s.

- **Occlusion** (Zeiler & Fergus 2014, "Visualizing and understanding convolutional networks", ECCV, Sec. 4.2):
  every cell of a grid in Hz x s is replaced by a baseline, one cell per pass (batched), and the attribution of the
  cell is the drop of the target, ``f(x) - f(x with the cell replaced)``: positive where the cell held evidence for
  the target. Cost: one forward pass per cell (``n_freq x n_time``, e.g. 8 x 6 or 20 x 12) per window.
- **Gradient x input** (Shrikumar et al. 2016, "Not just a black box: learning important features through
  propagating activation differences", arXiv:1605.01713; Ancona et al. 2018, "Towards better understanding of
  gradient-based attribution methods for deep neural networks", ICLR): ``d f / d x * (x - baseline)`` at every
  spectrogram cell, summed inside each grid cell: the first-order Taylor term of ``f(x) - f(baseline)`` (exactly
  that difference for a model linear in its spectrogram). Cost: one forward and one backward pass per target.

Targets: a class's **logit** (not the sigmoid score: the sigmoid saturates, so a confident window's score barely
moves when one cell is removed) or a prototype's **activation** (its maximum similarity over the map, the quantity
the class connection weighs).

Baseline: ``"median"`` (default), every spectrogram row's median over the window's frames, i.e. the band's
typical level in that window (its background); for the band-median-normalised log-mel of the small models this is 0.
``"zero"``: 0, which is digital silence for BirdNET's compressed magnitudes.

The Hz x s grid: fractional-octave bands (base 2, centred on 1 kHz as in ANSI S1.11 / IEC 61260: edges
``1000 * 2 ** ((k +- 1/2) / bands_per_octave)`` Hz; everything below ``f_low_hz`` is one band) times ``cell_s``
seconds. A spectrogram row belongs to the band holding its centre frequency and a frame to the time cell holding its
centre, channel by channel: BirdNET's two channels (0-3 kHz, n_fft 2048; 0.5-15 kHz, n_fft 1024) are placed on the
one Hz axis through their own rows' frequencies, so a band between 0.5 and 3 kHz holds rows of both channels and is
occluded (or summed) in both at once. Bands that hold no row of any channel are merged into a neighbour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ParameterError
from core.models.frontend import mel_band_centres

__all__ = ["InputAxes", "AttributionGrid", "AttributionMap", "input_axes", "attribution_grid", "occlusion", "grad_x_input",
           "share_inside", "frequency_quantiles", "METHOD_CITATIONS"]

#: One line per method, as the Clip page and the docs cite it.
METHOD_CITATIONS = {
    "occlusion": "Occlusion (Zeiler & Fergus 2014, ECCV): the drop of the target when one Hz x s cell of the model's "
                 "input spectrogram is replaced by the baseline.",
    "grad_x_input": "Gradient x input (Shrikumar et al. 2016, arXiv:1605.01713; Ancona et al. 2018, ICLR): "
                    "d target / d input x (input - baseline), summed inside each Hz x s cell.",
}
BASELINES = ("median", "zero")
TARGETS = ("logit", "prototype")


@dataclass(frozen=True)
class InputAxes:
    """Frequency and time of every cell of a model's input spectrogram, one entry per input channel.

    Attributes
    ----------
    row_hz : tuple of np.ndarray [shape=(n_rows,), dtype=float64] [Hz]
        Centre frequency of each spectrogram row, in the front end's own row order (BirdNET's: row 0 the highest).
    frame_s : tuple of np.ndarray [shape=(n_frames,), dtype=float64] [s]
        Centre of each frame from the window's start.
    window_s : float [s]
        Length of the window.
    """

    row_hz: tuple
    frame_s: tuple
    window_s: float


def input_axes(model, n_samples: int, n_frames: int) -> InputAxes:
    """Where each row and frame of ``model.frontend(waveform)`` lies in Hz and s.

    BirdNET's input layer (:class:`core.models.birdnet.BirdNETSpectrogram`): each channel's rows at the peak of their
    mel filter (``frontend.band_hz``), frames of ``frame_lengths`` samples every ``frame_steps`` samples, not padded
    (centre ``(i * step + length / 2) / sample_rate``). Log-mel front ends (``frontend.config`` with ``n_mels``,
    ``f_min``, ``f_max``, ``hop_length``): one channel, rows at the mel band centres (Slaney's or, with
    ``config.htk``, HTK's scale), row 0 the lowest, centred frames (``i * hop_length / sample_rate``).

    Parameters
    ----------
    model : BirdClassifier
    n_samples : int [samples]
        Length of the window.
    n_frames : int
        Frames of ``model.frontend(waveform)`` (its last axis).

    Returns
    -------
    InputAxes

    Raises
    ------
    ParameterError
        A front end that is neither of the above.
    """
    fe = model.frontend
    sr = float(model.sample_rate)
    if hasattr(fe, "band_hz") and hasattr(fe, "frame_steps"):
        rows = tuple(np.asarray(h, np.float64) for h in fe.band_hz)
        frames = tuple((np.arange(n_frames) * step + length / 2.0) / sr for step, length in zip(fe.frame_steps, fe.frame_lengths))
    elif all(hasattr(getattr(fe, "config", None), a) for a in ("n_mels", "f_min", "f_max", "hop_length")):
        c = fe.config
        rows = (mel_band_centres(c.n_mels, c.f_min, c.f_max, htk=bool(getattr(c, "htk", False))),)
        frames = (np.arange(n_frames) * c.hop_length / sr,)
    else:
        raise ParameterError(f"cannot place the input of a {type(fe).__name__} front end in Hz and s")
    return InputAxes(row_hz=rows, frame_s=frames, window_s=n_samples / sr)


@dataclass(frozen=True)
class AttributionGrid:
    """Cells in Hz x s and which spectrogram rows and frames of each channel fall in each.

    Attributes
    ----------
    frequency_edges_hz : np.ndarray [shape=(n_freq + 1,)] [Hz], increasing, first edge 0
    time_edges_s : np.ndarray [shape=(n_time + 1,)] [s], from 0 to the window's length
    row_cell : tuple of np.ndarray [shape=(n_rows,), dtype=int64]
        Frequency cell of each row, per channel.
    frame_cell : tuple of np.ndarray [shape=(n_frames,), dtype=int64]
        Time cell of each frame, per channel.
    """

    frequency_edges_hz: np.ndarray
    time_edges_s: np.ndarray
    row_cell: tuple
    frame_cell: tuple

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_freq, n_time)``."""
        return len(self.frequency_edges_hz) - 1, len(self.time_edges_s) - 1

    def cell_masks(self, cells: Sequence[tuple[int, int]], spectrogram_shape: tuple[int, int, int]) -> torch.Tensor:
        """Boolean masks ``(len(cells), channels, n_rows, n_frames)`` of the spectrogram cells inside each grid cell."""
        c, r, t = spectrogram_shape
        out = torch.zeros(len(cells), c, r, t, dtype=torch.bool)
        for k, (i, j) in enumerate(cells):
            for ch in range(c):
                rows = torch.as_tensor(self.row_cell[ch] == i)
                frames = torch.as_tensor(self.frame_cell[ch] == j)
                out[k, ch] = rows[:, None] & frames[None, :]
        return out

    def pool(self, values: torch.Tensor) -> torch.Tensor:
        """Sum spectrogram-cell values ``(batch, channels, n_rows, n_frames)`` into grid cells ``(batch, n_freq, n_time)``."""
        n_f, n_t = self.shape
        out = values.new_zeros(values.shape[0], n_f, n_t)
        for ch in range(values.shape[1]):
            rows = torch.nn.functional.one_hot(torch.as_tensor(self.row_cell[ch]), n_f).to(values)  # (n_rows, n_f)
            frames = torch.nn.functional.one_hot(torch.as_tensor(self.frame_cell[ch]), n_t).to(values)  # (n_frames, n_t)
            out += torch.einsum("brt,rf,tu->bfu", values[:, ch], rows, frames)
        return out


def _merge_empty(edges: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Drop edges until every cell holds at least one centre (an empty cell joins the cell above, the top one the cell below)."""
    edges = list(edges)
    while len(edges) > 2:
        counts = np.histogram(centres, bins=edges)[0]
        empty = np.flatnonzero(counts == 0)
        if not len(empty):
            break
        i = int(empty[0])
        del edges[i + 1 if i + 1 < len(edges) - 1 else i]
    return np.asarray(edges, np.float64)


def _assign(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2).astype(np.int64)


def attribution_grid(axes: InputAxes, *, bands_per_octave: int = 3, cell_s: float | None = 0.25,
                     f_low_hz: float = 200.0) -> AttributionGrid:
    """Fractional-octave bands x time cells over a model's input.

    Parameters
    ----------
    axes : InputAxes
        From :func:`input_axes`.
    bands_per_octave : int in [1, 24]
        1 (octaves), 3 (third-octaves), ...; edges ``1000 * 2 ** ((k +- 1/2) / bands_per_octave)`` Hz.
    cell_s : float > 0 or None [s]
        Length of a time cell; None (or at least the window): one cell over the whole window (frequency strips).
        A last cell shorter than half of ``cell_s`` joins the one before.
    f_low_hz : float > 0 [Hz]
        Rows below the band edge at or below this frequency form one band from 0 Hz.

    Returns
    -------
    AttributionGrid
        The top band ends half a row spacing above the highest row (a top band narrower than half a band joins the
        one below); bands and time cells without any row or frame are merged into a neighbour.

    Raises
    ------
    ParameterError
        ``bands_per_octave`` not an integer in [1, 24], ``cell_s <= 0``, ``f_low_hz <= 0``.
    """
    if isinstance(bands_per_octave, bool) or not isinstance(bands_per_octave, (int, np.integer)) or not 1 <= bands_per_octave <= 24:
        raise ParameterError(f"bands_per_octave must be an integer in [1, 24], got {bands_per_octave!r}")
    if cell_s is not None and not (np.isfinite(cell_s) and cell_s > 0):
        raise ParameterError(f"cell_s must be > 0 seconds (or None for the whole window), got {cell_s}")
    if not (np.isfinite(f_low_hz) and f_low_hz > 0):
        raise ParameterError(f"f_low_hz must be > 0 Hz, got {f_low_hz}")
    b = int(bands_per_octave)
    hz = np.concatenate(axes.row_hz)
    distinct = np.unique(hz)
    top = distinct[-1] + (0.5 * (distinct[-1] - distinct[-2]) if len(distinct) > 1 else 1.0)
    k0 = int(np.floor(b * np.log2(f_low_hz / 1000.0) + 0.5))  # the edge at or below f_low_hz
    k1 = int(np.ceil(b * np.log2(top / 1000.0) + 0.5))
    inner = 1000.0 * 2.0 ** ((np.arange(k0, k1 + 1) - 0.5) / b)
    inner = inner[inner < top]
    if len(inner) > 1 and np.log2(top / inner[-1]) < 0.5 / b:  # a sliver above the last full band joins it
        inner = inner[:-1]
    f_edges = _merge_empty(np.concatenate([[0.0], inner, [top]]), hz)

    length = float(axes.window_s)
    if cell_s is None or cell_s >= length:
        t_edges = np.array([0.0, length])
    else:
        t_edges = np.append(np.arange(0.0, length, cell_s), length)
        if len(t_edges) > 2 and t_edges[-1] - t_edges[-2] < cell_s / 2:
            t_edges = np.delete(t_edges, -2)
    t_edges = _merge_empty(t_edges, np.concatenate(axes.frame_s))
    return AttributionGrid(frequency_edges_hz=f_edges, time_edges_s=t_edges,
                           row_cell=tuple(_assign(h, f_edges) for h in axes.row_hz),
                           frame_cell=tuple(_assign(t, t_edges) for t in axes.frame_s))


def _union(ranges) -> list[tuple[float, float]]:
    """Sorted, merged (low, high) ranges [Hz]."""
    rs = sorted((float(lo), float(hi)) for lo, hi in ranges)
    for lo, hi in rs:
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ParameterError(f"a frequency range must be finite with low < high [Hz], got ({lo}, {hi})")
    out: list[list[float]] = []
    for lo, hi in rs:
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def overlap_fractions(frequency_edges_hz: np.ndarray, ranges) -> np.ndarray:
    """Fraction [0, 1] of each frequency cell (linear in Hz) inside the union of ``ranges`` ``[(low_hz, high_hz), ...]``, ``(n_freq,)``."""
    e = np.asarray(frequency_edges_hz, np.float64)
    inside = np.zeros(len(e) - 1)
    for lo, hi in _union(ranges):
        inside += np.clip(np.minimum(e[1:], hi) - np.maximum(e[:-1], lo), 0.0, None)
    return inside / np.diff(e)


def share_inside(values: np.ndarray, frequency_edges_hz: np.ndarray, ranges, *, profile: bool = False) -> np.ndarray:
    """Share of the positive attribution that lies inside frequency ranges.

    ``sum_f p[f] * overlap[f] / sum_f p[f]``, with ``p[f]`` the positive attribution of frequency cell ``f`` (the
    positive part taken cell by cell, then summed over time) and ``overlap[f]`` the fraction of the cell inside the
    union of ``ranges`` (linear in Hz: a cell half inside counts half).

    Parameters
    ----------
    values : np.ndarray [shape=(..., n_freq, n_time)], or [shape=(..., n_freq)] with ``profile``
        Attribution per cell (:attr:`AttributionMap.values`), or per frequency cell.
    frequency_edges_hz : np.ndarray [shape=(n_freq + 1,)] [Hz]
    ranges : sequence of (float, float) [Hz]
        ``(low, high)`` pairs, low < high; overlapping ranges count once.
    profile : bool
        ``values`` is a frequency profile (negative entries count as 0).

    Returns
    -------
    np.ndarray [shape=values.shape[:-2] (profiles: [:-1])], in [0, 1]; NaN where no cell is positive.

    Raises
    ------
    ParameterError
        Edges that do not match ``values``, or a range that is not finite with low < high.
    """
    v = np.asarray(values, np.float64)
    e = np.asarray(frequency_edges_hz, np.float64)
    if v.ndim < (1 if profile else 2) or v.shape[-1 if profile else -2] != len(e) - 1:
        raise ParameterError(f"values of shape {v.shape} do not have {len(e) - 1} frequency cells "
                             f"({'last' if profile else 'second last'} axis) for {len(e)} edges")
    pos = np.clip(v, 0.0, None) if profile else np.clip(v, 0.0, None).sum(-1)
    total = pos.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (pos * overlap_fractions(e, ranges)).sum(-1) / total, np.nan)


def frequency_quantiles(profile: np.ndarray, frequency_edges_hz: np.ndarray, q: Sequence[float]) -> np.ndarray:
    """Frequencies [Hz] below which the shares ``q`` of a positive frequency profile lie (linear in Hz inside a cell).

    Parameters
    ----------
    profile : np.ndarray [shape=(n_freq,)], attribution per frequency cell (negative values count as 0)
    frequency_edges_hz : np.ndarray [shape=(n_freq + 1,)] [Hz]
    q : sequence of float in [0, 1]

    Returns
    -------
    np.ndarray [shape=(len(q),)] [Hz]; NaN when the profile has no positive cell.
    """
    pos = np.clip(np.asarray(profile, np.float64), 0.0, None)
    if pos.sum() <= 0:
        return np.full(len(q), np.nan)
    e = np.asarray(frequency_edges_hz, np.float64)
    cdf = np.cumsum(pos) / pos.sum()  # share up to the top of each cell
    out = []
    for qq in np.asarray(q, np.float64):
        i = min(int(np.searchsorted(cdf, qq, side="left")), len(pos) - 1)
        while pos[i] <= 0:  # the first cell with evidence reaching qq
            i += 1
        below = cdf[i] - pos[i] / pos.sum()
        out.append(e[i] + (e[i + 1] - e[i]) * np.clip((qq - below) / (cdf[i] - below), 0.0, 1.0))
    return np.array(out)


@dataclass(frozen=True)
class AttributionMap:
    """Attribution of some targets of one window on a Hz x s grid.

    Attributes
    ----------
    method : {"occlusion", "grad_x_input"}
    target : {"logit", "prototype"}
        Class logits or prototype activations (max similarity).
    indices : np.ndarray [shape=(n_targets,), dtype=int64]
        Class (or prototype) index of each target.
    names : tuple of str
        Class name of each target (for prototypes, the class the prototype belongs to).
    values : np.ndarray [shape=(n_targets, n_freq, n_time), dtype=float32]
        Occlusion: the target's drop when the cell is replaced by the baseline (positive: the cell held evidence for
        it). Gradient x input: the sum of ``d target / d x * (x - baseline)`` over the cell's spectrogram cells.
        Same units as the target (logit, or similarity in [0, 1]).
    clean : np.ndarray [shape=(n_targets,)]
        The target on the unaltered input (``model(waveform)``'s logit, or the prototype's activation).
    at_baseline : np.ndarray [shape=(n_targets,)]
        The target with the whole spectrogram replaced by the baseline.
    frequency_edges_hz : np.ndarray [shape=(n_freq + 1,)] [Hz]
    time_edges_s : np.ndarray [shape=(n_time + 1,)] [s], from the window's start
    baseline : {"median", "zero"}
    """

    method: str
    target: str
    indices: np.ndarray
    names: tuple
    values: np.ndarray
    clean: np.ndarray
    at_baseline: np.ndarray
    frequency_edges_hz: np.ndarray
    time_edges_s: np.ndarray
    baseline: str

    @property
    def frequency_hz(self) -> np.ndarray:
        """Geometric centre of each frequency cell [Hz] (the arithmetic one for the band from 0 Hz), ``(n_freq,)``."""
        lo, hi = self.frequency_edges_hz[:-1], self.frequency_edges_hz[1:]
        return np.where(lo > 0, np.sqrt(np.maximum(lo, 1e-12) * hi), hi / 2)

    @property
    def time_s(self) -> np.ndarray:
        """Centre of each time cell [s], ``(n_time,)``."""
        return (self.time_edges_s[:-1] + self.time_edges_s[1:]) / 2

    def frequency_profile(self) -> np.ndarray:
        """Positive attribution per frequency cell, summed over time: ``(n_targets, n_freq)``."""
        return np.clip(self.values, 0.0, None).sum(-1)

    def share_inside(self, ranges) -> np.ndarray:
        """Share of each target's positive attribution inside frequency ranges [Hz], ``(n_targets,)`` (:func:`share_inside`)."""
        return share_inside(self.values, self.frequency_edges_hz, ranges)


def _prepare(model, waveform, target, indices, bands_per_octave, cell_s, f_low_hz, baseline):
    """Checked window, spectrogram, baseline, grid, target indices and names."""
    if target not in TARGETS:
        raise ParameterError(f"target must be one of {TARGETS}, got {target!r}")
    if baseline not in BASELINES:
        raise ParameterError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    device = next(model.parameters()).device
    x = torch.as_tensor(np.asarray(waveform, np.float32) if not isinstance(waveform, torch.Tensor) else waveform)
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 1 or not x.is_floating_point():
        raise ParameterError(f"waveform must be one float window (n_samples,), got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ParameterError("waveform has non-finite samples")
    x = x.float()[None].to(device)
    model.check_waveform(x)
    with torch.no_grad():
        spec = model.frontend(x)
    base = spec.median(dim=-1, keepdim=True).values.expand_as(spec) if baseline == "median" else torch.zeros_like(spec)
    grid = attribution_grid(input_axes(model, x.shape[1], spec.shape[-1]), bands_per_octave=bands_per_octave, cell_s=cell_s,
                            f_low_hz=f_low_hz)
    names = list(model.class_names)
    if target == "prototype":
        k = getattr(model.config, "prototypes_per_class", 0) or 0
        if not hasattr(model, "classify") or k < 1:
            raise ParameterError(f"target='prototype' needs a prototype model, got arch {getattr(model.config, 'arch', '?')!r}")
        n_targets = len(names) * k
    else:
        k, n_targets = 0, len(names)
    idx = np.arange(n_targets) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n_targets:
        raise ParameterError(f"indices must be non-empty and in [0, {n_targets}), got {indices!r}")
    labels = tuple(names[i // k] if k else names[i] for i in idx)
    return x, spec, base, grid, torch.as_tensor(idx, device=device), labels


def _target_values(model, spectrogram: torch.Tensor, target: str, idx: torch.Tensor) -> torch.Tensor:
    """The targets ``(batch, n_targets)`` of spectrograms, through the model's own path."""
    feats = model.features_from_spectrogram(spectrogram)
    if target == "logit":
        return model.forward_head(feats).index_select(1, idx)
    return model.outputs_from_features(feats).prototype_activations.index_select(1, idx)


class _eval:
    """Model in eval mode inside the block, its mode restored after."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)


def occlusion(model, waveform, *, target: str = "logit", indices=None, bands_per_octave: int = 3, cell_s: float | None = 0.25,
              f_low_hz: float = 200.0, baseline: str = "median", batch_size: int = 16,
              progress: Callable[[int, int], None] | None = None) -> AttributionMap:
    """Occlusion map of one window (Zeiler & Fergus 2014, ECCV, Sec. 4.2) on a Hz x s grid.

    Every grid cell of ``model.frontend(waveform)`` (all channels' rows and frames inside it) is replaced by the
    baseline, one cell per spectrogram, ``batch_size`` spectrograms per pass through ``features_from_spectrogram``
    and the head; the cell's value is ``f(x) - f(x with the cell replaced)``.

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray or torch.Tensor [shape=(n_samples,) or (1, n_samples), dtype=float32]
        One window at ``model.sample_rate`` [Hz], full-scale amplitude.
    target : {"logit", "prototype"}
        Class logits, or prototype activations (prototype models).
    indices : sequence of int, optional
        Which classes (or prototypes); default all. All targets come from the same passes.
    bands_per_octave, cell_s, f_low_hz :
        The grid (:func:`attribution_grid`): default third-octave bands x 0.25 s.
    baseline : {"median", "zero"}
        The replacement (see the module docstring).
    batch_size : int >= 1
    progress : callable(done, total), optional
        Called after every batch with the number of cells done.

    Returns
    -------
    AttributionMap

    Raises
    ------
    ParameterError
        A bad window, target, baseline, index or grid; ``target="prototype"`` on a model without prototypes.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x, spec, base, grid, idx, labels = _prepare(model, waveform, target, indices, bands_per_octave, cell_s, f_low_hz, baseline)
    n_f, n_t = grid.shape
    cells = [(i, j) for i in range(n_f) for j in range(n_t)]
    drops = np.zeros((len(idx), n_f, n_t), np.float32)
    with _eval(model), torch.no_grad():
        clean = _target_values(model, spec, target, idx)[0]
        at_base = _target_values(model, base, target, idx)[0]
        for a in range(0, len(cells), batch_size):
            part = cells[a : a + batch_size]
            mask = grid.cell_masks(part, tuple(spec.shape[1:])).to(spec.device)
            occluded = torch.where(mask, base.expand(len(part), -1, -1, -1), spec.expand(len(part), -1, -1, -1))
            got = (clean[None] - _target_values(model, occluded, target, idx)).cpu().numpy()
            for b, (i, j) in enumerate(part):
                drops[:, i, j] = got[b]
            if progress is not None:
                progress(min(a + batch_size, len(cells)), len(cells))
    return AttributionMap(method="occlusion", target=target, indices=idx.cpu().numpy(), names=labels, values=drops,
                          clean=clean.cpu().numpy(), at_baseline=at_base.cpu().numpy(), frequency_edges_hz=grid.frequency_edges_hz,
                          time_edges_s=grid.time_edges_s, baseline=baseline)


def grad_x_input(model, waveform, *, target: str = "logit", indices=None, bands_per_octave: int = 3, cell_s: float | None = 0.25,
                 f_low_hz: float = 200.0, baseline: str = "median", batch_size: int = 8) -> AttributionMap:
    """Gradient x input of one window on the model's spectrogram, summed on a Hz x s grid.

    ``a = d f / d s * (s - baseline)`` at every cell of ``s = model.frontend(waveform)`` (Shrikumar et al. 2016,
    arXiv:1605.01713, with a baseline as in Ancona et al. 2018, ICLR), then summed over the spectrogram cells (of
    every channel) inside each grid cell. ``values.sum()`` is the first-order Taylor estimate of
    ``clean - at_baseline``, exact when the target is linear in the spectrogram. One forward and one backward pass
    per target (the window copied ``batch_size`` times per pass).

    Parameters
    ----------
    model : BirdClassifier
    waveform : np.ndarray or torch.Tensor [shape=(n_samples,) or (1, n_samples), dtype=float32]
    target : {"logit", "prototype"}
    indices : sequence of int, optional
        Default: all targets, allowed up to 64 (name them for a model with more).
    bands_per_octave, cell_s, f_low_hz, baseline :
        As :func:`occlusion`.
    batch_size : int >= 1
        Targets per backward pass.

    Returns
    -------
    AttributionMap

    Raises
    ------
    ParameterError
        As :func:`occlusion`; more than 64 targets without ``indices``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    x, spec, base, grid, idx, labels = _prepare(model, waveform, target, indices, bands_per_octave, cell_s, f_low_hz, baseline)
    if indices is None and len(idx) > 64:
        raise ParameterError(f"gradient x input needs one backward pass per target: name the indices (this model has {len(idx)})")
    out = np.zeros((len(idx), *grid.shape), np.float32)
    clean = np.zeros(len(idx), np.float32)
    with _eval(model), torch.enable_grad():  # also inside a caller's no_grad (the audit)
        with torch.no_grad():
            at_base = _target_values(model, base, target, idx)[0].cpu().numpy()
        for a in range(0, len(idx), batch_size):
            part = idx[a : a + batch_size]
            s = spec.detach().expand(len(part), -1, -1, -1).clone().requires_grad_(True)
            y = _target_values(model, s, target, part)  # (k, k): copy b answers for target b
            chosen = y.diagonal()
            (g,) = torch.autograd.grad(chosen.sum(), s)
            out[a : a + len(part)] = grid.pool((g * (s.detach() - base)).double()).float().cpu().numpy()
            clean[a : a + len(part)] = chosen.detach().cpu().numpy()
    return AttributionMap(method="grad_x_input", target=target, indices=idx.cpu().numpy(), names=labels, values=out, clean=clean,
                          at_baseline=at_base, frequency_edges_hz=grid.frequency_edges_hz, time_edges_s=grid.time_edges_s,
                          baseline=baseline)
