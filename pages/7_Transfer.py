"""Transfer: does an adversarial clip made on one model fool the others? With a random-noise control."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import CoreError
from core.io.audio import window_starts
from core.models.registry import DEFAULT_MODEL, list_checkpoints
from core.studies.transfer import TransferSettings, dataset_segments, transfer_segment, transfer_summary, transfer_table
from ui.common import audio_player, dataset_status_message, get_dataset, get_model, licence_notice
from ui.jobs import BACKGROUND, Plan, duration_text, estimate_seconds, job_panel, running_job, start_job
from ui.plots import CHART_CONFIG

#: The default table: 2 recordings x 3 s x PGD-5, sized to finish in about 15 s on an idle 2-core CPU with the two
#: default models; the full table (TransferSettings' defaults) is one click away.
DEFAULT = {"tr_segments": 2, "tr_seconds": 3.0, "tr_steps": 5}
FULL = {"tr_segments": TransferSettings.max_segments, "tr_seconds": TransferSettings.segment_seconds, "tr_steps": TransferSettings.steps}
#: First guess [seconds per unit: one window of the source model x (PGD steps + 2)] until this machine has measured its own.
FIRST_GUESS_S = {"birdnet": 0.5, "other": 0.3}


def pair_units(model, seconds: float, steps: int) -> int:
    """Units of one (source model, recording) pair: the source's windows in the segment x (PGD steps + 2).

    The 2 stand for scoring the clean, attacked and control segments with every model,
    which costs about as much as two attack steps.
    """
    sr, win = model.config.frontend.sample_rate, model.config.window_samples
    return len(window_starts(int(round(seconds * sr)), win)) * (int(steps) + 2)


def transfer_estimate(loaded: dict, n_seg: int, seconds: float, steps: int) -> tuple[float, bool]:
    """Seconds a table will take here: per source model, its units times its cost per unit."""
    parts = {f"transfer:{m}": n_seg * pair_units(model, seconds, steps) for m, model in loaded.items()}
    guess = {f"transfer:{m}": FIRST_GUESS_S["birdnet" if m.startswith("birdnet") else "other"] for m in loaded}
    return estimate_seconds(parts, guess)


def transfer_work(job, loaded, ds, settings, models):
    """The transfer table (in a background job): progress per (source, recording) pair with the time left."""
    n_seg = len(dataset_segments(ds, settings, list(loaded[models[0]].config.class_names)))
    per = {m: pair_units(loaded[m], settings.segment_seconds, settings.steps) for m in models}
    plan = Plan(job, [(f"transfer:{m}", n_seg * per[m], FIRST_GUESS_S["birdnet" if m.startswith("birdnet") else "other"])
                      for m in models])
    pairs = n_seg * len(models)
    plan.update(f"transfer:{models[0]}", 0, f"recordings attacked (on {models[0]})", shown=(0, pairs))

    def progress(done, total):
        i = (done - 1) // n_seg
        m, k = models[i], done - i * n_seg
        plan.update(f"transfer:{m}", k * per[m], f"recordings attacked (on {m})", shown=(done, pairs))
        if k == n_seg and i + 1 < len(models):
            plan.update(f"transfer:{models[i + 1]}", 0, f"recordings attacked (on {models[i + 1]})", shown=(done, pairs))

    table = transfer_table(loaded, ds, settings, progress=progress)
    return {"settings": settings, "models": list(models), "table": table}


def use_full() -> None:
    st.session_state.update({**FULL, "tr_full_pending": True})


st.set_page_config(page_title="Transfer · birdshield", page_icon="🐦", layout="wide")
st.title("Transfer: does an attack made on one model fool another?")
st.caption("Each recording's first seconds are attacked white-box on a *source* model (PGD on its own windows, at its own "
           "sample rate), then every model (*target*) scores the attacked segment. A random ±eps sign pattern of the same "
           "budget is the control: an effect the noise produces too is no attack. Models with other rates get the clean, "
           "attacked and control segments resampled the same way, and compare their top-1 species (over the segment) "
           "with their own top-1 on the resampled clean segment; no score threshold is involved.")

ds = get_dataset()
if ds is None:
    st.warning(dataset_status_message())
    st.stop()
available = list_checkpoints()
# the dashboard's default model (AudioProtoPNet on BirdNET's backbone, 48 kHz) and the small ConvNeXt (32 kHz): two
# architectures and front ends, and a default run of seconds (BirdNET itself costs about 3x as much per window)
default = [m for m in (DEFAULT_MODEL, "baseline") if m in available] or available[:2]
models = st.multiselect("Models (sources and targets)", available, default=st.session_state.get("tr_models_value", default), key="tr_models")
st.session_state["tr_models_value"] = models
if not models:
    st.info("Choose at least one model.")
    st.stop()
for k, v in DEFAULT.items():
    st.session_state.setdefault(k, v)
c1, c2, c3, c4, c5 = st.columns(5)
eps = c1.number_input("eps (L-inf, full-scale amplitude)", min_value=1e-6, max_value=1.0, value=1e-3, step=1e-4, format="%.5f", key="tr_eps")
steps = int(c2.number_input("PGD steps", min_value=1, max_value=100, key="tr_steps"))
n_seg = int(c3.number_input("recordings", min_value=1, max_value=47, key="tr_segments"))
seconds = float(c4.number_input("segment length (s)", min_value=3.0, max_value=60.0, step=1.0, key="tr_seconds"))
seed = int(c5.number_input("seed", min_value=0, max_value=2**31 - 1, value=0, key="tr_seed"))
objective = st.radio("Source attack maximises", ["output-margin", "output-untargeted"], horizontal=True, key="tr_objective",
                     format_func={"output-margin": "margin: top species below the runner-up",
                                  "output-untargeted": "BCE against the labels"}.get)
try:
    settings = TransferSettings(max_segments=n_seg, segment_seconds=seconds, eps=float(eps), steps=steps, objective=objective, seed=seed)
    loaded = {m: get_model(m) for m in models}
except CoreError as exc:
    st.error(f"Cannot run: {exc}")
    st.stop()
for m in loaded.values():
    licence_notice(m)

busy = running_job("transfer") is not None
r1, r2 = st.columns(2)
here, measured = transfer_estimate(loaded, n_seg, seconds, steps)
run = r1.button("Run transfer table", type="primary", key="tr_run", disabled=busy)
r1.caption(f"{n_seg} recording(s) x {seconds:g} s x PGD-{steps}, attacked on each of {len(models)} model(s): {duration_text(here)}"
           + ("" if measured else " (a first guess until a run here has measured this machine)") + ".")
full_s, _ = transfer_estimate(loaded, FULL["tr_segments"], FULL["tr_seconds"], FULL["tr_steps"])
r2.button(f"Full table: {FULL['tr_segments']} recordings x {FULL['tr_seconds']:g} s x PGD-{FULL['tr_steps']}, "
          f"{duration_text(full_s)}", key="tr_full", disabled=busy, on_click=use_full,
          help="The settings of the CLI's transfer table; the time is estimated from what a run cost on this machine so far.")
st.caption(BACKGROUND)
if run or st.session_state.pop("tr_full_pending", False):
    start_job("transfer", "Transfer table", "Transfer",
              lambda job, a=(loaded, ds, settings, tuple(models)): transfer_work(job, *a))
job_panel("transfer", lambda r: st.session_state.__setitem__("tr_result", r))

result = st.session_state.get("tr_result")
if result:
    if result["settings"] != settings or result["models"] != list(models):
        st.warning("Showing the result for earlier settings or models; run again to update.")
    summary = transfer_summary(result["table"])
    names = result["models"]

    def matrix(col):
        m = summary.pivot(index="source", columns="target", values=col).reindex(index=names, columns=names)
        return m.to_numpy()

    h1, h2 = st.columns(2)
    for holder, col, title in ((h1, "attack_flip_rate", "attack: top-1 changed"), (h2, "noise_flip_rate", "control (random ±eps): top-1 changed")):
        z = matrix(col)
        fig = go.Figure(go.Heatmap(z=z, x=names, y=names, zmin=0, zmax=1, colorscale="Reds", text=np.round(z, 2), texttemplate="%{text}",
                                   colorbar=dict(title="share")))
        fig.update_layout(title=title, xaxis_title="scored by (target)", yaxis_title="made on (source)", height=360, margin=dict(t=50, b=40))
        fig.update_yaxes(autorange="reversed")  # the white-box diagonal runs from top left to bottom right
        holder.plotly_chart(fig, config=CHART_CONFIG, key=f"tr_heat_{col}")
    snr = summary.groupby("source")["median_snr_db"].first()
    st.caption(f"{int(summary['segments'].iloc[0])} recordings, eps {result['settings'].eps:g}; median SNR of the perturbation per "
               "source: " + ", ".join(f"{k} {v:.1f} dB" for k, v in snr.items()) + ". The diagonal is the white-box attack.")
    show = summary.rename(columns={"attack_flip_rate": "attack: top-1 changed", "noise_flip_rate": "control: top-1 changed",
                                   "clean_top1_acc": "top-1 correct (clean)", "attack_top1_acc": "top-1 correct (attack)",
                                   "noise_top1_acc": "top-1 correct (control)", "median_snr_db": "median SNR (dB)"})
    st.dataframe(show.round(3), hide_index=True, width="stretch")
    st.download_button("Per-segment table (CSV)", result["table"].to_csv(index=False).encode(), "transfer.csv", "text/csv", key="tr_download")

st.header("One recording: listen and compare")
try:
    segs = dataset_segments(ds, settings, list(loaded[models[0]].config.class_names))
except CoreError as exc:
    st.error(str(exc))
    st.stop()
d1, d2 = st.columns(2)
source = d1.selectbox("Made on", models, key="tr_one_source")
pick = d2.selectbox("Recording", range(len(segs)), key="tr_one_rec",
                    format_func=lambda i: f"{segs[i]['recording'].recording_id} ({ds.display_name(segs[i]['species'])})")
if st.button("Attack this recording and score it with every model", key="tr_one_run"):
    with st.spinner("Attacking…"):
        try:
            st.session_state["tr_one"] = {"key": (source, pick, settings), "out": transfer_segment(loaded, source, ds, segs[pick], settings, index=pick)}
        except CoreError as exc:
            st.error(str(exc))
one = st.session_state.get("tr_one")
if one and one["key"] == (source, pick, settings):
    out = one["out"]
    a1, a2, a3 = st.columns(3)
    with a1:
        audio_player(out["clean"], out["sample_rate"], label="clean")
    with a2:
        audio_player(out["attack"], out["sample_rate"], label=f"attacked on {source}")
    with a3:
        audio_player(out["noise"], out["sample_rate"], label="control: random ±eps")
    rows = pd.DataFrame(out["rows"])
    st.dataframe(pd.DataFrame({"scored by": rows["target"], "clean top-1": rows["clean_top1"].map(ds.display_name),
                               "attacked top-1": rows["attack_top1"].map(ds.display_name),
                               "control top-1": rows["noise_top1"].map(ds.display_name),
                               "SNR (dB)": rows["snr_db_attack"].round(1)}), hide_index=True, width="stretch")
