"""Classification and perceptibility metrics.

Classification metrics follow BirdSet (Rauch et al. 2024): cmAP is the mean
over classes of the average precision (scikit-learn's ``average_precision_score``),
macro ROC-AUC likewise; classes with no positive (or no negative) example in
the evaluated set are left out of the mean and counted in the result.
Robustness scores PRS, DRS and TARS follow Heinrich et al. 2023; perceptibility
is measured as SNR [dB] and dB_x (Carlini & Wagner 2018).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = [
    "cmap", "macro_roc_auc", "top1_accuracy", "classification_metrics", "snr_db", "linf", "l2", "db_x", "eps_for_snr",
    "prs", "drs", "tars", "attack_success_rate", "bootstrap_p", "hierarchical_difference",
]


def _check(scores: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.shape != targets.shape or scores.ndim != 2:
        raise ParameterError(f"scores and targets must both be (n, n_classes), got {scores.shape} and {targets.shape}")
    if not np.isfinite(scores).all():
        raise ParameterError("scores contain NaN or inf")
    return scores, (targets > 0.5).astype(np.int64)


def cmap(scores: np.ndarray, targets: np.ndarray) -> float:
    """Class-wise mean average precision (cmAP).

    Parameters
    ----------
    scores : np.ndarray [shape=(n, n_classes)]
    targets : np.ndarray [shape=(n, n_classes)], multi-hot {0, 1}

    Returns
    -------
    float in [0, 1], NaN if no class has a positive.
    """
    scores, targets = _check(scores, targets)
    keep = targets.sum(0) > 0
    if not keep.any():
        return float("nan")
    from sklearn.metrics import average_precision_score  # loaded on first use: scikit-learn takes 1-4 s to import

    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(keep)]))


def macro_roc_auc(scores: np.ndarray, targets: np.ndarray) -> float:
    """Mean over classes of ROC-AUC (classes with both positives and negatives)."""
    scores, targets = _check(scores, targets)
    pos = targets.sum(0)
    keep = (pos > 0) & (pos < targets.shape[0])
    if not keep.any():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(np.mean([roc_auc_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(keep)]))


def top1_accuracy(scores: np.ndarray, focal: np.ndarray) -> float:
    """Fraction of rows whose highest-scoring class is one of the focal labels.

    Parameters
    ----------
    scores : np.ndarray [shape=(n, n_classes)]
    focal : np.ndarray [shape=(n, n_classes)], multi-hot focal (primary) labels
    """
    scores, focal = _check(scores, focal)
    if scores.shape[0] == 0:
        return float("nan")
    return float(focal[np.arange(scores.shape[0]), scores.argmax(1)].mean())


def classification_metrics(scores: np.ndarray, targets: np.ndarray, focal: np.ndarray | None = None) -> dict:
    """cmAP, macro ROC-AUC and top-1 accuracy in one dict (keys ``cmap``, ``roc_auc``, ``top1``, ``n``)."""
    out = {"cmap": cmap(scores, targets), "roc_auc": macro_roc_auc(scores, targets), "n": int(np.shape(scores)[0])}
    out["top1"] = top1_accuracy(scores, targets if focal is None else focal)
    return out


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float32))


def snr_db(clean, perturbed) -> torch.Tensor:
    """Signal-to-noise ratio of a perturbation [dB].

    ``SNR = 10 log10(sum(x^2) / sum((x' - x)^2))`` per clip.

    Parameters
    ----------
    clean, perturbed : array or tensor [shape=(batch, n_samples) or (n_samples,)]

    Returns
    -------
    torch.Tensor [shape=(batch,) or ()]
        ``inf`` for an unchanged clip, ``-inf`` for a silent clean clip.
    """
    x, xp = _as_tensor(clean).double(), _as_tensor(perturbed).double()
    if x.shape != xp.shape:
        raise ParameterError(f"clean and perturbed shapes differ: {tuple(x.shape)} vs {tuple(xp.shape)}")
    sig = x.square().sum(-1)
    noise = (xp - x).square().sum(-1)
    return (10 * torch.log10(sig) - 10 * torch.log10(noise)).float()


def linf(clean, perturbed) -> torch.Tensor:
    """L-infinity norm of the perturbation per clip [full-scale amplitude]."""
    return (_as_tensor(perturbed) - _as_tensor(clean)).abs().amax(-1)


def l2(clean, perturbed) -> torch.Tensor:
    """L2 norm of the perturbation per clip [full-scale amplitude]."""
    return (_as_tensor(perturbed).double() - _as_tensor(clean).double()).norm(dim=-1).float()


def db_x(clean, perturbed) -> torch.Tensor:
    """Relative loudness of the perturbation's peak [dB] (Carlini & Wagner 2018, audio).

    ``dB_x(delta) = 20 log10(max|delta|) - 20 log10(max|x|)`` for ``clean`` x and ``perturbed`` x + delta, arrays or
    tensors of shape (batch, n_samples) or (n_samples,); returns a float tensor of shape (batch,) or (), -inf for an
    unchanged clip.
    """
    x, xp = _as_tensor(clean).double(), _as_tensor(perturbed).double()
    if x.shape != xp.shape:
        raise ParameterError(f"clean and perturbed shapes differ: {tuple(x.shape)} vs {tuple(xp.shape)}")
    return (20 * torch.log10((xp - x).abs().amax(-1)) - 20 * torch.log10(x.abs().amax(-1))).float()


def eps_for_snr(clean, target_snr_db: float, *, norm: str = "linf", n_samples=None):
    """Budget ``eps`` whose perturbations have an SNR of at least ``target_snr_db``.

    L2: ``||delta||_2 <= eps = ||x||_2 10^(-SNR/20)`` gives SNR >= target exactly.
    L-inf: ``eps = rms(x) 10^(-SNR/20)``; a perturbation of peak eps has power at
    most eps^2, so SNR >= target, with equality for a full sign pattern (which PGD
    and FGSM produce).

    Parameters
    ----------
    clean : array or tensor [shape=(n_samples,) or (batch, n_samples)], full-scale amplitude
    target_snr_db : float [dB]
    norm : {"linf", "l2"}
    n_samples : tensor [shape=(batch,)], optional
        Samples counted in the RMS (e.g. excluding zero padding); default all.

    Returns
    -------
    float for a 1-D array input, else torch.Tensor [shape=(batch,)] [full-scale amplitude]

    Raises
    ------
    ParameterError
        Unknown norm or a non-finite target.
    """
    if norm not in ("linf", "l2"):
        raise ParameterError(f"norm must be 'linf' or 'l2', got {norm!r}")
    if not math.isfinite(target_snr_db):
        raise ParameterError(f"target SNR must be finite, got {target_snr_db}")
    is_tensor = isinstance(clean, torch.Tensor)
    x = _as_tensor(clean).double()
    energy = x.square().sum(-1)
    if norm == "linf":
        n = torch.as_tensor(x.shape[-1] if n_samples is None else n_samples, dtype=torch.float64, device=x.device)
        energy = energy / n.clamp_min(1)
    eps = energy.sqrt() * 10 ** (-target_snr_db / 20)
    if not is_tensor and x.ndim == 1:
        return float(eps)
    return eps.to(clean.dtype if is_tensor else torch.float32)


def prs(loss_clean, loss_adv) -> np.ndarray:
    """Prediction robustness score per clip (Heinrich et al. 2023, Eq. for PRS).

    ``PRS = min(1, exp(1 - L(f(x'), y) / (L(f(x), y) + 1e-10)))``: 1 while the attacked
    loss against the ground truth ``y`` is at most the clean loss, falling towards 0
    as the attacked loss grows.
    From "Targeted adversarial attacks on wind power forecasts" (Machine Learning,
    2023; reference code FraunhoferIEE/taaowpf, ``robustness_scores.py``). A clean
    loss of 0 makes any increase give PRS ~ 0.

    Parameters
    ----------
    loss_clean, loss_adv : array [shape=(...)], losses >= 0

    Returns
    -------
    np.ndarray [shape=(...)], values in [0, 1]; NaN where an input is NaN.
    """
    lc, la = np.asarray(loss_clean, dtype=np.float64), np.asarray(loss_adv, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.minimum(1.0, np.exp(1.0 - la / (lc + 1e-10)))


def drs(loss_clean_target, loss_adv_target) -> np.ndarray:
    """Deformation robustness score per clip (Heinrich et al. 2023, Eq. for DRS).

    ``DRS = min(1, exp(1 - L(f(x), t) / (L(f(x'), t) + 1e-10)))`` for the attacker's
    target ``t``: 1 while the attack has not brought the output closer to ``t``,
    falling towards 0 as it reaches ``t``. Untargeted attacks have no ``t``: pass
    NaN and get NaN.

    Parameters
    ----------
    loss_clean_target, loss_adv_target : array [shape=(...)], distances to the target >= 0

    Returns
    -------
    np.ndarray [shape=(...)], values in [0, 1] or NaN.
    """
    lc, la = np.asarray(loss_clean_target, dtype=np.float64), np.asarray(loss_adv_target, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.minimum(1.0, np.exp(1.0 - lc / (la + 1e-10)))


def tars(prs_values, drs_values, beta: float = 1.0) -> np.ndarray:
    """Total adversarial robustness score (Heinrich et al. 2023): F-beta mean of PRS and DRS.

    ``TARS = (1 + beta^2) PRS DRS / (beta^2 PRS + DRS)``, 0 where both are 0, NaN
    where DRS is NaN (no target). Average it over clips for a model-level score.

    Parameters
    ----------
    prs_values, drs_values : array [shape=(...)], values in [0, 1]
    beta : float > 0
        Weight of DRS relative to PRS; 1 in the reference code.

    Raises
    ------
    ParameterError
        ``beta <= 0``.
    """
    if not beta > 0:
        raise ParameterError(f"beta must be > 0, got {beta}")
    p, d = np.asarray(prs_values, dtype=np.float64), np.asarray(drs_values, dtype=np.float64)
    den = beta**2 * p + d
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (1 + beta**2) * p * d / den
    return np.where(den == 0, 0.0, out)


def attack_success_rate(success) -> float:
    """Fraction of clips where the attack succeeded (predicted label set changed, or target reached)."""
    s = np.asarray(success, dtype=bool)
    return float(s.mean()) if s.size else float("nan")


def set_changed(clean_scores: np.ndarray, adv_scores: np.ndarray, threshold: float) -> np.ndarray:
    """Whether the predicted species set (scores >= ``threshold``) differs between clean and attacked clips.

    A clip with no class above the cut-off predicts its top-1 class (as
    :func:`core.attacks.base.predicted_sets`), so the set is never empty.

    Parameters
    ----------
    clean_scores, adv_scores : np.ndarray [shape=(batch, n_classes)]
    threshold : float in (0, 1)

    Returns
    -------
    np.ndarray [shape=(batch,)], bool
    """
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold must be in (0, 1), got {threshold}")

    def sets(s):
        s = np.asarray(s, dtype=np.float64)
        pred = s >= threshold
        pred[np.arange(len(s)), s.argmax(1)] |= ~pred.any(1)
        return pred

    return (sets(clean_scores) != sets(adv_scores)).any(1)


def metrics_from_scores(scores: np.ndarray, windows, class_names) -> dict:
    """Window-level and recording-level (max over windows) metrics of a model's scores.

    Parameters
    ----------
    scores : np.ndarray [shape=(n_windows, n_classes), dtype=float32]
        Sigmoid scores in [0, 1], one row per window of ``windows``.
    windows : core.io.data.WindowSet
        The windows scored (targets, recording index, recordings with their focal labels).
    class_names : sequence of str [length=n_classes]

    Returns
    -------
    dict
        ``{"window": ..., "recording": ...}``, each :func:`classification_metrics` (cmAP, ROC-AUC, top-1); a
        recording's score per class is the max over its windows, its top-1 is judged against its focal species.
    """
    focal_rec = focal_targets(windows, class_names)
    per_window = classification_metrics(scores, windows.targets, focal_rec[windows.recording_index])
    rec_scores = np.zeros((len(windows.recordings), scores.shape[1]), np.float32)
    np.maximum.at(rec_scores, windows.recording_index, scores)
    per_rec = classification_metrics(rec_scores, windows.recording_targets(), focal_rec)
    return {"window": per_window, "recording": per_rec}


def focal_targets(windows, class_names) -> np.ndarray:
    """Focal-species targets per recording: ``(n_recordings, n_classes)`` float32, 1 where the class is a focal label.

    Parameters
    ----------
    windows : core.io.data.WindowSet
    class_names : sequence of str
    """
    focal = np.zeros((len(windows.recordings), len(class_names)), np.float32)
    for i, r in enumerate(windows.recordings):
        for lab in r.labels:
            if lab in class_names:
                focal[i, list(class_names).index(lab)] = 1
    return focal


def bootstrap_p(boots) -> float:
    """Two-sided bootstrap p-value of "the effect is 0": ``min(1, 2 min(P(boot <= 0), P(boot >= 0)))``.

    Parameters
    ----------
    boots : array-like [shape=(n_boot,)]
        Resampled effects; non-finite ones are left out.

    Returns
    -------
    float in [0, 1], NaN without a finite resample. Its resolution is ``1 / n_boot``: 0 means no resample
    fell on the other side of 0.

    Examples
    --------
    >>> bootstrap_p([1.0, 2.0, 3.0, -1.0])
    0.5
    """
    b = np.asarray(boots, dtype=float)
    b = b[np.isfinite(b)]
    if not len(b):
        return float("nan")
    return float(min(1.0, 2 * min(np.mean(b <= 0), np.mean(b >= 0))))


def format_p(p: float, n_boot: int | None = None) -> str:
    """A bootstrap p-value for a table: ``"0.042"``; ``"< 0.001"`` where no resample fell on the other side of 0
    (:func:`bootstrap_p` is then 0, and its resolution is ``2 / n_boot``); ``""`` for NaN.

    Examples
    --------
    >>> format_p(0.0421), format_p(0.0, 2000), format_p(float("nan"))
    ('0.042', '< 0.001', '')
    """
    if not np.isfinite(p):
        return ""
    if p == 0 and n_boot:
        return f"< {2 / n_boot:.2g}"
    return f"{p:.3f}"


def holm(p) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979, Scand. J. Statist. 6:65-70), monotone in the raw p.

    The i-th smallest of m p-values becomes ``max over j <= i of min(1, (m - j + 1) p_(j))``; rejecting where
    the adjusted p is below alpha controls the family-wise error rate at alpha.

    Parameters
    ----------
    p : array-like [shape=(m,)]
        Raw p-values; NaN ones (untested) stay NaN and do not count towards m.

    Returns
    -------
    np.ndarray [shape=(m,)]

    Raises
    ------
    ParameterError
        A p-value outside [0, 1].

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, 0.005]).round(3).tolist()
    [0.03, 0.06, 0.06, 0.02]
    """
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if np.any((p[ok] < 0) | (p[ok] > 1)):
        raise ParameterError(f"p-values must lie in [0, 1], got {p[ok][(p[ok] < 0) | (p[ok] > 1)].tolist()}")
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    out[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return out


def holm_cells(p, n_boot=None) -> list[str]:
    """Holm-adjusted bootstrap p-values as table cells (:func:`holm`, :func:`format_p`).

    A bootstrap p of 0 only says p < 2 / n_boot, so it enters the adjustment as that bound and its cell reads
    ``"< ..."`` (e.g. ``"< 0.016"`` for the smallest of 16 rows at 2,000 resamples), never ``"< 0.001"``.

    Parameters
    ----------
    p : array-like [shape=(m,)]
        Raw bootstrap p-values; NaN ones are left out of the family and give ``""``.
    n_boot : int or sequence of int, optional
        Resamples behind each p (one for all, or one per row).

    Examples
    --------
    >>> holm_cells([0.0, 0.03, 0.5], 2000)
    ['< 0.003', '0.060', '0.500']
    """
    p = np.asarray(p, dtype=float)
    res = np.broadcast_to(np.asarray([np.nan] if n_boot is None else n_boot, dtype=float), p.shape)
    zero = (p == 0) & np.isfinite(res)
    bounded = np.where(zero, 2.0 / np.where(np.isfinite(res), res, 1.0), p)
    adjusted = holm(bounded) if len(p) else np.array([])
    return ["" if not np.isfinite(a) else (f"< {a:.2g}" if z else f"{a:.3f}") for a, z in zip(adjusted, zero)]


def hierarchical_difference(windows: pd.DataFrame, arm: str, control: str, value: str, *, n_boot: int = 2000,
                            seed: int = 0, window: str | None = None) -> dict:
    """Difference of an arm's mean from its control's, with a two-level bootstrap over recordings and seeds.

    The hierarchical bootstrap (Saravanan, Berman & Sober 2020, "Application of the hierarchical bootstrap to
    multi-level data in neuroscience", Neurons, Behavior, Data analysis, and Theory 3(5)): each resample draws the
    test recordings with replacement (all windows of a drawn recording go in together; the same recordings for both
    arms, which are measured on the same windows), then, within each arm, its training seeds with replacement, and
    recomputes ``mean(arm) - mean(control)`` over the drawn seeds' values on the drawn recordings' windows. So the
    interval holds both sources of chance: which recordings the test split holds and which seeds trained the models.

    Parameters
    ----------
    windows : pandas.DataFrame
        One row per (model, window): ``arm``, ``train_seed``, ``recording`` and ``value`` (e.g. 1 where an attack
        changed the top-1, else 0); with a ``model`` column, models (not seed numbers) are the units resampled.
    arm, control : str
        Values of ``arm``.
    value : str
        The column to average.
    n_boot : int >= 100
    seed : int
    window : str, optional
        A column naming each window: the models' values are matched by it (and every model must have every window,
        with no NaN value); without it, by their order within each model.

    Returns
    -------
    dict
        ``effect`` (the difference on all recordings and seeds), ``ci_low``, ``ci_high`` (2.5 and 97.5 percentiles),
        ``p_two_sided`` (:func:`bootstrap_p`), ``n_recordings``, ``n_seeds_arm``, ``n_seeds_control``, ``n_boot``.

    Raises
    ------
    ParameterError
        A missing arm or column, ``n_boot < 100``, or arms measured on different windows.
    """
    for col in ("arm", "train_seed", "recording", value):
        if col not in windows.columns:
            raise ParameterError(f"windows needs a {col!r} column")
    if int(n_boot) < 100:
        raise ParameterError(f"n_boot must be >= 100, got {n_boot}")
    cubes = {}
    for name in (arm, control):
        part = windows[windows["arm"] == name]
        if part.empty:
            raise ParameterError(f"no windows of arm {name!r}")
        # (model, window) values, windows in the same order for every model; a model is one seed of the arm (keyed by
        # ``model`` when given, so that cards without a seed are not dropped as NaN keys)
        level = "model" if "model" in part.columns else "train_seed"
        if part[level].isna().any():
            raise ParameterError(f"arm {name!r} has windows without a {level}")
        if window is not None:  # windows matched by name: every model must hold the same ones
            pivot = part.pivot(index=level, columns=window, values=value)
            if pivot.isna().to_numpy().any():
                raise ParameterError(f"arm {name!r}: its models were not all measured on the same windows (or a value is NaN)")
            recs = part.drop_duplicates(window).set_index(window).loc[pivot.columns, "recording"].to_numpy()
        else:  # windows matched by their order within each model
            pivot = part.assign(_w=part.groupby(level).cumcount()).pivot(index=level, columns="_w", values=value)
            recs = part[part[level] == pivot.index[0]]["recording"].to_numpy()
        cubes[name] = (pivot.to_numpy(dtype=float), recs, list(pivot.columns))
    if window is not None and cubes[arm][2] != cubes[control][2]:
        raise ParameterError(f"arms {arm!r} and {control!r} were measured on different windows")
    if len(cubes[arm][1]) != len(cubes[control][1]) or not np.array_equal(cubes[arm][1], cubes[control][1]):
        raise ParameterError(f"arms {arm!r} and {control!r} were measured on different windows")
    recs = cubes[arm][1]
    groups = [np.flatnonzero(recs == r) for r in dict.fromkeys(recs)]
    rng = np.random.default_rng(seed)
    a, c = cubes[arm][0], cubes[control][0]

    def mean(cube, seeds, cols):
        return float(cube[np.ix_(seeds, cols)].mean())

    boots = np.empty(int(n_boot))
    for b in range(int(n_boot)):
        cols = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
        boots[b] = (mean(a, rng.integers(len(a), size=len(a)), cols) - mean(c, rng.integers(len(c), size=len(c)), cols))
    low, high = np.percentile(boots, [2.5, 97.5])
    return {"effect": float(a.mean() - c.mean()), "ci_low": float(low), "ci_high": float(high), "p_two_sided": bootstrap_p(boots),
            "n_recordings": len(groups), "n_seeds_arm": len(a), "n_seeds_control": len(c), "n_boot": int(n_boot)}
