"""Guided demonstration: a Sedge Warbler, what the model looks at, a quiet change, and what the model says then.

The story and its expected ending come from :mod:`core.studies.demo`; the page starts at the change size stored in
``assets/home/demo.json`` (the one the home page and the README state) and computes every step live.
"""

from __future__ import annotations

import streamlit as st

from core.errors import CoreError
from core.models.registry import DEFAULT_MODEL, has_prototypes, list_checkpoints
from core.studies.demo import (
    SNR_CHOICES_DB,
    SOURCE_SPECIES,
    STEPS,
    TARGET_SPECIES,
    DemoClip,
    demo_attack,
    demo_window,
    find_demo_clip,
    measure_demo_attack,
    read_demo_record,
    strongest_prototype,
)
from ui.common import analyze, audio_player, digest, get_dataset, get_model, licence_notice, load_recording, model_fingerprint_cached, model_label
from ui.glossary import help_text
from ui.links import glossary_link
from ui.plots import CHART_CONFIG, logmel_db, score_bars, similarity_overlay, spectrogram_figure

st.set_page_config(page_title="Guided demo · birdshield", page_icon="🐦", layout="wide")
st.title("Guided demonstration: how a quiet change fools a bird classifier")
st.caption("Five steps for an audience, one click each. Everything is computed live, on a recording the model never "
           "trained on.")

ds = get_dataset()
if ds is None:
    st.error("The demonstration needs the xc9 dataset (see the home page).")
    st.stop()
names_available = list_checkpoints()
options = [m for m in dict.fromkeys((DEFAULT_MODEL, "birdnet_protopnet", "birdnet", "protopnet")) if m in names_available]
if not options:
    st.error("No model for the demonstration is installed.")
    st.stop()
name = st.selectbox("Model", options, format_func=model_label, key="demo_model",
                    help="The interpretable model (AudioProtoPNet's sound patterns on BirdNET's network), BirdNET itself "
                         "(what ecologists use; it gives no reasons), or the small AudioProtoPNet trained here.")
try:
    model = get_model(name)
    record = read_demo_record()
except CoreError as exc:
    st.error(str(exc))
    st.stop()
licence_notice(model)
cfg = model.config
sr = cfg.frontend.sample_rate
classes = list(cfg.class_names)
display = ds.display_name
recorded = record.model == name and record.fingerprint == model_fingerprint_cached(name)
snr_options = sorted(SNR_CHOICES_DB)
snr_target = st.select_slider(
    "How quiet the change is (dB below the song)", options=snr_options,
    value=record.default_snr_db if record.default_snr_db in snr_options else snr_options[-1], key="demo_snr",
    help=help_text("SNR") + f" The demo starts at {record.default_snr_db:g} dB, the quietest change of these that made "
                            f"{record.model} name a Marsh Warbler when it was measured.")


@st.cache_data(show_spinner="Finding a clear Sedge Warbler in the test recordings…", max_entries=8)
def pick_clip(model_name: str, fingerprint: str) -> DemoClip | None:
    """The test window where the model is surest it hears a Sedge Warbler (the recorded one when the weights match)."""
    m = get_model(model_name)
    if record.model == model_name and record.fingerprint == fingerprint:
        rec = next((r for r in ds.split("test") if r.recording_id == record.recording_id and r.path.is_file()), None)
        if rec is not None:
            return DemoClip(rec.recording_id, str(rec.path), rec.duration_s, round(record.start_s * sr), float("nan"))
    return find_demo_clip(m, ds.split("test"), load=load_recording)


try:
    pick = pick_clip(name, model_fingerprint_cached(name))
except CoreError as exc:
    st.error(str(exc))
    st.stop()
if pick is None:
    st.warning(f"{name} does not name a Sedge Warbler first in any test window; the demonstration needs one.")
    st.stop()
clip = demo_window(load_recording(pick.path, sr, pick.duration_s), pick.start, cfg.window_samples)
offset_s = pick.start / sr
step = st.session_state.setdefault("demo_step", 1)
src_i, tgt_i = classes.index(SOURCE_SPECIES), classes.index(TARGET_SPECIES)
clean = analyze(name, digest(clip), clip)
scores = clean.scores[0]


def next_button(label: str, to: int) -> None:
    if st.session_state["demo_step"] < to and st.button(label, type="primary", key=f"demo_next_{to}"):
        st.session_state["demo_step"] = to
        st.rerun()


st.header("1. This is a Sedge Warbler")
st.markdown(f"A recording from xeno-canto (**{pick.recording_id}**, {offset_s:.0f}–{offset_s + cfg.clip_seconds:.0f} s), "
            f"labelled Sedge Warbler by its recordist. The model agrees: **{display(classes[int(scores.argmax())])}**, "
            f"{glossary_link('score')} {scores.max():.2f} (0 to 1).")
audio_player(clip, sr, label="listen: the song as recorded")
st.plotly_chart(spectrogram_figure(logmel_db(clip, cfg.frontend), cfg.frontend, title="what the sound looks like (time x pitch)",
                                   offset_s=offset_s, height=300), config=CHART_CONFIG, key="demo_spec")
next_button("Next: what does the model look at?", 2)

if step >= 2:
    st.header("2. Here is what the model looks at")
    if has_prototypes(cfg):
        j = strongest_prototype(model, clean.prototype_activations[0], src_i)
        st.markdown(f"The model keeps {cfg.prototypes_per_class} sound patterns per species, each cut from a training "
                    f"recording (its {glossary_link('prototype', 'prototypes')}). For this window the Sedge Warbler pattern "
                    f"below matched best (similarity {clean.prototype_activations[0, j]:.2f} of 1): the red area is where "
                    "the model found it.")
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
    next_button("Next: add a quiet change", 3)

if step >= 3:
    st.header(f"3. Add a change {snr_target} dB below the song")
    key = (name, pick.recording_id, pick.start, snr_target)
    if st.session_state.get("demo_attack", {}).get("key") != key:
        with st.spinner(f"Computing the change ({STEPS} small steps, each asking the model which way to push)…"):
            try:
                adv, eps = demo_attack(model, clip, snr_target)
                measured = measure_demo_attack(model, clip, adv, snr_target, eps)
            except CoreError as exc:
                st.error(str(exc))
                st.stop()
        st.session_state["demo_attack"] = {"key": key, "adv": adv, "measured": measured}
    adv, measured = st.session_state["demo_attack"]["adv"], st.session_state["demo_attack"]["measured"]
    st.markdown(f"An attacker changes every sample of the recording by at most **{measured.eps:.6f}** of the loudest "
                f"value a file can hold (its {glossary_link('eps')}): a change at least {snr_target} dB quieter than "
                f"the song ({glossary_link('SNR')}). The change is not random noise: it is computed from the model "
                f"itself to push it towards **Marsh Warbler** ({STEPS} steps of {glossary_link('PGD')}).")
    m1, m2 = st.columns(2)
    m1.metric("Measured SNR of the change", f"{measured.measured_snr_db:.1f} dB")
    m2.metric("Cells where the song does not hide it", f"{100 * measured.share_above_masking:.1f} %",
              help=help_text("masking threshold") + " The share of time-pitch cells where the change is louder than that.")
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
    st.caption("Listen to the first two with headphones: can you tell them apart? Nobody has run a listening test "
               "for this page; the share of cells above the masking threshold (step 3) is a model of hearing, not a person.")
    next_button("Next: what does the model say now?", 5)

if step >= 5:
    adv, measured = st.session_state["demo_attack"]["adv"], st.session_state["demo_attack"]["measured"]
    after = analyze(name, digest(adv), adv).scores[0]
    st.header(f"5. The model now says {display(measured.top)}")
    if measured.flipped:
        st.success(f"Before: {display(SOURCE_SPECIES)} (score {scores[src_i]:.2f}). After a change {snr_target} dB below "
                   f"the song: **{display(TARGET_SPECIES)}** (score {measured.target_score:.2f}; Sedge Warbler "
                   f"{measured.source_score:.2f}).")
    else:
        st.warning(f"At {snr_target} dB the model resisted: it still says {display(measured.top)}. Try a louder change "
                   "(a lower number above): how much it takes is itself the measure of robustness.")
    if recorded and snr_target == record.default_snr_db:
        said = f"{display(record.outcome.top)} at {record.outcome.top_score:.2f}"
        if measured.top == record.outcome.top:
            st.caption(f"As recorded for the home page and the README ({record.model}, weights `{record.fingerprint}`): {said}.")
        else:
            st.warning(f"When this demo was recorded with the same weights, the model said {said}; this run differs. "
                       "Please report it: the home page and the README promise the recorded ending.")
    st.plotly_chart(score_bars(classes, scores, compare=after, labels=("original", "with the change"),
                               title="scores before and after"), config=CHART_CONFIG, key="demo_scores")
    st.markdown("**What it means.** A classifier can be steered by sound changes far below the song. Models trained "
                "to resist such changes and how much change each model withstands are on the Compare models page; the "
                "Sweep page shows how the effect grows with the size of the change.")
    if st.button("Start again", key="demo_restart"):
        st.session_state["demo_step"] = 1
        st.rerun()
