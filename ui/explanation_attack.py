"""The Attack page's "Explanation attack" panel: a quiet change that keeps the label but moves the explanation.

Nothing runs until the button is pressed (:func:`ui.common.compute_on_click`); the result is kept per model, window
and settings for the session. The attacks and every figure shown are :mod:`core.field.explanation_attack`'s,
measured through the model's own path.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import streamlit as st

from core.field.attribution import METHOD_CITATIONS
from core.field.explanation_attack import ExplanationAttackResult, explanation_attack
from ui.attribution import attribution_figure
from ui.common import audio_player, compute_on_click
from ui.glossary import help_text
from ui.plots import CHART_CONFIG, logmel_db, similarity_overlay

#: kind -> what the user picks it as.
KIND_LABELS = {"prototype_swap": "swap the most active prototype", "peak_shift": "move the prototype's peak",
               "attribution_shift": "move the evidence (gradient × input) into a region"}


def _when_where(point: tuple[float, float], offset_s: float) -> str:
    return f"{offset_s + point[0]:.2f} s, {point[1] / 1000:.1f} kHz"


def _moved(dhz: float, ds: float) -> str:
    """Where the evidence's centre went, in words: kHz up or down, s later or earlier (about the same below 50 Hz, 0.05 s)."""
    if abs(dhz) < 50 and abs(ds) < 0.05:
        return "the evidence stayed where it was"
    pitch = "at about the same pitch" if abs(dhz) < 50 else f"{abs(dhz) / 1000:.1f} kHz {'up' if dhz > 0 else 'down'}"
    when = "at about the same time" if abs(ds) < 0.05 else f"{abs(ds):.1f} s {'later' if ds > 0 else 'earlier'}"
    return f"the evidence moved {pitch} and {when}"


def explanation_attack_sentence(r: ExplanationAttackResult, display: Callable[[str], str] = str, offset_s: float = 0.0) -> str:
    """What an explanation attack did, in plain words: the label, the explanation, where the evidence went, how quiet.

    E.g. "The label stayed Blackcap; the most active prototype changed from #3 to #7; the evidence moved 1.2 kHz up
    and 0.4 s later; the change is 41 dB below the song."

    Parameters
    ----------
    r : ExplanationAttackResult
    display : callable
        Class code -> the name shown.
    offset_s : float [s]
        The window's start in its recording (times are given from the recording's start, as the figures draw them).
    """
    before = display(r.class_name)
    if r.label_kept:
        parts = [f"The label stayed {before}"]
    else:
        parts = [f"The label changed from {before} to {display(r.class_name_after)}, so this counts as a failure, not a success"]
    if r.kind == "prototype_swap":
        parts.append(f"the most active prototype changed from #{r.prototype} to #{r.top_prototype_after}" if r.moved
                     else f"prototype #{r.prototype} stayed the most active")
    elif r.kind == "peak_shift":
        parts.append(f"the peak of prototype #{r.prototype} moved from {_when_where(r.peak_before, offset_s)} to "
                     f"{_when_where(r.peak_after, offset_s)}" if r.peak_cell_after != r.peak_cell_before
                     else f"the peak of prototype #{r.prototype} stayed at {_when_where(r.peak_before, offset_s)}")
    else:
        parts.append(f"the share of the evidence inside the chosen region went from {r.region_share_before:.0%} to "
                     f"{r.region_share_after:.0%}")
    dhz, ds = r.centroid_shift_hz, r.centroid_shift_s
    if math.isfinite(dhz) and math.isfinite(ds):
        parts.append(_moved(dhz, ds))
    else:
        parts.append("no cell holds positive evidence before or after, so it has no centre to follow")
    parts.append(f"the change is {r.snr_db:.0f} dB below the song")
    return "; ".join(parts) + "."


def explanation_attack_panel(model_name: str, model, window: np.ndarray, *, eps: float, display: Callable[[str], str] = str,
                             offset_s: float = 0.0, key: str = "xattack") -> None:
    """An expander: choose what to move, eps and steps, press the button, see the maps before and after and hear both.

    Parameters
    ----------
    model_name : str
    model : BirdClassifier
    window : np.ndarray [shape=(n_samples,), dtype=float32]
        The page's clip at the model's rate [Hz]; its first window is attacked.
    eps : float [full-scale amplitude]
        The page's eps, offered first.
    display : callable
        Class code -> the name shown.
    offset_s : float [s]
        The window's start in its recording.
    key : str
        Prefix of the widgets' keys (``{key}_kind``, ``{key}_eps``, ``{key}_steps``, ``{key}_run``, ...).
    """
    with st.expander("Explanation attack: keep the label, move the explanation"):
        st.caption("A quiet change that leaves the model's answer alone but changes why it seems to give it: another "
                   "prototype becomes the most active, the prototype's best match moves in time and pitch, or the input "
                   "evidence moves to where you choose (Dombrowski et al. 2019; Hoffmann et al. 2021). A change that alters "
                   "the label counts as a failure.")
        protos = getattr(model, "prototype_class_identity", None) is not None and bool(getattr(model.config, "prototypes_per_class", 0))
        kinds = list(KIND_LABELS) if protos else ["attribution_shift"]
        kind = st.radio("What the attack moves", kinds, format_func=KIND_LABELS.get, horizontal=True, key=f"{key}_kind",
                        help=help_text("explanation attack"))
        c1, c2 = st.columns(2)
        x_eps = c1.number_input("eps (L-inf, full-scale amplitude)", min_value=0.0, max_value=1.0, value=float(eps), step=0.0005,
                                format="%.4f", key=f"{key}_eps", help=help_text("eps"))
        steps = int(c2.number_input("steps", min_value=1, max_value=200, value=10, step=1, key=f"{key}_steps", help=help_text("PGD")))
        win_len = int(round(model.clip_seconds * model.sample_rate))
        x = np.asarray(window, np.float32)[:win_len]
        extra: dict = {}
        if kind == "peak_shift":
            extra["min_cells"] = int(st.slider("Move the peak at least this many map cells", 1, 4, 2, key=f"{key}_cells"))
        elif kind == "attribution_shift":
            fe = model.config.frontend  # the maps span the spectrogram's band, f_min to f_max
            f_lo, f_hi = int(getattr(fe, "f_min", 0) or 0), int(min(getattr(fe, "f_max", None) or model.sample_rate / 2, model.sample_rate / 2))
            lo, hi = st.slider("Region: frequency (Hz)", f_lo, f_hi, (max(f_lo, 4000), min(8000, f_hi)), step=250, key=f"{key}_band",
                               help=f"The spectrogram and the maps cover {f_lo:,}-{f_hi:,} Hz.")
            start, end = float(offset_s), float(offset_s) + float(model.clip_seconds)
            t0, t1 = st.slider("Region: time in the recording (s)", start, end, (start, end), step=0.25, key=f"{key}_span",
                               help="On the maps' time axis (the recording's).")
            extra.update(band_hz=(float(lo), float(hi)), span_s=(float(t0) - start, float(t1) - start))
        clip_id = hashlib.sha1(x.tobytes()).hexdigest()[:12]
        wanted = (model_name, clip_id, kind, float(x_eps), steps, tuple(sorted((k, str(v)) for k, v in extra.items())))
        got = compute_on_click("Run the explanation attack", key, wanted,
                               lambda bar: explanation_attack(kind, model, x, eps=float(x_eps), steps=steps, **extra),
                               text=f"PGD-{steps} on the explanation…")
        if got is not None:
            _show(got, model, x, display, offset_s, key)


def _show(r: ExplanationAttackResult, model, x: np.ndarray, display, offset_s: float, key: str) -> None:
    sentence = explanation_attack_sentence(r, display, offset_s)
    (st.success if r.success else st.warning if not r.label_kept else st.info)(sentence)
    kept = round(r.topk_overlap * r.k) if math.isfinite(r.topk_overlap) else None
    words = [f"Of the {r.k} most active prototypes, {kept} still {'is' if kept == 1 else 'are'}" if kept is not None else None,
             f"rank correlation of the prototype's similarity map before and after {r.similarity_spearman:.2f}"
             if math.isfinite(r.similarity_spearman) else None,
             f"of the gradient × input maps {r.attribution_spearman:.2f} (1: every cell kept its rank)"]
    st.caption("; ".join(w for w in words if w) + f". Success means: the label is kept and {r.criterion}. "
               f"eps {r.eps:g}, PGD-{r.steps}, measured L-inf {r.linf:.2g}, SNR {r.snr_db:.1f} dB.")
    fe = model.config.frontend
    name = display(r.class_name)
    if r.similarity_before is not None:
        s1, s2 = st.columns(2)
        for col, wave, sim, label in ((s1, x, r.similarity_before, "clean"), (s2, r.adversarial, r.similarity_after, "perturbed")):
            col.plotly_chart(similarity_overlay(logmel_db(wave, fe), sim, fe, offset_s=offset_s,
                                                title=f"{label}: prototype #{r.prototype} ({name}), max sim {sim.max():.2f}"),
                             config=CHART_CONFIG, key=f"{key}_sim_{label}")
    a1, a2 = st.columns(2)
    for col, amap, label in ((a1, r.attribution_before, "clean"), (a2, r.attribution_after, "perturbed")):
        col.plotly_chart(attribution_figure(amap, 0, offset_s=offset_s, title=f"{label}: gradient × input, {name} logit"),
                         config=CHART_CONFIG, key=f"{key}_attr_{label}")
    st.caption(METHOD_CITATIONS["grad_x_input"])
    p1, p2 = st.columns(2)
    with p1:
        audio_player(x, model.sample_rate, label="clean")
    with p2:
        audio_player(r.adversarial, model.sample_rate, label="perturbed (explanation attack, same level as clean)")
