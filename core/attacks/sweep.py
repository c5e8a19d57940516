"""The eps-sweep engine: many eps values in one call, and the minimal flipping eps.

:func:`run_sweep` follows foolbox's ``attack(model, inputs, criterion,
epsilons=[...])`` semantics: one call, results shaped ``(n_eps, batch)``. The eps
grid is put on the batch axis: every (eps, clip) pair is one row, rows are run in
chunks with the clean pass, objective state and random start shared across the
grid. Row ``(i, j)`` gives exactly what a single attack with eps ``i`` on the same
batch and seed gives for clip ``j``.

:func:`minimal_eps` finds, per clip, the smallest eps that makes the attack
succeed, by bisection on a log scale (success of PGD is not guaranteed to be
monotone in eps, so the result is an upper bound found by the search).
Dataset-level tables built on these live in :mod:`core.studies.sweep`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from core import metrics
from core.attacks.base import Attack, eps_rows_for_snr
from core.attacks.objectives import take_rows
from core.errors import ParameterError


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
        psychoacoustic masking threshold (:func:`core.attacks.psychoacoustic.masking_excess`);
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


def budget_grid(attack: Attack, epsilons, snr_db) -> tuple[str, np.ndarray]:
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
    transforms : mapping of name -> core.attacks.threats.Transform, optional
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
    kind, grid = budget_grid(attack, epsilons, snr_db)
    if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
        raise ParameterError(f"max_rows must be an integer >= 1, got {max_rows!r}")
    x, labels, mask = attack.check_inputs(waveforms, labels, masks)
    n_eps, batch = len(grid), x.shape[0]
    threshold = None
    if masking:
        from core.attacks.psychoacoustic import masking_excess, masking_threshold

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
                    tx = t(xa, sr, clean=x[j]).clamp(*attack.bounds)  # the clean clips: for threats that play the perturbation apart
                    row[f"after:{name}"] = attack.objective.evaluate(model.forward_all(tx), st)["success"]
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
            tx = t(x, int(model.config.frontend.sample_rate), clean=x).clamp(*attack.bounds)
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
