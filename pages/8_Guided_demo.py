"""Guided demonstration: a Sedge Warbler, what the model looks at, a whisper of noise, and the model says Marsh Warbler."""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.errors import CoreError
from core.field.inference import analyze_waveform, attack_waveform, confident_window
from core.metrics import eps_for_snr, snr_db
from core.models.registry import has_prototypes, list_checkpoints
from ui.common import audio_player, get_dataset, get_model, licence_notice, load_recording, model_label
from ui.glossary import help_text
from ui.plots import CHART_CONFIG, logmel_db, score_bars, similarity_overlay, spectrogram_figure

st.set_page_config(page_title="Guided demo · birdshield", page_icon="🐦", layout="wide")
st.title("Guided demonstration: how a whisper fools a bird classifier")
st.caption("Five steps for an audience, one click each. Everything is computed live on a held-out recording the "
           "model never trained on.")

SOURCE, TARGET = "acrsch", "acrpal"  # Sedge Warbler -> Marsh Warbler: two reed warblers people do confuse
ds = get_dataset()
if ds is None:
    st.error("The demonstration needs the xc9 dataset (see the home page).")
    st.stop()
names_available = list_checkpoints()
options = [m for m in ("birdnet_protopnet", "birdnet", "protopnet") if m in names_available]
if not options:
    st.error("No model for the demonstration is installed.")
    st.stop()
name = st.selectbox("Model", options, format_func=model_label, key="demo_model",
                    help="The interpretable model (AudioProtoPNet's prototypes on BirdNET's backbone), BirdNET itself "
                         "(what ecologists use; it gives no reasons), or the small AudioProtoPNet trained here.")
model = get_model(name)
licence_notice(model)
cfg = model.config
sr = cfg.frontend.sample_rate
classes = list(cfg.class_names)
snr_target = st.select_slider("How quiet the added noise is (dB below the song)", options=[30, 35, 40, 45, 50], value=45,
                              key="demo_snr", help=help_text("SNR"))


@st.cache_data(show_spinner="Finding a clear Sedge Warbler in the test recordings…", max_entries=8)
def pick_clip(model_name: str) -> dict | None:
    """The test window where the model is surest it hears a Sedge Warbler."""
    m = get_model(model_name)
    best = None
    for rec in ds.split("test"):
        if rec.labels[0] != SOURCE or not rec.path.is_file():
            continue
        wave = load_recording(str(rec.path), sr, rec.duration_s)
        found = confident_window(m, wave, classes.index(SOURCE))
        if found and (best is None or found[1] > best["margin"]):
            best = {"recording_id": rec.recording_id, "start": found[0], "margin": found[1], "path": str(rec.path),
                    "duration_s": rec.duration_s}
    return best


try:
    pick = pick_clip(name)
except CoreError as exc:
    st.error(str(exc))
    st.stop()
if pick is None:
    st.warning(f"{name} does not name a Sedge Warbler top-1 in any test window; the demonstration needs one.")
    st.stop()
full = load_recording(pick["path"], sr, pick["duration_s"])
clip = full[pick["start"] : pick["start"] + cfg.window_samples]
clip = np.pad(clip, (0, cfg.window_samples - len(clip)))
offset_s = pick["start"] / sr
step = st.session_state.setdefault("demo_step", 1)
display = ds.display_name
src_i, tgt_i = classes.index(SOURCE), classes.index(TARGET)
clean = analyze_waveform(model, clip)
scores = clean.scores[0]


def next_button(label: str, to: int) -> None:
    if st.session_state["demo_step"] < to and st.button(label, type="primary", key=f"demo_next_{to}"):
        st.session_state["demo_step"] = to
        st.rerun()


st.header("1. This is a Sedge Warbler")
st.markdown(f"A recording from xeno-canto (**{pick['recording_id']}**, {offset_s:.0f}–{offset_s + cfg.clip_seconds:.0f} s), "
            f"labelled Sedge Warbler by its recordist. The model agrees: **{display(classes[int(scores.argmax())])}**, "
            f"score {scores.max():.2f}.")
audio_player(clip, sr, label="listen: the song as recorded")
st.plotly_chart(spectrogram_figure(logmel_db(clip, cfg.frontend), cfg.frontend, title="what the sound looks like (time x pitch)",
                                   offset_s=offset_s, height=300), config=CHART_CONFIG, key="demo_spec")
next_button("Next: what does the model look at?", 2)

if step >= 2:
    st.header("2. Here is what the model looks at")
    if has_prototypes(cfg):
        k = cfg.prototypes_per_class
        acts = clean.prototype_activations[0]
        weights = model.class_connection().detach().cpu().numpy()
        protos = np.arange(src_i * k, (src_i + 1) * k)
        j = int(protos[np.argmax(acts[protos] * weights[src_i, protos])])
        st.markdown("The model keeps ten sound patterns per species, each cut from a training recording "
                    f"(its *prototypes*: {help_text('prototype').rstrip('.').lower()}). For this window the Sedge Warbler pattern "
                    f"below matched best (similarity {acts[j]:.2f} of 1): the bright area is where the model found it.")
        st.plotly_chart(similarity_overlay(logmel_db(clip, cfg.frontend), clean.similarity_maps[0, j], cfg.frontend,
                                           title=f"where Sedge Warbler pattern {j} matches", offset_s=offset_s, height=300),
                        config=CHART_CONFIG, key="demo_overlay")
        src = {p["prototype"]: p for p in model.card.get("prototypes", [])}.get(j)
        if src:
            st.caption(f"The pattern was taken from recording {src['recording_id']} at {src['t_start_s']:.1f} s, "
                       f"{src['f_low_hz']:.0f}–{src['f_high_hz']:.0f} Hz. The Clip page shows it and all the others.")
    else:
        st.markdown("This model is a **black box**: it gives a score per species but no reason. (Choose the "
                    "interpretable model above to see what it looks at.)")
    next_button("Next: add a whisper of noise", 3)

if step >= 3:
    eps = float(eps_for_snr(clip, float(snr_target)))
    st.header(f"3. Add noise {snr_target} dB below the song")
    st.markdown(f"An attacker changes every sample of the recording by at most **{eps:.6f}** of full scale "
                f"(a change {snr_target} dB quieter than the song; {help_text('eps').rstrip('.').lower()}). The change is not random: "
                f"it is computed from the model itself to push it towards **Marsh Warbler** (20 steps of projected "
                "gradient ascent on the Marsh Warbler margin).")
    key = (name, pick["recording_id"], pick["start"], snr_target)
    if st.session_state.get("demo_attack", {}).get("key") != key:
        with st.spinner("Computing the perturbation…"):
            try:
                adv = attack_waveform(model, clip, eps=eps, steps=20, seed=0, objective="output-targeted-margin", target_class=tgt_i)
            except CoreError as exc:
                st.error(str(exc))
                st.stop()
        st.session_state["demo_attack"] = {"key": key, "adv": adv}
    adv = st.session_state["demo_attack"]["adv"]
    st.metric("Measured SNR of the change", f"{float(snr_db(clip, adv)):.1f} dB")
    next_button("Next: hear it", 4)

if step >= 4:
    adv = st.session_state["demo_attack"]["adv"]
    st.header("4. Hear it")
    a1, a2, a3 = st.columns(3)
    with a1:
        audio_player(clip, sr, label="original")
    with a2:
        audio_player(adv, sr, label="with the attacker's change (same volume)")
    with a3:
        audio_player(adv - clip, sr, gain=100, label="the change alone, 100 times louder (+40 dB)")
    st.caption("Most listeners hear no difference between the first two.")
    next_button("Next: what does the model say now?", 5)

if step >= 5:
    adv = st.session_state["demo_attack"]["adv"]
    after = analyze_waveform(model, adv).scores[0]
    now = classes[int(after.argmax())]
    st.header(f"5. The model now says {display(now)}")
    if now == TARGET:
        st.success(f"Before: {display(SOURCE)} (score {scores[src_i]:.2f}). After a change {snr_target} dB below the song: "
                   f"**{display(TARGET)}** (score {after[tgt_i]:.2f}; Sedge Warbler {after[src_i]:.2f}).")
    else:
        st.warning(f"At {snr_target} dB the model resisted: it still says {display(now)}. Try a louder change "
                   "(a lower number above) — how much it takes is itself the measure of robustness.")
    st.plotly_chart(score_bars(classes, scores, compare=after, labels=("original", "with the change"),
                               title="scores before and after"), config=CHART_CONFIG, key="demo_scores")
    st.markdown("**What it means.** A classifier can be steered by sound changes far below what people notice. "
                "Adversarially trained models and the worst-case robustness figures are on the Compare page; the "
                "Sweep page shows how the effect grows with the size of the change.")
    if st.button("Start again", key="demo_restart"):
        st.session_state["demo_step"] = 1
        st.rerun()
