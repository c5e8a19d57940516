"""Sweep page: robustness curves over an eps (or SNR) grid, one line per model; hear where a clip breaks."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st
import torch

from core.attacks import OBJECTIVES
from core.attacks.sweep import attack_from_options, minimal_eps, parse_float_list, run_sweep
from core.attacks.threats import threat_choices
from core.errors import CoreError
from core.io.audio import resample, wav_bytes
from core.io.clips import dataset_clips
from core.models.registry import has_prototypes, list_checkpoints
from core.studies.sweep import CURVE_METRICS, read_table, summarize, sweep_table
from core.training.calibration import card_thresholds
from ui.common import clip_picker, get_dataset, get_model, model_label
from ui.glossary import help_text
from ui.jobs import (
    BACKGROUND,
    counting_steps,
    duration_text,
    estimate_seconds,
    job_panel,
    record_unit_cost,
    running_job,
    start_job,
    unit_rate,
)
from ui.plots import CHART_CONFIG, METRIC_LABELS, budget_label, robustness_curves, success_note, survival_curves

#: Rows per forward/backward pass, as in the default run (1 clip x 4 budgets): a step of one row then costs the same in
#: a bigger run, so the estimate holds (4 rows: 0.08 s per step of one row on 1 thread, 8 rows: 0.09 s)
SWEEP_ROWS = 4


def sweep_units(n_clips: int, grid, steps: int) -> int:
    """Units of work of one model's sweep: PGD steps x rows, a row being one (budget, clip) pair with a budget > 0.

    Rows at budget 0 are the clean clip, scored without gradient steps. An SNR budget
    always attacks (every SNR gives an eps > 0).
    """
    return int(n_clips) * sum(1 for b in grid if float(b) != 0.0) * int(steps)


def run_sweeps(job, run_models, inputs, attacks, spec, grid, budget_kind, class_names, transforms=None, masking=False) -> dict:
    """The sweep of every model (in a background job: no Streamlit calls here).

    Progress moves after every gradient step of every batch of rows (``sweep_units``
    units in all); each model's wall time per unit is remembered for later estimates.
    """
    tables, audio = [], {}
    units = {m: sweep_units(len(inputs[m]["clips"]), grid if budget_kind == "eps" else [1] * len(grid), attacks[m].steps)
             for m in run_models}
    total, before = sum(units.values()), 0
    job.report(0, total, "PGD steps")
    for m, model in run_models.items():
        inp = inputs[m]
        x, mask, labels, ids, sr = inp["x"], inp["mask"], inp["labels"], inp["clips"], inp["sample_rate"]
        counted, first, last = [0], [], [None]

        def on_rows(n, m=m, before=before, counted=counted, first=first, last=last):
            counted[0] += n
            last[0] = (time.perf_counter(), counted[0])
            if not first:
                first.append(last[0])
            job.report(before + counted[0], total, f"{m}: PGD steps (budget x clip rows)")

        atk = counting_steps(attacks[m], on_rows)
        device = next(model.parameters()).device
        t0 = time.perf_counter()
        res = run_sweep(atk, model, torch.as_tensor(x, device=device), None if labels is None else torch.as_tensor(labels, device=device),
                        masks=torch.as_tensor(mask, device=device), keep_waveforms=len(ids) == 1, max_rows=SWEEP_ROWS,
                        transforms=transforms, masking=masking,
                        **({"epsilons": grid} if budget_kind == "eps" else {"snr_db": grid}))
        # the steps' own rate (from the first step on): the clean pass and a first call's warm-up do not scale with a
        # bigger run, so they would inflate its estimate
        rate = unit_rate((t0, 0), first[0] if first else None, *(last[0] or (time.perf_counter(), 0)))
        if rate is not None:
            record_unit_cost(f"sweep:{m}", rate * units[m], units[m])
        before += units[m]
        atk = attacks[m]
        tables.append(sweep_table(res, model=m, attack=atk, clip_ids=ids, class_names=class_names, labels=labels))
        if len(ids) == 1:
            n = int(mask[0].sum())
            audio[m] = [
                {"budget": budget_label(budget_kind, float(b)), "wav": wav_bytes(res.adversarial[i, 0, :n], sr),
                 "success": bool(res.success[i, 0]), "snr_db": float(res.snr_db[i, 0]),
                 "top1": class_names[int(res.scores[i, 0].argmax())]}
                for i, b in enumerate(res.budgets)
            ]
            audio[m].insert(0, {"budget": "clean", "wav": wav_bytes(x[0, :n], sr), "success": False, "snr_db": float("inf"),
                                "top1": class_names[int(res.clean_scores[0].argmax())]})
    return {"table": pd.concat(tables, ignore_index=True), "audio": audio, "source": "run", "inputs": inputs, "spec": spec}


def minimal_eps_job(job, todo, attacks, inputs) -> pd.DataFrame:
    """Minimal flipping eps of every clip and model (in a background job: no Streamlit calls here)."""
    rows = []
    for mi, (m, model) in enumerate(todo.items()):
        inp = inputs[m]
        dev = next(model.parameters()).device
        lab = None if inp["labels"] is None else torch.as_tensor(inp["labels"], device=dev)

        def progress(done, total, mi=mi, m=m):
            total = max(total, 1)
            job.report(mi * total + done, len(todo) * total, f"{m}: attacks (decades, then bisection)")

        found = minimal_eps(attacks[m], model, torch.as_tensor(inp["x"], device=dev), lab,
                            masks=torch.as_tensor(inp["mask"], device=dev), progress=progress)
        for i, cid in enumerate(inp["clips"]):
            rows.append({"model": m, "clip": cid, "minimal eps": found["eps"][i], "SNR (dB)": found["snr_db"][i],
                         "dB_x": found["db_x"][i], "found": bool(found["found"][i])})
    return pd.DataFrame(rows)


def sweep_done(result: dict) -> None:
    st.session_state["sweep_result"] = result
    st.session_state.pop("sweep_min_eps", None)


THREATS = threat_choices()
st.set_page_config(page_title="Sweep · birdshield", page_icon="🐦", layout="wide")
st.title("Sweep: watch robustness fall as the budget grows")
st.caption("Every clip is attacked at every budget of the grid (the grid runs on the batch axis). Curves show held-out "
           "metrics per model; PRS/DRS/TARS are the robustness scores of Heinrich et al. 2023 (1 = unaffected). "
           "The default run is small (one clip, PGD-5) so that it finishes in seconds; the full sweep is one click away.")

OBJECTIVE_HELP = {
    "output-untargeted": "maximise the classification loss against the true labels (or the clean prediction)",
    "output-margin": "push the clip's top species below the runner-up (margin loss; success = top-1 changed, no threshold)",
    "output-targeted": "make a chosen species appear, or a present one disappear (BCE to the clean set plus or minus it)",
    "output-targeted-margin": "make the model say a chosen species: raise it above every other (margin; success = it is top-1)",
    "embedding-untargeted": "push the feature map away from the clean one (spatial-wise cosine dissimilarity, as AT-E)",
    "embedding-targeted": "pull the feature map towards that of a target clip",
    "prototype-suppress": "AudioProtoPNet only: switch off the clip's most activated prototypes",
    "prototype-activate": "AudioProtoPNet only: switch on a chosen prototype (of another class)",
}
#: The default run: one clip, 4 budgets besides the clean one, PGD-5, sized to finish in about 10 s on an idle 2-core CPU.
DEFAULT_GRID = {"eps": "0, 3e-5, 1e-4, 3e-4, 1e-3", "snr_db": "60, 50, 40, 30, 20"}
DEFAULT_STEPS = 5
#: The full sweep, one click away: FULL_CLIPS test clips, the 6-value grid of the CLI's sweep, PGD-10.
FULL_GRID = "0, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3"
FULL_STEPS = 10
FULL_CLIPS = 8
MAX_CLIPS = 64
#: First guesses (seconds per PGD step of one row, 2-core CPU) until this machine has measured its own.
FIRST_GUESS_S = {"birdnet": 0.6, "other": 0.3}

ds = get_dataset()
names = list_checkpoints()
if not names:
    st.error("No checkpoints found in checkpoints/. Train one with `python -m core train --config baseline-small`.")
    st.stop()
display = ds.display_name if ds else (lambda c: c)


@st.cache_data(max_entries=16, show_spinner="Decoding clips…")
def split_clips(split: str, species: str | None, max_clips: int, sample_rate: int, window_samples: int, class_names: tuple):
    return dataset_clips(ds, split=split, class_names=class_names, sample_rate=sample_rate, window_samples=window_samples,
                         species=species, max_clips=max_clips)


def sweep_estimate(units: dict) -> tuple[float, bool]:
    """Seconds a sweep of ``{model: units}`` will take here (:func:`ui.jobs.estimate_seconds`)."""
    defaults = {f"sweep:{m}": FIRST_GUESS_S["birdnet" if m.startswith("birdnet") else "other"] for m in units}
    return estimate_seconds({f"sweep:{m}": u for m, u in units.items()}, defaults)


def estimate_caption(units: dict, what: str) -> str:
    """'what: N PGD steps of one row, about T' with where the estimate comes from."""
    seconds, measured = sweep_estimate(units)
    source = "from this machine's earlier runs" if measured else "a first guess until a run here has measured it"
    return f"{what} per model: {sum(units.values())} PGD steps of one row in all, {duration_text(seconds)} ({source})."


def use_full_settings() -> None:
    """The Full sweep button: set the widgets to the full sweep, then run it on this rerun."""
    st.session_state.update({"sweep_clip_mode": "Split subset", "sweep_split": "test", "sweep_max_clips": FULL_CLIPS,
                             "sweep_steps": FULL_STEPS, "sweep_budget_kind": "eps", "sweep_grid_eps": FULL_GRID,
                             "sweep_full_pending": True})
    if st.session_state.get("sweep_attack") == "fgsm":
        st.session_state["sweep_attack"] = "pgd"


# -- set-up ---------------------------------------------------------------------------------------

with st.expander("Set up a sweep", expanded="sweep_result" not in st.session_state):
    # the two ordinarily trained small models: one black box, one interpretable (not the first two names alphabetically)
    first = [m for m in ("baseline", "protopnet") if m in names] or names[:2]
    models = st.multiselect("Models", names, default=st.session_state.get("sweep_models_value", first), key="sweep_models",
                            format_func=model_label)
    st.session_state["sweep_models_value"] = models
    st.session_state.setdefault("sweep_steps", DEFAULT_STEPS)
    c1, c2, c3, c4, c5 = st.columns(5)
    attack = c1.selectbox("Attack", ["pgd", "bim", "fgsm"], key="sweep_attack",
                          format_func={"pgd": "PGD (random start)", "bim": "BIM (zero start)", "fgsm": "FGSM (one step)"}.get)
    norm = c2.selectbox("Norm", ["linf", "l2"], key="sweep_norm", format_func={"linf": "L-inf", "l2": "L2"}.get)
    steps = int(c3.number_input("steps", min_value=1, max_value=200, key="sweep_steps", disabled=attack == "fgsm"))
    seed = int(c4.number_input("seed", min_value=0, max_value=2**31 - 1, value=0, key="sweep_seed"))
    objective = c5.selectbox("Objective", list(OBJECTIVES), key="sweep_objective")
    st.caption(OBJECTIVE_HELP[objective])

    options: dict = {}
    loaded = {m: get_model(m) for m in models}
    first = next(iter(loaded.values()), None)
    class_names = list(first.config.class_names) if first else []
    window_s = first.config.clip_seconds if first else 5.0
    if objective in ("output-targeted", "output-targeted-margin") and class_names:
        o1, o2 = st.columns(2)
        options["species"] = o1.selectbox("Target species", class_names, format_func=display, key="sweep_target_species")
        if objective == "output-targeted":
            options["mode"] = o2.radio("Make it", ["add", "remove"], horizontal=True, key="sweep_mode",
                                       format_func={"add": "appear", "remove": "disappear"}.get)
    if objective == "embedding-targeted":
        if ds is None:
            st.warning("A target clip comes from the dataset; none is found.")
        else:
            recs = [r for r in ds.available() if r.split == "test"]
            rid = st.selectbox(f"Target clip (its first {window_s:g} s)", [r.recording_id for r in recs], key="sweep_target_clip",
                               format_func=lambda i: f"{i} · {', '.join(display(x) for x in ds.by_id[i].labels)}")
            options["target_recording"] = rid
    if objective.startswith("prototype"):
        not_proto = [m for m in models if not has_prototypes(loaded[m].config)]
        if not_proto:
            st.warning(f"Prototype objectives apply to AudioProtoPNet only; {', '.join(not_proto)} will be skipped.")
        if objective == "prototype-suppress":
            options["k"] = int(st.number_input("prototypes to suppress (k)", min_value=1, max_value=20, value=3, key="sweep_k"))
        elif class_names:
            p1, p2 = st.columns(2)
            pc = p1.selectbox("Prototype of class", class_names, format_func=display, key="sweep_proto_class")
            k_per = max((loaded[m].config.prototypes_per_class for m in models if has_prototypes(loaded[m].config)), default=1)
            pj = int(p2.number_input("prototype number within the class", min_value=0, max_value=k_per - 1, value=0, key="sweep_proto_j"))
            options["prototype"] = f"{pc}:{pj}"

    b1, b2 = st.columns([1, 3])
    budget_kind = b1.radio("Budget", ["eps", "snr_db"], key="sweep_budget_kind",
                           format_func={"eps": "eps (full-scale amplitude)", "snr_db": "target SNR (dB)"}.get)
    st.session_state.setdefault(f"sweep_grid_{budget_kind}", DEFAULT_GRID[budget_kind])
    grid_text = b2.text_input("Grid (comma-separated)", key=f"sweep_grid_{budget_kind}",
                              help=f"eps in full-scale amplitude (L-inf: max |delta|; L2: ||delta||_2 over the {window_s:g} s "
                                   "window), or target SNR in dB relative to each clip (each clip gets its own eps).")

    clip_sources = ["Current clip"] + (["A species", "Split subset"] if ds else [])
    clip_mode = st.radio("Clips", clip_sources, horizontal=True, key="sweep_clip_mode")
    clip = None
    if clip_mode == "Current clip":
        if first is None:
            st.info("Choose at least one model.")
        else:
            clip = clip_picker("sweep", first.config.frontend.sample_rate, first.config.clip_seconds)
    else:
        st.session_state.setdefault("sweep_max_clips", FULL_CLIPS)
        s1, s2, s3 = st.columns(3)
        split = s1.selectbox("Split", ["test", "val", "train"], key="sweep_split")
        species = s2.selectbox("Species", ds.class_names, format_func=display, key="sweep_species") if clip_mode == "A species" else None
        max_clips = int(s3.number_input(f"at most N clips ({window_s:g} s windows)", min_value=1, max_value=MAX_CLIPS,
                                        key="sweep_max_clips"))
    through = st.multiselect("Also pass every clip through (does the attack survive it?)", list(THREATS),
                             format_func=lambda t: THREATS[t][0], key="sweep_through",
                             help="Each attacked clip, and each clean clip as the control, is also transformed (the same "
                                  "room, distance, noise and codec for both) and scored again.")
    audibility = st.checkbox("Also measure audibility: the share of each perturbation above the clip's masking threshold",
                             value=True, key="sweep_audibility", help=help_text("masking threshold"))
    busy = not models or running_job("sweep") is not None
    n_clips = 1 if clip_mode == "Current clip" else max_clips
    try:
        planned = parse_float_list(grid_text, "the grid") if budget_kind == "eps" else [1.0] * len(grid_text.split(","))
    except CoreError:
        planned = []
    run_steps = 1 if attack == "fgsm" else steps
    this_run = {m: sweep_units(n_clips, planned, run_steps) for m in models}
    full_run = {m: sweep_units(FULL_CLIPS, parse_float_list(FULL_GRID, "the grid"), FULL_STEPS) for m in models}
    r1, r2 = st.columns(2)
    run = r1.button("Run sweep", type="primary", key="sweep_run", disabled=busy)
    r1.caption(estimate_caption(this_run, f"{n_clips} clip(s) x {sum(1 for b in planned if b != 0)} budget(s) x {run_steps} step(s)"))
    full_seconds, _ = sweep_estimate(full_run)
    r2.button(f"Full sweep: {FULL_CLIPS} test clips x 6 budgets x PGD-10, {duration_text(full_seconds)}", key="sweep_full",
              disabled=busy or ds is None, on_click=use_full_settings,
              help="The CLI's sweep grid on a subset of the test split, with every model chosen above. The time is "
                   "estimated from what a step cost on this machine so far.")
    st.caption(BACKGROUND + " A sweep from the command line (`python -m core sweep`) resumes where it stopped.")
    run = run or st.session_state.pop("sweep_full_pending", False)

    if run:
        try:
            grid = list(parse_float_list(grid_text, "the grid"))
            target_recording = options.pop("target_recording", None)
            if objective == "embedding-targeted" and target_recording is None:
                raise CoreError("embedding-targeted needs a target clip from the dataset")
            if clip_mode == "Current clip" and clip is None:
                raise CoreError("choose a clip first")
            prepared: dict = {}

            def inputs_for(model):
                """Clips at the model's own rate and window (BirdNET: 3 s at 48 kHz), made once per (rate, window)."""
                sr, win = model.config.frontend.sample_rate, model.config.window_samples
                if (sr, win) not in prepared:
                    if clip_mode == "Current clip":
                        wave = clip.waveform if clip.sample_rate == sr else resample(clip.waveform, clip.sample_rate, sr)
                        wav = np.clip(wave[:win], -1.0, 1.0)  # resampled audio can overshoot full scale
                        x = np.zeros((1, win), np.float32)
                        x[0, : len(wav)] = wav
                        mask = np.zeros_like(x)
                        mask[0, : len(wav)] = 1
                        labels = np.array([[float(c in clip.labels) for c in class_names]], np.float32) if clip.labels else None
                        ids = [f"{clip.name}@{clip.offset_s:g}s"]
                    else:
                        cs = split_clips(split, species, max_clips, sr, win, tuple(class_names))
                        x, mask, labels, ids = cs.waveforms, cs.masks, cs.labels, cs.clip_ids
                    target = None
                    if target_recording is not None:
                        t = ds.load(ds.by_id[target_recording], sr)[:win]
                        target = np.pad(t, (0, win - len(t)))
                    prepared[(sr, win)] = {"x": x, "mask": mask, "labels": labels, "clips": ids, "target_waveform": target, "sample_rate": sr}
                return prepared[(sr, win)]

            runnable = [m for m in models if not (objective.startswith("prototype") and not has_prototypes(loaded[m].config))]
            if not runnable:
                raise CoreError("no selected model supports this objective")
            inputs = {m: inputs_for(loaded[m]) for m in runnable}  # in the script: the clip cache is Streamlit's
            attacks = {m: attack_from_options(loaded[m], attack=attack, norm=norm, objective=objective, steps=steps, seed=seed,
                                              target_waveform=inputs[m]["target_waveform"], **options) for m in runnable}
            spec = {"attack": attack, "norm": norm, "objective": objective, "steps": steps, "seed": seed, **options}
            run_models = {m: loaded[m] for m in runnable}

            transforms = {t: THREATS[t][1] for t in through}

            def work(job, run_models=run_models, inputs=inputs, attacks=attacks, spec=spec, grid=grid, budget_kind=budget_kind,
                     class_names=tuple(class_names), transforms=transforms, masking=audibility):
                return run_sweeps(job, run_models, inputs, attacks, spec, grid, budget_kind, class_names, transforms, masking)

            expected, _ = sweep_estimate({m: this_run[m] for m in runnable})
            start_job("sweep", "Sweep", "Sweep", work, unit_s=expected / max(1, sum(this_run[m] for m in runnable)))
        except CoreError as exc:
            st.error(f"Sweep not run: {exc}")

job_panel("sweep", sweep_done)

with st.expander("Load a saved sweep (CSV or Parquet from `python -m core sweep`)"):
    up = st.file_uploader("Sweep table", type=["csv", "parquet"], key="sweep_table_upload")
    if up is not None and st.session_state.get("sweep_loaded_name") != (up.name, up.size):
        try:
            st.session_state["sweep_result"] = {"table": read_table(up), "audio": {}, "source": up.name}
            st.session_state["sweep_loaded_name"] = (up.name, up.size)
        except CoreError as exc:
            st.error(str(exc))

# -- results --------------------------------------------------------------------------------------

result = st.session_state.get("sweep_result")
if not result:
    st.info("Set up a sweep and run it, or load a saved one.")
    st.stop()
table = result["table"]
try:
    thresholds = card_thresholds(table["model"].unique())
except CoreError as exc:
    st.warning(f"Set-change rates left out: {exc}")
    thresholds = {}
summary = summarize(table, thresholds=thresholds)
st.subheader(f"Robustness curves ({summary['n_clips'].max()} clip(s), source: {result['source']})")
available = [m for m in (*CURVE_METRICS, "above_masking") if m in summary and summary[m].notna().any() and m != "eps"]
default = [m for m in ("cmap", "success_rate", "tars", "snr_db") if m in available] or available[:2]
chosen = st.multiselect("Metrics", available, default=default, format_func=lambda m: METRIC_LABELS.get(m, m), key="sweep_metrics")
cols = st.columns(2)
for i, metric in enumerate(chosen):
    cols[i % 2].plotly_chart(robustness_curves(summary, metric), config=CHART_CONFIG, key=f"sweep_curve_{metric}")
st.caption(success_note(summary, thresholds))
if any(c.startswith("success_rate_after:") for c in summary.columns):
    st.plotly_chart(survival_curves(summary, {t: v[0] for t, v in THREATS.items()}), config=CHART_CONFIG, key="sweep_survival")
    st.caption("Dashed: success after the transformation. Its clean point is the control: how often the transformation "
               "alone already changed the clean clip's answer (an attack cannot take credit for that).")
if summary["cmap"].isna().all():
    st.caption("cmAP, ROC-AUC and top-1 need true labels and at least 2 clips (a single clip's average precision is 1 "
               "whatever its scores): attack several clips, or read success rate and PRS.")
if summary["drs"].isna().all():
    st.caption("DRS and TARS need a target; this objective is untargeted, so only PRS is defined.")

shown = summary.drop(columns=[c for c in ("attack", "norm") if summary[c].nunique() == 1])
metric_cols = [c for c in CURVE_METRICS if c in shown.columns and c != "eps"]
st.dataframe(shown.round({c: 4 for c in metric_cols}), hide_index=True, width="stretch",
             column_config={"budget": st.column_config.NumberColumn(format="%g"), "eps": st.column_config.NumberColumn(format="%.3g")})
d1, d2 = st.columns(2)
d1.download_button("Download the tidy table (CSV, one row per model × budget × clip)", table.to_csv(index=False).encode(),
                   file_name="sweep.csv", mime="text/csv", key="sweep_download")
d2.download_button("Download the curves (CSV)", summary.to_csv(index=False).encode(), file_name="sweep_summary.csv",
                   mime="text/csv", key="sweep_download_summary")

if result.get("audio"):
    st.subheader("Hear where it breaks")
    st.caption("The clip at every budget, at its true level. ✗ marks budgets where the attack succeeded.")
    for m, strip in result["audio"].items():
        st.markdown(f"**{m}**")
        cols = st.columns(len(strip))
        for col, item in zip(cols, strip):
            mark = "✗ " if item["success"] else ""
            snr = "" if not np.isfinite(item["snr_db"]) else f", {item['snr_db']:.0f} dB"
            col.caption(f"{mark}{item['budget']}{snr} → {display(item['top1'])}")
            col.audio(item["wav"], format="audio/wav")

if "inputs" in result:
    st.subheader("Minimal flipping eps")
    st.caption("For each clip, the smallest eps at which the sweep's attack succeeds, found with one attack per decade "
               "from 1e-6 to 0.1, then 7 bisection steps on log(eps) (within 1.8 %).")
    if st.button("Find minimal eps", key="sweep_min_run", disabled=running_job("sweep_min") is not None):
        try:
            todo = {m: get_model(m) for m in table["model"].unique()}
            attacks = {m: attack_from_options(model, target_waveform=result["inputs"][m]["target_waveform"], **result["spec"])
                       for m, model in todo.items()}
            start_job("sweep_min", "Minimal eps search", "Sweep",
                      lambda job, a=(todo, attacks, result["inputs"]): minimal_eps_job(job, *a))
        except CoreError as exc:
            st.error(f"Search not run: {exc}")
    job_panel("sweep_min", lambda rows: st.session_state.__setitem__("sweep_min_eps", rows))
    if "sweep_min_eps" in st.session_state:
        st.dataframe(st.session_state["sweep_min_eps"], hide_index=True, width="stretch")
