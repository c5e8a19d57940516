"""Fast gradient sign method (FGSM) and its L2 form (fast gradient method).

Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing Adversarial
Examples" (ICLR), Eq. 3: ``x' = x + eps * sign(grad_x L)``; for L2 the step is
``eps * grad / ||grad||_2`` (Miyato et al. 2016). One step, no random start.
"""

from __future__ import annotations

from core.attacks.base import Attack
from core.errors import ParameterError

__all__ = ["FGSM"]


class FGSM(Attack):
    """FGSM: a single step of size eps from the clean waveform.

    Parameters are ``eps`` or ``snr_db``, ``norm``, ``objective``, ``bounds`` (see
    :class:`~core.attacks.base.Attack`); ``steps`` is 1 and ``alpha = eps``.
    """

    name = "fgsm"

    def __init__(self, **kwargs) -> None:
        for key, allowed in (("steps", 1), ("random_start", False), ("alpha_ratio", 1.0)):
            if kwargs.get(key, allowed) != allowed:
                raise ParameterError(f"FGSM takes a single step of size eps; {key}={kwargs[key]!r} is not allowed")
            kwargs.pop(key, None)
        super().__init__(steps=1, random_start=False, alpha_ratio=1.0, **kwargs)
