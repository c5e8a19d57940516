"""Auto-PGD (APGD): PGD with momentum and a step size that adapts itself.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks" (ICML), Algorithm 1, the attack that
AutoAttack builds on. Here it ascends any :class:`~core.attacks.objectives.Objective`
(with :class:`~core.attacks.objectives.OutputUntargeted` it is APGD on the
multi-label cross-entropy; with :class:`~core.attacks.objectives.OutputMargin` a
margin loss in the spirit of APGD-DLR) inside the L-inf or L2 ball of the waveform,
clipped to the ``[-1, 1]`` sample bounds (the paper's [0, 1] image box).

Per clip: step ``eta = 2 eps``; ``z = P(x_k + eta * step(grad))``;
``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1}))`` with momentum
``a = 0.75`` (the first step has none); at the checkpoints ``w_j = ceil(p_j N)``,
``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``, the step
is halved and the iterate reset to the best point so far when fewer than
``rho = 0.75`` of the steps since the last checkpoint increased the objective, or
when neither the step nor the best objective changed since the last checkpoint.
The best point found (highest objective) is returned.
"""

from __future__ import annotations

import math

import torch

from core.attacks.base import Attack

__all__ = ["APGD", "apgd_checkpoints"]


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j`` at which APGD may halve its step (Croce & Hein 2020, Sec. 3.2).

    Parameters
    ----------
    steps : int >= 1

    Returns
    -------
    list of int, increasing, all in ``[1, steps]``
    """
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({min(steps, math.ceil(round(q * steps, 9))) for q in p[1:]})


class APGD(Attack):
    """APGD on an objective (see the module docstring); default 100 steps as in AutoAttack.

    Parameters are those of :class:`~core.attacks.base.Attack`; ``alpha_ratio`` is
    the initial step as a multiple of eps (default 2, the paper's ``eta = 2 eps``),
    and ``momentum`` (default 0.75) and ``rho`` (default 0.75) are the paper's.
    """

    name = "apgd"

    def __init__(self, *, momentum: float = 0.75, rho: float = 0.75, **kwargs) -> None:
        kwargs.setdefault("steps", 100)
        kwargs.setdefault("random_start", True)
        kwargs.setdefault("alpha_ratio", 2.0)
        super().__init__(**kwargs)
        self.momentum = float(momentum)
        self.rho = float(rho)

    def describe(self) -> dict:
        return super().describe() | {"momentum": self.momentum, "rho": self.rho}

    def _value_and_grad(self, model, x_adv, state):
        x_adv = x_adv.detach().requires_grad_(True)
        value = self.objective.loss(model, x_adv, state)
        (grad,) = torch.autograd.grad(value.sum(), x_adv)
        return value.detach(), grad

    def ascent(self, model, x, eps, state, mask=None, noise=None) -> torch.Tensor:
        if not bool((eps > 0).any()):
            return x.clone()
        checkpoints = set(apgd_checkpoints(self.steps))
        x_k = x.clone() if noise is None else self.project(x, x + eps[:, None] * noise, eps, mask)
        eta = self.alpha_ratio * eps
        f_k, grad = self._value_and_grad(model, x_k, state)
        best_x, best_f = x_k.clone(), f_k.clone()
        x_prev = x_k.clone()
        increases = torch.zeros_like(f_k)
        last_w, eta_at_last, best_at_last = 0, eta.clone(), best_f.clone()
        for k in range(self.steps):
            z = self.project(x, x_k + self.step(grad, eta), eps, mask)
            if k == 0:
                x_next = z
            else:
                a = self.momentum
                x_next = self.project(x, x_k + a * (z - x_k) + (1 - a) * (x_k - x_prev), eps, mask)
            f_next, grad_next = self._value_and_grad(model, x_next, state)
            increases += (f_next > f_k).to(increases.dtype)
            improved = f_next > best_f
            best_x = torch.where(improved[:, None], x_next, best_x)
            best_f = torch.where(improved, f_next, best_f)
            x_prev, x_k, f_k, grad = x_k, x_next, f_next, grad_next
            w = k + 1
            if w in checkpoints and w < self.steps:
                span = w - last_w
                cond1 = increases < self.rho * span
                cond2 = (eta == eta_at_last) & (best_f == best_at_last)
                halve = cond1 | cond2
                eta_at_last, best_at_last = eta.clone(), best_f.clone()
                eta = torch.where(halve, eta / 2, eta)
                if bool(halve.any()):  # restart halved rows from their best point (gradient recomputed there)
                    x_k = torch.where(halve[:, None], best_x, x_k)
                    x_prev = torch.where(halve[:, None], best_x, x_prev)
                    f_best, g_best = self._value_and_grad(model, best_x, state)
                    f_k = torch.where(halve, f_best, f_k)
                    grad = torch.where(halve[:, None], g_best, grad)
                increases.zero_()
                last_w = w
        return best_x.detach()
