"""Attacks on explanations: a quiet change that keeps the model's top-1 species but moves its explanation.

Three attacks on one window, each an L-inf PGD in the waveform domain (:class:`core.attacks.pgd.PGD`: random start,
``steps`` sign steps of size ``alpha``, projection onto the eps-ball and onto [-1, 1]; Madry et al. 2018) on an
objective of this module, ``value(x') - gamma * max(0, kappa - margin(x'))``, where ``margin = z_c - max_{j != c} z_j``
is the logit margin of the clean top-1 class ``c`` and ``kappa`` (default half the clean margin) the margin to keep:
the hinge stands in for the output term ``gamma ||g(x') - g(x)||^2`` of Dombrowski et al. 2019 ("Explanations can be
manipulated and geometry is to blame", NeurIPS, Eq. 4), which asks to keep every output rather than the top-1 only.

- :func:`prototype_swap`: the most active prototype of class ``c`` gives way to another of its prototypes
  (Hoffmann et al. 2021, "This looks like that... does it? Shortcomings of latent space prototype interpretability
  in deep networks", arXiv:2105.02968: perturbations that change prototype similarities while the class stays).
  ``value = a_q - max_{p in P_c, p != q} a_p`` for a chosen prototype ``q``, else ``max_{p in P_c, p != p*} a_p - a_p*``
  (``a``: prototype activations, the max of each similarity map; ``P_c``: the prototypes of class ``c``; ``p*``: the
  clean top one). Moved: ``p*`` is no longer the most active of ``P_c`` (and, with ``q``, ``q`` is).
- :func:`peak_shift`: the peak of ``p*``'s similarity map goes to a chosen (time, frequency) cell, or at least
  ``min_cells`` cells away: ``value = max_{A} S - max_{not A} S`` over the cells ``A`` allowed. Moved: the peak is in ``A``.
- :func:`attribution_shift`: the positive gradient x input of ``c``'s logit (:func:`core.field.attribution.grad_x_input`,
  on its Hz x s grid) gathers in a chosen Hz x s rectangle: ``value`` = the rectangle's share of the positive
  attribution (cells partly inside count by their overlap). Its gradient is a second derivative of the model (double
  backpropagation, ``create_graph=True``), as in Dombrowski et al. 2019, who replace ReLU by softplus because a ReLU
  network's second derivatives vanish. They do not vanish here: AudioProtoPNet's similarity is a cosine of normalised
  features (and the small models' backbone uses GELU), so the Hessian of the logit is non-zero on the shipped models
  (measured ``||H v||`` = 4.7 ``||g||`` on ``protopnet``, 10 ``||g||`` on ``birdnet_protopnet`` and on plain ``birdnet``,
  ``g`` the gradient in the input spectrogram, ``v`` a standard normal direction) and the true model is used
  throughout; :func:`curvature_vanishes` checks a model, and a model whose second derivatives do vanish is refused
  with that reason. Moved: the share rose by at least ``min_gain``.

Success is "the top-1 class is still ``c`` AND the explanation moved"; a window whose label changed is a failure,
never a success. Of the iterates (all inside the budget) the attack returns the best one that keeps the label and
moves the explanation, else the best one that keeps the label, else the last. Every figure of the result is measured
afterwards on the returned waveform through the model's own path (``model.forward_all`` for logits, activations and
similarity maps, :func:`~core.field.attribution.grad_x_input` for the attribution), with metrics from
:mod:`core.field.explanation_metrics`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from core.attacks.objectives import Objective
from core.attacks.pgd import PGD
from core.errors import ParameterError
from core.field.attribution import attribution_grid, input_axes
from core.field.explanation_measure import ExplanationAttackResult, build_result, map_axes, region_weights
from core.models.base import BirdClassifier

__all__ = ["KINDS", "ExplanationAttackResult", "prototype_swap", "peak_shift", "attribution_shift", "curvature_vanishes",
           "explanation_attack", "smallest_eps"]

KINDS = ("prototype_swap", "peak_shift", "attribution_shift")
#: Ranks of an iterate: label kept and explanation moved, then label kept, then the objective's value.
_FEASIBLE, _KEPT = 100.0, 10.0


def _number(name: str, value, low: float, high: float, *, low_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value)
    if not ok or not (low < value <= high if low_open else low <= value <= high):
        raise ParameterError(f"{name} must be a number in {'(' if low_open else '['}{low:g}, {high:g}], got {value!r}")
    return float(value)


def _window(model, waveform) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One window as ``(1, window_samples)`` on the model's device, zero-padded, and the mask of its real samples."""
    x = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform
    try:
        x = np.asarray(x, np.float32)
    except (TypeError, ValueError):
        raise ParameterError(f"waveform must be a float array, got {type(waveform).__name__}") from None
    if x.ndim == 2 and x.shape[0] == 1:
        x = x[0]
    n = int(getattr(model.config, "window_samples", None) or round(model.clip_seconds * model.sample_rate))
    if x.ndim != 1 or not 0 < len(x) <= n:
        raise ParameterError(f"waveform must be one window of 1 to {n} samples (n_samples,), got shape {x.shape}")
    if not np.isfinite(x).all() or np.abs(x).max() > 1.0:
        raise ParameterError("waveform must be finite full-scale audio in [-1, 1]")
    if not np.any(x):
        raise ParameterError("the window is silent: it has no explanation to move")
    device = next(model.parameters()).device
    padded, mask = np.zeros((1, n), np.float32), np.zeros((1, n), np.float32)
    padded[0, : len(x)], mask[0, : len(x)] = x, 1.0
    return torch.as_tensor(padded, device=device), torch.as_tensor(mask, device=device), len(x)


def _needs_prototypes(model, out) -> None:
    if out.similarity_maps is None or not hasattr(model, "prototype_class_identity"):
        raise ParameterError(f"this attack needs a prototype model (AudioProtoPNet or a prototype head), got arch "
                             f"{getattr(model.config, 'arch', type(model).__name__)!r}")


def _margin(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``z_c - max_{j != c} z_j`` per row: > 0 exactly when ``c`` is the top-1 class."""
    own = logits.gather(1, c[:, None])[:, 0]
    return own - logits.scatter(1, c[:, None], float("-inf")).amax(-1)


class ExplanationObjective(Objective):
    """``value - gamma * relu(kappa - margin)`` for one kind of explanation move; records the best iterate it sees.

    Subclasses implement :meth:`terms`. The attack's loop calls :meth:`loss` once per iterate (the start included), so
    the best iterate (label kept and explanation moved, then label kept, then the highest value) is kept in the state
    (``best_x``, ``best_score``) and :func:`_run` adds the last iterate.

    Parameters
    ----------
    gamma : float > 0
        Weight of the hinge on the logit margin.
    keep_margin : float >= 0 or None [logit]
        ``kappa``; default half the clean margin.
    """

    name = "explanation"
    space = "explanation"
    success_definition = "top-1 kept and the explanation moved"

    def __init__(self, *, gamma: float = 10.0, keep_margin: float | None = None) -> None:
        self.gamma = _number("gamma", gamma, 0.0, 1e6, low_open=True)
        self.keep_margin = None if keep_margin is None else _number("keep_margin", keep_margin, 0.0, 1e6)

    def describe(self) -> dict:
        return {"name": self.name, "gamma": self.gamma, "keep_margin": self.keep_margin}

    @torch.no_grad()
    def prepare(self, model, x, labels=None) -> dict:
        out = model.forward_all(x)
        c = out.logits.argmax(-1)
        m = _margin(out.logits, c)
        kappa = 0.5 * m if self.keep_margin is None else torch.full_like(m, self.keep_margin)
        state = {"source_class": c, "keep_margin": kappa, "best_x": x.clone(),
                 "best_score": torch.full_like(m, -math.inf)}
        state.update(self._prepare(model, x, out, state))
        return state

    def attack_state(self, model, x, labels=None):
        return self.prepare(model, x, labels)

    def criterion(self) -> dict:
        """The settings that decide "moved", as :func:`~core.field.explanation_measure.build_result` takes them."""
        return {}

    def terms(self, model, x_adv, state, *, create_graph: bool):
        """``(value, margin, moved)``, each ``(batch,)``; value and margin differentiable in ``x_adv``."""
        raise NotImplementedError

    def loss(self, model, x_adv, state):
        value, margin, moved = self.terms(model, x_adv, state, create_graph=True)
        self.track(x_adv, value, margin, moved, state)
        return value - self.gamma * F.relu(state["keep_margin"] - margin)

    @torch.no_grad()
    def track(self, x_adv, value, margin, moved, state) -> None:
        """Keep ``x_adv``'s rows that rank above the best so far (label kept and moved > label kept > value)."""
        kept = margin.detach() > 0
        score = value.detach() + _KEPT * kept + _FEASIBLE * (kept & moved)
        take = score > state["best_score"]
        state["best_x"] = torch.where(take[:, None], x_adv.detach(), state["best_x"])
        state["best_score"] = torch.where(take, score, state["best_score"])


class SwapObjective(ExplanationObjective):
    """Another prototype of the clean top-1 class becomes its most active (see :func:`prototype_swap`)."""

    name = "prototype-swap"

    def __init__(self, target_prototype: int | None = None, **kw) -> None:
        super().__init__(**kw)
        if target_prototype is not None and (isinstance(target_prototype, bool) or not isinstance(target_prototype, (int, np.integer))):
            raise ParameterError(f"target_prototype must be a prototype index or None, got {target_prototype!r}")
        self.target_prototype = None if target_prototype is None else int(target_prototype)

    def criterion(self) -> dict:
        return {"target_prototype": self.target_prototype}

    def _prepare(self, model, x, out, state):
        _needs_prototypes(model, out)
        owner = model.prototype_class_identity.to(x.device)
        c = int(state["source_class"][0])
        protos = torch.nonzero(owner == c).flatten()
        if len(protos) < 2:
            raise ParameterError(f"class {model.class_names[c]!r} has {len(protos)} prototype(s): there is none to swap to")
        top = int(protos[out.prototype_activations[0, protos].argmax()])
        q = self.target_prototype
        if q is not None and (q not in protos.tolist() or q == top):
            raise ParameterError(f"target_prototype must be another prototype of the predicted class {model.class_names[c]!r} "
                                 f"(one of {[p for p in protos.tolist() if p != top]}), got {q}")
        b = x.shape[0]
        slot = lambda p: torch.full((b,), protos.tolist().index(p), dtype=torch.long, device=x.device)  # noqa: E731
        return {"class_prototypes": protos.expand(b, -1), "top_slot": slot(top),
                "target_slot": slot(q) if q is not None else torch.full((b,), -1, dtype=torch.long, device=x.device)}

    def terms(self, model, x_adv, state, *, create_graph):
        out = model.forward_all(x_adv)
        a = out.prototype_activations.gather(1, state["class_prototypes"])
        targeted = state["target_slot"] >= 0
        chosen = torch.where(targeted, state["target_slot"], state["top_slot"])
        own = a.gather(1, chosen[:, None])[:, 0]
        others = a.scatter(1, chosen[:, None], float("-inf")).amax(-1)
        value = torch.where(targeted, own - others, others - own)
        best = a.argmax(-1)
        moved = torch.where(targeted, best == state["target_slot"], best != state["top_slot"])
        return value, _margin(out.logits, state["source_class"]), moved


class PeakObjective(ExplanationObjective):
    """The peak of the clean top prototype's similarity map moves into a set of cells (see :func:`peak_shift`).

    Parameters
    ----------
    target : (float, float) or None [s], [Hz]
        The peak should move to the map cell nearest this (time, frequency) (:attr:`target_cell` once prepared).
    min_cells : int >= 1
        Without a target: the peak should move at least this many cells (Chebyshev distance).
    """

    name = "peak-shift"

    def __init__(self, target: tuple[float, float] | None = None, min_cells: int = 2, **kw) -> None:
        super().__init__(**kw)
        if isinstance(min_cells, bool) or not isinstance(min_cells, (int, np.integer)) or min_cells < 1:
            raise ParameterError(f"min_cells must be an integer >= 1, got {min_cells!r}")
        self.min_cells, self.point, self.target_cell = int(min_cells), None, None
        if target is not None:
            try:
                t, f = (float(v) for v in target)
            except (TypeError, ValueError):
                raise ParameterError(f"target must be (time [s], frequency [Hz]), got {target!r}") from None
            if not (math.isfinite(t) and math.isfinite(f) and t >= 0 and f > 0):
                raise ParameterError(f"target must be (time >= 0 s, frequency > 0 Hz), got {target!r}")
            self.point = (t, f)

    def criterion(self) -> dict:
        return {"target_cell": self.target_cell, "min_cells": self.min_cells}

    def _prepare(self, model, x, out, state):
        _needs_prototypes(model, out)
        c = int(state["source_class"][0])
        protos = torch.nonzero(model.prototype_class_identity.to(x.device) == c).flatten()
        p = int(protos[out.prototype_activations[0, protos].argmax()])
        sim = out.similarity_maps[0, p]
        n_f, n_t = sim.shape
        rows, cols = torch.meshgrid(torch.arange(n_f, device=x.device), torch.arange(n_t, device=x.device), indexing="ij")
        if self.point is not None:
            t, f = self.point
            if t > model.clip_seconds or f > model.sample_rate / 2:
                raise ParameterError(f"target ({t:g} s, {f:g} Hz) lies outside the window (0-{model.clip_seconds:g} s, "
                                     f"0-{model.sample_rate / 2:g} Hz)")
            hz, ts = map_axes(model, x.shape[1], (n_f, n_t))
            self.target_cell = (int(np.argmin(np.abs(np.log(hz) - np.log(f)))), int(np.argmin(np.abs(ts - t))))
            allowed = (rows == self.target_cell[0]) & (cols == self.target_cell[1])
        else:
            pi, pj = divmod(int(sim.argmax()), n_t)
            allowed = torch.maximum((rows - pi).abs(), (cols - pj).abs()) >= self.min_cells
            if not bool(allowed.any()):
                raise ParameterError(f"no cell of the {n_f} x {n_t} similarity map lies {self.min_cells} cells from its peak "
                                     f"({pi}, {pj}): choose a smaller min_cells")
        b = x.shape[0]
        return {"prototype": torch.full((b,), p, dtype=torch.long, device=x.device), "allowed": allowed.flatten().expand(b, -1)}

    def terms(self, model, x_adv, state, *, create_graph):
        out = model.forward_all(x_adv)
        idx = state["prototype"][:, None, None, None].expand(-1, 1, *out.similarity_maps.shape[2:])
        s = out.similarity_maps.gather(1, idx)[:, 0].flatten(1)
        inside = s.masked_fill(~state["allowed"], float("-inf")).amax(-1)
        outside = s.masked_fill(state["allowed"], float("-inf")).amax(-1)
        value = inside - outside
        return value, _margin(out.logits, state["source_class"]), value.detach() > 0


class AttributionObjective(ExplanationObjective):
    """The share of positive gradient x input of the top-1 logit inside a Hz x s rectangle (see :func:`attribution_shift`).

    The map is :func:`core.field.attribution.grad_x_input`'s (median baseline, the same grid), computed here
    differentiably: ``d z_c / d s`` with ``create_graph=True`` at ``s = model.frontend(x')``, so the attack's gradient
    holds the model's second derivatives (double backpropagation).
    """

    name = "attribution-shift"

    def __init__(self, band_hz, span_s, *, min_gain: float = 0.1, bands_per_octave: int = 3, cell_s: float = 0.25, **kw) -> None:
        super().__init__(**kw)
        self.band_hz, self.span_s = band_hz, span_s
        self.min_gain = _number("min_gain", min_gain, 0.0, 1.0, low_open=True)
        self.bands_per_octave, self.cell_s = bands_per_octave, cell_s

    def criterion(self) -> dict:
        return {"band_hz": tuple(self.band_hz), "span_s": tuple(self.span_s), "min_gain": self.min_gain}

    def _prepare(self, model, x, out, state):
        with torch.no_grad():
            n_frames = model.frontend(x[:1]).shape[-1]
        self.grid = attribution_grid(input_axes(model, x.shape[1], n_frames), bands_per_octave=self.bands_per_octave,
                                     cell_s=self.cell_s)
        w = region_weights(self.grid.frequency_edges_hz, self.grid.time_edges_s, self.band_hz, self.span_s)
        weight = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        if not bool((weight > 0).any()):
            raise ParameterError(f"the region {self.band_hz} Hz x {self.span_s} s holds no cell of the attribution grid")
        state = dict(state, region_weight=weight.expand(x.shape[0], -1, -1))
        with torch.enable_grad():
            share, _, _ = self._share(model, x, state, create_graph=False)
        return {"region_weight": state["region_weight"], "clean_share": share.detach()}

    def _share(self, model, x, state, *, create_graph):
        x = x if x.requires_grad else x.detach().requires_grad_(True)  # a spectrogram that depends on the window
        s = model.frontend(x)
        base = s.median(dim=-1, keepdim=True).values
        out = model.outputs_from_features(model.features_from_spectrogram(s))
        z = out.logits.gather(1, state["source_class"][:, None])[:, 0]
        (g,) = torch.autograd.grad(z.sum(), s, create_graph=create_graph)
        pos = F.relu(self.grid.pool(g * (s - base)))
        share = (pos * state["region_weight"]).sum((1, 2)) / pos.sum((1, 2)).clamp_min(1e-12)
        return share, out, z

    def terms(self, model, x_adv, state, *, create_graph):
        share, out, _ = self._share(model, x_adv, state, create_graph=create_graph)
        return share, _margin(out.logits, state["source_class"]), share.detach() >= state["clean_share"] + self.min_gain


def curvature_vanishes(model, waveform, *, seed: int = 0) -> bool:
    """Whether the second derivatives of the top-1 logit vanish at a window (a piecewise-linear model, e.g. ReLU only).

    Computes ``H v``, the Hessian of the top-1 logit in the model's input spectrogram times a random direction ``v``
    (one double backward pass). Dombrowski et al. 2019 (NeurIPS, Sec. 4) show that for a ReLU network ``H = 0`` almost
    everywhere, so an attack on a gradient explanation gets no gradient from the explanation term; they attack a
    softplus copy instead.

    Parameters
    ----------
    model : BirdClassifier
    waveform : array [shape=(n_samples,)], one window, full-scale amplitude
    seed : int
        Seeds ``v``.

    Returns
    -------
    bool
        True when ``||H v|| <= 1e-12 ||v||`` (or the gradient has no graph to differentiate).
    """
    x, _, _ = _window(model, waveform)
    with PGD.eval_mode(model), torch.enable_grad():
        s = model.frontend(x).detach().requires_grad_(True)
        z = model.forward_head(model.features_from_spectrogram(s))
        (g,) = torch.autograd.grad(z[0, z[0].argmax()], s, create_graph=True)
        if not g.requires_grad:
            return True
        v = torch.randn(s.shape, generator=torch.Generator().manual_seed(seed)).to(s)
        (h,) = torch.autograd.grad((g * v).sum(), s, allow_unused=True)
    return h is None or float(h.norm()) <= 1e-12 * float(v.norm())


def _settings(model, eps, steps, alpha, k) -> tuple[float, int, float]:
    if not isinstance(model, BirdClassifier):
        raise ParameterError(f"model must be a BirdClassifier, got {type(model).__name__}")
    eps = _number("eps", eps, 0.0, 1.0, low_open=True)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or not 1 <= steps <= 1000:
        raise ParameterError(f"steps must be an integer in [1, 1000], got {steps!r}")
    alpha = 2.5 * eps / int(steps) if alpha is None else _number("alpha", alpha, 1e-6 * eps, 10.0 * eps)
    n_protos = getattr(model, "n_prototypes", None)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1 or (n_protos and k > n_protos):
        raise ParameterError(f"k must be an integer in [1, {n_protos or 'n_prototypes'}], got {k!r}")
    return eps, int(steps), alpha


def _run(kind: str, objective: ExplanationObjective, model, waveform, *, eps, steps, alpha, seed, k,
         grid: dict) -> ExplanationAttackResult:
    """PGD on ``objective`` from a random start (:class:`core.attacks.pgd.PGD`'s loop and projection), then the measurement."""
    eps, steps, alpha = _settings(model, eps, steps, alpha, k)
    x, mask, n_valid = _window(model, waveform)
    attack = PGD(eps=eps, steps=steps, alpha_ratio=alpha / eps, seed=seed, objective=objective)
    x, _, mask = attack.check_inputs(x, None, mask)
    with attack.eval_mode(model), torch.enable_grad():
        state = objective.attack_state(model, x)
        last = attack.perturb(model, x, attack.budget(x, mask), state, mask, attack.start_noise(x))
        objective.track(last, *objective.terms(model, last, state, create_graph=False), state)
    settings = dict(eps=eps, alpha=alpha, steps=steps, seed=seed, n_valid=n_valid)
    clean, adv = x[0].cpu().numpy(), state["best_x"][0].detach().cpu().numpy()
    return build_result(kind, model, clean, adv, int(state["source_class"][0]), settings=settings, k=int(k),
                        **objective.criterion(), **grid)


def prototype_swap(model, waveform, *, eps: float, steps: int = 20, alpha: float | None = None, seed: int = 0,
                   target_prototype: int | None = None, gamma: float = 10.0, keep_margin: float | None = None, k: int = 3,
                   bands_per_octave: int = 3, cell_s: float = 0.25) -> ExplanationAttackResult:
    """Keep the top-1 class, change which of its prototypes is the most active (Hoffmann et al. 2021).

    L-inf PGD (Madry et al. 2018) on ``value - gamma * relu(kappa - margin)`` with ``value = a_q - max_{p in P_c, p != q}
    a_p`` for a chosen ``q``, else ``max_{p in P_c, p != p*} a_p - a_p*`` (see the module docstring).

    Parameters
    ----------
    model : BirdClassifier
        A prototype model (AudioProtoPNet, a prototype head on BirdNET).
    waveform : np.ndarray or torch.Tensor [shape=(n_samples,) or (1, n_samples), dtype=float32]
        One window at ``model.sample_rate`` [Hz], at most ``model.config.window_samples`` samples (shorter ones are
        zero-padded; the padding is never perturbed), full-scale amplitude in [-1, 1].
    eps : float in (0, 1] [full-scale amplitude]
        L-inf budget: ``max |delta| <= eps``.
    steps : int in [1, 1000]
    alpha : float, optional [full-scale amplitude]
        Step size; default ``2.5 eps / steps``; at most ``10 eps``.
    seed : int in [0, 2**31)
        Seeds the random start (:meth:`core.attacks.base.Attack.start_noise`).
    target_prototype : int, optional
        A prototype of the clean top-1 class, other than its most active one, to make the most active.
    gamma : float > 0
        Weight of the hinge on the logit margin.
    keep_margin : float >= 0, optional [logit]
        ``kappa``, the margin the hinge keeps; default half the clean margin.
    k : int in [1, n_prototypes]
        Of the top-k prototype overlap.
    bands_per_octave, cell_s :
        The attribution grid of the measurement (:func:`core.field.attribution.attribution_grid`).

    Returns
    -------
    ExplanationAttackResult
        ``success``: the top-1 class is kept and another prototype of it is now the most active (``target_prototype``
        when given).

    Raises
    ------
    ParameterError
        A model without prototypes, a bad window, eps, steps, alpha, seed, gamma, keep_margin or k, a class with one
        prototype, or a ``target_prototype`` that is not another prototype of the predicted class.
    """
    objective = SwapObjective(target_prototype, gamma=gamma, keep_margin=keep_margin)
    return _run("prototype_swap", objective, model, waveform, eps=eps, steps=steps, alpha=alpha, seed=seed, k=k,
                grid=dict(bands_per_octave=bands_per_octave, cell_s=cell_s))


def peak_shift(model, waveform, *, eps: float, steps: int = 20, alpha: float | None = None, seed: int = 0,
               target: tuple[float, float] | None = None, min_cells: int = 2, gamma: float = 10.0,
               keep_margin: float | None = None, k: int = 3, bands_per_octave: int = 3, cell_s: float = 0.25) -> ExplanationAttackResult:
    """Keep the top-1 class, move the peak of its most active prototype's similarity map.

    L-inf PGD on ``max_A S - max_{not A} S - gamma * relu(kappa - margin)``: ``S`` the similarity map of the clean
    window's most active prototype of its top-1 class, ``A`` the cell nearest ``target`` or every cell at least
    ``min_cells`` from the clean peak (Chebyshev distance, in map cells).

    Parameters
    ----------
    model, waveform, eps, steps, alpha, seed, gamma, keep_margin, k, bands_per_octave, cell_s :
        As :func:`prototype_swap`.
    target : (float, float), optional [s], [Hz]
        ``(time, frequency)`` in the window on the Clip page's axes (:func:`~core.field.explanation_measure.map_axes`);
        the peak should move to the map cell nearest it (in s, and in log frequency).
    min_cells : int >= 1
        Without ``target``: the peak should move at least this many map cells along time or frequency.

    Returns
    -------
    ExplanationAttackResult
        ``success``: the top-1 class is kept and the peak is in the target cell (or ``min_cells`` away).

    Raises
    ------
    ParameterError
        As :func:`prototype_swap`; a target outside the window or not two finite numbers; ``min_cells`` < 1 or so
        large that no cell of the map qualifies.
    """
    objective = PeakObjective(target, min_cells, gamma=gamma, keep_margin=keep_margin)
    return _run("peak_shift", objective, model, waveform, eps=eps, steps=steps, alpha=alpha, seed=seed, k=k,
                grid=dict(bands_per_octave=bands_per_octave, cell_s=cell_s))


def attribution_shift(model, waveform, *, eps: float, band_hz: tuple[float, float], span_s: tuple[float, float] | None = None,
                      steps: int = 20, alpha: float | None = None, seed: int = 0, min_gain: float = 0.1, gamma: float = 10.0,
                      keep_margin: float | None = None, k: int = 3, bands_per_octave: int = 3,
                      cell_s: float = 0.25) -> ExplanationAttackResult:
    """Keep the top-1 class, move the gradient x input evidence for it into a Hz x s rectangle (double backprop).

    L-inf PGD on ``share_R(x') - gamma * relu(kappa - margin)``, ``share_R`` the rectangle's share of the positive
    gradient x input of the top-1 logit (Shrikumar et al. 2016, with the median baseline of
    :func:`core.field.attribution.grad_x_input`), differentiated through the gradient itself (Dombrowski et al. 2019,
    NeurIPS: the attack's gradient holds the model's Hessian; ``create_graph=True``).

    Parameters
    ----------
    model : BirdClassifier
        Any model (with prototypes, the result also carries the prototype metrics).
    waveform, eps, steps, alpha, seed, gamma, keep_margin, k :
        As :func:`prototype_swap`.
    band_hz : (float, float) [Hz]
        The rectangle's frequency range, low < high.
    span_s : (float, float), optional [s]
        Its time range in the window; default the whole window.
    min_gain : float in (0, 1]
        The share must rise by at least this much (0.1: ten percentage points).
    bands_per_octave, cell_s :
        The attribution grid, of the attack and of the measurement.

    Returns
    -------
    ExplanationAttackResult
        ``success``: the top-1 class is kept and the share inside the rectangle rose by ``min_gain``.

    Raises
    ------
    ParameterError
        As :func:`prototype_swap` (prototypes not needed); a rectangle that is not two increasing pairs of finite
        numbers or holds no grid cell; ``min_gain`` outside (0, 1]; a model whose second derivatives vanish at the
        window (:func:`curvature_vanishes`: the attack would get no gradient from the explanation; Dombrowski et al.
        attack a softplus copy of such a network, which no shipped model needs and this module does not build).
    """
    if span_s is None:
        span_s = (0.0, float(model.clip_seconds) if isinstance(model, BirdClassifier) else 0.0)
    objective = AttributionObjective(band_hz, span_s, min_gain=min_gain, bands_per_octave=bands_per_octave, cell_s=cell_s,
                                     gamma=gamma, keep_margin=keep_margin)
    _settings(model, eps, steps, alpha, k)
    if curvature_vanishes(model, waveform):
        raise ParameterError("this model's second derivatives vanish at this window (it is piecewise linear in its input "
                             "spectrogram), so the attack gets no gradient from the explanation; Dombrowski et al. 2019 "
                             "attack a softplus copy of such a network, which this module does not build")
    return _run("attribution_shift", objective, model, waveform, eps=eps, steps=steps, alpha=alpha, seed=seed, k=k,
                grid=dict(bands_per_octave=bands_per_octave, cell_s=cell_s))


_ATTACKS = {"prototype_swap": prototype_swap, "peak_shift": peak_shift, "attribution_shift": attribution_shift}


def explanation_attack(kind: str, model, waveform, **kwargs) -> ExplanationAttackResult:
    """Run one of :data:`KINDS` by name with its keyword arguments (:func:`prototype_swap`, :func:`peak_shift`,
    :func:`attribution_shift`).

    Raises
    ------
    ParameterError
        An unknown kind, an argument the attack does not take, or the attack's own errors.
    """
    if kind not in _ATTACKS:
        raise ParameterError(f"kind must be one of {KINDS}, got {kind!r}")
    try:
        return _ATTACKS[kind](model, waveform, **kwargs)
    except TypeError as exc:
        raise ParameterError(f"{kind}: {exc}") from None


def smallest_eps(kind: str, model, waveform, epsilons, **kwargs) -> tuple[ExplanationAttackResult | None, list[dict]]:
    """The smallest budget of a grid at which an explanation attack succeeds on a window: the SNR it needs.

    Parameters
    ----------
    kind : one of :data:`KINDS`
    model, waveform :
        As the attack.
    epsilons : sequence of float in (0, 1] [full-scale amplitude]
        Tried in increasing order; the search stops at the first success.
    **kwargs
        The attack's other arguments.

    Returns
    -------
    (ExplanationAttackResult or None, list of dict)
        The first successful result (None when none succeeded) and one row per budget tried: ``eps``, ``snr_db``
        [dB], ``success``, ``label_kept``, ``moved``.

    Raises
    ------
    ParameterError
        An empty grid, or the attack's errors.
    """
    grid = sorted(float(e) for e in epsilons)
    if not grid:
        raise ParameterError("epsilons must hold at least one budget")
    rows = []
    for eps in grid:
        r = explanation_attack(kind, model, waveform, eps=eps, **kwargs)
        rows.append(dict(eps=eps, snr_db=r.snr_db, success=r.success, label_kept=r.label_kept, moved=r.moved))
        if r.success:
            return r, rows
    return None, rows
