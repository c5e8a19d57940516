"""Randomized smoothing on the waveform: a classifier with a certified L2 radius (Cohen, Rosenfeld & Kolter 2019).

Cohen, Rosenfeld & Kolter 2019, "Certified Adversarial Robustness via Randomized Smoothing", ICML (arXiv 1902.02918).
The base classifier ``f(x)`` is a model's top-1 class (the argmax of its logits; no detection threshold, so "no bird"
is not a class here). The smoothed classifier is

    g(x) = argmax_c P(f(x + e) = c),   e ~ N(0, sigma^2 I)                              (Cohen et al., eq. 1)

with ``x`` one window of waveform (full-scale amplitude, the model's ``window_samples``) and ``sigma`` the noise's
standard deviation per sample. Theorem 1: when the top class ``c_A`` has probability at least ``p_A > 1/2`` under the
noise, ``g(x + delta) = c_A`` for every perturbation with ``||delta||_2 < R = sigma * Phi^-1(p_A)`` (their eq. 3 with
``p_B = 1 - p_A``; ``Phi^-1`` the standard normal quantile). CERTIFY (their Algorithm, "Pseudocode for certification
and prediction") draws ``n0`` noisy copies to choose ``c_A``, ``n`` more to count it, and takes ``p_A`` as the one-sided
Clopper-Pearson lower bound at level ``alpha``: with probability at least ``1 - alpha`` over the noise the radius is
not too large. PREDICT counts ``n`` copies and abstains unless a two-sided binomial test of the top two counts
rejects a tie at level ``alpha``.

The radius is in waveform units (full-scale amplitude, the L2 norm over the window's samples, padding included), and
also given as an SNR: ``10 log10(||x||^2 / R^2)`` [dB], the window's energy over that of a perturbation of norm ``R``.
A perturbation can change ``g``'s answer only if it is at least as loud as ``R``, i.e. only if its SNR is at most this
figure: a window certified at 38 dB cannot be changed by any sound quieter than 38 dB below the window. A higher SNR
is therefore a *weaker* certificate (a quieter sound suffices to break it).

What the certificate does not say: it holds for ``g``, not for the plain model ``f`` (their answers may differ); it
bounds the L2 norm, not the L-inf budget of the project's attacks (an L-inf eps over ``d`` samples allows L2 up to
``eps sqrt(d)``); and with ``n`` copies at level ``alpha`` no radius above :func:`max_certifiable_radius` can be
certified, however robust ``g`` is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ParameterError

__all__ = ["Certificate", "SmoothedPrediction", "DEFAULT_SIGMA", "DEFAULT_ALPHA", "DEFAULT_SECONDS", "N0", "MIN_N", "MAX_N",
           "check_smoothing", "lower_confidence_bound", "certified_radius", "max_certifiable_radius", "radius_snr_db",
           "noise_counts", "noise_generator", "certify_window", "certify_windows", "smoothed_predict"]

#: Default noise std [full-scale amplitude]. Measured with ``bench/smoothing_sigma.py`` (birdnet_protopnet_gated, one
#: test window of each of 5 species, 40 noisy copies per sigma): the mean share of copies whose top-1 kept the clean
#: top-1 was 1.00, 1.00, 0.86, 0.64, 0.44 at sigma 1e-4, 3e-4, 1e-3, 3e-3, 1e-2. At 1e-3 a loud Marsh Warbler window
#: (-21 dBFS RMS) kept it in only 33 % of copies; at 3e-4 every window kept it in all of them. The radius grows with
#: sigma, so the default is the largest sigma measured that left every window's answer intact: 3e-4 (noise at -70 dBFS).
DEFAULT_SIGMA = 3e-4
#: Default level of the Clopper-Pearson bound and the binomial test (Cohen et al.'s alpha).
DEFAULT_ALPHA = 0.001
#: Noisy copies that choose the candidate class (Cohen et al.'s n0).
N0 = 100
#: Fewest estimation copies a time budget may choose: at alpha 0.001 no radius above 2.46 sigma is certifiable with 1,000.
MIN_N = 1000
#: Most estimation copies a time budget may choose (Cohen et al. certify ImageNet with 100,000).
MAX_N = 100_000
#: Default time budget per window [s] when no ``n`` is given.
DEFAULT_SECONDS = 60.0


@dataclass(frozen=True)
class Certificate:
    """CERTIFY's answer for one window (:func:`certify_window`).

    Attributes
    ----------
    start_s, end_s : float [s]
        The window's real audio in its recording.
    label : int
        ``c_A``: the class most of the ``n0`` selection copies gave, the smoothed classifier's answer unless it abstains.
    class_name : str
        The model's name of ``label`` (its class code).
    counts : np.ndarray [shape=(n_classes,), dtype=int64]
        Top-1 classes of the ``n`` estimation copies.
    counts_selection : np.ndarray [shape=(n_classes,), dtype=int64]
        Top-1 classes of the ``n0`` selection copies (``label`` is their argmax).
    p_lower : float in [0, 1)
        One-sided Clopper-Pearson lower bound on ``P(f(x + e) = label)`` at level ``alpha``.
    radius : float or None [full-scale amplitude, L2 over the window's samples]
        ``sigma Phi^-1(p_lower)``; None when abstaining (``p_lower <= 1/2``).
    snr_db : float or None [dB]
        ``10 log10(||x||^2 / radius^2)``: no perturbation at a higher SNR (quieter) changes ``g``; None when abstaining.
    signal_norm : float [full-scale amplitude]
        ``||x||_2`` of the window.
    max_radius : float [full-scale amplitude]
        :func:`max_certifiable_radius` at this ``n`` and ``alpha``.
    n0, n : int
        Selection and estimation copies actually drawn.
    sigma, alpha : float
    seconds : float [s]
        Wall time of this window.
    """

    start_s: float
    end_s: float
    label: int
    class_name: str
    counts: np.ndarray
    counts_selection: np.ndarray
    p_lower: float
    radius: float | None
    snr_db: float | None
    signal_norm: float
    max_radius: float
    n0: int
    n: int
    sigma: float
    alpha: float
    seconds: float

    @property
    def abstained(self) -> bool:
        """``g`` abstains: the lower bound on the top class's probability is not above 1/2."""
        return self.radius is None


@dataclass(frozen=True)
class SmoothedPrediction:
    """PREDICT's answer for one window (:func:`smoothed_predict`): ``label`` (None when abstaining), the ``counts`` of
    the ``n`` copies' top-1 classes ``(n_classes,)`` int64, and the binomial test's two-sided ``p_value``."""

    label: int | None
    counts: np.ndarray
    p_value: float


def _number(name: str, value, low: float, high: float, *, closed_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ParameterError(f"{name} must be a number, got {value!r}")
    if not (low <= value if closed_low else low < value) or not value < high:
        raise ParameterError(f"{name} must lie in {'[' if closed_low else '('}{low:g}, {high:g}), got {value!r}")
    return float(value)


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_smoothing(sigma, alpha, n0, n=None, seconds=None, min_n: int = MIN_N, batch_size: int | None = None) -> tuple:
    """Check CERTIFY's settings before any work; returns ``(sigma, alpha, n0, n, seconds, min_n, batch_size)``.

    Raises
    ------
    ParameterError
        ``sigma`` not in (0, 1) [full-scale amplitude]; ``alpha`` not in (0, 1); ``n0 < 1``; ``n`` and ``seconds``
        both given; ``n < n0``; ``seconds <= 0``; ``min_n < 1``; ``batch_size < 1`` (None: chosen by the device).
    """
    sigma = _number("sigma", sigma, 0.0, 1.0)
    alpha = _number("alpha", alpha, 0.0, 1.0)
    n0 = _count("n0", n0, 1)
    if n is not None and seconds is not None:
        raise ParameterError("give n (noisy copies) or seconds (a time budget), not both")
    if n is not None:
        n = _count("n", n, 1)
        if n < n0:
            raise ParameterError(f"n must be at least n0 = {n0} (the selection copies), got {n}")
    if seconds is not None:
        seconds = _number("seconds", seconds, 0.0, math.inf)
    batch_size = None if batch_size is None else _count("batch_size", batch_size, 1)
    return sigma, alpha, n0, n, seconds, _count("min_n", min_n, 1), batch_size


def lower_confidence_bound(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion: ``P(p >= bound) >= 1 - alpha``.

    ``Beta(alpha; k, n - k + 1)`` quantile (Clopper & Pearson 1934), 0 when ``k = 0``; Cohen et al.'s
    ``LowerConfBound(k, n, 1 - alpha)``.

    Parameters
    ----------
    k : int in [0, n]
        Successes.
    n : int >= 1
        Trials.
    alpha : float in (0, 1)

    Returns
    -------
    float in [0, 1)
    """
    from scipy.stats import beta

    if k <= 0:
        return 0.0
    return float(beta.ppf(alpha, k, n - k + 1))


def certified_radius(p_lower: float, sigma: float) -> float | None:
    """``sigma Phi^-1(p_lower)`` [full-scale amplitude, L2] (Cohen et al., Theorem 1); None when ``p_lower <= 1/2``."""
    from scipy.stats import norm

    return float(sigma * norm.ppf(p_lower)) if p_lower > 0.5 else None


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius CERTIFY can give with ``n`` copies at level ``alpha``: all ``n`` copies agree.

    ``sigma Phi^-1(alpha^(1/n))`` [full-scale amplitude, L2], as ``alpha^(1/n)`` is the Clopper-Pearson lower bound of
    ``n`` successes in ``n`` trials; 0 when even that is not above 1/2 (``n <= log2(1/alpha)``). At ``alpha = 0.001``:
    about 1.50 sigma at ``n = 100``, 2.46 sigma at 1,000, 3.20 sigma at 10,000, 3.81 sigma at 100,000.
    """
    return certified_radius(alpha ** (1.0 / n), sigma) or 0.0


def radius_snr_db(signal_norm: float, radius: float) -> float:
    """``10 log10(||x||^2 / R^2)`` [dB]: a window of L2 norm ``signal_norm`` over a perturbation of norm ``radius``.

    The smallest SNR at which a perturbation could change a certified answer; ``-inf`` for a silent window.
    """
    if signal_norm <= 0:
        return -math.inf
    return float(20.0 * math.log10(signal_norm / radius))


def _device(model) -> torch.device:
    param = next(iter(model.parameters()), None)
    if param is not None:
        return param.device
    from core.io.device import get_device

    return get_device()


def _window(window, device: torch.device) -> torch.Tensor:
    """``window`` as a float32 tensor ``(n_samples,)`` on ``device``; ParameterError unless finite, 1-D and non-empty."""
    try:
        x = torch.as_tensor(window).detach().to(device=device, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ParameterError(f"window must be a float array or tensor, got {type(window).__name__}") from None
    if x.ndim != 1 or x.numel() == 0 or not torch.isfinite(x).all():
        raise ParameterError(f"window must be a finite 1-D float array (n_samples,), got shape {tuple(x.shape)}")
    return x


def _batch(device: torch.device) -> int:
    from core.io.device import scoring_batch_size

    return scoring_batch_size(device, 8)


@torch.no_grad()
def noise_counts(model, window: torch.Tensor, *, sigma: float, n: int, n_classes: int, batch_size: int,
                 generator: torch.Generator, on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Top-1 classes of ``model`` on ``n`` copies of ``window`` with Gaussian noise, ``batch_size`` at a time.

    Parameters
    ----------
    model : callable
        ``(batch, n_samples)`` float32 waveforms -> ``(batch, n_classes)`` logits, or ``(k, batch, n_classes)``: the
        logits of ``k`` models on the same noisy copies (:class:`core.studies.certified_accuracy.SharedTrunk`).
    window : torch.Tensor [shape=(n_samples,), dtype=float32], on the model's device
    sigma : float [full-scale amplitude]
        Noise std per sample; the noisy copies are not clipped to [-1, 1].
    n, n_classes, batch_size : int
    generator : torch.Generator
        On the window's device; its draws follow one another, so successive calls draw independent noise.
    on_batch : callable, optional
        ``on_batch(copies)`` after each batch.

    Returns
    -------
    np.ndarray [shape=(n_classes,) or (k, n_classes), dtype=int64]
    """
    counts = None
    done = 0
    while done < n:
        b = min(batch_size, n - done)
        noise = torch.randn((b, window.shape[-1]), generator=generator, device=window.device, dtype=window.dtype)
        logits = model(window[None] + sigma * noise)
        top = logits.argmax(-1)
        batch_counts = torch.nn.functional.one_hot(top, max(n_classes, logits.shape[-1])).sum(-2)[..., :n_classes]
        counts = batch_counts if counts is None else counts + batch_counts
        done += b
        if on_batch is not None:
            on_batch(b)
    return counts.cpu().numpy().astype(np.int64)


def noise_generator(device: torch.device, seed: int, index: int) -> torch.Generator:
    """A generator seeded by (``seed``, window ``index``): each window has its own reproducible noise."""
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] >> 1))
    return g


def _budget_n(seconds: float, elapsed: float, batch_times: list[tuple[int, float]], min_n: int) -> int:
    """Estimation copies that fit in what is left of ``seconds``, from the rate of the selection batches after the first
    (the first pays a warm-up) or of the first alone; at least ``min_n``, at most :data:`MAX_N`."""
    timed = batch_times[1:] or batch_times
    copies, spent = sum(c for c, _ in timed), sum(t for _, t in timed)
    rate = copies / spent if spent > 0 else math.inf
    fit = (seconds - elapsed) * rate
    return int(min(MAX_N, max(min_n, math.floor(fit) if math.isfinite(fit) else MAX_N)))


def certify_window(model, window, *, sigma: float = DEFAULT_SIGMA, n: int | None = None, seconds: float | None = None,
                   n0: int = N0, alpha: float = DEFAULT_ALPHA, min_n: int = MIN_N, batch_size: int | None = None, seed: int = 0,
                   index: int = 0, start_s: float = 0.0, end_s: float | None = None, class_names: Sequence[str] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> Certificate:
    """CERTIFY (Cohen et al. 2019) for one window: ``g``'s class, the lower bound on its probability, the L2 radius.

    Parameters
    ----------
    model : callable (torch.nn.Module)
        ``(batch, n_samples)`` float32 waveforms -> ``(batch, n_classes)`` logits (any model of the registry).
    window : array-like [shape=(n_samples,), dtype=float32] [full-scale amplitude]
    sigma : float in (0, 1) [full-scale amplitude]
        Noise std per sample.
    n : int >= n0, optional
        Estimation copies; without it ``seconds`` (default :data:`DEFAULT_SECONDS`) chooses it.
    seconds : float > 0 [s], optional
        Time budget of the window: the ``n0`` selection copies measure this machine's rate, and ``n`` is what fits in
        the rest, at least ``min_n``, at most :data:`MAX_N` (it may run over the budget to reach ``min_n``).
    n0 : int >= 1
        Selection copies.
    alpha : float in (0, 1)
        The certificate fails to hold with probability at most ``alpha`` over the noise.
    min_n : int >= 1
        The fewest estimation copies a time budget chooses.
    batch_size : int >= 1, optional
        Noisy copies per forward pass; default :func:`core.io.device.scoring_batch_size` of 8 (8 on a CPU, where larger
        batches of BirdNET's 3 s windows ran slower per copy, 64 on CUDA).
    seed : int
        With ``index``, seeds the noise (:class:`torch.Generator` on the model's device).
    index : int
        The window's number in its recording.
    start_s, end_s : float [s]
        Where the window's real audio lies (recorded in the result; ``end_s`` defaults to its full length).
    class_names : sequence of str, optional
        Default ``model.config.class_names``, else the class indices.
    progress : callable, optional
        ``progress(done, total)`` in noisy copies, after each batch (``total`` is ``n0 + min_n`` until a budget chose n).

    Returns
    -------
    Certificate

    Raises
    ------
    ParameterError
        Bad settings (:func:`check_smoothing`), or a window that is not a finite 1-D float array.
    """
    sigma, alpha, n0, n, seconds, min_n, batch_size = check_smoothing(sigma, alpha, n0, n, seconds, min_n, batch_size)
    if n is None and seconds is None:
        seconds = DEFAULT_SECONDS
    device = _device(model)
    batch_size = batch_size or _batch(device)
    x = _window(window, device)
    if class_names is None:
        cfg = getattr(model, "config", None)
        class_names = list(cfg.class_names) if cfg is not None else None
    gen = noise_generator(device, seed, index)
    start = time.perf_counter()
    state = {"done": 0, "total": n0 + (n if n is not None else min_n), "last": start}
    batch_times: list[tuple[int, float]] = []

    def on_batch(copies: int) -> None:
        now = time.perf_counter()
        batch_times.append((copies, now - state["last"]))
        state["done"], state["last"] = state["done"] + copies, now
        if progress is not None:
            progress(state["done"], state["total"])

    with torch.no_grad():
        n_classes = int(model(x[None]).shape[-1]) if class_names is None else len(class_names)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    selection = noise_counts(model, x, sigma=sigma, n=n0, n_classes=n_classes, batch_size=batch_size, generator=gen, on_batch=on_batch)
    if n is None:
        n = _budget_n(seconds, time.perf_counter() - start, batch_times, min_n)
        state["total"] = n0 + n
    counts = noise_counts(model, x, sigma=sigma, n=n, n_classes=n_classes, batch_size=batch_size, generator=gen, on_batch=on_batch)
    label = int(np.argmax(selection))
    p_lower = lower_confidence_bound(int(counts[label]), n, alpha)
    radius = certified_radius(p_lower, sigma)
    norm = float(torch.linalg.vector_norm(x).cpu())
    return Certificate(start_s=float(start_s), end_s=float(start_s + len(x) / _rate(model) if end_s is None else end_s), label=label,
                       class_name=names[label], counts=counts, counts_selection=selection, p_lower=p_lower, radius=radius,
                       snr_db=None if radius is None else radius_snr_db(norm, radius), signal_norm=norm,
                       max_radius=max_certifiable_radius(sigma, n, alpha), n0=n0, n=int(n), sigma=sigma, alpha=alpha,
                       seconds=time.perf_counter() - start)


def _rate(model) -> float:
    """The model's sample rate [Hz], 1 for a bare module (times then count samples)."""
    cfg = getattr(model, "config", None)
    return float(cfg.frontend.sample_rate) if cfg is not None else 1.0


def certify_windows(model, w, *, start_s: float | None = None, end_s: float | None = None,
                    progress: Callable[[str, int, int], None] | None = None, **settings) -> list[Certificate]:
    """:func:`certify_window` for each window of a recording that overlaps ``[start_s, end_s)``.

    Parameters
    ----------
    model : BirdClassifier
    w : core.attacks.windows.Windows
        The recording's windows (:func:`core.attacks.windows.cut_windows`, as :func:`core.api.predict` cuts them).
    start_s, end_s : float [s], optional
        Only the windows that overlap this span of the recording (default all).
    progress : callable, optional
        ``progress(stage, done, total)``: the window (``"window 2/5"``) and its noisy copies so far.
    **settings
        :func:`certify_window`'s keywords (``sigma``, ``n``, ``seconds``, ``n0``, ``alpha``, ``min_n``, ``batch_size``,
        ``seed``), checked once before any window is drawn; each window's noise is seeded by its number in the recording.

    Returns
    -------
    list of Certificate, in time order

    Raises
    ------
    ParameterError
        Bad settings, ``start_s >= end_s``, or no window in the span.
    """
    check_smoothing(settings.get("sigma", DEFAULT_SIGMA), settings.get("alpha", DEFAULT_ALPHA), settings.get("n0", N0),
                    settings.get("n"), settings.get("seconds"), settings.get("min_n", MIN_N), settings.get("batch_size"))
    lo = -math.inf if start_s is None else _number("start_s", start_s, -math.inf, math.inf)
    hi = math.inf if end_s is None else _number("end_s", end_s, -math.inf, math.inf)
    if lo >= hi:
        raise ParameterError(f"start_s must lie before end_s, got {start_s} and {end_s} s")
    sr = _rate(model)
    starts, ends = w.start / sr, (w.start + w.valid) / sr
    keep = [i for i in range(len(starts)) if starts[i] < hi and ends[i] > lo]
    if not keep:
        span = f"{'the start' if start_s is None else f'{lo:g} s'} to {'the end' if end_s is None else f'{hi:g} s'}"
        raise ParameterError(f"no window overlaps {span}; the recording's windows span {starts[0]:g}-{ends[-1]:g} s")
    out = []
    for k, i in enumerate(keep):
        stage = f"window {k + 1}/{len(keep)}"
        step = None if progress is None else (lambda done, total, stage=stage: progress(stage, done, total))
        out.append(certify_window(model, w.windows[i], index=i, start_s=starts[i], end_s=ends[i], progress=step, **settings))
    return out


def smoothed_predict(model, window, *, sigma: float = DEFAULT_SIGMA, n: int = MIN_N, alpha: float = DEFAULT_ALPHA,
                     batch_size: int | None = None, seed: int = 0, index: int = 0) -> SmoothedPrediction:
    """PREDICT (Cohen et al. 2019): ``g``'s class from ``n`` noisy copies, or abstain.

    The two most frequent classes ``c_A``, ``c_B`` with counts ``n_A >= n_B``; ``c_A`` is returned when the two-sided
    binomial test of ``n_A`` successes in ``n_A + n_B`` trials at p = 1/2 has p-value ``<= alpha``
    (:func:`scipy.stats.binomtest`), else the answer is None (abstain). Cohen et al.'s Theorem 2: the answer differs
    from ``g(x)`` with probability at most ``alpha``.

    Parameters
    ----------
    model, window, sigma, batch_size, seed, index
        As :func:`certify_window`.
    n : int >= 1
        Noisy copies.
    alpha : float in (0, 1)

    Returns
    -------
    SmoothedPrediction

    Raises
    ------
    ParameterError
        Bad settings, or a window that is not a finite 1-D float array.
    """
    from scipy.stats import binomtest

    sigma, alpha, _, n, _, _, batch_size = check_smoothing(sigma, alpha, 1, n, None, 1, batch_size)
    device = _device(model)
    x = _window(window, device)
    with torch.no_grad():
        n_classes = int(model(x[None]).shape[-1])
    counts = noise_counts(model, x, sigma=sigma, n=n, n_classes=n_classes, batch_size=batch_size or _batch(device),
                          generator=noise_generator(device, seed, index))
    top = np.argsort(-counts, kind="stable")[:2]
    n_a, n_b = int(counts[top[0]]), int(counts[top[1]]) if len(top) > 1 else 0
    p_value = float(binomtest(n_a, n_a + n_b, 0.5).pvalue) if n_a + n_b else 1.0
    return SmoothedPrediction(label=int(top[0]) if p_value <= alpha else None, counts=counts, p_value=p_value)
