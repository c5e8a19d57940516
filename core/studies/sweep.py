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
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from core import metrics
from core.attacks.base import Attack
from core.attacks.sweep import SweepResult, budget_grid, run_sweep
from core.errors import ParameterError
from core.io.device import rows_per_pass
from core.io.fileio import atomic_path, atomic_write_text
from core.metrics import set_changed

__all__ = [
    "SweepResult", "run_sweep", "sweep_table", "summarize", "sweep_windows", "read_table", "write_table",
    "CURVE_METRICS", "summary_markdown",
]

#: Metrics of :func:`summarize`, in the order the dashboard offers them.
CURVE_METRICS = ("cmap", "roc_auc", "top1", "success_rate", "set_change_rate", "prs", "drs", "tars", "snr_db", "db_x", "eps")


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
    >= the model's validation threshold, :mod:`core.training.calibration`) differs from the
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
    written atomically to ``out`` (with a ``.json`` sidecar of every input: the attack,
    the grid, ``settings`` (the CLI's include the data's identity,
    :func:`core.io.journal.dataset_identity`) and, per model, its weight fingerprint and
    batch size). If ``out`` already holds rows of a sweep with the same inputs, clips
    already done for a model are skipped, so an interrupted run resumes where it
    stopped; a model may be added, but one whose weights or batch size changed is refused.

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
        :func:`core.io.device.rows_per_pass` (8 on a CPU, sized to the free memory on
        CUDA). It bounds memory only: the results do not depend on it.
    out : path, optional
        ``.csv`` or ``.parquet``.
    settings : dict, optional
        Extra JSON-ready settings recorded in the sidecar (e.g. split).
    progress : callable, optional
        ``progress(done_clips, total_clips)`` summed over models.
    transforms : mapping of name -> core.attacks.threats.Transform, optional
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
    kind, grid = budget_grid(first, epsilons, snr_db)
    if len(set(clip_ids)) != len(clip_ids) or len(clip_ids) != len(waveforms):
        raise ParameterError("clip_ids must be unique, one per waveform")
    from core.io.journal import weights_fingerprint

    per_model = {name: {"fingerprint": weights_fingerprint(m), "clips_per_batch": clips_per_batch} for name, m in models.items()}
    meta = {
        "attack": first.describe(), "budget_kind": kind, "grid": [float(v) for v in grid], "models": sorted(models),
        "per_model": per_model, **(settings or {}),
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

            def same(m):  # every input but the set of models, which may grow
                return {k: v for k, v in m.items() if k not in ("models", "per_model")}

            if old is None or "per_model" not in old or same(old) != same(meta):
                raise ParameterError(f"{out} holds a sweep with other settings; choose another output file or delete it")
            before = old["per_model"]
            stale = sorted(n for n, v in per_model.items() if before.get(n, v)["fingerprint"] != v["fingerprint"])
            if stale:
                raise ParameterError(f"{out} holds rows of {stale} computed with other weights; choose another output file or delete it")
            table = read_table(out)
            for n in per_model:  # a model with clips left must go on in batches of the same size (its random starts)
                if n in before and before[n]["clips_per_batch"] != clips_per_batch and set(clip_ids) - set(table.loc[table["model"] == n, "clip"]):
                    raise ParameterError(f"{out}: {n} was attacked {before[n]['clips_per_batch']} clips per batch; resume it with "
                                         f"that batch size, not {clips_per_batch}")
            meta["models"] = sorted(set(old["models"]) | set(models))
            meta["per_model"] = {**per_model, **before}
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


