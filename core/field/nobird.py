"""The no-bird check: what each model says on silence, tones, noise and bird-free field windows, and the note the UI shows."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError, check_int
from core.field.analyze import species_names


def _control_signals(sample_rate: int, window_samples: int, n_windows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Sounds without birds, ``n_windows`` windows each: the controls of :func:`no_bird_check`."""
    from core.io.audio import pink_noise

    rng = np.random.default_rng(seed)
    n = window_samples * n_windows
    t = np.arange(n) / sample_rate
    white = rng.standard_normal(n)
    return {
        "digital silence": np.zeros(n, np.float32),
        "3 kHz tone, -20 dBFS": (0.1 * np.sqrt(2) * np.sin(2 * np.pi * 3000 * t)).astype(np.float32),
        "white noise, -30 dBFS": (white / np.sqrt(np.mean(white ** 2)) * 10 ** (-30 / 20)).astype(np.float32),
        "pink noise, -50 dBFS": pink_noise(n, rng) * np.float32(10 ** (-50 / 20)),
    }


@torch.no_grad()
def no_bird_check(models: dict, *, dataset=None, splits=("val", "test"), n_windows: int = 8, seed: int = 0) -> pd.DataFrame:
    """How often each model says "no bird" on sounds that hold none.

    Controls: digital silence, a 3 kHz tone at -20 dBFS, white noise at -30 dBFS,
    pink noise at -50 dBFS (``n_windows`` windows each), and, with a dataset, the
    bird-free site-noise windows of its ``splits`` (:func:`core.training.noisebank.birdfree_bank`:
    windows in which BirdNET detects no animal; tiled to a full window). Scores are
    judged at each model's validation threshold, as :func:`window_outcomes` does but
    *without* the silence guard, so that the table shows what the model itself does.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    dataset : core.io.data.Dataset, optional
    splits : tuple of str
    n_windows : int >= 1
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``model``, ``signal``, ``windows``, ``threshold``, ``no_bird_rate`` (share of
        windows with no species at or above the threshold), ``median_top_score``,
        ``most_named`` (English name of the most frequent top-1 species among the
        windows that named one).
    """
    from core.training.calibration import card_thresholds
    from core.training.noisebank import birdfree_bank

    check_int("n_windows", n_windows, 1)
    thresholds = card_thresholds(list(models))
    rows = []
    for name, model in models.items():
        if name not in thresholds:
            raise ParameterError(f"model {name} has no validation threshold (python -m core calibrate --model {name})")
        sr, window = int(model.config.frontend.sample_rate), int(model.config.window_samples)
        signals = {k: v.reshape(n_windows, window) for k, v in _control_signals(sr, window, n_windows, seed).items()}
        if dataset is not None:
            bank = [w for s in splits for _, w in birdfree_bank(dataset, s, sr, window)]
            if bank:
                signals["bird-free site noise (BirdNET-vetted)"] = np.stack([np.resize(w, window) for w in bank]).astype(np.float32)
        names = species_names(model.config.class_names, model)
        device = next(model.parameters()).device
        model.eval()
        for signal, x in signals.items():
            scores = torch.cat([torch.sigmoid(model(torch.as_tensor(x[i : i + 16], device=device))).float().cpu()
                                for i in range(0, len(x), 16)]).numpy()
            named = scores.max(1) >= thresholds[name]
            tops = pd.Series([names[model.config.class_names[j]][1] for j in scores.argmax(1)[named]])
            rows.append({"model": name, "signal": signal, "windows": len(x), "threshold": thresholds[name],
                         "no_bird_rate": float(1 - named.mean()), "median_top_score": float(np.median(scores.max(1))),
                         "most_named": tops.mode().iloc[0] if len(tops) else ""})
    return pd.DataFrame(rows)


def no_bird_markdown(table: pd.DataFrame, labels: dict | None = None) -> str:
    """The README's table of :func:`no_bird_check`: one row per model, one column per control (no-bird rate)."""
    labels = labels or {}
    signals = list(dict.fromkeys(table["signal"]))
    head = "| model | threshold | " + " | ".join(f"{s} ({int(table[table.signal == s].windows.iloc[0])} windows)" for s in signals) + " |"
    lines = [head, "|---|---:|" + "---:|" * len(signals)]
    for model, g in table.groupby("model", sort=False):
        g = g.set_index("signal")
        cells = []
        for s in signals:
            r = g.loc[s]
            named = r.most_named if isinstance(r.most_named, str) else ""
            cells.append(f"{r.no_bird_rate:.2f}" + (f" (names {named})" if r.no_bird_rate < 1 and named else ""))
        lines.append(f"| {labels.get(model, model)} | {g.threshold.iloc[0]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


NO_BIRD_TABLE = Path(__file__).resolve().parents[2] / "assets" / "analyze" / "no_bird.csv"


def no_bird_note(model_name: str, path: str | os.PathLike = NO_BIRD_TABLE) -> str | None:
    """A warning for models that name a species on sounds without birds (from the stored :func:`no_bird_check`).

    Returns
    -------
    str or None
        None when the model said "no bird" on at least half of every control, or is not in the table.
    """
    p = Path(path)
    if not p.is_file():
        return None
    t = pd.read_csv(p)
    t = t[t["model"] == model_name]
    weak = t[t["no_bird_rate"] < 0.5]
    if weak.empty:
        return None
    parts = ", ".join(f"{r.signal}: {r.no_bird_rate:.0%} 'no bird'" + (f" (names {r.most_named})" if isinstance(r.most_named, str) and r.most_named else "")
                      for r in weak.itertuples())
    return (f"On sounds without birds this model still names a species: {parts}. It was trained only on windows that "
            "hold birds; treat its detections in quiet or noisy stretches with suspicion.")
