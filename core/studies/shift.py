"""Natural perturbations for distribution-shift evaluation: site noise, gain, mixup.

Beside the adversarial perturbations of :mod:`core.attacks`, a model should be
judged on the shifts it meets in the field (the AVEX recipe; Heinrich et al. 2025
evaluate on recordings from other sites):

- :func:`add_noise`: additive background noise at a chosen SNR. The noise comes
  from real recordings: :func:`split_noise_bank` takes windows that an
  independent detector (BirdNET) finds free of vocalising animals
  (:mod:`core.training.noisebank`), which carry their site's ambient noise (wind, water,
  recorder hiss). The quietest window of each recording (:func:`noise_bank`) is
  only a fallback for datasets without a vetted bank (it may hold birds), and
  coloured (pink) noise one when no bank is given at all.
- :func:`apply_gain`: a level change in dB (clipped to full scale).
- :func:`mix`: mixup of two clips; the labels of a mix are the union.

:func:`shift_clips` applies one of them to a :class:`~core.studies.sweep.ClipSet` so that
clean and shifted metrics can be compared clip for clip.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Sequence

import numpy as np

from core.errors import ParameterError
from core.io.audio import pink_noise, rms

__all__ = [
    "pink_noise", "noise_bank", "split_noise_bank", "add_noise", "apply_gain", "mix", "partner_indices", "shift_clips",
    "shifted_conditions", "shift_scores", "summarize_shift", "shift_evaluation", "SHIFTS",
]

SHIFTS = ("noise", "gain", "mixup")
log = logging.getLogger(__name__)


def noise_bank(waveforms: Sequence[np.ndarray], window_samples: int, *, recording_ids: Sequence[str] | None = None) -> list[tuple[str, np.ndarray]]:
    """The quietest full window (lowest RMS, not silent) of each recording: a site's ambient noise.

    Parameters
    ----------
    waveforms : sequence of np.ndarray [shape=(n_samples,)]
        One waveform per recording.
    window_samples : int > 0
    recording_ids : sequence of str, optional
        Kept with each noise so a clip never gets noise from its own recording.

    Returns
    -------
    list of (recording_id, np.ndarray [shape=(window_samples,), dtype=float32])
        Recordings shorter than one window or entirely silent are skipped.
    """
    if window_samples <= 0:
        raise ParameterError(f"window_samples must be > 0, got {window_samples}")
    ids = list(recording_ids) if recording_ids is not None else [str(i) for i in range(len(waveforms))]
    out = []
    for rid, w in zip(ids, waveforms):
        w = np.asarray(w, np.float32)
        n = len(w) // window_samples
        if n == 0:
            continue
        frames = w[: n * window_samples].reshape(n, window_samples)
        rms = np.sqrt((frames.astype(np.float64) ** 2).mean(1))
        rms[rms == 0] = np.inf
        if np.isinf(rms).all():
            continue
        out.append((rid, frames[int(rms.argmin())].copy()))
    return out


def split_noise_bank(dataset, split: str, sample_rate: int, window_samples: int) -> list[tuple[str, np.ndarray]]:
    """Site noise for a dataset split at ``sample_rate`` [Hz]: the bird-free bank when the dataset has one.

    :func:`core.training.noisebank.birdfree_bank` (windows that BirdNET finds empty) when a
    vetted table exists for the dataset; otherwise, with a logged warning, the
    quietest window of every recording (:func:`noise_bank`), which may hold birds.
    The returned :class:`~core.training.noisebank.NoiseBank` says which in ``description``.
    """
    from core.training.noisebank import NoiseBank, birdfree_bank

    bank = birdfree_bank(dataset, split, sample_rate, window_samples)
    if len(bank):
        return bank
    log.warning("no bird-free noise bank for %s (%s split): using the quietest window of each recording, which may hold birds",
                dataset.root, split)
    recs = [r for r in dataset.split(split) if r.path.is_file()]
    return NoiseBank(noise_bank([dataset.load(r, sample_rate) for r in recs], window_samples, recording_ids=[r.recording_id for r in recs]),
                     description="quietest window of another recording (not vetted: may hold birds)")


def add_noise(clean: np.ndarray, noise: np.ndarray | None, snr_db: float, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Add noise scaled to ``snr_db`` relative to the clean clip, clipped to [-1, 1].

    ``SNR = 20 log10(rms(clean) / rms(scaled noise))``. The noise is tiled or cut
    to the clip's length; ``None`` or a silent noise falls back to pink noise.

    Parameters
    ----------
    clean : np.ndarray [shape=(n_samples,)]
    noise : np.ndarray [shape=(m,)] or None
    snr_db : float [dB], finite
    rng : np.random.Generator, optional
        For the pink-noise fallback.

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32]

    Raises
    ------
    ParameterError
        Non-finite SNR.
    """
    if not math.isfinite(snr_db):
        raise ParameterError(f"snr_db must be finite, got {snr_db}")
    clean = np.asarray(clean, np.float32)
    n = len(clean)
    if noise is None or rms(noise) == 0:
        noise = pink_noise(n, rng or np.random.default_rng(0))
    noise = np.resize(np.asarray(noise, np.float32), n)
    scale = rms(clean) / max(rms(noise), 1e-12) * 10 ** (-snr_db / 20)
    return np.clip(clean + scale * noise, -1.0, 1.0).astype(np.float32)


def apply_gain(clean: np.ndarray, gain_db: float) -> np.ndarray:
    """Multiply by ``10^(gain_db/20)``, clipped to [-1, 1]."""
    if not math.isfinite(gain_db):
        raise ParameterError(f"gain_db must be finite, got {gain_db}")
    return np.clip(np.asarray(clean, np.float32) * 10 ** (gain_db / 20), -1.0, 1.0).astype(np.float32)


def mix(a: np.ndarray, b: np.ndarray, lam: float) -> np.ndarray:
    """``lam * a + (1 - lam) * b`` (mixup), clipped to [-1, 1]; ``lam`` in [0, 1]."""
    if not 0 <= lam <= 1:
        raise ParameterError(f"lam must be in [0, 1], got {lam}")
    return np.clip(lam * np.asarray(a, np.float32) + (1 - lam) * np.asarray(b, np.float32), -1.0, 1.0).astype(np.float32)


def partner_indices(species: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    """For each clip, a random other clip whose primary species differs (mixup partner, attack target).

    Parameters
    ----------
    species : sequence of str
        ``";"``-joined species codes per clip; the first is the primary species.
    rng : np.random.Generator

    Returns
    -------
    np.ndarray [shape=(n_clips,), dtype=int64]

    Raises
    ------
    ParameterError
        Fewer than two primary species among the clips.
    """
    primary = np.array([s.split(";")[0] for s in species])
    out = np.empty(len(primary), dtype=np.int64)
    for i, p in enumerate(primary):
        others = np.flatnonzero(primary != p)
        if not len(others):
            raise ParameterError("needs clips of at least two species")
        out[i] = others[int(rng.integers(len(others)))]
    return out


def shift_clips(clips, kind: str, *, snr_db: float = 10.0, gain_db: float = -20.0, lam: float = 0.6,
                bank: list[tuple[str, np.ndarray]] | None = None, seed: int = 0):
    """A shifted copy of a :class:`~core.studies.sweep.ClipSet` (same clip ids; mixup unions the labels).

    Parameters
    ----------
    clips : ClipSet
    kind : {"noise", "gain", "mixup"}
    snr_db : float [dB]
        ``noise``: SNR of the added site noise.
    gain_db : float [dB]
        ``gain``: level change.
    lam : float in [0, 1]
        ``mixup``: weight of the clip itself; the partner is another clip of a
        different primary species, drawn with ``seed``.
    bank : list of (recording_id, noise), optional
        From :func:`noise_bank`; a clip never gets the noise of its own recording.
        Without a bank, pink noise is used.
    seed : int

    Raises
    ------
    ParameterError
        Unknown ``kind``; mixup without a clip of another species.
    """
    if kind not in SHIFTS:
        raise ParameterError(f"kind must be one of {SHIFTS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    w = clips.waveforms
    out = np.empty_like(w)
    labels = None if clips.labels is None else clips.labels.copy()
    rec = [c.split("@", 1)[0] for c in clips.clip_ids]
    partner = partner_indices(clips.species, rng) if kind == "mixup" else None
    for i in range(len(w)):
        if kind == "gain":
            out[i] = apply_gain(w[i], gain_db)
        elif kind == "noise":
            choices = [n for rid, n in (bank or []) if rid != rec[i]]
            noise = choices[int(rng.integers(len(choices)))] if choices else None
            out[i] = add_noise(w[i], noise, snr_db, rng=rng)
        else:
            j = partner[i]
            out[i] = mix(w[i], w[j], lam)
            if labels is not None:
                labels[i] = np.maximum(clips.labels[i], clips.labels[j])
        out[i] *= clips.masks[i]  # zero padding stays zero
    return replace(clips, waveforms=out, labels=labels)


def shifted_conditions(clips, *, bank=None, snr_db: float = 10.0, gain_db: float = -20.0, lam: float = 0.6, seed: int = 0) -> dict:
    """The clean clips and their three shifted copies: ``{condition: (ClipSet, setting description)}``.

    Conditions: ``clean``, ``noise``, ``gain``, ``mixup`` (see :func:`shift_clips`).
    """
    return {
        "clean": (clips, ""),
        "noise": (shift_clips(clips, "noise", snr_db=snr_db, bank=bank, seed=seed),
                  f"{getattr(bank, 'description', '') or 'site noise'} at {snr_db:g} dB SNR" if bank else f"pink noise at {snr_db:g} dB SNR"),
        "gain": (shift_clips(clips, "gain", gain_db=gain_db, seed=seed), f"gain {gain_db:+g} dB"),
        "mixup": (shift_clips(clips, "mixup", lam=lam, seed=seed), f"mixup, weight {lam:g}"),
    }


def shift_scores(models: dict, clips, *, bank=None, snr_db: float = 10.0, gain_db: float = -20.0, lam: float = 0.6,
                 seed: int = 0, batch_size: int = 32, progress=None):
    """Per-clip scores of every model on the clean and the shifted clips.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    clips : ClipSet
        With labels.
    bank, snr_db, gain_db, lam, seed
        See :func:`shift_clips`.
    progress : callable, optional
        ``progress(done, total)`` over (model, condition) pairs.

    Returns
    -------
    pandas.DataFrame
        One row per model, condition and clip: ``model, condition, setting, clip``,
        ``score:<class>`` and ``label:<class>`` columns (mixup rows carry the union
        of the two clips' labels).

    Raises
    ------
    ParameterError
        Clips without labels.
    """
    import pandas as pd

    from core.models.scoring import predict_scores

    if clips.labels is None:
        raise ParameterError("a shift evaluation needs labelled clips")
    conditions = shifted_conditions(clips, bank=bank, snr_db=snr_db, gain_db=gain_db, lam=lam, seed=seed)
    parts, done = [], 0
    for name, model in models.items():
        classes = list(model.config.class_names)
        for cond, (c, setting) in conditions.items():
            scores = predict_scores(model, c.waveforms, batch_size=batch_size)
            df = pd.DataFrame({"model": name, "condition": cond, "setting": setting, "clip": list(c.clip_ids)})
            cols = {f"score:{k}": scores[:, j] for j, k in enumerate(classes)} | {f"label:{k}": c.labels[:, j] for j, k in enumerate(classes)}
            parts.append(pd.concat([df, pd.DataFrame(cols)], axis=1))
            done += 1
            if progress:
                progress(done, len(models) * len(conditions))
    return pd.concat(parts, ignore_index=True)


def summarize_shift(table):
    """Aggregate :func:`shift_scores` rows: one row per model and condition.

    Returns
    -------
    pandas.DataFrame
        ``model, condition, setting, cmap, roc_auc, top1, n`` and ``cmap_change``
        (relative to the model's clean cmAP, in %).
    """
    import pandas as pd

    from core.metrics import classification_metrics

    classes = [c.split(":", 1)[1] for c in table.columns if c.startswith("score:")]
    rows = []
    for (name, cond, setting), g in table.groupby(["model", "condition", "setting"], sort=False):
        m = classification_metrics(g[[f"score:{c}" for c in classes]].to_numpy(), g[[f"label:{c}" for c in classes]].to_numpy())
        rows.append({"model": name, "condition": cond, "setting": setting, "cmap": m["cmap"], "roc_auc": m["roc_auc"], "top1": m["top1"], "n": m["n"]})
    df = pd.DataFrame(rows)
    clean = df[df["condition"] == "clean"].set_index("model")["cmap"]
    df["cmap_change"] = 100 * (df["cmap"] - df["model"].map(clean)) / df["model"].map(clean)
    return df


def shift_evaluation(models: dict, clips, *, bank=None, snr_db: float = 10.0, gain_db: float = -20.0, lam: float = 0.6,
                     seed: int = 0, batch_size: int = 32):
    """Clean vs shifted metrics of every model on the same clips.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    clips : ClipSet
        With labels.
    bank : list of (recording_id, noise), optional
        From :func:`noise_bank`; pink noise without one.
    snr_db, gain_db, lam, seed
        See :func:`shift_clips`.

    Returns
    -------
    pandas.DataFrame
        One row per model and condition (``clean``, ``noise``, ``gain``, ``mixup``):
        ``model, condition, setting, cmap, roc_auc, top1, n``, and ``cmap_change``
        (relative to clean, in %).

    Raises
    ------
    ParameterError
        Clips without labels.
    """
    return summarize_shift(shift_scores(models, clips, bank=bank, snr_db=snr_db, gain_db=gain_db, lam=lam, seed=seed, batch_size=batch_size))
