"""Score many waveforms with a model in batches (no gradient): the one scoring path of training and studies."""

from __future__ import annotations

import numpy as np
import torch

from core.models.base import BirdClassifier


@torch.no_grad()
def predict_scores(model: BirdClassifier, waveforms: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Sigmoid scores ``(n_windows, n_classes)`` float32 for windows ``(n_windows, n_samples)``.

    On CUDA in larger batches and bfloat16 autocast (:func:`core.io.device.scoring_autocast`).
    """
    from core.io.device import scoring_autocast, scoring_batch_size

    device = next(model.parameters()).device
    batch_size = scoring_batch_size(device, batch_size)
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(waveforms), batch_size):
            x = torch.as_tensor(waveforms[i : i + batch_size], device=device)
            with torch.no_grad(), scoring_autocast(device):
                logits = model(x)
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    finally:
        model.train(was_training)
    n_classes = len(model.config.class_names)
    return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)
