"""AudioProtoPNet: prototype learning for interpretable bird-sound classification.

Heinrich, Rauch, Sick & Scholz 2025, "AudioProtoPNet: An interpretable deep
learning model for bird sound classification", Ecological Informatics 87:103081
(arXiv 2404.10420), after ProtoPNet (Chen et al. 2019, "This looks like that").

- ConvNeXt backbone on the log-mel spectrogram; add-on layer = bilinear 2x
  upsampling of the feature map (as the reference ``add_on_layers_type: upsample``).
- ``prototype_vectors`` ``(n_prototypes, channels, 1, 1)``, ``prototypes_per_class``
  per class (``prototype_class_identity``).
- Similarity = ReLU(cosine(feature vector, prototype)) at every time-frequency
  position: one similarity map per prototype; global max pooling.
- ``last_layer``: each class connected only to its own prototypes with
  non-negative weights (ReLU of the stored weights), plus a bias.
- Loss: asymmetric loss (Ridnik et al. 2021) + orthogonality loss on the
  prototypes of each class (:func:`orthogonality_loss`).
- Push (projection): :func:`core.training.train.push_prototypes` replaces each prototype
  with its most similar training feature vector of its own class and records
  where it came from (:class:`PrototypeSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from core.models.base import BirdClassifier, ModelOutput
from core.models.convnext import ConvNeXt
from core.models.frontend import LogMel

__all__ = ["AudioProtoPNet", "PrototypeSource", "class_connection_matrix", "class_logits", "cosine_similarity_maps", "orthogonality_loss"]


@dataclass(frozen=True)
class PrototypeSource:
    """Where a pushed prototype came from ("this looks like that").

    Attributes
    ----------
    prototype : int
        Prototype index.
    class_name : str
    recording_id : str
    window_start_s : float [seconds]
        Start of the 5 s training window in its recording.
    freq_index, time_index : int
        Cell of the (upsampled) feature map.
    t_start_s, t_end_s : float [seconds]
        Time span of the cell, relative to the recording start.
    f_low_hz, f_high_hz : float [Hz]
        Frequency span of the cell.
    similarity : float
        Cosine similarity before the push (1.0 after).
    """

    prototype: int
    class_name: str
    recording_id: str
    window_start_s: float
    freq_index: int
    time_index: int
    t_start_s: float
    t_end_s: float
    f_low_hz: float
    f_high_hz: float
    similarity: float

    def to_dict(self) -> dict:
        return asdict(self)


class AudioProtoPNet(BirdClassifier):
    """AudioProtoPNet classifier (see module docstring for the method).

    Parameters
    ----------
    config : core.models.registry.ModelConfig
        ``arch == "protopnet"``; ``prototypes_per_class`` prototypes per class of
        ``backbone.dims[-1]`` channels.

    Attributes
    ----------
    prototype_vectors : nn.Parameter [shape=(n_prototypes, channels, 1, 1)]
    prototype_class_identity : torch.Tensor [shape=(n_prototypes,), dtype=int64]
        Class index of each prototype.
    last_layer : nn.Parameter [shape=(n_classes, prototypes_per_class)]
        Stored weights; the effective weights are ``relu(last_layer)``.
    last_layer_bias : nn.Parameter [shape=(n_classes,)]
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.config = config
        self.frontend = LogMel(config.frontend)
        self.backbone = ConvNeXt(config.backbone)
        n_classes, k = len(config.class_names), config.prototypes_per_class
        channels = config.backbone.out_channels
        self.n_prototypes = n_classes * k
        self.prototype_vectors = nn.Parameter(torch.rand(self.n_prototypes, channels, 1, 1))
        self.register_buffer(
            "prototype_class_identity", torch.arange(self.n_prototypes) // k, persistent=False
        )
        # Reference initialisation: own-class connection 1.0, bias -2.0.
        self.last_layer = nn.Parameter(torch.ones(n_classes, k))
        self.last_layer_bias = nn.Parameter(torch.full((n_classes,), -2.0))

    def add_on(self, features: torch.Tensor) -> torch.Tensor:
        """Add-on layer: bilinear 2x upsampling (no parameters), ``(batch, C, F, T)`` -> ``(batch, C, 2F, 2T)``."""
        if self.config.add_on == "upsample":
            return F.interpolate(features, scale_factor=2, mode="bilinear", align_corners=False)
        return features

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """ConvNeXt and the add-on layer: log-mel ``(batch, 1, n_mels, n_frames)`` -> ``(batch, channels, freq, time)``."""
        return self.add_on(self.backbone(spectrogram))

    def backbone_modules(self) -> list[nn.Module]:
        """The ConvNeXt backbone (the add-on layer has no parameters)."""
        return [self.backbone]

    def similarity_maps(self, features: torch.Tensor) -> torch.Tensor:
        """Similarity of every prototype at every cell.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]
            ``forward_features(waveform)``.

        Returns
        -------
        torch.Tensor [shape=(batch, n_prototypes, freq, time)]
            ReLU of the cosine similarity, values in [0, 1] (:func:`cosine_similarity_maps`).
        """
        return cosine_similarity_maps(features, self.prototype_vectors)

    def classify(self, activations: torch.Tensor) -> torch.Tensor:
        """Last layer: prototype activations ``(batch, n_prototypes)`` -> logits ``(batch, n_classes)`` (:func:`class_logits`)."""
        return class_logits(activations, self.last_layer, self.last_layer_bias)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``classify(max of similarity_maps(features))``, or the embedding (mean of the feature map) with ``pre_logits``.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, channels, freq, time)]
        pre_logits : bool

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)], or [shape=(batch, channels)] with ``pre_logits``
        """
        if pre_logits:
            return features.mean(dim=(2, 3))
        return self.classify(self.similarity_maps(features).amax(dim=(2, 3)))

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits, embedding, similarity maps and prototype activations, each map computed once."""
        sims = self.similarity_maps(features)
        acts = sims.amax(dim=(2, 3))
        return ModelOutput(logits=self.classify(acts), embedding=self.forward_head(features, pre_logits=True),
                           feature_map=features, similarity_maps=sims, prototype_activations=acts)

    def class_connection(self) -> torch.Tensor:
        """Effective last-layer weight matrix ``(n_classes, n_prototypes)`` (zero off-class)."""
        return class_connection_matrix(self.last_layer)


def cosine_similarity_maps(features: torch.Tensor, prototype_vectors: torch.Tensor) -> torch.Tensor:
    """ReLU of the cosine similarity of every feature-map cell with every prototype.

    AudioProtoPNet's similarity (Heinrich et al. 2025, "AudioProtoPNet", eq. 1:
    cosine similarity instead of ProtoPNet's log-distance).

    Parameters
    ----------
    features : torch.Tensor [shape=(batch, channels, freq, time)]
    prototype_vectors : torch.Tensor [shape=(n_prototypes, channels, 1, 1)]

    Returns
    -------
    torch.Tensor [shape=(batch, n_prototypes, freq, time)], values in [0, 1]
    """
    f = F.normalize(features, dim=1, eps=1e-6)
    p = F.normalize(prototype_vectors, dim=1, eps=1e-6)
    return F.relu(F.conv2d(f, p))


def class_logits(activations: torch.Tensor, last_layer: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Non-negative class connection: each class sums only its own prototypes' activations.

    Parameters
    ----------
    activations : torch.Tensor [shape=(batch, n_classes * k)]
        Max-pooled similarities, prototypes of class c at ``c*k .. c*k + k - 1``.
    last_layer : torch.Tensor [shape=(n_classes, k)]
        Stored weights; the effective weights are ``relu(last_layer)``.
    bias : torch.Tensor [shape=(n_classes,)]

    Returns
    -------
    torch.Tensor [shape=(batch, n_classes)]
    """
    act = activations.view(activations.shape[0], *last_layer.shape)
    return torch.einsum("bck,ck->bc", act, F.relu(last_layer)) + bias


def class_connection_matrix(last_layer: torch.Tensor) -> torch.Tensor:
    """Effective class connection ``(n_classes, n_classes * k)`` from stored weights ``(n_classes, k)``.

    ``relu(last_layer)`` on each class's own prototypes, zero elsewhere.
    """
    n_classes, k = last_layer.shape
    w = torch.zeros(n_classes, n_classes * k, device=last_layer.device)
    idx = torch.arange(n_classes * k, device=w.device)
    w[idx // k, idx] = F.relu(last_layer).reshape(-1)
    return w


def orthogonality_loss(prototype_vectors: torch.Tensor, prototypes_per_class: int) -> torch.Tensor:
    """Orthogonality loss of AudioProtoPNet.

    For each class c with unit-normalised prototypes ``P_c`` (k x D), the
    deviation ``P_c P_c^T - I_k``; the loss is the Frobenius norm over all classes
    divided by ``n_classes * k * k`` (reference ``calculate_orthogonality_loss``).

    Parameters
    ----------
    prototype_vectors : torch.Tensor [shape=(n_prototypes, D, 1, 1)]
    prototypes_per_class : int

    Returns
    -------
    torch.Tensor, scalar
    """
    k = prototypes_per_class
    p = F.normalize(prototype_vectors.flatten(1), dim=1).view(-1, k, prototype_vectors.shape[1])
    gram = p @ p.transpose(1, 2) - torch.eye(k, device=p.device)
    return torch.linalg.norm(gram) / gram.numel()


#: Frequency bands of the prototype table [Hz]: low calls (owls, ducks), the core of most songs, high notes, and
#: the top of the front end (near the codec cut-off).
BANDS_HZ = ((0.0, 1000.0), (1000.0, 2000.0), (2000.0, 4000.0), (4000.0, 8000.0), (8000.0, 16000.0))


def prototype_bands(prototypes: Sequence[dict], class_names: Sequence[str]) -> pd.DataFrame:
    """Where prototypes sit: count per class and frequency band of the band centre of each prototype's push patch.

    Parameters
    ----------
    prototypes : sequence of dict
        The model card's ``prototypes`` (push provenance: ``class_name``, ``f_low_hz``, ``f_high_hz``).
    class_names : sequence of str

    Returns
    -------
    pandas.DataFrame
        Index: class; one column per band (``"0-1 kHz"``, ...) with prototype counts, and ``total``.
    """
    labels = [f"{lo / 1000:g}-{hi / 1000:g} kHz" for lo, hi in BANDS_HZ]
    table = pd.DataFrame(0, index=list(class_names), columns=labels)
    for p in prototypes:
        centre = np.sqrt(max(p["f_low_hz"], 1.0) * p["f_high_hz"])  # geometric centre: bands are log-spaced
        for (lo, hi), lab in zip(BANDS_HZ, labels):
            if lo <= centre < hi:
                table.loc[p["class_name"], lab] += 1
    table["total"] = table.sum(axis=1)
    return table
