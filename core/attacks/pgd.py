"""Projected gradient descent (PGD) and FGSM in the waveform domain, L-inf.

Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks" (ICLR), Eq. 2: ``x_{t+1} = Proj_{x+S}(x_t + alpha * sign(grad_x L))``
with an optional uniform random start in the eps-ball. FGSM (Goodfellow et al.
2015) is one step of size eps without random start.
"""

from __future__ import annotations

import torch

from core.attacks.base import Attack, multilabel_loss
from core.errors import ParameterError

__all__ = ["PGD", "FGSM"]


class PGD(Attack):
    """L-inf PGD maximising the multi-label loss (untargeted).

    Parameters
    ----------
    eps : float in [0, 1] [full-scale amplitude]
    alpha : float > 0, optional [full-scale amplitude]
        Step size; default ``2.5 * eps / steps`` (Madry et al.).
    steps : int in [1, 1000]
    random_start : bool
        Start from a uniform point in the eps-ball.
    generator : torch.Generator, optional
        Seeds the random start.
    bounds : (float, float)
    """

    name = "pgd"

    def __init__(
        self,
        *,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        random_start: bool = True,
        generator: torch.Generator | None = None,
        bounds: tuple[float, float] = (-1.0, 1.0),
    ) -> None:
        super().__init__(eps=eps, bounds=bounds)
        if not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise ParameterError(f"steps must be an integer in [1, 1000], got {steps}")
        if alpha is not None and not alpha > 0:
            raise ParameterError(f"alpha must be > 0, got {alpha}")
        self.steps = steps
        self.alpha = float(alpha) if alpha is not None else 2.5 * self.eps / steps
        self.random_start = random_start
        self.generator = generator

    def _perturb(self, model, x, targets, mask):
        if self.random_start:
            noise = torch.rand(x.shape, generator=self.generator, dtype=x.dtype) * 2 - 1
            x_adv = self.project(x, x + self.eps * noise.to(x.device), mask)
        else:
            x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = multilabel_loss(model(x_adv), targets).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.project(x, x_adv.detach() + self.alpha * grad.sign(), mask)
        return x_adv


class FGSM(PGD):
    """Fast gradient sign method: one step of size eps, no random start."""

    name = "fgsm"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__(eps=eps, alpha=max(eps, 1e-12), steps=1, random_start=False, bounds=bounds)
