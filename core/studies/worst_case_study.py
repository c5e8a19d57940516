"""The worst case over attacks on a dataset split, per window, resumable: one CSV row per (model, window, eps, settings).

:func:`worst_case_study` runs :func:`core.attacks.worstcase.worst_case_windows` on a fixed, species-spread set of
windows of a split (:func:`core.io.clips.dataset_clips`) for each model and eps, a few windows at a time, and
appends each finished chunk to a CSV. Rows already in the CSV with the same model, window, eps and settings are
skipped, so a run that was interrupted (or stopped by ``max_seconds``) picks up where it stopped, and the whole study
can be spread over several short runs. :func:`worst_case_study_summary` turns the rows into the success rates the
docs report: over windows whose clean top-1 is a true label only, before (the legs of the worst case before
issue 24, :data:`~core.attacks.worstcase.BASE_LEGS`) and after AutoAttack's APGD legs, and which leg broke each window.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import ParameterError, check_int

__all__ = ["SETTING_COLUMNS", "worst_case_study", "worst_case_study_summary"]

#: Columns that identify the settings of a row (with model, clip and eps they identify the row); the fingerprints
#: (:func:`core.studies.embeddings.model_fingerprint`) make a retrained model's windows new rows.
SETTING_COLUMNS = ("split", "source", "steps", "strong_steps", "restarts", "apgd_steps", "apgd_restarts", "n_targets", "seed",
                   "fingerprint", "source_fingerprint")


def _done_keys(path: Path, settings: dict) -> set:
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    old = pd.read_csv(path, on_bad_lines="skip", keep_default_na=False)
    if old.empty:
        return set()
    same = np.ones(len(old), bool)
    for k, v in settings.items():
        same &= old[k].astype(str).to_numpy() == str(v) if k in old else False  # a column it lacks: other settings
    old = old[same]
    return set(zip(old["model"].astype(str), old["clip"].astype(str), np.round(old["eps"].astype(float), 12)))


def _append(path: Path, rows: pd.DataFrame) -> None:
    """Append rows (header only for a new file) in one write, flushed to disk."""
    new = not path.is_file() or path.stat().st_size == 0
    text = rows.to_csv(index=False, header=new, float_format="%.6g")
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def worst_case_study(models: dict, dataset, *, epsilons, out: str | os.PathLike, sources: dict | None = None, split: str = "test",
                     max_clips: int = 24, steps: int = 10, strong_steps: int = 20, restarts: int = 2, apgd_steps: int = 50,
                     apgd_restarts: int = 1, n_targets: int = 3, seed: int = 0, chunk: int = 2, only_true_top1: bool = True,
                     max_seconds: float | None = None, progress: Callable[[str, int, int], None] | None = None) -> pd.DataFrame:
    """Per-window worst case of each model at each eps on ``max_clips`` windows of a split, appended to ``out``.

    Parameters
    ----------
    models : dict name -> BirdClassifier
        Each gets the split's windows at its own rate and window length.
    dataset : core.io.data.Dataset
    epsilons : sequence of float in (0, 1] [full-scale amplitude]
        L-inf budgets.
    out : path
        CSV the rows are appended to (created with its folder); rows already there with the same settings are
        not computed again.
    sources : dict name -> BirdClassifier, optional
        Model of each target's transfer attack (same rate and window length); targets without one skip that leg.
    split : str
    max_clips : int >= 1
        Windows per model, spread over the split's species (:func:`core.io.clips.dataset_clips`).
    steps, strong_steps, restarts, apgd_steps, apgd_restarts, n_targets, seed
        Those of :func:`core.attacks.worstcase.worst_case_windows` (defaults: the comparison's PGD-10, APGD-20,
        PGD-20x2, then APGD-CE, APGD-DLR and APGD-T with 3 targets at 50 iterations).
    chunk : int >= 1
        Windows attacked together and appended at once (what an interruption can lose).
    only_true_top1 : bool
        Attack only windows whose clean top-1 is a true label (the others are written with ``attacked`` False).
    max_seconds : float, optional
        Stop after the chunk during which this much time has passed (run again to go on).
    progress : callable, optional
        ``progress(model, done, total)`` after each chunk.

    Returns
    -------
    pandas.DataFrame
        The rows written by this call: ``model, clip, species, labels, eps`` and :data:`SETTING_COLUMNS`, ``clean_top1``,
        ``clean_top1_true``, ``attacked``, ``success``, ``success_base`` (broken by a leg of
        :data:`~core.attacks.worstcase.BASE_LEGS`), ``attack`` (the leg that broke it, or the last leg run),
        ``adv_top1``, ``linf``, ``snr_db`` [dB], ``seconds`` (the chunk's time per window).

    Raises
    ------
    ParameterError
        Bad eps, counts, or a source with another rate or window length than its target.
    """
    import torch

    from core.attacks.worstcase import BASE_LEGS, worst_case_windows
    from core.io.clips import dataset_clips
    from core.metrics import snr_db
    from core.studies.embeddings import model_fingerprint

    grid = [float(e) for e in epsilons]
    if not grid or not all(0.0 < e <= 1.0 for e in grid):
        raise ParameterError(f"epsilons must be a non-empty list of eps in (0, 1], got {list(epsilons)!r}")
    for name, v, low in (("max_clips", max_clips, 1), ("chunk", chunk, 1), ("apgd_steps", apgd_steps, 0)):
        check_int(name, v, low)
    sources = sources or {}
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    t_start, written = time.time(), []
    for name, model in models.items():
        c = model.config
        src = sources.get(name)
        if src is not None and (src.config.frontend.sample_rate, src.config.window_samples) != (c.frontend.sample_rate, c.window_samples):
            raise ParameterError(f"the transfer source of {name!r} must have its sample_rate and window length")
        settings = {"split": split, "source": "" if src is None else _model_name(src), "steps": steps,
                    "strong_steps": strong_steps, "restarts": restarts, "apgd_steps": apgd_steps, "apgd_restarts": apgd_restarts,
                    "n_targets": n_targets, "seed": seed, "fingerprint": model_fingerprint(model),
                    "source_fingerprint": "" if src is None else model_fingerprint(src)}
        done = _done_keys(path, settings | {"model": name})
        clips = dataset_clips(dataset, split=split, class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                              window_samples=c.window_samples, max_clips=max_clips)
        todo = [(e, i) for e in grid for i in range(len(clips)) if (name, clips.clip_ids[i], round(e, 12)) not in done]
        for j in range(0, len(todo), chunk):
            if max_seconds is not None and time.time() - t_start > max_seconds:
                return pd.concat(written, ignore_index=True) if written else pd.DataFrame()
            part = todo[j : j + chunk]
            idx = np.array([i for _, i in part])
            eps = np.array([e for e, _ in part])
            t0 = time.time()
            res = worst_case_windows(model, clips.waveforms[idx], eps, labels=clips.labels[idx], masks=clips.masks[idx], source=src,
                                     steps=steps, strong_steps=strong_steps, restarts=restarts, apgd_steps=apgd_steps,
                                     apgd_restarts=apgd_restarts, n_targets=n_targets, seed=seed, chunk=chunk, only_true_top1=only_true_top1)
            dt = (time.time() - t0) / len(part)
            xc, xa = torch.as_tensor(clips.waveforms[idx]), torch.as_tensor(res["adversarial"])
            names = np.asarray(c.class_names)
            attacked = res["true_top1"] | (not only_true_top1)
            rows = pd.DataFrame({
                "model": name, "clip": [clips.clip_ids[i] for i in idx], "species": [clips.species[i] for i in idx],
                "labels": [";".join(names[clips.labels[i] > 0]) for i in idx], "eps": eps, **settings,
                "clean_top1": names[res["clean_scores"].argmax(-1)], "clean_top1_true": res["true_top1"], "attacked": attacked,
                "success": res["success"], "success_base": res["success"] & np.isin(res["attack"].astype(str), BASE_LEGS),
                "attack": res["attack"].astype(str), "adv_top1": names[res["scores"].argmax(-1)],
                "linf": (xa - xc).abs().amax(-1).numpy(), "snr_db": snr_db(xc, xa).numpy(), "seconds": dt,
            })
            _append(path, rows)
            written.append(rows)
            if progress:
                progress(name, j + len(part), len(todo))
    return pd.concat(written, ignore_index=True) if written else pd.DataFrame()


def _model_name(model) -> str:
    return str(getattr(getattr(model, "checkpoint_path", None), "stem", "") or model.config.arch)


def worst_case_study_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Success rates of a :func:`worst_case_study` table over windows whose clean top-1 is a true label.

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of :func:`worst_case_study` (several settings may be mixed: they are grouped apart).

    Returns
    -------
    pandas.DataFrame
        Per ``model, eps`` and settings: ``windows``, ``true_top1`` (windows counted), ``excluded`` (clean top-1 not a
        true label), ``success_before`` (broken by the legs before issue 24) and ``success_after`` (by any leg), both
        as shares of the counted windows, ``added`` (windows only AutoAttack's legs broke), and ``by_leg``: how many
        counted windows each leg broke first (e.g. ``pgd 10, apgd-ce 1``).
    """
    if table.empty:
        return pd.DataFrame(columns=["model", "eps", "windows", "true_top1", "excluded", "success_before", "success_after", "added", "by_leg"])
    keys = ["model", "eps"] + [k for k in SETTING_COLUMNS if k in table]
    out = []
    for key, g in table.groupby(keys, sort=False):
        counted = g[g["clean_top1_true"].astype(bool)]
        n = len(counted)
        succ, base = counted["success"].astype(bool), counted["success_base"].astype(bool)
        legs = counted.loc[succ, "attack"].value_counts()
        out.append({**dict(zip(keys, key)), "windows": len(g), "true_top1": n, "excluded": len(g) - n,
                    "success_before": base.mean() if n else float("nan"), "success_after": succ.mean() if n else float("nan"),
                    "added": int((succ & ~base).sum()), "by_leg": ", ".join(f"{k} {v}" for k, v in legs.items())})
    return pd.DataFrame(out)
