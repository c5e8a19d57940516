"""Compare models: the model zoo side by side on the same clips (clean, shifted, attacked, prototype stability)."""

from __future__ import annotations

import dataclasses
import json

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from core.attacks.sweep import parse_float_list
from core.attacks.worstcase import masking_check, worst_case_label
from core.errors import CoreError
from core.models.registry import list_checkpoints
from core.studies.compare import ZOO, CompareSettings, estimate_minutes, model_recipe, model_summary, prototype_stability, run_compare
from core.studies.compare_store import CompareStore
from core.studies.shift import summarize_shift
from core.studies.sweep import summarize
from core.training.calibration import card_thresholds
from ui.common import card_or_none, dataset_status_message, get_dataset, get_model, model_fingerprint_cached
from ui.export import html_report
from ui.jobs import BACKGROUND, job_panel, running_job, start_job
from ui.plots import CHART_CONFIG, METRIC_LABELS, robustness_curves, success_note

st.set_page_config(page_title="Compare models · birdshield", page_icon="🐦", layout="wide")
st.title("Compare models: ordinary vs adversarial training")
st.caption("The eight shipped models, {ConvNeXt baseline, AudioProtoPNet} x {ordinary training (OT), output-space adversarial "
           "training (AT-O), embedding-space adversarial training (AT-E), and the AT models' matched control (OT+FT: the same "
           "fine-tuning without the adversary)}, on the same test clips (recordist-disjoint split): clean and shifted cmAP, "
           "robustness curves under PGD (and, when asked for in the settings, under the worst case over PGD, a transfer attack, "
           "APGD and PGD with restarts), "
           "targeted embedding-space attacks (DRS/TARS) and prototype stability. Results come from the store; recomputing takes minutes.")

available = list_checkpoints()
zoo = [n for n in ZOO if n in available]
missing = [n for n in ZOO if n not in available]
if missing:
    st.warning(f"Checkpoints missing from checkpoints/: {', '.join(missing)}. "
               "docs/models.md, *Reproducing the checkpoints*, gives the commands that train them.")
default = zoo or available[:2]
remembered = [m for m in st.session_state.get("cmp_models_saved", default) if m in available]  # a checkpoint may have gone
models = st.multiselect("Models", available, default=remembered, key="cmp_models",
                        format_func=lambda n: f"{n} ({' · '.join(model_recipe(n, card_or_none(n)))})")
st.session_state["cmp_models_saved"] = models
if not models:
    st.info("Choose at least one model.")
    st.stop()

defaults = CompareSettings()
with st.expander("Settings (a stored result is used when one matches these settings and the models' weights)"):
    c1, c2, c3, c4 = st.columns(4)
    split = c1.selectbox("Split", ["test", "val", "train"], key="cmp_split")
    max_clips = int(c2.number_input("clips attacked per model", min_value=2, max_value=2000, value=defaults.max_clips, key="cmp_max_clips"))
    steps = int(c3.number_input("PGD steps", min_value=1, max_value=100, value=defaults.steps, key="cmp_steps"))
    seed = int(c4.number_input("seed", min_value=0, max_value=2**31 - 1, value=defaults.seed, key="cmp_seed"))
    strong = st.checkbox("Worst case over attacks (adds a transfer attack, APGD and PGD with restarts on the clips PGD did not break)",
                         value=True, key="cmp_strong",
                         help="On by default: the shipped comparison is the worst case, and PGD alone flatters adversarial training. "
                              "Off: PGD only, several times faster.")
    e1, e2 = st.columns(2)
    eps_text = e1.text_input("eps grid, untargeted PGD (full-scale amplitude)", ", ".join(f"{e:g}" for e in defaults.epsilons), key="cmp_eps")
    teps_text = e2.text_input("eps grid, targeted embedding-space PGD", ", ".join(f"{e:g}" for e in defaults.target_epsilons), key="cmp_teps")

def store_stamp(store: CompareStore) -> tuple:
    """What the store holds now (each stored result's meta.json and its time): a new result changes it."""
    dirs = [d for d in (store.directory, store.shipped) if d is not None and d.is_dir()]
    return tuple(sorted((str(p), p.stat().st_mtime_ns) for d in dirs for p in d.glob("*/meta.json")))


@st.cache_resource(max_entries=16, show_spinner="Reading the stored comparison…")
def stored_result(settings_json: str, fingerprints: tuple, data_dir: str, stamp: tuple, _settings: CompareSettings,
                  _store: CompareStore):
    """The stored result for these settings and weights, read once per store state (shared, never mutated); for the worst
    case, else one made before its APGD-CE/DLR/T legs existed (its labels say so: ``apgd_steps`` 0)."""
    found = _store.find(_settings, dict(fingerprints))
    if found is None and _settings.strong and _settings.apgd_steps:
        found = _store.find(dataclasses.replace(_settings, apgd_steps=0), dict(fingerprints))
    return found


@st.cache_data(max_entries=32, show_spinner="Summarising…")
def summaries(result_key: tuple, what: str, _result, arg=None):
    """Tables derived from a stored result, computed once per result (each takes seconds of scikit-learn metrics)."""
    if what == "summary":
        return model_summary(_result)
    if what == "shift":
        return summarize_shift(_result.shift)
    if what == "robustness":
        rob_all = _result.robustness
        attack, thresholds = arg
        return summarize(rob_all[rob_all["attack"] == attack] if attack and "attack" in rob_all else rob_all,
                         thresholds=dict(thresholds))
    if what == "targeted":
        return summarize(_result.targeted)
    if what == "stability":
        return prototype_stability(_result)
    if what == "masking":
        return masking_check(_result.robustness)
    raise ValueError(what)


try:
    settings = CompareSettings(split=split, max_clips=max_clips, steps=steps, seed=seed, strong=strong,
                               epsilons=parse_float_list(eps_text, "eps grid"), target_epsilons=parse_float_list(teps_text, "targeted eps grid"))
    fingerprints = {n: model_fingerprint_cached(n) for n in models}  # from the disk cache: no model is loaded to show a result
except CoreError as exc:
    st.error(f"Cannot compare: {exc}")
    st.stop()
store = CompareStore()
ds = get_dataset()
result = stored_result(json.dumps(settings.to_dict(), sort_keys=True, default=str), tuple(sorted(fingerprints.items())),
                       str(getattr(ds, "root", "")), store_stamp(store), settings, store)

b1, b2 = st.columns([1, 3])
note = b2.empty()  # replaced once a run finishes, so no stale "no stored result" box stays
label = "Recompute" if result is not None else "Compute"
go_compute = b1.button(label, type="primary" if result is None else "secondary", key="cmp_compute",
                       disabled=ds is None or running_job("compare") is not None)
b1.caption(BACKGROUND)
if ds is None:
    note.info(dataset_status_message())
elif result is None:
    minutes, basis = estimate_minutes(settings, len(models), store.results())
    note.info(f"No stored result for these settings and weights. Computing attacks {max_clips} clips per model "
              f"({len(settings.epsilons) + len(settings.target_epsilons)} budgets, PGD-{steps}"
              f"{', then the worst case over four attacks' if strong else ''}); allow about {max(1, round(minutes))} min ({basis}).")
else:
    note.caption(f"Stored result: {len(result.models)} models, {result.info.get('n_attack_clips', '?')} attacked clips, "
               f"{result.info.get('n_shift_clips', '?')} clips for clean/shift metrics; computed in {result.seconds / 60:.1f} min "
               f"on {result.info.get('device', '?')}.")



def compare_job(job, loaded, ds, settings, store) -> str:
    """The comparison and its paper check, in a background job (no Streamlit calls); returns a note for the page."""
    weights = {"clips": (0.0, 0.05), "shift": (0.05, 0.1), "robustness": (0.15, 0.55), "targeted": (0.7, 0.3)}

    def progress(stage, done, total):
        start, span = weights.get(stage, (0.0, 1.0))
        job.progress(start + span * done / max(1, total), f"{stage}: {done}/{total}")

    result = run_compare(loaded, ds, settings, progress=progress)
    store.save(result)  # saved before anything else can fail
    msg = f"Computed and stored in {result.seconds / 60:.1f} min."
    if set(ZOO) <= set(result.models) and settings.split == "test":
        from core.studies.papercheck import paper_check

        try:
            result.claims = paper_check(result)
            store.save(result)
        except CoreError as exc:
            msg += f" The comparison is saved, but its paper check failed: {exc}"
    return msg


if go_compute and ds is not None:
    try:
        loaded = {n: get_model(n) for n in models}  # loaded only to compute: showing a stored result needs none
    except CoreError as exc:
        st.error(f"Cannot compare: {exc}")
        st.stop()
    start_job("compare", "Comparison", "Compare models",
              lambda job, loaded=loaded, ds=ds, settings=settings, store=store: compare_job(job, loaded, ds, settings, store))
if job_panel("compare", lambda msg: st.session_state.__setitem__("cmp_done_note", msg)):
    st.stop()
if st.session_state.get("cmp_done_note"):
    note.success(st.session_state.pop("cmp_done_note"))
    result = store.find(settings, fingerprints)
    stored_result.clear()

if result is None:
    st.stop()

# -- summary --------------------------------------------------------------------------------------

result_key = (json.dumps(result.settings.to_dict(), sort_keys=True, default=str), tuple(sorted(result.fingerprints.items())),
              result.seconds, tuple(result.models))
summary = summaries(result_key, "summary", result).copy()
cards = {n: card_or_none(n) or {} for n in result.models}


def training_budget(card: dict) -> str:
    tc = card.get("train_config", {})
    if tc.get("adv", "none") == "none":
        return ""
    return f"{tc['adv_snr_db']:g} dB SNR" if tc.get("adv_snr_db") is not None else f"{tc.get('adv_eps', float('nan')):g}"


budgets = {n: training_budget(cards[n]) for n in result.models}
summary.insert(3, "training eps", [budgets[n] for n in summary["model"]])
summary.insert(4, "train min", [cards[n].get("train_seconds", float("nan")) / 60 for n in summary["model"]])
st.subheader("Summary")
st.dataframe(summary, hide_index=True, width="stretch",
             column_config={c: st.column_config.NumberColumn(format="%.3f") for c in summary.columns if summary[c].dtype.kind == "f"})
st.caption("cmAP clean/noise/gain/mixup: all windows of the split; PGD and targeted columns: the attacked windows. "
           "train min: on this 2-core CPU; for AT models, the adversarial fine-tuning on top of their OT model.")
st.download_button("Summary as CSV", summary.to_csv(index=False).encode(), "compare_summary.csv", "text/csv", key="cmp_dl_summary")
report_rob = result.robustness
report_attack = "pgd"
if "attack" in report_rob:
    report_attack = "worst-case" if (report_rob["attack"] == "worst-case").any() else "pgd"
    report_rob = report_rob[report_rob["attack"] == report_attack]
report_settings = {**{k: str(v) for k, v in result.settings.to_dict().items()}, "computed in (min)": f"{result.seconds / 60:.1f}",
                   "device": result.info.get("device", "?")}
st.download_button("Report of this comparison (one HTML file)",
                   lambda: html_report("Model comparison", [("Settings", [report_settings]), ("Weights", [dict(result.fingerprints)]),
                                                    ("Summary", [summary]),
                                                    ("Attack success per budget (" + report_attack + ")",
                                                     [robustness_curves(summaries(result_key, "robustness", result,
                                                                                  (report_attack if "attack" in result.robustness else None, ())),
                                                                        "success_rate")])]),
                   file_name="compare_report.html", mime="text/html", key="cmp_report")

tab_shift, tab_rob, tab_tgt, tab_proto = st.tabs(["Clean and shifted", "Robustness curves", "Targeted embedding attack", "Prototype stability"])

with tab_shift:
    sh = summaries(result_key, "shift", result)
    fig = px.bar(sh, x="model", y="cmap", color="condition", barmode="group", hover_data=["setting", "cmap_change", "n"],
                 labels={"cmap": "cmAP", "condition": "condition"}, height=380)
    fig.update_layout(margin=dict(l=10, r=10, t=30, b=10))
    st.plotly_chart(fig, width="stretch", config=CHART_CONFIG, key="cmp_shift_fig")
    st.caption("Site noise: a window of another test recording in which BirdNET detects no vocalising animal (its site's "
               "ambient sound; see docs/methods.md), added at the stated SNR; labels unchanged. "
               "Gain: a level change. Mixup: the clip mixed with a clip of another species (labels: the union). "
               f"{sh['n'].max()} windows per condition.")
    st.dataframe(sh, hide_index=True, width="stretch")
    st.download_button("Per-clip scores (CSV)", result.shift.to_csv(index=False).encode(), "compare_shift.csv", "text/csv", key="cmp_dl_shift")

with tab_rob:
    rob_all = result.robustness
    attacks_here = [a for a in ("worst-case", "pgd", "transfer") if "attack" in rob_all and (rob_all["attack"] == a).any()]
    s_ = result.settings
    attack_words = {"worst-case": worst_case_label(s_.steps, s_.strong_steps, s_.restarts, apgd_steps=getattr(s_, "apgd_steps", 0)),
                    "pgd": f"PGD-{s_.steps} (white-box, BCE against the true labels)",
                    "transfer": f"transfer: PGD-{s_.steps} made on another model (baseline; for the baseline, AudioProtoPNet) and replayed"}
    r1, r2 = st.columns([2, 3])
    metric = r1.radio("Metric", ["cmap", "success_rate", "set_change_rate", "prs", "top1", "snr_db"], horizontal=True, key="cmp_rob_metric",
                      format_func=lambda m: METRIC_LABELS.get(m, m))
    which = r2.radio("Attack", attacks_here, horizontal=True, key="cmp_rob_attack", format_func=lambda a: a.replace("-", " "))
    checks = summaries(result_key, "masking", result)
    flagged = checks[checks["warning"] != ""] if not checks.empty else checks
    if not flagged.empty:
        st.warning("Gradient-masking check: the default attack underestimates the attacker for "
                   + "; ".join(f"**{r.model}** at eps {r.eps:g} ({r.warning})" for r in flagged.itertuples())
                   + ". Read robustness from the worst case, not from PGD alone.")
    try:
        thresholds = card_thresholds(rob_all["model"].unique())
    except CoreError as exc:
        st.warning(f"Set-change rates left out: {exc}")
        thresholds = {}
    rob = summaries(result_key, "robustness", result, (which, tuple(sorted(thresholds.items()))))
    if metric == "set_change_rate" and rob["set_change_rate"].isna().all():
        st.info("No set-change rate here: the worst-case rows keep no scores, and models without a validation threshold "
                "(BirdNET) have none. Pick PGD or transfer.")
    st.plotly_chart(robustness_curves(rob, metric, height=420), width="stretch", config=CHART_CONFIG, key="cmp_rob_fig")
    st.caption(f"{attack_words.get(which, which)}; L-inf, output space, {rob['n_clips'].max()} windows per model."
               + ("".join(f" {n}: trained at {b}." for n, b in budgets.items() if b)) + " " + success_note(rob, thresholds))
    if not checks.empty:
        with st.expander("Success rate per attack (the worst case is per clip, so it can exceed every single attack)"):
            st.dataframe(checks, hide_index=True, width="stretch")
    st.download_button("Per-clip table (CSV)", result.robustness.to_csv(index=False).encode(), "compare_robustness.csv", "text/csv",
                       key="cmp_dl_rob")

with tab_tgt:
    tg = summaries(result_key, "targeted", result)
    m2 = st.radio("Metric", ["tars", "drs", "prs", "success_rate", "cmap"], horizontal=True, key="cmp_tgt_metric",
                  format_func=lambda m: METRIC_LABELS.get(m, m))
    st.plotly_chart(robustness_curves(tg, m2, height=380), width="stretch", config=CHART_CONFIG, key="cmp_tgt_fig")
    st.caption("Each clip is pulled towards the feature map of a clip of another species (PGD on the spatial-wise cosine "
               "similarity). DRS compares the representation (prototype activations for AudioProtoPNet, the pooled embedding "
               "otherwise) with the target's; TARS combines PRS and DRS (Heinrich et al. 2023); 1 means unchanged, 0 fully moved. "
               + success_note(tg))
    st.download_button("Per-clip table (CSV)", result.targeted.to_csv(index=False).encode(), "compare_targeted.csv", "text/csv",
                       key="cmp_dl_tgt")

with tab_proto:
    protos = result.prototypes
    if protos.empty:
        st.info("Prototype stability applies to AudioProtoPNet models; none is selected.")
    else:
        stab = summaries(result_key, "stability", result)
        fig = px.bar(stab, x="eps", y="relative_change", color="model", barmode="group", facet_col="objective", log_x=False,
                     labels={"relative_change": "mean |activation change| / mean clean activation", "eps": "eps"}, height=360)
        fig.update_xaxes(type="category", matches=None)  # each attack shows only its own budgets
        st.plotly_chart(fig, width="stretch", config=CHART_CONFIG, key="cmp_stab_fig")
        p1, p2 = st.columns(2)
        objective = p1.selectbox("Attack", sorted(protos["objective"].unique()), key="cmp_proto_obj")
        eps_choices = sorted(protos.loc[protos["objective"] == objective, "eps"].unique())
        eps = p2.selectbox("eps", eps_choices, index=len(eps_choices) - 1, key="cmp_proto_eps", format_func=lambda e: f"{e:g}")
        sel = protos[(protos["objective"] == objective) & (protos["eps"] == eps)]
        fig = go.Figure()
        for name, g in sel.groupby("model", sort=False):
            fig.add_trace(go.Bar(x=[f"{c}:{p % max(1, g['prototype'].nunique() // g['class'].nunique())}" for c, p in zip(g["class"], g["prototype"])],
                                 y=g["mean_abs_change"], name=name,
                                 customdata=g[["clean_activation"]].to_numpy(),
                                 hovertemplate="%{x}<br>mean |change| %{y:.3f}<br>clean activation %{customdata[0]:.3f}<extra>" + name + "</extra>"))
        fig.update_layout(barmode="group", height=380, margin=dict(l=10, r=10, t=30, b=10),
                          yaxis_title="mean |activation change| (cosine similarity)", xaxis_title="prototype (class:j)")
        st.plotly_chart(fig, width="stretch", config=CHART_CONFIG, key="cmp_proto_fig")
        st.caption("Activation: the prototype's maximum cosine similarity over the clip's feature map, in [-1, 1]. "
                   "A stable prototype keeps its activation when the clip is attacked.")
        st.download_button("Per-prototype table (CSV)", protos.to_csv(index=False).encode(), "compare_prototypes.csv", "text/csv",
                           key="cmp_dl_proto")
