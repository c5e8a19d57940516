"""Worst case over attacks: a transfer attack and stronger white-box attacks after PGD.

One PGD run is a lower bound on what an attacker achieves: too few steps, an
unlucky start, a loss whose gradient says little about the decision, or masked
gradients (Athalye et al. 2018) all make a model look more robust than it is.
AutoAttack (Croce & Hein 2020) therefore reports, per input, the worst case over a
set of diverse attacks, running each further attack only on the inputs that
survived the previous ones. :func:`worst_case_tables` does the same for the
untargeted output-space sweep of :func:`core.studies.compare.run_compare`:

1. ``pgd``: the PGD-k table of the comparison (multi-label BCE against the labels);
2. ``transfer``: PGD-k made on another model (the *source*, see
   :func:`transfer_sources`) of the same windows and replayed on the target, on every
   clip (a black-box attack that cannot be fooled by the target's gradients);
3. APGD (:class:`~core.attacks.APGD`) on the margin loss, on the rows still unbroken;
4. PGD with more steps and random restarts (BCE), on the rows still unbroken.

Success is the same for all: the top-1 species differs from the clean top-1
(threshold-free). A ``worst-case`` row per (eps, clip) succeeds if any attack did;
its scores and distances are those of the first successful attack in the order
above (of the last one run when none succeeded), and ``worst_by`` names it.

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

__all__ = ["ATTACK_ORDER", "strong_attacks", "transfer_sources", "worst_case_tables", "worst_case_windows", "masking_check",
           "worst_case_label"]

#: Attacks of the worst case, in the order they are run.
ATTACK_ORDER = ("pgd", "transfer", "apgd", "pgd-restarts")
TOP1_CHANGED = "top-1 differs from the clean top-1"


def worst_case_label(steps: int, strong_steps: int, restarts: int, transfer: bool = True) -> str:
    """Words for the worst case, e.g. ``"worst case over PGD-10, transfer PGD-10, APGD-50, PGD-50x2"``."""
    parts = [f"PGD-{steps}"] + ([f"transfer PGD-{steps}"] if transfer else []) + [f"APGD-{strong_steps}", f"PGD-{strong_steps}x{restarts}"]
    return "worst case over " + ", ".join(parts)


def strong_attacks(strong_steps: int, restarts: int, seed: int) -> tuple:
    """The white-box attacks run after PGD and the transfer attack, in order, as ``(name, attack, with_labels)``.

    APGD (Croce & Hein 2020) on the margin loss, which works on the clean top-1 (no labels), then PGD with
    ``restarts`` random starts on the BCE against the true labels (``with_labels``). Both use ``seed + 1`` so
    their starts differ from the first PGD's; their eps is set per row by :meth:`~core.attacks.base.Attack.perturb`.
    """
    from core.attacks import APGD, PGD, OutputMargin, OutputUntargeted

    return (("apgd", APGD(eps=0.0, steps=strong_steps, seed=seed + 1, objective=OutputMargin()), False),
            ("pgd-restarts", PGD(eps=0.0, steps=strong_steps, restarts=restarts, seed=seed + 1, objective=OutputUntargeted()), True))


def worst_case_windows(model, waveforms, eps, *, labels=None, masks=None, source=None, steps: int = 10,
                       strong_steps: int = 50, restarts: int = 2, seed: int = 0, chunk: int = 8) -> dict:
    """Per-window worst case of one model: the attacks of :func:`worst_case_tables`, each on the windows still unbroken.

    In :data:`ATTACK_ORDER`: PGD-``steps`` (BCE), the transfer attack (PGD-``steps`` made on ``source`` and
    replayed on ``model``; skipped without a source), then :func:`strong_attacks`. Success is threshold-free:
    the top-1 species differs from the clean top-1. A window keeps the result of the first attack that broke
    it, else the last attack's (as the worst-case rows of the tables).

    Parameters
    ----------
    model : BirdClassifier
    waveforms : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
        Windows at the model's rate, full-scale amplitude in [-1, 1].
    eps : float or np.ndarray [shape=(n_windows,)] [full-scale amplitude]
        L-inf budget of every attack.
    labels : np.ndarray [shape=(n_windows, n_classes)], optional
        Multi-hot true labels of the BCE attacks; default each window's clean prediction.
    masks : np.ndarray [shape=(n_windows, window_samples)], optional
        1 where samples may change (0 on zero padding); default all 1.
    source : BirdClassifier, optional
        Model of the transfer attack, with ``model``'s rate and window length.
    steps, strong_steps, restarts, seed, chunk : int
        Steps of PGD and the transfer attack; steps of the strong attacks; restarts of the last PGD;
        seed of the first PGD (the strong attacks use ``seed + 1``); windows attacked together.

    Returns
    -------
    dict
        ``adversarial`` (n_windows, window_samples) float32, ``success`` (n_windows,) bool, ``attack``
        (n_windows,) str (the attack whose result each window keeps), ``clean_scores`` and ``scores``
        (n_windows, n_classes) sigmoid scores before and after.
    """
    from core.attacks import PGD, OutputUntargeted

    x = np.asarray(waveforms, dtype=np.float32)
    n = len(x)
    eps = np.broadcast_to(np.asarray(eps, dtype=np.float64), (n,)).copy()
    m = np.ones_like(x) if masks is None else np.asarray(masks, dtype=np.float32)
    device = next(model.parameters()).device

    def scores_of(xs):
        with torch.no_grad():
            return np.concatenate([torch.sigmoid(model(torch.as_tensor(xs[i : i + chunk], device=device))).float().cpu().numpy()
                                   for i in range(0, len(xs), chunk)])

    clean = scores_of(x)
    top = clean.argmax(-1)
    first = PGD(eps=0.0, steps=steps, seed=seed, objective=OutputUntargeted())
    runs = [("pgd", first, True, model)] + ([("transfer", first, True, source)] if source is not None else [])
    runs += [(name, attack, with_labels, model) for name, attack, with_labels in strong_attacks(strong_steps, restarts, seed)]
    adv, scores = x.copy(), clean.copy()
    by, broken = np.full(n, "", dtype=object), np.zeros(n, bool)
    for k, (name, attack, with_labels, on) in enumerate(runs):
        todo = np.flatnonzero(~broken)
        if not len(todo):
            break
        y = None if labels is None or not with_labels else np.asarray(labels, dtype=np.float32)[todo]
        xa, sc = _rows_attack(attack, on, x[todo], y, m[todo], eps[todo], chunk=chunk)
        if on is not model:
            sc = scores_of(xa)
        succ = sc.argmax(-1) != top[todo]
        take = succ | (k == len(runs) - 1)  # the last attack's result stands for windows nobody broke
        adv[todo[take]], scores[todo[take]], by[todo[take]] = xa[take], sc[take], name
        broken[todo[succ]] = True
    return {"adversarial": adv, "success": broken, "attack": by, "clean_scores": clean, "scores": scores}


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
    seed: int = 0,
    clips_per_batch: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
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
        APGD steps; steps and restarts of the last PGD.
    seed : int
        Seed of the PGD table; the strong attacks use ``seed + 1`` so their starts differ.
    clips_per_batch : int
    progress : callable, optional
        ``progress(stage, done, total)`` with stages ``transfer`` and ``strong``.
    cancel : callable, optional
        Polled between batches; :class:`InterruptedError` when it returns True.

    Returns
    -------
    pandas.DataFrame
        Rows in the layout of :func:`core.studies.sweep.sweep_table` (clean rows included,
        so curves start at eps 0) with ``attack`` ``transfer`` (only for models with a
        source, see :func:`transfer_sources`) and ``worst-case``, plus ``worst_by``
        (the attack that made each worst-case row) and ``source`` (transfer source).
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
    for s, targets in by_source.items():
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
        clean, clean_scores, top, ok, chosen_scores, chosen_dist, by, broken = pending[name]
        model = models[name]
        for attack_name, attack, with_labels in strong_attacks(strong_steps, restarts, seed):
            todo = np.flatnonzero(~broken.reshape(-1))
            if not len(todo):
                break
            if cancel is not None and cancel():
                raise InterruptedError("comparison cancelled")
            ci, ei = flat_clip[todo], np.searchsorted(grid, flat_eps[todo])
            y = labels[ci].astype(np.float32) if with_labels else None
            adv, sc = _rows_attack(attack, model, clips.waveforms[ci], y, clips.masks[ci], flat_eps[todo], chunk=clips_per_batch * 2)
            succ = sc.argmax(-1) != top[ci]
            last = attack_name == "pgd-restarts"
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
        for attack_label, scores_arr, dist, succ_arr, by_arr, source in (
            [("transfer", transfer_scores[name], transfer_dist[name], ok["transfer"], None, sources[name])] if name in sources else []
        ) + [("worst-case", chosen_scores, chosen_dist, success, by, sources.get(name, ""))]:
            info = {"model": name, "attack": attack_label, "norm": "linf", "objective": "output-untargeted", "steps": steps,
                    "seed": seed, "success_definition": TOP1_CHANGED, "source": source}
            c = clean.copy()
            for k, v in info.items():
                c[k] = v
            c["worst_by"] = ""
            adv_loss = _bce(scores_arr.reshape(-1, len(classes)), np.tile(labels, (n_eps, 1)))
            a = pd.DataFrame({
                **info, "budget_kind": "eps", "budget": flat_eps, "clip": [clips.clip_ids[i] for i in flat_clip],
                "eps": flat_eps.astype(np.float32).astype(np.float64),  # as sweep tables store it (the attack's dtype)
                "success": succ_arr.reshape(-1), "objective_value": adv_loss,
                "prs": metrics.prs(np.tile(clean_loss, n_eps), adv_loss), "drs": np.nan, "tars": np.nan,
                **{k: dist[k].reshape(-1) for k in ("snr_db", "db_x", "linf", "l2")},
                "worst_by": "" if by_arr is None else by_arr.reshape(-1),
            })
            a = pd.concat([a, pd.DataFrame(scores_arr.reshape(-1, len(classes)), columns=score_cols),
                           pd.DataFrame(np.tile(labels, (n_eps, 1)).astype(np.float32), columns=label_cols)], axis=1)
            rows += [c, a]
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
