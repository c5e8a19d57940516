"""Black-box baseline: ConvNeXt backbone + global average pooling + linear head."""

from __future__ import annotations

import torch
from torch import nn

from core.models.base import BirdClassifier, ModelOutput
from core.models.convnext import ConvNeXt
from core.models.frontend import LogMel

__all__ = ["BaselineClassifier"]


class BaselineClassifier(BirdClassifier):
    """ConvNeXt + global average pooling + LayerNorm + dropout + linear layer.

    The same backbone as :class:`~core.models.protopnet.AudioProtoPNet`, so the
    two can be compared on equal terms (a "black box" reference).

    Parameters
    ----------
    config : core.models.registry.ModelConfig
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogMel(config.frontend)
        self.backbone = ConvNeXt(config.backbone)
        dim = config.backbone.out_channels
        self.head_norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(dim, len(config.class_names))
        nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        nn.init.constant_(self.classifier.bias, -2.0)

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """ConvNeXt: log-mel ``(batch, 1, n_mels, n_frames)`` -> ``(batch, channels, freq, time)``."""
        return self.backbone(spectrogram)

    def backbone_modules(self) -> list[nn.Module]:
        """The ConvNeXt backbone."""
        return [self.backbone]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, LayerNorm (the embedding), dropout and the linear layer.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]
        pre_logits : bool
            Return the embedding ``(batch, channels)`` instead of the logits.

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)], or [shape=(batch, channels)] with ``pre_logits``
        """
        emb = self.head_norm(features.mean(dim=(2, 3)))
        if pre_logits:
            return emb
        return self.classifier(self.head_drop(emb))

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits and embedding, the pooling computed once."""
        emb = self.forward_head(features, pre_logits=True)
        return ModelOutput(logits=self.classifier(self.head_drop(emb)), embedding=emb, feature_map=features)
