"""Multi-label losses and predicted label sets shared by the attacks and their objectives."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-clip multi-label loss: binary cross-entropy summed over classes, shape ``(batch,)``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)


@torch.no_grad()
def predicted_sets(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Multi-hot predicted label sets: classes with sigmoid >= threshold.

    A clip with no class above the threshold gets its top-1 class, so a
    prediction is never empty.

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
    threshold : float in (0, 1)

    Returns
    -------
    torch.Tensor [shape=(batch, n_classes), dtype=float32]
    """
    y = (torch.sigmoid(logits) >= threshold).float()
    empty = y.sum(-1) == 0
    if empty.any():
        y[empty, logits[empty].argmax(-1)] = 1.0
    return y
