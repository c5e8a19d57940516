"""Published model page: the published AudioProtoPNet-P-BirdSet-XCL (9,736 species) explains a clip."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

from core.errors import CoreError
from core.models.published import PUBLISHED_MODELS, PublishedAudioProtoPNet
from core.models.published_io import explain_clip, load_published
from ui.common import audio_player, clip_picker
from ui.glossary import help_text
from ui.plots import CHART_CONFIG, similarity_overlay, spectrogram_figure

PUBLISHED_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "published"

st.set_page_config(page_title="Published model · birdshield", page_icon="🐦", layout="wide")
st.title("Published AudioProtoPNet: explain a clip")
st.markdown(
    "The published AudioProtoPNet models (Heinrich et al. 2025) know the **9,736 species** of BirdSet's xeno-canto "
    "training set. They are rebuilt here from their published description and read from their checkpoint files; no "
    "code from the model hub runs. They are not shipped (about 0.4 to 1.2 GB each, CC BY-NC 4.0): fetch one with "
    "network access, e.g. `python -m core fetch-model audioprotopnet-20-birdset-xcl`, and it appears below.")


@st.cache_resource(show_spinner="Loading the published model…")
def get_published(path: str):
    return load_published(path)


found = sorted(str(p) for p in PUBLISHED_DIR.glob("*") if (p / "model.safetensors").is_file()) if PUBLISHED_DIR.is_dir() else []
choice = st.selectbox("Checkpoint folder", found + ["another folder…"], key="pub_folder",
                      help="Folders with model.safetensors and config.json under checkpoints/published/.")
folder = st.text_input("Folder path", key="pub_path") if choice == "another folder…" else choice
if not folder:
    if not found:
        st.info("No published checkpoint found in checkpoints/published/. Available: "
                + ", ".join(f"`{n}`" for n in PUBLISHED_MODELS) + ". Fetch one with `python -m core fetch-model NAME`, "
                "or give the path of a folder that holds one.")
    st.stop()
try:
    model = get_published(str(folder))
except CoreError as exc:
    st.error(f"Cannot load {folder}: {exc}")
    st.stop()
if not isinstance(model, PublishedAudioProtoPNet):
    st.error(f"{folder} holds a {model.config.arch} model, a black box without prototypes: nothing to explain here.")
    st.stop()
cfg = model.config
fe = cfg.frontend
st.sidebar.caption(f"Published model from {cfg.source}: {cfg.licence}.")
st.caption(f"{len(cfg.class_names):,} classes, {cfg.prototypes_per_class} prototype(s) per class; input {fe.clip_seconds:g} s at "
           f"{fe.sample_rate} Hz, {fe.n_mels} mel bands (HTK scale, {fe.f_min:g}-{fe.f_max:g} Hz).")

clip = clip_picker("pub", fe.sample_rate, fe.clip_seconds)
if clip is None:
    st.stop()
n_top = st.slider("Classes to explain", 1, 5, 3, key="pub_n_classes", help=help_text("prototype"))
try:
    res = explain_clip(model, clip.waveform, top_k=n_top)
except CoreError as exc:
    st.error(str(exc))
    st.stop()

x = torch.as_tensor(clip.waveform[: fe.window_samples], dtype=torch.float32)
x = torch.nn.functional.pad(x, (0, max(0, fe.window_samples - len(x))))[None].to(next(model.parameters()).device)
with torch.no_grad():
    db = model.frontend.db(x)[0].cpu().numpy()
audio_player(clip.waveform, clip.sample_rate, label=f"{clip.name}, from {clip.offset_s:.0f} s")
st.plotly_chart(spectrogram_figure(db, fe, title="The model's input (dB, floored 80 dB below this clip's maximum)",
                                   offset_s=clip.offset_s), config=CHART_CONFIG, key="pub_spec")
for c in res:
    st.subheader(f"{c['class_name']}: score {c['score']:.2f}")
    cols = st.columns(min(3, len(c["prototypes"])))
    for col, p in zip(cols, c["prototypes"]):
        with col:
            fig = similarity_overlay(db, p["map"], fe, offset_s=clip.offset_s,
                                     title=f"prototype {p['prototype']}: sim {p['similarity']:.2f} x weight {p['weight']:.2f}")
            st.plotly_chart(fig, config=CHART_CONFIG, key=f"pub_sim_{p['prototype']}")
            st.caption(f"Fires most at {clip.offset_s + p['t_s']:.2f} s, around {p['f_hz']:.0f} Hz; contributes "
                       f"{p['contribution']:.2f} to the class logit.")
st.caption("Only the top classes' similarity maps are computed (for 20 prototypes x 9,736 classes the full set would be "
           "about 470 MB per clip). The published models' training data is xeno-canto, so clips from xeno-canto (such as "
           "this dashboard's dataset) may have been seen in training: their scores are optimistic.")
