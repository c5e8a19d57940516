"""Checking certificates: attack the smoothed classifier just below each certified radius, then above it.

A certificate of randomized smoothing (:mod:`core.attacks.smoothing`; Cohen, Rosenfeld & Kolter 2019, Theorem 1)
says that no perturbation of L2 norm below ``R`` changes the smoothed classifier ``g``'s answer, except with
probability ``alpha`` over the noise of the certification. A correct implementation therefore lets no attack flip
``g`` below ``R``, beyond that error rate; an attack that does shows a bug. This module runs that check (issue 26,
item 4) and measures how far the certificate is from what attacks reach:

1. CERTIFY each window (:func:`core.attacks.smoothing.certify_window`); windows where ``g`` abstains, or where
   ``g``'s class ``c_A`` is not the base model's clean top-1 (the APGD legs move away from the clean top-1), are
   counted and left out.
2. **Below the radius**: every leg of :data:`CHECK_LEGS` attacks ``g`` inside the L2 ball of radius
   ``below * R`` (default 0.95 R): PGD in L2 on the Carlini-Wagner margin of ``c_A`` and AutoAttack's APGD-CE and
   APGD-DLR in L2 (Croce & Hein 2020), each with expectation over transformation (:class:`core.attacks.eot.EOT`;
   Athalye et al. 2018) over ``samples`` draws of the smoothing noise (:class:`core.attacks.threats.SmoothingNoise`)
   per step: the attack on the smoothed classifier of Salman et al. 2019 (NeurIPS, Sec. 3, their SmoothAdv's
   Monte-Carlo gradient, here with the loss averaged over draws). ``g`` at the attacked window is then judged by
   PREDICT (:func:`core.attacks.smoothing.smoothed_predict`, ``n_predict`` copies): a *flip* is PREDICT answering
   a class other than ``c_A`` (an abstention is counted apart, not as a flip).
3. **Above it**: PGD alone at ``R * factor ** k`` (k = 1, 2, ...) until ``g`` flips or the ball reaches the
   window's own norm (SNR 0 dB). The first budget that flips is an upper bound on ``g``'s robust radius at that
   window; its ratio to ``R`` is the empirical gap (certified radius: a lower bound; attacked: an upper bound).

Cost: the below-radius legs take ``3 * steps * samples`` forward-backward passes of the model a window (default 480),
each budget above the radius ``steps_above * samples`` (80), and every judgement a PREDICT of ``n_predict`` copies.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError, check_int

__all__ = ["CHECK_LEGS", "check_certificates", "check_summary", "check_markdown"]

#: The attacks on the smoothed classifier below the certified radius, in the order they run.
CHECK_LEGS = ("pgd", "apgd-ce", "apgd-dlr")


def _attack(leg: str, eps: float, sigma: float, *, steps: int, samples: int, seed: int):
    from core.attacks.apgd import APGD
    from core.attacks.eot import EOT
    from core.attacks.logit_objectives import OutputCrossEntropy, OutputDLR
    from core.attacks.objectives import OutputMargin
    from core.attacks.pgd import PGD
    from core.attacks.threats import SmoothingNoise

    inner = {"pgd": OutputMargin, "apgd-ce": OutputCrossEntropy, "apgd-dlr": OutputDLR}[leg]()
    objective = EOT(inner, SmoothingNoise(sigma), samples=samples, seed=seed)
    kind = PGD if leg == "pgd" else APGD
    return kind(eps=float(eps), norm="l2", steps=steps, seed=seed, objective=objective)


def _one_hot(label: int, n_classes: int, device) -> torch.Tensor:
    y = torch.zeros((1, n_classes), device=device)
    y[0, label] = 1.0
    return y


def check_certificates(model, windows, *, sigma: float, n: int = 1000, n0: int = 100, alpha: float = 0.001,
                       legs: tuple[str, ...] = CHECK_LEGS, steps: int = 20, steps_above: int = 10, samples: int = 8,
                       below: float = 0.95, factor: float = 4.0, n_predict: int = 1000, n_predict_above: int = 200,
                       seed: int = 0, names=None, first_index: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Certify each window, attack ``g`` below and above its radius (see the module docstring).

    Parameters
    ----------
    model : BirdClassifier
        Any model of the registry (its top-1 is the base classifier).
    windows : np.ndarray [shape=(n_windows, n_samples), dtype=float32] [full-scale amplitude]
    sigma : float [full-scale amplitude]
        Smoothing noise std per sample.
    n, n0, alpha
        CERTIFY's estimation and selection copies and error rate.
    legs : tuple of str
        Below-radius attacks, a subset of :data:`CHECK_LEGS`.
    steps, steps_above : int >= 1
        Iterations of each below-radius leg, and of PGD at each budget above the radius.
    samples : int in [1, 64]
        Noise draws per iteration (EOT).
    below : float in (0, 1)
        The below-radius budget as a share of ``R``.
    factor : float > 1
        Growth of the budget above the radius.
    n_predict, n_predict_above : int >= 1
        PREDICT's copies at the attacked window, below and above the radius.
    seed : int
        Seeds the certification noise (with the window's number), the attacks' starts and their draws.
    names : sequence of str, optional
        One label per window (e.g. its recording and time) for the table.
    first_index : int >= 0
        The number of the first window in a longer list (its noise and attacks are seeded by that number), so a run
        resumed window by window gives the rows of one uninterrupted run.
    progress : callable, optional
        ``progress(done, total)`` over windows.

    Returns
    -------
    pandas.DataFrame
        One row per window: ``window``, ``label`` (``c_A``), ``status`` (``"checked"``, ``"abstain"`` or
        ``"not the base top-1"``), ``p_lower``, ``radius``, ``snr_db`` (certified), ``signal_norm``, ``n``, then for
        checked windows ``flip_below`` (any leg flipped ``g`` below ``below * R``), ``abstain_below`` (PREDICT abstained
        after some leg, none flipped), ``flip_leg``, ``attacked_radius`` (smallest budget above that flipped ``g``;
        NaN if none up to the window's norm), ``attacked_snr_db``, ``gap`` (``attacked_radius / radius``), ``seconds``.

    Raises
    ------
    ParameterError
        Bad settings or windows.
    """
    from core.attacks.smoothing import certify_window, radius_snr_db

    x_all = np.asarray(windows, dtype=np.float32)
    if x_all.ndim != 2 or not len(x_all) or not np.all(np.isfinite(x_all)):
        raise ParameterError(f"windows must be a non-empty finite (n_windows, n_samples) array, got shape {x_all.shape}")
    unknown = [leg for leg in legs if leg not in CHECK_LEGS]
    if unknown or not legs:
        raise ParameterError(f"legs must be a non-empty subset of {CHECK_LEGS}, got {tuple(legs)}")
    for name, value in (("steps", steps), ("steps_above", steps_above), ("n_predict", n_predict), ("n_predict_above", n_predict_above)):
        check_int(name, value, 1)
    if not 0.0 < float(below) < 1.0:
        raise ParameterError(f"below must lie in (0, 1), got {below}")
    if not float(factor) > 1.0:
        raise ParameterError(f"factor must be > 1, got {factor}")
    names = [str(i) for i in range(len(x_all))] if names is None else [str(v) for v in names]
    if len(names) != len(x_all):
        raise ParameterError(f"{len(names)} names for {len(x_all)} windows")
    device = next(model.parameters()).device
    model.eval()
    check_int("first_index", first_index, 0)
    rows = []
    for k, x_np in enumerate(x_all):
        i = first_index + k
        t0 = time.perf_counter()
        cert = certify_window(model, x_np, sigma=sigma, n=n, n0=n0, alpha=alpha, seed=seed, index=i)
        row = {"window": names[k], "label": cert.label, "p_lower": cert.p_lower, "radius": cert.radius, "snr_db": cert.snr_db,
               "signal_norm": cert.signal_norm, "n": cert.n}
        x = torch.as_tensor(x_np, device=device)[None]
        with torch.no_grad():
            logits = model(x)
        if cert.abstained:
            row["status"] = "abstain"
        elif int(logits.argmax(-1)) != cert.label:
            row["status"] = "not the base top-1"
        else:
            row["status"] = "checked"
            row.update(_check_window(model, x, cert, int(logits.shape[-1]), sigma=sigma, alpha=alpha, legs=legs, steps=steps,
                                     steps_above=steps_above, samples=samples, below=below, factor=factor, n_predict=n_predict,
                                     n_predict_above=n_predict_above, seed=seed, index=i))
            row["attacked_snr_db"] = (radius_snr_db(cert.signal_norm, row["attacked_radius"])
                                      if math.isfinite(row["attacked_radius"]) else float("nan"))
            row["gap"] = row["attacked_radius"] / cert.radius
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        if progress is not None:
            progress(k + 1, len(x_all))
    return pd.DataFrame(rows)


def _check_window(model, x, cert, n_classes, *, sigma, alpha, legs, steps, steps_above, samples, below, factor, n_predict,
                  n_predict_above, seed, index) -> dict:
    from core.attacks.smoothing import smoothed_predict

    y = _one_hot(cert.label, n_classes, x.device)

    def judge(x_adv, copies, k):
        return smoothed_predict(model, x_adv[0], sigma=sigma, n=copies, alpha=alpha, seed=seed + 1000 + k, index=index).label

    out = {"flip_below": False, "abstain_below": False, "flip_leg": ""}
    for j, leg in enumerate(legs):
        x_adv = _attack(leg, below * cert.radius, sigma, steps=steps, samples=samples, seed=seed + j)(model, x, y)
        answer = judge(x_adv, n_predict, j)
        if answer is None:
            out["abstain_below"] = True
        elif answer != cert.label:
            out.update(flip_below=True, flip_leg=leg)
            break
    if out["flip_below"]:
        out["abstain_below"] = False
    eps, k, attacked = cert.radius * factor, 0, float("nan")
    from core.attacks.base import Attack

    while eps <= cert.signal_norm and eps <= Attack.eps_max("l2"):
        x_adv = _attack("pgd", eps, sigma, steps=steps_above, samples=samples, seed=seed + 100 + k)(model, x, y)
        answer = judge(x_adv, n_predict_above, 100 + k)
        if answer is not None and answer != cert.label:
            attacked = float((x_adv - x).norm())
            break
        eps, k = eps * factor, k + 1
    out["attacked_radius"] = attacked
    return out


def check_summary(table: pd.DataFrame, alpha: float = 0.001) -> dict:
    """Counts of a :func:`check_certificates` table: windows, checked, abstained, flips below the radius (and the
    number the certificates' error rate allows in expectation, ``alpha * checked``), windows an attack above the
    radius flipped, and the median and range of the gap and of the certified and attacked SNR [dB]."""
    checked = table[table["status"] == "checked"]
    flipped_above = checked[np.isfinite(checked["attacked_radius"].astype(float))] if len(checked) else checked
    return {
        "windows": int(len(table)), "checked": int(len(checked)), "abstain": int((table["status"] == "abstain").sum()),
        "not_base_top1": int((table["status"] == "not the base top-1").sum()),
        "flips_below": int(checked["flip_below"].sum()) if len(checked) else 0,
        "flips_allowed_expected": float(alpha * len(checked)),
        "abstain_below": int(checked["abstain_below"].sum()) if len(checked) else 0,
        "flipped_above": int(len(flipped_above)),
        "gap_median": float(flipped_above["gap"].median()) if len(flipped_above) else float("nan"),
        "gap_min": float(flipped_above["gap"].min()) if len(flipped_above) else float("nan"),
        "gap_max": float(flipped_above["gap"].max()) if len(flipped_above) else float("nan"),
        "certified_snr_db_median": float(checked["snr_db"].median()) if len(checked) else float("nan"),
        "attacked_snr_db_median": float(flipped_above["attacked_snr_db"].median()) if len(flipped_above) else float("nan"),
    }


def check_markdown(table: pd.DataFrame, *, alpha: float = 0.001) -> str:
    """The docs/ table of :func:`check_summary`."""
    s = check_summary(table, alpha)
    fmt = lambda v, spec: "n/a" if not np.isfinite(v) else format(v, spec)  # noqa: E731
    gap = (f"{s['gap_median']:.0f}x ({s['gap_min']:.0f}-{s['gap_max']:.0f}x)" if np.isfinite(s["gap_median"]) else "n/a")
    return "\n".join([
        "| windows | certified and checked | flips below 0.95 R (allowed by alpha) | abstentions after an attack below R | "
        "flipped above R | gap attacked/certified radius: median (range) | certified SNR, median | attacked SNR, median |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {s['windows']} | {s['checked']} | {s['flips_below']} ({s['flips_allowed_expected']:.2f}) | {s['abstain_below']} | "
        f"{s['flipped_above']} | {gap} | "
        f"{fmt(s['certified_snr_db_median'], '.1f')} dB | {fmt(s['attacked_snr_db_median'], '.1f')} dB |",
    ])
