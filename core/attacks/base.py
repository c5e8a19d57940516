"""Base class of waveform-domain adversarial attacks (after foolbox/torchattacks).

``Attack.__call__`` validates the input, puts the model in eval mode, runs
``_perturb`` and restores the model's previous mode. Gradients are taken with
``torch.autograd.grad`` with respect to the input only; the model's parameters
never receive ``.grad``.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from core.errors import ParameterError

__all__ = ["Attack", "multilabel_loss", "clean_prediction_targets"]


def multilabel_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-clip multi-label loss: binary cross-entropy summed over classes, shape ``(batch,)``."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1)


@torch.no_grad()
def clean_prediction_targets(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Multi-hot targets from a clean prediction: classes with sigmoid >= threshold.

    A clip with no class above the threshold gets its top-1 class, so the attack
    always has something to move away from.

    Returns
    -------
    torch.Tensor [shape=(batch, n_classes), dtype=float32]
    """
    y = (torch.sigmoid(logits) >= threshold).float()
    empty = y.sum(-1) == 0
    if empty.any():
        y[empty, logits[empty].argmax(-1)] = 1.0
    return y


class Attack:
    """Base class: an L-inf bounded, untargeted perturbation of the waveform.

    Parameters
    ----------
    eps : float >= 0 [full-scale amplitude]
        L-inf budget: ``max |x' - x| <= eps``.
    bounds : (float, float)
        Valid sample range, ``(-1.0, 1.0)`` for full-scale audio; enforced explicitly.

    Raises
    ------
    ParameterError
        ``eps`` negative, not finite or > 1 (wider than full scale); bad bounds.
    """

    name = "attack"

    def __init__(self, *, eps: float, bounds: tuple[float, float] = (-1.0, 1.0)) -> None:
        if not isinstance(eps, (int, float)) or not math.isfinite(eps) or not 0 <= eps <= 1:
            raise ParameterError(f"eps must be in [0, 1] (full-scale amplitude), got {eps}")
        lo, hi = bounds
        if not lo < hi:
            raise ParameterError(f"bounds must be (low, high) with low < high, got {bounds}")
        self.eps = float(eps)
        self.bounds = (float(lo), float(hi))

    def __call__(
        self,
        model: torch.nn.Module,
        waveform: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the adversarial waveform.

        Parameters
        ----------
        model : torch.nn.Module
            Maps ``(batch, n_samples)`` waveforms to ``(batch, n_classes)`` logits.
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32]
            Clean input inside ``bounds``.
        targets : torch.Tensor [shape=(batch, n_classes)], optional
            Multi-hot labels to move away from (true labels when known); default:
            the model's clean prediction (:func:`clean_prediction_targets`).
        mask : torch.Tensor [shape=(batch, n_samples)], optional
            1 where samples may change (e.g. 0 on zero padding).

        Returns
        -------
        torch.Tensor [shape=(batch, n_samples), dtype=float32]
            ``x'`` with ``|x' - x|_inf <= eps`` and ``x'`` inside ``bounds``.
        """
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
            raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {getattr(waveform, 'shape', waveform)}")
        if not torch.isfinite(waveform).all():
            raise ParameterError("waveform contains NaN or inf")
        lo, hi = self.bounds
        if waveform.min() < lo - 1e-6 or waveform.max() > hi + 1e-6:
            raise ParameterError(f"waveform must lie inside bounds {self.bounds}")
        was_training = model.training
        model.eval()
        try:
            x = waveform.detach()
            if targets is None:
                with torch.no_grad():
                    targets = clean_prediction_targets(model(x))
            targets = targets.to(x.device, x.dtype)
            if mask is not None:
                mask = mask.to(x.device, x.dtype)
            if self.eps == 0:
                return x.clone()
            return self._perturb(model, x, targets, mask).detach()
        finally:
            model.train(was_training)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Project onto the eps-ball around ``x`` (and the mask), then into ``bounds``."""
        delta = (x_adv - x).clamp(-self.eps, self.eps)
        if mask is not None:
            delta = delta * mask
        return (x + delta).clamp(*self.bounds)

    def _perturb(self, model, x, targets, mask) -> torch.Tensor:
        raise NotImplementedError
