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
- **Evidence located in the input** (:mod:`core.field.attribution`): BirdNET's
  feature rows are not frequency-local (the input gradient of a row's activation
  falls 24-47 % inside the row's nominal band on birdnet_protopnet), so the peak
  row's band is not where a prototype's evidence lies. For each prototype and a
  few windows of its species, the prototype's activation is attributed to
  third-octave bands of the model's input spectrogram (both BirdNET channels on
  one Hz axis) by occlusion (Zeiler & Fergus 2014; the primary method: a band is
  replaced by its median level over the whole window) and by gradient x input
  (Shrikumar et al. 2016). ``plausibility_attr`` asks whether most (>= 50 %) of
  the positive occlusion attribution lies inside the species' sourced range.

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
from core.field.attribution import frequency_quantiles, grad_x_input, occlusion, overlap_fractions, share_inside

__all__ = ["SONG_BANDS_CSV", "song_bands", "species_ranges", "audit_maps", "deletion_scores", "prototype_audit",
           "attribution_audit", "audit_summary", "attribution_card", "load_audit"]

#: Share of the positive occlusion attribution inside the species' range from which a prototype is "plausible".
PLAUSIBLE_SHARE = 0.5

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


def species_ranges(bands: pd.DataFrame | None, species_code: str) -> list[tuple[float, float]]:
    """A species' sourced frequency ranges [Hz] (song and call rows with both edges), ``[(f_low_hz, f_high_hz), ...]``.

    Rows with only one edge (e.g. "up to 3 kHz") are left out, as in the overlap verdict.
    """
    if bands is None:
        return []
    rng = bands[bands["species_code"] == species_code].dropna(subset=["f_low_hz", "f_high_hz"])
    return [(float(lo), float(hi)) for lo, hi in zip(rng["f_low_hz"], rng["f_high_hz"]) if lo < hi]


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
def prototype_audit(model, windows, *, max_windows_per_class: int = 12, n_random: int = 4, seed: int = 0,
                    attribution_windows: int = 4, bands_per_octave: int = 3, progress=None) -> pd.DataFrame:
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
    attribution_windows : int >= 0
        Own-class windows per class (evenly spread) for the input attribution (:func:`attribution_audit`);
        0 leaves the ``attr_*`` columns out. Cost: about ``bands`` + 3 x ``prototypes_per_class`` forward passes
        per window (about 8-15 s per window of birdnet_protopnet on 2 busy CPU cores).
    bands_per_octave : int
        Frequency bands of the attribution (3: third-octaves).
    progress : callable(done, total), optional
        Called after each attribution window.

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
        removed more than the mean random region); with ``attribution_windows``, the
        columns of :func:`attribution_audit` and ``attr_share_row_band``,
        ``attr_share_row_band_gxi``: the share of the prototype's positive attribution
        (occlusion, gradient x input) inside its peak row's two nominal bands.

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
    table = pd.DataFrame(rows)
    if attribution_windows:
        table = table.merge(attribution_audit(model, windows, windows_per_class=attribution_windows,
                                              bands_per_octave=bands_per_octave, progress=progress), on="prototype", how="left")
        table["attr_share_row_band"] = [_share_in_row_band(r, "attr_occlusion_profile") for r in table.itertuples()]
        table["attr_share_row_band_gxi"] = [_share_in_row_band(r, "attr_gxi_profile") for r in table.itertuples()]
    return table


def _profile(text) -> np.ndarray | None:
    """A ';'-joined profile (or edges) from an audit table cell, None when empty."""
    if not isinstance(text, str) or not text:
        return None
    return np.array([float(v) for v in text.split(";")])


def _share_in_row_band(row, column: str) -> float:
    """Share of a prototype's pooled profile inside its peak row's bands (both channels, overlapping bands count once)."""
    prof, edges = _profile(getattr(row, column, None)), _profile(getattr(row, "attr_edges_hz", None))
    if prof is None or edges is None or pd.isna(getattr(row, "high_lo_hz", np.nan)):
        return np.nan
    return float(share_inside(prof, edges, [(row.low_lo_hz, row.low_hi_hz), (row.high_lo_hz, row.high_hi_hz)], profile=True))


def _pooled(profiles: list[np.ndarray]) -> np.ndarray | None:
    """Mean of per-window positive frequency profiles, each normalised to sum 1 (windows without positive attribution left out)."""
    keep = [np.clip(p, 0, None) / np.clip(p, 0, None).sum() for p in profiles if np.clip(p, 0, None).sum() > 0]
    return np.mean(keep, axis=0) if keep else None


def _range_share(profile: np.ndarray | None, edges: np.ndarray | None, ranges) -> float:
    """Share of a pooled profile inside ranges; NaN without a profile or a range."""
    if profile is None or edges is None or not ranges:
        return np.nan
    return float(share_inside(profile, edges, ranges, profile=True))


def _join(values) -> str:
    return "" if values is None else ";".join(f"{v:.4g}" for v in values)


def attribution_audit(model, windows, *, windows_per_class: int = 4, bands_per_octave: int = 3, progress=None) -> pd.DataFrame:
    """Where in the input each prototype's evidence lies, on windows of its own species, in Hz.

    For every class, ``windows_per_class`` of its labelled windows (evenly spread); on each, every prototype of the
    class is attributed to fractional-octave bands of the model's own input spectrogram (all of BirdNET's channels
    on one Hz axis, :func:`core.field.attribution.attribution_grid`) with one time cell over the whole window:

    - occlusion (Zeiler & Fergus 2014, ECCV; primary): the drop of the prototype's activation when a band is
      replaced by its median level in the window, for all prototypes in one set of passes
      (:func:`core.field.attribution.occlusion`, ``target="prototype"``, ``cell_s=None``);
    - gradient x input (Shrikumar et al. 2016, arXiv:1605.01713) relative to the same median baseline
      (:func:`core.field.attribution.grad_x_input`).

    Each window's positive attribution per band is normalised to sum 1 and the windows are averaged (the pooled
    profile: the share of the prototype's evidence in each band).

    Parameters
    ----------
    model : BirdClassifier
        A prototype model (every prototype of class ``c`` is ``c * prototypes_per_class + i``).
    windows : core.io.data.WindowSet
    windows_per_class : int >= 1
    bands_per_octave : int
    progress : callable(done, total), optional

    Returns
    -------
    pandas.DataFrame
        One row per prototype: ``prototype``, ``attr_windows`` (windows attributed), ``attr_edges_hz`` (band edges
        [Hz], ';'-joined), ``attr_occlusion_profile`` and ``attr_gxi_profile`` (pooled profiles, ';'-joined, sum 1;
        empty when no window had positive attribution), ``attr_f_median_hz`` and ``attr_band_hz`` (the median and the
        25-75 % range [Hz] of the occlusion profile, linear inside a band).

    Raises
    ------
    ParameterError
        ``windows_per_class < 1``, or a model without prototypes.
    """
    if isinstance(windows_per_class, bool) or not isinstance(windows_per_class, (int, np.integer)) or windows_per_class < 1:
        raise ParameterError(f"windows_per_class must be an integer >= 1, got {windows_per_class!r}")
    k = getattr(model.config, "prototypes_per_class", 0) or 0
    if k < 1:
        raise ParameterError(f"the attribution audit needs a prototype model, got arch {getattr(model.config, 'arch', None)!r}")
    n_classes = len(model.class_names)
    todo: dict[int, list[int]] = {}  # window -> prototypes to attribute there
    for c in range(n_classes):
        own = np.flatnonzero(windows.targets[:, c] > 0)
        if len(own):
            for w in np.unique(own[np.linspace(0, len(own) - 1, min(len(own), windows_per_class)).round().astype(int)]):
                todo.setdefault(int(w), []).extend(range(c * k, (c + 1) * k))
    occ: dict[int, list[np.ndarray]] = {}
    gxi: dict[int, list[np.ndarray]] = {}
    edges = None
    grid = dict(bands_per_octave=bands_per_octave, cell_s=None, baseline="median")
    for done, (w, protos) in enumerate(sorted(todo.items()), 1):
        o = occlusion(model, windows.waveforms[w], target="prototype", **grid)
        g = grad_x_input(model, windows.waveforms[w], target="prototype", indices=protos, **grid)
        edges = o.frequency_edges_hz
        prof_o, prof_g = o.frequency_profile(), g.frequency_profile()
        for b, j in enumerate(protos):
            occ.setdefault(j, []).append(prof_o[j])
            gxi.setdefault(j, []).append(prof_g[b])
        if progress is not None:
            progress(done, len(todo))
    rows = []
    for j in range(n_classes * k):
        po, pg = _pooled(occ.get(j, [])), _pooled(gxi.get(j, []))
        q = frequency_quantiles(po, edges, (0.25, 0.5, 0.75)) if po is not None else np.full(3, np.nan)
        rows.append({"prototype": j, "attr_windows": len(occ.get(j, [])), "attr_edges_hz": _join(edges if j in occ else None),
                     "attr_occlusion_profile": _join(po), "attr_gxi_profile": _join(pg), "attr_f_median_hz": q[1],
                     "attr_band_hz": f"{q[0]:.0f}-{q[2]:.0f}" if np.isfinite(q).all() else ""})
    return pd.DataFrame(rows)


def audit_summary(audit: pd.DataFrame, bands: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per-prototype audit with plausibility verdicts against the species' known frequency ranges.

    ``plausibility`` (the peak row's bands): "plausible" when either band of its peak row overlaps a sourced range
    of its species (song or call), "implausible" when neither does, "no source" when the table gives no range for
    the species. The row's bands are nominal: a BirdNET feature row draws most of its evidence from elsewhere.

    With the attribution columns (:func:`attribution_audit`), also, over the union of the species' sourced ranges
    (:func:`species_ranges`), both input channels together on one Hz axis:
    ``attr_share_range_occlusion`` and ``attr_share_range_gxi`` (share of the prototype's pooled positive
    attribution inside the ranges), ``attr_share_range_even`` (the share an even spread over the bands would give:
    the chance level) and ``plausibility_attr``: "plausible" when the occlusion share (the primary method) is at
    least ``PLAUSIBLE_SHARE`` (0.5: most of the evidence inside), "implausible" below, "no source" without a range,
    "no evidence" when occluding no band lowered the prototype's activation in any window.
    """
    out = audit.copy()
    verdicts = []
    for r in out.itertuples():
        rng = species_ranges(bands, r.class_name)
        if not rng or not hasattr(r, "high_lo_hz") or pd.isna(getattr(r, "high_lo_hz", np.nan)):
            verdicts.append("no source")
            continue
        ok = any((lo <= r.high_hi_hz and hi >= r.high_lo_hz) or (lo <= r.low_hi_hz and hi >= r.low_lo_hz) for lo, hi in rng)
        verdicts.append("plausible" if ok else "implausible")
    out["plausibility"] = verdicts
    if "attr_occlusion_profile" in out.columns:
        cols: dict[str, list] = {"attr_share_range_occlusion": [], "attr_share_range_gxi": [], "attr_share_range_even": [],
                                 "plausibility_attr": []}
        for r in out.itertuples():
            rng, edges = species_ranges(bands, r.class_name), _profile(r.attr_edges_hz)
            po, pg = _profile(r.attr_occlusion_profile), _profile(r.attr_gxi_profile)
            cols["attr_share_range_occlusion"].append(_range_share(po, edges, rng))
            cols["attr_share_range_gxi"].append(_range_share(pg, edges, rng))
            cols["attr_share_range_even"].append(float(overlap_fractions(edges, rng).mean()) if rng and edges is not None else np.nan)
            cols["plausibility_attr"].append("no source" if not rng else "no evidence" if po is None else
                                             "plausible" if cols["attr_share_range_occlusion"][-1] >= PLAUSIBLE_SHARE else "implausible")
        for name, values in cols.items():
            out[name] = values
    return out


def attribution_card(table: pd.DataFrame, windows_per_class: int) -> dict:
    """The model card's summary of the audit's input attribution (:func:`attribution_audit`, :func:`audit_summary` columns)."""
    return {"method": "occlusion (primary; Zeiler & Fergus 2014) and gradient x input (Shrikumar et al. 2016) of each "
                      "prototype's activation, third-octave bands of the input spectrogram (both BirdNET channels on one Hz "
                      "axis) over the whole window, baseline each row's median",
            "windows_per_class": int(windows_per_class),
            "median_share_row_band": float(table["attr_share_row_band"].median()),
            "median_share_row_band_gxi": float(table["attr_share_row_band_gxi"].median()),
            "plausible_share": PLAUSIBLE_SHARE,
            "plausibility": table["plausibility_attr"].value_counts().to_dict()}


def load_audit(card: dict) -> pd.DataFrame | None:
    """The audit table a model card points to (``card["audit"]["table"]``, relative to the repository), or None."""
    a = (card or {}).get("audit")
    if not isinstance(a, dict) or "table" not in a:
        return None
    path = Path(a["table"])
    if not path.is_absolute():
        path = Path(__file__).resolve().parents[2] / path
    return pd.read_csv(path) if path.is_file() else None
