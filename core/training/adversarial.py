"""Adversarial training pieces: the adversarial batch (FGSM-RS / PGD, AT-O on outputs, AT-E on embeddings), the
binary KL of TRADES (Zhang et al. 2019) and adversarial weight perturbation (AWP, Wu et al. 2020)."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def adversarial_batch(model, x: torch.Tensor, y: torch.Tensor, cfg) -> torch.Tensor:
    """Training perturbations (FGSM, FGSM-RS or PGD-k, L-inf) for ``cfg.adv``; the model's modes are restored."""
    from core.attacks import FGSM, PGD, EmbeddingUntargeted, OutputUntargeted

    objective = OutputUntargeted() if cfg.adv == "at-o" else EmbeddingUntargeted()
    budget = {"snr_db": cfg.adv_snr_db} if cfg.adv_snr_db is not None else {"eps": cfg.adv_eps}
    if cfg.adv_steps == 1 and not cfg.adv_random_start:
        attack = FGSM(objective=objective, **budget)
    else:
        ratio = cfg.adv_alpha_ratio if cfg.adv_alpha_ratio is not None else (1.25 if cfg.adv_steps == 1 else None)
        # a fresh start per batch: the seed follows torch's global generator, which the training seed fixes
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        attack = PGD(steps=cfg.adv_steps, objective=objective, random_start=cfg.adv_random_start, alpha_ratio=ratio,
                     seed=seed, **budget)
    return attack(model, x, y)  # the attack restores every submodule's mode (a frozen backbone stays frozen)


def binary_kl(clean_logits: torch.Tensor, adv_logits: torch.Tensor) -> torch.Tensor:
    """Mean over clips of the summed per-class binary KL divergence KL(p_clean || p_adv).

    The multi-label form of TRADES' regulariser (Zhang et al. 2019, Eq. 5).
    """
    p = torch.sigmoid(clean_logits)
    kl = p * (F.logsigmoid(clean_logits) - F.logsigmoid(adv_logits)) + (1 - p) * (F.logsigmoid(-clean_logits) - F.logsigmoid(-adv_logits))
    return kl.sum(-1).mean()


def awp_perturb(model, loss: torch.Tensor, gamma: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Adversarial weight perturbation: move every weight tensor uphill on ``loss``, in place.

    Each weight tensor ``w`` (parameters with 2 or more dimensions; biases and norm
    scales are left alone) moves by ``v = gamma * ||w|| * g / ||g||``, ``g`` the
    gradient of ``loss``: one normalised ascent step, layer-wise relative to the
    weight's size (Wu et al. 2020, "Adversarial Weight Perturbation Helps Robust
    Generalization", Eq. 8; gamma 0.005 as in TRADES-AWP). Undo it with
    :func:`awp_restore` after the backward pass and before the optimiser step, so the
    update uses the gradient taken at the perturbed weights (the training loop also
    restores the BatchNorm statistics moved by the pass that gives the direction, and
    logs the loss at the perturbed weights).

    Parameters
    ----------
    model : torch.nn.Module
    loss : torch.Tensor, scalar with graph
    gamma : float >= 0
        Relative size of the perturbation.

    Returns
    -------
    list of (parameter, perturbation)
    """
    params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    diffs = []
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is None or not torch.isfinite(g).all() or g.norm() == 0:
                continue
            v = gamma * p.norm() * g / g.norm()
            p.add_(v)
            diffs.append((p, v))
    return diffs


def awp_restore(diffs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Undo :func:`awp_perturb`."""
    with torch.no_grad():
        for p, v in diffs:
            p.sub_(v)
