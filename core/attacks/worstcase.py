"""Worst case over attacks: a transfer attack and stronger white-box attacks after PGD, AutoAttack's APGD legs last.

One PGD run is a lower bound on what an attacker achieves: too few steps, an
unlucky start, a loss whose gradient says little about the decision, or masked
gradients (Athalye et al. 2018) all make a model look more robust than it is.
AutoAttack (Croce & Hein 2020, ICML) therefore reports, per input, the worst case over a
set of diverse attacks, running each further attack only on the inputs that
survived the previous ones. :func:`worst_case_windows` (behind :func:`core.api.worst_case`) and
:func:`worst_case_tables` (the comparison's ``--strong`` rows) do the same, in :data:`ATTACK_ORDER`:

1. ``pgd``: PGD-k (multi-label BCE against the labels);
2. ``transfer``: PGD-k made on another model (the *source*, see
   :func:`transfer_sources`) of the same windows and replayed on the target (a black-box
   attack that cannot be fooled by the target's gradients);
3. ``apgd``: APGD (:class:`~core.attacks.APGD`) on the Carlini-Wagner margin loss;
4. ``pgd-restarts``: PGD with more steps and random restarts (BCE);
5. ``apgd-ce``: APGD-CE, APGD on the softmax cross-entropy of the clean top-1
   (:class:`~core.attacks.logit_objectives.OutputCrossEntropy`), ``apgd_steps`` iterations;
6. ``apgd-dlr``: APGD-DLR, on the DLR loss (Croce & Hein 2020, Eq. 5);
7. ``apgd-t1`` ... ``apgd-t<n_targets>``: APGD-T, on the targeted DLR loss (Eq. 6) towards the class the
   clean window ranks 2nd, 3rd, ... (AutoAttack's targets; 3 by default, the issue's "top-3 other classes").

Legs 1-4 are the worst case before issue 24 (:data:`BASE_LEGS`); 5-7 are AutoAttack's APGD legs
(:data:`APGD_LEGS`), each with the paper's step-size schedule and momentum (:mod:`core.attacks.apgd`) and
``apgd_restarts`` random starts. Running them last keeps the first legs' attribution and lets a run say what
they add. Success is the same for all and counted per window: the top-1 species differs from the clean top-1
(threshold-free); a window is broken if any leg broke it. Its scores and distances are those of the first
leg that broke it (of the last leg run when none did), and ``worst_by`` / ``attack`` names that leg.

A success rate is meaningful only from a right answer: :func:`true_top1` marks the windows whose clean
top-1 is one of their true labels, and :func:`success_over_true_top1` reports success over those only
(with how many windows it leaves and how many it excludes).

:func:`masking_check` flags a model whose transfer success exceeds its white-box
PGD success, or whose worst case exceeds PGD by at least 10 points: the classic
signs that the default attack underestimates the attacker.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from core import metrics
from core.io.journal import unit_name

__all__ = ["ATTACK_ORDER", "BASE_LEGS", "APGD_LEGS", "strong_attacks", "transfer_sources", "worst_case_tables", "worst_case_windows",
           "masking_check", "worst_case_label", "true_top1", "success_over_true_top1"]

#: The legs of the worst case before issue 24, in the order they are run.
BASE_LEGS = ("pgd", "transfer", "apgd", "pgd-restarts")
#: AutoAttack's APGD legs, run after :data:`BASE_LEGS` (``apgd-t<k>``: targeted DLR towards the clean rank k + 1).
APGD_LEGS = ("apgd-ce", "apgd-dlr", "apgd-t1", "apgd-t2", "apgd-t3")
#: Every leg of the worst case, in the order they are run (with 3 targets; see :func:`strong_attacks`).
ATTACK_ORDER = BASE_LEGS + APGD_LEGS
TOP1_CHANGED = "top-1 differs from the clean top-1"


def worst_case_label(steps: int, strong_steps: int, restarts: int, transfer: bool = True, *, apgd_steps: int = 0,
                     n_targets: int = 3) -> str:
    """Words for the worst case, e.g. ``"worst case over PGD-10, transfer PGD-10, APGD-20, PGD-20x2, APGD-CE-50, APGD-DLR-50,
    APGD-T-50 (3 targets)"``; ``apgd_steps=0`` (the default, for results made before issue 24) leaves out the APGD legs."""
    parts = [f"PGD-{steps}"] + ([f"transfer PGD-{steps}"] if transfer else []) + [f"APGD-{strong_steps}", f"PGD-{strong_steps}x{restarts}"]
    if apgd_steps:
        parts += [f"APGD-CE-{apgd_steps}", f"APGD-DLR-{apgd_steps}"] + ([f"APGD-T-{apgd_steps} ({n_targets} targets)"] if n_targets else [])
    return "worst case over " + ", ".join(parts)


def strong_attacks(strong_steps: int, restarts: int, seed: int, *, apgd_steps: int = 50, apgd_restarts: int = 1,
                   n_targets: int = 3, n_classes: int | None = None) -> tuple:
    """The white-box attacks run after PGD and the transfer attack, in order, as ``(name, attack, with_labels)``.

    APGD (Croce & Hein 2020) on the margin loss, which works on the clean top-1 (no labels), then PGD with
    ``restarts`` random starts on the BCE against the true labels (``with_labels``); both use ``seed + 1`` so
    their starts differ from the first PGD's. Then, unless ``apgd_steps`` is 0, AutoAttack's legs on the clean
    top-1 (:data:`APGD_LEGS`): APGD-CE, APGD-DLR and APGD-T towards each of the ``n_targets`` classes ranked
    next on the clean window, ``apgd_steps`` iterations and ``apgd_restarts`` random starts each, seeds
    ``seed + 2``, ``seed + 3``, ... so that every leg starts elsewhere. The DLR legs need >= 3 classes and the
    targeted ones >= 4 (:mod:`core.attacks.losses`): with fewer ``n_classes`` they are left out, and at most
    ``n_classes - 1`` targets are used. Each attack's eps is set per row by
    :meth:`~core.attacks.base.Attack.perturb`.

    Parameters
    ----------
    strong_steps, restarts, seed : int
    apgd_steps : int >= 0
        Iterations of each APGD leg of AutoAttack (0: leave them out, the worst case before issue 24).
    apgd_restarts : int >= 1
    n_targets : int >= 0
        Targets of APGD-T.
    n_classes : int, optional
        Classes of the attacked model (default: as many as every leg needs).

    Returns
    -------
    tuple of (str, Attack, bool)
    """
    from core.attacks import APGD, PGD, OutputMargin, OutputUntargeted
    from core.attacks.logit_objectives import OutputCrossEntropy, OutputDLR, OutputTargetedDLR

    legs = [("apgd", APGD(eps=0.0, steps=strong_steps, seed=seed + 1, objective=OutputMargin()), False),
            ("pgd-restarts", PGD(eps=0.0, steps=strong_steps, restarts=restarts, seed=seed + 1, objective=OutputUntargeted()), True)]
    if not apgd_steps:
        return tuple(legs)
    n = 10**6 if n_classes is None else int(n_classes)
    objectives = [("apgd-ce", OutputCrossEntropy())] + ([("apgd-dlr", OutputDLR())] if n >= 3 else [])
    if n >= 4:
        objectives += [(f"apgd-t{k}", OutputTargetedDLR(k)) for k in range(1, min(n_targets, n - 1) + 1)]
    for j, (name, objective) in enumerate(objectives):
        legs.append((name, APGD(eps=0.0, steps=apgd_steps, restarts=apgd_restarts, seed=seed + 2 + j, objective=objective,
                                stop_on_success=True), False))
    return tuple(legs)


def true_top1(clean_scores: np.ndarray, labels: np.ndarray | None) -> np.ndarray:
    """Per window, whether the clean top-1 class is one of its true labels.

    Parameters
    ----------
    clean_scores : np.ndarray [shape=(n_windows, n_classes)]
        Clean scores or logits (only their argmax is used).
    labels : np.ndarray [shape=(n_windows, n_classes)] or None
        Multi-hot true labels (> 0 where present). None: every window counts (the clean prediction is the reference).

    Returns
    -------
    np.ndarray [shape=(n_windows,), dtype=bool]
    """
    top = np.asarray(clean_scores).argmax(-1)
    if labels is None:
        return np.ones(len(top), bool)
    return np.asarray(labels)[np.arange(len(top)), top] > 0


def success_over_true_top1(success: np.ndarray, is_true: np.ndarray) -> dict:
    """Attack success counted only over windows whose clean top-1 is a true label.

    A "success" from a wrong clean answer would count a change of an already wrong decision; those windows
    are excluded and counted.

    Parameters
    ----------
    success : np.ndarray [shape=(n_windows,), dtype=bool]
    is_true : np.ndarray [shape=(n_windows,), dtype=bool]
        :func:`true_top1`.

    Returns
    -------
    dict
        ``success_rate`` (NaN when no window counts), ``n_success``, ``n_counted`` (windows with a true clean
        top-1), ``n_excluded`` (the others), ``n_windows``.
    """
    success, is_true = np.asarray(success, bool), np.asarray(is_true, bool)
    n = int(is_true.sum())
    k = int((success & is_true).sum())
    return {"success_rate": k / n if n else float("nan"), "n_success": k, "n_counted": n,
            "n_excluded": int(len(is_true) - n), "n_windows": int(len(is_true))}


def worst_case_windows(model, waveforms, eps, *, labels=None, masks=None, source=None, steps: int = 10,
                       strong_steps: int = 50, restarts: int = 2, apgd_steps: int = 50, apgd_restarts: int = 1,
                       n_targets: int = 3, seed: int = 0, chunk: int = 8, only_true_top1: bool = False,
                       legs: tuple[str, ...] | None = None) -> dict:
    """Per-window worst case of one model: the legs of :data:`ATTACK_ORDER`, each on the windows still unbroken.

    PGD-``steps`` (BCE), the transfer attack (PGD-``steps`` made on ``source`` and replayed on ``model``; skipped
    without a source), then :func:`strong_attacks` (APGD-``strong_steps`` on the margin, PGD-``strong_steps`` x
    ``restarts``, APGD-CE, APGD-DLR and APGD-T at ``apgd_steps``). Success is threshold-free and per window: the
    top-1 species differs from the clean top-1 after some leg. A window keeps the result of the first leg that
    broke it, else the last leg's (as the worst-case rows of the tables).

    Parameters
    ----------
    model : BirdClassifier
    waveforms : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
        Windows at the model's rate, full-scale amplitude in [-1, 1].
    eps : float or np.ndarray [shape=(n_windows,)] [full-scale amplitude]
        L-inf budget of every attack.
    labels : np.ndarray [shape=(n_windows, n_classes)], optional
        Multi-hot true labels: targets of the BCE attacks and the reference of ``true_top1``; default each
        window's clean prediction (then every window counts as a true top-1).
    masks : np.ndarray [shape=(n_windows, window_samples)], optional
        1 where samples may change (0 on zero padding); default all 1.
    source : BirdClassifier, optional
        Model of the transfer attack, with ``model``'s rate and window length.
    steps, strong_steps, restarts : int
        Steps of PGD and the transfer attack; steps of the margin APGD and the restarted PGD; restarts of the latter.
    apgd_steps, apgd_restarts, n_targets : int
        Iterations and random starts of each of AutoAttack's legs, and targets of APGD-T (``apgd_steps=0``: the
        worst case before issue 24, legs 1-4 only).
    seed, chunk : int
        Seed of the first PGD (the later legs use ``seed + 1``, ``seed + 2``, ...); windows attacked together.
    only_true_top1 : bool
        Attack only the windows whose clean top-1 is a true label (the others are reported but not attacked:
        ``success`` False, ``attack`` ""); saves time when only :func:`success_over_true_top1` is wanted.
    legs : tuple of str, optional
        Run only these legs (names of :data:`ATTACK_ORDER`), in their usual order; default all.

    Returns
    -------
    dict
        ``adversarial`` (n_windows, window_samples) float32, ``success`` (n_windows,) bool, ``attack``
        (n_windows,) str (the leg whose result each window keeps), ``clean_scores`` and ``scores``
        (n_windows, n_classes) sigmoid scores before and after, ``true_top1`` (n_windows,) bool
        (:func:`true_top1`), ``legs`` (the legs run, in order) and ``summary``
        (:func:`success_over_true_top1` of the windows).

    Raises
    ------
    ParameterError
        An unknown name in ``legs``.
    """
    from core.attacks import PGD, OutputUntargeted
    from core.errors import ParameterError

    x = np.asarray(waveforms, dtype=np.float32)
    n = len(x)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (n,)).copy()
    m = np.ones_like(x) if masks is None else np.asarray(masks, dtype=np.float32)
    y_all = None if labels is None else np.asarray(labels, dtype=np.float32)
    device = next(model.parameters()).device
    if legs is not None and not set(legs) <= set(ATTACK_ORDER):
        raise ParameterError(f"legs must be names of {ATTACK_ORDER}, got {tuple(legs)}")

    def scores_of(xs):
        with torch.no_grad():
            return np.concatenate([torch.sigmoid(model(torch.as_tensor(xs[i : i + chunk], device=device))).float().cpu().numpy()
                                   for i in range(0, len(xs), chunk)])

    clean = scores_of(x)
    top = clean.argmax(-1)
    is_true = true_top1(clean, y_all)
    first = PGD(eps=0.0, steps=steps, seed=seed, objective=OutputUntargeted())
    runs = [("pgd", first, True, model)] + ([("transfer", first, True, source)] if source is not None else [])
    runs += [(name, attack, with_labels, model) for name, attack, with_labels in
             strong_attacks(strong_steps, restarts, seed, apgd_steps=apgd_steps, apgd_restarts=apgd_restarts, n_targets=n_targets,
                            n_classes=clean.shape[1])]
    if legs is not None:
        runs = [r for r in runs if r[0] in legs]
    adv, scores = x.copy(), clean.copy()
    by, broken = np.full(n, "", dtype=object), np.zeros(n, bool)
    skip = ~is_true if only_true_top1 else np.zeros(n, bool)
    for k, (name, attack, with_labels, on) in enumerate(runs):
        todo = np.flatnonzero(~broken & ~skip)
        if not len(todo):
            break
        y = None if y_all is None or not with_labels else y_all[todo]
        xa, sc = _rows_attack(attack, on, x[todo], y, m[todo], eps[todo], chunk=chunk)
        if on is not model:
            sc = scores_of(xa)
        succ = sc.argmax(-1) != top[todo]
        take = succ | (k == len(runs) - 1)  # the last leg's result stands for windows nobody broke
        adv[todo[take]], scores[todo[take]], by[todo[take]] = xa[take], sc[take], name
        broken[todo[succ]] = True
    return {"adversarial": adv, "success": broken, "attack": by, "clean_scores": clean, "scores": scores, "true_top1": is_true,
            "legs": tuple(r[0] for r in runs), "summary": success_over_true_top1(broken, is_true)}


def transfer_sources(names: list[str], preferred: tuple[str, ...] = ("baseline", "protopnet")) -> dict[str, str]:
    """Source model of the transfer attack for every target: the first of ``preferred`` that is not the target,
    else the first other model of ``names``.

    Parameters
    ----------
    names : list of str
        Models that share windows (sample rate and length).
    preferred : tuple of str
        Ordinarily trained models to make transfer attacks on.

    Returns
    -------
    dict target -> source; targets without a candidate source are left out.
    """
    out = {}
    for t in names:
        src = next((p for p in list(preferred) + list(names) if p in names and p != t), None)
        if src is not None:
            out[t] = src
    return out


def _bce(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(labels * np.log(p) + (1 - labels) * np.log(1 - p)).sum(-1)


def _rows_attack(attack, model, x, y, m, eps, *, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Run ``attack`` on rows with their own eps; returns (adversarial waveforms, sigmoid scores) as numpy."""
    advs, scores = [], []
    device = next(model.parameters()).device
    with attack.eval_mode(model):
        for i in range(0, len(x), chunk):
            xb = torch.as_tensor(x[i : i + chunk], device=device)
            yb = None if y is None else torch.as_tensor(y[i : i + chunk], device=device)
            mb = torch.as_tensor(m[i : i + chunk], device=device)
            eb = torch.as_tensor(eps[i : i + chunk], device=device, dtype=xb.dtype)
            state = attack.objective.prepare(model, xb, yb)
            xa = attack.perturb(model, xb, eb, state, mb, attack.start_noise(xb))
            with torch.no_grad():
                scores.append(torch.sigmoid(model(xa)).float().cpu().numpy())
            advs.append(xa.detach().cpu().numpy())
    return np.concatenate(advs), np.concatenate(scores)


def worst_case_tables(
    models: dict,
    clips,
    pgd_table: pd.DataFrame,
    epsilons,
    *,
    steps: int = 10,
    strong_steps: int = 50,
    restarts: int = 2,
    apgd_steps: int = 50,
    apgd_restarts: int = 1,
    n_targets: int = 3,
    seed: int = 0,
    clips_per_batch: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    units=None,
    unit_key: tuple = (),
) -> pd.DataFrame:
    """``transfer`` and ``worst-case`` rows for models that share the windows ``clips``.

    Parameters
    ----------
    models : dict name -> BirdClassifier
        Same sample rate and window length as ``clips``.
    clips : core.studies.sweep.ClipSet
        With labels.
    pgd_table : pandas.DataFrame
        The untargeted PGD-``steps`` sweep table of these models on ``clips``
        (:func:`core.studies.sweep.sweep_table` rows, ``attack == "pgd"``).
    epsilons : sequence of float [full-scale amplitude]
        The L-inf grid of ``pgd_table``.
    steps : int
        PGD steps of ``pgd_table`` (and of the transfer attack).
    strong_steps, restarts : int
        Steps of the margin APGD; steps and restarts of the restarted PGD.
    apgd_steps, apgd_restarts, n_targets : int
        AutoAttack's legs (APGD-CE, APGD-DLR, APGD-T; see :func:`strong_attacks`); ``apgd_steps=0`` leaves them out.
    seed : int
        Seed of the PGD table; the strong attacks use ``seed + 1``, ``seed + 2``, ... so their starts differ.
    clips_per_batch : int
    progress : callable, optional
        ``progress(stage, done, total)`` with stages ``transfer`` and ``strong``.
    cancel : callable, optional
        Polled between batches; :class:`InterruptedError` when it returns True.
    units : core.studies.compare_units.UnitStore, optional
        Where finished parts are kept so that an interrupted run resumes: the transfer attack of each source
        (arrays) and each model's rows (a table), named from ``unit_key`` and the model. A rerun with the same
        store computes only the missing parts and returns the same table. None: nothing kept.
    unit_key : tuple
        Prefix of the unit names (the comparison's window group).

    Returns
    -------
    pandas.DataFrame
        Rows in the layout of :func:`core.studies.sweep.sweep_table` (clean rows included,
        so curves start at eps 0) with ``attack`` ``transfer`` (only for models with a
        source, see :func:`transfer_sources`) and ``worst-case``, plus ``worst_by``
        (the attack that made each worst-case row), ``source`` (transfer source) and ``clean_top1_true``
        (the clean top-1 is a true label: :func:`true_top1`; success rates are meant over those rows).
    """
    from core.attacks import PGD, OutputUntargeted

    names = list(models)
    grid = np.asarray(sorted(float(e) for e in epsilons))
    n_eps, n = len(grid), len(clips)
    classes = list(next(iter(models.values())).config.class_names)
    score_cols = [f"score:{c}" for c in classes]
    label_cols = [f"label:{c}" for c in classes]
    clip_pos = {c: i for i, c in enumerate(clips.clip_ids)}

    def pgd_arrays(name):
        t = pgd_table[(pgd_table["model"] == name)]
        clean = t[t["budget_kind"] == "clean"].copy()
        clean_scores = np.zeros((n, len(classes)))
        clean_scores[[clip_pos[c] for c in clean["clip"]]] = clean[score_cols].to_numpy()
        adv = t[t["budget_kind"] != "clean"]
        e_idx = np.abs(np.log(adv["eps"].to_numpy()[:, None]) - np.log(grid[None])).argmin(1)
        c_idx = np.array([clip_pos[c] for c in adv["clip"]])
        scores = np.zeros((n_eps, n, len(classes)))
        scores[e_idx, c_idx] = adv[score_cols].to_numpy()
        dist = {k: np.zeros((n_eps, n)) for k in ("snr_db", "db_x", "linf", "l2")}
        for k in dist:
            dist[k][e_idx, c_idx] = adv[k].to_numpy()
        return clean, clean_scores, scores, dist

    base = {name: pgd_arrays(name) for name in names}
    labels = clips.labels.astype(np.float64)
    sources = transfer_sources(names)
    # every (eps, clip) pair as one row of per-row eps
    flat_eps = np.repeat(grid, n)
    flat_clip = np.tile(np.arange(n), n_eps)

    # 2. transfer: PGD on the source, replayed on the targets (all rows)
    transfer_scores = {t: np.zeros((n_eps, n, len(classes))) for t in sources}
    transfer_dist = {t: {k: np.zeros((n_eps, n)) for k in ("snr_db", "db_x", "linf", "l2")} for t in sources}
    by_source: dict[str, list[str]] = {}
    for t, s in sources.items():
        by_source.setdefault(s, []).append(t)
    from core.attacks.sweep import run_sweep
    from core.io.device import rows_per_pass

    batches = [np.arange(i, min(n, i + clips_per_batch)) for i in range(0, n, clips_per_batch)]
    total, done = len(batches) * len(by_source), 0

    def done_rows(name):
        return None if units is None else units.table(unit_name("worst-case", *unit_key, name))

    for s, targets in by_source.items():
        if all(done_rows(tg) is not None for tg in targets):  # every target's rows are kept: no transfer needed
            done += len(batches)
            continue
        kept = None if units is None else units.arrays(unit_name("transfer", *unit_key, s))
        if kept is not None:
            for i, tg in enumerate(targets):
                transfer_scores[tg] = kept[f"scores_{i}"]
                for k in transfer_dist[tg]:
                    transfer_dist[tg][k] = kept[f"{k}_{i}"]
            done += len(batches)
            continue
        src = models[s]
        device = next(src.parameters()).device
        for idx in batches:
            if cancel is not None and cancel():
                raise InterruptedError("comparison cancelled")
            x = torch.as_tensor(clips.waveforms[idx], device=device)
            res = run_sweep(PGD(eps=0.0, steps=steps, seed=seed, objective=OutputUntargeted()), src, x,
                            torch.as_tensor(clips.labels[idx], device=device), epsilons=grid,
                            masks=torch.as_tensor(clips.masks[idx], device=device), max_rows=rows_per_pass(src, x.shape[1]),
                            keep_waveforms=True)
            for t in targets:
                tm = models[t]
                with torch.no_grad():
                    for e in range(n_eps):
                        xa = torch.as_tensor(res.adversarial[e], device=next(tm.parameters()).device)
                        transfer_scores[t][e, idx] = torch.sigmoid(tm(xa)).float().cpu().numpy()
                for k in transfer_dist[t]:
                    transfer_dist[t][k][:, idx] = getattr(res, k)
            done += 1
            if progress:
                progress("transfer", done, total)
        if units is not None:
            units.put_arrays(unit_name("transfer", *unit_key, s),
                             **{f"scores_{i}": transfer_scores[tg] for i, tg in enumerate(targets)},
                             **{f"{k}_{i}": transfer_dist[tg][k] for i, tg in enumerate(targets) for k in transfer_dist[tg]})

    rows = []
    strong_total = [0]
    pending = {}
    for name in names:
        clean, clean_scores, pgd_scores, pgd_dist = base[name]
        top = clean_scores.argmax(-1)
        ok = {"pgd": pgd_scores.argmax(-1) != top[None]}
        chosen_scores, chosen_dist = pgd_scores.copy(), {k: v.copy() for k, v in pgd_dist.items()}
        by = np.full((n_eps, n), "pgd", dtype=object)
        if name in sources:
            ok["transfer"] = transfer_scores[name].argmax(-1) != top[None]
            take = ok["transfer"] & ~ok["pgd"]
            chosen_scores[take] = transfer_scores[name][take]
            for k in chosen_dist:
                chosen_dist[k][take] = transfer_dist[name][k][take]
            by[take] = "transfer"
        broken = np.zeros((n_eps, n), bool)
        for v in ok.values():
            broken |= v
        pending[name] = (clean, clean_scores, top, ok, chosen_scores, chosen_dist, by, broken)
        strong_total[0] += int((~broken).sum())

    strong_done = [0]
    for name in names:
        if cancel is not None and cancel():
            raise InterruptedError("comparison cancelled")
        kept_rows = done_rows(name)
        if kept_rows is not None:  # finished in an earlier, interrupted run
            rows.append(kept_rows)
            strong_done[0] += int((~pending[name][-1]).sum())
            continue
        clean, clean_scores, top, ok, chosen_scores, chosen_dist, by, broken = pending[name]
        model = models[name]
        legs = strong_attacks(strong_steps, restarts, seed, apgd_steps=apgd_steps, apgd_restarts=apgd_restarts, n_targets=n_targets,
                              n_classes=len(classes))
        for attack_name, attack, with_labels in legs:
            todo = np.flatnonzero(~broken.reshape(-1))
            if not len(todo):
                break
            if cancel is not None and cancel():
                raise InterruptedError("comparison cancelled")
            ci, ei = flat_clip[todo], np.searchsorted(grid, flat_eps[todo])
            y = labels[ci].astype(np.float32) if with_labels else None
            adv, sc = _rows_attack(attack, model, clips.waveforms[ci], y, clips.masks[ci], flat_eps[todo], chunk=clips_per_batch * 2)
            succ = sc.argmax(-1) != top[ci]
            last = attack_name == legs[-1][0]
            take = succ | last  # the last attack's result stands for rows nobody broke
            xc = torch.as_tensor(clips.waveforms[ci][take])
            xa = torch.as_tensor(adv[take])
            chosen_scores[ei[take], ci[take]] = sc[take]
            chosen_dist["snr_db"][ei[take], ci[take]] = metrics.snr_db(xc, xa).numpy()
            chosen_dist["db_x"][ei[take], ci[take]] = metrics.db_x(xc, xa).numpy()
            chosen_dist["linf"][ei[take], ci[take]] = metrics.linf(xc, xa).numpy()
            chosen_dist["l2"][ei[take], ci[take]] = metrics.l2(xc, xa).numpy()
            by[ei[take], ci[take]] = attack_name
            broken[ei[succ], ci[succ]] = True
            strong_done[0] += len(todo)
            if progress:
                progress("strong", min(strong_done[0], strong_total[0]), max(strong_total[0], 1))
        success = np.zeros((n_eps, n), bool)
        for v in ok.values():
            success |= v
        success |= broken
        clean_loss = _bce(clean_scores, labels)
        is_true = true_top1(clean_scores, labels)
        mine = []
        for attack_label, scores_arr, dist, succ_arr, by_arr, source in (
            [("transfer", transfer_scores[name], transfer_dist[name], ok["transfer"], None, sources[name])] if name in sources else []
        ) + [("worst-case", chosen_scores, chosen_dist, success, by, sources.get(name, ""))]:
            info = {"model": name, "attack": attack_label, "norm": "linf", "objective": "output-untargeted", "steps": steps,
                    "seed": seed, "success_definition": TOP1_CHANGED, "source": source}
            c = clean.copy()
            for k, v in info.items():
                c[k] = v
            c["worst_by"] = ""
            c["clean_top1_true"] = is_true[[clip_pos[k] for k in c["clip"]]]
            adv_loss = _bce(scores_arr.reshape(-1, len(classes)), np.tile(labels, (n_eps, 1)))
            a = pd.DataFrame({
                **info, "budget_kind": "eps", "budget": flat_eps, "clip": [clips.clip_ids[i] for i in flat_clip],
                "eps": flat_eps.astype(np.float32).astype(np.float64),  # as sweep tables store it (the attack's dtype)
                "success": succ_arr.reshape(-1), "objective_value": adv_loss,
                "prs": metrics.prs(np.tile(clean_loss, n_eps), adv_loss), "drs": np.nan, "tars": np.nan,
                **{k: dist[k].reshape(-1) for k in ("snr_db", "db_x", "linf", "l2")},
                "worst_by": "" if by_arr is None else by_arr.reshape(-1), "clean_top1_true": is_true[flat_clip],
            })
            a = pd.concat([a, pd.DataFrame(scores_arr.reshape(-1, len(classes)), columns=score_cols),
                           pd.DataFrame(np.tile(labels, (n_eps, 1)).astype(np.float32), columns=label_cols)], axis=1)
            mine.append(pd.concat([c, a], ignore_index=True))
        mine = pd.concat(mine, ignore_index=True)
        if units is not None:
            units.put_table(unit_name("worst-case", *unit_key, name), mine)
        rows.append(mine)
    return pd.concat(rows, ignore_index=True)


def masking_check(robustness: pd.DataFrame, *, gap: float = 0.10) -> pd.DataFrame:
    """Signs that the default attack (PGD) underestimates the attacker, per model and eps.

    Parameters
    ----------
    robustness : pandas.DataFrame
        A comparison's robustness table with ``pgd``, ``transfer`` and ``worst-case`` rows.
    gap : float
        Worst-case minus PGD success rate from which a warning is raised.

    Returns
    -------
    pandas.DataFrame
        ``model, eps, pgd, transfer, worst_case`` (success rates; transfer NaN without
        a source) and ``warning`` (empty when none): "transfer beats white-box PGD" and/or
        "stronger attacks add N points".
    """
    adv = robustness[robustness["budget_kind"] != "clean"]
    if "attack" not in adv or not (adv["attack"] == "worst-case").any():
        return pd.DataFrame(columns=["model", "eps", "pgd", "transfer", "worst_case", "warning"])
    rates = adv.groupby(["model", "eps", "attack"], sort=False)["success"].mean().unstack("attack")
    out = []
    for (model, eps), r in rates.iterrows():
        pgd, wc = float(r.get("pgd", np.nan)), float(r.get("worst-case", np.nan))
        tr = float(r["transfer"]) if "transfer" in r and pd.notna(r["transfer"]) else float("nan")
        notes = []
        if np.isfinite(tr) and tr > pgd:
            notes.append(f"transfer ({tr:.2f}) beats white-box PGD ({pgd:.2f})")
        if np.isfinite(wc) and wc - pgd >= gap:
            notes.append(f"stronger attacks add {100 * (wc - pgd):.0f} points over PGD")
        out.append({"model": model, "eps": float(eps), "pgd": pgd, "transfer": tr, "worst_case": wc, "warning": "; ".join(notes)})
    return pd.DataFrame(out)
