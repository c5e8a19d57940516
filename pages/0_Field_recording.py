"""Field recording page: a whole file of any length, streamed; a species x time timeline; tables to take away."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from core.errors import CoreError
from core.field.analyze import NO_BIRD, SILENCE_DBFS, analyze_file, model_band_hz, read_segment, species_names
from core.field.nobird import no_bird_note
from core.field.tables import detections, to_birdnet_csv, to_raven_table, window_outcomes
from core.models.registry import list_checkpoints
from ui.certify import certify_panel
from ui.common import audio_player, default_model, get_dataset, get_model, model_label
from ui.glossary import help_text
from ui.jobs import BACKGROUND, job_panel, running_job, start_job
from ui.locale import species_locale
from ui.plots import CHART_CONFIG

st.set_page_config(page_title="Field recording · birdshield", page_icon="🐦", layout="wide")
st.title("Field recording: the whole file, window by window")
st.caption("Load a recording of any length (an AudioMoth night, hours long). It is read in pieces, never whole, and "
           "each model scores every window of it (5 s for the small models, 3 s for BirdNET and its heads). "
           "A species counts as detected in a window when its score reaches the model's decision threshold, which was "
           "chosen on held-out validation recordings; a window with none is **no bird detected**.")

UPLOAD_DIR = Path(tempfile.gettempdir()) / "birdshield_uploads"
locale = species_locale()


def _source() -> tuple[str, str] | None:
    """(path on disk, display name) of the recording to analyse."""
    ds = get_dataset()
    options = (["Dataset recording"] if ds else []) + ["Upload", "File on this computer"]
    kind = st.radio("Recording", options, horizontal=True, key="field_source",
                    help="Uploads are limited to 50 MB by the browser connection; for longer files give the path of a file "
                         "on the computer that runs the dashboard.")
    if kind == "Dataset recording":
        recs = ds.available()
        ids = [r.recording_id for r in recs]
        rec_id = st.selectbox("Dataset recording", ids, key="field_recording",
                              format_func=lambda i: f"{i} · {', '.join(ds.display_name(x) for x in next(r for r in recs if r.recording_id == i).labels)}")
        rec = next(r for r in recs if r.recording_id == rec_id)
        return str(rec.path), rec_id
    if kind == "Upload":
        up = st.file_uploader("Audio file (WAV, FLAC, MP3, OGG)", type=["wav", "flac", "mp3", "ogg"], key="field_upload")
        if up is None:
            prev = st.session_state.get("field_file")
            if prev and prev.get("kind") == "Upload" and Path(prev["path"]).is_file():
                st.caption(f"Using the earlier upload: {prev['name']}")
                return prev["path"], prev["name"]
            return None
        data = up.getvalue()
        UPLOAD_DIR.mkdir(parents=True, exist_ok=True)
        path = UPLOAD_DIR / (hashlib.sha1(data).hexdigest()[:16] + Path(up.name).suffix.lower())
        if not path.is_file():
            path.write_bytes(data)
        return str(path), Path(up.name).name
    typed = st.text_input("Path of an audio file on this computer", key="field_path",
                          placeholder="/data/audiomoth/20260512_040000.WAV")
    if not typed:
        return None
    p = Path(os.path.expanduser(typed.strip()))
    if not p.is_file():
        st.error(f"No such file: {p}")
        return None
    return str(p), p.name


source = _source()
names = list_checkpoints()
if not names:
    st.error("No checkpoints found in checkpoints/.")
    st.stop()
default = st.session_state.get("model_name", default_model(names))
chosen = st.multiselect("Models", names, default=[default] if default in names else names[:1], format_func=model_label,
                        key="field_models", help="Each model scores the whole file; compare their timelines.")
if source is None or not chosen:
    st.info("Choose a recording and at least one model.")
    st.stop()
path, display_name = source
st.session_state["field_file"] = {"path": path, "name": display_name, "kind": st.session_state.get("field_source")}

results = st.session_state.setdefault("field_results", {})
todo = [m for m in chosen if (path, m) not in results]
if todo:
    st.caption(BACKGROUND)
if todo and st.button(f"Analyse {display_name} with {', '.join(todo)}", type="primary", key="field_run",
                      disabled=running_job("field") is not None):
    try:
        todo_models = {m: get_model(m) for m in todo}
    except CoreError as exc:
        st.error(str(exc))
        todo_models = {}

    def work(job, todo_models=todo_models, path=path):
        done, errors = {}, {}
        for i, (m, model) in enumerate(todo_models.items()):
            def progress(sec, total, i=i, m=m):
                job.progress((i + (sec / total if total else 0.0)) / len(todo_models), f"{m}: {sec / 60:.1f} of {total / 60:.1f} min")

            try:
                done[(path, m)] = analyze_file(model, path, model_name=m, progress=progress)
            except CoreError as exc:
                errors[m] = str(exc)
        return done, errors

    if todo_models:
        start_job("field", "Analysis", "Field recording", work)


def field_done(out) -> None:
    done, errors = out
    st.session_state.setdefault("field_results", {}).update(done)
    for m, msg in errors.items():
        st.error(f"{m}: {msg}")


if job_panel("field", field_done):
    st.stop()
results = st.session_state["field_results"]
ready = [m for m in chosen if (path, m) in results]
if not ready:
    st.info("Press **Analyse** to score every window. An hour of audio takes about 2 min per small model on this "
            "2-core CPU (see docs/results.md, *Field recordings and sounds without birds*).")
    st.stop()

tabs = st.tabs([f"{m}" for m in ready])
for tab, m in zip(tabs, ready):
    res = results[(path, m)]
    model = get_model(m)
    sp = species_names(res.class_names, model)
    with tab:
        if res.threshold is None:
            st.warning(f"{m} has no validation threshold; set one below.")
        t = st.slider("Detection threshold (score)", 0.01, 0.99, float(res.threshold if res.threshold is not None else 0.5), 0.01,
                      key=f"field_threshold_{m}",
                      help=help_text("detection threshold") + f" Default: {res.threshold_source or 'none stored'}.")
        outcomes = window_outcomes(res, threshold=t, names=sp, locale=locale)
        dets = detections(res, threshold=t, names=sp, locale=locale)
        n = len(outcomes)
        none = int((outcomes["outcome"] == NO_BIRD).sum())
        silent = int(outcomes["outcome"].str.startswith("silence").sum())
        c1, c2, c3, c4 = st.columns(4)
        c1.metric("Length", f"{res.duration_s / 60:.1f} min")
        c2.metric("Windows", f"{n} × {res.window_s:g} s")
        c3.metric("No bird detected", f"{none} windows")
        c4.metric("Silent (below " + f"{SILENCE_DBFS:g} dBFS)", f"{silent} windows")
        if res.unanalysed_s > 0:
            st.caption(f"The last {res.unanalysed_s:.1f} s are shorter than half a window and are not analysed.")
        if res.padded.any():
            st.caption("The last window is partly silence (zero padding): its scores are less reliable.")
        note = no_bird_note(m)
        if note:
            st.warning(note)

        order = [c for c in res.class_names]
        minutes = (res.starts_s + res.window_s / 2) / 60
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.45, 0.55], vertical_spacing=0.04)
        fig.add_trace(go.Heatmap(z=res.overview_db.T, x=minutes, y=res.overview_hz, colorscale="Greys", reversescale=True,
                                 showscale=False, hovertemplate="%{x:.2f} min<br>%{y:.0f} Hz<br>%{z:.0f} dB<extra></extra>"),
                      row=1, col=1)
        fig.add_trace(go.Heatmap(z=res.scores.T, x=minutes, y=[sp[c][1] for c in order], zmin=0, zmax=1, colorscale="Viridis",
                                 colorbar=dict(title="score", y=0.27, len=0.55), customdata=np.tile(np.arange(n), (len(order), 1)),
                                 hovertemplate="%{x:.2f} min<br>%{y}<br>score %{z:.2f}<extra></extra>"), row=2, col=1)
        w, j = np.nonzero(res.scores >= t)
        keep = ~outcomes["outcome"].str.startswith("silence").to_numpy()[w]
        fig.add_trace(go.Scatter(x=minutes[w[keep]], y=[sp[order[k]][1] for k in j[keep]], mode="markers",
                                 marker=dict(symbol="square-open", color="red", size=9), name="detected",
                                 customdata=w[keep, None], hovertemplate="%{x:.2f} min: %{y}<extra>detected</extra>"), row=2, col=1)
        fig.update_yaxes(title_text="frequency (Hz)", type="log", row=1, col=1)
        fig.update_yaxes(title_text="species", row=2, col=1)
        fig.update_xaxes(title_text="time (min)", row=2, col=1)
        fig.update_layout(height=520, margin=dict(l=10, r=10, t=30, b=10), showlegend=False,
                          title=f"{display_name}: sound (top) and species scores per window (bottom); red squares: detected")
        event = st.plotly_chart(fig, config=CHART_CONFIG, key=f"field_timeline_{m}", on_select="rerun", selection_mode="points")
        st.caption("Top: the whole file's spectrogram, one column per window (mean level per band). Bottom: each "
                   "species' score in each window. Click a cell to listen to that window.")

        picked = None
        for p in (event or {}).get("selection", {}).get("points", []) if event else []:
            cd = p.get("customdata")
            if cd is not None:
                picked = int(cd[0] if isinstance(cd, (list, tuple)) else cd)
        audible = ~outcomes["outcome"].str.startswith("silence").to_numpy()
        best = int(np.argmax(np.where(audible, res.scores.max(1), -1.0)))  # the surest window that is not silence
        idx = st.number_input("Window", 0, n - 1, value=picked if picked is not None else best,
                              key=f"field_window_{m}", help="Window number (0 = the first); the timeline sets it when you click.")
        row = outcomes.iloc[int(idx)]
        st.markdown(f"**Window {int(idx)}**, {row.start_s / 60:.2f} min ({row.start_s:.1f}–{row.end_s:.1f} s): "
                    f"**{row.outcome}**; highest score {row.top_species} {row.top_score:.2f}; level {row.level_dbfs:.0f} dBFS.")
        seg = None
        try:
            seg = read_segment(path, res.sample_rate, float(row.start_s), res.window_s)
            audio_player(seg, res.sample_rate)
        except CoreError as exc:
            st.error(str(exc))
        if st.button("Explain or attack this window on the Clip page", key=f"field_open_{m}"):
            st.session_state["field_window"] = {"path": path, "name": display_name, "offset_s": float(row.start_s)}
            st.session_state["shared_source"] = "Field recording"
            st.session_state["model_name"] = m
            st.switch_page("pages/1_Clip.py")
        if seg is not None:
            certify_panel(m, model, seg, offset_s=float(row.start_s), key=f"field_cert_{m}")

        st.subheader("Detections")
        if dets.empty:
            st.write("No species reaches the threshold in any window.")
        else:
            summary = dets.groupby("common_name").agg(windows=("confidence", "size"), best_score=("confidence", "max"),
                                                       first_min=("start_s", lambda s: s.min() / 60)).sort_values("windows", ascending=False)
            st.dataframe(summary.rename_axis("species").reset_index(), hide_index=True, width="stretch",
                         column_config={"first_min": st.column_config.NumberColumn("first heard (min)", format="%.2f"),
                                        "best_score": st.column_config.NumberColumn("best score", format="%.2f")})
            with st.expander(f"All {len(dets)} detections"):
                st.dataframe(dets.drop(columns=["file", "english_name"]).rename(columns={"common_name": "species", "species_code": "code"}),
                             hide_index=True, width="stretch")
        stem = Path(display_name).stem
        band = model_band_hz(model)
        d1, d2, d3 = st.columns(3)
        d1.download_button("Raven selection table", to_raven_table(dets, low_hz=band[0], high_hz=band[1]),
                           file_name=f"{stem}.{m}.selection.table.txt", mime="text/plain", key=f"field_raven_{m}")
        d2.download_button("BirdNET-Analyzer CSV", to_birdnet_csv(dets), file_name=f"{stem}.{m}.results.csv", mime="text/csv",
                           key=f"field_csv_{m}")
        d3.download_button("Every window (CSV)", outcomes.to_csv(index=False, float_format="%.4f"),
                           file_name=f"{stem}.{m}.windows.csv", mime="text/csv", key=f"field_windows_{m}")
        st.caption(f"Analysed in {res.info.get('seconds', float('nan')):.0f} s. Source: {res.info.get('source_sample_rate', '?')} Hz, "
                   f"{res.info.get('source_channels', '?')} channel(s), down-mixed and resampled to {res.sample_rate} Hz.")
