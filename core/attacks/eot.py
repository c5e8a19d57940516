"""Expectation over transformation (EOT): an attack objective averaged over random draws of a transformation.

``loss(x) = 1/K sum_k L(T_k(x))`` (Athalye et al. 2018, "Synthesizing robust adversarial examples", ICML, Eq. 1;
Qin et al. 2019, "Imperceptible, robust, and targeted adversarial examples for automatic speech recognition", ICML,
Sec. 5). Every clip gets its own draws: for each of the ``K`` samples of each step, each clip draws its own
transformation of a :class:`core.attacks.threats.Mixture` and its own parameters (room, distance, noise level,
loudspeaker lag), from a generator seeded by (``seed``, the clip's content, the step, the sample). So the draws do
not depend on which other clips share the batch, on how an eps grid is cut into passes, or on which batches ran
before (an interrupted study that resumes gets the same perturbations).
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from core.attacks.objectives import Objective
from core.errors import ParameterError

__all__ = ["EOT", "clip_seeds"]


def clip_seeds(x: torch.Tensor) -> torch.Tensor:
    """A 63-bit seed per clip from its samples (BLAKE2b of the float32 bytes), ``(batch,)`` int64."""
    rows = x.detach().to("cpu", torch.float32).contiguous().numpy()
    return torch.as_tensor([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little") >> 1 for r in rows],
                           dtype=torch.int64, device=x.device)


class EOT(Objective):
    """Expectation over transformation: the wrapped objective's loss averaged over random draws of a transformation.

    The clean state, the evaluation and success are the wrapped objective's, on the untransformed clip. The state
    carries three more per-clip tensors: ``eot_clean`` (the clean clips, for transformations that play the
    perturbation apart, e.g. :class:`core.attacks.threats.Loudspeaker`), ``eot_seed`` (:func:`clip_seeds`) and
    ``eot_step`` (gradient steps taken so far).

    Parameters
    ----------
    objective : Objective
    transform : core.attacks.threats.Transform
    samples : int in [1, 64]
        Draws per gradient step (K).
    seed : int >= 0

    Raises
    ------
    ParameterError
        ``samples`` outside [1, 64], a negative seed, or an objective that is not an :class:`Objective`.
    """

    def __init__(self, objective: Objective, transform, samples: int = 4, seed: int = 0) -> None:
        if isinstance(samples, bool) or not isinstance(samples, int) or not 1 <= samples <= 64:
            raise ParameterError(f"samples must be an integer in [1, 64], got {samples!r}")
        if not isinstance(objective, Objective):
            raise ParameterError(f"objective must be an Objective, got {type(objective).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ParameterError(f"seed must be an integer >= 0, got {seed!r}")
        self.inner, self.transform, self.samples, self.seed = objective, transform, samples, int(seed)
        self.name = f"eot:{objective.name}"
        self.space, self.targeted = objective.space, objective.targeted
        self.success_definition = objective.success_definition

    def describe(self) -> dict:
        return {"name": "eot", "objective": self.inner.describe(), "transform": self.transform.describe(), "samples": self.samples,
                "seed": self.seed}

    def check_model(self, model) -> None:
        self.inner.check_model(model)

    def _with_draws(self, state: dict, x: torch.Tensor) -> dict:
        return {**state, "eot_clean": x.detach(), "eot_seed": clip_seeds(x),
                "eot_step": torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)}

    def prepare(self, model, x, labels=None):
        return self._with_draws(self.inner.prepare(model, x, labels), x)

    def attack_state(self, model, x, labels=None):
        return self._with_draws(self.inner.attack_state(model, x, labels), x)

    def draw(self, clip_seed: int, step: int, sample: int) -> np.random.Generator:
        """The generator of one clip's draw at one step and sample."""
        return np.random.default_rng([self.seed, int(clip_seed), int(step), int(sample)])

    def loss(self, model, x_adv, state):
        sr = int(model.config.frontend.sample_rate)
        clean, seeds, steps = state["eot_clean"], state["eot_seed"].tolist(), state["eot_step"].tolist()
        state["eot_step"] += 1  # in place: the next call is the next step (the state is this batch's own copy)
        total = 0.0
        for k in range(self.samples):
            rows = [self.transform(x_adv[i : i + 1], sr, self.draw(seeds[i], steps[i], k), clean=clean[i : i + 1])
                    for i in range(x_adv.shape[0])]
            total = total + self.inner.loss(model, torch.cat(rows).clamp(-1.0, 1.0), state)
        return total / self.samples

    def evaluate(self, out, state):
        return self.inner.evaluate(out, state)
