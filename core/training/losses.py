"""Training losses."""

from __future__ import annotations

import torch

__all__ = ["asymmetric_loss"]


def asymmetric_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    gamma_neg: float = 4.0,
    gamma_pos: float = 1.0,
    clip: float = 0.05,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Asymmetric loss for multi-label classification, mean over batch and classes.

    Ridnik et al. 2021, "Asymmetric Loss For Multi-Label Classification" (ICCV),
    Eq. 7: focusing exponents ``gamma_pos``/``gamma_neg`` and probability shifting
    ``clip`` on negatives. Defaults are AudioProtoPNet's (gamma_neg 4, gamma_pos 1,
    clip 0.05).

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
    targets : torch.Tensor [shape=(batch, n_classes)], values in [0, 1] (soft targets allowed)

    Returns
    -------
    torch.Tensor, scalar
    """
    p = torch.sigmoid(logits)
    p_neg = (p - clip).clamp(min=0) if clip > 0 else p  # shifted probability for negatives
    loss_pos = targets * torch.log(p.clamp(min=eps)) * (1 - p).pow(gamma_pos)
    loss_neg = (1 - targets) * torch.log((1 - p_neg).clamp(min=eps)) * p_neg.pow(gamma_neg)
    return -(loss_pos + loss_neg).mean()
