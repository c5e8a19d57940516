"""Clip page: pick a clip, listen, see its spectrogram, predictions and prototypes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st
import torch

from core.errors import CoreError
from core.models.birdnet import top_species
from core.models.registry import uses_birdnet
from core.studies.audit import load_audit
from core.training.calibration import card_thresholds
from ui.attribution import attribution_panel
from ui.certify import certify_panel
from ui.common import (
    analyze,
    audio_player,
    clip_picker,
    dataset_status_message,
    get_dataset,
    load_segment,
    location_filter,
    require_model,
)
from ui.glossary import help_text
from ui.plots import CHART_CONFIG, add_box, birdnet_input_figure, logmel_db, score_bars, similarity_overlay, spectrogram_figure

st.set_page_config(page_title="Clip · birdshield", page_icon="🐦", layout="wide")
st.title("Clip: listen, predict, explain")

name, model = require_model("clip_model")
cfg = model.config
fe = cfg.frontend
if get_dataset() is None:
    st.info(dataset_status_message())

clip = clip_picker("clip", fe.sample_rate, cfg.clip_seconds)
if clip is None:
    st.stop()

names = list(cfg.class_names)
ds = get_dataset()
display = ds.display_name if ds else (lambda c: c)
res = analyze(name, clip.key, clip.waveform)
scores = res.scores[0]

left, right = st.columns([3, 2])
with left:
    audio_player(clip.waveform, clip.sample_rate, label=f"{clip.name}, {clip.offset_s:.0f}–{clip.offset_s + len(clip.waveform) / clip.sample_rate:.1f} s")
    db = logmel_db(res.windows[0], fe)
    st.plotly_chart(spectrogram_figure(db, fe, title="Log-mel spectrogram", offset_s=clip.offset_s), config=CHART_CONFIG, key="clip_spec")
with right:
    if clip.labels:
        st.markdown("**Labels:** " + ", ".join(display(x) for x in clip.labels))
    threshold = card_thresholds([name]).get(name)
    st.plotly_chart(score_bars(names, scores, title="Predicted scores", threshold=threshold), config=CHART_CONFIG, key="clip_scores")
    if threshold is not None:
        st.caption(f"A species counts as detected at a score of {threshold:.2f} or more (this model's threshold, chosen on "
                   "held-out validation recordings; the dashed line).")
    if model.card.get("train_config", {}).get("loss") == "asl":
        st.caption("Trained with the asymmetric loss (as AudioProtoPNet): scores run high and are not calibrated "
                   "probabilities; compare them across species rather than against 0.5.")
    top = np.argsort(-scores)[:3]
    st.dataframe(pd.DataFrame({"species": [display(names[i]) for i in top], "score": scores[top].round(3)}), hide_index=True, width="stretch")

if uses_birdnet(cfg):
    st.subheader("What BirdNET sees")
    st.caption("BirdNET's own input layer: the window scaled to [-1, 1], two mel spectrograms of the real part of the STFT "
               "(0-3 kHz with n_fft 2048; 0.5-15 kHz with n_fft 1024), compressed by learned powers. Gradients flow through it "
               "to the waveform, which is how BirdNET can be attacked white-box.")
    # drawn on request: two more spectrograms cost a first visit seconds of drawing in the browser (issue 25)
    if st.toggle("Show BirdNET's two input spectrograms", key="clip_bn_show"):
        with torch.no_grad():
            bn_spec = model.frontend(torch.as_tensor(res.windows[:1], device=next(model.parameters()).device))[0].cpu().numpy()
        b1, b2 = st.columns(2)
        for col, ch, name_ in ((b1, 0, "low band (0-3 kHz)"), (b2, 1, "high band (0.5-15 kHz)")):
            col.plotly_chart(birdnet_input_figure(bn_spec[ch], model.frontend.band_hz[ch], model.frontend.frame_steps[ch],
                                                  fe.sample_rate, title=name_), config=CHART_CONFIG, key=f"clip_bn_spec_{ch}")
if cfg.arch == "birdnet":
    with st.expander("BirdNET over all its 6,522 species (optionally only those expected at a place and week)"):
        st.caption("The scores above are restricted to the dataset's species. BirdNET itself knows 6,522; its occurrence "
                   "model (as BirdNET-Analyzer's species filter) keeps those expected at a latitude, longitude and week.")
        use_loc = st.checkbox("Filter by location and week", key="clip_bn_loc")
        allowed = None
        if use_loc:
            l1, l2, l3, l4 = st.columns(4)
            lat = l1.number_input("latitude (°)", -90.0, 90.0, 52.5, key="clip_bn_lat")
            lon = l2.number_input("longitude (°)", -180.0, 180.0, 13.4, key="clip_bn_lon")
            week = int(l3.number_input("week (1-48, 4 per month; -1 all year)", -1, 48, -1, key="clip_bn_week"))
            thr = l4.number_input("occurrence threshold", 0.0, 1.0, 0.03, step=0.01, key="clip_bn_thr")
            try:
                expected = location_filter().species(lat, lon, week if week != 0 else -1, threshold=thr)
                allowed = {sci for sci, _, _ in expected}
                st.caption(f"{len(allowed)} species expected there.")
            except CoreError as exc:
                st.error(str(exc))
        top = top_species(model, res.windows[0], k=10, allowed=allowed)
        st.dataframe(pd.DataFrame(top).rename(columns={"english_name": "species", "scientific_name": "scientific name"})
                     [["species", "scientific name", "score"]].round(3), hide_index=True, width="stretch")

# where in the input the evidence lies (occlusion, gradient x input); computed only when the user asks
attribution_panel(name, model, res.windows[0], scores=scores, offset_s=clip.offset_s, display=display)
# can a quiet sound change the (smoothed) answer? randomized smoothing, computed only when the user asks
certify_panel(name, model, res.windows[0], offset_s=clip.offset_s, key="clip_cert")

if res.similarity_maps is None:
    st.info(f"{name} is a black-box model (no prototypes). Choose an AudioProtoPNet model to see explanations.")
    st.stop()

st.header("This looks like that: prototypes")
k = cfg.prototypes_per_class
if uses_birdnet(cfg):
    where = (f"BirdNET's backbone, frozen up to {cfg.tuned_from} and fine-tuned from there to {cfg.layer}"
             if getattr(cfg, "tuned_from", None) else f"BirdNET's frozen backbone (layer {cfg.layer})")
    st.caption(f"These prototypes live on {where}. BirdNET stacks two spectrograms "
               "as channels (0-3 kHz and 0.5-15 kHz), so each row of its feature map sees two bands at once: the maps "
               "below are drawn on the 0.5-15 kHz scale, and each patch names both bands.")
if model.card.get("prototypes"):
    with st.expander("Where this model's prototypes sit (frequency band of each prototype's training patch)"):
        from core.models.protopnet import prototype_bands

        bands = prototype_bands(model.card["prototypes"], names)
        bands.index = [display(c) for c in bands.index]
        st.dataframe(bands, width="stretch")
        st.caption("Counted by the centre of the push patch's frequency band. A prototype far above or below a species' "
                   "song (e.g. a Mallard prototype at 8 kHz) explains the decision by something other than the bird.")
audit = load_audit(model.card)
if audit is not None:
    a = model.card["audit"]
    with st.expander("How trustworthy are these explanations? (audit on the held-out test split)"):
        st.markdown(
            f"- **Faithfulness (deletion):** for {a['share_beating_random']:.0%} of the prototypes, silencing the spectrogram "
            f"region under the prototype's peak lowers its class score more than silencing a random region of the same size, "
            f"in most windows (median ratio of the drops {a['median_drop_ratio']:.1f}x; a rough figure, as a random region "
            f"often changes the score by almost nothing).\n"
            f"- **Class specificity:** median max-similarity {a['median_act_own']:.2f} on windows of the prototype's own species "
            f"vs {a['median_act_other']:.2f} on the others.\n"
            f"- **Plausibility** against sourced song/call ranges (`assets/xc9/song_bands.csv`): "
            + ", ".join(f"{v} {k}" for k, v in a["plausibility"].items()) + " (most species have no published range we could trace).")
        shown = audit[["prototype", "class_name", "act_own", "act_other", "peak_t_s", "band_high_hz", "band_low_hz",
                       "drop_proto", "drop_random", "wins", "plausibility"]].copy()
        shown["class_name"] = [display(c) for c in shown["class_name"]]
        st.dataframe(shown.round(3), hide_index=True, width="stretch")
# one class by default: each class adds six charts (three similarity maps, three training patches) to draw
n_top = st.slider("Classes to explain", 1, 5, 1, key="clip_n_classes", help=help_text("prototype"))
acts = res.prototype_activations[0]
weights = model.class_connection().detach().cpu().numpy()
sources = {p["prototype"]: p for p in model.card.get("prototypes", [])}
for c in np.argsort(-scores)[:n_top]:
    protos = np.arange(c * k, (c + 1) * k)
    contrib = acts[protos] * weights[c, protos]
    st.subheader(f"{display(names[c])}: score {scores[c]:.2f}")
    cols = st.columns(min(3, k))
    for col, j in zip(cols, protos[np.argsort(-contrib)][: len(cols)]):
        with col:
            fig = similarity_overlay(db, res.similarity_maps[0, j], fe, offset_s=clip.offset_s,
                                     title=f"prototype {j}: max sim {acts[j]:.2f}, weight {weights[c, j]:.2f}")
            st.plotly_chart(fig, config=CHART_CONFIG, key=f"clip_sim_{j}")
            if audit is not None and int(j) in set(audit["prototype"]):
                r = audit.set_index("prototype").loc[int(j)]
                st.caption(f"Audit (test split): similarity {r['act_own']:.2f} on its species vs {r['act_other']:.2f} on others; "
                           f"peaks in {r['band_high_hz']} Hz (or {r['band_low_hz']} Hz in BirdNET's low channel); deleting its "
                           f"region drops the score by {r['drop_proto']:.3f} vs {r['drop_random']:.3f} for a random region; "
                           f"plausibility: {r['plausibility']}.")
            src = sources.get(int(j))
            if src and ds is not None:
                rec = next((r for r in ds.recordings if r.recording_id == src["recording_id"]), None)
                if rec is not None and rec.path.is_file():
                    a = max(0.0, src["t_start_s"] - 1.0)  # only the patch ±1 s is decoded, not the whole recording
                    seg = load_segment(str(rec.path), fe.sample_rate, a, src["t_end_s"] + 1.0 - a)
                    pfig = spectrogram_figure(logmel_db(seg, fe), fe, offset_s=a, height=220,
                                              title=f"…looks like {src['recording_id']} at {src['t_start_s']:.2f} s")
                    add_box(pfig, fe, src["t_start_s"], src["t_end_s"], src["f_low_hz"], src["f_high_hz"])
                    st.plotly_chart(pfig, config=CHART_CONFIG, key=f"clip_patch_{j}")
                    band = f"{src['f_low_hz']:.0f}–{src['f_high_hz']:.0f} Hz"
                    if "low_channel_f_low_hz" in src:
                        band += f", or {src['low_channel_f_low_hz']:.0f}–{src['low_channel_f_high_hz']:.0f} Hz in BirdNET's low channel"
                    audio_player(seg, fe.sample_rate, label=f"training patch ±1 s ({band})")
            elif src:
                st.caption(f"pushed to {src['recording_id']} at {src['t_start_s']:.2f} s (dataset not available to play it)")
