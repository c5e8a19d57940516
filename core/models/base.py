"""Shared interface of birdshield's classifiers: one model path from the waveform to the logits.

Every model (AudioProtoPNet, the baseline, BirdNET, the heads on BirdNET's
backbone, the published BirdSet models) is a :class:`BirdClassifier`, and every
study computes through these methods, never through a model's layers::

    waveform --frontend--> spectrogram --features_from_spectrogram--> features --forward_head--> logits
    \\___________________ forward_features ____________________/              \\__ pre_logits --> embedding

``forward``, ``forward_all`` and ``embed`` are built on ``forward_features`` and
``forward_head`` (and, for prototype models, ``similarity_maps`` and ``classify``),
so a study that masks a spectrogram, or reads similarity maps, computes exactly
what ``model(waveform)`` computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import nn

from core.errors import ParameterError

__all__ = ["ModelOutput", "BirdClassifier"]


class ModelOutput(NamedTuple):
    """Everything a classifier computes for a batch of waveforms.

    Attributes
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
        Multi-label logits (apply a sigmoid for scores).
    embedding : torch.Tensor [shape=(batch, embed_dim)]
        Pre-logits embedding, ``forward_head(features, pre_logits=True)``.
    feature_map : torch.Tensor [shape=(batch, channels, freq, time)]
        ``forward_features(waveform)`` (after the add-on layer for AudioProtoPNet; row 0 the lowest band).
    similarity_maps : torch.Tensor or None [shape=(batch, n_prototypes, freq, time)]
        Similarity of every prototype at every cell of the feature map (prototype models; None for
        black boxes and for the published AudioProtoPNet, whose 194,720 maps would not fit in memory).
    prototype_activations : torch.Tensor or None [shape=(batch, n_prototypes)]
        Global max of each similarity map (prototype models only).
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    feature_map: torch.Tensor
    similarity_maps: torch.Tensor | None = None
    prototype_activations: torch.Tensor | None = None


class BirdClassifier(nn.Module):
    """Base class: raw waveform in, multi-label logits out, through one path.

    Subclasses set ``self.config`` (with ``class_names``, ``clip_seconds`` and
    ``frontend.sample_rate``) and ``self.frontend`` (an ``nn.Module``: waveform ->
    spectrogram), and implement :meth:`features_from_spectrogram`,
    :meth:`forward_head` and :meth:`backbone_parameters`; prototype models also
    ``similarity_maps`` and ``classify`` and override :meth:`outputs_from_features`
    to compute each map once. Everything else is built on these.

    Attributes
    ----------
    sample_rate : int [Hz]
    clip_seconds : float [s]
    class_names : tuple of str
        Output classes in logit order.
    frontend : nn.Module
        ``frontend(waveform) -> spectrogram`` ``(batch, channels, n_mels, n_frames)``, differentiable.

    Shapes
    ------
    waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32], full-scale amplitude in [-1, 1]
        at ``sample_rate``; ``clip_seconds * sample_rate`` samples is the model's window.
    logits : torch.Tensor [shape=(batch, n_classes)]
    """

    frontend: nn.Module

    # -- what the model is ----------------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Sample rate of the input waveform [Hz]."""
        return int(self.config.frontend.sample_rate)

    @property
    def clip_seconds(self) -> float:
        """Length of the model's window [s]."""
        return float(self.config.clip_seconds)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Output classes in logit order."""
        return tuple(self.config.class_names)

    def check_waveform(self, waveform: torch.Tensor) -> None:
        """Check a model input.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32]

        Raises
        ------
        ParameterError
            ``waveform`` is not a float ``(batch, n_samples)`` tensor, or is shorter than one STFT frame.
        """
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
            shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
            raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {shape}")
        if waveform.shape[1] < self.frontend.config.n_fft:
            raise ParameterError(f"waveform must have >= n_fft={self.frontend.config.n_fft} samples, got {waveform.shape[1]}")

    # -- the path: spectrogram -> features -> head ---------------------------------------------------

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """Feature map of a spectrogram: everything between the front end and the head.

        Studies that change the spectrogram (deletion, masking, SpecAugment) call
        this on ``frontend(waveform)`` after their change.

        Parameters
        ----------
        spectrogram : torch.Tensor [shape=(batch, channels, n_mels, n_frames)]
            ``frontend(waveform)``, possibly modified.

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)], row 0 the lowest band
        """
        raise NotImplementedError

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Feature map of a waveform: ``features_from_spectrogram(frontend(waveform))``.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32]

        Returns
        -------
        torch.Tensor [shape=(batch, channels, freq, time)]

        Raises
        ------
        ParameterError
            Not a float ``(batch, n_samples)`` tensor, or too short (:meth:`check_waveform`).
        """
        self.check_waveform(waveform)
        return self.features_from_spectrogram(self.frontend(waveform))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (or the embedding) of a feature map.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]
            ``forward_features(waveform)`` or ``features_from_spectrogram(spectrogram)``.
        pre_logits : bool
            Return the embedding instead of the logits.

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)] logits, or [shape=(batch, embed_dim)] with ``pre_logits``
        """
        raise NotImplementedError

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Every output of :meth:`forward_all` from a feature map (logits, embedding and, for prototype models, maps).

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]

        Returns
        -------
        ModelOutput
            ``logits == forward_head(features)``, ``embedding == forward_head(features, pre_logits=True)``.
        """
        return ModelOutput(logits=self.forward_head(features), embedding=self.forward_head(features, pre_logits=True),
                           feature_map=features)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        """Logits of a batch of windows.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32], full-scale amplitude at ``sample_rate``

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)]
            Multi-label logits (a sigmoid gives the scores).
        """
        return self.forward_head(self.forward_features(waveform))

    def forward_all(self, waveform: torch.Tensor) -> ModelOutput:
        """Logits, embedding, feature map and (prototype models) similarity maps of a batch of windows.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32]

        Returns
        -------
        ModelOutput
            ``logits`` equal ``forward(waveform)``, ``embedding`` equals ``embed(waveform)``.
        """
        return self.outputs_from_features(self.forward_features(waveform))

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Pre-logits embedding of a batch of windows.

        Parameters
        ----------
        waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32]

        Returns
        -------
        torch.Tensor [shape=(batch, embed_dim)]
        """
        return self.forward_head(self.forward_features(waveform), pre_logits=True)

    # -- what training needs ---------------------------------------------------------------------------

    def backbone_modules(self) -> list[nn.Module]:
        """The modules between the front end and the head (those :meth:`backbone_parameters` and :meth:`eval_backbone` act on)."""
        raise NotImplementedError

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters between the front end and the head (frozen BirdNET weights included; they have ``requires_grad=False``)."""
        for module in self.backbone_modules():
            yield from module.parameters()

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter outside the backbone: prototypes, class connection, linear layers."""
        inside = {id(p) for p in self.backbone_parameters()}
        return (p for p in self.parameters() if id(p) not in inside)

    def eval_backbone(self) -> "BirdClassifier":
        """Put the backbone in eval mode (BatchNorm statistics and dropout frozen), the rest as it is; returns ``self``."""
        for module in self.backbone_modules():
            module.eval()
        return self

    def copy_backbone_from(self, donor: "BirdClassifier") -> None:
        """Initialise the backbone with another model's, e.g. AudioProtoPNet's ConvNeXt from the baseline's.

        Parameters
        ----------
        donor : BirdClassifier
            A model with the same ``config.backbone`` and ``config.frontend``.

        Raises
        ------
        ParameterError
            The donor's backbone or front end configuration differs (or the models have none to compare).
        """
        mine, theirs = getattr(self, "config", None), getattr(donor, "config", None)
        for field in ("backbone", "frontend"):
            if getattr(mine, field, None) is None or getattr(mine, field, None) != getattr(theirs, field, None):
                raise ParameterError(f"donor {field} differs from this model's (donor arch "
                                     f"{getattr(theirs, 'arch', type(donor).__name__)!r}, this {getattr(mine, 'arch', None)!r})")
        for a, b in zip(self.backbone_modules(), donor.backbone_modules(), strict=True):
            a.load_state_dict(b.state_dict())

    def spectrogram_region(self, cell: tuple[int, int], map_shape: tuple[int, int],
                           spectrogram_shape: tuple[int, int]) -> tuple[slice, slice]:
        """Rows and frames of the spectrogram under one feature-map cell (proportional: the cell's share of each axis).

        Parameters
        ----------
        cell : (int, int)
            ``(freq_index, time_index)`` in the feature map, row 0 the lowest band.
        map_shape : (int, int)
            ``(freq, time)`` of the feature map.
        spectrogram_shape : (int, int)
            ``(n_mels, n_frames)`` of ``frontend(waveform)``.

        Returns
        -------
        (slice, slice)
            Rows and frames of the spectrogram (in the front end's own row order).
        """
        fr, tc = map_shape
        n_rows, n_frames = spectrogram_shape
        r = self._spectrogram_row(cell[0], fr)
        return (slice(r * n_rows // fr, (r + 1) * n_rows // fr),
                slice(cell[1] * n_frames // tc, (cell[1] + 1) * n_frames // tc))

    def _spectrogram_row(self, freq_index: int, n_rows: int) -> int:
        """The feature row in the front end's row order (the log-mel front ends: row 0 the lowest band, as the map)."""
        return freq_index
