"""Shared interface of birdshield's classifiers."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from core.errors import ParameterError
from core.models.frontend import LogMel

__all__ = ["ModelOutput", "BirdClassifier"]


class ModelOutput(NamedTuple):
    """Everything a classifier computes for a batch of waveforms.

    Attributes
    ----------
    logits : torch.Tensor [shape=(batch, n_classes)]
        Multi-label logits (apply a sigmoid for scores).
    embedding : torch.Tensor [shape=(batch, embed_dim)]
        Pre-logits embedding (global average of the feature map).
    feature_map : torch.Tensor [shape=(batch, channels, freq, time)]
        Output of the backbone (after the add-on layer for AudioProtoPNet).
    similarity_maps : torch.Tensor or None [shape=(batch, n_prototypes, freq, time)]
        Cosine similarity of every prototype at every position (AudioProtoPNet only).
    prototype_activations : torch.Tensor or None [shape=(batch, n_prototypes)]
        Global max of each similarity map (AudioProtoPNet only).
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    feature_map: torch.Tensor
    similarity_maps: torch.Tensor | None = None
    prototype_activations: torch.Tensor | None = None


class BirdClassifier(nn.Module):
    """Base class: raw waveform in, multi-label logits out.

    Subclasses define ``self.frontend`` (:class:`~core.models.frontend.LogMel`),
    ``self.backbone`` and implement :meth:`forward_head` and :meth:`forward_all`.

    Shapes
    ------
    waveform : torch.Tensor [shape=(batch, n_samples), dtype=float32], full-scale amplitude in [-1, 1]
    logits : torch.Tensor [shape=(batch, n_classes)]
    """

    frontend: LogMel
    backbone: nn.Module

    def check_waveform(self, waveform: torch.Tensor) -> None:
        """Raise :class:`ParameterError` unless ``waveform`` is a float ``(batch, n_samples)`` tensor."""
        if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
            shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
            raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {shape}")
        if waveform.shape[1] < self.frontend.config.n_fft:
            raise ParameterError(f"waveform must have >= n_fft={self.frontend.config.n_fft} samples, got {waveform.shape[1]}")

    def forward_features(self, waveform: torch.Tensor) -> torch.Tensor:
        """Backbone feature map ``(batch, channels, freq, time)``."""
        self.check_waveform(waveform)
        return self.backbone(self.frontend(waveform))

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward_all(self, waveform: torch.Tensor) -> ModelOutput:
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(waveform))

    def embed(self, waveform: torch.Tensor) -> torch.Tensor:
        """Pre-logits embedding ``(batch, embed_dim)``."""
        return self.forward_head(self.forward_features(waveform), pre_logits=True)
