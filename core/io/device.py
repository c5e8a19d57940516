"""The one place where the compute device, the batch that fills it, and the precision of gradient-free passes are chosen."""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["get_device", "scoring_autocast", "scoring_batch_size", "rows_per_pass", "clips_per_batch", "fit_rows"]

#: Rows (clips x budgets) per forward+backward pass on a CPU: bench/attack_speed.py measured no throughput gain
#: beyond 8 rows of 5 s clips on 2 cores, and memory grows linearly.
CPU_ROWS = 8
#: Share of the free GPU memory a pass may use (the rest: fragmentation, the caller's tensors).
GPU_MEMORY_SHARE = 0.6
MAX_ROWS = 512
_ROWS_CACHE: dict = {}


def get_device() -> torch.device:
    """CUDA when available (and not disabled by ``BIRDSHIELD_DEVICE=cpu``), else CPU."""
    want = os.environ.get("BIRDSHIELD_DEVICE", "").strip().lower()
    if want:
        return torch.device(want)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def scoring_autocast(device: torch.device | str):
    """Mixed precision for gradient-free passes (scores, embeddings): bfloat16 autocast on CUDA, nothing on a CPU.

    Attacks and training never run under it: an attack's perturbation (1e-5 to 1e-3
    of full scale on samples near 0.1) lies below bfloat16's resolution of the
    signal (8 significant bits, relative step 0.4 %), and ``bench/throughput.py``
    measures how far bfloat16 input gradients disagree in sign with float32 ones.
    ``BIRDSHIELD_PRECISION=fp32`` turns it off.

    Returns
    -------
    context manager
    """
    device = torch.device(device)
    if device.type != "cuda" or os.environ.get("BIRDSHIELD_PRECISION", "").lower() == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def scoring_batch_size(device: torch.device | str, default: int) -> int:
    """Clips per gradient-free pass: ``default`` on a CPU, 8x it on CUDA (``BIRDSHIELD_GPU_BATCH`` overrides)."""
    if torch.device(device).type != "cuda":
        return default
    return int(os.environ.get("BIRDSHIELD_GPU_BATCH", 8 * default))


def fit_rows(bytes_per_row: float, free_bytes: float, *, share: float = GPU_MEMORY_SHARE, cap: int = MAX_ROWS) -> int:
    """The largest power of two of rows whose forward+backward fits in ``share`` of ``free_bytes`` (at least 1, at most ``cap``).

    Parameters
    ----------
    bytes_per_row : float > 0 [bytes]
        Peak memory one row adds to a forward+backward pass.
    free_bytes : float [bytes]

    Returns
    -------
    int
    """
    if bytes_per_row <= 0:
        return cap
    rows = 1
    while rows * 2 <= cap and rows * 2 * bytes_per_row <= share * free_bytes:
        rows *= 2
    return rows


def rows_per_pass(model, n_samples: int) -> int:
    """Rows (clips x budgets) per attack pass that fill the device: :data:`CPU_ROWS` on a CPU; on CUDA measured once per model.

    On CUDA the peak memory of a forward+backward pass with respect to the input is
    measured at 1 and 2 rows of ``n_samples``; the difference is one row's cost,
    and :func:`fit_rows` sizes the pass to the free memory. ``BIRDSHIELD_GPU_ROWS``
    overrides.

    Parameters
    ----------
    model : BirdClassifier
    n_samples : int [samples]

    Returns
    -------
    int >= 1
    """
    device = next(model.parameters()).device
    if device.type != "cuda":
        return CPU_ROWS
    if os.environ.get("BIRDSHIELD_GPU_ROWS"):
        return max(1, int(os.environ["BIRDSHIELD_GPU_ROWS"]))
    key = (id(model), int(n_samples), str(device))
    if key not in _ROWS_CACHE:
        peaks = []
        was_training = model.training
        model.eval()
        try:
            for rows in (1, 2):
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                x = torch.zeros(rows, int(n_samples), device=device, requires_grad=True)
                (grad,) = torch.autograd.grad(model(x).sum(), x)
                del grad, x
                torch.cuda.synchronize(device)
                peaks.append(torch.cuda.max_memory_allocated(device) - base)
        finally:
            model.train(was_training)
        free, _ = torch.cuda.mem_get_info(device)
        _ROWS_CACHE[key] = fit_rows(max(peaks[1] - peaks[0], peaks[0] / 2), free)
    return _ROWS_CACHE[key]


def clips_per_batch(model, n_samples: int, n_budgets: int, *, cpu_default: int = 4) -> int:
    """Clips attacked together in a sweep of ``n_budgets`` budgets: ``cpu_default`` on a CPU; on CUDA enough
    clips that one pass of :func:`rows_per_pass` rows is full (at least ``cpu_default``).

    Returns
    -------
    int >= 1
    """
    if next(model.parameters()).device.type != "cuda":
        return cpu_default
    return max(cpu_default, rows_per_pass(model, n_samples) // max(1, int(n_budgets)))
