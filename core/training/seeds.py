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
              windows: list | None = None) -> pd.DataFrame:
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

    Returns
    -------
    pandas.DataFrame
        ``arm, model, train_seed, split_scheme, test_cmap, test_rec_cmap, test_rec_top1, pgd_success, worst_success, n_clips, eps``.

    Raises
    ------
    ParameterError
        No arms, models that do not share windows and classes, or a model trained on another split scheme than
        ``dataset``'s (:func:`core.models.registry.check_split_scheme`).
    CheckpointError
        A checkpoint cannot be loaded.
    """
    from core.attacks import APGD, PGD, OutputMargin, OutputUntargeted
    from core.io.clips import dataset_clips
    from core.models.registry import check_split_scheme, load_checkpoint, read_model_card

    if not arms:
        raise ParameterError("no arms")
    for name in (n for names in arms.values() for n in names):  # every card before the first attack
        check_split_scheme(read_model_card(name), dataset, name)
    rows, clips, total, done = [], None, sum(len(v) for v in arms.values()), 0
    for arm, names in arms.items():
        for name in names:
            model = load_checkpoint(name)
            c = model.config
            if clips is None:
                clips = dataset_clips(dataset, split="test", class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                                      window_samples=c.window_samples, max_clips=max_clips)
                key = (c.frontend.sample_rate, c.window_samples, tuple(c.class_names))
            elif (c.frontend.sample_rate, c.window_samples, tuple(c.class_names)) != key:
                raise ParameterError(f"{name}: other windows or classes than the first model")
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
                        clean_top = model(x[i : i + 8]).argmax(-1)
                        ok.append((model(xa).argmax(-1) != clean_top).cpu().numpy())
                broken.append(np.concatenate(ok))
            metrics = model.card.get("metrics", {}).get("test", {})
            train_seed = model.card.get("train_config", {}).get("seed")
            if windows is not None:
                from core.io.clips import recording_of

                windows += [{"arm": arm, "model": name, "train_seed": train_seed, "clip_id": cid, "recording": recording_of(cid),
                             "pgd_broken": int(broken[0][k]), "worst_broken": int(broken[0][k] | broken[1][k])}
                            for k, cid in enumerate(clips.clip_ids)]
            rows.append({
                "arm": arm, "model": name, "train_seed": train_seed,
                "split_scheme": model.card.get("data", {}).get("split_scheme", "manifest"),
                "test_cmap": metrics.get("window", {}).get("cmap", np.nan),
                "test_rec_cmap": metrics.get("recording", {}).get("cmap", np.nan),
                "test_rec_top1": metrics.get("recording", {}).get("top1", np.nan),
                "pgd_success": float(broken[0].mean()), "worst_success": float((broken[0] | broken[1]).mean()),
                "n_clips": len(clips), "eps": eps,
            })
            done += 1
            if progress:
                progress(done, total)
    return pd.DataFrame(rows)


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
    """docs/ table of :func:`arm_differences`: difference of success rates [percentage points] with its 95 % interval."""
    lines = ["| arm | against | PGD success: difference [95 % CI] | worst-case success: difference [95 % CI] | recordings | seeds |",
             "|---|---|---:|---:|---:|---:|"]
    def cell(r, m):
        return f"{100 * r.loc[m, 'effect']:+.1f} [{100 * r.loc[m, 'ci_low']:+.1f}, {100 * r.loc[m, 'ci_high']:+.1f}]"

    for arm, part in diffs.groupby("arm", sort=False):
        r = part.set_index("measure")
        first = r.iloc[0]
        lines.append(f"| {arm} | {first['control']} | {cell(r, 'pgd_success')} | {cell(r, 'worst_success')} | {int(first['n_recordings'])} | "
                     f"{int(first['n_seeds_arm'])} vs {int(first['n_seeds_control'])} |")
    return "\n".join(lines)
