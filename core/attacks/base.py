"""Base class of waveform-domain adversarial attacks (after foolbox and torchattacks).

``Attack.__call__`` validates the input, puts the model in eval mode, runs the
attack and restores the model's previous mode. Gradients are taken with
``torch.autograd.grad`` with respect to the input only; the model's parameters
never receive ``.grad``.

Every attack is a gradient ascent on an :class:`~core.attacks.objectives.Objective`
inside an L-inf or L2 ball of radius ``eps`` (full-scale amplitude) around the
clean waveform, clipped to explicit ``bounds``. FGSM, BIM and PGD differ only in
the number of steps, the step size and the random start, so the loop lives here
and each attack file configures it.

The budget is either ``eps`` (amplitude) or ``snr_db``: a target signal-to-noise
ratio that is turned into a per-clip eps by :func:`core.metrics.eps_for_snr`.
Internally every row of a batch carries its own eps, which is what lets
:func:`core.studies.sweep.run_sweep` put a whole eps grid on the batch axis.
"""

from __future__ import annotations

import contextlib
import math
import zlib

import torch

from core.attacks.losses import predicted_sets
from core.errors import ParameterError

__all__ = ["Attack", "NORMS", "clean_prediction_targets", "predicted_sets"]

NORMS = ("linf", "l2")


#: Targets of an untargeted output-space attack when no labels are given.
clean_prediction_targets = predicted_sets


def _check_finite_number(name: str, value, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise ParameterError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


class Attack:
    """Gradient ascent on an objective inside an L-inf or L2 eps-ball of the waveform.

    Parameters
    ----------
    eps : float, optional [full-scale amplitude]
        Radius of the ball: ``max|delta| <= eps`` (``norm="linf"``, eps in [0, 1]) or
        ``||delta||_2 <= eps`` over a clip's samples (``norm="l2"``, eps in [0, 1000]).
    snr_db : float, optional [dB]
        Budget as a target SNR relative to each clip instead of ``eps``; exactly one
        of ``eps`` and ``snr_db`` is given. The per-clip eps is
        :func:`core.metrics.eps_for_snr`, so the perturbation's SNR is >= ``snr_db``.
    norm : {"linf", "l2"}
    steps : int in [1, 1000]
    alpha_ratio : float > 0, optional
        Step size as a multiple of each clip's eps (``alpha = alpha_ratio * eps``);
        default ``2.5 / steps`` (Madry et al. 2018).
    random_start : bool
        Start from a point drawn uniformly in the ball (uniform per sample for
        L-inf; for L2 a Gaussian direction with radius ``U ** (1 / n)``, which is
        uniform in the n-ball, Muller 1959; in high dimension it lies near the sphere).
    seed : int in [0, 2**31)
        Seeds the random start, per clip (see :meth:`start_noise`): the same seed
        and clip always give the same adversarial clip, alone or in any batch.
    objective : Objective, optional
        What the attack maximises; default untargeted output space
        (:class:`~core.attacks.objectives.OutputUntargeted`).
    bounds : (float, float)
        Valid sample range, ``(-1.0, 1.0)`` for full-scale audio; enforced explicitly.
    restarts : int in [1, 100]
        Independent random starts (needs ``random_start``); per clip the result of
        the first restart that succeeds is kept, else the one with the highest
        objective (as in Madry et al. 2018's evaluation and AutoAttack).

    Raises
    ------
    ParameterError
        Both or neither of ``eps``/``snr_db``; eps negative, not finite or beyond its
        range; ``snr_db`` outside [-20, 120] dB; bad norm, steps, alpha_ratio, bounds
        or restarts.
    """

    name = "attack"

    def __init__(
        self,
        *,
        eps: float | None = None,
        snr_db: float | None = None,
        norm: str = "linf",
        steps: int = 10,
        alpha_ratio: float | None = None,
        random_start: bool = True,
        seed: int = 0,
        objective=None,
        bounds: tuple[float, float] = (-1.0, 1.0),
        restarts: int = 1,
    ) -> None:
        from core.attacks.objectives import Objective, OutputUntargeted

        if norm not in NORMS:
            raise ParameterError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        if (eps is None) == (snr_db is None):
            raise ParameterError("give exactly one budget: eps (full-scale amplitude) or snr_db (dB)")
        self.eps = None if eps is None else _check_finite_number("eps", eps, 0.0, self.eps_max(norm))
        self.snr_db = None if snr_db is None else _check_finite_number("snr_db", snr_db, -20.0, 120.0)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1000:
            raise ParameterError(f"steps must be an integer in [1, 1000], got {steps!r}")
        self.steps = steps
        if alpha_ratio is not None:
            alpha_ratio = _check_finite_number("alpha_ratio", alpha_ratio, 1e-6, 10.0)
        self.alpha_ratio = alpha_ratio if alpha_ratio is not None else 2.5 / steps
        self.random_start = bool(random_start)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise ParameterError(f"seed must be an integer in [0, 2**31), got {seed!r}")
        self.seed = seed
        objective = OutputUntargeted() if objective is None else objective
        if not isinstance(objective, Objective):
            raise ParameterError(f"objective must be an Objective, got {type(objective).__name__}")
        if getattr(objective, "needs_random_start", False) and not self.random_start:
            raise ParameterError(f"the {objective.name} objective has no gradient at the clean clip: use an attack with a "
                                 "random start (pgd or apgd), not fgsm or bim")
        self.objective = objective
        lo, hi = bounds
        if not lo < hi:
            raise ParameterError(f"bounds must be (low, high) with low < high, got {bounds}")
        self.bounds = (float(lo), float(hi))
        if isinstance(restarts, bool) or not isinstance(restarts, int) or not 1 <= restarts <= 100:
            raise ParameterError(f"restarts must be an integer in [1, 100], got {restarts!r}")
        if restarts > 1 and not self.random_start:
            raise ParameterError("restarts > 1 need a random start (they would all give the same result)")
        self.restarts = restarts

    @staticmethod
    def eps_max(norm: str) -> float:
        """Largest accepted eps for a norm [full-scale amplitude]."""
        return 1.0 if norm == "linf" else 1000.0

    def describe(self) -> dict:
        """JSON-ready settings (recorded with sweep results)."""
        return {
            "attack": self.name,
            "norm": self.norm,
            "steps": self.steps,
            "alpha_ratio": self.alpha_ratio,
            "random_start": self.random_start,
            "seed": self.seed,
            "restarts": self.restarts,
            "objective": self.objective.describe(),
        }

    # -- public entry -------------------------------------------------------------------------

    def __call__(
        self,
        model: torch.nn.Module,
        waveform: torch.Tensor,
        labels: torch.Tensor | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return the adversarial waveform.

        Parameters
        ----------
        model : BirdClassifier
            Maps ``(batch, n_samples)`` waveforms to ``(batch, n_classes)`` logits.
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32 or float64]
            Clean input inside ``bounds``.
        labels : torch.Tensor [shape=(batch, n_classes)], optional
            Multi-hot true labels. Output-space untargeted attacks move away from them;
            default: the model's clean prediction (:func:`predicted_sets`).
        mask : torch.Tensor [shape=(batch, n_samples)], optional
            1 where samples may change (e.g. 0 on zero padding).

        Returns
        -------
        torch.Tensor [shape=(batch, n_samples)], the input's dtype
            ``x'`` with ``|x' - x| <= eps`` in the attack's norm and inside ``bounds``.

        Raises
        ------
        ParameterError
            Waveform not a float ``(batch, n_samples)`` tensor, NaN/inf samples, samples
            outside ``bounds``, or shapes of labels/mask that do not match.
        """
        x, labels, mask = self.check_inputs(waveform, labels, mask)
        with self.eval_mode(model):
            # restarts compare their results with objective.evaluate, which needs the full clean state
            state = self.objective.attack_state(model, x, labels) if self.restarts == 1 else self.objective.prepare(model, x, labels)
            eps = self.budget(x, mask)
            return self.perturb(model, x, eps, state, mask, self.start_noise(x))

    # -- building blocks (used by core.studies.sweep) ---------------------------------------------------

    def check_inputs(self, waveform, labels=None, mask=None):
        """Validate and return ``(waveform, labels, mask)`` detached, on the waveform's device."""
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
            raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {getattr(waveform, 'shape', type(waveform).__name__)}")
        if waveform.shape[0] == 0:
            raise ParameterError("waveform batch is empty")
        if not torch.isfinite(waveform).all():
            raise ParameterError("waveform contains NaN or inf")
        lo, hi = self.bounds
        if waveform.min() < lo - 1e-6 or waveform.max() > hi + 1e-6:
            raise ParameterError(f"waveform must lie inside bounds {self.bounds}")
        x = waveform.detach()
        if labels is not None:
            labels = torch.as_tensor(labels).to(x.device, x.dtype)
            if labels.ndim != 2 or labels.shape[0] != x.shape[0]:
                raise ParameterError(f"labels must be (batch={x.shape[0]}, n_classes), got {tuple(labels.shape)}")
        if mask is not None:
            mask = torch.as_tensor(mask).to(x.device, x.dtype)
            if mask.shape != x.shape:
                raise ParameterError(f"mask must have the waveform's shape {tuple(x.shape)}, got {tuple(mask.shape)}")
        return x, labels, mask

    @staticmethod
    @contextlib.contextmanager
    def eval_mode(model):
        """Context manager: eval mode inside; on exit every submodule gets its own previous mode back.

        Restoring per submodule (not ``model.train(was_training)``) keeps, e.g., a backbone
        frozen in eval mode during AudioProtoPNet's warm-up phase frozen after an attack.
        """
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for m, training in modes:
                m.training = training

    def budget(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Per-clip eps ``(batch,)`` [full-scale amplitude] from ``eps`` or ``snr_db``."""
        if self.eps is not None:
            return torch.full((x.shape[0],), self.eps, dtype=x.dtype, device=x.device)
        return eps_rows_for_snr(x, self.snr_db, self.norm, mask).clamp(max=self.eps_max(self.norm))

    def start_noise(self, x: torch.Tensor, restart: int = 0) -> torch.Tensor | None:
        """Unit random start ``(batch, n_samples)`` (None without random start).

        L-inf: uniform in [-1, 1] per sample; L2: uniform in the unit n-ball (a unit-L2
        Gaussian direction times ``U ** (1 / n)``, ``n = n_samples``; Muller 1959). Scaled by each row's eps in :meth:`perturb`.
        Each row is drawn from a generator seeded by a CRC-32 of ``seed`` (and
        ``restart`` when > 0) and the clip's samples, so a clip gets the same start
        whatever batch it is in.
        """
        if not self.random_start:
            return None
        rows = []
        seed_crc = zlib.crc32(self.seed.to_bytes(4, "little"))
        if restart:
            seed_crc = zlib.crc32(restart.to_bytes(4, "little"), seed_crc)
        for row in x.detach().to("cpu", torch.float32):
            # torch's CPU generator keeps 32 bits of a seed: mix seed and clip into one CRC-32
            gen = torch.Generator().manual_seed(zlib.crc32(row.numpy().tobytes(), seed_crc))
            if self.norm == "linf":
                rows.append(torch.rand(row.shape, generator=gen, dtype=torch.float64) * 2 - 1)
            else:
                d = torch.randn(row.shape, generator=gen, dtype=torch.float64)
                r = torch.rand((), generator=gen, dtype=torch.float64) ** (1.0 / row.numel())
                rows.append(d / d.norm().clamp_min(1e-12) * r)
        return torch.stack(rows).to(x.device, x.dtype)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Project onto the eps-ball around ``x`` (rows with their own eps), the mask, then ``bounds``."""
        delta = x_adv - x
        if mask is not None:
            delta = delta * mask
        e = eps[:, None]
        if self.norm == "linf":
            delta = torch.maximum(torch.minimum(delta, e), -e)
        else:
            norm = delta.norm(dim=-1, keepdim=True)
            delta = delta * torch.clamp(e / norm.clamp_min(1e-20), max=1.0)
        return (x + delta).clamp(*self.bounds)

    def step(self, grad: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Steepest-ascent step of size ``alpha`` (per row): sign for L-inf, normalised gradient for L2."""
        if self.norm == "linf":
            return alpha[:, None] * grad.sign()
        return alpha[:, None] * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def perturb(self, model, x, eps, state, mask=None, noise=None) -> torch.Tensor:
        """Run the ascent for rows with eps ``(batch,)``; ``state`` from ``objective.prepare``.

        ``noise`` is the first restart's unit start (:meth:`start_noise`); further
        restarts draw their own. Rows with eps 0 are returned unchanged. The model
        must already be in eval mode.
        """
        best = self.ascent(model, x, eps, state, mask, noise)
        if self.restarts == 1 or not bool((eps > 0).any()):
            return best
        with torch.no_grad():
            ev = self.objective.evaluate(model.forward_all(best), state)
        best_ok, best_val = ev["success"].bool(), ev["objective"]
        for r in range(1, self.restarts):
            if bool(best_ok.all()):
                break
            cand = self.ascent(model, x, eps, state, mask, self.start_noise(x, r))
            with torch.no_grad():
                ev = self.objective.evaluate(model.forward_all(cand), state)
            ok, val = ev["success"].bool(), ev["objective"]
            take = ~best_ok & (ok | (val > best_val))
            best = torch.where(take[:, None], cand, best)
            best_val = torch.where(take, val, best_val)
            best_ok = best_ok | ok
        return best

    def ascent(self, model, x, eps, state, mask=None, noise=None) -> torch.Tensor:
        """One run of the ascent from one start (``noise``: unit start or None); see :meth:`perturb`."""
        x_adv = x.clone()
        if not bool((eps > 0).any()):
            return x_adv
        if noise is not None:
            x_adv = self.project(x, x + eps[:, None] * noise, eps, mask)
        alpha = self.alpha_ratio * eps
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            loss = self.objective.loss(model, x_adv, state).sum()
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = self.project(x, x_adv.detach() + self.step(grad, alpha), eps, mask)
        return x_adv.detach()


def eps_rows_for_snr(x: torch.Tensor, snr_db: float, norm: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-clip eps ``(batch,)`` for a target SNR; see :func:`core.metrics.eps_for_snr`."""
    from core.metrics import eps_for_snr

    w = x if mask is None else x * mask
    n = None if mask is None else mask.sum(-1).clamp_min(1)
    return eps_for_snr(w, snr_db, norm=norm, n_samples=n)
