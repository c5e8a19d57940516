"""Embeddings page: UMAP of clean and adversarial clips, click a point to hear it, cluster and retrieval metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
import torch

from core.attacks import make_attack
from core.errors import CoreError
from core.io.clips import ClipSet, dataset_clips
from core.metrics import snr_db
from core.models.registry import has_prototypes
from core.studies.embeddings import EmbeddingCache, compute_embeddings, embedding_metrics, prototype_anchors, recording_ids, umap_map
from ui.common import audio_player, dataset_status_message, get_dataset, require_model, selected_points, umap_warmup
from ui.jobs import BACKGROUND, Plan, counting_steps, duration_text, estimate_seconds, job_panel, start_job
from ui.plots import CHART_CONFIG, logmel_db, spectrogram_figure

#: The default map: this many windows of the test split, sized to finish in about 15 s on an idle 2-core CPU.
DEFAULT_CLIPS = 24
#: The bigger map, one click away.
FULL_CLIPS = 120
#: First guesses [seconds per unit] until this machine has measured its own (ui.jobs.unit_cost): 1.4x what one torch
#: thread took on the idle 2-core machine for birdnet_protopnet_gated (decoding 0.08 s per recording, embedding 0.03 s
#: and prototype anchors 0.035 s per 3 s window), so that they hold within 1.5x from idle to a load of about 3. UMAP:
#: compiling its code the first time in a server (15-18 s) or the fit and the metrics of a map of 120 points.
FIRST_GUESS_S = {"decode": 0.12, "embed": 0.045, "anchors": 0.05, "attack": 0.3, "umap_cold": 15.0, "umap_warm": 2.0}


def clips_for(ds, split: str, species: tuple, max_clips: int, sample_rate: int, window_samples: int, class_names: tuple,
              progress=None) -> ClipSet:
    """Windows of the split (evenly spread; per species when some are chosen), decoded at the model's rate."""
    if not species:
        return dataset_clips(ds, split=split, class_names=class_names, sample_rate=sample_rate, window_samples=window_samples,
                             max_clips=max_clips, progress=progress)
    per = max(1, math.ceil(max_clips / len(species)))
    parts, done = [], [0]

    def step(d, t):  # the recordings of all species counted as one stage
        if progress:
            progress(done[0] + d, None)

    for s in species:
        parts.append(dataset_clips(ds, split=split, class_names=class_names, sample_rate=sample_rate,
                                   window_samples=window_samples, species=s, max_clips=per, progress=step))
        done[0] += min(per, n_recordings(ds, split, (s,), per))
    parts = [p for p in parts if len(p)]
    ids, keep = [], []
    for p in parts:  # a recording with two focal species can appear twice
        keep.append([i for i, c in enumerate(p.clip_ids) if c not in ids])
        ids += [p.clip_ids[i] for i in keep[-1]]
    return ClipSet(waveforms=np.concatenate([p.waveforms[k] for p, k in zip(parts, keep)]), clip_ids=ids,
                   labels=np.concatenate([p.labels[k] for p, k in zip(parts, keep)]),
                   masks=np.concatenate([p.masks[k] for p, k in zip(parts, keep)]),
                   species=[p.species[i] for p, k in zip(parts, keep) for i in k])


def n_recordings(ds, split: str, species: tuple, max_clips: int) -> int:
    """How many recordings :func:`clips_for` decodes (one per clip at most, per species when some are chosen)."""
    recs = [r for r in ds.split(split) if r.path.is_file()]
    if not species:
        return min(len(recs), max_clips)
    per = max(1, math.ceil(max_clips / len(species)))
    return sum(min(per, sum(1 for r in recs if s in r.labels)) for s in species)


def map_units(n_clips: int, n_recs: int, steps: int, with_attack: bool, anchors: bool) -> dict:
    """Units of work of a map: recordings decoded, clips embedded, PGD steps x clips, clips scanned for anchors."""
    return {"decode": n_recs, "embed": n_clips, "attack": n_clips * steps if with_attack else 0,
            "anchors": n_clips if anchors else 0}


def stage_kinds(name: str) -> dict:
    """Where each stage's cost per unit is remembered (ui.jobs.record_unit_cost): per model where the model works."""
    return {"decode": "emb:decode", "embed": f"emb:embed:{name}", "attack": f"emb:attack:{name}", "anchors": f"emb:anchors:{name}"}


def map_estimate(name: str, units: dict, umap_ready: bool) -> tuple[float, bool]:
    """Seconds a map will take here: each stage's units times its cost per unit, plus UMAP."""
    kinds = stage_kinds(name)
    seconds, measured = estimate_seconds({kinds[k]: u for k, u in units.items() if u},
                                         {kinds[k]: FIRST_GUESS_S[k] for k in units})
    return seconds + FIRST_GUESS_S["umap_warm" if umap_ready else "umap_cold"], measured


def embedding_job(job, model, name, ds, clip_args, attack, eps, show_protos, settings, store, umap_ready) -> dict:
    """Decoding, embeddings, the UMAP map and its metrics, in a background job (no Streamlit calls).

    ``store`` keeps decoded clip sets across runs (keyed by ``clip_args``); progress moves per
    recording decoded, per clip embedded and per PGD step, with the time left (ui.jobs.Plan).
    """
    cfg = model.config
    kinds = stage_kinds(name)
    n_recs = n_recordings(ds, clip_args[0], clip_args[1], clip_args[2])
    units = map_units(clip_args[2], n_recs, getattr(attack, "steps", 0), attack is not None, show_protos and has_prototypes(cfg))
    plan = Plan(job, [(kinds[k], units[k], FIRST_GUESS_S[k]) for k in ("decode", "embed", "attack", "anchors")]
                + [("umap", 1, FIRST_GUESS_S["umap_warm" if umap_ready() else "umap_cold"])], transient=("umap",),
                fair=umap_ready)  # costs measured while UMAP compiles on the other core would be inflated
    clips = store.get(clip_args)
    if clips is None:
        plan.update(kinds["decode"], 0, "Decoding recordings")
        clips = clips_for(ds, *clip_args, progress=lambda d, t: plan.update(kinds["decode"], d, "Decoding recordings"))
        store[clip_args] = clips
    else:
        plan.skip(kinds["decode"])
    if len(clips) < 4:
        raise CoreError(f"only {len(clips)} clip(s) match; a map needs at least 4")
    n = len(clips)
    plan.units[kinds["embed"]] = n
    plan.units[kinds["anchors"]] = n if units["anchors"] else 0
    plan.units[kinds["attack"]] = n * attack.steps if attack is not None else 0
    steps_done = [0]

    def on_rows(rows):
        steps_done[0] += rows
        plan.update(kinds["attack"], steps_done[0], "Attacking (PGD steps x clips)")

    def progress(stage, done, total):
        if stage == "clean":
            plan.update(kinds["embed"], done, "Embedding clean clips")

    plan.update(kinds["embed"], 0, "Embedding clean clips")
    if attack is not None:
        attack = counting_steps(attack, on_rows)
    cache = EmbeddingCache()
    emb = compute_embeddings(model, clips, attack=attack, eps=float(eps) if attack else None, cache=cache, progress=progress,
                             batch_size=4)
    for k in ("embed", "attack"):
        if plan.done[kinds[k]] < plan.units[kinds[k]]:  # found in the disk cache
            plan.skip(kinds[k])
    extra = []
    if emb.adv_embeddings is not None:
        extra.append(emb.adv_embeddings)
    anchors = None
    if show_protos and has_prototypes(cfg):
        plan.update(kinds["anchors"], 0, "Finding each prototype's clip")
        anchors = prototype_anchors(model, clips.waveforms)  # each prototype at the clip it fires most on
        plan.update(kinds["anchors"], n, "Finding each prototype's clip")
    plan.update("umap", 0, "UMAP map" + ("" if umap_ready() else " (compiling UMAP's code, once per server)"))
    key = EmbeddingCache.key("umap", emb.embeddings.tobytes().hex()[:64], len(emb.embeddings), [e.shape for e in extra],
                             [float(np.asarray(e).sum()) for e in extra])
    stored = cache.load(key)
    if stored is None:
        coords, extra_coords = umap_map(emb.embeddings, extra=extra)
        cache.save(key, coords=coords, **{f"extra{i}": c for i, c in enumerate(extra_coords)})
    else:
        coords, extra_coords = stored["coords"], [stored[f"extra{i}"] for i in range(len(extra))]
    adv_coords = extra_coords[0] if emb.adv_embeddings is not None else None
    primary = np.array([s.split(";")[0] for s in clips.species])
    recordings = recording_ids(clips.clip_ids)  # retrieval ignores pairs of windows from one recording
    clean_metrics = embedding_metrics(emb.embeddings, primary, groups=recordings)
    clusters = clean_metrics.pop("clusters", np.zeros(len(primary), int))
    rows = [{"points": "clean", "space": "embedding", **clean_metrics},
            {"points": "clean", "space": "UMAP 2-D", **embedding_metrics(coords, primary, metric="euclidean", groups=recordings)}]
    if adv_coords is not None:
        rows += [{"points": "adversarial", "space": "embedding", **embedding_metrics(emb.adv_embeddings, primary, groups=recordings)},
                 {"points": "adversarial", "space": "UMAP 2-D",
                  **embedding_metrics(adv_coords, primary, metric="euclidean", groups=recordings)}]
    plan.update("umap", 1, "UMAP map and metrics")
    return {
        "settings": settings, "clips": clips, "emb": emb, "coords": coords, "adv_coords": adv_coords,
        "anchors": anchors, "clusters": clusters,
        "metrics": pd.DataFrame([{k: v for k, v in r.items() if k != "clusters"} for r in rows]), "adversarial": {},
    }


st.set_page_config(page_title="Embeddings · birdshield", page_icon="🐦", layout="wide")
st.title("Embeddings: where clips sit, and where an attack drags them")
MAX_CLIPS = 2000
name, model = require_model("emb_model")
cfg = model.config
st.caption(f"Each point is a {cfg.clip_seconds:g} s window (the input of {name}), placed by UMAP (fitted on the clean "
           "embeddings, fixed seed) from the model's pre-logits embedding. Adversarial clips are placed into the same map, "
           "with an arrow from each clean clip to its attacked twin. Select a point (click, or box/lasso) to hear it.")
names = list(cfg.class_names)
ds = get_dataset()
if ds is None:
    st.info(dataset_status_message())
    st.stop()
display = ds.display_name


@st.cache_resource(show_spinner=False)
def clip_store() -> dict:
    """Decoded clip sets of this server, by (split, species, max_clips, rate, window, classes); the newest 8 kept."""
    return {}


warm = umap_warmup()  # UMAP's code compiles in the background while the user chooses (once per server)
st.session_state.setdefault("emb_max_clips", DEFAULT_CLIPS)
with st.form("emb_form"):
    c1, c2, c3 = st.columns([1, 3, 1])
    split = c1.selectbox("Split", ["test", "val", "train"], key="emb_split")
    species = c2.multiselect("Species (empty: all)", ds.class_names, format_func=display, key="emb_species")
    max_clips = int(c3.number_input("at most N clips", min_value=4, max_value=MAX_CLIPS, step=4, key="emb_max_clips",
                                    help=f"Windows of {cfg.clip_seconds:g} s (this model's input), spread evenly over the "
                                         "split's recordings and species."))
    a1, a2, a3, a4, a5 = st.columns([1.2, 1, 1, 1, 1.2])
    with_attack = a1.checkbox("Add adversarial points", key="emb_with_attack")
    attack_name = a2.selectbox("Attack", ["pgd", "bim", "fgsm"], key="emb_attack")
    eps = a3.number_input("eps (L-inf)", min_value=0.0, max_value=1.0, value=3e-4, step=1e-4, format="%.5f", key="emb_eps")
    steps = int(a4.number_input("steps", min_value=1, max_value=100, value=10, key="emb_steps"))
    show_protos = a5.checkbox("Show prototypes", value=has_prototypes(cfg), key="emb_protos", disabled=not has_prototypes(cfg))
    run_steps = 1 if attack_name == "fgsm" else steps
    with_anchors = show_protos and has_prototypes(cfg)
    f1, f2 = st.columns(2)
    submitted = f1.form_submit_button("Compute map", type="primary")
    here, measured = map_estimate(name, map_units(max_clips, n_recordings(ds, split, tuple(species), max_clips), run_steps,
                                                  with_attack, with_anchors), not warm.is_alive())
    f1.caption(f"{max_clips} clips: {duration_text(here)}"
               + ("" if measured else " (a first guess until a map here has measured this machine)"))
    big, _ = map_estimate(name, map_units(FULL_CLIPS, n_recordings(ds, split, tuple(species), FULL_CLIPS), run_steps,
                                          with_attack, with_anchors), True)
    bigger = f2.form_submit_button(f"Map {FULL_CLIPS} clips, {duration_text(big)}", key="emb_full",
                                   on_click=lambda: st.session_state.update(emb_max_clips=FULL_CLIPS))
    st.caption(BACKGROUND + " Finished maps are cached on disk.")

if bigger:
    max_clips = FULL_CLIPS
settings = (name, split, tuple(species), max_clips, with_attack, attack_name, float(eps), steps)
if submitted or bigger:
    try:
        attack = None
        if with_attack:
            if eps <= 0:
                raise CoreError("eps must be > 0 to add adversarial points")
            attack = make_attack(attack_name, eps=float(eps), steps=steps)
        store = clip_store()
        while len(store) >= 8:
            store.pop(next(iter(store)))
        clip_args = (split, tuple(species), max_clips, cfg.frontend.sample_rate, cfg.window_samples, tuple(names))
        start_job("embeddings", "Map", "Embeddings",
                  lambda job, a=(model, name, ds, clip_args, attack, float(eps), show_protos, settings, store,
                                 lambda: not warm.is_alive()): embedding_job(job, *a))
    except CoreError as exc:
        st.error(f"Map not computed: {exc}")
job_panel("embeddings", lambda r: st.session_state.__setitem__("emb_result", r))

res = st.session_state.get("emb_result")
if not res or res["settings"][0] != name:
    st.info("Choose clips (and optionally an attack), then compute the map.")
    st.stop()
if res["settings"] != settings:
    st.warning("Showing the map for earlier settings; press **Compute map** to update.")

clips: ClipSet = res["clips"]
emb = res["emb"]
coords, adv_coords, anchors = res["coords"], res["adv_coords"], res.get("anchors")
primary = np.array([s.split(";")[0] for s in clips.species])
pred = np.array([names[i] for i in emb.scores.argmax(1)])
adv_pred = None if emb.adv_scores is None else np.array([names[i] for i in emb.adv_scores.argmax(1)])
clusters = res["clusters"]

colour_options = ["species", "predicted species", "KMeans cluster"] + (["clean / adversarial"] if adv_coords is not None else [])
colour_by = st.radio("Colour by", colour_options, horizontal=True, key="emb_colour")
if colour_by == "species":
    groups = primary
elif colour_by == "predicted species":
    groups = pred
elif colour_by == "KMeans cluster":
    groups = np.array([f"cluster {c}" for c in clusters])
else:
    groups = np.array(["clean"] * len(primary))

fig = go.Figure()
if adv_coords is not None:
    lx = np.column_stack([coords[:, 0], adv_coords[:, 0], np.full(len(coords), np.nan)]).ravel()
    ly = np.column_stack([coords[:, 1], adv_coords[:, 1], np.full(len(coords), np.nan)]).ravel()
    fig.add_trace(go.Scatter(x=lx, y=ly, mode="lines", line=dict(color="rgba(120,120,120,0.45)", width=1), hoverinfo="skip",
                             name="clean → adversarial"))
hover = ("%{customdata[1]}<br>species %{customdata[2]}<br>predicted %{customdata[3]}<extra>%{customdata[4]}</extra>")
for g in sorted(set(groups)):
    idx = np.flatnonzero(groups == g)
    custom = np.column_stack([idx, np.array(clips.clip_ids)[idx], [display(s) for s in primary[idx]], [display(s) for s in pred[idx]],
                              ["clean"] * len(idx)])
    fig.add_trace(go.Scatter(x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=display(g) if g in names else g,
                             marker=dict(size=8, line=dict(width=0.5, color="white")), customdata=custom, hovertemplate=hover))
if adv_coords is not None:
    idx = np.arange(len(coords))
    custom = np.column_stack([idx, np.array(clips.clip_ids), [display(s) for s in primary], [display(s) for s in adv_pred],
                              [f"adversarial, SNR {s:.0f} dB" for s in emb.snr_db]])
    fig.add_trace(go.Scatter(x=adv_coords[:, 0], y=adv_coords[:, 1], mode="markers", name="adversarial",
                             marker=dict(size=7, symbol="x", color="black"), customdata=custom, hovertemplate=hover))
if anchors is not None:
    k = cfg.prototypes_per_class
    at, sim = anchors
    fig.add_trace(go.Scatter(x=coords[at, 0], y=coords[at, 1], mode="markers", name="prototypes (at the clip each fires most on)",
                             marker=dict(size=13, symbol="star-open", color="goldenrod", line=dict(width=2)),
                             text=[f"prototype {j} of {display(names[j // k])}: fires most on {clips.clip_ids[at[j]]} "
                                   f"(similarity {sim[j]:.2f}; species {display(primary[at[j]])})" for j in range(len(at))],
                             hovertemplate="%{text}<extra></extra>"))
fig.update_layout(height=620, margin=dict(l=10, r=10, t=30, b=10), xaxis_title="UMAP 1", yaxis_title="UMAP 2",
                  dragmode="lasso", legend=dict(itemsizing="constant"))
event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), config=CHART_CONFIG, key="emb_plot")

# -- metrics ----------------------------------------------------------------------------------------

metrics_table = res["metrics"]
st.subheader("Cluster and retrieval quality")
st.dataframe(metrics_table.round(3), hide_index=True, width="stretch")
st.caption("KMeans with k = number of species present, scored against each clip's primary (first focal) species by NMI, "
           "ARI and V-measure; silhouette of the species labels; retrieval ROC-AUC: similarity of every pair of clips, same "
           "species vs. different. Cosine in the embedding space, Euclidean in the 2-D map. Adversarial rows embed the "
           "attacked clips with the clean clips' labels.")
if emb.adv_scores is not None:
    flipped = float((emb.adv_scores.argmax(1) != emb.scores.argmax(1)).mean())
    st.caption(f"The attack changed the top-1 species of {flipped:.0%} of the clips; median SNR {np.median(emb.snr_db):.1f} dB.")

table = pd.DataFrame({"clip": clips.clip_ids, "species": primary, "predicted": pred, "x": coords[:, 0], "y": coords[:, 1],
                      "cluster": clusters})
if adv_coords is not None:
    table["adv_x"], table["adv_y"], table["adv_predicted"], table["snr_db"] = adv_coords[:, 0], adv_coords[:, 1], adv_pred, emb.snr_db
d1, d2 = st.columns(2)
d1.download_button("Download coordinates (CSV)", table.to_csv(index=False).encode(), file_name="embedding_map.csv", mime="text/csv",
                   key="emb_download_coords")
d2.download_button("Download metrics (CSV)", metrics_table.to_csv(index=False).encode(), file_name="embedding_metrics.csv",
                   mime="text/csv", key="emb_download_metrics")

# -- the selected clip ------------------------------------------------------------------------------

picked = selected_points(event)
options = list(range(len(clips.clip_ids)))
if picked:
    st.session_state["emb_clip"] = picked[0]
choice = st.selectbox("Selected clip (or select a point in the map)", options, key="emb_clip",
                      format_func=lambda i: f"{clips.clip_ids[i]} · {display(primary[i])}")
if len(picked) > 1:
    st.caption(f"{len(picked)} points selected; showing the first.")
i = int(choice)
wave = clips.waveforms[i][clips.masks[i] > 0]
sr = cfg.frontend.sample_rate
st.subheader(f"{clips.clip_ids[i]}: {display(primary[i])}, predicted {display(pred[i])}")
cols = st.columns(2)
db_clean = logmel_db(wave, cfg.frontend)
with cols[0]:
    audio_player(wave, sr, label="clean")
    clean_chart = st.empty()  # drawn once the adversarial clip is known: both share one colour range
if adv_coords is None:
    clean_chart.plotly_chart(spectrogram_figure(db_clean, cfg.frontend, title="clean", height=300), config=CHART_CONFIG, key="emb_spec_clean")
else:
    s = res["settings"]
    if i not in res["adversarial"]:
        # the same attack, seed and clip as in the map: the same adversarial clip (the random start is seeded per clip)
        attack = make_attack(s[5], eps=s[6], steps=s[7])
        x = torch.as_tensor(clips.waveforms[i : i + 1], device=next(model.parameters()).device)
        adv = attack(model, x, torch.as_tensor(clips.labels[i : i + 1], device=x.device), mask=torch.as_tensor(clips.masks[i : i + 1], device=x.device))
        res["adversarial"][i] = adv[0].cpu().numpy()[clips.masks[i] > 0]
    adv = res["adversarial"][i]
    db_adv = logmel_db(adv, cfg.frontend)
    zmin, zmax = float(min(db_clean.min(), db_adv.min())), float(max(db_clean.max(), db_adv.max()))
    clean_chart.plotly_chart(spectrogram_figure(db_clean, cfg.frontend, title="clean", height=300, zmin=zmin, zmax=zmax),
                             config=CHART_CONFIG, key="emb_spec_clean")
    with cols[1]:
        audio_player(adv, sr, label=f"adversarial ({s[5]}, eps {s[6]:g}, SNR {float(snr_db(wave, adv)):.1f} dB): predicted {display(adv_pred[i])}")
        st.plotly_chart(spectrogram_figure(db_adv, cfg.frontend, title="adversarial", height=300, zmin=zmin, zmax=zmax),
                        config=CHART_CONFIG, key="emb_spec_adv")
