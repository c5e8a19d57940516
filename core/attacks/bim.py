"""Basic iterative method (BIM), L-inf and L2.

Kurakin, Goodfellow & Bengio 2017, "Adversarial examples in the physical world"
(ICLR workshop), Eq. 3: iterated FGSM steps of size ``alpha`` from the clean input
(zero start), each projected back onto the eps-ball. Identical to PGD without the
random start, so it is deterministic.
"""

from __future__ import annotations

from core.attacks.base import Attack
from core.errors import ParameterError

__all__ = ["BIM"]


class BIM(Attack):
    """BIM: ``steps`` ascent steps from the clean waveform (no random start).

    Parameters are those of :class:`~core.attacks.base.Attack` without ``random_start``.
    """

    name = "bim"

    def __init__(self, **kwargs) -> None:
        if kwargs.pop("random_start", False):
            raise ParameterError("BIM starts from the clean input; use PGD for a random start")
        super().__init__(random_start=False, **kwargs)
