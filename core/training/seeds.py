"""Training arms over seeds: mean and spread of clean and robust figures per recipe.

One seed per arm cannot tell a recipe's effect from the luck of a run. The AT
claims are therefore measured on several independently trained models per arm
(e.g. AT-O and its matched control OT+FT, seeds 0, 1, 2), each evaluated the same
way: clean metrics on the whole test split (from the model card, computed at the
end of training) and, on ``max_clips`` test windows, the success rate of PGD-k and
of the per-clip worst case over PGD-k and APGD on the margin loss at one eps.
:func:`arm_summary` reports mean, standard deviation and range per arm.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = ["arm_table", "arm_summary", "arm_markdown", "arm_differences", "control_arm", "differences_markdown", "parse_arms"]


def parse_arms(specs: list[str], flag: str = "--arm") -> dict[str, list[str]]:
    """``["AT-O=a,b,c", "OT+FT=d,e,f"]`` -> ``{"AT-O": [a, b, c], "OT+FT": [d, e, f]}`` (``flag`` names the option in errors).

    Raises
    ------
    ParameterError
        A spec without ``=`` or without models, or an arm named twice.
    """
    arms: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, models = spec.partition("=")
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not sep or not name.strip() or not names:
            raise ParameterError(f"{flag} must look like NAME=model1,model2,...; got {spec!r}")
        if name.strip() in arms:
            raise ParameterError(f"{flag} {name.strip()!r} given twice")
        arms[name.strip()] = names
    return arms


def arm_table(arms: dict[str, list[str]], dataset, *, eps: float = 1e-4, max_clips: int = 48, steps: int = 10,
              strong_steps: int = 50, seed: int = 0, progress: Callable[[int, int], None] | None = None,
              windows: list | None = None, out=None, resume: bool = True) -> pd.DataFrame:
    """One row per model of every arm: clean test metrics and attack success at ``eps``.

    Parameters
    ----------
    arms : dict arm -> list of checkpoint names or paths
        Models of one arm differ only in their training seed.
    dataset : core.io.data.Dataset
        Split by the scheme every model was trained on (their cards' ``data.split_scheme``).
    eps : float [full-scale amplitude]
        L-inf budget of the attacks.
    max_clips : int
        Test windows attacked (spread over the species).
    steps, strong_steps : int
        PGD steps; APGD steps.
    seed : int
        Attack seed.
    progress : callable, optional
        ``progress(done, total)`` over models.
    windows : list, optional
        Receives one dict per (model, window): ``arm, model, train_seed, clip_id, recording, pgd_broken, worst_broken``
        (1 where the attack changed the top-1), for :func:`arm_differences`.
    out : path, optional
        ``.csv`` or ``.parquet``: the per-window rows are also written there after every model
        (:class:`core.io.journal.ResumableTable`, keyed by the data, every model's weights and the attack settings), so
        a run stopped part-way and started again with the same inputs attacks only the models not yet done.
    resume : bool
        False: replace ``out`` instead of resuming it.

    Returns
    -------
    pandas.DataFrame
        ``arm, model, train_seed, split_scheme, test_cmap, test_rec_cmap, test_rec_top1, pgd_success, worst_success, n_clips, eps``.

    Raises
    ------
    ParameterError
        No arms, models that do not share windows and classes, or a model trained on another split scheme than
        ``dataset``'s (:func:`core.models.registry.check_split_scheme`); with ``resume``, an ``out`` computed with other
        inputs.
    CheckpointError
        A checkpoint cannot be loaded.
    """
    from core.io.clips import dataset_clips, recording_of
    from core.models.registry import check_split_scheme, load_checkpoint, read_model_card

    if not arms:
        raise ParameterError("no arms")
    for name in (n for names in arms.values() for n in names):  # every card before the first attack
        check_split_scheme(read_model_card(name), dataset, name)
    journal = None if out is None else _arms_journal(out, arms, dataset, resume, eps=eps, max_clips=max_clips, steps=steps,
                                                      strong_steps=strong_steps, seed=seed)
    stored = journal.result() if journal is not None and journal.resumed else pd.DataFrame()
    rows, clips, total, done = [], None, sum(len(v) for v in arms.values()), 0
    for arm, names in arms.items():
        for name in names:
            mine = stored[(stored["arm"] == arm) & (stored["model"] == name)] if len(stored) else stored
            if len(mine):  # attacked by an interrupted run with the same inputs
                card = read_model_card(name)
                found = mine.to_dict("records")
            else:
                model = load_checkpoint(name)
                card = model.card
                c = model.config
                if clips is None:
                    clips = dataset_clips(dataset, split="test", class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                                          window_samples=c.window_samples, max_clips=max_clips)
                    key = (c.frontend.sample_rate, c.window_samples, tuple(c.class_names))
                elif (c.frontend.sample_rate, c.window_samples, tuple(c.class_names)) != key:
                    raise ParameterError(f"{name}: other windows or classes than the first model")
                broken = _broken(model, clips, eps=eps, steps=steps, strong_steps=strong_steps, seed=seed)
                train_seed = card.get("train_config", {}).get("seed")
                found = [{"arm": arm, "model": name, "train_seed": train_seed, "clip_id": cid, "recording": recording_of(cid),
                          "pgd_broken": int(broken[0][k]), "worst_broken": int(broken[0][k] | broken[1][k])}
                         for k, cid in enumerate(clips.clip_ids)]
                if journal is not None:
                    journal.add(pd.DataFrame(found))
            if windows is not None:
                windows += found
            metrics = card.get("metrics", {}).get("test", {})
            pgd = np.array([r["pgd_broken"] for r in found], dtype=float)
            worst = np.array([r["worst_broken"] for r in found], dtype=float)
            rows.append({
                "arm": arm, "model": name, "train_seed": card.get("train_config", {}).get("seed"),
                "split_scheme": card.get("data", {}).get("split_scheme", "manifest"),
                "test_cmap": metrics.get("window", {}).get("cmap", np.nan),
                "test_rec_cmap": metrics.get("recording", {}).get("cmap", np.nan),
                "test_rec_top1": metrics.get("recording", {}).get("top1", np.nan),
                "pgd_success": float(pgd.mean()), "worst_success": float(worst.mean()),
                "n_clips": len(found), "eps": eps,
            })
            done += 1
            if progress:
                progress(done, total)
    return pd.DataFrame(rows)


def _broken(model, clips, *, eps: float, steps: int, strong_steps: int, seed: int) -> list[np.ndarray]:
    """Per window, whether PGD-``steps`` (true labels) and APGD-``strong_steps`` (margin of the clean answer) changed the
    model's clean top-1: two bool arrays of shape (n_windows,)."""
    from core.attacks import APGD, PGD, OutputMargin, OutputUntargeted

    device = next(model.parameters()).device
    x = torch.as_tensor(clips.waveforms, device=device)
    y = torch.as_tensor(clips.labels, device=device)
    m = torch.as_tensor(clips.masks, device=device)
    broken = []
    for attack, labels in ((PGD(eps=eps, steps=steps, seed=seed, objective=OutputUntargeted()), y),
                           (APGD(eps=eps, steps=strong_steps, seed=seed + 1, objective=OutputMargin()), None)):
        ok = []
        for i in range(0, len(x), 8):
            xa = attack(model, x[i : i + 8], None if labels is None else labels[i : i + 8], mask=m[i : i + 8])
            with torch.no_grad():
                ok.append((model(xa).argmax(-1) != model(x[i : i + 8]).argmax(-1)).cpu().numpy())
        broken.append(np.concatenate(ok))
    return broken


def _arms_journal(out, arms: dict[str, list[str]], dataset, resume: bool, **options):
    """The resumable per-window table of :func:`arm_table`, keyed by the data, every model's weights and ``options``."""
    from core.io.journal import ResumableTable, dataset_identity, weights_fingerprint
    from core.models.registry import load_checkpoint

    weights = {n: weights_fingerprint(load_checkpoint(n)) for n in dict.fromkeys(n for names in arms.values() for n in names)}
    settings = {"study": "arms", "data": dataset_identity(dataset), "arms": arms, "models": weights, **options}
    return ResumableTable(out, settings, ("arm", "model"), resume=resume)


def arm_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation (ddof 1) and min/max per arm of every metric of :func:`arm_table`."""
    cols = ["test_cmap", "test_rec_cmap", "test_rec_top1", "pgd_success", "worst_success"]
    g = table.groupby("arm", sort=False)[cols]
    out = g.mean().add_suffix(" mean").join(g.std(ddof=1).add_suffix(" sd")).join(g.min().add_suffix(" min")).join(g.max().add_suffix(" max"))
    out.insert(0, "n_seeds", g.size())
    return out.reset_index()


def arm_markdown(table: pd.DataFrame) -> str:
    """README table: per arm, mean ± sd over seeds (and the number of seeds)."""
    s = arm_summary(table)
    eps = float(table["eps"].iloc[0])
    head = (f"| arm | seeds | test cmAP (window) | test top-1 (recording) | PGD success at eps {eps:g} | "
            f"worst-case success at eps {eps:g} |")
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    def f(r, c):
        return f"{r[c + ' mean']:.3f} ± {r[c + ' sd']:.3f}" if np.isfinite(r[c + " sd"]) else f"{r[c + ' mean']:.3f}"

    for _, r in s.iterrows():
        cells = " | ".join(f(r, c) for c in ("test_cmap", "test_rec_top1", "pgd_success", "worst_success"))
        lines.append(f"| {r['arm']} | {int(r['n_seeds'])} | {cells} |")
    return "\n".join(lines)


def control_arm(arms) -> str | None:
    """The arm the others are compared with: ``"OT+FT"`` (the AT arms' matched control) when present, else ``"OT"``."""
    names = list(arms)
    return "OT+FT" if "OT+FT" in names else "OT" if "OT" in names else None


def arm_differences(windows: pd.DataFrame, *, control: str | None = None, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each arm's PGD and worst-case success minus the control's, with hierarchical bootstrap intervals.

    Parameters
    ----------
    windows : pandas.DataFrame
        :func:`arm_table`'s per-window rows.
    control : str, optional
        Default :func:`control_arm`.
    n_boot, seed : int
        :func:`core.metrics.hierarchical_difference` (recordings, then seeds, resampled).

    Returns
    -------
    pandas.DataFrame
        ``arm, control, measure`` (``pgd_success`` or ``worst_success``), ``effect, ci_low, ci_high, p_two_sided,
        n_recordings, n_seeds_arm, n_seeds_control, n_boot``; empty without a control.
    """
    from core.metrics import hierarchical_difference

    arms = list(dict.fromkeys(windows["arm"]))
    control = control or control_arm(arms)
    rows = []
    if control is None:
        return pd.DataFrame(rows)
    for arm in arms:
        if arm == control:
            continue
        for measure, col in (("pgd_success", "pgd_broken"), ("worst_success", "worst_broken")):
            rows.append({"arm": arm, "control": control, "measure": measure,
                         **hierarchical_difference(windows, arm, control, col, n_boot=n_boot, seed=seed)})
    return pd.DataFrame(rows)


def differences_markdown(diffs: pd.DataFrame) -> str:
    """docs/ table of :func:`arm_differences`: difference of success rates [percentage points] with its 95 % interval,
    the bootstrap p and, beside it, the p Holm-adjusted over every difference of the table (both measures of every
    arm; :func:`core.metrics.holm_cells`)."""
    from core.metrics import format_p, holm_cells

    adjusted = holm_cells(diffs["p_two_sided"].to_numpy(dtype=float), diffs["n_boot"].to_numpy(dtype=float)) if len(diffs) else []
    holm_of = {(r.arm, r.measure): h for r, h in zip(diffs.itertuples(index=False), adjusted)}
    lines = [f"| arm | against | PGD success: difference [95 % CI] | p | p (Holm, {len(diffs)}) | worst-case success: difference "
             f"[95 % CI] | p | p (Holm, {len(diffs)}) | recordings | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def cells(r, arm, m):
        return (f"{100 * r.loc[m, 'effect']:+.1f} [{100 * r.loc[m, 'ci_low']:+.1f}, {100 * r.loc[m, 'ci_high']:+.1f}] | "
                f"{format_p(r.loc[m, 'p_two_sided'], int(r.loc[m, 'n_boot']))} | {holm_of[(arm, m)]}")

    for arm, part in diffs.groupby("arm", sort=False):
        r = part.set_index("measure")
        first = r.iloc[0]
        lines.append(f"| {arm} | {first['control']} | {cells(r, arm, 'pgd_success')} | {cells(r, arm, 'worst_success')} | "
                     f"{int(first['n_recordings'])} | {int(first['n_seeds_arm'])} vs {int(first['n_seeds_control'])} |")
    return "\n".join(lines)
