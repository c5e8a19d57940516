"""Test windows the benchmarks share: one recording per species, its first window the model labels correctly."""

from __future__ import annotations

import numpy as np
import torch

from core.io.data import build_windows


def labelled_test_windows(model, ds, n: int, per_species: int = 1) -> list[tuple[str, float, np.ndarray, int]]:
    """Up to ``n`` test windows, at most ``per_species`` recordings per species (its first label), in each the first
    window whose clean top-1 is one of the recording's labels.

    Parameters
    ----------
    model : BirdClassifier
    ds : Dataset
    n : int
    per_species : int
        Recordings per species (1: one window per species; the test split holds 4-7 recordings of each).

    Returns
    -------
    list of (recording_id, start [s], waveform [shape=(window_samples,), dtype=float32], clean top-1 class index)
    """
    cfg = model.config
    names = list(cfg.class_names)
    chosen, species = [], {}
    for rec in ds.split("test"):
        if len(chosen) == n:
            break
        if species.get(rec.labels[0], 0) >= per_species or rec.labels[0] not in names:
            continue
        ws = build_windows(ds, [rec], sample_rate=cfg.frontend.sample_rate, window_s=cfg.clip_seconds, class_names=names)
        with torch.no_grad():
            top = model(torch.as_tensor(ws.waveforms)).argmax(-1).numpy()
        hit = [i for i, t in enumerate(top) if names[t] in rec.labels]
        if hit:
            chosen.append((rec.recording_id, float(ws.starts[hit[0]]) / cfg.frontend.sample_rate, ws.waveforms[hit[0]], int(top[hit[0]])))
            species[rec.labels[0]] = species.get(rec.labels[0], 0) + 1
    return chosen
