"""Certified accuracy against radius: how many test windows a smoothed classifier names correctly *and* provably.

Issue 26, item 2. Randomized smoothing (:mod:`core.attacks.smoothing`; Cohen, Rosenfeld & Kolter 2019, ICML) turns
each model ``f`` into ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)``, and CERTIFY gives per window a
class and an L2 radius ``R`` within which ``g`` provably keeps it (with probability ``1 - alpha`` over the noise).
*Certified accuracy at radius r* (Cohen et al., Sec. 4, their Fig. 6 and Table 1) is the share of test windows whose
certified class is a true label **and** whose radius is at least ``r``; at ``r = 0`` it is ``g``'s accuracy without
abstentions. Here the radius is given as an SNR (:func:`core.attacks.smoothing.radius_snr_db`): a window counts at
``s`` dB when its certificate rules out every perturbation at an SNR above ``s``, i.e. its certified SNR is at most
``s`` (a *lower* SNR is a *stronger* certificate: a louder sound is needed to break it).

The windows (:func:`stratified_test_windows`) are chosen without looking at any model: ``per_species`` per species,
spread over that species' test recordings, windows with at least half their samples of real audio. Their labels are
the recording's (weak) labels, so a window in which the bird is silent can only be right by chance; every arm meets
the same windows, and the clean top-1 accuracy of ``f`` is reported beside ``g``'s.

Cost: every window draws ``n0 + n`` noisy copies; the models of one BirdNET trunk (heads reading the same layer of
BirdNET's frozen graph) share it (:class:`SharedTrunk`): on this 2-core CPU at one thread a batch of 8 copies takes
about 200 ms of trunk and 14 ms per head, so 15 heads cost about twice one head's time. The noise is seeded per window (by its id), so every model meets the
same noisy copies and a resumed run draws the ones an interrupted run would have.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = ["SNR_THRESHOLDS_DB", "RADII_SIGMA", "CertWindow", "stratified_test_windows", "SharedTrunk", "certify_models",
           "certified_within", "certified_summary", "certified_markdown", "certified_differences", "certified_differences_markdown"]

#: Certified SNRs [dB] at which the table gives certified accuracy: a window counts at ``s`` when no perturbation at an
#: SNR above ``s`` can change its certified answer. At sigma 3e-4 and n = 1,000 the largest radius is 7.4e-4 (L2),
#: i.e. 71-96 dB below the nine windows of the certificate check; at sigma 3e-3 ten times larger (20 dB lower).
SNR_THRESHOLDS_DB = (90.0, 80.0, 70.0, 60.0, 50.0)
#: L2 radii [multiples of sigma] of the primary table (Cohen et al.'s certified accuracy at a fixed radius); 2.45 sigma
#: is just under the cap at n = 1,000 and alpha = 0.001 (2.46 sigma: every estimation copy agreed).
RADII_SIGMA = (0.5, 1.0, 2.0, 2.45)


@dataclass(frozen=True)
class CertWindow:
    """One test window of :func:`stratified_test_windows`.

    Attributes
    ----------
    window_id : str
        ``"<recording_id>@<start>s"``.
    recording_id : str
    start_s : float [s]
    waveform : np.ndarray [shape=(window_samples,), dtype=float32] [full-scale amplitude]
    labels : tuple of str
        The recording's focal class codes (weak labels).
    species : str
        The first label (the stratum).
    """

    window_id: str
    recording_id: str
    start_s: float
    waveform: np.ndarray
    labels: tuple[str, ...]
    species: str


def stratified_test_windows(dataset, *, class_names: Sequence[str], sample_rate: int, window_samples: int, per_species: int,
                            split: str = "test", seed: int = 0, min_valid: float = 0.5) -> list[CertWindow]:
    """``per_species`` windows of each species, chosen without any model, round-robin over its recordings.

    Each species' recordings (by first label) are taken in a shuffled order, and from each in turn one window not yet
    chosen, at random, until ``per_species`` are chosen or none is left.

    Parameters
    ----------
    dataset : core.io.data.Dataset
    class_names : sequence of str
        The models' classes; recordings whose first label is not among them are skipped.
    sample_rate : int [Hz]
    window_samples : int [samples]
    per_species : int >= 1
    split : str
    seed : int
        Seeds the shuffles.
    min_valid : float in (0, 1]
        Windows with less than this share of real audio (the rest padding) are left out.

    Returns
    -------
    list of CertWindow, species in ``class_names`` order

    Raises
    ------
    ParameterError
        ``per_species < 1``, or no window in the split.
    """
    from core.io.data import build_windows

    if isinstance(per_species, bool) or not isinstance(per_species, int) or per_species < 1:
        raise ParameterError(f"per_species must be an integer >= 1, got {per_species!r}")
    rng = np.random.default_rng(seed)
    by_species: dict[str, list] = {}
    for rec in dataset.split(split):
        if rec.labels and rec.labels[0] in class_names:
            by_species.setdefault(rec.labels[0], []).append(rec)
    out: list[CertWindow] = []
    for code in class_names:
        recs = by_species.get(code, [])
        if not recs:
            continue
        ws = build_windows(dataset, recs, sample_rate=sample_rate, window_s=window_samples / sample_rate, class_names=class_names)
        valid = ws.valid_samples if ws.valid_samples is not None else np.full(len(ws.waveforms), window_samples)
        pools = []
        for r in rng.permutation(len(recs)):
            idx = np.flatnonzero((ws.recording_index == r) & (valid >= min_valid * window_samples))
            pools.append(list(rng.permutation(idx)))
        chosen: list[int] = []
        while len(chosen) < per_species and any(pools):
            for pool in pools:
                if pool and len(chosen) < per_species:
                    chosen.append(int(pool.pop()))
        for i in sorted(chosen, key=lambda i: (ws.recording_index[i], ws.starts[i])):
            rec = ws.recordings[ws.recording_index[i]]
            start = float(ws.starts[i]) / sample_rate
            out.append(CertWindow(f"{rec.recording_id}@{start:g}s", rec.recording_id, start, ws.waveforms[i],
                                  tuple(rec.labels), code))
    if not out:
        raise ParameterError(f"no window of the {split} split has a first label among the models' classes")
    return out


def _trunk_key(model) -> tuple | None:
    """Models with the same key share everything up to :meth:`forward_features`; None: the model stands alone."""
    from core.models.birdnet_proto import BirdNETHeadModel

    if not isinstance(model, BirdNETHeadModel):
        return None
    c = model.config
    return ("birdnet-head", c.tuned_from or c.layer, repr(c.frontend), str(next(model.parameters()).device))


class SharedTrunk:
    """Logits of several models on one batch, each shared frozen trunk computed once.

    BirdNET heads (:class:`core.models.birdnet_proto.BirdNETHeadModel`) that read the same layer of BirdNET's frozen
    graph compute ``model(x) = model.forward_head(model.forward_features(x))`` with the same ``forward_features``; this
    computes it once per group and each head on it. Other models run whole. The first call checks, per model, that the
    shared path gives ``model(x)`` (to 1e-4 of the logits' scale) and raises otherwise, so what is certified is the
    model as shipped.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        Same classes, in eval mode.

    Raises
    ------
    ParameterError
        No model.
    RuntimeError
        (first call) The shared path differs from a model's own forward pass.
    """

    def __init__(self, models: Sequence[torch.nn.Module]) -> None:
        self.models = list(models)
        if not self.models:
            raise ParameterError("SharedTrunk needs at least one model")
        self.groups: dict[object, list[int]] = {}
        for i, m in enumerate(self.models):
            key = _trunk_key(m)
            self.groups.setdefault(key if key is not None else ("alone", i), []).append(i)
        self.checked = False

    def parameters(self):
        """The first model's parameters (for its device)."""
        return self.models[0].parameters()

    @torch.no_grad()
    def __call__(self, waveform: torch.Tensor) -> torch.Tensor:
        """``(batch, n_samples)`` -> logits ``(k, batch, n_classes)``, ``k`` = number of models, in their order."""
        out: list[torch.Tensor | None] = [None] * len(self.models)
        for key, members in self.groups.items():
            if key[0] == "alone":
                out[members[0]] = self.models[members[0]](waveform)
                continue
            features = self.models[members[0]].forward_features(waveform)
            for i in members:
                out[i] = self.models[i].forward_head(features)
        logits = torch.stack(out)
        if not self.checked:
            for i, m in enumerate(self.models):
                own = m(waveform)
                if not torch.allclose(own, logits[i], rtol=1e-4, atol=1e-4 * float(own.abs().max().clamp_min(1.0))):
                    raise RuntimeError(f"model {i}: the shared trunk's logits differ from model(x) by "
                                       f"{float((own - logits[i]).abs().max()):.3g}")
            self.checked = True
        return logits


def _window_index(window_id: str) -> int:
    """A stable number for a window id: seeds its noise, whatever other windows a run holds."""
    return zlib.crc32(window_id.encode("utf-8"))


def certify_models(models: Mapping[str, torch.nn.Module], windows: Sequence[CertWindow], *, sigma: float, n: int = 1000,
                   n0: int = 100, alpha: float = 0.001, batch_size: int = 8, seed: int = 0,
                   info: Mapping[str, Mapping] | None = None, skip: set | None = None,
                   on_window: Callable[[list[dict]], None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """CERTIFY (Cohen et al. 2019) every model on every window, on the same noisy copies.

    Parameters
    ----------
    models : mapping name -> model
        Models of the same classes (``config.class_names``) and window length.
    windows : sequence of CertWindow
    sigma : float in (0, 1) [full-scale amplitude]
        Smoothing noise std per sample.
    n, n0 : int
        Estimation and selection copies per window (``n >= n0``).
    alpha : float in (0, 1)
    batch_size : int >= 1
        Noisy copies per forward pass.
    seed : int
        With the window's id, seeds its noise.
    info : mapping name -> dict, optional
        Extra columns per model (e.g. ``arm``, ``train_seed``).
    skip : set of (model name, window_id, sigma), optional
        Pairs already certified (a resumed run); a window all of whose models are in it is not drawn.
    on_window : callable, optional
        ``on_window(rows)`` after each window: that window's rows (e.g. to append them to a file).
    progress : callable, optional
        ``progress(done, total)`` in windows.

    Returns
    -------
    pandas.DataFrame
        One row per (model, window) certified here: ``model``, the ``info`` columns, ``window``, ``recording``,
        ``species``, ``labels`` (";"-joined), ``after_cutoff`` (XC id above BirdNET's training cut-off),
        ``clean_class``, ``clean_correct`` (``f``'s clean top-1 is a label), ``class_name`` (``g``'s class ``c_A``),
        ``abstain``, ``correct`` (``c_A`` is a label and ``g`` does not abstain), ``p_lower``, ``radius``
        [full-scale amplitude, L2; NaN when abstaining], ``snr_db`` [dB; NaN when abstaining], ``signal_norm``,
        ``max_radius``, ``sigma``, ``n``, ``n0``, ``alpha``, ``seconds`` (the window's time, shared by its models).

    Raises
    ------
    ParameterError
        Bad smoothing settings, no model, or models with other classes or windows (sample rate, length) than the first.
    """
    from core.attacks.smoothing import (
        certified_radius,
        check_smoothing,
        lower_confidence_bound,
        max_certifiable_radius,
        noise_counts,
        noise_generator,
        radius_snr_db,
    )
    from core.studies.leakage import after_cutoff

    sigma, alpha, n0, n, _, _, batch_size = check_smoothing(sigma, alpha, n0, n, None, 1, batch_size)
    names = list(models)
    if not names:
        raise ParameterError("no model to certify")
    classes = list(models[names[0]].config.class_names)
    first = models[names[0]].config
    for name in names[1:]:
        c = models[name].config
        if list(c.class_names) != classes:
            raise ParameterError(f"{name} has other classes than {names[0]}")
        if (c.frontend.sample_rate, c.window_samples) != (first.frontend.sample_rate, first.window_samples):
            raise ParameterError(f"{name} reads other windows ({c.window_samples} samples at {c.frontend.sample_rate} Hz) than "
                                 f"{names[0]} ({first.window_samples} at {first.frontend.sample_rate} Hz): certify them apart")
    skip = skip or set()
    info = info or {}
    device = next(models[names[0]].parameters()).device
    rows: list[dict] = []
    for w_i, win in enumerate(windows):
        todo = [m for m in names if (m, win.window_id, sigma) not in skip]
        if todo:
            start = time.perf_counter()
            trunk = SharedTrunk([models[m] for m in todo])
            x = torch.as_tensor(np.asarray(win.waveform, dtype=np.float32), device=device)
            with torch.no_grad():
                clean = trunk(x[None])[:, 0].argmax(-1).cpu().numpy()
            gen = noise_generator(device, seed, _window_index(win.window_id))
            selection = noise_counts(trunk, x, sigma=sigma, n=n0, n_classes=len(classes), batch_size=batch_size, generator=gen)
            counts = noise_counts(trunk, x, sigma=sigma, n=n, n_classes=len(classes), batch_size=batch_size, generator=gen)
            seconds = time.perf_counter() - start
            norm = float(torch.linalg.vector_norm(x).cpu())
            done = []
            for k, name in enumerate(todo):
                label = int(np.argmax(selection[k]))
                p_lower = lower_confidence_bound(int(counts[k, label]), n, alpha)
                radius = certified_radius(p_lower, sigma)
                right = classes[label] in win.labels
                done.append({"model": name, **dict(info.get(name, {})), "window": win.window_id, "recording": win.recording_id,
                             "species": win.species, "labels": ";".join(win.labels), "after_cutoff": after_cutoff(win.recording_id),
                             "clean_class": classes[int(clean[k])], "clean_correct": classes[int(clean[k])] in win.labels,
                             "class_name": classes[label], "abstain": radius is None, "correct": bool(right and radius is not None),
                             "p_lower": p_lower, "radius": np.nan if radius is None else radius,
                             "snr_db": np.nan if radius is None else radius_snr_db(norm, radius), "signal_norm": norm,
                             "max_radius": max_certifiable_radius(sigma, n, alpha), "sigma": sigma, "n": n, "n0": n0,
                             "alpha": alpha, "seconds": seconds})
            rows += done
            if on_window is not None:
                on_window(done)
        if progress is not None:
            progress(w_i + 1, len(windows))
    return pd.DataFrame(rows)


def _certified_at(part: pd.DataFrame, snr_db: float) -> float:
    """Share of windows certified correct with a certified SNR of at most ``snr_db``."""
    return float((part["correct"].astype(bool) & (part["snr_db"] <= snr_db)).mean())


def certified_within(rows: pd.DataFrame, radius_sigma: float) -> pd.Series:
    """Per row: 1.0 where the window is certified correct at an L2 radius of at least ``radius_sigma`` sigmas, else 0.0
    (an abstention counts 0; Cohen et al.'s certified accuracy at radius ``radius_sigma * sigma``)."""
    ok = rows["correct"].astype(bool) & (rows["radius"].fillna(-1.0) >= radius_sigma * rows["sigma"] * (1 - 1e-9))
    return ok.astype(float)


def _subset(rows: pd.DataFrame, subset: str) -> pd.DataFrame:
    if subset not in ("all", "post-cutoff"):
        raise ParameterError(f"subset must be 'all' or 'post-cutoff', got {subset!r}")
    if "arm" not in rows.columns:
        raise ParameterError("the rows need an 'arm' column")
    return rows if subset == "all" else rows[rows["after_cutoff"].astype(str) == "True"]


def certified_summary(rows: pd.DataFrame, thresholds: Sequence[float] = SNR_THRESHOLDS_DB, *,
                      radii_sigma: Sequence[float] = RADII_SIGMA, subset: str = "all") -> pd.DataFrame:
    """Per (sigma, arm): mean and SD over its models of clean, smoothed and certified accuracy.

    Parameters
    ----------
    rows : pandas.DataFrame
        :func:`certify_models`'s rows, with an ``arm`` column.
    thresholds : sequence of float [dB]
        Certified SNRs of the secondary columns (:data:`SNR_THRESHOLDS_DB`): relative to each window's loudness, so
        their low-dB end holds only near-silent windows.
    radii_sigma : sequence of float
        L2 radii in multiples of sigma of the primary columns (:data:`RADII_SIGMA`; Cohen et al.'s certified accuracy
        at a fixed radius).
    subset : {"all", "post-cutoff"}
        All windows, or only those of recordings after BirdNET's training cut-off (XC id > 694204).

    Returns
    -------
    pandas.DataFrame
        ``sigma, arm, n_models, n_windows, n_recordings`` and per measure (``clean_top1`` of ``f``, ``smoothed_top1``
        = certified accuracy at radius 0, ``abstain``, ``g_differs`` (g's class is not f's clean top-1, among the
        windows where g answers), ``cert_<k>sigma``, ``cert_<s>db``) its ``mean`` and ``sd`` (ddof 1; NaN for one model).

    Raises
    ------
    ParameterError
        Unknown ``subset``, or no ``arm`` column.
    """
    data = _subset(rows, subset)
    out = []
    for (sigma, arm), part in data.groupby(["sigma", "arm"], sort=False):
        per_model = []
        for _, m in part.groupby("model", sort=False):
            answered = ~m["abstain"].astype(bool)
            v = {"clean_top1": float(m["clean_correct"].astype(bool).mean()), "smoothed_top1": float(m["correct"].astype(bool).mean()),
                 "abstain": float((~answered).mean()),
                 "g_differs": float((m.loc[answered, "class_name"] != m.loc[answered, "clean_class"]).mean()) if answered.any() else np.nan}
            v.update({f"cert_{k:g}sigma": float(certified_within(m, k).mean()) for k in radii_sigma})
            v.update({f"cert_{t:g}db": _certified_at(m, t) for t in thresholds})
            per_model.append(v)
        pm = pd.DataFrame(per_model)
        row = {"sigma": sigma, "arm": arm, "n_models": len(pm), "n_windows": int(part.groupby("model").size().min()),
               "n_recordings": int(part["recording"].nunique())}
        for col in pm.columns:
            row[f"{col} mean"] = float(pm[col].mean())
            row[f"{col} sd"] = float(pm[col].std(ddof=1)) if len(pm) > 1 else np.nan
        out.append(row)
    return pd.DataFrame(out)


def _cell(r, c) -> str:
    sd = r[f"{c} sd"]
    return f"{r[f'{c} mean']:.2f} ± {sd:.2f}" if np.isfinite(sd) else f"{r[f'{c} mean']:.2f}"


def certified_markdown(summary: pd.DataFrame, kind: str = "radius") -> str:
    """docs/ table of :func:`certified_summary`: one row per (sigma, arm), mean ± SD over seeds.

    ``kind="radius"``: certified accuracy at fixed L2 radii (the primary table); ``kind="snr"``: at certified SNRs,
    which depend on each window's loudness (the secondary table).

    Raises
    ------
    ParameterError
        Unknown ``kind``.
    """
    if kind not in ("radius", "snr"):
        raise ParameterError(f"kind must be 'radius' or 'snr', got {kind!r}")
    suffix = "sigma mean" if kind == "radius" else "db mean"
    levels = [c[len("cert_"):-len(suffix)] for c in summary.columns if c.startswith("cert_") and c.endswith(suffix)]
    if kind == "radius":
        heads = [f"R >= {k} sigma" for k in levels]
        lines = ["| sigma | arm | seeds | windows (recordings) | f clean top-1 | g top-1 (R >= 0) | abstain | g differs from f | "
                 + " | ".join(heads) + " |", "|---:|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(levels)]
    else:
        heads = [f"certified at <= {t} dB" for t in levels]
        lines = ["| sigma | arm | seeds | windows (recordings) | g top-1 (R >= 0) | " + " | ".join(heads) + " |",
                 "|---:|---|---:|---:|---:|" + "---:|" * len(levels)]
    unit = "sigma" if kind == "radius" else "db"
    for _, r in summary.iterrows():
        cells = " | ".join(_cell(r, f"cert_{k}{unit}") for k in levels)
        first = f"| {r['sigma']:g} | {r['arm']} | {int(r['n_models'])} | {int(r['n_windows'])} ({int(r['n_recordings'])}) | "
        if kind == "radius":
            lines.append(first + f"{_cell(r, 'clean_top1')} | {_cell(r, 'smoothed_top1')} | {_cell(r, 'abstain')} | "
                         f"{_cell(r, 'g_differs')} | {cells} |")
        else:
            lines.append(first + f"{_cell(r, 'smoothed_top1')} | {cells} |")
    return "\n".join(lines)


def certified_differences(rows: pd.DataFrame, *, control: str = "OT+FT", radii_sigma: Sequence[float] = (0.0, 2.0),
                          subset: str = "all", n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Each arm's certified accuracy at each radius minus the control's, per sigma, with hierarchical bootstrap intervals.

    Windows are matched by name; recordings, then the arm's seeds, are resampled
    (:func:`core.metrics.hierarchical_difference`; Saravanan et al. 2020).

    Returns
    -------
    pandas.DataFrame
        ``sigma, arm, control, radius_sigma, effect, ci_low, ci_high, p_two_sided, n_recordings, n_seeds_arm,
        n_seeds_control, n_boot``; no row for a sigma without the control arm.
    """
    from core.metrics import hierarchical_difference

    data = _subset(rows, subset)
    out = []
    for sigma, part in data.groupby("sigma", sort=False):
        if control not in set(part["arm"]):
            continue
        for k in radii_sigma:
            values = part.assign(value=certified_within(part, k))
            for arm in dict.fromkeys(values["arm"]):
                if arm != control:
                    out.append({"sigma": sigma, "arm": arm, "control": control, "radius_sigma": k,
                                **hierarchical_difference(values, arm, control, "value", n_boot=n_boot, seed=seed, window="window")})
    return pd.DataFrame(out)


def certified_differences_markdown(diffs: pd.DataFrame) -> str:
    """docs/ table of :func:`certified_differences`: the bootstrap p and, beside it, the p Holm-adjusted over every row
    of the table (:func:`core.metrics.holm`; the family is the table)."""
    from core.metrics import format_p, holm_cells

    adjusted = holm_cells(diffs["p_two_sided"].to_numpy(dtype=float), diffs["n_boot"].to_numpy(dtype=float)) if len(diffs) else []
    lines = [f"| sigma | arm | against | radius | difference [95 % CI] | p | p (Holm, {len(diffs)} rows) | recordings | seeds |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for (_, d), p_holm in zip(diffs.iterrows(), adjusted):
        n_boot = int(d["n_boot"])
        lines.append(f"| {d['sigma']:g} | {d['arm']} | {d['control']} | {d['radius_sigma']:g} sigma | {d['effect']:+.3f} "
                     f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] | {format_p(d['p_two_sided'], n_boot)} | {p_holm} | "
                     f"{int(d['n_recordings'])} | {int(d['n_seeds_arm'])} vs {int(d['n_seeds_control'])} |")
    return "\n".join(lines)
