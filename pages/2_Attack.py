"""Attack page: PGD in the waveform domain; hear and see what changed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.attacks.psychoacoustic import masking_excess, masking_threshold
from core.attacks.threats import threat_choices, transform_waveform
from core.errors import CoreError
from core.field.inference import analyze_waveform, attack_waveform
from core.io.audio import wav_bytes
from core.metrics import eps_for_snr, linf, snr_db
from ui.common import analyze, audio_player, clip_picker, get_dataset, model_fingerprint_cached, require_model, safe_name
from ui.explanation_attack import explanation_attack_panel
from ui.export import Audio, html_report
from ui.glossary import help_text
from ui.plots import CHART_CONFIG, attack_difference_db, logmel_db, score_bars, spectrogram_figure

st.set_page_config(page_title="Attack · birdshield", page_icon="🐦", layout="wide")


def top_species_change(label: str, names: list[str], before: int, now: int, display, *, colour: str = "red") -> str:
    """``label``, the top species now and, when it changed, what it was: Markdown that wraps instead of being cut off."""
    if now == before:
        return f"{label}  \n**{display(names[now])}** (unchanged)"
    return f"{label}  \n**:{colour}[{display(names[now])}]**  \nwas {display(names[before])}"


st.title("Attack: how little noise does it take?")

name, model = require_model("attack_model")
cfg = model.config
fe = cfg.frontend
names = list(cfg.class_names)
ds = get_dataset()
display = ds.display_name if ds else (lambda c: c)

with st.expander("Clip", expanded=st.session_state.get("clip") is None):
    clip = clip_picker("attack", fe.sample_rate, cfg.clip_seconds)
if clip is None:
    st.info("Choose a clip above.")
    st.stop()
st.caption(f"Clip: {clip.name} from {clip.offset_s:.0f} s ({clip.source})")

rms = float(np.sqrt(np.mean(clip.waveform.astype(np.float64) ** 2)))
c1, c2, c3, c4 = st.columns(4)
eps = c1.number_input("eps (L-inf, full-scale amplitude)", min_value=0.0, max_value=1.0,
                      value=st.session_state.get("attack_eps_value", 0.001), step=0.0005, format="%.4f", key="attack_eps",
                      help=help_text("eps"))
st.session_state["attack_eps_value"] = eps
steps = int(c2.number_input("steps (1 = FGSM)", min_value=1, max_value=200, value=10, step=1, key="attack_steps",
                            help=help_text("PGD")))
gain = c3.select_slider("perturbation playback gain", options=[1, 10, 30, 100, 300, 1000], value=100, key="attack_gain")
seed = int(c4.number_input("seed", min_value=0, max_value=2**31 - 1, value=0, key="attack_seed"))
if rms > 0 and eps > 0:
    # a sign pattern of amplitude eps has power eps^2: SNR = 20 log10(rms / eps)
    st.caption(f"eps = {eps:g} gives an SNR of at least {20 * np.log10(rms / eps):.1f} dB on this clip (a full ±eps sign "
               "pattern; the measured SNR is shown after the attack) "
               f"(clip RMS {rms:.4f}; eps for 40 dB: {eps_for_snr(clip.waveform, 40):.5f}, for 20 dB: {eps_for_snr(clip.waveform, 20):.5f})")
elif rms == 0:
    st.warning("This clip is silent: any perturbation has SNR −∞ dB.")

LOSSES = {"output-margin": "make it say something else (push its top species below the runner-up)",
          "output-untargeted": "scramble the species list (raise the classification loss against what it hears)",
          "output-targeted-margin": "make it say a species I choose"}
loss_default = "output-margin" if cfg.arch == "birdnet" else "output-untargeted"
objective = st.radio("What the attack tries", list(LOSSES), index=list(LOSSES).index(loss_default), format_func=LOSSES.get,
                     horizontal=True, key=f"attack_objective_{cfg.arch == 'birdnet'}")
target_class = None
if objective == "output-targeted-margin":
    target_class = names.index(st.selectbox("Species it should say", names, format_func=display, key="attack_target_species",
                                            index=min(1, len(names) - 1)))
THREATS = threat_choices()
eot_name = st.selectbox("Make it survive (expectation over transformation)", ["none", *THREATS],
                        format_func=lambda k: "nothing: a digital attack" if k == "none" else THREATS[k][0], key="attack_eot",
                        help="Each step averages the gradient over 4 random versions of this transformation (other rooms, "
                             "distances, noise), so the perturbation is made to still work after it. 4 times slower.")
eot = None if eot_name == "none" else THREATS[eot_name][1]
budget_kind = st.radio("Budget", ["eps", "masking"], horizontal=True, key="attack_budget_kind",
                       format_func={"eps": "eps: at most ±eps per sample",
                                    "masking": "under the masking threshold: hidden beneath the sound itself (eps caps the search)"}.get,
                       help="The masking threshold (Qin et al. 2019; MPEG-1 psychoacoustic model 1) is how loud a sound "
                            "can be, at each time and frequency, before the clip's own louder sounds stop hiding it. A "
                            "perturbation kept below it is inaudible *by that model*; see docs/methods.md, *A psychoacoustic budget*, for how loud that is.")
run = st.button("Run attack", type="primary", key="attack_run")
run_key = (name, clip.key, eps, steps, seed, objective, target_class, eot_name, budget_kind)
if run:
    with st.status("Running PGD…", expanded=False) as status:
        try:
            adv = attack_waveform(model, clip.waveform, eps=float(eps), steps=steps, random_start=steps > 1, seed=seed,
                                  objective=objective, target_class=target_class, eot=eot, masking=budget_kind == "masking")
        except CoreError as exc:
            status.update(label="Attack failed", state="error")
            st.error(str(exc))
            st.stop()
        st.session_state["attack_result"] = {"key": run_key, "adv": adv}
        status.update(label="Attack done", state="complete")

# keep the label, move the explanation (Dombrowski et al. 2019; Hoffmann et al. 2021); computed only when asked
explanation_attack_panel(name, model, clip.waveform, eps=float(eps), display=display, offset_s=clip.offset_s)

result = st.session_state.get("attack_result")
if not result or result["key"][:2] != run_key[:2]:
    st.info("Set eps and steps, then run the attack.")
    st.stop()
if result["key"] != run_key:
    st.warning("Showing the result for earlier settings (eps={:g}, steps={}); run again to update.".format(result["key"][2], result["key"][3]))

adv = result["adv"]
delta = adv - clip.waveform
before = analyze(name, clip.key, clip.waveform)
after = analyze_waveform(model, adv)
snr = float(snr_db(clip.waveform, adv))
m1, m2, m3 = st.columns(3)
m1.metric("SNR of perturbation", f"{snr:.1f} dB")
m2.metric("L-inf", f"{float(linf(clip.waveform, adv)):.5f}")
if result["key"][-1] == "masking":
    try:
        excess = masking_excess(delta, masking_threshold(clip.waveform, clip.sample_rate))
        st.caption(f"Above the clip's masking threshold: {100 * float(excess['share_above'][0]):.1f} % of time-frequency "
                   f"cells ({100 * float(excess['share_above_3db'][0]):.2f} % by more than 3 dB).")
    except CoreError as exc:
        st.caption(f"Masking threshold not computed: {exc}")
top_b, top_a = int(before.scores[0].argmax()), int(after.scores[0].argmax())
m3.markdown(top_species_change("Top species", names, top_b, top_a, display))  # words, not a metric: names never cut off

a1, a2, a3 = st.columns(3)
with a1:
    audio_player(clip.waveform, clip.sample_rate, label="clean")
with a2:
    audio_player(adv, clip.sample_rate, label="perturbed (same level as clean)")
with a3:
    audio_player(delta, clip.sample_rate, gain=gain, label=f"perturbation × {gain} (+{20 * np.log10(gain):.0f} dB)")
wav = wav_bytes(adv, clip.sample_rate)
st.download_button("Download perturbed WAV", wav, file_name=f"{clip.name.rsplit('.', 1)[0]}_pgd_eps{eps:g}.wav",
                   mime="audio/wav", key="attack_download")

db_c = logmel_db(clip.waveform, fe)
db_a = logmel_db(adv, fe)
s1, s2 = st.columns(2)
zmin, zmax = float(min(db_c.min(), db_a.min())), float(max(db_c.max(), db_a.max()))
s1.plotly_chart(spectrogram_figure(db_c, fe, title="clean", zmin=zmin, zmax=zmax, height=340), config=CHART_CONFIG, key="attack_spec_clean")
s2.plotly_chart(spectrogram_figure(db_a, fe, title="perturbed", zmin=zmin, zmax=zmax, height=340), config=CHART_CONFIG, key="attack_spec_adv")
diff = attack_difference_db(db_c, db_a)
lim = float(np.abs(diff).max()) or 1.0
st.plotly_chart(spectrogram_figure(diff, fe, title="difference (perturbed − clean), where the clean clip is within 60 dB of its loudest cell",
                                   colorscale="RdBu", zmid=0, zmin=-lim, zmax=lim, height=340, colorbar_title="ΔdB"),
                config=CHART_CONFIG, key="attack_spec_diff")
st.caption("Cells more than 60 dB below the clip's loudest are treated as equally quiet in both: there a tiny change of a "
           "near-empty band reads as many dB and would hide where the perturbation really sits.")

bars = score_bars(names, before.scores[0], compare=after.scores[0], title="Scores before and after")
st.plotly_chart(bars, config=CHART_CONFIG, key="attack_scores")
table = pd.DataFrame({"species": [display(n) for n in names], "clean": before.scores[0], "perturbed": after.scores[0]})
table["change"] = table["perturbed"] - table["clean"]
st.dataframe(table.sort_values("clean", ascending=False).round(3), hide_index=True, width="stretch")

settings = {"model": name, "architecture": cfg.arch, "weights fingerprint": model_fingerprint_cached(name),
            "clip": clip.name, "window start (s)": f"{clip.offset_s:g}", "sample rate (Hz)": clip.sample_rate,
            "attack": f"PGD-{steps}" if steps > 1 else "FGSM", "what it tries": LOSSES[objective],
            "eps (L-inf, full scale)": f"{eps:g}", "seed": seed, "measured SNR (dB)": f"{snr:.1f}",
            "made to survive (EOT)": "nothing" if eot is None else THREATS[eot_name][0],
            "budget": "under the masking threshold (eps caps the search)" if budget_kind == "masking" else "eps",
            "top-1 before / after": f"{display(names[top_b])} / {display(names[top_a])}"}
if target_class is not None:
    settings["target species"] = display(names[target_class])
report = lambda: html_report(f"Attack on {clip.name}", [  # noqa: E731  (built only when the button is clicked)
    ("Settings", [settings]),
    ("Listen", [Audio(clip.waveform, clip.sample_rate, "clean"), Audio(adv, clip.sample_rate, "perturbed (same level)"),
                Audio(delta, clip.sample_rate, f"perturbation x {gain} (+{20 * np.log10(gain):.0f} dB)", gain=float(gain))]),
    ("Spectrograms", [spectrogram_figure(db_c, fe, title="clean", zmin=zmin, zmax=zmax, height=340),
                      spectrogram_figure(db_a, fe, title="perturbed", zmin=zmin, zmax=zmax, height=340)]),
    ("Scores", [bars, table.sort_values("clean", ascending=False)]),
], footer=getattr(cfg, "licence", "") or "")
st.download_button("Download a report of this attack (one HTML file)", report, file_name=f"{safe_name(clip.name).rsplit('.', 1)[0]}_attack_report.html",
                   mime="text/html", key="attack_report")

st.subheader("Could this happen in the field?")
st.caption("Pass the clean and the perturbed clip through the same transformation (the same room, distance, noise and "
           "codec) and ask the model again. The clean clip's answer after it is the control: if the transformation alone "
           "changes what the model says, the attack cannot take the credit.")
field_name = st.selectbox("Then the clip is …", list(THREATS), format_func=lambda k: THREATS[k][0], key="attack_field_threat")
try:
    t_clean = transform_waveform(clip.waveform, clip.sample_rate, THREATS[field_name][1], clean=clip.waveform)
    t_adv = transform_waveform(adv, clip.sample_rate, THREATS[field_name][1], clean=clip.waveform)  # a loudspeaker plays adv - clean
except CoreError as exc:
    st.error(f"Transformation not applied: {exc}")
else:
    sc_clean, sc_adv = analyze_waveform(model, t_clean).scores[0], analyze_waveform(model, t_adv).scores[0]
    tc, ta = int(sc_clean.argmax()), int(sc_adv.argmax())
    f1, f2 = st.columns(2)
    with f1:
        audio_player(t_clean, clip.sample_rate, label=f"clean, {THREATS[field_name][0]}")
        st.markdown(top_species_change("Top species (control)", names, top_b, tc, display, colour="gray"))
    with f2:
        audio_player(t_adv, clip.sample_rate, label=f"perturbed, {THREATS[field_name][0]}")
        st.markdown(top_species_change("Top species (attacked)", names, top_b, ta, display))
    if tc != top_b:
        st.warning(f"The transformation alone changes the clean clip's top-1 ({display(names[top_b])} → {display(names[tc])}): "
                   "this window says nothing about the attack.")
    elif top_a == top_b:
        st.info("The attack did not change the top-1 even digitally.")
    elif ta != top_b:
        st.success(f"The attack survives: after the transformation the model still says {display(names[ta])}, not "
                   f"{display(names[top_b])}.")
    else:
        st.info(f"The attack does not survive: after the transformation the model says {display(names[top_b])} again. "
                "Try it with the same transformation under *Make it survive* above.")

if before.prototype_activations is not None:
    st.subheader("Prototype activations that changed most")
    k = cfg.prototypes_per_class
    pa, pb = before.prototype_activations[0], after.prototype_activations[0]
    order = np.argsort(-np.abs(pb - pa))[:10]
    st.dataframe(pd.DataFrame({"prototype": order, "class": [display(names[j // k]) for j in order],
                               "clean": pa[order], "perturbed": pb[order], "change": (pb - pa)[order]}).round(3),
                 hide_index=True, width="stretch")
