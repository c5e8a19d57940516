"""Objectives of AutoAttack's APGD legs (Croce & Hein 2020): cross-entropy, DLR and targeted DLR on the clean top-1.

Croce & Hein 2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free
attacks" (ICML). Their APGD-CE ascends the cross-entropy of the true class, APGD-DLR the difference of logits
ratio (Eq. 5) and APGD-T the targeted DLR (Eq. 6) towards each of the runner-up classes in turn. Here the class
to move away from is the clean top-1 species (the worst case counts success as "the top-1 species changed", and
reports it only over windows whose clean top-1 is a true label). The models are multi-label (a sigmoid per class),
so the softmax cross-entropy treats their logits as the logits of a 9-way decision: what a peer library such as the
Adversarial Robustness Toolbox does with a classifier's logits.

Every objective here is a function of the logits alone (:class:`LogitObjective`), so
:class:`~core.attacks.apgd.APGD` can see at every iterate whether the top-1 has already changed and keep that
iterate, as the reference implementation does. Success is always "the top-1 is no longer the clean top-1", also for
the targeted loss (APGD-T is a means to an untargeted end, as in AutoAttack).
"""

from __future__ import annotations

import torch

from core.attacks.losses import dlr_loss, softmax_cross_entropy, targeted_dlr_loss
from core.attacks.objectives import Objective
from core.errors import ParameterError

__all__ = ["LogitObjective", "OutputCrossEntropy", "OutputDLR", "OutputTargetedDLR"]


class LogitObjective(Objective):
    """An output-space objective that is a function of the logits only, moving away from the clean top-1.

    Subclasses implement :meth:`logits_loss`. State (from :meth:`prepare`): ``clean_top1`` ``(batch,)`` int64.
    """

    success_definition = "top-1 differs from the clean top-1"

    def logits_loss(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        """Per-clip quantity to maximise from logits ``(batch, n_classes)``; shape ``(batch,)``."""
        raise NotImplementedError

    def logits_success(self, logits: torch.Tensor, state: dict) -> torch.Tensor:
        """Per clip, bool ``(batch,)``: the top-1 of ``logits`` is not the clean top-1."""
        return logits.argmax(-1) != state["clean_top1"]

    def loss(self, model, x_adv, state):
        return self.logits_loss(model(x_adv), state)

    def _value(self, out, state):
        return self.logits_loss(out.logits, state)

    def _success(self, out, state):
        return self.logits_success(out.logits, state)


class OutputCrossEntropy(LogitObjective):
    """Softmax cross-entropy of the clean top-1 class (APGD-CE's loss; :func:`~core.attacks.losses.softmax_cross_entropy`)."""

    name = "output-ce"

    def logits_loss(self, logits, state):
        return softmax_cross_entropy(logits, state["clean_top1"])


class OutputDLR(LogitObjective):
    """Difference of logits ratio of the clean top-1 (APGD-DLR's loss, Croce & Hein 2020, Eq. 5).

    Needs at least 3 classes (:func:`~core.attacks.losses.dlr_loss`).
    """

    name = "output-dlr"

    def check_model(self, model):
        n = len(model.config.class_names)
        if n < 3:
            raise ParameterError(f"the DLR loss needs >= 3 classes, the model has {n}")

    def logits_loss(self, logits, state):
        return dlr_loss(logits, state["clean_top1"])


class OutputTargetedDLR(LogitObjective):
    """Targeted DLR from the clean top-1 towards the class the clean window ranks ``rank + 1`` (Eq. 6; APGD-T).

    AutoAttack's APGD-T runs once per target, the targets being the classes ranked 2nd, 3rd, ... on the clean
    input; ``rank=1`` is the runner-up. Success is untargeted: the top-1 is no longer the clean top-1.

    Parameters
    ----------
    rank : int >= 1
        The target is the clean window's class of this rank among the others (1 = runner-up).

    Raises
    ------
    ParameterError
        ``rank`` not an integer >= 1; on use, a model with fewer than 4 classes or ``rank >= n_classes``.
    """

    name = "output-targeted-dlr"

    def __init__(self, rank: int = 1) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ParameterError(f"rank must be an integer >= 1, got {rank!r}")
        self.rank = rank

    def describe(self):
        return {"name": self.name, "rank": self.rank}

    def check_model(self, model):
        n = len(model.config.class_names)
        if n < 4 or self.rank >= n:
            raise ParameterError(f"the targeted DLR loss needs >= 4 classes and rank < n_classes={n}, got rank {self.rank}")

    def _prepare(self, model, x, out, state):
        return {"target_class": out.logits.topk(self.rank + 1, dim=-1).indices[:, self.rank]}

    def logits_loss(self, logits, state):
        return targeted_dlr_loss(logits, state["clean_top1"], state["target_class"])
