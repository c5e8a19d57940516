"""A bank of site-noise windows without bird vocalisations, vetted by an independent detector.

The distribution-shift test adds another recording's ambient noise to a clip
(:func:`core.studies.shift.add_noise`). Taking "the quietest window of another recording"
is not enough: on xc9 such windows still hold birds (the shipped baseline named
that recording's own focal species top-1 in 63 % of the noisy windows, chance
11 %), so the shifted clip is an unlabelled mix of two species, not a noisier
clip of one. Here a window enters the bank only when

1. it is among the ``candidates`` quietest full windows of its recording (RMS), and
2. BirdNET V2.4 (Kahl et al. 2021; 6,522 classes, trained on data independent of
   the models under test) scores every animal class below ``threshold`` (default
   0.1, BirdNET-Analyzer's default minimum confidence) in each 3 s sub-window
   (0-3 s and 2-5 s of a 5 s window), i.e. it detects no vocalising animal.

Labels of a noisy clip stay unchanged because nothing vocal was added. The vetting
is stored as a table (``assets/noise/<dataset>_birdfree.csv``) made by one command
(``python -m core noise-bank``); the windows were not listened to one by one.
BirdNET is no oracle for silence: after its per-window min/max scaling, synthetic
white hiss at -60 to -93 dBFS scores 0.14-0.64 for Lesser Spotted Woodpecker, so the
test errs on the side of rejecting (on xc9, 24 of 593 candidate windows pass).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import ParameterError, check_int
from core.models.birdnet import NON_SPECIES

__all__ = ["NOISE_DIR", "NON_SPECIES", "bank_path", "vet_noise_windows", "read_bank_table", "birdfree_bank", "NoiseBank"]

log = logging.getLogger(__name__)

NOISE_DIR = Path(__file__).resolve().parents[2] / "assets" / "noise"
#: Length of the vetted windows [seconds]: the small models' window; BirdNET (3 s) uses the first 3 s.
WINDOW_S = 5.0


class NoiseBank(list):
    """List of ``(recording_id, waveform)`` noise windows with a ``description`` of where they come from.

    ``starts_s`` holds each window's start in its recording [seconds] where known (:func:`birdfree_bank`).
    """

    def __init__(self, items=(), description: str = "", starts_s=()) -> None:
        super().__init__(items)
        self.description = description
        self.starts_s = list(starts_s)


def bank_path(dataset) -> Path:
    """Where the vetted table of a dataset lives: ``assets/noise/<directory name>_birdfree.csv``."""
    return NOISE_DIR / f"{Path(dataset.root).name}_birdfree.csv"


def _quietest_starts(waveform: np.ndarray, window: int, k: int) -> list[int]:
    n = len(waveform) // window
    if n == 0:
        return []
    frames = waveform[: n * window].reshape(n, window).astype(np.float64)
    rms = np.sqrt((frames**2).mean(1))
    order = [int(i) for i in np.argsort(rms, kind="stable") if rms[i] > 0]
    return [i * window for i in order[:k]]


def vet_noise_windows(dataset, *, candidates: int = 4, threshold: float = 0.1, detector=None, recording_ids=None,
                      progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Score the quietest windows of every recording with BirdNET; see the module docstring.

    Parameters
    ----------
    dataset : core.io.data.Dataset
    candidates : int >= 1
        Quietest windows tried per recording.
    threshold : float in (0, 1)
        Highest BirdNET score of any animal class that still counts as "nothing there".
    detector : BirdNET, optional
        A BirdNET over all classes (default :func:`core.models.birdnet.load_birdnet` ``("all")``).
    recording_ids : sequence of str, optional
        Only these recordings (default: every available one).
    progress : callable, optional
        ``progress(done, total)`` over recordings.

    Returns
    -------
    pandas.DataFrame
        One row per candidate: ``recording_id, split, species, start_s, duration_s,
        rms_dbfs, detector_max, detector_top, kept``.

    Raises
    ------
    ParameterError
        Bad ``candidates`` or ``threshold``.
    CheckpointError
        BirdNET is not installed.
    """
    import torch

    from core.models.birdnet import BIRDNET_SAMPLE_RATE, birdnet_labels, load_birdnet

    check_int("candidates", candidates, 1)
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold must be in (0, 1), got {threshold}")
    model = detector or load_birdnet("all")
    labels = birdnet_labels()
    animal = np.array([sci not in NON_SPECIES for sci, _ in labels])
    sr = BIRDNET_SAMPLE_RATE
    win, sub = int(WINDOW_S * sr), model.config.window_samples
    device = next(model.parameters()).device
    recs = [r for r in dataset.recordings if r.path.is_file() and (recording_ids is None or r.recording_id in set(recording_ids))]
    rows = []
    for n, rec in enumerate(recs):
        w = dataset.load(rec, sr)
        for start in _quietest_starts(w, win, candidates):
            seg = w[start : start + win]
            parts = np.stack([seg[:sub], seg[win - sub :]])
            with torch.no_grad():
                scores = torch.sigmoid(model.all_logits(torch.as_tensor(parts, device=device))).cpu().numpy()
            scores = np.where(animal[None], scores, 0.0).max(0)
            top = int(scores.argmax())
            rms = float(np.sqrt(np.mean(seg.astype(np.float64) ** 2)))
            rows.append({"recording_id": rec.recording_id, "split": rec.split, "species": rec.labels[0], "start_s": start / sr,
                         "duration_s": WINDOW_S, "rms_dbfs": 20 * np.log10(max(rms, 1e-12)), "detector_max": float(scores[top]),
                         "detector_top": labels[top][1], "kept": bool(scores[top] < threshold)})
        if progress:
            progress(n + 1, len(recs))
    return pd.DataFrame(rows)


def read_bank_table(path: str | Path) -> pd.DataFrame:
    """Read a vetted table written by ``python -m core noise-bank``.

    Raises
    ------
    ParameterError
        The file lacks the columns of :func:`vet_noise_windows`.
    """
    table = pd.read_csv(path, dtype={"recording_id": str})
    need = {"recording_id", "start_s", "duration_s", "kept"}
    if not need <= set(table.columns):
        raise ParameterError(f"{path}: not a noise-bank table (needs columns {sorted(need)})")
    return table


def birdfree_bank(dataset, split: str, sample_rate: int, window_samples: int, *, table: pd.DataFrame | None = None) -> NoiseBank:
    """The kept (bird-free) windows of the recordings of a split, at ``sample_rate`` [Hz].

    Windows longer than ``window_samples`` are cut (BirdNET's 3 s: the first 3 s),
    shorter ones are returned as they are (:func:`core.studies.shift.add_noise` tiles them).

    Parameters
    ----------
    dataset : core.io.data.Dataset
    split : str
    sample_rate : int [Hz]
    window_samples : int [samples]
    table : pandas.DataFrame, optional
        Default: the dataset's shipped table (:func:`bank_path`).

    Returns
    -------
    NoiseBank
        Empty when there is no table for this dataset or no kept window in the split.
    """
    if table is None:
        path = bank_path(dataset)
        if not path.is_file():
            return NoiseBank(description="")
        table = read_bank_table(path)
    ids = {r.recording_id: r for r in dataset.split(split) if r.path.is_file()}
    kept = table[table["kept"].astype(bool) & table["recording_id"].isin(list(ids))]
    bank = NoiseBank(description="bird-free site noise (BirdNET < 0.1 for every animal class)")
    for _, row in kept.iterrows():
        w = dataset.load(ids[row["recording_id"]], sample_rate)
        a = int(round(row["start_s"] * sample_rate))
        seg = w[a : a + int(round(row["duration_s"] * sample_rate))][:window_samples]
        if len(seg) and np.any(seg):
            bank.append((row["recording_id"], seg.astype(np.float32)))
            bank.starts_s.append(float(row["start_s"]))
    return bank
