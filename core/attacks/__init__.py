"""Waveform-domain adversarial attacks: FGSM, BIM, PGD, APGD (L-inf and L2) on any objective, the eps-sweep engine,
the worst case over attacks, the psychoacoustic (masking-threshold) budget and realistic threats (MP3, playback, EOT);
and the converse, certificates that no small change can fool a randomized-smoothing classifier (:mod:`core.attacks.smoothing`).

May import :mod:`core.io` and :mod:`core.models`; never training, a study, the field wing, the API or the CLI.
"""

from core.attacks.apgd import APGD
from core.attacks.base import NORMS, Attack, clean_prediction_targets
from core.attacks.bim import BIM
from core.attacks.fgsm import FGSM
from core.attacks.losses import multilabel_loss, predicted_sets
from core.attacks.objectives import (
    OBJECTIVES,
    EmbeddingTargeted,
    EmbeddingUntargeted,
    Objective,
    OutputMargin,
    OutputTargeted,
    OutputTargetedMargin,
    OutputUntargeted,
    PrototypeActivate,
    PrototypeSuppress,
    make_objective,
)
from core.attacks.pgd import PGD
from core.errors import ParameterError

ATTACKS = {cls.name: cls for cls in (FGSM, BIM, PGD, APGD)}


def make_attack(name: str, **kwargs) -> Attack:
    """Build an attack by name (``fgsm``, ``bim``, ``pgd``, ``apgd``) with :class:`Attack`'s keyword arguments.

    Raises
    ------
    ParameterError
        Unknown name or invalid settings.
    """
    if name not in ATTACKS:
        raise ParameterError(f"attack must be one of {sorted(ATTACKS)}, got {name!r}")
    if name == "fgsm":
        kwargs = {k: v for k, v in kwargs.items() if k not in ("steps", "random_start", "alpha_ratio")}
    if name == "bim":
        kwargs.pop("random_start", None)
    return ATTACKS[name](**kwargs)


__all__ = [
    "ATTACKS", "NORMS", "OBJECTIVES", "APGD", "Attack", "BIM", "FGSM", "PGD", "Objective", "OutputMargin", "OutputUntargeted",
    "OutputTargeted", "OutputTargetedMargin",
    "EmbeddingUntargeted", "EmbeddingTargeted", "PrototypeSuppress", "PrototypeActivate", "make_attack", "make_objective",
    "multilabel_loss", "predicted_sets", "clean_prediction_targets",
]
