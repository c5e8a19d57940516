"""What an attack maximises: output-, embedding- and prototype-space objectives.

Every objective works on any attack (:mod:`core.attacks.fgsm`, ``bim``, ``pgd``).
An objective is used in three steps:

1. :meth:`Objective.prepare` runs the clean batch once (no gradient) and returns a *state*: a dict of tensors with the
   batch on axis 0 (clean prediction, reference labels, targets, clean feature maps...). Because every entry is per
   row, :func:`core.studies.sweep.run_sweep` can repeat the state along an eps grid.
2. :meth:`Objective.loss` is the differentiable per-clip quantity the attack ascends, shape ``(batch,)``.
3. :meth:`Objective.evaluate` scores an adversarial model output: the objective value, success, and the two distances
   used by the robustness scores.

Robustness scores (:func:`core.metrics.prs`, :func:`~core.metrics.drs`,
:func:`~core.metrics.tars`, Heinrich et al. 2023) need a loss ``L``:

- PRS always uses the output-space loss: binary cross-entropy summed over
  classes against ``y`` = the true labels when given, else the clean prediction.
  It asks "does the decision survive?" for every objective.
- DRS uses the distance to the attacker's target ``t`` in the space the attack
  targets: BCE against the target label set (output space), or the RMSE between
  representation vectors (embedding and prototype space; the reference code's
  RMSE), where the representation is the prototype activation vector for
  AudioProtoPNet and the pooled embedding for other models.
- Untargeted output/embedding attacks have no ``t``: DRS and TARS are NaN.

Success never depends on a score threshold (the models' scores are not calibrated: an asymmetric-loss AudioProtoPNet
scores absent species around 0.4): it is "the top-1 species changed" for untargeted output and embedding attacks, and
"the target is ranked first" for targeted ones (each class's ``success_definition``, shown beside the rate).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from core.attacks.losses import multilabel_loss, predicted_sets
from core.errors import ParameterError

__all__ = [
    "Objective",
    "OutputUntargeted",
    "OutputMargin",
    "OutputTargeted",
    "EmbeddingUntargeted",
    "EmbeddingTargeted",
    "PrototypeSuppress",
    "PrototypeActivate",
    "PrototypeShift",
    "OBJECTIVES",
    "make_objective",
    "spatial_cosine_dissimilarity",
    "prototype_activation_distance",
    "take_rows",
]


def spatial_cosine_dissimilarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``1 - cos`` between channel vectors of two feature maps.

    The embedding-space distance of the AT-E recipe (Heinrich et al. 2025,
    arXiv 2507.13727, "spatial-wise" cosine dissimilarity).

    Parameters
    ----------
    a, b : torch.Tensor [shape=(batch, channels, freq, time)]

    Returns
    -------
    torch.Tensor [shape=(batch,)], values in [0, 2]
    """
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).flatten(1).mean(-1)


class _EmbeddingSpace:
    """Which tensor the embedding-space objectives compare.

    The backbone feature map by default (as the AT-E recipe); the pooled embedding
    as a ``(batch, dim, 1, 1)`` map for models whose ``embedding_space`` is
    ``"embedding"`` (BirdNET: its 1,024-d ``GLOBAL_AVG_POOL``), so the spatial cosine
    dissimilarity becomes the cosine dissimilarity of the embeddings.
    """

    pooled = False

    def check_model(self, model) -> None:
        self.pooled = getattr(model, "embedding_space", "feature_map") == "embedding"

    def _features(self, model, x: torch.Tensor) -> torch.Tensor:
        return model.embed(x)[:, :, None, None] if self.pooled else model.forward_all(x).feature_map  # the map the head reads

    def _out_features(self, out) -> torch.Tensor:
        return out.embedding[:, :, None, None] if self.pooled else out.feature_map


def _rmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().mean(-1).sqrt()


def _representation(out) -> torch.Tensor:
    return out.prototype_activations if out.prototype_activations is not None else out.embedding


def take_rows(state: dict, index: torch.Tensor) -> dict:
    """Rows ``index`` of every tensor in an objective state (used to tile an eps grid)."""
    return {k: v[index] for k, v in state.items()}


def _nan(batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((batch,), float("nan"), dtype=torch.float32, device=like.device)


class Objective:
    """Base class. Subclasses set ``name``, ``space``, ``targeted`` and implement the hooks."""

    name = "objective"
    space = "output"
    targeted = False
    #: What counts as a successful attack, in words (shown with every success rate).
    success_definition = "top-1 species changed"

    def describe(self) -> dict:
        """JSON-ready settings."""
        return {"name": self.name}

    def check_model(self, model) -> None:
        """Raise :class:`ParameterError` if the objective does not apply to ``model``."""

    @torch.no_grad()
    def prepare(self, model, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Clean pass: state tensors with the batch on axis 0.

        Parameters
        ----------
        model : BirdClassifier, in eval mode
        x : torch.Tensor [shape=(batch, n_samples)]
        labels : torch.Tensor [shape=(batch, n_classes)], optional
            True multi-hot labels; default the clean prediction.
        """
        self.check_model(model)
        out = model.forward_all(x)
        pred = predicted_sets(out.logits)
        state = {
            "clean_logits": out.logits,
            "clean_pred": pred,
            "clean_top1": out.logits.argmax(-1),
            "labels": pred.clone() if labels is None else labels.to(out.logits.dtype),
            "clean_representation": _representation(out),
        }
        state.update(self._prepare(model, x, out, state))
        clean = self.evaluate(out, state)
        state["clean_objective"] = clean["objective"]
        state["clean_success"] = clean["success"]
        state["clean_prs_loss"] = clean["prs_loss"]
        state["clean_drs_loss"] = clean["drs_loss"]
        return state

    def _prepare(self, model, x, out, state) -> dict:
        return {}

    def attack_state(self, model, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """The state :meth:`loss` needs, and no more (a single attack skips the scoring of the clean clip).

        Default: :meth:`prepare`.
        """
        return self.prepare(model, x, labels)

    def loss(self, model, x_adv: torch.Tensor, state: dict) -> torch.Tensor:
        """Differentiable quantity to maximise, ``(batch,)``."""
        raise NotImplementedError

    def _value(self, out, state) -> torch.Tensor:
        raise NotImplementedError

    def _success(self, out, state) -> torch.Tensor:
        return out.logits.argmax(-1) != state["clean_top1"]

    def _drs_loss(self, out, state) -> torch.Tensor:
        return _nan(out.logits.shape[0], out.logits)

    @torch.no_grad()
    def evaluate(self, out, state: dict) -> dict:
        """Score a model output (a :class:`~core.models.base.ModelOutput`).

        Returns
        -------
        dict of torch.Tensor [shape=(batch,)]
            ``objective`` (the value the attack maximised), ``success`` (bool),
            ``prs_loss`` (BCE against ``y``), ``drs_loss`` (distance to the target;
            NaN without one).
        """
        return {
            "objective": self._value(out, state),
            "success": self._success(out, state),
            "prs_loss": multilabel_loss(out.logits, state["labels"]),
            "drs_loss": self._drs_loss(out, state),
        }


class OutputUntargeted(Objective):
    """Maximise the multi-label BCE against ``y`` (true labels, or the clean prediction).

    Success: the top-1 species differs from the clean one.
    """

    name = "output-untargeted"

    def attack_state(self, model, x, labels=None):
        if labels is None:
            return self.prepare(model, x, labels)
        self.check_model(model)
        return {"labels": labels}  # true labels given: no clean pass needed

    def loss(self, model, x_adv, state):
        return multilabel_loss(model(x_adv), state["labels"])

    def _value(self, out, state):
        return multilabel_loss(out.logits, state["labels"])


class OutputMargin(Objective):
    """Untargeted margin (Carlini & Wagner 2017, eq. 6 with kappa = infinity): push the top-1 class below the runner-up.

    ``loss = max_{j != c} z_j - z_c`` over the model's classes (for BirdNET, the
    chosen species list), where ``c`` is the clean top-1 class, or, with true
    labels, the labelled class the clean clip scores highest. It needs no score
    threshold, so it suits uncalibrated scores and many-class models alike.
    Success: the top-1 class is no longer ``c`` (threshold-free).
    """

    name = "output-margin"
    success_definition = "top-1 is not the source species (clean top-1, or its top labelled species)"

    def _prepare(self, model, x, out, state):
        logits = out.logits
        if "labels" in state and state["labels"] is not None:
            masked = logits.masked_fill(state["labels"] <= 0, float("-inf"))
            has = state["labels"].sum(-1) > 0
            c = torch.where(has, masked.argmax(-1), logits.argmax(-1))
        else:
            c = logits.argmax(-1)
        return {"source_class": c}

    def attack_state(self, model, x, labels=None):
        return self.prepare(model, x, labels)

    @staticmethod
    def _margin(logits: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        own = logits.gather(1, c[:, None])[:, 0]
        others = logits.scatter(1, c[:, None], float("-inf")).amax(-1)
        return others - own

    def loss(self, model, x_adv, state):
        return self._margin(model(x_adv), state["source_class"])

    def _value(self, out, state):
        return self._margin(out.logits, state["source_class"])

    def _success(self, out, state):
        return out.logits.argmax(-1) != state["source_class"]


class OutputTargetedMargin(Objective):
    """Make the model *say* one species: raise its logit above every other (Carlini & Wagner 2017, eq. 6, targeted).

    ``loss = z_t - max_{j != t} z_j``, maximised; no score threshold is involved, so it
    works on uncalibrated scores and on BirdNET alike. Success: ``t`` is the top-1
    species. Unlike :class:`OutputTargeted` it does not try to keep the other species:
    it is the attack of "the model now says Marsh Warbler".

    Parameters
    ----------
    class_index : int >= 0
    """

    name = "output-targeted-margin"
    targeted = True
    success_definition = "target species ranked first"

    def __init__(self, class_index: int) -> None:
        if isinstance(class_index, bool) or not isinstance(class_index, int) or class_index < 0:
            raise ParameterError(f"class_index must be an integer >= 0, got {class_index!r}")
        self.class_index = class_index

    def describe(self):
        return {"name": self.name, "class_index": self.class_index}

    def check_model(self, model):
        n = len(model.config.class_names)
        if self.class_index >= n:
            raise ParameterError(f"class_index must be < n_classes={n}, got {self.class_index}")

    def _prepare(self, model, x, out, state):
        return {"target_class": torch.full((x.shape[0],), self.class_index, dtype=torch.long, device=x.device)}

    def _margin(self, logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -OutputMargin._margin(logits, t)

    def loss(self, model, x_adv, state):
        return self._margin(model(x_adv), state["target_class"])

    def _value(self, out, state):
        return self._margin(out.logits, state["target_class"])

    def _success(self, out, state):
        return out.logits.argmax(-1) == state["target_class"]


class OutputTargeted(Objective):
    """Make a species appear (``mode="add"``) or a present one disappear (``"remove"``).

    The target label set ``t`` is the clean prediction with ``class_index`` set to 1
    (add) or 0 (remove); the attack minimises the BCE to ``t`` (maximises its negative),
    so the other species are kept. Success, by rank: the class becomes the top-1
    species (add) or is no longer it (remove).

    Parameters
    ----------
    class_index : int >= 0
    mode : {"add", "remove"}
    """

    name = "output-targeted"
    targeted = True

    def __init__(self, class_index: int, mode: str = "add") -> None:
        if isinstance(class_index, bool) or not isinstance(class_index, int) or class_index < 0:
            raise ParameterError(f"class_index must be an integer >= 0, got {class_index!r}")
        if mode not in ("add", "remove"):
            raise ParameterError(f"mode must be 'add' or 'remove', got {mode!r}")
        self.class_index, self.mode = class_index, mode

    def describe(self):
        return {"name": self.name, "class_index": self.class_index, "mode": self.mode}

    def check_model(self, model):
        n = len(model.config.class_names)
        if self.class_index >= n:
            raise ParameterError(f"class_index must be < n_classes={n}, got {self.class_index}")

    def _prepare(self, model, x, out, state):
        t = state["clean_pred"].clone()
        t[:, self.class_index] = 1.0 if self.mode == "add" else 0.0
        return {"target": t}

    def loss(self, model, x_adv, state):
        return -multilabel_loss(model(x_adv), state["target"])

    def _value(self, out, state):
        return -multilabel_loss(out.logits, state["target"])

    @property
    def success_definition(self) -> str:
        return "target species ranked first" if self.mode == "add" else "target species no longer ranked first"

    def _success(self, out, state):
        first = out.logits.argmax(-1) == self.class_index
        return first if self.mode == "add" else ~first

    def _drs_loss(self, out, state):
        return multilabel_loss(out.logits, state["target"])


class EmbeddingUntargeted(_EmbeddingSpace, Objective):
    """Maximise the spatial-wise cosine dissimilarity to the clean feature map (AT-E attack).

    The feature map is :meth:`~core.models.base.BirdClassifier.forward_features`
    (after the add-on layer for AudioProtoPNet); for BirdNET the 1,024-d embedding
    (see :class:`_EmbeddingSpace`). Success: the top-1 species changed.
    """

    name = "embedding-untargeted"
    space = "embedding"

    def _prepare(self, model, x, out, state):
        return {"reference_features": self._out_features(out)}

    def loss(self, model, x_adv, state):
        return spatial_cosine_dissimilarity(self._features(model, x_adv), state["reference_features"])

    def _value(self, out, state):
        return spatial_cosine_dissimilarity(self._out_features(out), state["reference_features"])


class EmbeddingTargeted(_EmbeddingSpace, Objective):
    """Pull the feature map towards that of a target clip (minimise their cosine dissimilarity).

    For BirdNET the 1,024-d embedding instead of the feature map (see :class:`_EmbeddingSpace`).

    Parameters
    ----------
    target_waveform : torch.Tensor [shape=(n_samples,) or (batch, n_samples)]
        The target clip, same length as the attacked clips; or one target per
        attacked clip (row ``i`` is the target of clip ``i``).

    Success: the top-1 class equals the target clip's top-1 class. DRS uses the RMSE
    between representation vectors (prototype activations or pooled embedding) of the
    attacked and the target clip.
    """

    name = "embedding-targeted"
    space = "embedding"
    targeted = True
    success_definition = "top-1 equals the target clip's top-1"

    def __init__(self, target_waveform: torch.Tensor) -> None:
        t = torch.as_tensor(target_waveform)
        if t.ndim not in (1, 2) or not t.is_floating_point() or not torch.isfinite(t).all():
            raise ParameterError(f"target_waveform must be a finite float (n_samples,) or (batch, n_samples) tensor, got shape {tuple(t.shape)}")
        self.target_waveform = t

    def describe(self):
        return {"name": self.name, "target_samples": int(self.target_waveform.shape[-1]),
                "per_clip_targets": self.target_waveform.ndim == 2}

    def _prepare(self, model, x, out, state):
        t = self.target_waveform
        if t.shape[-1] != x.shape[1]:
            raise ParameterError(f"target clip has {t.shape[-1]} samples, attacked clips have {x.shape[1]}")
        if t.ndim == 2 and t.shape[0] != x.shape[0]:
            raise ParameterError(f"{t.shape[0]} target clips for a batch of {x.shape[0]}")
        t = model.forward_all(t.to(x.device, x.dtype).reshape(-1, x.shape[1]))
        b = x.shape[0]
        return {
            "target_features": self._out_features(t).expand(b, *self._out_features(t).shape[1:]),
            "target_representation": _representation(t).expand(b, -1),
            "target_top1": t.logits.argmax(-1).expand(b),
        }

    def loss(self, model, x_adv, state):
        return -spatial_cosine_dissimilarity(self._features(model, x_adv), state["target_features"])

    def _value(self, out, state):
        return -spatial_cosine_dissimilarity(self._out_features(out), state["target_features"])

    def _success(self, out, state):
        return out.logits.argmax(-1) == state["target_top1"]

    def _drs_loss(self, out, state):
        return _rmse(_representation(out), state["target_representation"])


class _PrototypeObjective(Objective):
    space = "prototype"
    targeted = True

    def check_model(self, model):
        if not hasattr(model, "prototype_vectors"):
            raise ParameterError(f"prototype objectives need a prototype model (AudioProtoPNet or a prototype head on BirdNET), "
                                 f"got {model.config.arch!r}")

    def _activations(self, model, x_adv):
        feats = model.forward_features(x_adv)
        return model.similarity_maps(feats).amax(dim=(2, 3))

    def _drs_loss(self, out, state):
        return _rmse(out.prototype_activations, state["target_activations"])


class PrototypeSuppress(_PrototypeObjective):
    """Suppress the clip's ``k`` most activated prototypes (minimise their mean activation).

    Target for DRS: the clean activation vector with those ``k`` set to 0.
    Success: none of them is the most activated prototype any more.

    Parameters
    ----------
    k : int >= 1
    """

    name = "prototype-suppress"
    success_definition = "none of the suppressed prototypes is the most activated"

    def __init__(self, k: int = 3) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ParameterError(f"k must be an integer >= 1, got {k!r}")
        self.k = k

    def describe(self):
        return {"name": self.name, "k": self.k}

    def check_model(self, model):
        super().check_model(model)
        if self.k >= model.n_prototypes:
            raise ParameterError(f"k must be < n_prototypes={model.n_prototypes}, got {self.k}")

    def _prepare(self, model, x, out, state):
        top = out.prototype_activations.topk(self.k, dim=-1).indices
        target = out.prototype_activations.scatter(1, top, 0.0)
        return {"suppressed": top, "target_activations": target}

    def loss(self, model, x_adv, state):
        return -self._activations(model, x_adv).gather(1, state["suppressed"]).mean(-1)

    def _value(self, out, state):
        return -out.prototype_activations.gather(1, state["suppressed"]).mean(-1)

    def _success(self, out, state):
        best = out.prototype_activations.argmax(-1, keepdim=True)
        return ~(state["suppressed"] == best).any(-1)


class PrototypeActivate(_PrototypeObjective):
    """Activate a chosen prototype (usually of another class): maximise its activation.

    Target for DRS: the clean activation vector with that prototype at 1 (its maximum).
    Success: it becomes the most activated prototype.

    Parameters
    ----------
    prototype_index : int >= 0
    """

    name = "prototype-activate"
    success_definition = "the chosen prototype is the most activated"

    def __init__(self, prototype_index: int) -> None:
        if isinstance(prototype_index, bool) or not isinstance(prototype_index, int) or prototype_index < 0:
            raise ParameterError(f"prototype_index must be an integer >= 0, got {prototype_index!r}")
        self.prototype_index = prototype_index

    def describe(self):
        return {"name": self.name, "prototype_index": self.prototype_index}

    def check_model(self, model):
        super().check_model(model)
        if self.prototype_index >= model.n_prototypes:
            raise ParameterError(f"prototype_index must be < n_prototypes={model.n_prototypes}, got {self.prototype_index}")

    def _prepare(self, model, x, out, state):
        target = out.prototype_activations.clone()
        target[:, self.prototype_index] = 1.0
        return {"target_activations": target}

    def loss(self, model, x_adv, state):
        return self._activations(model, x_adv)[:, self.prototype_index]

    def _value(self, out, state):
        return out.prototype_activations[:, self.prototype_index]

    def _success(self, out, state):
        return out.prototype_activations.argmax(-1) == self.prototype_index


def prototype_activation_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS difference ``(batch,)`` of prototype activations ``a``, ``b`` ``(batch, n_prototypes)``: the AT-X training term
    (:func:`core.training.head_finetune.adversarial_finetune_head`) and what :class:`PrototypeShift` maximises; a tiny
    floor under the root keeps the gradient finite where they agree."""
    return ((a - b).square().mean(-1) + 1e-12).sqrt()


class PrototypeShift(_PrototypeObjective):
    """Move the whole explanation: maximise the RMS change of every prototype's activation (AT-X's attack: a TRADES-style
    consistency term on prototype activations, in the spirit of Chen et al. 2019, "Robust Attribution Regularization").

    Success: the most activated prototype changed; DRS: the RMS change. Its gradient vanishes at the clean window, so
    attacks without a random start (FGSM, BIM) refuse it (:class:`~core.attacks.base.Attack`); PGD and APGD start
    from a random point.
    """

    name = "prototype-shift"
    needs_random_start = True
    targeted = False
    success_definition = "the most activated prototype changed"

    def _prepare(self, model, x, out, state):
        return {"target_activations": out.prototype_activations}

    def loss(self, model, x_adv, state):
        return prototype_activation_distance(self._activations(model, x_adv), state["target_activations"])

    def _value(self, out, state):
        return prototype_activation_distance(out.prototype_activations, state["target_activations"])

    def _success(self, out, state):
        return out.prototype_activations.argmax(-1) != state["target_activations"].argmax(-1)


OBJECTIVES = {
    cls.name: cls
    for cls in (OutputUntargeted, OutputMargin, OutputTargeted, OutputTargetedMargin, EmbeddingUntargeted, EmbeddingTargeted,
                PrototypeSuppress, PrototypeActivate, PrototypeShift)
}


def make_objective(name: str, **kwargs) -> Objective:
    """Build an objective by name (keys of :data:`OBJECTIVES`) with its keyword arguments.

    Raises
    ------
    ParameterError
        Unknown name, or a missing/unexpected argument (e.g. ``class_index`` for
        ``output-targeted``).
    """
    if name not in OBJECTIVES:
        raise ParameterError(f"objective must be one of {sorted(OBJECTIVES)}, got {name!r}")
    try:
        return OBJECTIVES[name](**kwargs)
    except TypeError as exc:
        raise ParameterError(f"objective {name!r}: {exc}") from None
