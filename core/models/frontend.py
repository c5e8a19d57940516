"""Log-mel front end as a differentiable ``nn.Module`` in plain torch.

``torch.stft`` + a Slaney mel filterbank (built once by ``librosa.filters.mel``
and stored as a non-persistent buffer) + power-to-dB + a fixed z-normalisation.
Gradients flow from the features back to the waveform, so waveform-domain
attacks are possible and their results are audible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import librosa
import numpy as np
import torch
from torch import nn

from core.errors import ParameterError

__all__ = [
    "mel_band_centres",
    "WindowedConfig","FrontendConfig", "LogMel"]


@dataclass(frozen=True)
class FrontendConfig:
    """Parameters of the log-mel front end.

    Attributes
    ----------
    sample_rate : int [Hz]
        32 kHz as in AudioProtoPNet (Heinrich et al. 2025).
    n_fft : int [samples]
        FFT size (Hann window of the same length).
    hop_length : int [samples]
    n_mels : int
    f_min, f_max : float [Hz]
        ``f_max`` defaults to 14 kHz, below the lossy-codec cut-off of the data:
        on xc9 the MP3 low-pass sits at 15.5 kHz (median over training
        recordings; 5 % of them below 14.6 kHz, 3 % below 14 kHz). Bands above it
        hold only what the encoder left, near -75 to -95 dB, and an earlier
        front end up to 16 kHz put 10 of 45 prototypes there.
    amin : float
        Power floor before the log: silence maps to ``10 log10(amin)`` dB, never -inf.
    floor_db : float or None [dB, mel power re 1.0]
        Additive floor: ``10 log10(P + 10**(floor_db/10))``. A band far below the
        floor becomes constant, so a tiny perturbation cannot move a near-empty
        band by tens of dB (with ``band_median`` such a band would otherwise be
        stretched to the scale of a loud one). -70 dB lies below the 5th
        percentile of 1-6 kHz background medians of xc9 training recordings
        (-58 to -64 dB). ``None``: only ``amin``.
    normalization : {"band_median", "fixed"}
        ``band_median``: subtract, in every mel band, the median over time of that
        band (per clip), then divide by ``std_db``. This removes the stationary
        background and the recording chain's gain and colouration (median
        clipping, as in classic bird-detection front ends), and is safe on silence
        (a constant band maps to 0). On xc9 it raised test cmAP of the same
        backbone from 0.28-0.44 to 0.58 after 8 epochs (README).
        ``fixed``: ``(x - mean_db) / std_db`` with fixed dataset statistics.
    mean_db, std_db : float [dB]
        Fixed statistics (xc9 training split: mean -45.1 dB, std 19.5 dB).
    """

    sample_rate: int = 32_000  # [Hz]
    n_fft: int = 1024  # [samples]
    hop_length: int = 320  # [samples]
    n_mels: int = 128
    f_min: float = 50.0  # [Hz]
    f_max: float = 14_000.0  # [Hz]
    amin: float = 1e-10  # power floor before the log
    floor_db: float | None = -70.0  # [dB re mel power 1.0], additive floor
    mean_db: float = -45.0
    std_db: float = 20.0
    normalization: str = "band_median"

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.hop_length <= 0 or self.n_mels <= 0:
            raise ParameterError(f"sample_rate, n_fft, hop_length, n_mels must be > 0, got {self}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ParameterError(f"need 0 <= f_min < f_max <= sample_rate/2, got f_min={self.f_min}, f_max={self.f_max}")
        if self.normalization not in ("band_median", "fixed"):
            raise ParameterError(f"normalization must be 'band_median' or 'fixed', got {self.normalization!r}")
        if self.std_db <= 0 or self.amin <= 0:
            raise ParameterError(f"std_db and amin must be > 0, got {self.std_db}, {self.amin}")

    def n_frames(self, n_samples: int) -> int:
        """Number of STFT frames for ``n_samples`` (centred frames)."""
        return 1 + n_samples // self.hop_length


class LogMel(nn.Module):
    """Waveform -> normalised log-mel spectrogram.

    Equivalent to ``librosa.power_to_db(librosa.feature.melspectrogram(y, sr=..., n_fft=...,
    hop_length=..., n_mels=..., fmin=..., fmax=..., power=2, center=True, pad_mode="constant"),
    ref=1.0, amin=amin, top_db=None)`` (with ``floor_db`` None; otherwise the floor's power
    is added before the log), then normalised (see ``FrontendConfig.normalization``).

    Parameters
    ----------
    config : FrontendConfig

    Shapes
    ------
    input : torch.Tensor [shape=(batch, n_samples), dtype=float32], full-scale amplitude
    output : torch.Tensor [shape=(batch, 1, n_mels, n_frames)]
    """

    def __init__(self, config: FrontendConfig) -> None:
        super().__init__()
        self.config = config
        mel = librosa.filters.mel(
            sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max
        )
        self.register_buffer("mel_basis", torch.from_numpy(mel).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(config.n_fft, periodic=True), persistent=False)

    def power_mel(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram ``(batch, n_mels, n_frames)`` (no log)."""
        if waveform.ndim != 2:
            raise ParameterError(f"waveform must be (batch, n_samples), got shape {tuple(waveform.shape)}")
        spec = torch.stft(
            waveform,
            n_fft=self.config.n_fft,
            hop_length=self.config.hop_length,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        return torch.matmul(self.mel_basis, power)

    def db(self, waveform: torch.Tensor) -> torch.Tensor:
        """Log-mel in dB (ref 1.0, after the floor), ``(batch, n_mels, n_frames)``."""
        power = self.power_mel(waveform)
        if self.config.floor_db is not None:
            power = power + 10.0 ** (self.config.floor_db / 10.0)
        return 10.0 * torch.log10(torch.clamp(power, min=self.config.amin))

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        db = self.db(waveform)
        if self.config.normalization == "band_median":
            x = (db - db.median(dim=-1, keepdim=True).values) / self.config.std_db
        else:
            x = (db - self.config.mean_db) / self.config.std_db
        return x.unsqueeze(1)


class WindowedConfig:
    """Mixin of the model configs with ``clip_seconds`` [s] and a ``frontend``: window length and a dict round trip."""

    @property
    def window_samples(self) -> int:
        """Samples of one analysis window: ``clip_seconds`` times the front end's ``sample_rate`` [Hz], rounded."""
        return int(round(self.clip_seconds * self.frontend.sample_rate))

    def to_dict(self) -> dict:
        """The config as plain Python types (:func:`dataclasses.asdict`), as a checkpoint's JSON stores it."""
        return asdict(self)


def mel_band_centres(n_mels: int, f_min: float, f_max: float, *, htk: bool = False) -> np.ndarray:
    """Centre frequency [Hz] of each band of a mel filterbank, ``(n_mels,)`` float64, lowest band first.

    Band ``i`` of ``librosa.filters.mel`` is a triangle over the mel points ``i`` to ``i + 2`` of ``n_mels + 2``
    points evenly spaced in mel between ``f_min`` and ``f_max`` [Hz]; its centre is point ``i + 1`` (Slaney's mel
    scale, or HTK's with ``htk``). ``librosa.mel_frequencies(n_mels)`` alone would put the last centre at ``f_max``.
    """
    return librosa.mel_frequencies(n_mels=n_mels + 2, fmin=f_min, fmax=f_max, htk=htk)[1:-1]
