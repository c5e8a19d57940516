"""Audio I/O: decode, down-mix, resample, cut into windows, encode WAV bytes.

Decoding uses soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, MP3) and falls back
to librosa/audioread for anything libsndfile cannot read. Resampling uses soxr
(through librosa), the high-quality resampler librosa itself defaults to.
"""

from __future__ import annotations

import io
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import librosa
import numpy as np
import soundfile as sf

from core.errors import AudioLoadError, ParameterError

__all__ = [
    "MAX_DURATION_S",
    "AudioClip",
    "load_audio",
    "to_mono",
    "resample",
    "frame_windows",
    "window_starts",
    "wav_bytes",
]

#: Longest audio accepted by :func:`load_audio` [seconds]. Longer input is
#: refused with :class:`AudioLoadError` instead of exhausting memory.
MAX_DURATION_S = 600.0


@dataclass(frozen=True)
class AudioClip:
    """A decoded, mono, resampled recording.

    Attributes
    ----------
    waveform : np.ndarray [shape=(n_samples,), dtype=float32]
        Samples in full-scale amplitude, nominally in [-1, 1].
    sample_rate : int > 0 [Hz]
    source_sample_rate : int > 0 [Hz]
        Rate of the file before resampling.
    source_channels : int > 0
        Channel count of the file before down-mixing.
    name : str
        File name (no directory) or a caller-given label.
    n_nonfinite : int >= 0
        NaN or inf samples of the file (after down-mixing), replaced by 0.
    """

    waveform: np.ndarray
    sample_rate: int
    source_sample_rate: int
    source_channels: int
    name: str
    n_nonfinite: int = 0

    @property
    def duration_s(self) -> float:
        """Duration [seconds]."""
        return self.waveform.shape[0] / self.sample_rate

    def notes(self) -> list[str]:
        """Plain-language warnings about the content a user should know of (empty when none).

        Non-finite samples replaced by 0, a silent clip, samples beyond full scale
        (attacks clip to [-1, 1]), a DC offset.
        """
        out = []
        x = self.waveform
        if self.n_nonfinite:
            out.append(f"{self.n_nonfinite} NaN/inf samples were replaced by 0.")
        peak = float(np.abs(x).max()) if x.size else 0.0
        if peak == 0.0:
            out.append("The clip is silent (all samples are 0): predictions are meaningless and any perturbation has SNR -inf dB.")
        elif peak > 1.0:
            out.append(f"Samples exceed full scale (peak {peak:.2f}); attacks clip the clip to [-1, 1] first.")
        mean = float(x.mean()) if x.size else 0.0
        if peak > 0 and abs(mean) > 0.1 * peak:
            out.append(f"The clip has a DC offset of {mean:+.3f} (full scale).")
        return out


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Average channels into one.

    Parameters
    ----------
    samples : np.ndarray [shape=(n_samples,) or (n_samples, n_channels)]

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32]
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioLoadError(f"audio must be 1-D or 2-D (samples, channels), got shape {samples.shape}")
    return samples.mean(axis=1, dtype=np.float32)


def resample(waveform: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Resample a mono waveform with soxr (high quality).

    Parameters
    ----------
    waveform : np.ndarray [shape=(n_samples,)]
    orig_sr, target_sr : int > 0 [Hz]

    Returns
    -------
    np.ndarray [shape=(round(n_samples * target_sr / orig_sr),), dtype=float32]
    """
    if orig_sr <= 0 or target_sr <= 0:
        raise ParameterError(f"sample rates must be > 0, got orig_sr={orig_sr}, target_sr={target_sr}")
    if orig_sr == target_sr:
        return np.asarray(waveform, dtype=np.float32)
    out = librosa.resample(np.asarray(waveform, dtype=np.float32), orig_sr=orig_sr, target_sr=target_sr, res_type="soxr_hq")
    return out.astype(np.float32, copy=False)


def _reason(exc: Exception) -> str:
    """libsndfile's reason without the object it was given (``Error opening <_io.BytesIO object at 0x...>: ...``)."""
    text = str(exc)
    if text.startswith("Error opening") and ": " in text:
        text = text.split(": ", 1)[1]
    return text.strip() or type(exc).__name__


def _decode(source: str | os.PathLike | bytes | BinaryIO, name: str, max_duration_s: float) -> tuple[np.ndarray, int]:
    """Decode to (samples (n, channels) float32, sample_rate)."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise AudioLoadError(f"{name}: the file is empty (0 bytes)")
        data = bytes(source)
        opener = lambda: io.BytesIO(data)  # noqa: E731
    else:
        if not str(source).strip():
            raise AudioLoadError("no audio file given (an empty path)")
        path = Path(source)
        if not path.is_file():
            raise AudioLoadError(f"{name}: no such file: {path}")
        if path.stat().st_size == 0:
            raise AudioLoadError(f"{name}: the file is empty (0 bytes)")
        opener = lambda: str(path)  # noqa: E731
    try:
        with sf.SoundFile(opener()) as f:
            sr = int(f.samplerate)
            if f.frames > 0 and f.frames / max(sr, 1) > max_duration_s:
                raise AudioLoadError(
                    f"{name}: {f.frames / sr:.0f} s is longer than the limit of {max_duration_s:.0f} s; "
                    "cut the recording first"
                )
            samples = f.read(dtype="float32", always_2d=True)
    except AudioLoadError:
        raise
    except Exception as sf_error:  # libsndfile could not read it: try audioread via librosa
        try:
            src = opener()
            if isinstance(src, io.BytesIO):
                raise AudioLoadError(f"{name}: not a readable audio file ({_reason(sf_error)})") from sf_error
            with warnings.catch_warnings():  # librosa warns about its audioread fallback; the error below is enough
                warnings.simplefilter("ignore")
                samples, sr = librosa.load(src, sr=None, mono=False, duration=max_duration_s + 1)
            samples = np.atleast_2d(samples).T.astype(np.float32)
        except AudioLoadError:
            raise
        except Exception as other:
            raise AudioLoadError(f"{name}: not a readable audio file ({_reason(sf_error)})") from other
    if sr <= 0:
        raise AudioLoadError(f"{name}: invalid sample rate {sr}")
    if samples.shape[0] == 0:
        raise AudioLoadError(f"{name}: the file holds no samples")
    if samples.shape[0] / sr > max_duration_s:
        raise AudioLoadError(f"{name}: longer than the limit of {max_duration_s:.0f} s; cut the recording first")
    return samples, sr


def load_audio(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    sample_rate: int = 32_000,
    max_duration_s: float | None = None,
    offset_s: float = 0.0,
    duration_s: float | None = None,
    name: str | None = None,
) -> AudioClip:
    """Load an audio file or buffer as a mono float32 waveform at ``sample_rate``.

    Parameters
    ----------
    source : path, bytes or binary file object
        WAV, FLAC, OGG or MP3 (anything libsndfile or audioread decodes).
    sample_rate : int > 0 [Hz]
        Target rate; 32 kHz is the rate of AudioProtoPNet.
    max_duration_s : float > 0 [seconds], optional
        Refuse longer input (default :data:`MAX_DURATION_S`).
    offset_s, duration_s : float >= 0 [seconds], optional
        Keep only this part of the recording (e.g. the first 60 s).
    name : str, optional
        Label used in error messages; defaults to the file name.

    Returns
    -------
    AudioClip
        ``waveform`` of shape ``(n_samples,)``, float32; non-finite samples are
        replaced by 0 so that downstream features never see NaN.

    Raises
    ------
    AudioLoadError
        Missing, empty, undecodable or over-long input.
    ParameterError
        ``sample_rate`` <= 0 or negative offsets.
    """
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate must be > 0, got {sample_rate}")
    if offset_s < 0 or (duration_s is not None and duration_s <= 0):
        raise ParameterError(f"offset_s must be >= 0 and duration_s > 0, got {offset_s}, {duration_s}")
    if name is None:
        name = Path(source).name if isinstance(source, (str, os.PathLike)) else getattr(source, "name", "audio")
    if hasattr(source, "read"):
        source = source.read()
    limit = MAX_DURATION_S if max_duration_s is None else float(max_duration_s)
    samples, sr = _decode(source, str(name), limit)
    start = int(round(offset_s * sr))
    stop = None if duration_s is None else start + int(round(duration_s * sr))
    samples = samples[start:stop]
    if samples.shape[0] == 0:
        raise AudioLoadError(f"{name}: no samples left after offset_s={offset_s}")
    channels = samples.shape[1]
    mono = to_mono(samples)
    n_nonfinite = int((~np.isfinite(mono)).sum())
    mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    waveform = resample(mono, sr, sample_rate)
    return AudioClip(waveform=waveform, sample_rate=sample_rate, source_sample_rate=sr, source_channels=channels, name=str(name),
                     n_nonfinite=n_nonfinite)


def window_starts(n_samples: int, window_samples: int, *, min_fraction: float = 0.5) -> list[int]:
    """Start indices of non-overlapping windows covering a recording.

    The last, partial window is kept when it holds at least ``min_fraction`` of a
    window (it is zero-padded by :func:`frame_windows`); a recording shorter than
    one window always yields one window.

    Parameters
    ----------
    n_samples : int >= 0
    window_samples : int > 0
    min_fraction : float in [0, 1]

    Returns
    -------
    list of int [samples]
    """
    if window_samples <= 0:
        raise ParameterError(f"window_samples must be > 0, got {window_samples}")
    n_full = n_samples // window_samples
    starts = [i * window_samples for i in range(n_full)]
    rest = n_samples - n_full * window_samples
    if n_full == 0 or rest >= min_fraction * window_samples:
        starts.append(n_full * window_samples)
    return starts


def frame_windows(waveform: np.ndarray, window_samples: int, *, min_fraction: float = 0.5) -> tuple[np.ndarray, list[int]]:
    """Cut a waveform into non-overlapping, zero-padded windows.

    Parameters
    ----------
    waveform : np.ndarray [shape=(n_samples,)]
    window_samples : int > 0
        E.g. 5 s x 32 kHz = 160,000.
    min_fraction : float
        See :func:`window_starts`.

    Returns
    -------
    windows : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
    starts : list of int [samples]
    """
    waveform = np.asarray(waveform, dtype=np.float32)
    starts = window_starts(waveform.shape[0], window_samples, min_fraction=min_fraction)
    out = np.zeros((len(starts), window_samples), dtype=np.float32)
    for i, s in enumerate(starts):
        chunk = waveform[s : s + window_samples]
        out[i, : chunk.shape[0]] = chunk
    return out, starts


def wav_bytes(waveform: np.ndarray, sample_rate: int, *, gain: float = 1.0) -> bytes:
    """Encode a mono waveform as 16-bit PCM WAV bytes, at its true level.

    ``st.audio`` peak-normalises numpy arrays; passing these bytes instead keeps
    clean and perturbed clips at their true relative loudness.

    Parameters
    ----------
    waveform : np.ndarray [shape=(n_samples,)], full-scale amplitude
    sample_rate : int > 0 [Hz]
    gain : float
        Linear gain applied before encoding (e.g. to make a perturbation audible);
        the result is clipped to [-1, 1].

    Returns
    -------
    bytes
        A complete RIFF/WAVE file.
    """
    if sample_rate <= 0:
        raise ParameterError(f"sample_rate must be > 0, got {sample_rate}")
    if not math.isfinite(gain):
        raise ParameterError(f"gain must be finite, got {gain}")
    x = np.clip(np.nan_to_num(np.asarray(waveform, dtype=np.float32) * gain), -1.0, 1.0)
    buf = io.BytesIO()
    sf.write(buf, x, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def pink_noise(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power) noise of unit RMS, by shaping white noise in the frequency domain.

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32]
    """
    if n_samples <= 0:
        return np.zeros(0, np.float32)
    spec = np.fft.rfft(rng.standard_normal(n_samples))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n=n_samples)
    return (x / max(rms(x), 1e-12)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return math.sqrt(float(np.mean(x * x))) if x.size else 0.0
