"""Plotly figures: spectrograms, similarity overlays, score bars."""

from __future__ import annotations

import librosa
import numpy as np
import plotly.express as px
import plotly.graph_objects as go
import torch

from core.models.frontend import FrontendConfig, LogMel, mel_band_centres

#: Plotly's camera button saves a vector SVG (for papers and slides); PNG stays one right-click away in the browser.
CHART_CONFIG = {"toImageButtonOptions": {"format": "svg", "scale": 1}, "displaylogo": False}


def logmel_db(waveform: np.ndarray, config: FrontendConfig) -> np.ndarray:
    """Log-mel [dB] ``(n_mels, n_frames)`` of a clip (pads clips shorter than n_fft)."""
    x = np.asarray(waveform, np.float32)
    if len(x) < config.n_fft:
        x = np.pad(x, (0, config.n_fft - len(x)))
    with torch.no_grad():
        return LogMel(config).db(torch.as_tensor(x)[None])[0].numpy()


def axes(config: FrontendConfig, n_frames: int, offset_s: float = 0.0):
    t = offset_s + np.arange(n_frames) * config.hop_length / config.sample_rate
    return t, mel_band_centres(config.n_mels, config.f_min, config.f_max, htk=getattr(config, "htk", False))


def spectrogram_figure(db: np.ndarray, config: FrontendConfig, *, title: str = "", offset_s: float = 0.0,
                       colorscale: str = "Viridis", zmin=None, zmax=None, height: int = 300, zmid=None,
                       colorbar_title: str = "dB") -> go.Figure:
    t, f = axes(config, db.shape[1], offset_s)
    fig = go.Figure(go.Heatmap(z=db, x=t, y=np.arange(len(f)), colorscale=colorscale, zmin=zmin, zmax=zmax, zmid=zmid,
                               colorbar=dict(title=colorbar_title), customdata=np.repeat(f[:, None], len(t), 1),
                               hovertemplate="t %{x:.2f} s<br>f %{customdata:.0f} Hz<br>%{z:.1f}<extra></extra>"))
    _frequency_ticks(fig, f)
    fig.update_xaxes(title="time (s)")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def similarity_overlay(db: np.ndarray, sim: np.ndarray, config: FrontendConfig, *, title: str, height: int = 260,
                       offset_s: float = 0.0) -> go.Figure:
    """Spectrogram (grey) with a prototype's similarity map (upsampled) as a translucent heat layer.

    Time runs from ``offset_s`` (the window's start in its recording) and the frequency ticks are those of
    :func:`spectrogram_figure`, so the two figures of one window line up.
    """
    n_mels, n_frames = db.shape
    up = torch.nn.functional.interpolate(torch.as_tensor(sim)[None, None], size=(n_mels, n_frames), mode="bilinear",
                                         align_corners=False)[0, 0].numpy()
    t, f = axes(config, n_frames, offset_s)
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=db, x=t, y=np.arange(n_mels), colorscale="Greys", reversescale=True, showscale=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=up, x=t, y=np.arange(n_mels), colorscale="Hot", reversescale=True, zmin=0, zmax=1,
                             opacity=0.55, colorbar=dict(title="sim"),
                             hovertemplate="t %{x:.2f} s<br>similarity %{z:.2f}<extra></extra>"))
    _frequency_ticks(fig, f)
    fig.update_xaxes(title="time (s)")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def _frequency_ticks(fig: go.Figure, f: np.ndarray) -> None:
    """The same 6 frequency ticks (Hz) on every mel-bin y axis."""
    ticks = np.linspace(0, len(f) - 1, 6).astype(int)
    fig.update_yaxes(title="frequency (Hz, mel scale)", tickvals=ticks, ticktext=[f"{f[i]:.0f}" for i in ticks])


def attack_difference_db(db_clean: np.ndarray, db_adv: np.ndarray, *, dynamic_range_db: float = 60.0) -> np.ndarray:
    """Log-mel difference (perturbed - clean) [dB] with both floored at ``dynamic_range_db`` below the clean maximum.

    Near-empty bands (below 100 Hz, above the song) otherwise dominate: a change of 1e-5 in a band at -90 dB reads
    as tens of dB while an audible change in the song reads as a fraction of one.
    """
    floor = float(db_clean.max()) - dynamic_range_db
    return np.maximum(db_adv, floor) - np.maximum(db_clean, floor)


def add_box(fig: go.Figure, config: FrontendConfig, t0: float, t1: float, f_lo: float, f_hi: float) -> go.Figure:
    """Draw a time-frequency box (seconds, Hz) on a spectrogram figure with mel-bin y axis."""
    f = librosa.mel_frequencies(n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max)
    y0, y1 = np.searchsorted(f, f_lo), np.searchsorted(f, f_hi)
    fig.add_shape(type="rect", x0=t0, x1=t1, y0=y0 - 0.5, y1=y1 + 0.5, line=dict(color="red", width=3))
    return fig


def score_bars(names: list[str], scores: np.ndarray, *, title: str = "", compare: np.ndarray | None = None,
               labels=("clean", "perturbed"), height: int = 300, threshold: float | None = None) -> go.Figure:
    """Scores per species, best first; English names on the axis, the code in the hover; the decision threshold as a line."""
    from core.field.analyze import species_names

    order = np.argsort(-scores)
    english = species_names(list(names))
    x = [english[names[i]][1] for i in order]
    codes = [[names[i]] for i in order]
    fig = go.Figure(go.Bar(x=x, y=scores[order], name=labels[0], customdata=codes,
                           hovertemplate="%{x} (%{customdata[0]})<br>score %{y:.3f}<extra></extra>"))
    if compare is not None:
        fig.add_trace(go.Bar(x=x, y=compare[order], name=labels[1], customdata=codes,
                             hovertemplate="%{x} (%{customdata[0]})<br>score %{y:.3f}<extra></extra>"))
    if threshold is not None:
        fig.add_hline(y=threshold, line=dict(color="red", dash="dash"), annotation_text=f"detection threshold {threshold:.2f}")
    fig.update_yaxes(range=[0, 1], title="score (0 to 1)")
    fig.update_layout(title=title, barmode="group", height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


METRIC_LABELS = {
    "cmap": "cmAP", "roc_auc": "macro ROC-AUC", "top1": "top-1 accuracy", "success_rate": "attack success rate",
    "set_change_rate": "predicted set changed (val threshold)",
    "prs": "PRS", "drs": "DRS", "tars": "TARS", "snr_db": "SNR (dB, median)", "db_x": "dB_x (dB, median)", "eps": "eps (median)",
    "above_masking": "share of cells above the masking threshold (median)",
}


def budget_label(kind: str, value: float) -> str:
    """Axis label of one budget: ``clean``, ``eps 1e-04`` or ``40 dB``."""
    if kind == "clean":
        return "clean"
    return f"{value:g}" if kind == "eps" else f"{value:g} dB"


def robustness_curves(summary, metric: str, *, height: int = 320) -> go.Figure:
    """One line per (model, attack, objective) of ``metric`` against the budget.

    The x axis is categorical in order of attack strength (clean, then eps
    ascending or SNR descending), so eps 0 and SNR budgets plot alike.
    """
    fig = go.Figure()
    kinds = set(summary["budget_kind"]) - {"clean"}
    kind = kinds.pop() if len(kinds) == 1 else "eps"
    order = summary[summary["budget_kind"] != "clean"]["budget"].dropna().unique()
    order = sorted(order, reverse=(kind == "snr_db"))
    cats = ["clean"] + [budget_label(kind, v) for v in order]
    groups = summary.groupby(["model", "attack", "norm", "objective"], sort=False)
    many = groups.ngroups > len(summary["model"].unique())
    for (model, attack, norm, objective), g in groups:
        g = g.assign(x=[budget_label(k, b) for k, b in zip(g["budget_kind"], g["budget"])])
        g = g.set_index("x").reindex(cats).reset_index()
        name = f"{model} · {attack} {norm} {objective}" if many else model
        fig.add_trace(go.Scatter(x=g["x"], y=g[metric], mode="lines+markers", name=name,
                                 hovertemplate=f"{name}<br>%{{x}}<br>{METRIC_LABELS.get(metric, metric)} %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title="eps (full-scale amplitude)" if kind == "eps" else "target SNR", type="category", categoryorder="array", categoryarray=cats)
    fig.update_yaxes(title=METRIC_LABELS.get(metric, metric))
    fig.update_layout(title=METRIC_LABELS.get(metric, metric), height=height, margin=dict(l=10, r=10, t=40, b=10),
                      legend=dict(orientation="h", y=-0.3), colorway=px.colors.qualitative.D3)
    return fig


def survival_curves(summary, labels: dict | None = None, *, height: int = 360) -> go.Figure:
    """Attack success against the budget, digitally and after each transformation (``success_rate_after:<name>``).

    One solid line per model for the digital attack and one dashed line per
    (model, transformation); the clean point of a transformation's line is its
    control (what the transformation alone does to the clean clips).
    """
    labels = labels or {}
    fig = robustness_curves(summary, "success_rate", height=height)
    for trace in fig.data:
        trace.name = f"{trace.name} · digital"
    cols = [c for c in summary.columns if c.startswith("success_rate_after:")]
    for col in cols:
        t = col.split(":", 1)[1]
        for model, g in summary.groupby("model", sort=False):
            g = g.assign(x=[budget_label(k, b) for k, b in zip(g["budget_kind"], g["budget"])])
            name = f"{model} · after {labels.get(t, t)}"
            fig.add_trace(go.Scatter(x=g["x"], y=g[col], mode="lines+markers", name=name, line=dict(dash="dash"),
                                     hovertemplate=f"{name}<br>%{{x}}<br>success %{{y:.3f}}<extra></extra>"))
    fig.update_layout(title="Attack success, digital and after each transformation (clean point = the control)")
    fig.update_yaxes(title="attack success rate", range=[-0.02, 1.02])
    return fig


def success_note(summary, thresholds: dict | None = None) -> str:
    """"Attack success: ..." naming the definition of each objective in a :func:`core.studies.sweep.summarize` table.

    With ``thresholds`` (model -> validation threshold), also says what the
    set-change rate counts and at which cut-off per model.
    """
    if "success_definition" not in summary or summary["success_definition"].isna().all():
        note = "Attack success: as defined by the sweep that wrote this table (an old table without its definition)."
    else:
        pairs = summary[["objective", "success_definition"]].dropna().drop_duplicates()
        note = "Attack success (no score threshold): " + "; ".join(f"{o}: {d}" for o, d in pairs.itertuples(index=False)) + "."
    if thresholds:
        note += (" Predicted set changed: the species scoring at least the model's own threshold, chosen on the "
                 "validation split to maximise micro-F1 (" + ", ".join(f"{m} {t:.2f}" for m, t in thresholds.items())
                 + "), differ from the clean clip's; models without a threshold show none.")
    return note


def birdnet_input_figure(spec: np.ndarray, band_hz: np.ndarray, hop_length: int, sample_rate: int, *, title: str,
                         height: int = 260) -> go.Figure:
    """One channel of BirdNET's own input (compressed mel magnitude, row 0 = highest band), low bands at the bottom."""
    z = spec[::-1]
    f = band_hz[::-1]
    t = np.arange(z.shape[1]) * hop_length / sample_rate
    fig = go.Figure(go.Heatmap(z=z, x=t, y=np.arange(len(f)), colorscale="Viridis", colorbar=dict(title="(mel)^0.2"),
                               customdata=np.repeat(f[:, None], len(t), 1),
                               hovertemplate="t %{x:.2f} s<br>f %{customdata:.0f} Hz<br>%{z:.2f}<extra></extra>"))
    ticks = np.linspace(0, len(f) - 1, 6).astype(int)
    fig.update_yaxes(title="frequency (Hz, mel scale)", tickvals=ticks, ticktext=[f"{f[i]:.0f}" for i in ticks])
    fig.update_xaxes(title="time (s)")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig
