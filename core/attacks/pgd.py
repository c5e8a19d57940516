"""Projected gradient descent (PGD) with random start, L-inf and L2.

Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks" (ICLR), Eq. 2: ``x_{t+1} = Proj_{x+S}(x_t + alpha * step(grad_x L))``,
starting from a random point of the eps-ball; ``step`` is the sign for L-inf and
the L2-normalised gradient for L2. Default step ``alpha = 2.5 eps / steps``.
"""

from __future__ import annotations

from core.attacks.base import Attack

__all__ = ["PGD"]


class PGD(Attack):
    """PGD: ``steps`` ascent steps from a random start in the eps-ball.

    Parameters are those of :class:`~core.attacks.base.Attack` (``eps`` or ``snr_db``,
    ``norm``, ``steps`` default 10, ``alpha_ratio``, ``seed``, ``objective``, ``bounds``).
    """

    name = "pgd"

    def __init__(self, **kwargs) -> None:
        kwargs.setdefault("random_start", True)
        super().__init__(**kwargs)
