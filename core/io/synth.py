"""Synthetic sounds that hold no bird: noises, machines, tones, bells, music, voices and barks.

No recording of non-bird sounds is reachable on the machines this project is built on,
so the open-set judgement of the heads (does a window hold a bird at all?) is trained
and tested on sounds made here, by family. Each family is a small physical or musical
model, not a recording, so the test answers "does the model say no bird on sounds of
this *kind*", not "on this recording":

=================  ===========================================================================
family             model
=================  ===========================================================================
white/pink/brown   Gaussian noise with a 0, -3 or -6 dB/octave spectrum
hum                mains hum: 50 or 60 Hz and its harmonics up to 1 kHz, with a buzzy odd series
rain               Poisson clicks (20-400 per second), each a decaying high-passed burst
engine             firing-rate harmonics (20-90 Hz fundamental, 1/k roll-off) with slow RPM drift, over
                   low-passed noise
wind               low-passed noise (cut-off 100-800 Hz) with slow gusts
tone               a pure tone (100 Hz-12 kHz) over faint pink noise
tone_sequence      beeps of random pitch (300 Hz-4 kHz) and length (80-400 ms) with pauses: a phone,
                   a reversing truck, a test signal
siren              a tone swept between 500 and 1800 Hz (wail or yelp period 0.3-4 s)
bells              church-bell strikes: partials at the hum, prime, tierce, quint and nominal ratios
                   (0.5, 1, 1.2, 1.5, 2, 2.5, 3, 4; Rossing 2000, *Science of Percussion Instruments*)
                   of a 150-700 Hz strike note, each decaying exponentially (1-5 s)
music              chords of 3-4 harmonic notes on an equal-tempered scale with a drum pattern (kick,
                   snare, hi-hat) at 80-180 beats per minute (a samba at the fast end)
voice              glottal pulse train (f0 85-260 Hz with jitter and intonation) through three vowel
                   formant resonators (Peterson & Barney 1952 formant frequencies), in syllables
bark               dog-like barks: 80-250 ms bursts of harmonic-plus-noise sound at 300-900 Hz
knock              knocks, footsteps, typing: irregular (1-8 per second) noise bursts decaying in 3-20 ms
                   through one resonance (150-2500 Hz)
horn               car or ship horns: square-ish harmonic blasts of one note or two a third apart
                   (f0 250-500 or 70-150 Hz), 0.2-1.5 s each, low-passed at 2-5 kHz
drone              a multirotor drone or a fan: 2-4 rotors' blade-pass harmonics (100-400 Hz) beating
                   against each other, over band-passed noise
=================  ===========================================================================

Levels are drawn per window (RMS, dB re full scale) from each family's range. The split into
:data:`TRAIN_FAMILIES` (heads may train on them), :data:`VALIDATION_FAMILIES` (never trained on;
the open-set gate and threshold are chosen on them) and :data:`HELD_OUT_FAMILIES` (never trained
or chosen on; the no-bird check measures them) is fixed, so that a figure on held-out families
measures sounds the head has not seen.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import signal

from core.errors import ParameterError, check_int
from core.io.audio import pink_noise

__all__ = ["FAMILIES", "TRAIN_FAMILIES", "HELD_OUT_FAMILIES", "VALIDATION_FAMILIES", "nonbird_sound", "nonbird_windows"]


def _level(x: np.ndarray, dbfs: float) -> np.ndarray:
    """Scale ``x`` to an RMS of ``dbfs`` [dB re full scale] (silence stays silence)."""
    r = float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))
    return x if r == 0 else x * (10 ** (dbfs / 20) / r)


def _brown(n: int, rng: np.random.Generator) -> np.ndarray:
    x = np.cumsum(rng.standard_normal(n))
    return signal.sosfilt(signal.butter(1, 0.0005, "highpass", output="sos"), x)  # remove the random walk's drift


def _white(n, sr, rng):
    return rng.standard_normal(n)


def _pink(n, sr, rng):
    return pink_noise(n, rng).astype(np.float64)


def _brown_family(n, sr, rng):
    return _brown(n, rng)


def _hum(n, sr, rng):
    t = np.arange(n) / sr
    f0 = rng.choice([50.0, 60.0]) * rng.uniform(0.995, 1.005)
    buzz = rng.uniform(0.1, 1.0)
    x = np.zeros(n)
    for k in range(1, int(1000 // f0) + 1):
        amp = (1.0 / k) if k <= 2 else buzz * (1.0 / k) * (1.5 if k % 2 else 0.6)
        x += amp * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 2 * np.pi))
    return x + 0.01 * rng.standard_normal(n)


def _rain(n, sr, rng):
    rate = rng.uniform(20, 400)
    x = np.zeros(n)
    hits = rng.uniform(0, n, rng.poisson(rate * n / sr)).astype(int)
    burst = int(0.004 * sr)
    env = np.exp(-np.arange(burst) / (0.0008 * sr))
    for h in hits:
        seg = rng.standard_normal(burst) * env * rng.lognormal(0, 0.8)
        x[h : h + burst] += seg[: n - h]
    hp = signal.butter(2, rng.uniform(800, 3000), "highpass", fs=sr, output="sos")
    return signal.sosfilt(hp, x) + 0.05 * _level(pink_noise(n, rng), -40) / 10 ** (-40 / 20)


def _engine(n, sr, rng):
    t = np.arange(n) / sr
    f0 = rng.uniform(20, 90) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3)))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    x = sum(np.sin(k * phase + rng.uniform(0, 6.3)) / k for k in range(1, 20))
    lp = signal.butter(2, rng.uniform(200, 1500), "lowpass", fs=sr, output="sos")
    return x + rng.uniform(0.2, 1.0) * signal.sosfilt(lp, rng.standard_normal(n)) * 3


def _wind(n, sr, rng):
    lp = signal.butter(2, rng.uniform(100, 800), "lowpass", fs=sr, output="sos")
    gust_lp = signal.butter(1, rng.uniform(0.2, 2.0), "lowpass", fs=sr, output="sos")
    gust = signal.sosfilt(gust_lp, rng.standard_normal(n))
    gust = 0.3 + np.abs(gust) / (np.abs(gust).max() + 1e-12)
    return signal.sosfilt(lp, rng.standard_normal(n)) * gust


def _tone(n, sr, rng):
    t = np.arange(n) / sr
    f = np.exp(rng.uniform(np.log(100), np.log(12_000)))
    return np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3)) + pink_noise(n, rng) * 10 ** (rng.uniform(-60, -30) / 20)


def _envelope(m: int, sr: int, attack_s: float = 0.005, release_s: float = 0.01) -> np.ndarray:
    env = np.ones(m)
    a, r = max(1, min(m // 2, int(attack_s * sr))), max(1, min(m // 2, int(release_s * sr)))
    env[:a] = np.linspace(0, 1, a)
    env[-r:] = np.linspace(1, 0, r)
    return env


def _tone_sequence(n, sr, rng):
    x = np.zeros(n)
    i = int(rng.uniform(0, 0.3) * sr)
    while i < n:
        m = int(rng.uniform(0.08, 0.4) * sr)
        f = np.exp(rng.uniform(np.log(300), np.log(4000)))
        seg = np.sin(2 * np.pi * f * np.arange(m) / sr) * _envelope(m, sr)
        x[i : i + m] += seg[: n - i]
        i += m + int(rng.uniform(0.05, 0.5) * sr)
    return x + 1e-3 * rng.standard_normal(n)


def _siren(n, sr, rng):
    t = np.arange(n) / sr
    lo, hi = rng.uniform(500, 900), rng.uniform(1100, 1800)
    period = rng.uniform(0.3, 4.0)
    sweep = 0.5 * (1 - np.cos(2 * np.pi * t / period)) if rng.random() < 0.5 else (t / period) % 1.0
    f = lo + (hi - lo) * sweep
    phase = 2 * np.pi * np.cumsum(f) / sr
    return np.sin(phase) + 0.3 * np.sin(3 * phase) + 1e-3 * rng.standard_normal(n)


#: Partial ratios of a tuned church bell (hum, prime, tierce, quint, nominal, and upper partials).
BELL_PARTIALS = (0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0)


def _bells(n, sr, rng):
    t = np.arange(n) / sr
    x = np.zeros(n)
    strike = -rng.uniform(0, 1.5)
    while strike < n / sr:
        f0 = rng.uniform(150, 700)
        decay = rng.uniform(1.0, 5.0)
        tt = t - strike
        on = tt >= 0
        for k, ratio in enumerate(BELL_PARTIALS):
            detune = ratio * rng.uniform(0.99, 1.01)
            amp = rng.uniform(0.3, 1.0) / (1 + 0.3 * k)
            x[on] += amp * np.exp(-tt[on] * (1 + 0.5 * k) / decay) * np.sin(2 * np.pi * f0 * detune * tt[on])
        strike += rng.uniform(0.6, 2.0)
    return x + 1e-3 * rng.standard_normal(n)


def _music(n, sr, rng):
    bpm = rng.uniform(80, 180)
    beat = 60.0 / bpm
    root = 110.0 * 2 ** (rng.integers(0, 24) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11])
    x = np.zeros(n)
    start = 0.0
    while start < n / sr:  # chords, two beats each
        a, m = int(start * sr), int(2 * beat * sr)
        notes = root * 2 ** (rng.choice(scale, size=rng.integers(3, 5), replace=False) / 12 + rng.integers(0, 2))
        seg_t = np.arange(min(m, n - a)) / sr
        chord = sum(np.sin(2 * np.pi * k * f * seg_t) / k**1.5 for f in notes for k in range(1, 6))
        x[a : a + len(seg_t)] += chord * np.exp(-seg_t / rng.uniform(0.4, 2.0)) * 0.3
        start += 2 * beat
    drums = np.zeros(n)
    step, k = beat / (4 if bpm > 140 else 2), 0
    while k * step < n / sr:  # kick on beats, snare off-beat, hi-hat on every step
        a = int(k * step * sr)
        m = min(int(0.15 * sr), n - a)
        tt = np.arange(m) / sr
        if k % 4 == 0:
            drums[a : a + m] += np.sin(2 * np.pi * (50 + 100 * np.exp(-tt / 0.03)) * tt) * np.exp(-tt / 0.08)
        if k % 4 == 2:
            drums[a : a + m] += rng.standard_normal(m) * np.exp(-tt / 0.05) * 0.6
        hh = min(int(0.03 * sr), m)
        drums[a : a + hh] += np.diff(rng.standard_normal(hh + 1)) * np.exp(-np.arange(hh) / (0.008 * sr)) * 0.3
        k += 1
    return x + drums * rng.uniform(0.3, 1.5)


#: First three formants [Hz] of vowels (Peterson & Barney 1952, adult male averages).
VOWEL_FORMANTS = ((730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (570, 840, 2410),
                  (660, 1720, 2410), (490, 1350, 1690))


def _resonator(x: np.ndarray, f: float, bw: float, sr: int) -> np.ndarray:
    r = np.exp(-np.pi * bw / sr)
    return signal.lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], x)


def _voice(n, sr, rng):
    x = np.zeros(n)
    i = int(rng.uniform(0, 0.2) * sr)
    f0_base = rng.uniform(85, 260)
    while i < n:
        m = min(int(rng.uniform(0.12, 0.35) * sr), n - i)
        f0 = f0_base * (1 + 0.15 * np.linspace(rng.uniform(-1, 1), rng.uniform(-1, 1), m)) * (1 + 0.01 * rng.standard_normal(m))
        phase = np.cumsum(f0) / sr
        pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
        src = signal.lfilter([1.0], [1, -0.97], pulses) + 0.02 * rng.standard_normal(m)
        formants = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))]
        seg = sum(_resonator(src, f, 60 + 0.05 * f, sr) for f in formants)
        x[i : i + m] += seg * _envelope(m, sr, 0.02, 0.04)
        i += m + int(rng.uniform(0.03, 0.3) * sr)
    return x


def _bark(n, sr, rng):
    x = np.zeros(n)
    i = int(rng.uniform(0, 0.5) * sr)
    while i < n:
        m = min(int(rng.uniform(0.08, 0.25) * sr), n - i)
        tt = np.arange(m) / sr
        f0 = rng.uniform(300, 900) * (1 - 0.3 * tt / tt[-1] if m > 1 else 1)
        phase = 2 * np.pi * np.cumsum(f0) / sr
        seg = sum(np.sin(k * phase) / k for k in range(1, 8)) + rng.uniform(0.3, 1.0) * rng.standard_normal(m)
        x[i : i + m] += _resonator(seg, rng.uniform(600, 1500), 400, sr) * _envelope(m, sr, 0.005, 0.05)
        i += m + int(rng.uniform(0.15, 1.0) * sr)
    return x


def _knock(n, sr, rng):
    """Knocks, footsteps, typing: irregular decaying resonant bursts."""
    x = np.zeros(n)
    rate = rng.uniform(1, 8)
    t = rng.exponential(1 / rate)
    while t < n / sr:
        i = int(t * sr)
        m = min(int(0.08 * sr), n - i)
        tt = np.arange(m) / sr
        burst = rng.standard_normal(m) * np.exp(-tt / rng.uniform(0.003, 0.02))
        x[i:i + m] += _resonator(burst, rng.uniform(150, 2500), rng.uniform(50, 400), sr) * rng.uniform(0.3, 1.0)
        t += rng.exponential(1 / rate) + 0.03
    return x + 1e-3 * rng.standard_normal(n)

def _horn(n, sr, rng):
    """Car or ship horns: steady harmonic blasts (one or two notes a third apart), 0.2-1.5 s each."""
    x = np.zeros(n)
    i = int(rng.uniform(0, 0.5) * sr)
    f0 = rng.uniform(250, 500) if rng.random() < 0.7 else rng.uniform(70, 150)
    notes = [f0] + ([f0 * 2 ** (rng.choice([3, 4]) / 12)] if rng.random() < 0.6 else [])
    while i < n:
        m = min(int(rng.uniform(0.2, 1.5) * sr), n - i)
        tt = np.arange(m) / sr
        seg = sum(np.sign(np.sin(2 * np.pi * f * tt)) * 0.5 + np.sin(2 * np.pi * 2 * f * tt) * 0.2 for f in notes)
        lp = signal.butter(2, rng.uniform(2000, 5000), "lowpass", fs=sr, output="sos")
        x[i:i + m] += signal.sosfilt(lp, seg) * _envelope(m, sr, 0.02, 0.03)
        i += m + int(rng.uniform(0.1, 1.0) * sr)
    return x + 1e-3 * rng.standard_normal(n)

def _drone(n, sr, rng):
    """A multirotor drone or fan: 2-4 rotors' blade-pass harmonics (100-400 Hz) beating, over broadband noise."""
    t = np.arange(n) / sr
    x = np.zeros(n)
    base = rng.uniform(100, 400)
    for _ in range(rng.integers(2, 5)):
        f = base * rng.uniform(0.97, 1.03) * (1 + 0.02 * np.sin(2 * np.pi * rng.uniform(0.1, 1) * t + rng.uniform(0, 6.3)))
        ph = 2 * np.pi * np.cumsum(f) / sr
        x += sum(np.sin(k * ph + rng.uniform(0, 6.3)) / k for k in range(1, 12))
    bp = signal.butter(2, [rng.uniform(300, 1000), rng.uniform(3000, 8000)], "bandpass", fs=sr, output="sos")
    return x + rng.uniform(0.5, 3) * signal.sosfilt(bp, rng.standard_normal(n))


#: family -> (generator(n_samples, sample_rate, rng) -> float64 waveform, (low, high) RMS level range [dBFS])
FAMILIES: dict[str, tuple[Callable, tuple[float, float]]] = {
    "white": (_white, (-80.0, -20.0)),
    "pink": (_pink, (-80.0, -20.0)),
    "brown": (_brown_family, (-70.0, -15.0)),
    "hum": (_hum, (-60.0, -15.0)),
    "rain": (_rain, (-50.0, -15.0)),
    "engine": (_engine, (-50.0, -10.0)),
    "wind": (_wind, (-50.0, -10.0)),
    "tone": (_tone, (-40.0, -6.0)),
    "tone_sequence": (_tone_sequence, (-40.0, -10.0)),
    "siren": (_siren, (-40.0, -10.0)),
    "bells": (_bells, (-40.0, -10.0)),
    "music": (_music, (-40.0, -10.0)),
    "voice": (_voice, (-40.0, -10.0)),
    "bark": (_bark, (-40.0, -10.0)),
    "knock": (_knock, (-40.0, -10.0)),
    "horn": (_horn, (-40.0, -10.0)),
    "drone": (_drone, (-50.0, -10.0)),
}
#: Families the heads may train on (noise, machines, weather, steady tones).
TRAIN_FAMILIES = ("white", "pink", "brown", "hum", "rain", "engine", "wind", "tone")
#: Families never trained on: the no-bird check's held-out sounds (sequences, sweeps, bells, music, voices, barks).
HELD_OUT_FAMILIES = ("tone_sequence", "siren", "bells", "music", "voice", "bark")
#: Families neither trained on nor in the held-out check: only the open-set gate and threshold are chosen on them
#: (:func:`core.training.open_set.bird_free_validation`).
VALIDATION_FAMILIES = ("knock", "horn", "drone")


def nonbird_sound(family: str, n_samples: int, sample_rate: int, rng: np.random.Generator,
                  level_dbfs: float | None = None) -> np.ndarray:
    """One window of a synthetic non-bird sound.

    Parameters
    ----------
    family : str
        A key of :data:`FAMILIES` (see the module docstring for each model).
    n_samples : int >= 1 [samples]
    sample_rate : int >= 8000 [Hz]
    rng : numpy.random.Generator
    level_dbfs : float, optional
        RMS level [dB re full scale]; default drawn uniformly from the family's range.

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32]
        Full-scale amplitude, clipped to [-1, 1].

    Raises
    ------
    ParameterError
        Unknown family, bad ``n_samples`` or ``sample_rate``.
    """
    if family not in FAMILIES:
        raise ParameterError(f"unknown non-bird family {family!r}; choose from {', '.join(FAMILIES)}")
    check_int("n_samples", n_samples, 1)
    check_int("sample_rate", sample_rate, 8000)
    make, (lo, hi) = FAMILIES[family]
    x = make(n_samples, sample_rate, rng)
    x = _level(np.asarray(x, np.float64), rng.uniform(lo, hi) if level_dbfs is None else float(level_dbfs))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def nonbird_windows(families, per_family: int, n_samples: int, sample_rate: int, *, seed: int = 0
                    ) -> tuple[np.ndarray, list[str]]:
    """``per_family`` windows of each family, and each window's family.

    Parameters
    ----------
    families : sequence of str
        Keys of :data:`FAMILIES`.
    per_family : int >= 0
    n_samples : int >= 1 [samples]
    sample_rate : int [Hz]
    seed : int
        Seeds one generator per family (``seed`` and the family's index in :data:`FAMILIES`),
        so a family's windows do not depend on which other families are drawn.

    Returns
    -------
    (np.ndarray [shape=(len(families) * per_family, n_samples), dtype=float32], list of str)

    Raises
    ------
    ParameterError
        Unknown family or bad counts.
    """
    check_int("per_family", per_family, 0)
    order = list(FAMILIES)
    waves, names = [], []
    for family in families:
        if family not in FAMILIES:
            raise ParameterError(f"unknown non-bird family {family!r}; choose from {', '.join(FAMILIES)}")
        rng = np.random.default_rng([int(seed), order.index(family)])
        for _ in range(per_family):
            waves.append(nonbird_sound(family, n_samples, sample_rate, rng))
            names.append(family)
    stacked = np.stack(waves) if waves else np.zeros((0, n_samples), np.float32)
    return stacked.astype(np.float32), names
