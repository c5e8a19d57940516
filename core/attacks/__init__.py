"""Waveform-domain adversarial attacks."""

from core.attacks.base import Attack, clean_prediction_targets, multilabel_loss
from core.attacks.pgd import FGSM, PGD

__all__ = ["Attack", "PGD", "FGSM", "multilabel_loss", "clean_prediction_targets"]
