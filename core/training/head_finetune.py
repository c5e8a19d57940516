"""Adversarial fine-tuning of a BirdNET prototype head (AT-O, AT-E), Gaussian-noise fine-tuning, and the OT+FT control.

The tuned stage (BLOCK_3-4_ADD -> BLOCK_3-5_ADD) and the head are trained for a few
epochs with a TRADES-style term on FGSM-RS waveform perturbations found through the
whole model (Zhang et al. 2019, "Theoretically principled trade-off between
robustness and accuracy", ICML): a binary KL on the outputs (AT-O) or the spatial
cosine dissimilarity of the head's feature maps (AT-E, embedding space); the
control runs the same epochs without the term. The explanation-guided arm (AT-X) keeps the prototype activations
(the explanation) of the clean window under an attack that tries to move them. The noise arm trains on windows with Gaussian noise added to every
sample, as Cohen, Rosenfeld & Kolter 2019 (ICML, Sec. 4) train base classifiers for randomized smoothing, so that the
smoothed model (:mod:`core.attacks.smoothing`) keeps its accuracy. Then push and last-layer epochs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch

from core.errors import ParameterError
from core.io.data import Dataset
from core.io.device import get_device
from core.models.birdnet import birdnet_files
from core.models.birdnet_heads import HeadConfig, stage_features
from core.models.tflite_graph import TFLiteFile
from core.training.heads import assemble_head_model, head_batch_loss, head_training_data, push_head, train_last_layer

log = logging.getLogger(__name__)

HEAD_ADV_CHOICES = ("none", "at-o", "at-e", "at-x", "noise")
#: The arms that train on adversarial perturbations (FGSM-RS through the whole model).
ADVERSARIAL = ("at-o", "at-e", "at-x")


def noisy_windows(waves: np.ndarray, sigma: float, gen: np.random.Generator) -> np.ndarray:
    """``waves + N(0, sigma^2 I)``: the noise arm's training input (not clipped, as the smoothing noise is not).

    Parameters
    ----------
    waves : np.ndarray [shape=(batch, n_samples), dtype=float32] [full-scale amplitude]
    sigma : float > 0 [full-scale amplitude]
    gen : numpy.random.Generator

    Returns
    -------
    np.ndarray, ``waves``' shape, float32
    """
    return (waves + sigma * gen.standard_normal(waves.shape, dtype=np.float32)).astype(np.float32)


def adversarial_finetune_head(dataset: Dataset, init, *, adv: str = "at-o", epochs: int = 4, eps: float = 1e-4,
                              beta: float = 1.0, seed: int = 0, noise_sigma: float = 3e-4, progress=None, resume=None):
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
      adversarial scores (:func:`core.training.train.binary_kl`), the attack maximising the
      top-class loss (:class:`core.attacks.OutputUntargeted`);
    - ``"at-e"`` (embedding space): the spatial cosine dissimilarity of the head's
      input feature maps (:func:`core.attacks.objectives.spatial_cosine_dissimilarity`),
      the attack maximising it (:class:`core.attacks.EmbeddingUntargeted`);
    - ``"at-x"`` (explanation-guided, prototype heads only): the RMS difference of the clean and adversarial prototype
      activations (:func:`core.attacks.objectives.prototype_activation_distance`), the attack maximising it
      (:class:`core.attacks.objectives.PrototypeShift`): a TRADES-style consistency term (Zhang et al. 2019) on the
      max-pooled prototype activations, AudioProtoPNet's explanation, in the spirit of attribution-robustness training
      (Chen et al. 2019, "Robust Attribution Regularization", NeurIPS, motivate it; their IG-NORM regulariser is
      another term). It keeps no location and no class: the activations of every prototype, not which of the
      predicted class's prototypes ranks first nor where its peak lies;
    - ``"none"``: the same epochs without the term (OT+FT: separates the effect of
      adversarial training from that of training longer);
    - ``"noise"``: the same epochs with the clean loss computed on the windows plus
      Gaussian noise of std ``noise_sigma`` per sample (:func:`noisy_windows`; Cohen et
      al. 2019's training for randomized smoothing), through the whole model.

    Parameters
    ----------
    dataset : Dataset
    init : BirdNETHeadModel
        A prototype or linear head with ``config.tuned_from`` set (BirdNET frozen
        throughout would leave only the head to adapt: refused). Not modified.
    adv : {"at-o", "at-e", "at-x", "none", "noise"}
    epochs : int >= 1
    eps : float in (0, 1] [full-scale amplitude]
        L-inf budget of the training perturbations.
    beta : float >= 0
    seed : int
    noise_sigma : float in (0, 1) [full-scale amplitude]
        The noise arm's std per sample (the smoothing sigma it is made for).
    resume : core.training.resume.TrainingResume, optional
        Continue an interrupted run from its state and write one after every epoch (the push and last-layer epochs
        that follow are run again); the weights end as an uninterrupted run's.

    Returns
    -------
    (BirdNETHeadModel, dict)
        As :func:`train_birdnet_head`; ``card["train_config"]`` records ``adv``, ``eps``, ``beta``, ``noise_sigma`` and ``init``.

    Raises
    ------
    ParameterError
        Unknown ``adv``, bad ``epochs``/``eps``/``beta``/``noise_sigma``, ``init`` without a tuned stage, or ``at-x``
        on a linear head (it has no prototypes).
    """
    from core.attacks import PGD, EmbeddingUntargeted, OutputUntargeted
    from core.attacks.objectives import PrototypeShift, prototype_activation_distance, spatial_cosine_dissimilarity
    from core.models.birdnet_proto import BirdNETHeadModel
    from core.training.adversarial import binary_kl

    if adv not in HEAD_ADV_CHOICES:
        raise ParameterError(f"adv must be one of {', '.join(HEAD_ADV_CHOICES)}, got {adv!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1 or not 0 < eps <= 1 or beta < 0:
        raise ParameterError(f"epochs >= 1, eps in (0, 1] and beta >= 0 required, got {epochs}, {eps}, {beta}")
    if adv == "noise" and not 0 < float(noise_sigma) < 1:
        raise ParameterError(f"noise_sigma must lie in (0, 1), got {noise_sigma}")
    c = init.config
    if not c.tuned_from:
        raise ParameterError("adversarial fine-tuning needs a model with tuned BirdNET layers (train-head --tuned-from); "
                             "this one has BirdNET frozen")
    if adv == "at-x" and c.arch != "birdnet-protopnet":
        raise ParameterError("explanation-guided training (at-x) keeps prototype activations: it needs a prototype head")
    t0 = time.time() - (resume.prior_seconds if resume is not None else 0.0)
    tc = dict(init.card.get("train_config", {}))
    cfg = HeadConfig(**{**{k: tc[k] for k in HeadConfig.__dataclass_fields__ if k in tc}, "seed": seed})
    negatives = (init.card.get("data") or {}).get("no_bird_negatives") or {}
    no_bird = int(negatives.get("synthetic", 0))
    # the same synthetic kinds as the head was trained with (train-head --no-bird-families; its card names them by id)
    recipe = "train" if str(negatives.get("synthetic_recipe", "")).startswith("no-bird-families") else "v1"
    lr_stage = float(tc.get("lr_stage", 1e-4))
    device = get_device()
    file = TFLiteFile(birdnet_files()["model"])
    data = head_training_data(dataset, c.tuned_from, no_bird=no_bird, seed=tc.get("seed", 0) + 1, file=file, progress=progress,
                              recipe=recipe)
    waves = data["windows"]["train"].waveforms
    if data["negatives"] is not None:
        waves = np.concatenate([waves, data["negatives"].waveforms])
    # 34 of the 1,176 decoded training windows with birds overshoot full scale (resampling, lossy decoding): the attacks work
    # inside [-1, 1], so they start from the clipped window (the clean loss keeps the unclipped one's cached maps)
    waves = np.clip(waves, -1.0, 1.0)
    model = BirdNETHeadModel(c, file).to(device)
    model.load_state_dict(init.state_dict())
    model.eval()
    stage, head = model.trainable_parts()  # shared with the model: the attacks below see the weights being trained
    for q in model.tuned_parameters():
        q.requires_grad_(True)
    groups = [{"params": [q for q in model.tuned_parameters() if q.requires_grad], "lr": lr_stage}]
    if cfg.kind == "prototype":
        groups += [{"params": [head.prototype_vectors], "lr": cfg.lr},
                   {"params": [head.last_layer, head.last_layer_bias], "lr": cfg.lr_last_layer}]
    else:
        groups.append({"params": head.parameters(), "lr": cfg.lr})
    opt = torch.optim.Adam(groups)
    objective = {"at-o": OutputUntargeted, "at-x": PrototypeShift}.get(adv, EmbeddingUntargeted)()
    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    inputs, y_all = data["inputs"]["train"], torch.as_tensor(data["targets"], dtype=torch.float32)
    history, n_batches, start = [], -(-len(inputs) // cfg.batch_size), 0
    parts = {"modules": {"model": model}, "optimizers": {"opt": opt}, "generators": {"gen": gen}}
    if resume is not None:
        resume.stage_epochs = [epochs]
        start, extra = resume.restore(0, **parts)
        history = extra.get("history", history)
    for epoch in range(start, epochs):
        order = gen.permutation(len(inputs))
        total, term_total, t_epoch = 0.0, 0.0, time.time()
        for b, i in enumerate(range(0, len(order), cfg.batch_size)):
            idx = np.sort(order[i : i + cfg.batch_size])
            y = y_all[idx].to(device)
            head.train()
            stage.train()
            if adv == "noise":  # the trunk is frozen: its features of the noisy windows need no gradient
                with torch.no_grad():
                    trunk = model.trunk_features(torch.as_tensor(noisy_windows(waves[idx], noise_sigma, gen), device=device))
                feats = model.tuned_features(trunk)
            else:
                feats = model.tuned_features(torch.as_tensor(inputs[idx], device=device).float())
            loss, logits = head_batch_loss(head, feats, y, cfg)
            term = torch.zeros((), device=device)
            if adv in ADVERSARIAL:
                x = torch.as_tensor(waves[idx], device=device)
                attack = PGD(steps=1, eps=eps, objective=objective, random_start=True, alpha_ratio=1.25,
                             seed=int(gen.integers(2**31 - 1)))
                x_adv = attack(model, x, y)  # restores the modes it found
                with torch.no_grad():
                    trunk_adv = model.trunk_features(x_adv)
                feats_adv = model.tuned_features(trunk_adv)
                if adv == "at-o":
                    term = binary_kl(logits, head_batch_loss(head, feats_adv, y, cfg)[1])
                elif adv == "at-x":
                    term = prototype_activation_distance(head.similarity_maps(feats_adv).amax(dim=(2, 3)),
                                                         head.similarity_maps(feats).amax(dim=(2, 3))).mean()
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
        if resume is not None:
            resume.save(0, epoch + 1, **parts, extra={"history": history})
    head.eval()
    stage.eval()
    feats = {s: stage_features(stage, x) for s, x in data["inputs"].items()}
    pushed: list = []
    if cfg.kind == "prototype":
        pushed = push_head(head, feats["train"], data["focal"])
        history += train_last_layer(head, cfg, feats["train"], data["targets"])
    train_config = {**tc, **asdict(cfg), "init": init.checkpoint_path.stem if init.checkpoint_path else None,
                    "finetune_epochs": epochs, "adv": adv, "adv_eps": eps if adv in ADVERSARIAL else None,
                    "adv_beta": beta if adv in ADVERSARIAL else None,
                    "adv_attack": "FGSM-RS (PGD, 1 step, random start, alpha 1.25 eps), L-inf" if adv in ADVERSARIAL else None,
                    "noise_sigma": float(noise_sigma) if adv == "noise" else None}
    return assemble_head_model(dataset, data, cfg, c.layer, c.tuned_from, head, stage, feats, history, pushed,
                                train_config, file=file, no_bird=no_bird, t0=t0)
