"""The "Certify" panel of the Clip and Field recording pages: randomized smoothing on the window shown.

Nothing runs until the button is pressed; the result is kept per model, window, sigma and N for the session. The
sentence names the smoothed model's answer (g's), never the plain model's, beside its radius
(:mod:`core.attacks.smoothing`, Cohen, Rosenfeld & Kolter 2019).
"""

from __future__ import annotations

import hashlib
import math
import time

import numpy as np
import streamlit as st

from core.attacks.smoothing import DEFAULT_ALPHA, DEFAULT_SIGMA, MAX_N, N0, Certificate, certify_window, max_certifiable_radius
from core.field.analyze import species_names
from core.field.certificates import MEASURED_GAP, PlainReading, certificate_notes, reading_threshold, window_reading
from ui.common import compute_on_click
from ui.glossary import help_text

#: Noise levels offered [full-scale amplitude]: the grid the default was chosen on (``bench/smoothing_sigma.py``).
SIGMAS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
#: Noisy copies N offered first: at alpha 0.001 a radius of at most 2.46 sigma.
DEFAULT_N = 1000


def _floor_percent(p: float, decimals: int = 0) -> str:
    """``p`` as a percentage rounded down (a lower bound must not be rounded up): 0.986 -> ``"98 %"``."""
    scale = 10 ** (decimals + 2)
    return f"{math.floor(p * scale) / 10 ** decimals:.{decimals}f} %"


def certificate_sentence(c: Certificate, name: str, plain: str | None = None) -> str:
    """What a certificate says, in words an ecologist reads: g's answer, and how quiet a sound must be to be sure not
    to change it (a lower bound).

    Parameters
    ----------
    c : Certificate
    name : str
        The name shown for ``c.label`` (the smoothed model's species).
    plain : str, optional
        The plain model's top species on the clean window, named when it differs from the smoothed model's answer.
    """
    settings = f"N = {c.n:,}, alpha = {c.alpha:g}"
    differs = (f" Here it does: the plain model's top species is {plain}." if plain is not None and plain != name else "")
    if c.abstained:
        return (f"Not certified (abstain): the smoothed model cannot vouch for any species here. Its most frequent answer, "
                f"{name}, is guaranteed only for at least {_floor_percent(c.p_lower)} of noisy copies, not for more than half ({settings}, "
                f"noise sigma {c.sigma:g}). More copies or another noise level may certify it. This concerns the smoothed "
                f"model, whose answer may differ from the plain model's.{differs}")
    if not math.isfinite(c.snr_db):
        return (f"Certified, but the window is silent, so no level in dB can be given: a change of L2 norm below {c.radius:.3g} "
                f"cannot change the smoothed model's answer ({name}; {settings}). The certificate is for the smoothed model, whose "
                f"answer may differ from the plain model's.{differs}")
    return (f"Certified: no sound quieter than {c.snr_db:.0f} dB below this window can change the smoothed model's answer "
            f"({name}; the probability that a noisy copy gives it is at least {_floor_percent(c.p_lower)}; {settings}). A lower bound: "
            f"louder sounds may or may not change it. The certificate is for the smoothed model, whose answer may differ from the "
            f"plain model's.{differs}")


def certify_panel(model_name: str, model, window: np.ndarray, *, offset_s: float = 0.0, key: str = "cert") -> None:
    """An expander: choose sigma and N, press **Certify**, see the smoothed model's answer and its certificate.

    Parameters
    ----------
    model_name : str
    model : BirdClassifier
    window : np.ndarray [shape=(n_samples,), dtype=float32]
        One window at the model's rate [Hz], full-scale amplitude (zero-padded here to the model's window length).
    offset_s : float [s]
        The window's start in its recording.
    key : str
        Prefix of the widgets' keys (``{key}_sigma``, ``{key}_n``, ``{key}_run``).
    """
    with st.expander("Certify this window: could a quiet sound change the answer? (randomized smoothing)"):
        st.caption("The smoothed model answers with the species the model names most often on many copies of the window with a "
                   "little random noise added (Cohen, Rosenfeld & Kolter 2019). For it a guarantee can be computed: no "
                   "sound quieter than a level, in dB below the window, can change its answer. The higher that figure, the "
                   "quieter the sounds it covers, so the weaker the guarantee. It is a lower bound: on test windows, attacks "
                   f"needed {MEASURED_GAP[0]}-{MEASURED_GAP[1]} times the certified change to change the answer.")
        cfg = model.config
        win = np.zeros(cfg.window_samples, np.float32)
        win[: min(len(window), len(win))] = np.asarray(window, np.float32)[: len(win)]
        c1, c2 = st.columns(2)
        sigma = c1.select_slider("Noise sigma (full-scale amplitude)", SIGMAS, value=DEFAULT_SIGMA, format_func=lambda s: f"{s:g}",
                                 key=f"{key}_sigma", help="The noise's standard deviation per sample. Larger noise certifies larger "
                                 f"changes but makes the model err on the copies; {DEFAULT_SIGMA:g} kept the default model's answer "
                                 "on every test window measured.")
        n = int(c2.number_input("Noisy copies N", N0, MAX_N, DEFAULT_N, step=500, key=f"{key}_n",
                                help=f"Copies that estimate how often the answer holds, after {N0} that choose it."))
        top = max_certifiable_radius(sigma, n, DEFAULT_ALPHA)
        st.caption(f"At N = {n:,} the largest certifiable radius is about {top / sigma:.1f} sigma ({top:.2g} in L2 over the "
                   f"window), however sure the model is; alpha = {DEFAULT_ALPHA:g} (the chance that a certificate is wrong).")
        clip_id = hashlib.sha1(win.tobytes()).hexdigest()[:12]

        def compute(bar):
            start = time.perf_counter()

            def progress(done: int, total: int) -> None:
                left = (time.perf_counter() - start) / done * (total - done)
                bar.progress(min(1.0, done / total), text=f"{done:,} / {total:,} noisy copies, about {left:.0f} s left")

            end_s = offset_s + len(window) / cfg.frontend.sample_rate
            cert = certify_window(model, win, sigma=sigma, n=n, alpha=DEFAULT_ALPHA, start_s=offset_s, end_s=end_s, progress=progress)
            return cert, window_reading(model, win, 0.0, len(window) / cfg.frontend.sample_rate, reading_threshold(model)[0])

        got = compute_on_click("Certify", key, (model_name, clip_id, float(sigma), n), compute, text="Certifying…",
                               type="primary", help=help_text("certified"))
        if got is not None:
            _show(model, *got)


def _show(model, c: Certificate, reading: PlainReading) -> None:
    names = species_names(model.config.class_names, model)
    plain = names[reading.top_class][1]
    name = names[c.class_name][1]
    (st.info if c.abstained else st.success)(certificate_sentence(c, name, plain))
    for note in certificate_notes(c, reading, lambda code: names[code][1]):
        st.warning(note)
    m1, m2, m3 = st.columns(3)
    m1.metric("Smoothed model's answer", "abstain" if c.abstained else name)
    level = "—" if c.abstained else (f"{c.snr_db:.0f} dB below the window" if math.isfinite(c.snr_db) else "silent window")
    m2.metric("No sound quieter than this can change it", level)
    m3.metric("P(a noisy copy agrees), lower bound", _floor_percent(c.p_lower, 1))
    st.caption(f"Radius {'—' if c.abstained else f'{c.radius:.3g}'} (L2 norm over the window's samples, full-scale amplitude; "
               f"the largest certifiable at N = {c.n:,}: {c.max_radius:.3g}); {c.n0} + {c.n:,} noisy copies in {c.seconds:.0f} s. "
               "L2, not the per-sample (L-inf) budget of the Attack page.")
