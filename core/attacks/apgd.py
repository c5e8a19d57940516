"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" (ICML), Algorithm 1 and Sec. 3.2, the attack AutoAttack builds on. Here it ascends any
:class:`~core.attacks.objectives.Objective`: with :class:`~core.attacks.logit_objectives.OutputCrossEntropy` it is
APGD-CE, with :class:`~core.attacks.logit_objectives.OutputDLR` APGD-DLR (Eq. 5), with
:class:`~core.attacks.logit_objectives.OutputTargetedDLR` APGD-T (Eq. 6); with
:class:`~core.attacks.objectives.OutputMargin` APGD on the Carlini-Wagner margin. It works inside the L-inf or L2
ball of the waveform, clipped to the ``[-1, 1]`` sample bounds (the paper's [0, 1] image box). Per clip, with
``P`` the projection onto the ball and the box and ``f`` the objective:

- step ``eta^(0) = 2 eps`` (Sec. 3.2); ``x^(1) = P(x^(0) + eta step(grad f(x^(0))))`` (Alg. 1, line 2; no momentum);
- ``z^(k+1) = P(x^(k) + eta step(grad f(x^(k))))`` and
  ``x^(k+1) = P(x^(k) + alpha (z^(k+1) - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))`` with momentum ``alpha = 0.75``
  (Alg. 1, lines 6-7);
- ``x_max, f_max``: the best point and objective so far, ``x^(0)`` included (lines 3-4, 8-10);
- checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
  (Sec. 3.2); at each ``w_j < N`` the step is halved and the iterate restarted from ``x_max`` (line 13) when
  Condition 1: fewer than ``rho (w_j - w_{j-1})`` of the steps since ``w_{j-1}`` increased ``f``
  (``sum_{i=w_{j-1}}^{w_j - 1} 1[f(x^(i+1)) > f(x^(i))] < rho (w_j - w_{j-1})``, ``rho = 0.75``), or
  Condition 2: the step was not halved at ``w_{j-1}`` and ``f_max`` has not grown since
  (``eta^(w_{j-1}) = eta^(w_j)`` and ``f_max^(w_{j-1}) = f_max^(w_j)``);
- after a restart from ``x_max`` the momentum term is zero (``x^(k-1) := x_max``) and the gradient is the one stored
  at ``x_max`` (no extra pass).

``N = steps`` iterates cost ``N`` forward+backward passes plus one forward pass (the gradient at the last iterate is
never used). The paper returns ``x_max``. For objectives that are functions of the logits
(:class:`~core.attacks.logit_objectives.LogitObjective`) every iterate's success is also known, and a clip some
iterate already broke keeps the first such iterate, as the reference implementation does (its ``x_best_adv``):
a high cross-entropy point need not be a changed top-1. With ``stop_on_success`` the ascent ends once every clip
of the batch is broken (the worst case needs no more; the objective reached is then not the maximum).
"""

from __future__ import annotations

import math

import torch

from core.attacks.base import Attack
from core.errors import ParameterError

__all__ = ["APGD", "apgd_checkpoints", "halve_step"]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j N)`` at which APGD may halve its step (Croce & Hein 2020, Sec. 3.2).

    ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, up to the first
    ``p_j >= 1``; e.g. ``N = 50`` gives 11, 21, 29, 35, 40, 44, 47, 50.

    Parameters
    ----------
    steps : int >= 1
        ``N``, the number of iterations.

    Returns
    -------
    list of int, increasing, all in ``[1, steps]``
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({min(steps, math.ceil(round(q * steps, 9))) for q in p[1:]})


def halve_step(increases: torch.Tensor, span: int, halved_last: torch.Tensor, best_f: torch.Tensor, best_at_last: torch.Tensor,
               rho: float = 0.75) -> torch.Tensor:
    """Which clips halve their step at a checkpoint ``w_j`` (Croce & Hein 2020, Sec. 3.2, Conditions 1 and 2).

    Parameters
    ----------
    increases : torch.Tensor [shape=(batch,)]
        Steps since ``w_{j-1}`` that increased the objective, ``sum_{i=w_{j-1}}^{w_j - 1} 1[f(x^(i+1)) > f(x^(i))]``.
    span : int >= 1
        ``w_j - w_{j-1}``.
    halved_last : torch.Tensor [shape=(batch,), dtype=bool]
        The step was halved at ``w_{j-1}`` (so ``eta^(w_{j-1}) != eta^(w_j)``; False at the first checkpoint).
    best_f, best_at_last : torch.Tensor [shape=(batch,)]
        ``f_max`` now and at ``w_{j-1}`` (at the first checkpoint: the objective of the start point).
    rho : float
        0.75 in the paper.

    Returns
    -------
    torch.Tensor [shape=(batch,), dtype=bool]
        Condition 1 (``increases < rho * span``) or Condition 2 (not halved at ``w_{j-1}`` and ``f_max`` unchanged).
    """
    return (increases < rho * span) | (~halved_last & (best_f == best_at_last))


class APGD(Attack):
    """APGD on an objective (see the module docstring); default 100 steps as in AutoAttack.

    Parameters
    ----------
    momentum : float in (0, 1]
        ``alpha`` of Alg. 1 (the weight of the new gradient step; 0.75 in the paper).
    rho : float in (0, 1]
        Share of increasing steps below which Condition 1 halves the step (0.75 in the paper).
    stop_on_success : bool
        End the ascent once every clip of the batch is broken (only for a
        :class:`~core.attacks.logit_objectives.LogitObjective`, whose success is seen at every iterate).
    **kwargs
        Those of :class:`~core.attacks.base.Attack`; ``alpha_ratio`` is the initial step as a multiple of
        eps (default 2, the paper's ``eta = 2 eps``), ``random_start`` defaults to True.

    Raises
    ------
    ParameterError
        Those of :class:`~core.attacks.base.Attack`, or ``momentum``/``rho`` outside (0, 1].
    """

    name = "apgd"

    def __init__(self, *, momentum: float = 0.75, rho: float = 0.75, stop_on_success: bool = False, **kwargs) -> None:
        kwargs.setdefault("steps", 100)
        kwargs.setdefault("random_start", True)
        kwargs.setdefault("alpha_ratio", 2.0)
        super().__init__(**kwargs)
        for name, value in (("momentum", momentum), ("rho", rho)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
                raise ParameterError(f"{name} must be a number in (0, 1], got {value!r}")
        self.momentum, self.rho = float(momentum), float(rho)
        self.stop_on_success = bool(stop_on_success)

    def describe(self) -> dict:
        return super().describe() | {"momentum": self.momentum, "rho": self.rho}

    def _evaluate(self, model, x_adv, state, need_grad: bool = True):
        """Objective ``(batch,)``, its gradient (None without ``need_grad``) and success ``(batch,)`` bool.

        Success is known only for a :class:`~core.attacks.logit_objectives.LogitObjective` (else all False).
        """
        from core.attacks.logit_objectives import LogitObjective

        x_adv = x_adv.detach().requires_grad_(need_grad)
        with torch.enable_grad() if need_grad else torch.no_grad():
            if isinstance(self.objective, LogitObjective):
                logits = model(x_adv)
                value = self.objective.logits_loss(logits, state)
                success = self.objective.logits_success(logits.detach(), state)
            else:
                value = self.objective.loss(model, x_adv, state)
                success = torch.zeros(value.shape, dtype=torch.bool, device=value.device)
            grad = torch.autograd.grad(value.sum(), x_adv)[0] if need_grad else None
        return value.detach(), grad, success

    def ascent(self, model, x, eps, state, mask=None, noise=None) -> torch.Tensor:
        if not bool((eps > 0).any()):
            return x.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        x_k = x.clone() if noise is None else self.project(x, x + eps[:, None] * noise, eps, mask)
        eta = self.alpha_ratio * eps
        f_k, grad, ok = self._evaluate(model, x_k, state)
        best_x, best_f, best_grad = x_k.clone(), f_k.clone(), grad.clone()  # x_max, f_max (Alg. 1, lines 3-4)
        found, found_x = ok.clone(), x_k.clone()  # first iterate whose top-1 changed (reference code's x_best_adv)
        x_prev = x_k.clone()
        increases = torch.zeros_like(f_k)
        last_w, halved_last, best_at_last = 0, torch.zeros_like(f_k, dtype=torch.bool), best_f.clone()
        for k in range(self.steps):
            if self.stop_on_success and bool(found.all()):
                break
            z = self.project(x, x_k + self.step(grad, eta), eps, mask)
            if k == 0:  # Alg. 1, line 2: the first step has no momentum
                x_next = z
            else:  # lines 6-7
                a = self.momentum
                x_next = self.project(x, x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev), eps, mask)
            w = k + 1  # index of the new iterate x^(w)
            f_next, grad_next, ok = self._evaluate(model, x_next, state, need_grad=w < self.steps)
            new = ok & ~found
            found_x = torch.where(new[:, None], x_next, found_x)
            found = found | ok
            increases += (f_next > f_k).to(increases.dtype)  # Condition 1's count
            improved = f_next > best_f  # lines 8-10
            best_x = torch.where(improved[:, None], x_next, best_x)
            best_f = torch.where(improved, f_next, best_f)
            if grad_next is not None:
                best_grad = torch.where(improved[:, None], grad_next, best_grad)
            x_prev, x_k, f_k, grad = x_k, x_next, f_next, grad_next
            if w in checkpoints and w < self.steps:  # lines 11-14
                halve = halve_step(increases, w - last_w, halved_last, best_f, best_at_last, self.rho)
                eta = torch.where(halve, eta / 2, eta)
                if bool(halve.any()):  # restart halved rows from x_max, with its stored gradient
                    x_k = torch.where(halve[:, None], best_x, x_k)
                    x_prev = torch.where(halve[:, None], best_x, x_prev)
                    f_k = torch.where(halve, best_f, f_k)
                    grad = torch.where(halve[:, None], best_grad, grad)
                halved_last, best_at_last = halve, best_f.clone()
                increases.zero_()
                last_w = w
        return torch.where(found[:, None], found_x, best_x).detach()
