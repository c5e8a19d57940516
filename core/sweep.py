"""Robustness sweeps: many eps values in one call, minimal flipping eps, tidy tables.

:func:`run_sweep` follows foolbox's ``attack(model, inputs, criterion,
epsilons=[...])`` semantics: one call, results shaped ``(n_eps, batch)``. The eps
grid is put on the batch axis: every (eps, clip) pair is one row, rows are run in
chunks of ``max_rows`` with the clean pass, objective state and random start shared
across the grid. Row ``(i, j)`` gives exactly what a single attack with eps ``i``
on the same batch and seed gives for clip ``j``.

:func:`minimal_eps` finds, per clip, the smallest eps that makes the attack
succeed, by bisection on a log scale (success of PGD is not guaranteed to be
monotone in eps, so the result is an upper bound found by the search).

:func:`sweep_table` turns a result into tidy rows (one per model, eps and clip);
:func:`summarize` aggregates them into curves; :func:`sweep_windows` runs a
resumable sweep over many clips and models and writes the table to CSV/Parquet.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from core import metrics
from core.attacks.base import Attack, eps_rows_for_snr
from core.attacks.objectives import take_rows
from core.calibration import set_changed
from core.device import rows_per_pass
from core.errors import ParameterError
from core.fileio import atomic_path, atomic_write_text

__all__ = [
    "SweepResult", "run_sweep", "minimal_eps", "sweep_table", "summarize", "sweep_windows", "read_table", "write_table",
    "CURVE_METRICS", "ClipSet", "dataset_clips", "attack_from_options", "prototype_index", "summary_markdown",
]

#: Metrics of :func:`summarize`, in the order the dashboard offers them.
CURVE_METRICS = ("cmap", "roc_auc", "top1", "success_rate", "set_change_rate", "prs", "drs", "tars", "snr_db", "db_x", "eps")


@dataclass
class SweepResult:
    """Results of :func:`run_sweep`; arrays are ``(n_eps, batch)`` unless stated.

    Attributes
    ----------
    budget_kind : {"eps", "snr_db"}
    budgets : np.ndarray [shape=(n_eps,)]
        The grid as given: eps [full-scale amplitude] or target SNR [dB].
    eps : np.ndarray [full-scale amplitude]
        The radius used for each row (per clip for SNR budgets).
    clean_scores : np.ndarray [shape=(batch, n_classes)]
        Sigmoid scores of the clean clips.
    scores : np.ndarray [shape=(n_eps, batch, n_classes)]
    success : np.ndarray, bool
    objective, clean_objective : np.ndarray; ``clean_objective`` is ``(batch,)``
        The value each attack maximised.
    clean_success : np.ndarray [shape=(batch,)], bool
        Success already on the clean clip (targeted objectives whose target is
        already met; always False for untargeted ones).
    prs, drs, tars : np.ndarray
        Robustness scores (:mod:`core.metrics`; NaN DRS/TARS without a target).
    snr_db, db_x : np.ndarray [dB]
    linf, l2 : np.ndarray [full-scale amplitude]
    adversarial : np.ndarray [shape=(n_eps, batch, n_samples), dtype=float32] or None
        Only with ``keep_waveforms=True``.
    after : dict of str -> np.ndarray [shape=(n_eps, batch)], bool
        Per transformation (``transforms`` of :func:`run_sweep`): the objective's success
        on the transformed adversarial clip (does the attack survive it?).
    clean_after : dict of str -> np.ndarray [shape=(batch,)], bool
        The control: the objective's "success" on the transformed *clean* clip (the
        transformation alone already does what the attack wants).
    above_masking : np.ndarray or None
        Share of time-frequency cells where the perturbation exceeds the clean clip's
        psychoacoustic masking threshold (:func:`core.psychoacoustic.masking_excess`);
        only with ``masking=True``.
    """

    budget_kind: str
    budgets: np.ndarray
    eps: np.ndarray
    clean_scores: np.ndarray
    scores: np.ndarray
    success: np.ndarray
    objective: np.ndarray
    clean_objective: np.ndarray
    clean_success: np.ndarray
    prs: np.ndarray
    drs: np.ndarray
    tars: np.ndarray
    snr_db: np.ndarray
    db_x: np.ndarray
    linf: np.ndarray
    l2: np.ndarray
    adversarial: np.ndarray | None = None
    after: dict = field(default_factory=dict)
    clean_after: dict = field(default_factory=dict)
    above_masking: np.ndarray | None = None


def _grid(attack: Attack, epsilons, snr_db) -> tuple[str, np.ndarray]:
    if (epsilons is None) == (snr_db is None):
        raise ParameterError("give exactly one grid: epsilons (full-scale amplitude) or snr_db (dB)")
    kind, values = ("eps", epsilons) if epsilons is not None else ("snr_db", snr_db)
    try:
        grid = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ParameterError(f"{kind} grid must be numbers, got {values!r}") from None
    if grid.size == 0:
        raise ParameterError(f"{kind} grid is empty")
    low, high = (0.0, attack.eps_max(attack.norm)) if kind == "eps" else (-20.0, 120.0)
    bad = [float(v) for v in grid if not (math.isfinite(v) and low <= v <= high)]
    if bad:
        unit = "full-scale amplitude" if kind == "eps" else "dB"
        raise ParameterError(f"{kind} values must lie in [{low:g}, {high:g}] ({unit}, norm {attack.norm}), got {bad}")
    return kind, grid


def parse_float_list(text: str, what: str = "grid") -> tuple[float, ...]:
    """Numbers from comma- (or semicolon-) separated text, e.g. ``"0, 1e-4; 1e-3"``.

    Raises
    ------
    ParameterError
        A value that is not a number, or no value at all.
    """
    try:
        values = tuple(float(v) for v in str(text).replace(";", ",").split(",") if v.strip())
    except ValueError:
        raise ParameterError(f"{what} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ParameterError(f"{what} is empty")
    return values


def run_sweep(
    attack: Attack,
    model,
    waveforms: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    epsilons: Sequence[float] | None = None,
    snr_db: Sequence[float] | None = None,
    masks: torch.Tensor | None = None,
    max_rows: int = 8,
    keep_waveforms: bool = False,
    progress: Callable[[int, int], None] | None = None,
    transforms: Mapping | None = None,
    masking: bool = False,
) -> SweepResult:
    """Attack a batch at every budget of a grid in one call.

    The attack's own ``eps``/``snr_db`` is ignored; everything else (norm, steps,
    step ratio, seed, objective, bounds) is used.

    Parameters
    ----------
    attack : Attack
    model : BirdClassifier
    waveforms : torch.Tensor [shape=(batch, n_samples)], full-scale amplitude inside the bounds
    labels : torch.Tensor [shape=(batch, n_classes)], optional
        True multi-hot labels (PRS reference, output-space untargeted target).
    epsilons : sequence of float, optional [full-scale amplitude]
    snr_db : sequence of float, optional [dB]
        Exactly one of ``epsilons`` and ``snr_db``; an SNR grid gives each clip its own eps.
    masks : torch.Tensor [shape=(batch, n_samples)], optional
        1 where samples may change.
    max_rows : int >= 1
        Rows (eps x clip pairs) per forward/backward pass; bounds memory.
    keep_waveforms : bool
        Return the adversarial waveforms (n_eps x batch x n_samples floats).
    progress : callable, optional
        ``progress(done_rows, total_rows)``.
    transforms : mapping of name -> core.threats.Transform, optional
        Each adversarial (and clean) clip is also passed through each transformation's
        evaluation draw and scored again (``SweepResult.after`` / ``clean_after``).
    masking : bool
        Also measure how much of each perturbation lies above the clean clip's
        masking threshold (``SweepResult.above_masking``; about 0.3 s per clip).

    Returns
    -------
    SweepResult

    Raises
    ------
    ParameterError
        Empty or out-of-range grid, invalid waveforms/labels/mask, ``max_rows < 1``.
    """
    kind, grid = _grid(attack, epsilons, snr_db)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ParameterError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    x, labels, mask = attack.check_inputs(waveforms, labels, masks)
    n_eps, batch = len(grid), x.shape[0]
    threshold = None
    if masking:
        from core.psychoacoustic import masking_excess, masking_threshold

        threshold = masking_threshold(x, int(model.config.frontend.sample_rate))
    with attack.eval_mode(model):
        state = attack.objective.prepare(model, x, labels)
        noise = attack.start_noise(x)
        if kind == "eps":
            eps = torch.as_tensor(grid, dtype=x.dtype, device=x.device)[:, None].expand(n_eps, batch)
        else:
            eps = torch.stack([eps_rows_for_snr(x, float(s), attack.norm, mask) for s in grid]).clamp(max=attack.eps_max(attack.norm))
        flat_eps = eps.reshape(-1)
        clip = torch.arange(batch, device=x.device).repeat(n_eps)
        total = n_eps * batch
        # rows with eps 0 are the clean clip: evaluated without gradient steps, apart from the attacked rows
        zero = (flat_eps == 0).nonzero().squeeze(1)
        attacked = (flat_eps > 0).nonzero().squeeze(1)
        chunks = [zero[i : i + max_rows] for i in range(0, len(zero), max_rows)]
        chunks += [attacked[i : i + max_rows] for i in range(0, len(attacked), max_rows)]
        parts: dict[str, list[torch.Tensor]] = {}
        order, done = [], 0
        for rows in chunks:
            j = clip[rows]
            st = take_rows(state, j)
            xa = attack.perturb(model, x[j], flat_eps[rows], st, None if mask is None else mask[j], None if noise is None else noise[j])
            with torch.no_grad():
                out = model.forward_all(xa)
                row = attack.objective.evaluate(out, st)
            row["scores"] = torch.sigmoid(out.logits)
            row["snr_db"] = metrics.snr_db(x[j], xa)
            row["db_x"] = metrics.db_x(x[j], xa)
            row["linf"] = metrics.linf(x[j], xa)
            row["l2"] = metrics.l2(x[j], xa)
            if keep_waveforms:
                row["adversarial"] = xa
            if threshold is not None:
                sub = type(threshold)(threshold.theta_db[j.cpu().numpy()], threshold.offset_db[j.cpu().numpy()], threshold.sample_rate)
                row["above_masking"] = torch.as_tensor(masking_excess((xa - x[j]).cpu(), sub)["share_above"])
            sr = int(model.config.frontend.sample_rate)
            for name, t in (transforms or {}).items():
                with torch.no_grad():
                    row[f"after:{name}"] = attack.objective.evaluate(model.forward_all(t(xa, sr).clamp(*attack.bounds)), st)["success"]
            for k, v in row.items():
                parts.setdefault(k, []).append(v.detach().float().cpu())
            order.append(rows.cpu())
            done += len(rows)
            if progress:
                progress(done, total)
    inverse = torch.argsort(torch.cat(order))

    def grid_shaped(name):
        v = torch.cat(parts[name])[inverse].numpy()
        return v.reshape(n_eps, batch, *v.shape[1:])

    clean_after = {}
    for name, t in (transforms or {}).items():
        with torch.no_grad(), attack.eval_mode(model):
            tx = t(x, int(model.config.frontend.sample_rate)).clamp(*attack.bounds)
            clean_after[name] = attack.objective.evaluate(model.forward_all(tx), state)["success"].cpu().numpy().astype(bool)
    prs = metrics.prs(state["clean_prs_loss"].cpu().numpy()[None], grid_shaped("prs_loss"))
    drs = metrics.drs(state["clean_drs_loss"].cpu().numpy()[None], grid_shaped("drs_loss"))
    return SweepResult(
        budget_kind=kind,
        budgets=grid,
        eps=eps.detach().cpu().double().numpy(),
        clean_scores=torch.sigmoid(state["clean_logits"]).float().cpu().numpy(),
        scores=grid_shaped("scores"),
        success=grid_shaped("success").astype(bool),
        objective=grid_shaped("objective"),
        clean_objective=state["clean_objective"].float().cpu().numpy(),
        clean_success=state["clean_success"].cpu().numpy().astype(bool),
        prs=prs,
        drs=drs,
        tars=metrics.tars(prs, drs),
        snr_db=grid_shaped("snr_db"),
        db_x=grid_shaped("db_x"),
        linf=grid_shaped("linf"),
        l2=grid_shaped("l2"),
        adversarial=grid_shaped("adversarial") if keep_waveforms else None,
        after={name: grid_shaped(f"after:{name}").astype(bool) for name in (transforms or {})},
        clean_after=clean_after,
        above_masking=grid_shaped("above_masking") if threshold is not None else None,
    )


def minimal_eps(
    attack: Attack,
    model,
    waveforms: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    eps_low: float = 1e-6,
    eps_high: float = 0.1,
    iterations: int = 7,
    masks: torch.Tensor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Smallest eps at which the attack succeeds, per clip: a coarse log grid, then bisection.

    First the attack runs at one eps per decade from ``eps_low`` up to ``eps_high``
    (all clips at once); the first success brackets each clip's minimal eps within a
    decade. Then ``iterations`` bisection steps on log(eps) narrow the bracket to a
    ratio of ``10^(1/2^iterations)`` (7 steps: 1.8 %). Each step runs the attack once
    on the whole batch, every clip at its own eps. Success of PGD is not guaranteed to
    be monotone in eps; the coarse pass makes the search find the smallest decade
    that succeeds rather than trusting a single large eps, and the result is the
    smallest successful eps the search met.

    Parameters
    ----------
    attack : Attack
        Its norm, steps, seed and objective are used; its budget is not.
    model : BirdClassifier
    waveforms : torch.Tensor [shape=(batch, n_samples)]
    labels : torch.Tensor [shape=(batch, n_classes)], optional
    eps_low, eps_high : float [full-scale amplitude]
        Search range, ``0 < eps_low < eps_high <=`` the norm's maximum.
    iterations : int in [0, 40]
    masks : torch.Tensor [shape=(batch, n_samples)], optional
    progress : callable, optional
        ``progress(done, total)`` over the attack runs.

    Returns
    -------
    dict of np.ndarray [shape=(batch,)]
        ``eps`` (NaN where no eps up to ``eps_high`` succeeds; ``eps_low`` where it
        already succeeds there), ``snr_db`` and ``db_x`` of the adversarial clip found
        at that eps, ``found`` (bool).

    Raises
    ------
    ParameterError
        A bad range or iteration count, or invalid inputs.
    """
    top = attack.eps_max(attack.norm)
    if not (math.isfinite(eps_low) and math.isfinite(eps_high) and 0 < eps_low < eps_high <= top):
        raise ParameterError(f"need 0 < eps_low < eps_high <= {top:g}, got {eps_low}, {eps_high}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or not 0 <= iterations <= 40:
        raise ParameterError(f"iterations must be an integer in [0, 40], got {iterations!r}")
    x, labels, mask = attack.check_inputs(waveforms, labels, masks)
    batch = x.shape[0]
    decades = int(math.ceil(math.log10(eps_high / eps_low) - 1e-9))
    coarse = [eps_low * 10**i for i in range(decades)] + [eps_high]
    total, done = len(coarse) + iterations, 0
    with attack.eval_mode(model):
        state = attack.objective.prepare(model, x, labels)
        noise = attack.start_noise(x)

        def run(eps_rows: torch.Tensor):
            xa = attack.perturb(model, x, eps_rows.to(x.device, x.dtype), state, mask, noise)
            with torch.no_grad():
                ok = attack.objective.evaluate(model.forward_all(xa), state)["success"].cpu()
            return xa, ok

        found = torch.zeros(batch, dtype=torch.bool)
        lo = torch.zeros(batch, dtype=torch.float64)
        hi = torch.full((batch,), float("nan"), dtype=torch.float64)
        best = x.clone()
        for i, e in enumerate(coarse):
            xa, ok = run(torch.full((batch,), e, dtype=torch.float64))
            new = ok & ~found
            hi[new] = e
            lo[new] = coarse[i - 1] if i else 0.0
            best[new.to(x.device)] = xa[new.to(x.device)]
            found |= ok
            done += 1
            if progress:
                progress(done, total)
            if found.all():
                break
        active = found & (lo > 0)
        for _ in range(iterations):
            if not active.any():
                break
            mid = torch.where(active, torch.sqrt(lo.clamp_min(1e-30) * hi), hi)
            xa, ok = run(mid)
            ok = ok & active
            hi = torch.where(ok, mid, hi)
            lo = torch.where(active & ~ok, mid, lo)
            best[ok.to(x.device)] = xa[ok.to(x.device)]
            done += 1
            if progress:
                progress(done, total)
    f = found.numpy()
    return {
        "eps": np.where(f, hi.numpy(), np.nan),
        "snr_db": np.where(f, metrics.snr_db(x, best).cpu().numpy(), np.nan),
        "db_x": np.where(f, metrics.db_x(x, best).cpu().numpy(), np.nan),
        "found": f,
    }


def sweep_table(
    result: SweepResult,
    *,
    model: str,
    attack: Attack,
    clip_ids: Sequence[str],
    class_names: Sequence[str],
    labels: np.ndarray | None = None,
) -> pd.DataFrame:
    """Tidy rows, one per (eps, clip), clean rows (budget ``None``/eps 0) first.

    Columns: ``model, attack, norm, objective, steps, seed, success_definition, budget_kind, budget, clip,
    eps, success, objective_value, prs, drs, tars, snr_db, db_x, linf, l2``, one
    ``score:<class>`` column per class and, with labels, one ``label:<class>`` column;
    with ``masking``, ``above_masking`` (share of cells above the masking threshold, 0 on clean rows);
    with transformations, one ``after:<name>`` column each (success after it; on clean
    rows, the control: the transformation alone). Clean rows have
    ``budget_kind == "clean"`` and carry the clean scores.

    Raises
    ------
    ParameterError
        ``clip_ids`` or ``labels`` do not match the batch.
    """
    n_eps, batch = result.success.shape
    if len(clip_ids) != batch:
        raise ParameterError(f"{len(clip_ids)} clip ids for a batch of {batch}")
    if labels is not None and np.shape(labels) != (batch, len(class_names)):
        raise ParameterError(f"labels must be ({batch}, {len(class_names)}), got {np.shape(labels)}")
    info = {
        "model": model, "attack": attack.name, "norm": attack.norm, "objective": attack.objective.name,
        "steps": attack.steps, "seed": attack.seed, "success_definition": attack.objective.success_definition,
    }
    clean = pd.DataFrame({
        **info, "budget_kind": "clean", "budget": np.nan, "clip": list(clip_ids), "eps": 0.0, "success": result.clean_success,
        "objective_value": result.clean_objective, "prs": 1.0, "drs": np.where(np.isnan(result.drs[0]), np.nan, 1.0),
        "tars": np.where(np.isnan(result.tars[0]), np.nan, 1.0),
        "snr_db": np.inf, "db_x": -np.inf, "linf": 0.0, "l2": 0.0,
    })
    scores = [result.clean_scores] + [result.scores[i] for i in range(n_eps)]
    adv = pd.DataFrame({
        **info, "budget_kind": result.budget_kind, "budget": np.repeat(result.budgets, batch), "clip": list(clip_ids) * n_eps,
        "eps": result.eps.reshape(-1), "success": result.success.reshape(-1), "objective_value": result.objective.reshape(-1),
        "prs": result.prs.reshape(-1), "drs": result.drs.reshape(-1), "tars": result.tars.reshape(-1),
        "snr_db": result.snr_db.reshape(-1), "db_x": result.db_x.reshape(-1), "linf": result.linf.reshape(-1), "l2": result.l2.reshape(-1),
    })
    if result.above_masking is not None:  # audibility beside SNR and dB_x
        clean["above_masking"] = 0.0
        adv["above_masking"] = result.above_masking.reshape(-1)
    for name, ok in result.after.items():  # does the attack survive the transformation? and the control
        clean[f"after:{name}"] = result.clean_after[name]
        adv[f"after:{name}"] = ok.reshape(-1)
    df = pd.concat([clean, adv], ignore_index=True)
    all_scores = np.concatenate(scores)
    cols = {f"score:{c}": all_scores[:, k] for k, c in enumerate(class_names)}
    if labels is not None:
        lab = np.tile(np.asarray(labels, dtype=np.float32), (n_eps + 1, 1))
        cols |= {f"label:{c}": lab[:, k] for k, c in enumerate(class_names)}
    return pd.concat([df, pd.DataFrame(cols)], axis=1)


def _classes(df: pd.DataFrame) -> list[str]:
    return [c.split(":", 1)[1] for c in df.columns if c.startswith("score:")]


def _set_changes(df: pd.DataFrame, classes: list[str], thresholds: Mapping[str, float]) -> pd.Series:
    """Per row: predicted set at the model's threshold differs from the clean row's (NaN without a threshold)."""
    out = pd.Series(np.nan, index=df.index, dtype=object)
    if not classes or not thresholds:
        return out.astype(float)
    cols = [f"score:{c}" for c in classes]
    keys = [k for k in ("model", "attack", "norm", "objective") if k in df]
    for key, g in df.groupby(keys, sort=False):
        t = thresholds.get(key[0])
        if t is None:
            continue
        clean = g[g["budget_kind"] == "clean"].drop_duplicates("clip").set_index("clip")
        have = g["clip"].isin(clean.index)
        rows = g[have]
        if rows.empty:
            continue
        ref = clean.loc[rows["clip"], cols].to_numpy()
        out.loc[rows.index] = set_changed(ref, rows[cols].to_numpy(), t)
    return out.astype(float)


def summarize(df: pd.DataFrame, thresholds: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Aggregate a tidy sweep table into one row per (model, attack, objective, budget).

    cmAP, macro ROC-AUC and top-1 are computed over the clips of each group
    (needs ``label:`` columns and at least 2 clips; NaN otherwise); success rate, PRS, DRS and TARS are
    means over clips; SNR, dB_x and eps are medians (SNR of a clean row is +inf).

    ``set_change_rate`` is the share of clips whose predicted species set (scores
    >= the model's validation threshold, :mod:`core.calibration`) differs from the
    clean clip's; NaN for models without a threshold in ``thresholds``.

    Parameters
    ----------
    df : pandas.DataFrame
        A :func:`sweep_table` (or several concatenated).
    thresholds : mapping of model name to float in (0, 1), optional
        Per-model decision thresholds (model cards' ``decision_threshold``).

    Returns
    -------
    pandas.DataFrame
        Columns ``model, attack, norm, objective, budget_kind, budget, n_clips`` and
        :data:`CURVE_METRICS`; with transformation columns, ``success_rate_after:<name>``
        (on the clean row: the transformation's own rate, the control).
    """
    classes = _classes(df)
    has_labels = all(f"label:{c}" in df.columns for c in classes) and classes
    keys = ["model", "attack", "norm", "objective", "budget_kind", "budget"]
    changed = _set_changes(df, classes, thresholds or {})
    rows = []
    for key, g in df.groupby(keys, dropna=False, sort=False):
        row = dict(zip(keys, key))
        row["n_clips"] = int(g["clip"].nunique())
        if "success_definition" in g:  # tables written before it existed lack it
            row["success_definition"] = str(g["success_definition"].iloc[0])
        if has_labels and row["n_clips"] >= 2:  # AP over a single clip is 1 whatever the score: not a metric
            cls = metrics.classification_metrics(g[[f"score:{c}" for c in classes]].to_numpy(), g[[f"label:{c}" for c in classes]].to_numpy())
            row |= {k: cls[k] for k in ("cmap", "roc_auc", "top1")}
        else:
            row |= {"cmap": np.nan, "roc_auc": np.nan, "top1": np.nan}
        row["success_rate"] = float(g["success"].astype(float).mean())
        for col in (c for c in g.columns if c.startswith("after:")):
            row[f"success_rate_{col}"] = float(g[col].astype(float).mean()) if g[col].notna().any() else np.nan
        row["set_change_rate"] = float(changed[g.index].mean()) if changed[g.index].notna().all() else np.nan
        for m in ("prs", "drs", "tars"):
            row[m] = float(g[m].mean()) if g[m].notna().any() else np.nan
        for m in ("snr_db", "db_x", "eps"):
            row[m] = float(g[m].median())
        if "above_masking" in g:
            row["above_masking"] = float(g["above_masking"].median()) if g["above_masking"].notna().any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame) -> str:
    """A :func:`summarize` table as Markdown, one row per model and budget (what the README shows).

    Columns: model, eps (0 = clean), windows, median SNR (dB), cmAP, top-1 and success rate, each to 3
    decimals. Tests regenerate it from the stored sweep tables and compare it with the README verbatim.
    """
    lines = ["| model | eps | windows | median SNR (dB) | cmAP | top-1 | success |", "|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        if pd.isna(r["budget"]):
            continue  # the clean row is repeated at eps 0
        snr = "inf" if not np.isfinite(r["snr_db"]) else f"{r['snr_db']:.1f}"
        lines.append(f"| {r['model']} | {r['budget']:g} | {r['n_clips']} | {snr} | {r['cmap']:.3f} | {r['top1']:.3f} | {r['success_rate']:.3f} |")
    return "\n".join(lines) + "\n"


# -- tables on disk -----------------------------------------------------------------------------


def write_table(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write CSV or Parquet (by extension) atomically: a temporary file, then a rename.

    Raises
    ------
    ParameterError
        Extension other than ``.csv`` or ``.parquet``.
    """
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise ParameterError(f"sweep table must end in .csv or .parquet, got {path.name!r}")
    with atomic_path(path) as tmp:
        if path.suffix == ".csv":
            df.to_csv(tmp, index=False)
        else:
            df.to_parquet(tmp, index=False)


def read_table(source) -> pd.DataFrame:
    """Read a sweep table (path or file-like; CSV or Parquet) and check its columns.

    Raises
    ------
    ParameterError
        Unreadable file, or missing columns of a sweep table.
    """
    name = str(getattr(source, "name", source))
    try:
        df = pd.read_parquet(source) if name.endswith(".parquet") else pd.read_csv(source)
    except Exception as exc:  # pandas raises many types for a bad file
        raise ParameterError(f"cannot read sweep table {os.path.basename(name)!r}: {exc}") from None
    required = {"model", "attack", "norm", "objective", "budget_kind", "budget", "clip", "eps", "success", "prs", "drs", "tars", "snr_db"}
    missing = sorted(required - set(df.columns))
    if missing or not _classes(df):
        raise ParameterError(f"{os.path.basename(name)!r} is not a sweep table: missing columns {missing or ['score:<class>']}")
    df["success"] = df["success"].astype(str).str.lower().isin(("true", "1", "1.0"))
    return df


def sweep_windows(
    models: dict,
    attack: Attack | Callable[[object], Attack],
    waveforms: np.ndarray,
    clip_ids: Sequence[str],
    labels: np.ndarray | None = None,
    *,
    epsilons: Sequence[float] | None = None,
    snr_db: Sequence[float] | None = None,
    masks: np.ndarray | None = None,
    clips_per_batch: int = 4,
    max_rows: int | None = None,
    out: str | os.PathLike | None = None,
    settings: dict | None = None,
    progress: Callable[[int, int], None] | None = None,
    transforms: Mapping | None = None,
    masking: bool = False,
) -> pd.DataFrame:
    """Sweep several models over many clips, optionally resumable on disk.

    Clips are attacked ``clips_per_batch`` at a time; after each batch the table is
    written atomically to ``out`` (with a ``.json`` sidecar of the settings). If
    ``out`` already holds rows of a sweep with the same settings, clips already
    done for a model are skipped, so an interrupted run resumes where it stopped.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    attack : Attack, or a callable model -> Attack
        A callable builds one attack per model (targets given by class code or
        prototype differ between models).
    waveforms : np.ndarray [shape=(n_clips, n_samples), dtype=float32]
    clip_ids : sequence of str, unique
    labels : np.ndarray [shape=(n_clips, n_classes)], optional
    epsilons, snr_db : sequence of float
        The grid (see :func:`run_sweep`).
    masks : np.ndarray [shape=(n_clips, n_samples)], optional
    clips_per_batch : int >= 1
        Clips attacked together (their random starts are drawn together).
    max_rows : int >= 1, optional
        Rows (clips x budgets) per forward/backward pass; default
        :func:`core.device.rows_per_pass` (8 on a CPU, sized to the free memory on
        CUDA). It bounds memory only: the results do not depend on it.
    out : path, optional
        ``.csv`` or ``.parquet``.
    settings : dict, optional
        Extra JSON-ready settings recorded in the sidecar (e.g. split).
    progress : callable, optional
        ``progress(done_clips, total_clips)`` summed over models.
    transforms : mapping of name -> core.threats.Transform, optional
        Score every clip again after each transformation (:func:`run_sweep`).
    masking : bool
        Measure each perturbation's share above the masking threshold (:func:`run_sweep`).

    Returns
    -------
    pandas.DataFrame
        The whole table (earlier rows included).

    Raises
    ------
    ParameterError
        ``out`` holds a sweep with other settings, duplicate clip ids, bad inputs.
    """
    attacks = {name: attack(m) if callable(attack) and not isinstance(attack, Attack) else attack for name, m in models.items()}
    first = next(iter(attacks.values()))
    kind, grid = _grid(first, epsilons, snr_db)
    if len(set(clip_ids)) != len(clip_ids) or len(clip_ids) != len(waveforms):
        raise ParameterError("clip_ids must be unique, one per waveform")
    meta = {
        "attack": first.describe(), "budget_kind": kind, "grid": [float(v) for v in grid], "models": sorted(models),
        **(settings or {}),
    }
    if transforms:
        meta["transforms"] = {name: t.describe() for name, t in transforms.items()}
    if masking:
        meta["masking"] = True
    table = pd.DataFrame()
    if out is not None:
        out = Path(out)
        if out.suffix not in (".csv", ".parquet"):  # before anything is written (no stray sidecar)
            raise ParameterError(f"sweep table must end in .csv or .parquet, got {out.name!r}")
        side = out.with_suffix(out.suffix + ".json")
        if out.exists():
            old = json.loads(side.read_text()) if side.exists() else None
            if old is None or {k: v for k, v in old.items() if k != "models"} != {k: v for k, v in meta.items() if k != "models"}:
                raise ParameterError(f"{out} holds a sweep with other settings; choose another output file or delete it")
            table = read_table(out)
            meta["models"] = sorted(set(old["models"]) | set(models))
        atomic_write_text(side, json.dumps(meta, indent=1))
    total = len(models) * len(clip_ids)
    done = 0
    for name, model in models.items():
        finished = set(table.loc[table["model"] == name, "clip"]) if len(table) else set()
        todo = [i for i, c in enumerate(clip_ids) if c not in finished]
        done += len(clip_ids) - len(todo)
        if progress:
            progress(done, total)
        device = next(model.parameters()).device
        for b in range(0, len(todo), clips_per_batch):
            idx = todo[b : b + clips_per_batch]
            x = torch.as_tensor(np.asarray(waveforms[idx], dtype=np.float32), device=device)
            y = None if labels is None else torch.as_tensor(labels[idx], device=device)
            m = None if masks is None else torch.as_tensor(masks[idx], device=device)
            grids = {"epsilons": grid} if kind == "eps" else {"snr_db": grid}
            rows = max_rows or rows_per_pass(model, x.shape[1])
            res = run_sweep(attacks[name], model, x, y, masks=m, max_rows=rows, transforms=transforms, masking=masking, **grids)
            part = sweep_table(res, model=name, attack=attacks[name], clip_ids=[clip_ids[i] for i in idx], class_names=model.config.class_names,
                               labels=None if labels is None else labels[idx])
            table = pd.concat([table, part], ignore_index=True) if len(table) else part
            if out is not None:
                write_table(table, out)
            done += len(idx)
            if progress:
                progress(done, total)
    return table


# -- clips and attacks from user options (CLI and dashboard) --------------------------------------


@dataclass
class ClipSet:
    """Fixed-length clips to sweep over.

    Attributes
    ----------
    waveforms : np.ndarray [shape=(n_clips, n_samples), dtype=float32]
    clip_ids : list of str
    labels : np.ndarray [shape=(n_clips, n_classes), dtype=float32] or None
    masks : np.ndarray [shape=(n_clips, n_samples), dtype=float32]
        0 on zero padding.
    species : list of str
        Focal species code of each clip ("" when unknown).
    """

    waveforms: np.ndarray
    clip_ids: list[str]
    labels: np.ndarray | None
    masks: np.ndarray
    species: list[str]

    def __len__(self) -> int:
        return len(self.clip_ids)


def _spread(n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(int))


def dataset_clips(
    dataset,
    *,
    split: str,
    class_names: Sequence[str],
    sample_rate: int,
    window_samples: int,
    species: str | None = None,
    max_clips: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ClipSet:
    """Windows of a dataset split (optionally one species, at most ``max_clips``) as a :class:`ClipSet`.

    With ``max_clips`` the recordings are taken evenly spaced over the split's
    (species-sorted) list first and the windows evenly spaced over them, so a small
    subset still covers the species. Samples are clipped to [-1, 1] (resampling can
    overshoot full scale slightly), as the attacks require.

    Raises
    ------
    ParameterError
        Unknown split or species, ``max_clips < 1``, or no recording available.
    """
    from core.data import build_windows

    if max_clips is not None and (isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1):
        raise ParameterError(f"max_clips must be an integer >= 1, got {max_clips!r}")
    recs = [r for r in dataset.split(split) if r.path.is_file()]
    if species is not None:
        if species not in class_names:
            raise ParameterError(f"species must be one of {list(class_names)}, got {species!r}")
        recs = [r for r in recs if species in r.labels]
    if not recs:
        raise ParameterError(f"no recordings available in split {split!r}" + (f" for species {species!r}" if species else ""))
    recs = sorted(recs, key=lambda r: (r.labels, r.recording_id))
    recs = [recs[i] for i in _spread(len(recs), max_clips)]
    windows = build_windows(dataset, recs, sample_rate=sample_rate, window_s=window_samples / sample_rate, class_names=class_names, progress=progress)
    keep = _spread(len(windows.waveforms), max_clips)
    ids = windows.clip_ids(sample_rate)
    return ClipSet(
        # resampling can overshoot full scale by a little; attacks need samples inside [-1, 1]
        waveforms=np.clip(windows.waveforms[keep], -1.0, 1.0),
        clip_ids=[ids[i] for i in keep],
        labels=windows.targets[keep],
        masks=windows.masks()[keep],
        species=[";".join(windows.recordings[windows.recording_index[i]].labels) for i in keep],
    )


def prototype_index(model, prototype) -> int:
    """Global prototype index from an int or ``"<species code>:<j>"`` (j-th prototype of that class).

    Raises
    ------
    ParameterError
        Not an AudioProtoPNet, unknown class, or index out of range.
    """
    if not hasattr(model, "prototype_vectors"):
        raise ParameterError("prototype objectives need an AudioProtoPNet model")
    k = model.config.prototypes_per_class
    if isinstance(prototype, str) and ":" in prototype:
        code, _, j = prototype.partition(":")
        names = list(model.config.class_names)
        if code not in names:
            raise ParameterError(f"prototype class must be one of {names}, got {code!r}")
        if not j.isdigit() or int(j) >= k:
            raise ParameterError(f"prototype number must be in [0, {k - 1}], got {j!r}")
        return names.index(code) * k + int(j)
    try:
        index = int(prototype)
    except (TypeError, ValueError):
        raise ParameterError(f"prototype must be an index or 'CODE:j', got {prototype!r}") from None
    if not 0 <= index < model.n_prototypes:
        raise ParameterError(f"prototype index must be in [0, {model.n_prototypes - 1}], got {index}")
    return index


def attack_from_options(
    model,
    *,
    attack: str = "pgd",
    norm: str = "linf",
    objective: str = "output-untargeted",
    steps: int = 10,
    seed: int = 0,
    species: str | None = None,
    mode: str = "add",
    target_waveform=None,
    prototype=None,
    k: int = 3,
) -> Attack:
    """Build the attack a user described, for one model (class and prototype indices are per model).

    Parameters
    ----------
    model : BirdClassifier
    attack : {"fgsm", "bim", "pgd"}
    norm : {"linf", "l2"}
    objective : str
        A key of :data:`core.attacks.OBJECTIVES`.
    steps, seed : int
    species : str, optional
        Class code for ``output-targeted`` and ``output-targeted-margin``.
    mode : {"add", "remove"}
    target_waveform : array [shape=(n_samples,)], optional
        Target clip for ``embedding-targeted``.
    prototype : int or str, optional
        For ``prototype-activate`` (see :func:`prototype_index`).
    k : int
        Prototypes suppressed by ``prototype-suppress``.

    Returns
    -------
    Attack
        Its budget is a placeholder (eps 0); sweeps set their own.

    Raises
    ------
    ParameterError
        Unknown names, a missing target, or a target that does not fit the model.
    """
    from core.attacks import make_attack, make_objective

    names = list(model.config.class_names)
    if objective.startswith("prototype") and not hasattr(model, "prototype_vectors"):
        raise ParameterError(f"{objective} needs an AudioProtoPNet model, got {model.config.arch!r}")
    if objective in ("output-targeted", "output-targeted-margin"):
        if species not in names:
            raise ParameterError(f"{objective} needs a target species, one of {names}; got {species!r}")
        kw = {"mode": mode} if objective == "output-targeted" else {}
        obj = make_objective(objective, class_index=names.index(species), **kw)
    elif objective == "embedding-targeted":
        if target_waveform is None:
            raise ParameterError("embedding-targeted needs a target clip")
        obj = make_objective(objective, target_waveform=torch.as_tensor(np.asarray(target_waveform, dtype=np.float32)))
    elif objective == "prototype-activate":
        if prototype is None:
            raise ParameterError("prototype-activate needs a prototype (index or 'CODE:j')")
        obj = make_objective(objective, prototype_index=prototype_index(model, prototype))
    elif objective == "prototype-suppress":
        obj = make_objective(objective, k=k)
    else:
        obj = make_objective(objective)
    obj.check_model(model)
    return make_attack(attack, eps=0.0, norm=norm, steps=steps, seed=seed, objective=obj)
