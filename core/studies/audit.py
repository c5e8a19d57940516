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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = ["SONG_BANDS_CSV", "song_bands", "prototype_audit", "audit_summary", "load_audit"]

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


def _spec_region(model, cell: tuple[int, int], map_shape: tuple[int, int], spec_shape: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and frames of the input spectrogram under one feature cell (model orientation: row 0 lowest)."""
    fr, tc = map_shape
    n_rows, n_frames = spec_shape
    r = fr - 1 - cell[0]  # BirdNET's spectrogram has row 0 = highest band
    rows = slice(r * n_rows // fr, (r + 1) * n_rows // fr)
    frames = slice(cell[1] * n_frames // tc, (cell[1] + 1) * n_frames // tc)
    return rows, frames


@torch.no_grad()
def prototype_audit(model, windows, *, max_windows_per_class: int = 12, n_random: int = 4, seed: int = 0) -> pd.DataFrame:
    """Where every prototype fires and how faithful its region is, on held-out windows.

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
        (median peak time in the window), ``peak_row`` (median feature row, 0 =
        lowest), ``band_high_hz`` and ``band_low_hz`` (that row's band in BirdNET's
        0.5-15 kHz and 0-3 kHz channels, "lo-hi"), ``drop_proto``, ``drop_random``
        (mean drop of the class score, sigmoid, when the region is silenced),
        ``drop_ratio`` and ``wins`` (share of windows where the prototype's region
        removed more than the mean random region).

    Raises
    ------
    ParameterError
        The model has no prototypes or is not on BirdNET's backbone.
    """
    if getattr(model.config, "arch", None) != "birdnet-protopnet":
        raise ParameterError(f"the audit needs a prototype head on BirdNET, got {getattr(model.config, 'arch', None)!r}")
    gen = np.random.default_rng(seed)
    device = next(model.head.parameters()).device
    names = list(model.config.class_names)
    k = model.config.prototypes_per_class
    x_all = torch.as_tensor(windows.waveforms)
    specs, maps = [], []
    for i in range(0, len(x_all), 32):
        s = model.frontend(x_all[i : i + 32].to(device))
        specs.append(s.cpu())
        (f,), _ = model.backbone(s)
        maps.append(model.head.similarity_maps(f.flip(2)).cpu())
    spec = torch.cat(specs)
    sims = torch.cat(maps)  # (N, P, F, T), row 0 lowest
    acts = sims.amax(dim=(2, 3)).numpy()
    n, p, fr, tc = sims.shape
    bands = model.row_bands_hz(fr)  # BirdNET order: index 0 = highest row
    rows = []
    for j in range(p):
        c = j // k
        own = np.flatnonzero(windows.targets[:, c] > 0)
        other = np.flatnonzero(windows.targets[:, c] == 0)
        row = {"prototype": j, "class_name": names[c], "act_own": float(acts[own, j].mean()) if len(own) else np.nan,
               "act_other": float(acts[other, j].mean()) if len(other) else np.nan}
        pick = own[np.linspace(0, len(own) - 1, min(len(own), max_windows_per_class)).round().astype(int)] if len(own) else own
        peaks, drops_p, drops_r, wins = [], [], [], []
        for w in np.unique(pick):
            flat = int(sims[w, j].flatten().argmax())
            cell = divmod(flat, tc)
            peaks.append(cell)
            base = spec[w : w + 1].to(device)
            clean = torch.sigmoid(model.forward_head(_feats(model, base)))[0, c].item()
            r_sl, t_sl = _spec_region(model, cell, (fr, tc), tuple(base.shape[-2:]))
            masked = base.clone()
            masked[..., r_sl, t_sl] = 0.0
            d_p = clean - torch.sigmoid(model.forward_head(_feats(model, masked)))[0, c].item()
            others = [(int(gen.integers(fr)), int(gen.integers(tc))) for _ in range(n_random * 3)]
            others = [o for o in others if o != cell][:n_random]
            batch = base.repeat(len(others), 1, 1, 1)
            for b, o in enumerate(others):
                rs, ts = _spec_region(model, o, (fr, tc), tuple(base.shape[-2:]))
                batch[b, :, rs, ts] = 0.0
            d_r = (clean - torch.sigmoid(model.forward_head(_feats(model, batch)))[:, c]).mean().item()
            drops_p.append(d_p)
            drops_r.append(d_r)
            wins.append(d_p > d_r)
        if peaks:
            pr = int(np.median([q[0] for q in peaks]))
            (low_lo, low_hi), (high_lo, high_hi) = bands[fr - 1 - pr]
            row |= {"peak_t_s": float(np.median([q[1] for q in peaks]) + 0.5) * model.config.clip_seconds / tc,
                    "peak_row": pr, "band_high_hz": f"{high_lo:.0f}-{high_hi:.0f}", "band_low_hz": f"{low_lo:.0f}-{low_hi:.0f}",
                    "high_lo_hz": high_lo, "high_hi_hz": high_hi, "low_lo_hz": low_lo, "low_hi_hz": low_hi,
                    "drop_proto": float(np.mean(drops_p)), "drop_random": float(np.mean(drops_r)),
                    "drop_ratio": float(np.mean(drops_p) / max(np.mean(drops_r), 1e-6)), "wins": float(np.mean(wins)),
                    "n_windows": len(peaks)}
        rows.append(row)
    return pd.DataFrame(rows)


def _feats(model, spec: torch.Tensor) -> torch.Tensor:
    (f,), _ = model.backbone(spec)
    return f.flip(2)


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
