"""Audits of prototype explanations: where each prototype fires, on which classes, and whether it is faithful.

For a prototype model on BirdNET's backbone (:class:`core.models.birdnet_proto.BirdNETHeadModel`):

- **Where it fires** (:func:`prototype_audit`): over held-out windows, the
  prototype's max-pooled similarity on windows of its own class vs the others,
  and the frequency band and time of the cell where it peaks on its own class
  (the band in both BirdNET input channels, :meth:`BirdNETTrunk.row_bands_hz`).
- **Faithfulness by deletion** (Samek et al. 2017, "Evaluating the visualization
  of what a deep neural network has learned", IEEE TNNLS 28(11); the
  "region perturbation" of their Sec. III, with one region): the input
  spectrogram region under the prototype's peak cell is set to silence (zero
  compressed magnitude) and the drop of the class score is compared with the
  drop when a region of the same size, drawn at random elsewhere in the same
  window, is silenced. A faithful explanation removes more evidence than a
  random region: ``drop_ratio`` > 1 and ``wins`` > 0.5.
- **Plausibility**: the peak band against the species' known frequency range
  (``assets/xc9/song_bands.csv``, sources given per row; species without a
  source are marked "no source").

Every map and score comes through the model's own path (``frontend`` ->
``features_from_spectrogram`` -> ``forward_head`` / ``similarity_maps``), so the
audited model is the one ``model(waveform)`` runs. Until issue 23 the audit read
BirdNET's graph directly and skipped the fine-tuned stage of the shipped heads
(on the 466 test windows its class probabilities differed from the model's by up to
0.86 for birdnet_protopnet, 0.97 for the fine-tuned control).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = ["SONG_BANDS_CSV", "song_bands", "audit_maps", "deletion_scores", "prototype_audit", "audit_summary", "load_audit"]

SONG_BANDS_CSV = Path(__file__).resolve().parents[2] / "assets" / "xc9" / "song_bands.csv"


def song_bands(path: str | Path = SONG_BANDS_CSV) -> pd.DataFrame:
    """Known frequency ranges [Hz] of the dataset's species, one row per species and vocalisation, with sources.

    Returns
    -------
    pandas.DataFrame
        Columns ``species_code, vocalisation, f_low_hz, f_high_hz, source, evidence``;
        NaN where no source gives the edge.
    """
    t = pd.read_csv(path)
    need = {"species_code", "vocalisation", "f_low_hz", "f_high_hz", "source"}
    if not need <= set(t.columns):
        raise ParameterError(f"{path} lacks columns {sorted(need - set(t.columns))}")
    return t


def _check_model(model) -> None:
    if getattr(getattr(model, "config", None), "arch", None) != "birdnet-protopnet":
        raise ParameterError(f"the audit needs a prototype head on BirdNET, got {getattr(getattr(model, 'config', None), 'arch', None)!r}")


@torch.no_grad()
def audit_maps(model, waveforms, *, batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's input spectrograms, similarity maps and logits of windows, through the model's own path.

    ``model.frontend`` -> ``model.features_from_spectrogram`` -> ``model.outputs_from_features``:
    the maps and logits are those of ``model.forward_all(waveforms)``.

    Parameters
    ----------
    model : BirdNETHeadModel
        A prototype head on BirdNET's backbone.
    waveforms : np.ndarray or torch.Tensor [shape=(n_windows, 144000), dtype=float32], 48 kHz, full-scale amplitude
    batch_size : int

    Returns
    -------
    (spectrograms, similarity_maps, logits) : torch.Tensor (CPU)
        ``(n, 2, 96, 511)``, ``(n, n_prototypes, freq, time)`` (row 0 the lowest band) and ``(n, n_classes)``.

    Raises
    ------
    ParameterError
        Not a prototype head on BirdNET.
    """
    _check_model(model)
    device = next(model.parameters()).device
    x_all = torch.as_tensor(np.asarray(waveforms, dtype=np.float32))
    specs, maps, logits = [], [], []
    for i in range(0, len(x_all), batch_size):
        x = x_all[i : i + batch_size].to(device)
        model.check_waveform(x)
        s = model.frontend(x)
        out = model.outputs_from_features(model.features_from_spectrogram(s))
        specs.append(s.cpu())
        maps.append(out.similarity_maps.cpu())
        logits.append(out.logits.cpu())
    return torch.cat(specs), torch.cat(maps), torch.cat(logits)


@torch.no_grad()
def deletion_scores(model, spectrograms: torch.Tensor, regions, class_index: int, *, batch_size: int = 64) -> torch.Tensor:
    """Scores of one class after silencing one region of a spectrogram, for many (spectrogram, region) pairs.

    Deletion in the sense of Samek et al. 2017 (IEEE TNNLS 28(11), Sec. III): the
    region is set to silence (zero compressed magnitude, every input channel) and the
    spectrogram goes through the rest of the model's path,
    ``sigmoid(model.forward_head(model.features_from_spectrogram(masked)))``.

    Parameters
    ----------
    model : BirdClassifier
    spectrograms : torch.Tensor [shape=(n, channels, n_mels, n_frames)]
        ``model.frontend(waveforms)``.
    regions : sequence of (int, slice, slice)
        Index into ``spectrograms``, and the rows and frames to silence (e.g. from
        :meth:`~core.models.base.BirdClassifier.spectrogram_region`).
    class_index : int
    batch_size : int
        Masked spectrograms per pass.

    Returns
    -------
    torch.Tensor [shape=(len(regions),)], sigmoid scores in [0, 1] (CPU)
    """
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(regions), batch_size):
        part = regions[i : i + batch_size]
        batch = spectrograms[[r[0] for r in part]].to(device)
        for b, (_, rows, frames) in enumerate(part):
            batch[b, :, rows, frames] = 0.0
        out.append(torch.sigmoid(model.forward_head(model.features_from_spectrogram(batch)))[:, class_index].cpu())
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def prototype_audit(model, windows, *, max_windows_per_class: int = 12, n_random: int = 4, seed: int = 0) -> pd.DataFrame:
    """Where every prototype fires and how faithful its region is, on held-out windows.

    Every score and map comes through the model's own path (:func:`audit_maps`,
    :func:`deletion_scores`): the audited model is the shipped one, tuned stage included.

    Parameters
    ----------
    model : BirdNETHeadModel
        A prototype head on BirdNET's backbone (``arch == "birdnet-protopnet"``).
    windows : core.io.data.WindowSet
        Held-out 3 s windows at 48 kHz (the test split) with their targets.
    max_windows_per_class : int
        Own-class windows per prototype for the location and deletion checks
        (the windows where the class is labelled, evenly spread).
    n_random : int
        Random regions of the same size per window, for the control.
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per prototype: ``prototype, class_name, act_own, act_other`` (mean
        max similarity on windows of its class / of other classes), ``peak_t_s``
        (median peak time in the window [s]), ``peak_row`` (median feature row, 0 =
        lowest), ``band_high_hz`` and ``band_low_hz`` (that row's band in BirdNET's
        0.5-15 kHz and 0-3 kHz channels, "lo-hi" [Hz]), ``drop_proto``, ``drop_random``
        (mean drop of the class score, sigmoid, when the region is silenced),
        ``drop_ratio`` and ``wins`` (share of windows where the prototype's region
        removed more than the mean random region).

    Raises
    ------
    ParameterError
        The model has no prototypes or is not on BirdNET's backbone.
    """
    _check_model(model)
    gen = np.random.default_rng(seed)
    names = list(model.class_names)
    k = model.config.prototypes_per_class
    spec, sims, logits = audit_maps(model, windows.waveforms)
    clean_scores = torch.sigmoid(logits)
    acts = sims.amax(dim=(2, 3)).numpy()
    n, p, fr, tc = sims.shape
    spec_shape = tuple(spec.shape[-2:])
    bands = model.row_bands_hz(fr)  # BirdNET order: index 0 = highest row
    rows = []
    for j in range(p):
        c = j // k
        own = np.flatnonzero(windows.targets[:, c] > 0)
        other = np.flatnonzero(windows.targets[:, c] == 0)
        row = {"prototype": j, "class_name": names[c], "act_own": float(acts[own, j].mean()) if len(own) else np.nan,
               "act_other": float(acts[other, j].mean()) if len(other) else np.nan}
        pick = own[np.linspace(0, len(own) - 1, min(len(own), max_windows_per_class)).round().astype(int)] if len(own) else own
        peaks, regions, n_regions = [], [], []
        for w in np.unique(pick):
            flat = int(sims[w, j].flatten().argmax())
            cell = divmod(flat, tc)
            peaks.append(cell)
            others = [(int(gen.integers(fr)), int(gen.integers(tc))) for _ in range(n_random * 3)]
            others = [o for o in others if o != cell][:n_random]
            regions += [(int(w), *model.spectrogram_region(q, (fr, tc), spec_shape)) for q in [cell, *others]]
            n_regions.append(1 + len(others))
        after = deletion_scores(model, spec, regions, c)
        drops_p, drops_r, wins, at = [], [], [], 0
        for w, m in zip(np.unique(pick), n_regions):
            clean = float(clean_scores[w, c])
            d_p = clean - float(after[at])
            d_r = float((clean - after[at + 1 : at + m]).mean())
            at += m
            drops_p.append(d_p)
            drops_r.append(d_r)
            wins.append(d_p > d_r)
        if peaks:
            pr = int(np.median([q[0] for q in peaks]))
            (low_lo, low_hi), (high_lo, high_hi) = bands[fr - 1 - pr]
            row |= {"peak_t_s": float(np.median([q[1] for q in peaks]) + 0.5) * model.clip_seconds / tc,
                    "peak_row": pr, "band_high_hz": f"{high_lo:.0f}-{high_hi:.0f}", "band_low_hz": f"{low_lo:.0f}-{low_hi:.0f}",
                    "high_lo_hz": high_lo, "high_hi_hz": high_hi, "low_lo_hz": low_lo, "low_hi_hz": low_hi,
                    "drop_proto": float(np.mean(drops_p)), "drop_random": float(np.mean(drops_r)),
                    "drop_ratio": float(np.mean(drops_p) / max(np.mean(drops_r), 1e-6)), "wins": float(np.mean(wins)),
                    "n_windows": len(peaks)}
        rows.append(row)
    return pd.DataFrame(rows)


def audit_summary(audit: pd.DataFrame, bands: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-prototype audit with a plausibility verdict against the species' known frequency ranges.

    A prototype is "plausible" when either band of its peak row overlaps a
    sourced range of its species (song or call), "implausible" when neither does,
    and "no source" when the table gives no range for the species.
    """
    out = audit.copy()
    verdicts = []
    for r in out.itertuples():
        rng = pd.DataFrame() if bands is None else bands[(bands["species_code"] == r.class_name)].dropna(subset=["f_low_hz", "f_high_hz"])
        if rng.empty or not hasattr(r, "high_lo_hz") or pd.isna(getattr(r, "high_lo_hz", np.nan)):
            verdicts.append("no source")
            continue
        ok = any((lo <= r.high_hi_hz and hi >= r.high_lo_hz) or (lo <= r.low_hi_hz and hi >= r.low_lo_hz)
                 for lo, hi in zip(rng["f_low_hz"], rng["f_high_hz"]))
        verdicts.append("plausible" if ok else "implausible")
    out["plausibility"] = verdicts
    return out


def load_audit(card: dict) -> pd.DataFrame | None:
    """The audit table a model card points to (``card["audit"]["table"]``, relative to the repository), or None."""
    a = (card or {}).get("audit")
    if not isinstance(a, dict) or "table" not in a:
        return None
    path = Path(a["table"])
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    return pd.read_csv(path) if path.is_file() else None
