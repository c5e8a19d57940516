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


#: Seed of the no-bird check's synthetic families: distinct from training's (heads) and validation's (open set).
CHECK_SEED = 2026


@torch.no_grad()
def no_bird_check(models: dict, *, dataset=None, splits=("val", "test"), n_windows: int = 8, seed: int = 0,
                  families=None, per_family: int = 16, family_seed: int | None = None) -> pd.DataFrame:
    """How often each model says "no bird" on sounds that hold none, and how many false windows per hour that makes.

    Controls: digital silence, a 3 kHz tone at -20 dBFS, white noise at -30 dBFS,
    pink noise at -50 dBFS (``n_windows`` windows each); ``per_family`` windows of each
    synthetic non-bird family (:mod:`core.io.synth`: noises, hum, rain, engine, wind,
    tones, tone sequences, sirens, bells, music, voices, barks; drawn with
    :data:`CHECK_SEED`, never the seeds of training or validation); and, with a dataset,
    the bird-free site-noise windows of each of ``splits``
    (:func:`core.training.noisebank.birdfree_bank`: windows in which BirdNET detects no
    animal; tiled to a full window). Scores are judged at each model's validation
    threshold, as :func:`window_outcomes` does but *without* the silence guard, so that
    the table shows what the model itself does.

    ``held_out`` marks the signals that no model's training or threshold choice saw:
    the families of :data:`core.io.synth.HELD_OUT_FAMILIES` and the test split's site
    noise. (The BirdNET heads train on the train split's site noise and on
    :data:`core.io.synth.TRAIN_FAMILIES`; the open-set threshold is chosen with the val
    split's site noise; the small models saw neither.)

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    dataset : core.io.data.Dataset, optional
    splits : tuple of str
    n_windows : int >= 1
        Windows of each fixed control.
    seed : int
        Seed of the fixed controls.
    families : sequence of str, optional
        Synthetic families (default all of :data:`core.io.synth.FAMILIES`; ``()`` for none).
    per_family : int >= 1
    family_seed : int, optional
        Seed of the synthetic draw; default :data:`CHECK_SEED`. Another seed draws fresh windows of the same families.

    Returns
    -------
    pandas.DataFrame
        ``model``, ``signal``, ``held_out``, ``windows``, ``clip_seconds``, ``threshold``, ``no_bird_rate`` (share of
        windows with no species at or above the threshold), ``false_per_hour`` (windows naming a
        species per hour of such sound: ``(1 - no_bird_rate) * 3600 / clip_seconds``),
        ``median_top_score``, ``most_named`` (English name of the most frequent top-1 species among
        the windows that named one).

    Raises
    ------
    ParameterError
        Bad counts, unknown family, or a model without a validation threshold.
    """
    from core.io.synth import FAMILIES, HELD_OUT_FAMILIES, VALIDATION_FAMILIES, nonbird_windows
    from core.training.calibration import card_thresholds
    from core.training.noisebank import birdfree_bank

    check_int("n_windows", n_windows, 1)
    check_int("per_family", per_family, 1)
    families = list(FAMILIES) if families is None else list(families)
    thresholds = card_thresholds(list(models))
    rows = []
    for name, model in models.items():
        if name not in thresholds:
            raise ParameterError(f"model {name} has no validation threshold (python -m core calibrate --model {name})")
        sr, window = int(model.config.frontend.sample_rate), int(model.config.window_samples)
        signals = {k: (v.reshape(n_windows, window), False) for k, v in _control_signals(sr, window, n_windows, seed).items()}
        if families:
            waves, fams = nonbird_windows(families, per_family, window, sr, seed=CHECK_SEED if family_seed is None else int(family_seed))
            for fam in families:
                label = f"synthetic {fam.replace('_', ' ')}" + (" (held out)" if fam in HELD_OUT_FAMILIES else
                                                                 " (validation)" if fam in VALIDATION_FAMILIES else "")
                signals[label] = (waves[[f == fam for f in fams]], fam in HELD_OUT_FAMILIES)
        if dataset is not None:
            for s in splits:
                bank = birdfree_bank(dataset, s, sr, window)
                if bank:
                    signals[f"bird-free site noise, {s} split"] = (
                        np.stack([np.resize(w, window) for _, w in bank]).astype(np.float32), s == "test")
        names = species_names(model.config.class_names, model)
        device = next(model.parameters()).device
        model.eval()
        for signal, (x, held_out) in signals.items():
            scores = torch.cat([torch.sigmoid(model(torch.as_tensor(x[i : i + 16], device=device))).float().cpu()
                                for i in range(0, len(x), 16)]).numpy()
            named = scores.max(1) >= thresholds[name]
            tops = pd.Series([names[model.config.class_names[j]][1] for j in scores.argmax(1)[named]])
            rows.append({"model": name, "signal": signal, "held_out": bool(held_out), "windows": len(x),
                         "clip_seconds": float(model.config.clip_seconds),
                         "threshold": thresholds[name], "no_bird_rate": float(1 - named.mean()),
                         "false_per_hour": float(named.mean() * 3600.0 / float(model.config.clip_seconds)),
                         "median_top_score": float(np.median(scores.max(1))),
                         "most_named": tops.mode().iloc[0] if len(tops) else ""})
    return pd.DataFrame(rows)


def held_out_summary(table: pd.DataFrame) -> pd.DataFrame:
    """False windows of each model pooled over the held-out bird-free signals of :func:`no_bird_check`.

    Returns
    -------
    pandas.DataFrame
        One row per model: ``windows`` (held-out windows), ``false_windows``, ``false_rate`` (share),
        ``false_per_hour`` (at the model's window length, from the table's own per-signal rates).
    """
    held = table[table["held_out"].astype(bool)].copy()
    held["false_windows"] = np.rint((1 - held["no_bird_rate"]) * held["windows"]).astype(int)
    out = held.groupby("model", sort=False).agg(windows=("windows", "sum"), false_windows=("false_windows", "sum"),
                                                clip_seconds=("clip_seconds", "first"))
    out["false_rate"] = out["false_windows"] / out["windows"]
    out["false_per_hour"] = out["false_rate"] * 3600.0 / out["clip_seconds"]
    return out.reset_index()


def no_bird_markdown(table: pd.DataFrame, labels: dict | None = None, top1: dict | None = None) -> str:
    """The docs' table of :func:`no_bird_check`: one row per signal, one column per model (share of windows with no bird).

    A cell below 1 names the species the model named most often there; the last rows pool the
    held-out signals (:func:`held_out_summary`): share of false windows and false windows per hour,
    beside each model's test recording top-1 when ``top1`` (model -> value) is given.
    """
    labels = labels or {}
    models = list(dict.fromkeys(table["model"]))
    held_col = "held_out" in table.columns
    lines = ["| signal | held out | windows | " + " | ".join(labels.get(m, m) for m in models) + " |",
             "|---|---|---:|" + "---:|" * len(models)]
    by = table.set_index(["signal", "model"])
    for signal in dict.fromkeys(table["signal"]):
        rows = [by.loc[(signal, m)] for m in models]
        cells = []
        for r in rows:
            named = r.most_named if isinstance(r.most_named, str) else ""
            cells.append(f"{r.no_bird_rate:.2f}" + (f" ({named})" if r.no_bird_rate < 1 and named else ""))
        held = "yes" if held_col and bool(rows[0].held_out) else ""
        lines.append(f"| {signal} | {held} | {int(rows[0].windows)} | " + " | ".join(cells) + " |")
    lines.append("| threshold (validation) | | | " + " | ".join(f"{by.loc[(table.signal.iloc[0], m)].threshold:.3f}" for m in models) + " |")
    if held_col and table["held_out"].any():
        summary = held_out_summary(table).set_index("model")
        lines.append("| **held out, pooled: false windows** | yes | " + f"{int(summary.windows.iloc[0])} | "
                     + " | ".join(f"**{summary.loc[m, 'false_rate']:.1%}**" for m in models) + " |")
        lines.append("| **false windows per hour** | yes | | "
                     + " | ".join(f"**{summary.loc[m, 'false_per_hour']:.0f}**" for m in models) + " |")
    if top1:
        lines.append("| test recording top-1 (for comparison) | | | "
                     + " | ".join(f"{top1[m]:.3f}" if m in top1 else "" for m in models) + " |")
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


def record_in_cards(table: pd.DataFrame, path: str | os.PathLike = NO_BIRD_TABLE) -> list[str]:
    """Write each checkpoint's pooled held-out no-bird figures (:func:`held_out_summary`) into its model card.

    Built-in models (BirdNET) have no card of ours and are skipped. Returns the names updated.
    """
    from core.models.registry import BUILTIN_MODELS, list_checkpoints, update_model_card

    summary = held_out_summary(table).set_index("model")
    shipped = set(list_checkpoints())
    done = []
    for name, r in summary.iterrows():
        if name in BUILTIN_MODELS or name not in shipped:
            continue
        update_model_card(name, no_bird={
            "held_out_windows": int(r.windows), "false_windows": int(r.false_windows), "false_rate": float(r.false_rate),
            "false_per_hour": float(r.false_per_hour), "threshold": float(table[table.model == name].threshold.iloc[0]),
            "signals": sorted(table[(table.model == name) & table.held_out.astype(bool)].signal),
            "table": str(Path(path).name), "command": "python -m core no-bird-check",
        })
        done.append(str(name))
    return done

