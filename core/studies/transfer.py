"""Transfer of adversarial clips between models that may differ in sample rate and window length.

An adversarial segment is made white-box on a *source* model (PGD on every one of
its windows, at its own rate: the waveform a user would hear), then scored by
every *target* model. A random-sign control of the same L-inf budget is scored the
same way, so a transfer "effect" that noise alone produces is visible.

Segments are ``segment_seconds`` long (default 15 s, a whole number of both 3 s
BirdNET windows and 5 s windows), so every model sees the whole perturbation.
For a target with another rate, the clean segment, the adversarial one and the
control are all resampled from the source rate with the same resampler (soxr, as
the audio loader), so resampling cannot masquerade as an attack effect: the
target's clean reference is its prediction on the *resampled clean* segment.

The decision compared is the recording-level top-1 species (scores maxed over
the target's windows): no score threshold is involved.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core.errors import ParameterError, check_int, check_split
from core.io.audio import resample

__all__ = ["TransferSettings", "transfer_table", "transfer_segment", "transfer_summary", "transfer_markdown", "dataset_segments"]


@dataclass(frozen=True)
class TransferSettings:
    """What :func:`transfer_table` measures.

    Attributes
    ----------
    split : {"train", "val", "test"}
    max_segments : int >= 1
        Recordings used (one segment each, spread over the split's species).
    segment_seconds : float > 0 [seconds]
        Segment length, from the start of each recording (zero-padded if shorter).
    eps : float in (0, 1] [full-scale amplitude]
        L-inf budget of the attack and of the random-sign control.
    steps : int >= 1
        PGD steps (random start).
    objective : {"output-margin", "output-untargeted"}
        What the source attack maximises (against the recording's labels).
    seed : int
    """

    split: str = "test"
    max_segments: int = 24
    segment_seconds: float = 15.0
    eps: float = 1e-3
    steps: int = 10
    objective: str = "output-margin"
    seed: int = 0

    def __post_init__(self) -> None:
        check_split(self.split)
        check_int("max_segments", self.max_segments, 1)
        if not 0 < self.segment_seconds <= 120:
            raise ParameterError(f"segment_seconds must be in (0, 120], got {self.segment_seconds}")
        if not 0 < self.eps <= 1:
            raise ParameterError(f"eps must be in (0, 1], got {self.eps}")
        check_int("steps", self.steps, 1)
        if self.objective not in ("output-margin", "output-untargeted"):
            raise ParameterError(f"objective must be 'output-margin' or 'output-untargeted', got {self.objective!r}")


def dataset_segments(dataset, settings: TransferSettings, class_names) -> list[dict]:
    """The recordings used: ``[{"recording", "species", "labels" (multi-hot, float32)}]``, spread over species.

    Raises
    ------
    ParameterError
        No recording of the split is on disk.
    """
    recs = sorted((r for r in dataset.split(settings.split) if r.path.is_file()), key=lambda r: (r.labels, r.recording_id))
    if not recs:
        raise ParameterError(f"no recordings available in split {settings.split!r}")
    idx = np.unique(np.linspace(0, len(recs) - 1, min(settings.max_segments, len(recs))).round().astype(int))
    out = []
    for i in idx:
        r = recs[i]
        labels = np.array([float(c in r.all_labels) for c in class_names], np.float32)
        out.append({"recording": r, "species": r.labels[0] if r.labels else "", "labels": labels})
    return out


def _segment(dataset, rec, sample_rate: int, seconds: float) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    w = np.clip(dataset.load(rec, sample_rate)[:n], -1.0, 1.0)
    return np.pad(w, (0, n - len(w))).astype(np.float32)


def _top1(model, waveform: np.ndarray) -> tuple[int, np.ndarray]:
    from core.field.inference import analyze_waveform

    scores = analyze_waveform(model, waveform).recording_scores
    return int(scores.argmax()), scores


def transfer_segment(models: dict, source: str, dataset, segment: dict, settings: TransferSettings, *, index: int = 0) -> dict:
    """Attack one segment on ``source`` and score clean, attacked and control versions with every model.

    Parameters
    ----------
    models : dict of name -> BirdClassifier (same classes)
    source : str
        Key of ``models`` to attack.
    dataset : core.io.data.Dataset
    segment : dict
        An entry of :func:`dataset_segments`.
    settings : TransferSettings
    index : int
        Seeds the attack's random start and the control (``settings.seed + index``).

    Returns
    -------
    dict
        ``clean``, ``attack``, ``noise``: waveforms at the source rate, ``(n_samples,)`` float32;
        ``sample_rate`` [Hz]; ``rows``: one dict per target model (columns of :func:`transfer_table`).
    """
    from core.field.inference import attack_waveform
    from core.metrics import snr_db

    src = models[source]
    classes = list(src.config.class_names)
    sr = src.config.frontend.sample_rate
    rec = segment["recording"]
    clean = _segment(dataset, rec, sr, settings.segment_seconds)
    adv = attack_waveform(src, clean, eps=settings.eps, steps=settings.steps, seed=settings.seed + index,
                          targets=segment["labels"], objective=settings.objective)
    gen = np.random.default_rng([settings.seed, index, zlib.crc32(source.encode())])  # the same control in any run
    noise = np.clip(clean + settings.eps * gen.choice(np.array([-1.0, 1.0], np.float32), size=clean.shape), -1, 1).astype(np.float32)
    snr_a, snr_n = float(snr_db(clean, adv)), float(snr_db(clean, noise))
    lab = segment["labels"]
    rows = []
    for t_name, tgt in models.items():
        t_sr = tgt.config.frontend.sample_rate
        waves = [clean, adv, noise] if t_sr == sr else [np.clip(resample(w, sr, t_sr), -1, 1) for w in (clean, adv, noise)]
        (c_top, _), (a_top, _), (n_top, _) = (_top1(tgt, w) for w in waves)
        rows.append({
            "source": source, "target": t_name, "recording": rec.recording_id, "species": segment["species"],
            "white_box": source == t_name, "snr_db_attack": snr_a, "snr_db_noise": snr_n,
            "clean_top1": classes[c_top], "attack_top1": classes[a_top], "noise_top1": classes[n_top],
            "clean_correct": bool(lab[c_top] > 0), "attack_correct": bool(lab[a_top] > 0), "noise_correct": bool(lab[n_top] > 0),
            "attack_flipped": a_top != c_top, "noise_flipped": n_top != c_top,
        })
    return {"clean": clean, "attack": adv, "noise": noise, "sample_rate": sr, "rows": rows}


def transfer_table(
    models: dict,
    dataset,
    settings: TransferSettings | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> pd.DataFrame:
    """Make adversarial segments on each model and score them with every model.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
        Same class names (in the same order); sample rates and windows may differ.
    dataset : core.io.data.Dataset
    settings : TransferSettings, optional
    progress : callable, optional
        ``progress(done, total)`` over (source model, segment) pairs.
    cancel : callable, optional
        Polled between segments; when it returns True, :class:`InterruptedError` is raised.

    Returns
    -------
    pandas.DataFrame
        One row per (source, target, recording): ``source, target, recording, species, white_box,
        snr_db_attack, snr_db_noise`` (at the source rate), ``clean_top1, attack_top1, noise_top1``
        (class codes), ``clean_correct, attack_correct, noise_correct`` (top-1 among the labels),
        ``attack_flipped, noise_flipped`` (top-1 differs from the clean one).

    Raises
    ------
    ParameterError
        Fewer than one model, or models with different classes.
    """
    settings = settings or TransferSettings()
    if not models:
        raise ParameterError("no models for the transfer table")
    names = list(models)
    classes = list(models[names[0]].config.class_names)
    for n in names[1:]:
        if list(models[n].config.class_names) != classes:
            raise ParameterError(f"model {n!r} has other classes than {names[0]!r}; transfer needs the same species list")
    segs = dataset_segments(dataset, settings, classes)
    rows = []
    total, done = len(names) * len(segs), 0
    for s_name in names:
        for k, seg in enumerate(segs):
            if cancel is not None and cancel():
                raise InterruptedError("transfer cancelled")
            rows += transfer_segment(models, s_name, dataset, seg, settings, index=k)["rows"]
            done += 1
            if progress:
                progress(done, total)
    table = pd.DataFrame(rows)
    table.attrs["settings"] = asdict(settings)
    return table


def transfer_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (source, target): segments, flip rates (attack, noise control), top-1 accuracy clean/attack/noise, median SNR."""
    rows = []
    for (s, t), g in table.groupby(["source", "target"], sort=False):
        rows.append({
            "source": s, "target": t, "segments": len(g), "white_box": bool(g["white_box"].iloc[0]),
            "attack_flip_rate": float(g["attack_flipped"].mean()), "noise_flip_rate": float(g["noise_flipped"].mean()),
            "clean_top1_acc": float(g["clean_correct"].mean()), "attack_top1_acc": float(g["attack_correct"].mean()),
            "noise_top1_acc": float(g["noise_correct"].mean()), "median_snr_db": float(g["snr_db_attack"].median()),
        })
    return pd.DataFrame(rows)


def transfer_markdown(summary: pd.DataFrame, eps: float) -> str:
    """A :func:`transfer_summary` as the README's Markdown table (tests regenerate and compare it verbatim)."""
    lines = ["| eps | made on | scored by | segments | median SNR (dB) | top-1 changed: attack | top-1 changed: noise control "
             "| top-1 correct: clean / attack / noise |", "|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        who = f"{r['target']} (white box)" if r["white_box"] else r["target"]
        lines.append(f"| {eps:g} | {r['source']} | {who} | {r['segments']} | {r['median_snr_db']:.1f} | {r['attack_flip_rate']:.2f} | "
                     f"{r['noise_flip_rate']:.2f} | {r['clean_top1_acc']:.2f} / {r['attack_top1_acc']:.2f} / {r['noise_top1_acc']:.2f} |")
    return "\n".join(lines) + "\n"
