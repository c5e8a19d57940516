"""A psychoacoustic budget: keep a perturbation under the masking threshold of the clip it is added to.

"45 dB below the song" is not the same as "inaudible": a quiet hiss in a gap is
heard, a louder change right under a loud note is not. Qin et al. 2019
("Imperceptible, robust, and targeted adversarial examples for automatic speech
recognition", ICML, Sec. 3 and their released code) bound a perturbation by the
*global masking threshold* of the clean audio, from the MPEG-1 psychoacoustic
model 1 as described by Lin & Abdulla 2015 ("Principles of psychoacoustics", in
*Audio Watermark*, Springer) and Painter & Spanias 2000 ("Perceptual coding of
digital audio", Proc. IEEE 88(4)). Per STFT frame (Hann window, ``n_fft`` 2048,
hop 512, any sample rate):

1. Power spectral density, normalised so the loudest (frame, bin) of the clip is
   96 dB (Qin et al. Eq. 4):
   ``p(k) = 10 log10 |sqrt(8/3) / N * STFT(k)|^2``, ``P(k) = 96 - max p + p(k)``.
   The perturbation's PSD uses the *clean clip's* offset, so both are on one scale.
2. Bark scale ``z(f) = 13 arctan(0.00076 f) + 3.5 arctan((f / 7500)^2)``, absolute
   threshold of hearing (Terhardt 1979, with the -12 dB offset of Qin et al.'s code)
   ``ATH(f) = 3.64 (f/1000)^-0.8 - 6.5 exp(-0.6 (f/1000 - 3.3)^2) + 1e-3 (f/1000)^4 - 12``
   [dB], applied above 1 Bark.
3. Maskers: local maxima of ``P``; power of three neighbouring bins
   ``P_TM = 10 log10(10^(P(k-1)/10) + 10^(P(k)/10) + 10^(P(k+1)/10))``; kept if above
   the ATH and the strongest within 0.5 Bark (all maxima treated as tonal, as Qin et al.).
4. Each masker's threshold, two-slope spreading function (Qin et al. Eq. 5-6):
   ``T(i, j) = P_TM(i) + Delta(i) + SF(i, j)``, ``Delta(i) = -6.025 - 0.275 z(i)``,
   ``SF = 27 dz`` below the masker (``dz = z(j) - z(i) < 0``) and
   ``(-27 + 0.37 max(P_TM(i) - 40, 0)) dz`` above it.
5. Global threshold ``theta(j) = 10 log10(10^(ATH(j)/10) + sum_i 10^(T(i, j)/10))`` [dB].

The budget (:func:`project_under_threshold`) scales every STFT cell of the
perturbation down to ``theta - margin_db`` where it exceeds it and resynthesises
(inverse STFT, overlap-add), iterated because a modified STFT is not exactly the
STFT of its resynthesis; :func:`masking_excess` reports what remains above.

**The margin.** The threshold is a model of an average listener on good playback:
Qin et al. 2019 bound the perturbation by the threshold itself (0 dB), and
Schönherr et al. 2019 ("Adversarial attacks against automatic speech recognition
systems via psychoacoustic hiding", NDSS) make the distance to their hearing
thresholds a parameter of the attack (their margin lambda in dB, an option of the
authors' released code, RUB-SysSec/dompteur ``attack.py``). No source read for
this project states 6 dB as a standard safety margin. Eisenhofer et al. 2021
("Dompteur: Taming audio adversarial examples", USENIX Security) shift the same
hearing thresholds by Phi dB in their defence and evaluate Phi = 0, 6 and 12 dB
(their published listening-test samples), so 6 dB steps are how that literature
moves a threshold. The default :data:`DEFAULT_MARGIN_DB` = 6 dB halves the allowed
amplitude in every cell (a quarter of the power), a hedge against listeners who
hear better than the model and against the model's own error; it is a choice, not
a measured audibility limit, so the threat study reports 0, 6 and 10 dB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import argrelextrema

from core.errors import ParameterError

__all__ = ["N_FFT", "HOP_LENGTH", "F_MAX_HZ", "DEFAULT_MARGIN_DB", "check_margin_db", "bark", "absolute_threshold_db", "MaskingThreshold", "masking_threshold",
           "perturbation_psd_db", "project_under_threshold", "masking_excess", "MaskedPGD"]

N_FFT = 2048
HOP_LENGTH = 512
_SCALE = np.sqrt(8.0 / 3.0) / N_FFT  # Hann window power correction and 1/N (Qin et al. Eq. 4)
#: Distance [dB] kept below the masking threshold by default (see the module docstring for the sources).
DEFAULT_MARGIN_DB = 6.0


def bark(f_hz: np.ndarray) -> np.ndarray:
    """Bark scale of frequencies [Hz] (Zwicker & Terhardt 1980)."""
    f = np.asarray(f_hz, dtype=np.float64)
    return 13.0 * np.arctan(0.00076 * f) + 3.5 * np.arctan((f / 7500.0) ** 2)


def absolute_threshold_db(f_hz: np.ndarray) -> np.ndarray:
    """Absolute threshold of hearing [dB on the 96 dB scale] (Terhardt 1979, -12 dB as in Qin et al.'s code); -inf below 1 Bark."""
    f = np.maximum(np.asarray(f_hz, dtype=np.float64), 1.0) / 1000.0
    ath = 3.64 * f ** -0.8 - 6.5 * np.exp(-0.6 * (f - 3.3) ** 2) + 1e-3 * f ** 4 - 12.0
    return np.where(bark(f_hz) > 1.0, ath, -np.inf)


def _stft(x: torch.Tensor) -> torch.Tensor:
    return torch.stft(x, N_FFT, HOP_LENGTH, window=torch.hann_window(N_FFT, dtype=x.dtype, device=x.device),
                      center=True, return_complex=True)


def _psd_db(spec: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10((spec.abs() * _SCALE) ** 2 + 1e-20)


@dataclass
class MaskingThreshold:
    """The global masking threshold of a batch of clean clips.

    Attributes
    ----------
    theta_db : np.ndarray [shape=(batch, n_fft // 2 + 1, n_frames)], dB on the clip's 96 dB scale
    offset_db : np.ndarray [shape=(batch,)]
        ``96 - max p`` of each clip (added to any PSD to put it on that scale).
    sample_rate : int [Hz]
    """

    theta_db: np.ndarray
    offset_db: np.ndarray
    sample_rate: int


def _frame_threshold(P: np.ndarray, z: np.ndarray, ath: np.ndarray) -> np.ndarray:
    idx = argrelextrema(P, np.greater)[0]
    idx = idx[(idx > 0) & (idx < len(P) - 1)]
    if len(idx):
        p_tm = 10 * np.log10(10 ** (P[idx - 1] / 10) + 10 ** (P[idx] / 10) + 10 ** (P[idx + 1] / 10))
        zi = z[idx]
        near = np.abs(zi[:, None] - zi[None, :]) < 0.5
        strongest = (np.where(near, p_tm[None, :], -np.inf).max(1) <= p_tm)
        keep = strongest & (p_tm >= ath[idx])
        p_tm, zi = p_tm[keep], zi[keep]
    else:
        p_tm, zi = np.zeros(0), np.zeros(0)
    total = 10 ** (ath / 10)
    if len(p_tm):
        dz = z[None, :] - zi[:, None]
        upper = -27.0 + 0.37 * np.maximum(p_tm - 40.0, 0.0)
        sf = np.where(dz <= 0, 27.0 * dz, upper[:, None] * dz)
        t = p_tm[:, None] + (-6.025 - 0.275 * zi)[:, None] + sf
        total = total + (10 ** (t / 10)).sum(0)
    return 10 * np.log10(total + 1e-30)


#: Above this frequency [Hz] the budget allows no perturbation (see :func:`masking_threshold`).
F_MAX_HZ = 16_000.0


def masking_threshold(waveform, sample_rate: int, *, f_max_hz: float = F_MAX_HZ) -> MaskingThreshold:
    """Global masking threshold of each clip (see the module docstring for the model and its sources).

    Above ``f_max_hz`` the threshold is set to -300 dB (no perturbation allowed): the
    absolute threshold of hearing climbs steeply there (past 100 dB at 20 kHz on this
    scale), so the model would let an attack put unbounded energy where people hear
    little and the models hardly listen (BirdNET's input stops at 15 kHz), which made
    a first measurement's SNR (-6.6 dB at 48 kHz) meaningless. Qin et al. worked at
    16 kHz, where the question never arises.

    Parameters
    ----------
    waveform : np.ndarray or torch.Tensor [shape=(n_samples,) or (batch, n_samples)], full-scale amplitude
    sample_rate : int [Hz]
    f_max_hz : float [Hz]

    Returns
    -------
    MaskingThreshold

    Raises
    ------
    ParameterError
        A clip shorter than one frame (2048 samples), or a silent clip (no threshold to hide under).
    """
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32) if not isinstance(waveform, torch.Tensor) else waveform)
    x = x.detach().double().cpu()
    x = x[None] if x.ndim == 1 else x
    if x.shape[-1] < N_FFT:
        raise ParameterError(f"a clip needs at least {N_FFT} samples for the masking threshold, got {x.shape[-1]}")
    p = _psd_db(_stft(x)).numpy()  # (batch, bins, frames)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / sample_rate)
    z, ath = bark(freqs), absolute_threshold_db(freqs)
    theta = np.empty_like(p)
    offsets = np.empty(len(p))
    for b in range(len(p)):
        if not np.isfinite(p[b]).all() or p[b].max() <= -190:
            raise ParameterError("a silent clip has no masking threshold")
        offsets[b] = 96.0 - p[b].max()
        P = p[b] + offsets[b]
        for t in range(P.shape[1]):
            theta[b, :, t] = _frame_threshold(P[:, t], z, ath)
    theta[:, freqs > f_max_hz, :] = -300.0
    return MaskingThreshold(theta_db=theta, offset_db=offsets, sample_rate=int(sample_rate))


def perturbation_psd_db(delta: torch.Tensor, threshold: MaskingThreshold) -> torch.Tensor:
    """PSD of perturbations ``(batch, n_samples)`` on their clean clips' 96 dB scales, ``(batch, bins, frames)`` [dB]."""
    off = torch.as_tensor(threshold.offset_db, dtype=delta.dtype, device=delta.device)[:, None, None]
    return _psd_db(_stft(delta)) + off


def check_margin_db(margin_db) -> float:
    """``margin_db`` as a float, or :class:`ParameterError` if it is not a finite number in [0, 60] dB."""
    try:
        m = float(margin_db)
    except (TypeError, ValueError):
        raise ParameterError(f"margin_db must be a number of dB, got {margin_db!r}") from None
    if not (np.isfinite(m) and 0.0 <= m <= 60.0):
        raise ParameterError(f"margin_db must be in [0, 60] dB, got {margin_db!r}")
    return m


def project_under_threshold(delta: torch.Tensor, threshold: MaskingThreshold, *, margin_db: float = 0.0,
                            iterations: int = 3) -> torch.Tensor:
    """Scale every STFT cell of ``delta`` down to ``theta - margin_db`` where it exceeds it, and resynthesise.

    Parameters
    ----------
    delta : torch.Tensor [shape=(batch, n_samples)], full-scale amplitude
    threshold : MaskingThreshold
        Of the clean clips ``delta`` is added to.
    margin_db : float in [0, 60] [dB]
        Extra distance below the threshold (0: up to the threshold itself).
    iterations : int
        Scale-and-resynthesise rounds.

    Returns
    -------
    torch.Tensor, ``delta``'s shape and dtype (no gradient)

    Raises
    ------
    ParameterError
        ``margin_db`` outside [0, 60] dB or not a number.
    """
    margin_db = check_margin_db(margin_db)
    theta = torch.as_tensor(threshold.theta_db, dtype=delta.dtype, device=delta.device) - margin_db
    off = torch.as_tensor(threshold.offset_db, dtype=delta.dtype, device=delta.device)[:, None, None]
    window = torch.hann_window(N_FFT, dtype=delta.dtype, device=delta.device)
    d = delta.detach()
    n = d.shape[-1]
    for _ in range(iterations):
        spec = _stft(d)
        excess = _psd_db(spec) + off - theta
        spec = spec * torch.pow(10.0, -excess.clamp(min=0) / 20)
        d = torch.istft(spec, N_FFT, HOP_LENGTH, window=window, center=True, length=n)
    return d


def masking_excess(delta, threshold: MaskingThreshold) -> dict:
    """How far a perturbation pokes above the masking threshold, per clip.

    Only bins from 1 Bark (about 100 Hz) to :data:`F_MAX_HZ` count: below 1 Bark the
    absolute threshold is undefined, above ``F_MAX_HZ`` nothing is allowed (the
    SNR shows what leaks there).

    Returns
    -------
    dict of np.ndarray [shape=(batch,)]
        ``share_above`` (share of (bin, frame) cells where the perturbation's PSD
        exceeds the threshold), ``share_above_3db`` (by more than 3 dB) and
        ``p99_excess_db`` (99th percentile of PSD - threshold over cells, dB; <= 0:
        at least 99 % of cells under it).
    """
    d = torch.as_tensor(delta).detach().double()
    d = d[None] if d.ndim == 1 else d
    ex = (perturbation_psd_db(d, threshold) - torch.as_tensor(threshold.theta_db, dtype=d.dtype)).numpy()
    f = np.fft.rfftfreq(N_FFT, 1.0 / threshold.sample_rate)
    heard = (bark(f) > 1.0) & (f <= F_MAX_HZ)
    ex = ex[:, heard, :].reshape(len(ex), -1)
    return {"share_above": (ex > 0).mean(1), "share_above_3db": (ex > 3).mean(1), "p99_excess_db": np.percentile(ex, 99, axis=1)}


class MaskedPGD:
    """PGD whose perturbation stays under the clean clip's masking threshold (a psychoacoustic budget).

    Each step is PGD's (Madry et al. 2018) inside an L-inf cap ``eps``, followed by
    :func:`project_under_threshold` (``margin_db`` below the threshold, default
    :data:`DEFAULT_MARGIN_DB`, see the module docstring). The budget is
    the threshold itself; ``eps`` only bounds the search. Where Qin et al. 2019 add
    the threshold as a penalty to the loss (their stage 2), this keeps it as a hard
    constraint, the way eps and SNR are budgets elsewhere here; what remains above
    it after resynthesis is reported by :func:`masking_excess`.

    Parameters
    ----------
    eps : float in (0, 1] [full-scale amplitude]
        L-inf cap of the search (default 0.05).
    margin_db : float in [0, 60] [dB]
        Distance kept below the masking threshold (default 6 dB).
    steps : int
    seed : int
    objective : Objective, optional
        Default the margin loss (push the clean top-1 below the runner-up).

    Raises
    ------
    ParameterError
        Bad eps, margin_db, steps or seed (as :class:`core.attacks.PGD`).
    """

    name = "masked-pgd"

    final_iterations = 30

    def __init__(self, *, eps: float = 0.05, margin_db: float = DEFAULT_MARGIN_DB, steps: int = 50, seed: int = 0,
                 objective=None) -> None:
        from core.attacks import PGD
        from core.attacks.objectives import OutputMargin

        if not eps > 0:
            raise ParameterError(f"eps (the search cap) must be > 0, got {eps}")
        self.margin_db = check_margin_db(margin_db)
        self.pgd = PGD(eps=eps, steps=steps, seed=seed, objective=objective or OutputMargin())
        self.threshold: MaskingThreshold | None = None
        pgd_project = self.pgd.project

        def project(x, x_adv, eps_rows, mask):
            x_adv = pgd_project(x, x_adv, eps_rows, mask)
            delta = project_under_threshold(x_adv - x, self.threshold, margin_db=self.margin_db)
            return (x + delta).clamp(*self.pgd.bounds)

        self.pgd.project = project

    def describe(self) -> dict:
        return {**self.pgd.describe(), "attack": self.name, "budget": "masking threshold", "margin_db": self.margin_db,
                "eps_cap": self.pgd.eps}

    def __call__(self, model, waveform: torch.Tensor, labels=None, *, mask=None) -> torch.Tensor:
        """Adversarial waveforms ``(batch, n_samples)``; see :class:`core.attacks.base.Attack`.

        After the last step the perturbation is projected again with
        ``final_iterations`` rounds (3 per step during the search), which brings 99 % of
        cells within a fraction of a dB of the threshold.
        """
        self.threshold = masking_threshold(waveform, int(model.config.frontend.sample_rate))
        adv = self.pgd(model, waveform, labels, mask=mask)
        delta = project_under_threshold(adv - waveform, self.threshold, margin_db=self.margin_db, iterations=self.final_iterations)
        if mask is not None:
            delta = delta * mask
        return (waveform + delta).clamp(*self.pgd.bounds).detach()
