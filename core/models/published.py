"""The published BirdSet models, rebuilt locally: AudioProtoPNet-{1,5,10,20}-BirdSet-XCL and ConvNeXT-Base-BirdSet-XCL.

Both are written from the published model description and configuration
(Heinrich et al. 2025, "AudioProtoPNet: An interpretable deep learning model for
bird sound classification", Ecological Informatics, arXiv 2404.10420; Rauch et
al. 2025, "BirdSet", ICLR, arXiv 2403.10380) and the layout of their Hugging Face
checkpoints; no code from the hub is ever executed, and the ConvNeXt
configuration is built here (``transformers.ConvNextConfig``, never fetched).

- AudioProtoPNet: a ConvNeXt-Base (one input channel, depths 3-3-27-3, widths
  128-256-512-1024) whose last hidden state (before the final layer norm) is
  upsampled 2x bilinearly; ``P`` prototypes per class ``(9,736 x P, 1024, 1, 1)``
  compared with every cell by the published cosine similarity (two extra
  channels of 1e-4 on features and prototypes, features scaled to length 64 /
  sqrt(h w), divided by 64 x 1.01, ReLU), max-pooled, and a class connection
  ``(9,736, P)`` whose weights pass through a ReLU (non-negative) plus a bias.
  Input: 32 kHz, 5 s, n_fft 2048, hop 256, 256 HTK mel bands (no filter
  normalisation, 0-16 kHz), power to dB (ref 1, amin 1e-10, top_db 80),
  normalised with mean -13.369 dB and std 13.162 dB.
- ConvNeXT-Base-BirdSet-XCL: the same backbone as a plain image classifier
  (layer-normed global average, a linear layer to 9,736 classes); n_fft 1024,
  hop 320, 128 mel bands, mean -4.268, std 4.569.

One deliberate difference from the upstream code: the 80 dB clamp of power to
dB is taken **per clip** (each clip's own maximum), where upstream's
``AmplitudeToDB``/``PowerToDB`` take the maximum over the whole batch. Batch-wide,
the spectrogram of one clip depends on the other clips in its batch, so an attack
on one clip changes its neighbours' inputs, and a clip's score changes with the
batch it was scored in. Per clip, batching never changes a result. The two agree
for a batch of one and whenever every clip's own floor is not binding.

Layout on disk (what :func:`fetch_model` downloads and :func:`load_published`
reads): a folder with ``model.safetensors`` and ``config.json`` (its ``id2label``
gives the eBird codes). AudioProtoPNet keys: ``model.backbone.*`` (a
``transformers`` ``ConvNextModel``), ``head.prototype_vectors``,
``head.last_layer.weight``, ``head.last_layer.bias``; ConvNeXt keys:
``convnext.*`` and ``classifier.{weight,bias}``.

Licences: AudioProtoPNet-*-BirdSet-XCL weights are CC BY-NC 4.0 (their model
cards); a user who fetches them accepts those terms. They are never part of this
repository.

Shapes
------
waveform : (batch, 160000) float32, 32 kHz, full-scale amplitude (5 s; shorter clips are zero-padded by the caller)
feature_map : AudioProtoPNet (batch, 1024, 16, 38); ConvNeXt (batch, 1024, 4, 15)
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from core.errors import ParameterError
from core.models.base import BirdClassifier, ModelOutput

__all__ = [
    "PUBLISHED_MODELS",
    "PublishedFrontendConfig",
    "PublishedLogMel",
    "PublishedAudioProtoPNet",
    "PublishedConvNeXt",
    "convnext_base_config",
]

#: Published checkpoints: name -> Hugging Face repository, kind, prototypes per class.
PUBLISHED_MODELS = {
    "audioprotopnet-1-birdset-xcl": {"repo": "DBD-research-group/AudioProtoPNet-1-BirdSet-XCL", "kind": "audioprotopnet", "prototypes_per_class": 1},
    "audioprotopnet-5-birdset-xcl": {"repo": "DBD-research-group/AudioProtoPNet-5-BirdSet-XCL", "kind": "audioprotopnet", "prototypes_per_class": 5},
    "audioprotopnet-10-birdset-xcl": {"repo": "DBD-research-group/AudioProtoPNet-10-BirdSet-XCL", "kind": "audioprotopnet", "prototypes_per_class": 10},
    "audioprotopnet-20-birdset-xcl": {"repo": "DBD-research-group/AudioProtoPNet-20-BirdSet-XCL", "kind": "audioprotopnet", "prototypes_per_class": 20},
    "convnext-base-birdset-xcl": {"repo": "DBD-research-group/ConvNeXT-Base-BirdSet-XCL", "kind": "convnext", "prototypes_per_class": 0},
}
#: Files fetched from a published repository (weights and configuration only; never code).
PUBLISHED_FILES = ("model.safetensors", "config.json")
XCL_N_CLASSES = 9736
#: Prototypes compared per chunk: bounds the memory of the similarity over all 194,720 prototypes of the 20-prototype model.
PROTOTYPE_CHUNK = 8192


@dataclass(frozen=True)
class PublishedFrontendConfig:
    """Front end of a published BirdSet model (torchaudio's defaults where the configuration is silent).

    Attributes
    ----------
    sample_rate : int [Hz]
    n_fft, hop_length : int [samples]
        Periodic Hann window of ``n_fft`` samples, centred frames with reflect padding.
    n_mels : int
        HTK mel scale, no filter normalisation, ``f_min`` to ``f_max``.
    f_min, f_max : float [Hz]
    top_db : float [dB]
        Floor at each clip's own maximum minus ``top_db``.
    mean_db, std_db : float [dB]
        Normalisation ``(dB - mean_db) / std_db``.
    clip_seconds : float [seconds]
    amin : float
        Power floor before the log (ref 1.0).
    """

    sample_rate: int = 32_000
    n_fft: int = 2048
    hop_length: int = 256
    n_mels: int = 256
    f_min: float = 0.0
    f_max: float = 16_000.0
    top_db: float = 80.0
    mean_db: float = -13.369
    std_db: float = 13.162
    clip_seconds: float = 5.0
    amin: float = 1e-10

    @property
    def window_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def htk(self) -> bool:
        """The mel scale is HTK's (the display's frequency axis follows it)."""
        return True

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames for ``n_samples`` (centred frames)."""
        return 1 + n_samples // self.hop_length


AUDIOPROTOPNET_FRONTEND = PublishedFrontendConfig()
CONVNEXT_FRONTEND = PublishedFrontendConfig(n_fft=1024, hop_length=320, n_mels=128, mean_db=-4.268, std_db=4.569)


class PublishedLogMel(nn.Module):
    """Waveform -> the published models' normalised log-mel spectrogram, differentiable, per-clip dB floor.

    ``torch.stft`` and a ``librosa.filters.mel(htk=True, norm=None)`` filterbank,
    as torchaudio's ``MelSpectrogram(mel_scale="htk", norm=None)``; power to dB
    with ``top_db`` relative to each clip's own maximum (see the module notes on
    why not over the batch).

    Shapes
    ------
    input : (batch, n_samples) float32, full-scale amplitude
    output : (batch, 1, n_mels, n_frames)
    """

    def __init__(self, config: PublishedFrontendConfig) -> None:
        super().__init__()
        self.config = config
        mel = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min,
                                  fmax=config.f_max, htk=True, norm=None)
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)

    def db(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel power in dB (ref 1.0), floored per clip at its maximum minus ``top_db``: ``(batch, n_mels, n_frames)``."""
        spec = torch.stft(waveform, n_fft=self.config.n_fft, hop_length=self.config.hop_length, window=self.window,
                          center=True, pad_mode="reflect", return_complex=True)
        power = torch.matmul(self.mel_basis, spec.real.square() + spec.imag.square())
        db = 10.0 * torch.log10(torch.clamp(power, min=self.config.amin))
        return torch.maximum(db, db.amax(dim=(-2, -1), keepdim=True) - self.config.top_db)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return ((self.db(waveform) - self.config.mean_db) / self.config.std_db).unsqueeze(1)


def convnext_base_config(**overrides):
    """The ConvNeXt-Base configuration of both published models, built locally (never fetched).

    One input channel, patch size 4, depths (3, 3, 27, 3), widths (128, 256, 512,
    1024), layer-norm eps 1e-12, layer scale 1e-6, no drop path. ``overrides``
    (e.g. smaller ``depths``/``hidden_sizes``) are for tests only.

    Returns
    -------
    transformers.ConvNextConfig
    """
    from transformers import ConvNextConfig

    kw = dict(num_channels=1, patch_size=4, depths=[3, 3, 27, 3], hidden_sizes=[128, 256, 512, 1024], layer_norm_eps=1e-12,
              layer_scale_init_value=1e-6, drop_path_rate=0.0, hidden_act="gelu")
    kw.update(overrides)
    return ConvNextConfig(**kw)


def _check_clip(model, waveform: torch.Tensor) -> None:
    if not isinstance(waveform, torch.Tensor) or waveform.ndim != 2 or not waveform.is_floating_point():
        shape = tuple(waveform.shape) if isinstance(waveform, torch.Tensor) else type(waveform).__name__
        raise ParameterError(f"waveform must be a float tensor (batch, n_samples), got {shape}")
    if waveform.shape[1] <= model.frontend.config.n_fft // 2:
        raise ParameterError(f"waveform must have more than {model.frontend.config.n_fft // 2} samples "
                             f"(reflect padding), got {waveform.shape[1]}")


@dataclass(frozen=True)
class PublishedConfig:
    """What the pages and the CLI read from a published model (its ``config`` attribute).

    Attributes
    ----------
    arch : {"published-audioprotopnet", "published-convnext"}
    class_names : tuple of str
        eBird codes in output order (``config.json``'s ``id2label``).
    prototypes_per_class : int
        0 for ConvNeXt.
    frontend : PublishedFrontendConfig
    source : str
        The Hugging Face repository, or "local".
    licence : str
    """

    arch: str
    class_names: tuple[str, ...]
    prototypes_per_class: int
    frontend: PublishedFrontendConfig
    source: str = "local"
    licence: str = "CC BY-NC 4.0 (the published model card); not part of this repository"

    @property
    def clip_seconds(self) -> float:
        return self.frontend.clip_seconds

    @property
    def window_samples(self) -> int:
        return self.frontend.window_samples


def published_cosine_similarity(features: torch.Tensor, prototypes: torch.Tensor, *, eps: float = 1e-4,
                                n_eps_channels: int = 2, input_vector_length: float = 64.0) -> torch.Tensor:
    """AudioProtoPNet's published cosine similarity of every prototype at every cell.

    Both sides get ``n_eps_channels`` extra channels of value ``eps``; features are
    scaled to length ``input_vector_length`` / sqrt(h w) (``h x w`` the prototype's
    size), prototypes to unit length / sqrt(h w) (with ``eps`` inside and outside
    the root, as published), the convolution is divided by
    ``input_vector_length x 1.01`` and passed through a ReLU (Heinrich et al. 2025;
    the published ``cos_activation``).

    Parameters
    ----------
    features : torch.Tensor [shape=(batch, channels, freq, time)]
    prototypes : torch.Tensor [shape=(n_prototypes, channels, h, w)]

    Returns
    -------
    torch.Tensor [shape=(batch, n_prototypes, freq - h + 1, time - w + 1)], values in [0, 1)
    """
    h, w = prototypes.shape[-2:]
    norm = float(h * w) ** 0.5
    x = torch.cat([features, features.new_full((features.shape[0], n_eps_channels, *features.shape[2:]), eps)], dim=1)
    x = input_vector_length * x / torch.sqrt((x**2).sum(dim=1, keepdim=True) + eps) / norm
    p = torch.cat([prototypes, prototypes.new_full((prototypes.shape[0], n_eps_channels, h, w), eps)], dim=1)
    p = p / (torch.sqrt((p**2).sum(dim=1, keepdim=True) + eps) + eps) / norm
    return torch.relu(F.conv2d(x, p) / (input_vector_length * 1.01))


class _Namespace(nn.Module):
    """An empty module that only gives its children a key prefix (``model.backbone.*``)."""


class _PrototypeLayer(nn.Module):
    def __init__(self, n_classes: int, prototypes_per_class: int, channels: int) -> None:
        super().__init__()
        self.prototype_vectors = nn.Parameter(torch.rand(n_classes * prototypes_per_class, channels, 1, 1))
        self.last_layer = nn.Module()
        self.last_layer.weight = nn.Parameter(torch.empty(n_classes, prototypes_per_class))
        self.last_layer.bias = nn.Parameter(torch.full((n_classes,), -2.0))
        nn.init.uniform_(self.last_layer.weight, 0.0, 1.0)


class PublishedAudioProtoPNet(BirdClassifier):
    """AudioProtoPNet-P-BirdSet-XCL (see the module notes), in the published key layout.

    Parameters
    ----------
    config : PublishedConfig
    backbone_config : transformers.ConvNextConfig, optional
        Default :func:`convnext_base_config` (tests pass smaller ones).

    Notes
    -----
    Logits need every prototype's maximum similarity; they are computed in chunks
    of :data:`PROTOTYPE_CHUNK` prototypes (re-computed in the backward pass, so an
    attack's memory stays bounded too). Full similarity maps exist only for the
    classes asked for (:meth:`class_similarity_maps`): for 20 prototypes x 9,736
    classes they would be about 470 MB per clip.
    """

    def __init__(self, config: PublishedConfig, backbone_config=None) -> None:
        super().__init__()
        from transformers import ConvNextModel

        self.config = config
        self.frontend = PublishedLogMel(config.frontend)
        self.model = _Namespace()
        self.model.backbone = ConvNextModel(backbone_config or convnext_base_config())
        channels = self.model.backbone.config.hidden_sizes[-1]
        self.head = _PrototypeLayer(len(config.class_names), config.prototypes_per_class, channels)
        self.card: dict = {}
        self.checkpoint_path = None

    @property
    def backbone(self):
        return self.model.backbone

    @property
    def prototype_vectors(self) -> torch.Tensor:
        return self.head.prototype_vectors

    @property
    def n_prototypes(self) -> int:
        return self.head.prototype_vectors.shape[0]

    @property
    def prototype_class_identity(self) -> torch.Tensor:
        return torch.arange(self.n_prototypes) // self.config.prototypes_per_class

    def check_waveform(self, waveform: torch.Tensor) -> None:
        _check_clip(self, waveform)

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """ConvNeXt's last hidden state (before its final layer norm), upsampled 2x bilinearly.

        Parameters
        ----------
        spectrogram : torch.Tensor [shape=(batch, 1, n_mels, n_frames)]

        Returns
        -------
        torch.Tensor [shape=(batch, 1024, 2h, 2w)]
        """
        hidden = self.model.backbone(spectrogram).last_hidden_state
        return F.interpolate(hidden, scale_factor=2, mode="bilinear", align_corners=False)

    def backbone_modules(self) -> list[nn.Module]:
        """The ``transformers`` ConvNeXt."""
        return [self.model.backbone]

    def similarity_maps(self, features: torch.Tensor, prototype_index: torch.Tensor | None = None) -> torch.Tensor:
        """Similarity maps of the prototypes ``prototype_index`` (default: all; mind the memory): ``(batch, k, freq, time)``."""
        protos = self.head.prototype_vectors if prototype_index is None else self.head.prototype_vectors[prototype_index]
        return published_cosine_similarity(features, protos)

    def prototype_activations(self, features: torch.Tensor) -> torch.Tensor:
        """Max similarity of every prototype over the map, ``(batch, n_prototypes)``, in chunks of bounded memory."""
        def chunk(feats, protos):
            return published_cosine_similarity(feats, protos).amax(dim=(2, 3))

        out = []
        for i in range(0, self.n_prototypes, PROTOTYPE_CHUNK):
            protos = self.head.prototype_vectors[i : i + PROTOTYPE_CHUNK]
            if torch.is_grad_enabled() and (features.requires_grad or protos.requires_grad):
                out.append(checkpoint(chunk, features, protos, use_reentrant=False))
            else:
                out.append(chunk(features, protos))
        return torch.cat(out, dim=1)

    def class_logits(self, activations: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, n_classes)``: each class sums its own prototypes' activations with ReLU'd weights, plus a bias."""
        per_class = activations.view(activations.shape[0], len(self.config.class_names), self.config.prototypes_per_class)
        return torch.einsum("bcp,cp->bc", per_class, torch.relu(self.head.last_layer.weight)) + self.head.last_layer.bias

    def classify(self, activations: torch.Tensor) -> torch.Tensor:
        """Prototype activations ``(batch, n_prototypes)`` -> logits ``(batch, n_classes)`` (:meth:`class_logits`)."""
        return self.class_logits(activations)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits from every prototype's max similarity (in chunks), or the embedding (mean of the map) with ``pre_logits``.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, 1024, freq, time)]
        pre_logits : bool

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)], or [shape=(batch, 1024)] with ``pre_logits``
        """
        if pre_logits:
            return features.mean(dim=(2, 3))
        return self.class_logits(self.prototype_activations(features))

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits, embedding, feature map and prototype activations; ``similarity_maps`` is None (see the class notes)."""
        acts = self.prototype_activations(features)
        return ModelOutput(logits=self.class_logits(acts), embedding=self.forward_head(features, pre_logits=True),
                           feature_map=features, prototype_activations=acts)

    def class_similarity_maps(self, features: torch.Tensor, class_index: int) -> torch.Tensor:
        """The similarity maps of one class's prototypes, ``(batch, prototypes_per_class, freq, time)``."""
        k = self.config.prototypes_per_class
        return self.similarity_maps(features, torch.arange(class_index * k, (class_index + 1) * k, device=features.device))


class PublishedConvNeXt(BirdClassifier):
    """ConvNeXT-Base-BirdSet-XCL: ``transformers`` ``ConvNextForImageClassification`` on the BirdSet front end.

    Parameters
    ----------
    config : PublishedConfig
    backbone_config : transformers.ConvNextConfig, optional
    """

    def __init__(self, config: PublishedConfig, backbone_config=None) -> None:
        super().__init__()
        from transformers import ConvNextForImageClassification

        self.config = config
        self.frontend = PublishedLogMel(config.frontend)
        bc = backbone_config or convnext_base_config()
        bc.num_labels = len(config.class_names)
        net = ConvNextForImageClassification(bc)
        self.convnext, self.classifier = net.convnext, net.classifier
        self.card: dict = {}
        self.checkpoint_path = None

    @property
    def backbone(self):
        return self.convnext

    def check_waveform(self, waveform: torch.Tensor) -> None:
        _check_clip(self, waveform)

    def features_from_spectrogram(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """ConvNeXt's last hidden state: ``(batch, 1, n_mels, n_frames)`` -> ``(batch, 1024, h, w)``."""
        return self.convnext(spectrogram).last_hidden_state

    def backbone_modules(self) -> list[nn.Module]:
        """The ``transformers`` ConvNeXt (its parameters include the final layer norm, which :meth:`forward_head` applies)."""
        return [self.convnext]

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pooling, ConvNeXt's final layer norm (the embedding) and the linear classifier.

        Parameters
        ----------
        features : torch.Tensor [shape=(batch, 1024, h, w)]
        pre_logits : bool

        Returns
        -------
        torch.Tensor [shape=(batch, n_classes)], or [shape=(batch, 1024)] with ``pre_logits``
        """
        pooled = self.convnext.layernorm(features.mean(dim=(2, 3)))
        return pooled if pre_logits else self.classifier(pooled)

    def outputs_from_features(self, features: torch.Tensor) -> ModelOutput:
        """Logits and embedding, the pooling computed once."""
        pooled = self.forward_head(features, pre_logits=True)
        return ModelOutput(logits=self.classifier(pooled), embedding=pooled, feature_map=features)
