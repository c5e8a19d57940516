"""Losses and predicted label sets shared by the attacks and their objectives: the multi-label BCE, and the
softmax cross-entropy and (targeted) DLR losses of APGD-CE, APGD-DLR and APGD-T (Croce & Hein 2020)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from core.errors import ParameterError

__all__ = ["multilabel_loss", "predicted_sets", "softmax_cross_entropy", "dlr_loss", "targeted_dlr_loss"]


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


def _check_logits(logits: torch.Tensor, least: int, what: str) -> None:
    if logits.ndim != 2 or logits.shape[-1] < least:
        raise ParameterError(f"{what} needs logits (batch, n_classes) with n_classes >= {least}, got shape {tuple(logits.shape)}")


def softmax_cross_entropy(logits: torch.Tensor, source_class: torch.Tensor) -> torch.Tensor:
    """Per-clip softmax cross-entropy of the logits against one class: the loss of APGD-CE.

    ``CE = -log softmax(z)_c = logsumexp(z) - z_c`` (Croce & Hein 2020, Sec. 4, the CE loss of APGD-CE). The
    models here are multi-label (sigmoid per class), so this treats their logits as the logits of a
    multi-class decision, as a peer library does with any classifier's logits: raising it lowers ``z_c``
    against the other logits, which is what changes the top-1 species.

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
    source_class : torch.Tensor [shape=(batch,), dtype=int64]
        The class to move away from (the clean top-1).

    Returns
    -------
    torch.Tensor [shape=(batch,)], >= 0
    """
    return F.cross_entropy(logits, source_class, reduction="none")


def dlr_loss(logits: torch.Tensor, source_class: torch.Tensor, *, eps: float = 1e-12) -> torch.Tensor:
    """Difference of logits ratio (DLR), the loss of APGD-DLR (Croce & Hein 2020, ICML, Eq. 5).

    ``DLR(z, c) = -(z_c - max_{i != c} z_i) / (z_pi1 - z_pi3)``, with ``z_pi1 >= z_pi2 >= ...`` the sorted
    logits. It is invariant to a shift and a positive rescaling of the logits, so neither an offset nor a
    saturated scale of the logits can hide the gradient, and it is > 0 exactly when ``c`` is not the top-1.
    ``eps`` keeps the denominator positive when the three largest logits tie (the reference code's 1e-12).

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)], n_classes >= 3
    source_class : torch.Tensor [shape=(batch,), dtype=int64]
    eps : float > 0

    Returns
    -------
    torch.Tensor [shape=(batch,)]

    Raises
    ------
    ParameterError
        Fewer than 3 classes (``z_pi3`` does not exist).
    """
    _check_logits(logits, 3, "the DLR loss")
    top = logits.topk(3, dim=-1).values
    own = logits.gather(1, source_class[:, None])[:, 0]
    others = logits.scatter(1, source_class[:, None], float("-inf")).amax(-1)
    return -(own - others) / (top[:, 0] - top[:, 2] + eps)


def targeted_dlr_loss(logits: torch.Tensor, source_class: torch.Tensor, target_class: torch.Tensor, *,
                      eps: float = 1e-12) -> torch.Tensor:
    """Targeted DLR, the loss of APGD-T (Croce & Hein 2020, ICML, Eq. 6).

    ``DLR_t(z, c, t) = -(z_c - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``, maximised: it pulls the target logit
    ``z_t`` above the source ``z_c``, normalised as :func:`dlr_loss`.

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)], n_classes >= 4
    source_class, target_class : torch.Tensor [shape=(batch,), dtype=int64]
    eps : float > 0

    Returns
    -------
    torch.Tensor [shape=(batch,)]

    Raises
    ------
    ParameterError
        Fewer than 4 classes (``z_pi4`` does not exist).
    """
    _check_logits(logits, 4, "the targeted DLR loss")
    top = logits.topk(4, dim=-1).values
    own = logits.gather(1, source_class[:, None])[:, 0]
    target = logits.gather(1, target_class[:, None])[:, 0]
    return -(own - target) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + eps)
