"""Training, evaluation and the AudioProtoPNet push step.

Training uses random 5 s crops of the training recordings (weak labels: each
crop inherits its recording's labels), random gain, mixup and SpecAugment-style
masks; model selection and early stopping use the validation split; metrics are
reported on the held-out test split, per window and per recording (max over
windows). Splits are by recording, so no window crosses splits.

AudioProtoPNet follows the reference schedule (Heinrich et al. 2025): the
backbone is initialised from a trained ConvNeXt (here: the shipped baseline,
as the paper starts from a ConvNeXt trained on BirdSet XCL), a warm-up phase
trains prototypes and last layer with the backbone frozen, a joint phase trains
everything, then the push (projection) step and a last-layer-only phase.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

import librosa
import numpy as np
import torch
from torch.nn import functional as F

from core.errors import ParameterError
from core.io.data import Dataset, WindowSet, build_windows, ids_sha256, split_description, windows_from_waveforms
from core.io.device import get_device
from core.io.journal import jsonable
from core.metrics import focal_targets, metrics_from_scores
from core.models.base import BirdClassifier
from core.models.protopnet import AudioProtoPNet, PrototypeSource, orthogonality_loss
from core.models.scoring import predict_scores
from core.training.adversarial import adversarial_batch, awp_perturb, awp_restore, binary_kl
from core.training.calibration import threshold_entry
from core.training.losses import asymmetric_loss

__all__ = ["TrainConfig", "predict_scores", "evaluate", "push_prototypes", "train_model", "training_step", "binary_kl", "awp_perturb",
           "awp_restore", "cell_size"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes
    ----------
    epochs : int
        Baseline epochs, or AudioProtoPNet joint-phase epochs.
    batch_size : int
    lr : float
        Peak AdamW learning rate (baseline, and backbone in the joint phase).
    weight_decay : float
    warmup_epochs : float
        Linear warm-up before the cosine decay.
    crops_per_5s : float
        Random crops per 5 s of training audio per epoch.
    gain_db : float [dB]
        Random gain drawn uniformly in [-gain_db, +gain_db].
    mixup_p : float in [0, 1]
        Probability of mixing a batch with a shuffled copy (targets: elementwise max).
    freq_mask, time_mask : int
        Maximum width of one frequency (mel bins) and one time (frames) mask.
    seed : int
    warm_epochs, last_layer_epochs : int
        AudioProtoPNet phases (backbone frozen).
    lr_prototypes, lr_last_layer : float
        AudioProtoPNet learning rates (reference: 0.05 and 5e-4 in warm-up).
    orth_weight : float
        Weight of the orthogonality loss (reference: 1.0).
    loss : {"asl", "bce"}
        Classification loss: asymmetric loss (AudioProtoPNet) or binary cross-entropy.
    adv : {"none", "at-o", "at-e"}
        Adversarial training (Heinrich et al. 2025, arXiv 2507.13727), in the waveform
        domain. ``at-o``: perturbations maximise the classification loss (output
        space); ``at-e``: they maximise the spatial-wise cosine dissimilarity of the
        feature maps (embedding space). Either way the loss is the clean loss plus
        ``adv_beta`` times a TRADES-style term (Zhang et al. 2019) between the clean
        and the perturbed batch: the binary KL divergence of the outputs (at-o) or the
        cosine dissimilarity of the feature maps (at-e).
    adv_eps : float in (0, 1] [full-scale amplitude]
        L-inf budget of the training perturbations (ignored with ``adv_snr_db``).
    adv_snr_db : float, optional [dB]
        Budget as a target SNR per clip instead of ``adv_eps``.
    adv_steps : int >= 1
        1: one signed-gradient step; more: PGD with that many steps.
    adv_random_start : bool
        Start from a uniform random point of the eps-ball. With one step this is
        FGSM-RS (Wong, Rice & Kolter 2020, "Fast is better than free", Alg. 3:
        uniform start, step ``1.25 eps``, projection), which avoids the
        catastrophic overfitting of FGSM from the clean point; the earlier shipped
        AT models used plain FGSM (False).
    adv_alpha_ratio : float, optional
        Step size as a multiple of eps; default 1.25 for FGSM-RS, 1.0 for FGSM,
        ``2.5 / adv_steps`` for PGD.
    adv_beta : float >= 0
        Weight of the adversarial term.
    awp_gamma : float >= 0
        Adversarial weight perturbation (:func:`awp_perturb`; Wu et al. 2020): 0 turns it off;
        0.005 is the usual value.
    awp_warmup : int >= 0
        Epochs of each phase before AWP starts.
    """

    # optimisation
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    # data and augmentation
    crops_per_5s: float = 1.0
    gain_db: float = 10.0  # [dB], random gain range
    mixup_p: float = 0.5
    freq_mask: int = 16  # [mel bands]
    time_mask: int = 50  # [frames]
    seed: int = 0
    # AudioProtoPNet phases and loss
    warm_epochs: int = 3
    last_layer_epochs: int = 30
    lr_prototypes: float = 0.05
    lr_last_layer: float = 5e-4
    orth_weight: float = 1.0
    loss: str = "asl"
    # adversarial training (AT-O, AT-E) and adversarial weight perturbation
    adv: str = "none"
    adv_eps: float = 1e-4  # [full-scale amplitude]
    adv_snr_db: float | None = None  # [dB]
    adv_steps: int = 1
    adv_random_start: bool = True
    adv_alpha_ratio: float | None = None
    adv_beta: float = 1.0
    awp_gamma: float = 0.0
    awp_warmup: int = 1

    def __post_init__(self) -> None:
        if self.loss not in ("asl", "bce"):
            raise ParameterError(f"loss must be 'asl' or 'bce', got {self.loss!r}")
        if self.adv not in ("none", "at-o", "at-e"):
            raise ParameterError(f"adv must be 'none', 'at-o' or 'at-e', got {self.adv!r}")
        if not 0 < self.adv_eps <= 1 or self.adv_steps < 1 or self.adv_beta < 0:
            raise ParameterError(f"adv_eps in (0, 1], adv_steps >= 1 and adv_beta >= 0 required, got "
                                 f"{self.adv_eps}, {self.adv_steps}, {self.adv_beta}")
        if not (self.awp_gamma >= 0 and self.awp_warmup >= 0):
            raise ParameterError(f"awp_gamma >= 0 and awp_warmup >= 0 required, got {self.awp_gamma}, {self.awp_warmup}")
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ParameterError(f"epochs >= 0, batch_size >= 1 and lr > 0 required, got {self}")


def evaluate(model: BirdClassifier, windows: WindowSet, *, batch_size: int = 32) -> dict:
    """Metrics of a model on fixed windows: ``{"window": {...}, "recording": {...}}``.

    Each level holds ``cmap``, ``roc_auc``, ``top1`` and ``n``; recording scores are
    the maximum over the recording's windows.
    """
    scores = predict_scores(model, windows.waveforms, batch_size=batch_size)
    return metrics_from_scores(scores, windows, model.config.class_names)


def cell_size(model: AudioProtoPNet, map_shape: tuple[int, int]) -> tuple[float, float]:
    """Size of one similarity-map cell in (mel bins, STFT frames).

    Parameters
    ----------
    map_shape : (freq, time)
        Shape of the similarity maps of one window.
    """
    fcfg = model.config.frontend
    n_frames = fcfg.n_frames(model.config.window_samples)
    return fcfg.n_mels / map_shape[0], n_frames / map_shape[1]


@torch.no_grad()
def push_prototypes(model: AudioProtoPNet, windows: WindowSet, *, batch_size: int = 32) -> list[PrototypeSource]:
    """Project every prototype onto its most similar training feature vector of its class.

    ProtoPNet push (Chen et al. 2019, Sec. 2.2; AudioProtoPNet reference ``push.py``):
    for prototype j of class c, over all windows of recordings whose focal label is c, and all positions
    (f, t) of their feature maps, find the maximum cosine similarity and set
    ``prototype_vectors[j]`` to that feature vector.

    Parameters
    ----------
    model : AudioProtoPNet
    windows : WindowSet
        Fixed training windows (the training split).

    Returns
    -------
    list of PrototypeSource
        One per prototype: recording, window, cell, and its time/frequency span.
    """
    device = next(model.parameters()).device
    model.eval()
    n_p = model.n_prototypes
    cls = model.prototype_class_identity.cpu().numpy()
    best = np.full(n_p, -1.0)
    best_vec = model.prototype_vectors.detach().clone()
    where = [None] * n_p
    # focal labels only: a prototype of class c comes from a recording whose focal species is c
    targets = torch.as_tensor(focal_targets(windows, model.config.class_names)[windows.recording_index])
    for i in range(0, len(windows.waveforms), batch_size):
        x = torch.as_tensor(windows.waveforms[i : i + batch_size], device=device)
        feats = model.forward_features(x)
        sims = model.similarity_maps(feats).cpu()  # (B, P, F, T)
        b, _, fh, tw = sims.shape
        map_shape = (fh, tw)
        allowed = targets[i : i + b][:, cls] > 0.5  # (B, P)
        flat = sims.flatten(2).masked_fill(~allowed[..., None], -1.0)  # (B, P, F*T)
        val, pos = flat.max(dim=2)  # per sample
        bval, bsample = val.max(dim=0)  # over samples
        for j in np.flatnonzero(bval.numpy() > best):
            s = int(bsample[j])
            cell = int(pos[s, j])
            fi, ti = divmod(cell, tw)
            best[j] = float(bval[j])
            best_vec[j] = feats[s, :, fi, ti].reshape(-1, 1, 1)
            where[j] = (i + s, fi, ti)
    missing = [j for j in range(n_p) if where[j] is None]
    if missing:
        raise ParameterError(f"push: no training window of the class of prototypes {missing}")
    model.prototype_vectors.data.copy_(best_vec)
    fcfg = model.config.frontend
    mel_f = librosa.mel_frequencies(n_mels=fcfg.n_mels, fmin=fcfg.f_min, fmax=fcfg.f_max)
    cell_f, cell_t = cell_size(model, map_shape)
    sources = []
    for j in range(n_p):
        w, fi, ti = where[j]
        rec = windows.recordings[windows.recording_index[w]]
        start_s = float(windows.starts[w]) / fcfg.sample_rate
        lo, hi = int(fi * cell_f), min(int((fi + 1) * cell_f) - 1, fcfg.n_mels - 1)
        sources.append(
            PrototypeSource(
                prototype=j,
                class_name=model.config.class_names[cls[j]],
                recording_id=rec.recording_id,
                window_start_s=start_s,
                freq_index=int(fi),
                time_index=int(ti),
                t_start_s=start_s + ti * cell_t * fcfg.hop_length / fcfg.sample_rate,
                t_end_s=min(start_s + (ti + 1) * cell_t * fcfg.hop_length / fcfg.sample_rate,
                            start_s + model.config.clip_seconds),
                f_low_hz=float(mel_f[lo]),
                f_high_hz=float(mel_f[hi]),
                similarity=float(best[j]),
            )
        )
    return sources


class _CropSampler:
    """Random 5 s crops of in-memory recordings, with their targets."""

    def __init__(self, waves: list[np.ndarray], targets: np.ndarray, window: int, crops_per_5s: float, gen: torch.Generator):
        self.waves, self.targets, self.window, self.gen = waves, targets, window, gen
        counts = [max(1, round(crops_per_5s * len(w) / window)) for w in waves]
        self.index = np.repeat(np.arange(len(waves)), counts)

    def epoch(self, batch_size: int):
        order = self.index[torch.randperm(len(self.index), generator=self.gen).numpy()]
        for i in range(0, self.steps(batch_size) * batch_size, batch_size):
            chunk = order[i : i + batch_size]
            batch = np.zeros((len(chunk), self.window), np.float32)
            for k, r in enumerate(chunk):
                w = self.waves[r]
                if len(w) >= self.window:
                    s = int(torch.randint(0, len(w) - self.window + 1, (1,), generator=self.gen))
                    batch[k] = w[s : s + self.window]
                else:
                    s = int(torch.randint(0, self.window - len(w) + 1, (1,), generator=self.gen))
                    batch[k, s : s + len(w)] = w
            yield torch.from_numpy(batch), torch.from_numpy(self.targets[chunk])

    def steps(self, batch_size: int) -> int:
        """Full batches per epoch (one smaller batch when there are fewer crops than ``batch_size``)."""
        return max(1, len(self.index) // batch_size)


def _augment_waveform(x, y, cfg: TrainConfig, gen: torch.Generator):
    """Random gain and mixup on the waveform (stays inside [-1, 1]); targets of a mix: elementwise max."""
    b = x.shape[0]
    gain = 10 ** ((torch.rand(b, 1, generator=gen) * 2 - 1) * cfg.gain_db / 20)
    x = (x * gain).clamp(-1, 1)
    if torch.rand(1, generator=gen).item() < cfg.mixup_p:
        perm = torch.randperm(b, generator=gen)
        lam = torch.empty(b, 1).uniform_(0.3, 0.7, generator=gen)
        x = lam * x + (1 - lam) * x[perm]
        y = torch.maximum(y, y[perm])
    return x, y


def _draw_masks(b: int, n_mels: int, n_frames: int, cfg: TrainConfig, gen: torch.Generator, device) -> torch.Tensor:
    """Two frequency and two time masks per clip (SpecAugment), ``(b, 1, n_mels, n_frames)`` bool."""
    mask = torch.zeros(b, 1, n_mels, n_frames, dtype=torch.bool)
    fr, tr = torch.arange(n_mels)[None], torch.arange(n_frames)[None]
    for _ in range(2):
        f0 = torch.randint(0, n_mels, (b,), generator=gen)
        fw = torch.randint(0, cfg.freq_mask + 1, (b,), generator=gen)
        t0 = torch.randint(0, n_frames, (b,), generator=gen)
        tw = torch.randint(0, cfg.time_mask + 1, (b,), generator=gen)
        fm = (fr >= f0[:, None]) & (fr < (f0 + fw)[:, None])
        tm = (tr >= t0[:, None]) & (tr < (t0 + tw)[:, None])
        mask |= fm[:, None, :, None] | tm[:, None, None, :]
    return mask.to(device)


def _masked_spec(model, x, mask):
    spec = model.frontend(x)
    return torch.where(mask, spec.amin(dim=(2, 3), keepdim=True), spec)


@dataclass
class _Batch:
    x: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    x_adv: torch.Tensor | None


def _prepare_batch(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> _Batch:
    """Augmentation and SpecAugment masks of one batch (the adversarial waveforms come with the first loss)."""
    device = next(model.parameters()).device
    x, y = _augment_waveform(x, y, cfg, gen)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        shape = model.frontend(x[:1]).shape
    mask = _draw_masks(x.shape[0], shape[2], shape[3], cfg, gen, device)
    return _Batch(x, y, mask, None)


def _batch_loss(model, batch: _Batch, cfg: TrainConfig):
    from core.attacks.objectives import spatial_cosine_dissimilarity

    feats = model.features_from_spectrogram(_masked_spec(model, batch.x, batch.mask))
    logits = model.forward_head(feats)
    loss = _loss(model, logits, batch.y, cfg)
    if cfg.adv == "none":
        return loss, None
    if batch.x_adv is None:  # after the clean pass, as BatchNorm statistics were then (reproduces the shipped models)
        batch.x_adv = adversarial_batch(model, batch.x, batch.y, cfg)
    feats_adv = model.features_from_spectrogram(_masked_spec(model, batch.x_adv, batch.mask))
    if cfg.adv == "at-o":
        term = binary_kl(logits, model.forward_head(feats_adv))
    else:
        term = spatial_cosine_dissimilarity(feats, feats_adv).mean()
    return loss + cfg.adv_beta * term, float(term.detach())


def training_step(model, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig, gen: torch.Generator):
    """Loss of one batch of raw crops: augmentation, clean loss and, with ``cfg.adv``, the adversarial term.

    Parameters
    ----------
    model : BirdClassifier, in train mode
    x : torch.Tensor [shape=(batch, n_samples)], full-scale amplitude (CPU)
    y : torch.Tensor [shape=(batch, n_classes)], multi-hot
    cfg : TrainConfig
    gen : torch.Generator

    Returns
    -------
    (loss, adv_term) : torch.Tensor (scalar, with graph), float or None
        ``adv_term`` is the TRADES-style term before weighting (None without ``cfg.adv``).
    """
    return _batch_loss(model, _prepare_batch(model, x, y, cfg, gen), cfg)


def _loss(model: BirdClassifier, logits: torch.Tensor, y: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    loss = asymmetric_loss(logits, y) if cfg.loss == "asl" else F.binary_cross_entropy_with_logits(logits, y)
    if isinstance(model, AudioProtoPNet) and cfg.orth_weight > 0:
        loss = loss + cfg.orth_weight * orthogonality_loss(model.prototype_vectors, model.config.prototypes_per_class)
    return loss


def _cosine_schedule(opt, total_steps: int, warmup_steps: int):
    def f(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


#: Stage of each phase in a resume state (:class:`core.training.resume.TrainingResume`): the order the phases run in.
_STAGES = {"warm": 0, "joint": 1, "train": 0}


def _run_phase(model, sampler, cfg, param_groups, epochs, name, val, gen, progress, history, *, frozen_backbone=False, resume=None):
    """Train ``epochs`` epochs on random crops; keep the best state by validation cmAP.

    With ``frozen_backbone`` the backbone stays in eval mode (BatchNorm statistics frozen). With ``resume``
    (:class:`core.training.resume.TrainingResume`) the phase continues from its state, and writes one after every epoch.
    """
    if epochs <= 0:
        return
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay)
    steps = sampler.steps(cfg.batch_size)
    sched = _cosine_schedule(opt, epochs * steps, int(cfg.warmup_epochs * steps))
    best, best_state, start = -1.0, None, 0
    parts = {"modules": {"model": model}, "optimizers": {"opt": opt}, "schedulers": {"sched": sched}, "generators": {"gen": gen}}
    if resume is not None:
        at = resume.restore(_STAGES[name], **parts)
        if at is None:  # this phase finished before the state was written
            return
        start, extra = at
        best, best_state, history[:] = extra.get("best", best), extra.get("best_state"), extra.get("history", history)
    for epoch in range(start, epochs):
        model.train()
        if frozen_backbone:
            model.eval_backbone()
        t0, total, total_adv = time.time(), 0.0, 0.0
        use_awp = cfg.awp_gamma > 0 and epoch >= cfg.awp_warmup
        for step, (x, y) in enumerate(sampler.epoch(cfg.batch_size)):
            batch = _prepare_batch(model, x, y, cfg, gen)
            diffs = []
            if use_awp:  # the direction pass must not move BatchNorm statistics: keep them as they were
                stats = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches" in k}
                diffs = awp_perturb(model, _batch_loss(model, batch, cfg)[0], cfg.awp_gamma)
                model.load_state_dict(stats, strict=False)
            loss, adv_term = _batch_loss(model, batch, cfg)
            total_adv += adv_term or 0.0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            awp_restore(diffs)
            opt.step()
            sched.step()
            total += loss.item()
            if progress:
                progress(name, epoch, epochs, step + 1, steps, loss.item())
        m = evaluate(model, val)
        row = {"phase": name, "epoch": epoch + 1, "loss": total / max(1, steps), "val": m, "seconds": time.time() - t0}
        if cfg.adv != "none":
            row["adv_term"] = total_adv / max(1, steps)
        history.append(row)
        log.info("%s epoch %d/%d loss %.4f val cmAP %.3f (rec %.3f) %.0fs", name, epoch + 1, epochs,
                 row["loss"], m["window"]["cmap"], m["recording"]["cmap"], row["seconds"])
        if best_state is None or m["window"]["cmap"] > best:
            best, best_state = m["window"]["cmap"], copy.deepcopy(model.state_dict())
        if resume is not None:
            resume.save(_STAGES[name], epoch + 1, **parts, extra={"best": best, "best_state": best_state, "history": jsonable(history)})
    model.load_state_dict(best_state)


def _activations(model: AudioProtoPNet, waveforms: np.ndarray, batch_size: int) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return torch.cat([
            model.forward_all(torch.as_tensor(waveforms[i : i + batch_size], device=device)).prototype_activations
            for i in range(0, len(waveforms), batch_size)
        ])


def _last_layer_phase(model: AudioProtoPNet, train_w: WindowSet, val: WindowSet, cfg: TrainConfig, history: list):
    """Train only ``last_layer`` (+ bias) on the fixed prototype activations of the training windows.

    The backbone and prototypes are frozen, so activations are computed once for
    the training and validation windows; the best epoch by validation cmAP is kept.
    """
    acts = _activations(model, train_w.waveforms, cfg.batch_size)
    val_acts = _activations(model, val.waveforms, cfg.batch_size)
    y = torch.as_tensor(train_w.targets, device=acts.device)
    opt = torch.optim.Adam([model.last_layer, model.last_layer_bias], lr=cfg.lr_last_layer)
    gen = torch.Generator().manual_seed(cfg.seed + 7)
    best, best_state = -1.0, None
    for epoch in range(cfg.last_layer_epochs):
        perm = torch.randperm(len(acts), generator=gen)
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i : i + cfg.batch_size].to(acts.device)
            logits = model.classify(acts[idx])
            loss = asymmetric_loss(logits, y[idx]) if cfg.loss == "asl" else F.binary_cross_entropy_with_logits(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            scores = torch.sigmoid(model.classify(val_acts)).cpu().numpy()
        m = metrics_from_scores(scores, val, model.config.class_names)
        history.append({"phase": "last_layer", "epoch": epoch + 1, "loss": loss.item(), "val": m})
        if best_state is None or m["window"]["cmap"] > best:
            best, best_state = m["window"]["cmap"], copy.deepcopy(model.state_dict())
    if best_state is not None:
        model.load_state_dict(best_state)
    log.info("last layer: best val cmAP %.3f", best)


def train_model(
    model: BirdClassifier,
    dataset: Dataset,
    cfg: TrainConfig,
    *,
    progress: Callable | None = None,
    max_train_recordings: int | None = None,
    resume=None,
) -> dict:
    """Train a model in place and return the model-card fields it produces.

    Parameters
    ----------
    model : BirdClassifier
        Randomly initialised (or, for AudioProtoPNet, with a trained backbone).
    dataset : Dataset
    cfg : TrainConfig
    progress : callable, optional
        ``progress(phase, epoch, epochs, step, steps, loss)``.
    max_train_recordings : int, optional
        Use only the first N recordings of each class in each split (smoke tests).
    resume : core.training.resume.TrainingResume, optional
        Continue an interrupted run from its state, and write one after every epoch (the push and last-layer epochs
        that follow are run again); the weights then end as an uninterrupted run's.

    Returns
    -------
    dict
        ``history``, ``metrics`` (val and test), ``prototypes`` (provenance of the
        push, AudioProtoPNet only), ``train_seconds``.
    """
    t_start = time.time() - (resume.prior_seconds if resume is not None else 0.0)
    device = get_device()
    model.to(device)
    config = model.config
    sr, window = config.frontend.sample_rate, config.window_samples
    gen = torch.Generator().manual_seed(cfg.seed)

    def recs(split):
        r = dataset.split(split)
        if not max_train_recordings:
            return r
        per_class: dict[str, int] = {}
        keep = []
        for rec in r:  # the first N recordings of every class, so that every class is present
            if per_class.get(rec.labels[0], 0) < max_train_recordings:
                per_class[rec.labels[0]] = per_class.get(rec.labels[0], 0) + 1
                keep.append(rec)
        return keep

    train_recs = recs("train")
    waves = [dataset.load(r, sr) for r in train_recs]
    targets = np.stack([dataset.target(r, config.class_names) for r in train_recs])
    sampler = _CropSampler(waves, targets, window, cfg.crops_per_5s, gen)
    val = build_windows(dataset, recs("val"), sample_rate=sr, window_s=config.clip_seconds, class_names=config.class_names)
    history: list[dict] = []
    card: dict = {}
    if resume is not None:
        resume.stage_epochs = [cfg.warm_epochs, cfg.epochs] if isinstance(model, AudioProtoPNet) else [cfg.epochs]
    if isinstance(model, AudioProtoPNet):
        backbone = list(model.backbone_parameters())
        for p in backbone:
            p.requires_grad_(False)
        _run_phase(model, sampler, cfg, [
            {"params": [model.prototype_vectors], "lr": cfg.lr_prototypes, "weight_decay": 0.0},
            {"params": [model.last_layer, model.last_layer_bias], "lr": cfg.lr_last_layer},
        ], cfg.warm_epochs, "warm", val, gen, progress, history, frozen_backbone=True, resume=resume)
        for p in backbone:
            p.requires_grad_(True)
        _run_phase(model, sampler, cfg, [
            {"params": backbone, "lr": cfg.lr},
            {"params": [model.prototype_vectors], "lr": cfg.lr_prototypes / 5, "weight_decay": 0.0},
            {"params": [model.last_layer, model.last_layer_bias], "lr": cfg.lr_last_layer * 2},
        ], cfg.epochs, "joint", val, gen, progress, history, resume=resume)
        train_w = windows_from_waveforms(waves, targets, train_recs, window_samples=window, n_classes=len(config.class_names))
        before = evaluate(model, val)
        sources = push_prototypes(model, train_w)
        after = evaluate(model, val)
        history.append({"phase": "push", "val_before": before, "val_after": after})
        log.info("push: val cmAP %.3f -> %.3f", before["window"]["cmap"], after["window"]["cmap"])
        _last_layer_phase(model, train_w, val, replace(cfg, lr_last_layer=cfg.lr_last_layer * 2), history)
        card["prototypes"] = [s.to_dict() for s in sources]
        from core.models.protopnet import prototype_bands

        bands = prototype_bands(card["prototypes"], config.class_names)
        card["prototype_bands"] = {c: {k: int(v) for k, v in row.items()} for c, row in bands.iterrows()}
    else:
        _run_phase(model, sampler, cfg, [{"params": list(model.parameters()), "lr": cfg.lr}],
                   cfg.epochs, "train", val, gen, progress, history, resume=resume)
    test = build_windows(dataset, recs("test"), sample_rate=sr, window_s=config.clip_seconds, class_names=config.class_names)
    val_scores = predict_scores(model, val.waveforms)
    card["metrics"] = {"val": metrics_from_scores(val_scores, val, config.class_names), "test": evaluate(model, test)}
    card["decision_threshold"] = threshold_entry(val_scores, val.targets, dataset.split_scheme)
    card["history"] = history
    card["train_config"] = asdict(cfg)
    card["train_seconds"] = time.time() - t_start
    card["data"] = {
        "root": str(dataset.root),
        "n_recordings": {s: len(recs(s)) for s in ("train", "val", "test")},
        "n_windows": {"val": len(val.waveforms), "test": len(test.waveforms)},
        "targets": "focal labels + secondary labels among the classes (multi-hot); top-1 counts a focal label",
        "windows": f"{config.clip_seconds:g} s, non-overlapping, last partial window kept if >= 50 %, zero-padded",
        "split": split_description(dataset),
        "split_scheme": dataset.split_scheme,
        "test_recordings_sha256": ids_sha256(r.recording_id for r in recs("test")),
    }
    card["device"] = str(device)
    return card
