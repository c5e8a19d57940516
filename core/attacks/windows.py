"""Recordings as batches of windows: cut, mask the padding, attack batch by batch, put the windows back.

A 1-D waveform ``(n_samples,)`` is a recording of any length, cut into non-overlapping windows of the
model's length (:func:`core.io.audio.window_starts`: a partial last window is kept, zero-padded, when it
holds at least half a window). A 2-D waveform ``(batch, n_samples)`` is a batch of windows, each row at
most one window long (shorter rows are zero-padded). The padding is masked, so an attack never perturbs
it and :func:`stitch` returns a waveform of the input's shape.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from core.errors import ParameterError

__all__ = ["Windows", "cut_windows", "stitch", "window_labels", "attack_windows"]


class Windows(NamedTuple):
    """Windows of a waveform and where they came from.

    Attributes
    ----------
    x : torch.Tensor, the input (its shape, dtype and device)
    windows : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
    mask : np.ndarray [shape=(n_windows, window_samples), dtype=float32], 1 on real samples, 0 on padding
    row : np.ndarray [shape=(n_windows,)], the input row of each window (0 for a 1-D input)
    start : np.ndarray [shape=(n_windows,)] [samples], each window's first sample in its row
    valid : np.ndarray [shape=(n_windows,)] [samples], real (not padded) samples per window
    """

    x: torch.Tensor
    windows: np.ndarray
    mask: np.ndarray
    row: np.ndarray
    start: np.ndarray
    valid: np.ndarray


def cut_windows(waveform, window_samples: int, *, name: str = "waveform", batch: bool = True) -> Windows:
    """Cut a 1-D recording into windows, or take a 2-D batch as one window per row (see the module docstring).

    Raises
    ------
    ParameterError
        Not a non-empty float ``(n_samples,)`` (or, with ``batch``, ``(batch, n_samples)``) array, non-finite
        samples or samples outside [-1, 1], or a 2-D row longer than ``window_samples``.
    """
    from core.io.audio import window_starts

    try:
        x = torch.as_tensor(waveform)
    except (TypeError, ValueError, RuntimeError):
        raise ParameterError(f"{name} must be a float array or tensor, got {type(waveform).__name__}") from None
    if not x.is_floating_point() or x.ndim not in ((1, 2) if batch else (1,)) or x.numel() == 0:
        want = "(n_samples,) or (batch, n_samples)" if batch else "(n_samples,)"
        raise ParameterError(f"{name} must be a non-empty float array {want}, got {x.dtype} of shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ParameterError(f"{name} contains NaN or inf")
    if x.abs().max() > 1.0:
        raise ParameterError(f"{name} samples must lie in [-1, 1] (full-scale amplitude), got a peak of {float(x.abs().max()):.3g}")
    win = int(window_samples)
    if x.ndim == 2 and x.shape[1] > win:
        raise ParameterError(f"{name} rows must hold at most one window of {win} samples, got {x.shape[1]}; "
                             "give a 1-D recording to cut it into windows")
    rows = x.detach().cpu().float().numpy().reshape(-1, x.shape[-1])
    starts = window_starts(rows.shape[1], win) if x.ndim == 1 else [0]
    row = np.repeat(np.arange(len(rows)), len(starts))
    start = np.tile(np.asarray(starts, dtype=np.int64), len(rows))
    valid = np.minimum(win, rows.shape[1] - start)
    windows, mask = np.zeros((len(row), win), np.float32), np.zeros((len(row), win), np.float32)
    for i, (r, s, v) in enumerate(zip(row, start, valid)):
        windows[i, :v], mask[i, :v] = rows[r, s : s + v], 1.0
    return Windows(x, windows, mask, row, start, valid)


def stitch(w: Windows, windows: np.ndarray) -> torch.Tensor:
    """Put (attacked) windows ``(n_windows, window_samples)`` back into the input's shape, dtype and device.

    Samples of the input that no window holds (a tail shorter than half a window) are kept as they were.
    """
    out = w.x.detach().cpu().clone().reshape(-1, w.x.shape[-1])
    for i, (r, s, v) in enumerate(zip(w.row, w.start, w.valid)):
        out[r, s : s + v] = torch.as_tensor(windows[i, :v], dtype=out.dtype)
    return out.reshape(w.x.shape).to(w.x.device)


def window_labels(labels, class_names, w: Windows) -> np.ndarray | None:
    """Multi-hot labels per window, ``(n_windows, n_classes)`` float32 (None stays None).

    Parameters
    ----------
    labels : array-like [shape=(n_classes,) or (batch, n_classes)], or list of str
        Multi-hot 0/1 labels for the whole input or per row, or class names present everywhere.

    Raises
    ------
    ParameterError
        Unknown class names, values other than 0/1, or a shape that fits neither form.
    """
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    names = list(class_names)
    if len(labels) and all(isinstance(c, str) for c in labels):
        unknown = [c for c in labels if c not in names]
        if unknown:
            raise ParameterError(f"labels must be class names of the model, got unknown {unknown}")
        labels = np.isin(names, list(labels)).astype(np.float32)
    y = np.asarray(labels, dtype=np.float32)
    rows = 1 if w.x.ndim == 1 else w.x.shape[0]
    if y.shape == (len(names),):
        y = np.repeat(y[None], rows, 0)
    if y.shape != (rows, len(names)) or not np.isin(y, (0.0, 1.0)).all():
        raise ParameterError(f"labels must be multi-hot 0/1 of shape ({len(names)},) or ({rows}, {len(names)}), "
                             f"or a list of class names, got shape {y.shape}")
    return y[w.row]


def attack_windows(attack, model, w: Windows, labels: np.ndarray | None = None, *, batch_size: int = 8) -> dict:
    """Run an attack on every window, ``batch_size`` at a time, and score each window before and after.

    Parameters
    ----------
    attack : Attack or MaskedPGD
        Called as ``attack(model, x, labels, mask=mask)``; its objective (``attack.objective``, or
        ``attack.pgd.objective``) decides success.
    model : BirdClassifier
    w : Windows
    labels : np.ndarray [shape=(n_windows, n_classes)], optional
    batch_size : int >= 1

    Returns
    -------
    dict
        ``adversarial`` (n_windows, window_samples) float32, ``success`` (n_windows,) bool (the objective's
        ``success`` on the adversarial window), ``eps`` (n_windows,) [full-scale amplitude], ``clean_scores``
        and ``scores`` (n_windows, n_classes) sigmoid scores before and after.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    inner = getattr(attack, "pgd", attack)
    obj = inner.objective
    device = next(model.parameters()).device
    parts: dict[str, list] = {k: [] for k in ("adversarial", "success", "eps", "clean_scores", "scores")}
    for i in range(0, len(w.windows), batch_size):
        xb, mb = (torch.as_tensor(a[i : i + batch_size], device=device) for a in (w.windows, w.mask))
        yb = None if labels is None else torch.as_tensor(labels[i : i + batch_size], device=device)
        ab = attack(model, xb, yb, mask=mb)
        with inner.eval_mode(model), torch.no_grad():
            state = obj.prepare(model, xb, yb)
            out = model.forward_all(ab)
            parts["success"].append(obj.evaluate(out, state)["success"].bool().cpu().numpy())
        parts["eps"].append(inner.budget(xb, mb).cpu().numpy())
        parts["clean_scores"].append(torch.sigmoid(state["clean_logits"]).float().cpu().numpy())
        parts["scores"].append(torch.sigmoid(out.logits).float().cpu().numpy())
        parts["adversarial"].append(ab.detach().float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}
