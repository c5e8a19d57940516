"""The Clip page's input-attribution panel: where in the input spectrogram the evidence for a class lies, in Hz and s.

Computed only when the user asks (a button), so the page's first visit does not pay for it; results are kept per
model, clip, class and resolution for the session.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.errors import CoreError
from core.field.attribution import METHOD_CITATIONS, AttributionMap, grad_x_input, occlusion
from ui.common import compute_on_click
from ui.plots import CHART_CONFIG

#: Resolution choices: label -> (bands per octave, time cell [s]).
RESOLUTIONS = {"octaves x 0.5 s": (1, 0.5), "third-octaves x 0.25 s": (3, 0.25)}


def attribution_figure(amap: AttributionMap, row: int, *, title: str, offset_s: float = 0.0, height: int = 300) -> go.Figure:
    """One target's attribution map as a heatmap: frequency bands [Hz] up, time [s] across, red = evidence for.

    Parameters
    ----------
    amap : AttributionMap
    row : int
        Which target of ``amap``.
    title : str
    offset_s : float [s]
        The window's start in its recording (the time axis starts there, as the spectrogram's).
    height : int [px]
    """
    v = amap.values[row]
    e = amap.frequency_edges_hz
    bands = [f"{e[i]:.0f}–{e[i + 1]:.0f} Hz" for i in range(len(e) - 1)]
    t = offset_s + amap.time_s
    lim = float(np.abs(v).max()) or 1.0
    fig = go.Figure(go.Heatmap(z=v, x=t, y=np.arange(len(bands)), zmin=-lim, zmax=lim, zmid=0, colorscale="RdBu", reversescale=True,
                               colorbar=dict(title="Δ logit" if amap.target == "logit" else "Δ sim"),
                               customdata=np.repeat(np.array(bands)[:, None], len(t), 1),
                               hovertemplate="t %{x:.2f} s<br>%{customdata}<br>%{z:.3f}<extra></extra>"))
    ticks = np.unique(np.linspace(0, len(bands) - 1, min(len(bands), 8)).round().astype(int))
    fig.update_yaxes(title="frequency band (Hz)", tickvals=ticks, ticktext=[f"{amap.frequency_hz[i]:.0f}" for i in ticks])
    fig.update_xaxes(title="time (s)")
    fig.update_layout(title=title, height=height, margin=dict(l=10, r=10, t=40, b=10))
    return fig


def _compute(model, window: np.ndarray, class_index: int, bands_per_octave: int, cell_s: float, bar) -> dict:
    start = time.perf_counter()
    kw = dict(indices=[class_index], bands_per_octave=bands_per_octave, cell_s=cell_s)
    occ = occlusion(model, window, progress=lambda done, total: bar.progress(done / (total + 1), text=f"occlusion: {done}/{total} cells"),
                    **kw)
    bar.progress(1.0, text="gradient x input")
    gxi = grad_x_input(model, window, **kw)
    return {"occlusion": occ, "grad_x_input": gxi, "seconds": time.perf_counter() - start}


def _sourced_ranges(code: str) -> list[tuple[float, float]]:
    try:
        from core.studies.audit import song_bands, species_ranges

        return species_ranges(song_bands(), code)
    except (OSError, CoreError):
        return []


def attribution_panel(model_name: str, model, window: np.ndarray, *, scores: np.ndarray, offset_s: float = 0.0,
                      display: Callable[[str], str] = str, key: str = "clip_attr") -> None:
    """An expander: pick a class and a resolution, press the button, see occlusion and gradient x input in Hz and s.

    Parameters
    ----------
    model_name : str
    model : BirdClassifier
    window : np.ndarray [shape=(n_samples,), dtype=float32]
        The model's window (at ``model.sample_rate`` [Hz]), as it scored it.
    scores : np.ndarray [shape=(n_classes,)]
        The window's scores (the class list is offered best first).
    offset_s : float [s]
        The window's start in its recording.
    display : callable
        Class code -> the name shown.
    key : str
        Prefix of the widgets' keys.
    """
    with st.expander("Where in the input is the evidence? (occlusion and gradient × input, in Hz and s)"):
        names = list(model.class_names)
        order = [int(i) for i in np.argsort(-np.asarray(scores))[: min(len(names), 25)]]
        st.caption("The prototype maps below are the feature map stretched over the spectrogram. For BirdNET's heads a "
                   "feature row draws most of its evidence from outside its nominal band, so this panel measures where "
                   "the evidence lies in the model's own input spectrogram"
                   + (" (BirdNET's two channels, 0-3 kHz and 0.5-15 kHz, on one Hz axis)" if hasattr(model.frontend, "band_hz") else "")
                   + ". Red: the cell holds evidence for the class; blue: against it.")
        clip_id = hashlib.sha1(np.ascontiguousarray(window).tobytes()).hexdigest()[:12]
        c1, c2 = st.columns(2)  # the class list is keyed by the clip: a new clip starts at its own top class
        c = c1.selectbox("Class", order, format_func=lambda i: f"{display(names[i])} (score {scores[i]:.2f})",
                         key=f"{key}_class_{clip_id}")
        res = c2.radio("Cells", list(RESOLUTIONS), horizontal=True, key=f"{key}_res",
                       help="Octave bands x 0.5 s: about 50 forward passes per 3 s window; third-octaves x 0.25 s: about 250.")
        bands_per_octave, cell_s = RESOLUTIONS[res]
        got = compute_on_click("Compute where the evidence lies", key, (model_name, clip_id, int(c), res),
                               lambda bar: _compute(model, window, int(c), bands_per_octave, cell_s, bar), text="occlusion")
        if got is None:
            return
        left, right = st.columns(2)
        for col, method in ((left, "occlusion"), (right, "grad_x_input")):
            amap = got[method]
            label = "Occlusion" if method == "occlusion" else "Gradient × input"
            with col:
                st.plotly_chart(attribution_figure(amap, 0, offset_s=offset_s,
                                                   title=f"{label}: {display(names[c])} logit {amap.clean[0]:.2f}"),
                                config=CHART_CONFIG, key=f"{key}_{method}")
                st.caption(METHOD_CITATIONS[method] + f" Baseline: each row's median over the window ({amap.baseline}).")
        ranges = _sourced_ranges(names[c])
        if ranges:
            occ, gxi = got["occlusion"], got["grad_x_input"]
            span = ", ".join(f"{lo:.0f}–{hi:.0f} Hz" for lo, hi in ranges)
            st.markdown(f"**Inside the sourced range of {display(names[c])}** ({span}, `assets/xc9/song_bands.csv`): "
                        f"{_percent(occ.share_inside(ranges)[0])} of the positive occlusion attribution, "
                        f"{_percent(gxi.share_inside(ranges)[0])} of the positive gradient × input.")
        st.caption(f"Computed in {got['seconds']:.1f} s, through the model's own path: the unaltered logit is model(x)'s.")
        _audit_rows(model, names[c], display)


def _percent(share: float) -> str:
    return "none (no cell with positive attribution)" if not np.isfinite(share) else f"{share:.0%}"


def _audit_rows(model, code: str, display) -> None:
    """The audit's input attribution of this class's prototypes, when the model's audit table has it."""
    from core.studies.audit import load_audit

    audit = load_audit(getattr(model, "card", {}))
    cols = ["prototype", "band_high_hz", "band_low_hz", "attr_band_hz", "attr_share_row_band", "attr_share_range_occlusion",
            "plausibility", "plausibility_attr"]
    if audit is None or not set(cols) <= set(audit.columns):
        return
    rows = audit[audit["class_name"] == code][cols]
    if rows.empty:
        return
    st.markdown(f"**Audit of {display(code)}'s prototypes** (test split): the peak row's nominal bands, where occlusion "
                "puts the prototype's evidence (25-75 % of it), the share of it inside the row's bands and inside the "
                "species' sourced range, and both verdicts.")
    st.dataframe(rows.rename(columns={"band_high_hz": "row band 0.5-15 kHz ch.", "band_low_hz": "row band 0-3 kHz ch.",
                                      "attr_band_hz": "evidence (Hz)", "attr_share_row_band": "share in row band",
                                      "attr_share_range_occlusion": "share in sourced range",
                                      "plausibility": "row-band verdict", "plausibility_attr": "evidence verdict"}).round(2),
                 hide_index=True, width="stretch")
