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
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ParameterError
from core.io.data import Dataset, WindowSet, build_windows
from core.io.device import get_device
from core.io.fileio import atomic_path
from core.metrics import focal_targets, metrics_from_scores
from core.models.birdnet import BIRDNET_SAMPLE_RATE, BIRDNET_WINDOW_S, BirdNETSpectrogram, birdnet_files
from core.models.birdnet_heads import (
    CANDIDATE_LAYERS,
    BirdNETStage,
    HeadConfig,
    LinearHead,
    PrototypeHead,
    fit_standardizer,
    head_scores,
    layer_tensor,
    stage_features,
    standardize_features,
)
from core.models.protopnet import class_logits, orthogonality_loss
from core.models.tflite_graph import TFLiteFile, TFLiteGraph
from core.training.losses import asymmetric_loss

__all__ = [
    "CANDIDATE_LAYERS",
    "BirdNETStage",
    "HeadConfig",
    "LinearHead",
    "PrototypeHead",
    "extract_features",
    "head_scores",
    "layer_tensor",
    "push_head",
    "stage_features",
    "train_birdnet_head",
    "train_head",
]

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    root = os.environ.get("BIRDSHIELD_CACHE_DIR")
    return (Path(root) if root else Path(__file__).resolve().parents[2] / ".cache") / "birdnet_features"


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


def _loss(logits, y, cfg: HeadConfig):
    return asymmetric_loss(logits, y) if cfg.loss == "asl" else F.binary_cross_entropy_with_logits(logits, y)


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


def head_batch_loss(head: nn.Module, feats: torch.Tensor, y: torch.Tensor, cfg: HeadConfig):
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
               stage: nn.Module | None = None, lr_stage: float = 1e-4, resume=None) -> tuple[nn.Module, list]:
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
    resume : core.training.resume.TrainingResume, optional
        Continue from its state and write one after every epoch (the weights end as an uninterrupted run's).

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
    history, start, y_all = [], 0, torch.as_tensor(train_targets, dtype=torch.float32)
    parts = {"modules": {"head": head, **({"stage": stage} if stage is not None else {})}, "optimizers": {"opt": opt}, "generators": {"gen": gen}}
    if resume is not None:
        resume.stage_epochs = [cfg.epochs]
        start, extra = resume.restore(0, **parts)
        history = extra.get("history", history)
    for epoch in range(start, cfg.epochs):
        head.train()
        order = gen.permutation(len(train_feats))
        total, t0 = 0.0, time.time()
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i : i + cfg.batch_size])
            x = torch.as_tensor(inputs[idx], device=device).float()
            if stage is not None:
                x = stage(x)
            loss, _ = head_batch_loss(head, x, y_all[idx].to(device), cfg)
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
        if resume is not None:
            resume.save(0, epoch + 1, **parts, extra={"history": history})
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
            vec[j] = standardize_features(head, f[s : s + 1])[0, :, fi, ti].reshape(-1, 1, 1)
            where[j] = (i + s, fi, ti)
    missing = [j for j in range(head.n_prototypes) if where[j] is None]
    if missing:
        raise ParameterError(f"push: no training window of the class of prototypes {missing}")
    head.prototype_vectors.data.copy_(vec)
    return [{"prototype": j, "class_index": int(cls[j]), "window": where[j][0], "freq_index": where[j][1],
             "time_index": where[j][2], "similarity": float(best[j])} for j in range(head.n_prototypes)]


#: Recording id of the synthetic no-bird windows (the version changes when their recipe does: it keys the feature cache).
NO_BIRD_SYNTHETIC_ID = "no-bird-synthetic-v1"


def no_bird_windows(dataset: Dataset, *, n_synthetic: int = 256, seed: int = 1, recipe: str = "v1") -> WindowSet:
    """Training windows that hold no bird (targets all zero): the train split's bird-free site noise and synthetic sounds.

    Site noise: the train-split windows of :func:`core.training.noisebank.birdfree_bank`
    (BirdNET detects no animal in them), tiled to 3 s. Synthetic, in equal shares:
    white noise and pink noise at an RMS level drawn uniformly from -80 to -20 dBFS,
    and a pure tone (frequency log-uniform 100 Hz-12 kHz, level -40 to -6 dBFS
    RMS) over pink noise at -80 to -50 dBFS. Only the train split's recordings are
    used, so the no-bird check's site noise (val and test recordings) stays held
    out; its synthetic controls (a 3 kHz tone at -20 dBFS, white noise at -30 dBFS,
    pink noise at -50 dBFS) are of the kinds drawn here, so they are not held out.

    With ``recipe="train"`` the synthetic windows are drawn in equal shares from every
    family of :data:`core.io.synth.TRAIN_FAMILIES` (noises, mains hum, rain, engine,
    wind, tones; :func:`core.io.synth.nonbird_windows`), never from its held-out families.

    Parameters
    ----------
    dataset : Dataset
    n_synthetic : int >= 0
        Synthetic windows.
    seed : int
    recipe : {"v1", "train"}
        ``v1``: the shipped heads' recipe above; ``train``: the synthetic families.

    Returns
    -------
    WindowSet
        3 s windows at 48 kHz, float32 full-scale amplitude, zero targets; ``recordings``
        are the site-noise recordings plus one pseudo-recording :data:`NO_BIRD_SYNTHETIC_ID`.
    """
    from types import SimpleNamespace

    from core.io.audio import pink_noise
    from core.training.noisebank import birdfree_bank

    if isinstance(n_synthetic, bool) or not isinstance(n_synthetic, int) or n_synthetic < 0:
        raise ParameterError(f"n_synthetic must be an integer >= 0, got {n_synthetic!r}")
    if recipe not in ("v1", "train"):
        raise ParameterError(f"recipe must be 'v1' or 'train', got {recipe!r}")
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
    synth_id = f"{NO_BIRD_SYNTHETIC_ID}-seed{seed}" if recipe == "v1" else f"no-bird-families-v1-seed{seed}"
    recordings.append(SimpleNamespace(recording_id=synth_id, labels=(), secondary_labels=()))
    t = np.arange(n) / BIRDNET_SAMPLE_RATE
    if recipe == "train" and n_synthetic:
        from core.io.synth import TRAIN_FAMILIES, nonbird_windows

        per = -(-n_synthetic // len(TRAIN_FAMILIES))
        synth_waves, _ = nonbird_windows(TRAIN_FAMILIES, per, n, BIRDNET_SAMPLE_RATE, seed=seed)
        order = np.arange(len(synth_waves)).reshape(len(TRAIN_FAMILIES), per).T.ravel()[:n_synthetic]  # families interleaved
        for i, j in enumerate(order):
            waves.append(synth_waves[j])
            rec_index.append(synth)
            starts.append(i * n)
    for i in range(n_synthetic if recipe == "v1" else 0):
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


def train_birdnet_head(dataset: Dataset, layer: str, cfg: HeadConfig, *, tuned_from: str | None = None,
                       lr_stage: float = 1e-4, no_bird: int = 0, no_bird_recipe: str = "v1", progress=None, resume=None):
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
    no_bird_recipe : {"v1", "train"}
        The synthetic windows' kinds (:func:`no_bird_windows`).
    resume : core.training.resume.TrainingResume, optional
        Resumable joint epochs (:func:`train_head`); the cached features stay as they are.

    Returns
    -------
    (BirdNETHeadModel, dict)
        The model (on the device, eval mode) and its card: metrics on val and
        test (windows of 3 s; recording scores = max over windows), the
        validation threshold, and for prototype heads the push provenance of each
        prototype (recording, time span, frequency band in both BirdNET input
        channels) and the prototypes-by-band table.
    """

    t0 = time.time() - (resume.prior_seconds if resume is not None else 0.0)
    file = TFLiteFile(birdnet_files()["model"])
    data = head_training_data(dataset, tuned_from or layer, no_bird=no_bird, seed=cfg.seed + 1, file=file, progress=progress,
                              recipe=no_bird_recipe)
    stage = BirdNETStage(tuned_from, layer, file) if tuned_from else None
    head, feats, history, pushed = fit_head(cfg, data["inputs"], data["targets"], data["focal"], stage=stage, lr_stage=lr_stage,
                                            resume=resume)
    backbone = (f"BirdNET V2.4 up to {layer}; {tuned_from} -> {layer} fine-tuned with the head (Adam {lr_stage:g}), "
                f"the rest frozen" if tuned_from else f"BirdNET V2.4 up to {layer}, frozen")
    train_config = {**asdict(cfg), "backbone": backbone, "lr_stage": lr_stage if tuned_from else 0.0}
    return assemble_head_model(dataset, data, cfg, layer, tuned_from, head, stage, feats, history, pushed, train_config,
                                file=file, no_bird=no_bird, t0=t0)


def head_training_data(dataset: Dataset, read: str, *, no_bird: int, seed: int, file: TFLiteFile, progress=None,
                       recipe: str = "v1") -> dict:
    """Windows of each split, their cached ``read`` maps, and the training targets (with the no-bird negatives appended)."""
    names = dataset.class_names
    wins = {s: split_windows(dataset, s) for s in ("train", "val", "test")}
    focal_tr = focal_targets(wins["train"], names)[wins["train"].recording_index]
    inputs = {s: extract_features(read, w, file=file, progress=progress)[read] for s, w in wins.items()}
    targets_tr = wins["train"].targets
    negatives = no_bird_windows(dataset, n_synthetic=no_bird, seed=seed, recipe=recipe) if no_bird else None
    if negatives is not None:  # appended after the bird windows: the push (focal windows only) never lands on them
        inputs["train"] = np.concatenate([inputs["train"], extract_features(read, negatives, file=file)[read]])
        targets_tr = np.concatenate([targets_tr, negatives.targets])
        focal_tr = np.concatenate([focal_tr, negatives.targets])
    return {"windows": wins, "inputs": inputs, "targets": targets_tr, "focal": focal_tr, "negatives": negatives}


def assemble_head_model(dataset: Dataset, data: dict, cfg: HeadConfig, layer: str, tuned_from: str | None,
                         head: nn.Module, stage: nn.Module | None, feats: dict, history: list, pushed: list,
                         train_config: dict, *, file: TFLiteFile, no_bird: int, t0: float):
    """The complete :class:`BirdNETHeadModel` from a trained head (and stage), and its card (metrics, provenance, data)."""
    from core.io.data import ids_sha256, split_description
    from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
    from core.models.protopnet import prototype_bands
    from core.training.calibration import threshold_entry

    names = dataset.class_names
    wins, negatives = data["windows"], data["negatives"]
    arch = "birdnet-protopnet" if cfg.kind == "prototype" else "birdnet-linear"
    config = BirdNETHeadConfig(arch=arch, class_names=tuple(names), layer=layer, channels=int(feats["train"].shape[1]),
                               prototypes_per_class=cfg.prototypes_per_class, tuned_from=tuned_from)
    model = BirdNETHeadModel.from_parts(config, head, stage if tuned_from else None, file)
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
    model = model.to(get_device()).eval()
    scores = {s: head_scores(head, feats[s]) for s in ("val", "test")}  # the model's head: from_parts copied its weights
    card["metrics"] = {s: metrics_from_scores(scores[s], wins[s], names) for s in ("val", "test")}
    card["decision_threshold"] = threshold_entry(scores["val"], wins["val"].targets, dataset.split_scheme)
    card["history"] = history
    card["train_config"] = {**train_config,
                            "stage_parameters": int(sum(q.numel() for q in model.tuned_parameters()))}
    card["train_seconds"] = time.time() - t0
    card["licence"] = model.config.licence
    card["data"] = {
        "root": str(dataset.root),
        "n_recordings": {s: len(dataset.split(s)) for s in ("train", "val", "test")},
        "n_windows": {s: int(len(wins[s].waveforms)) for s in ("train", "val", "test")},
        "targets": "focal labels + secondary labels among the classes (multi-hot); top-1 counts a focal label",
        "windows": f"{BIRDNET_WINDOW_S:g} s at 48 kHz, non-overlapping, last partial window kept if >= 50 %, zero-padded",
        "split": split_description(dataset),
        "split_scheme": dataset.split_scheme,
        "no_bird_negatives": ({"synthetic": no_bird, "site_noise": int(np.sum(negatives.recording_index < len(negatives.recordings) - 1)),
                               "recipe": "core.training.heads.no_bird_windows (train split only)",
                               "synthetic_recipe": negatives.recordings[-1].recording_id} if negatives is not None else None),
        "test_recordings_sha256": ids_sha256(r.recording_id for r in dataset.split("test")),
    }
    card["device"] = str(get_device())
    return model, card


def split_windows(dataset: Dataset, split: str) -> WindowSet:
    return build_windows(dataset, dataset.split(split), sample_rate=BIRDNET_SAMPLE_RATE, window_s=BIRDNET_WINDOW_S,
                         class_names=dataset.class_names)


def fit_head(cfg: HeadConfig, inputs: dict, train_targets: np.ndarray, train_focal: np.ndarray, *,
              stage: nn.Module | None = None, lr_stage: float = 1e-4, resume=None):
    """All of a head's training phases on cached maps: joint (with ``stage`` when given), then for prototype
    heads the push and the last-layer epochs on the (tuned) features.

    Returns ``(head, feats by split, history, pushed)``; ``pushed`` is :func:`push_head`'s list (empty for a linear head).
    """
    head, history = train_head(cfg, inputs["train"], train_targets, train_focal, stage=stage, lr_stage=lr_stage, resume=resume)
    feats = {s: stage_features(stage, x) for s, x in inputs.items()} if stage is not None else dict(inputs)
    pushed: list = []
    if cfg.kind == "prototype":
        pushed = push_head(head, feats["train"], train_focal)
        history += train_last_layer(head, cfg, feats["train"], train_targets)
    return head, feats, history, pushed
