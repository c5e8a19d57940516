"""Realistic threats: does an adversarial clip still fool a model after an MP3 codec, or when a loudspeaker plays it?

An ecologist's first question after hearing an adversarial clip is "could this
happen in the field?". The transformations that answer it, each built on a
well-kept library:

- **MP3** (:class:`MP3`): a real encode/decode round trip with LAME (``lameenc``,
  constant bit rate, e.g. 128 kbps) and libsndfile's decoder (``soundfile``), the
  codec's fixed delay measured once per (rate, bit rate) and removed. Most
  xeno-canto audio is MP3.
- **Loudspeaker** (:class:`Loudspeaker`): the attack in the field. The bird sings
  where it sings (the recording is what the recorder hears of it); the attacker
  plays only the perturbation, from a loudspeaker of its own at ``distance_m``
  (1 m or 10 m) from the recorder, through that position's own path: the
  loudspeaker's band-pass (150 Hz-12 kHz, 4th-order Butterworth), the space's
  impulse response (``pyroomacoustics``' image-source method: an open field above
  reflective ground, or a furnished room), its propagation delay (d / 343 m/s)
  and, because nobody can start a loudspeaker in step with a bird, a random lag of
  0-20 ms.
- **Playback** (:class:`Playback`): the whole adversarial clip, bird and
  perturbation together, replayed by one loudspeaker at a distance (a manipulated
  recording played back), with ambient noise at the recorder (pink noise whose
  level relative to the clip at 1 m is ``snr_at_1m_db``; it falls by
  20 log10(d / 1 m) dB with distance d, as a point source's level does) and the
  recorder's automatic gain (the output has the input's RMS).
- **Ambient noise** alone (:class:`AmbientNoise`).

Each transformation maps a ``(batch, n_samples)`` waveform tensor to one of the
same shape; those that treat the perturbation apart from the clip
(:class:`Loudspeaker`) are also given the clean clips (``clean=``). Called
without ``rng`` it is the fixed *evaluation* draw (the same room, distance, lag
and noise for the clean and the adversarial clip, so the clean clip's change is
an exact control); with an ``rng`` it draws a random instance (distance within
0.8-1.25x, positions, ground absorption, noise level ±5 dB, lag), the draws of
expectation over transformation (EOT; Athalye et al. 2018, "Synthesizing robust
adversarial examples", ICML; Qin et al. 2019, "Imperceptible, robust, and
targeted adversarial examples for automatic speech recognition", ICML, Sec. 5).
The room paths are differentiable (convolution, shift and addition in torch); the
codec is not, so :class:`MP3` passes the gradient straight through (BPDA,
Athalye et al. 2018, "Obfuscated gradients give a false sense of security":
forward = the real codec, backward = identity).

:class:`EOT` (:mod:`core.attacks.eot`) wraps any attack objective so that its
loss is the mean over ``samples`` random draws of a transformation, each clip
with its own draws; :func:`core.attacks.threat_studies.survival_study` measures
how often attacks, with and without EOT, still fool a model after each real
transformation, at matched SNR, with the transformation's own effect on the
clean clip as the control.
"""

from __future__ import annotations

import functools
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch

from core.attacks.eot import EOT
from core.errors import ParameterError

__all__ = [
    "MP3_SAMPLE_RATES", "mp3_roundtrip", "Transform", "MP3", "Playback", "Loudspeaker", "AmbientNoise", "SmoothingNoise", "Mixture",
    "EOT",
    "threat_transforms", "threat_choices", "transform_waveform",
]

log = logging.getLogger(__name__)

#: Sample rates [Hz] LAME encodes (MPEG-1, -2 and -2.5 layer III).
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
SPEED_OF_SOUND = 343.0  # m/s
#: Samples kept before an impulse response's peak (the band-pass filter's onset and pyroomacoustics' fractional delay).
LEAD = 64


# -- the codec -----------------------------------------------------------------------------------------


def _encode_decode(x: np.ndarray, sample_rate: int, bitrate_kbps: int) -> np.ndarray:
    import lameenc
    import soundfile as sf

    enc = lameenc.Encoder()
    enc.set_bit_rate(int(bitrate_kbps))
    enc.set_in_sample_rate(int(sample_rate))
    enc.set_channels(1)
    enc.set_quality(2)  # LAME's "high quality" (0 best, 9 fastest)
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    data = bytes(enc.encode(pcm)) + bytes(enc.flush())
    out, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    if rate != sample_rate:  # at low bit rates LAME resamples before encoding
        import soxr

        out = soxr.resample(out, rate, sample_rate).astype(np.float32)
    return out


@functools.lru_cache(maxsize=None)
def _mp3_delay(sample_rate: int, bitrate_kbps: int) -> int:
    """The codec's delay [samples] (LAME's encoder delay plus the decoder's), by cross-correlation with a noise probe."""
    probe = (np.random.default_rng(0).standard_normal(sample_rate) * 0.1).astype(np.float32)
    out = _encode_decode(probe, sample_rate, bitrate_kbps)
    n = len(probe) - 4096
    lags = np.arange(0, 4096)
    cc = [float(np.dot(out[k : k + n], probe[:n])) for k in lags if k + n <= len(out)]
    return int(np.argmax(cc))


def mp3_roundtrip(waveform: np.ndarray, sample_rate: int, bitrate_kbps: int = 128) -> np.ndarray:
    """Encode to MP3 and decode back, aligned with the input.

    Parameters
    ----------
    waveform : np.ndarray [shape=(n_samples,) or (batch, n_samples)], full-scale amplitude
        Clipped to [-1, 1] and quantised to 16 bits before encoding (what a WAV file would hold).
    sample_rate : int [Hz]
        One of :data:`MP3_SAMPLE_RATES`.
    bitrate_kbps : int [kbit/s]
        Constant bit rate, 8-320 (LAME rounds to the nearest legal rate).

    Returns
    -------
    np.ndarray, the input's shape, float32
        The decoded audio with the codec's delay removed (:func:`_mp3_delay`).

    Raises
    ------
    ParameterError
        A rate LAME cannot encode, a bit rate outside 8-320 kbps, or a non-finite waveform.
    """
    if int(sample_rate) not in MP3_SAMPLE_RATES:
        raise ParameterError(f"MP3 needs a sample rate of {MP3_SAMPLE_RATES} Hz, got {sample_rate}")
    if not 8 <= int(bitrate_kbps) <= 320:
        raise ParameterError(f"MP3 bit rate must be 8-320 kbps, got {bitrate_kbps}")
    x = np.asarray(waveform, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ParameterError("waveform contains NaN or inf")
    rows = x[None] if x.ndim == 1 else x
    delay = _mp3_delay(int(sample_rate), int(bitrate_kbps))
    out = np.zeros_like(rows)
    for i, row in enumerate(rows):
        y = _encode_decode(row, int(sample_rate), int(bitrate_kbps))[delay : delay + rows.shape[1]]
        out[i, : len(y)] = y
    return out[0] if x.ndim == 1 else out


# -- transformations -----------------------------------------------------------------------------------


class Transform:
    """A transformation of ``(batch, n_samples)`` waveforms; see the module docstring."""

    name = "transform"
    #: Whether gradients pass through it exactly (False: straight-through estimate).
    differentiable = True

    def describe(self) -> dict:
        """JSON-ready settings."""
        return {"name": self.name}

    #: Whether it needs the clean clips (``clean=``) to tell the perturbation from the clip.
    needs_clean = False

    def __call__(self, x: torch.Tensor, sample_rate: int, rng: np.random.Generator | None = None, *,
                 clean: torch.Tensor | None = None) -> torch.Tensor:
        """Transform waveforms.

        Parameters
        ----------
        x : torch.Tensor [shape=(batch, n_samples), dtype=float32 or float64], full-scale amplitude
            The clips as the attack left them.
        sample_rate : int [Hz]
        rng : numpy.random.Generator, optional
            None: the fixed evaluation draw; a generator: one random draw for the whole batch (EOT calls a
            transformation once per clip, so each clip gets its own draws).
        clean : torch.Tensor [shape=(batch, n_samples)], optional
            The clips before the attack; only transformations with ``needs_clean`` use it.

        Returns
        -------
        torch.Tensor, ``x``'s shape, dtype and device (not clipped: callers clip to [-1, 1])
        """
        raise NotImplementedError


@dataclass(frozen=True)
class MP3(Transform):
    """MP3 encode/decode at a constant bit rate (:func:`mp3_roundtrip`); gradients pass straight through.

    Parameters
    ----------
    bitrate_kbps : int [kbit/s]
    """

    bitrate_kbps: int = 128
    name = "mp3"
    differentiable = False

    def describe(self) -> dict:
        return {"name": self.name, "bitrate_kbps": self.bitrate_kbps}

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        coded = torch.as_tensor(mp3_roundtrip(x.detach().float().cpu().numpy(), sample_rate, self.bitrate_kbps), device=x.device, dtype=x.dtype)
        return x + (coded - x).detach()  # forward: the codec; backward: identity (BPDA)


def _fft_convolve(x: torch.Tensor, h: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """Linear convolution of every row of ``x`` with ``h``; ``x.shape[-1]`` samples kept from ``offset``."""
    n = x.shape[-1] + h.shape[-1] - 1
    size = 1 << (n - 1).bit_length()
    y = torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(h, size), size)
    return y[..., offset : offset + x.shape[-1]]


def _pink(n: int, rows: int, rng: np.random.Generator) -> np.ndarray:
    from core.io.audio import pink_noise

    return np.stack([pink_noise(n, rng) for _ in range(rows)])


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1, keepdim=True).sqrt()


@dataclass(frozen=True)
class AmbientNoise(Transform):
    """Pink noise added at ``snr_db`` below each clip's RMS level.

    Parameters
    ----------
    snr_db : float [dB]
        Clip RMS over noise RMS (EOT draws: ±5 dB).
    seed : int
        Seed of the evaluation draw (the same noise for the clean and the adversarial clip).
    """

    snr_db: float = 20.0
    seed: int = 0
    name = "noise"

    def describe(self) -> dict:
        return {"name": self.name, "snr_db": self.snr_db}

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        snr = self.snr_db + (rng.uniform(-5, 5) if rng is not None else 0.0)
        gen = rng if rng is not None else np.random.default_rng(self.seed)
        noise = torch.as_tensor(_pink(x.shape[-1], x.shape[0], gen), device=x.device, dtype=x.dtype)
        return x + noise * _rms(x).detach() * 10 ** (-snr / 20)


@dataclass(frozen=True)
class SmoothingNoise(Transform):
    """Gaussian noise ``N(0, sigma^2 I)`` added to every sample: the noise of randomized smoothing
    (:mod:`core.attacks.smoothing`), so that EOT over it attacks the smoothed classifier (Salman et al. 2019,
    "Provably robust deep learning via adversarially trained smoothed classifiers", NeurIPS, Sec. 3).

    Parameters
    ----------
    sigma : float > 0 [full-scale amplitude]
        Noise std per sample; not clipped here (callers clip to [-1, 1]).
    seed : int
        Seed of the evaluation draw.
    """

    sigma: float = 3e-4
    seed: int = 0
    name = "smoothing-noise"

    def describe(self) -> dict:
        return {"name": self.name, "sigma": self.sigma}

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        gen = rng if rng is not None else np.random.default_rng(self.seed)
        return x + torch.as_tensor(gen.standard_normal(tuple(x.shape)), device=x.device, dtype=x.dtype) * float(self.sigma)


@dataclass(frozen=True)
class Playback(Transform):
    """A loudspeaker playing the clip at ``distance_m`` from a recorder, in the open or in a room.

    Chain: loudspeaker and microphone band-pass (``band_hz``, a 4th-order
    Butterworth by scipy, 24 dB per octave each side) -> the impulse response from source to microphone
    (pyroomacoustics ``ShoeBox``, image-source method with air absorption; the
    direct path is aligned to sample 0, so timing matches the input) -> pink ambient
    noise at the recorder, ``snr_at_1m_db - 20 log10(distance_m)`` dB below the
    clip -> automatic gain (output RMS = input RMS, so the model sees a normal level).

    Parameters
    ----------
    distance_m : float [m], 0.25-30
    environment : {"outdoor", "room"}
        "outdoor": a 60 x 60 x 30 m box whose walls and ceiling absorb 99 % (free
        field) above ground absorbing 30 % (grass-like), source and recorder 1.5 m
        high; reflection order 3. "room": 7 x 6 x 3 m, every surface absorbing 30 %,
        reflection order 10 (distance at most 5 m).
    band_hz : (float, float) [Hz]
        Loudspeaker/microphone pass band.
    snr_at_1m_db : float [dB]
        Clip over ambient noise with the loudspeaker at 1 m.
    seed : int
        Seed of the evaluation draw.

    Raises
    ------
    ParameterError
        Distance outside its range or an unknown environment.
    """

    distance_m: float = 1.0
    environment: str = "outdoor"
    band_hz: tuple[float, float] = (150.0, 12_000.0)
    snr_at_1m_db: float = 40.0
    seed: int = 0
    name = "playback"

    def __post_init__(self) -> None:
        if self.environment not in ("outdoor", "room"):
            raise ParameterError(f"environment must be 'outdoor' or 'room', got {self.environment!r}")
        top = 30.0 if self.environment == "outdoor" else 5.0
        if not 0.25 <= float(self.distance_m) <= top:
            raise ParameterError(f"distance_m must be in [0.25, {top:g}] m for {self.environment}, got {self.distance_m}")

    def describe(self) -> dict:
        return {"name": self.name, "distance_m": self.distance_m, "environment": self.environment,
                "band_hz": list(self.band_hz), "snr_at_1m_db": self.snr_at_1m_db}

    #: EOT draws come from a pool of this many random instances (each room simulated once, then cached).
    POOL = 64

    def impulse_response(self, sample_rate: int, draw: int | None = None) -> np.ndarray:
        """Band-pass filter convolved with the space's impulse response ``(n_taps,)`` float32, its peak (the direct
        path) at sample :data:`LEAD`; :meth:`__call__` removes that lead.

        ``draw`` None: the evaluation instance; an integer: one random instance of the EOT pool.
        """
        return _impulse_response(self, int(sample_rate), draw)

    def distance(self, draw: int | None = None) -> float:
        """The source-recorder distance [m] of a draw (the evaluation draw: ``distance_m``)."""
        if draw is None:
            return float(self.distance_m)
        return float(self.distance_m) * float(np.exp(np.random.default_rng(draw).uniform(np.log(0.8), np.log(1.25))))

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        draw = None if rng is None else int(rng.integers(self.POOL))
        h = torch.as_tensor(self.impulse_response(sample_rate, draw), device=x.device, dtype=x.dtype)
        y = _fft_convolve(x, h, offset=LEAD)
        gen = np.random.default_rng(self.seed) if rng is None else rng
        snr = self.snr_at_1m_db - 20 * np.log10(self.distance(draw)) + (gen.uniform(-5, 5) if rng is not None else 0.0)
        noise = torch.as_tensor(_pink(x.shape[-1], x.shape[0], gen), device=x.device, dtype=x.dtype)
        y = y + noise * _rms(y).detach() * 10 ** (-snr / 20)
        return y * (_rms(x) / _rms(y).clamp_min(1e-12)).detach()


@functools.lru_cache(maxsize=256)
def _impulse_response(p: Playback, sample_rate: int, draw: int | None) -> np.ndarray:
    import pyroomacoustics as pra
    from scipy.signal import butter, sosfilt

    rng = np.random.default_rng(p.seed if draw is None else draw + 1)
    d = p.distance(draw)
    nyq = sample_rate / 2
    lo, hi = p.band_hz
    impulse = np.zeros(int(0.1 * sample_rate))
    impulse[0] = 1.0
    band = sosfilt(butter(4, [lo, min(hi, 0.95 * nyq)], btype="bandpass", fs=sample_rate, output="sos"), impulse)
    if p.environment == "outdoor":
        dims = np.array([60.0, 60.0, 30.0])
        ground = 0.3 if draw is None else rng.uniform(0.1, 0.5)
        mats = {w: pra.Material(0.99) for w in ("east", "west", "north", "south", "ceiling")}
        mats["floor"] = pra.Material(float(ground))
        room = pra.ShoeBox(dims, fs=sample_rate, materials=mats, max_order=3, air_absorption=True)
        h_src = 1.5 if draw is None else rng.uniform(1.0, 2.5)
        src = np.array([30.0 - d / 2, 30.0, h_src])
        mic = np.array([30.0 + d / 2, 30.0, 1.5 if draw is None else rng.uniform(0.5, 2.0)])
    else:
        dims = np.array([7.0, 6.0, 3.0])
        room = pra.ShoeBox(dims, fs=sample_rate, materials=pra.Material(0.3), max_order=10, air_absorption=True)
        angle = 0.0 if draw is None else rng.uniform(0, 2 * np.pi)
        centre = np.array([3.5, 3.0])
        offset = np.array([np.cos(angle), np.sin(angle)]) * min(d, 5.0) / 2
        src = np.r_[centre - offset, 1.2]
        mic = np.r_[centre + offset, 1.2 if draw is None else rng.uniform(0.8, 1.8)]
    room.add_source(src)
    room.add_microphone(mic)
    room.compute_rir()
    rir = np.asarray(room.rir[0][0], dtype=np.float64)
    h = np.convolve(band, rir)
    start = int(np.argmax(np.abs(h)))  # the direct path (after the band-pass filter's delay)
    h = h[max(start - LEAD, 0):]  # the propagation delay goes, the onset before the peak stays
    return np.pad(h, (LEAD - min(start, LEAD), 0)).astype(np.float32)


def _delay(x: torch.Tensor, samples: int) -> torch.Tensor:
    """Every row of ``x`` delayed by ``samples`` >= 0 (zeros shifted in at the start, the end cut off)."""
    if samples <= 0:
        return x
    return torch.nn.functional.pad(x, (samples, 0))[..., : x.shape[-1]]


@dataclass(frozen=True)
class Loudspeaker(Transform):
    """The perturbation alone, played by a loudspeaker of its own ``distance_m`` from the recorder; the bird as recorded.

    ``y = clean + g * (h * delta)(t - d / c - lag)``, with ``delta = x - clean`` the
    perturbation, ``h`` the loudspeaker's band-pass filter convolved with the impulse
    response from the loudspeaker's position to the recorder (the space of
    :class:`Playback`, pyroomacoustics' image-source method with air absorption),
    ``d / c`` its propagation delay (c = 343 m/s) and ``lag`` the attacker's start
    offset, uniform in [0, ``max_lag_ms``] for each EOT draw and ``max_lag_ms / 2``
    (10 ms) in the evaluation draw. The bird's own path is the recording's: the
    clean clip passes unchanged (so the clean control is exact), and nothing else is
    added (its ambient noise is the recording's).

    The level: ``g`` makes the direct sound of the perturbation arrive with the
    amplitude it has in the file when the loudspeaker stands ``calibrated_at_m``
    from the recorder; by default (None) at ``distance_m`` itself, i.e. the attacker
    sets the volume for the distance (the budget holds at the recorder, reflections
    add to it). ``calibrated_at_m=1`` keeps the volume of 1 m at every distance, so
    the perturbation arrives 20 log10(d / 1 m) dB quieter (a point source's 1/r,
    which is the amplitude of pyroomacoustics' direct path, r in metres).

    Parameters
    ----------
    distance_m : float [m], 0.25-30 outdoors, 0.25-5 in a room
    environment : {"outdoor", "room"}
        As :class:`Playback` (the loudspeaker is the source of that geometry).
    band_hz : (float, float) [Hz]
        The loudspeaker's pass band.
    max_lag_ms : float [ms], 0-500
        The attacker's start offset is drawn from [0, ``max_lag_ms``].
    calibrated_at_m : float [m] or None
    seed : int
        Seed of the evaluation room.

    Raises
    ------
    ParameterError
        Distance, lag or calibration distance out of range, an unknown environment, or (when called) no ``clean``.
    """

    distance_m: float = 1.0
    environment: str = "outdoor"
    band_hz: tuple[float, float] = (150.0, 12_000.0)
    max_lag_ms: float = 20.0
    calibrated_at_m: float | None = None
    seed: int = 0
    name = "loudspeaker"
    needs_clean = True

    def __post_init__(self) -> None:
        self.room()  # validates distance and environment
        if not 0.0 <= float(self.max_lag_ms) <= 500.0:
            raise ParameterError(f"max_lag_ms must be in [0, 500] ms, got {self.max_lag_ms}")
        if self.calibrated_at_m is not None and not 0.1 <= float(self.calibrated_at_m) <= 100.0:
            raise ParameterError(f"calibrated_at_m must be None or in [0.1, 100] m, got {self.calibrated_at_m}")

    def room(self) -> Playback:
        """The loudspeaker-to-recorder geometry (a :class:`Playback` whose source is this loudspeaker)."""
        return Playback(self.distance_m, environment=self.environment, band_hz=self.band_hz, seed=self.seed)

    def describe(self) -> dict:
        return {"name": self.name, "distance_m": self.distance_m, "environment": self.environment, "band_hz": list(self.band_hz),
                "max_lag_ms": self.max_lag_ms, "calibrated_at_m": self.calibrated_at_m}

    def delay_samples(self, sample_rate: int, draw: int | None = None, lag_ms: float | None = None) -> int:
        """Samples from the clip's time to the perturbation's direct sound: propagation ``d / c`` plus the lag."""
        lag = self.max_lag_ms / 2 if lag_ms is None else lag_ms
        return int(round((self.room().distance(draw) / SPEED_OF_SOUND + lag / 1000.0) * sample_rate))

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        if clean is None:
            raise ParameterError("the loudspeaker threat plays only the perturbation, so it needs the clean clip (clean=...)")
        clean = torch.as_tensor(clean, device=x.device, dtype=x.dtype)
        if clean.shape != x.shape:
            raise ParameterError(f"clean must have the shape of the clips {tuple(x.shape)}, got {tuple(clean.shape)}")
        room = self.room()
        draw = None if rng is None else int(rng.integers(Playback.POOL))
        lag_ms = None if rng is None else float(rng.uniform(0.0, self.max_lag_ms))
        d = room.distance(draw)
        gain = d if self.calibrated_at_m is None else float(self.calibrated_at_m)  # pyroomacoustics' direct path: 1 / r
        h = torch.as_tensor(room.impulse_response(sample_rate, draw) * gain, device=x.device, dtype=x.dtype)
        delta = _delay(x - clean, self.delay_samples(sample_rate, draw, lag_ms))
        return clean + _fft_convolve(delta, h, offset=LEAD)


@dataclass(frozen=True)
class Mixture(Transform):
    """A uniformly random one of ``transforms`` for each clip of each draw (EOT over several threats); evaluation uses the first."""

    transforms: tuple = ()
    name = "mixture"

    @property
    def differentiable(self) -> bool:  # type: ignore[override]
        return all(t.differentiable for t in self.transforms)

    @property
    def needs_clean(self) -> bool:  # type: ignore[override]
        return any(t.needs_clean for t in self.transforms)

    def describe(self) -> dict:
        return {"name": self.name, "transforms": [t.describe() for t in self.transforms]}

    def __call__(self, x, sample_rate, rng=None, *, clean=None):
        if not self.transforms:
            raise ParameterError("a mixture needs at least one transformation")
        if rng is None:
            return self.transforms[0](x, sample_rate, clean=clean)
        pick = rng.integers(len(self.transforms), size=x.shape[0])
        rows = []
        for i, k in enumerate(pick):  # each clip its own transformation and its own draw of it
            rows.append(self.transforms[int(k)](x[i : i + 1], sample_rate, rng, clean=None if clean is None else clean[i : i + 1]))
        return torch.cat(rows)


def threat_transforms() -> dict[str, Transform]:
    """The transformations the threat study reports: MP3 at 128 kbps, the perturbation from a loudspeaker 1 m and 10 m away."""
    return {"mp3-128": MP3(128), "speaker-1m": Loudspeaker(1.0), "speaker-10m": Loudspeaker(10.0)}


def threat_choices() -> dict[str, tuple[str, Transform]]:
    """Every transformation the pages and ``--through`` offer: name -> (plain-language label, transformation)."""
    return {
        "mp3-128": ("saved as MP3 at 128 kbps", MP3(128)),
        "mp3-64": ("saved as MP3 at 64 kbps", MP3(64)),
        "speaker-1m": ("the perturbation alone from a loudspeaker 1 m from the recorder, outdoors, 0-20 ms late", Loudspeaker(1.0)),
        "speaker-10m": ("the perturbation alone from a loudspeaker 10 m from the recorder, outdoors, 0-20 ms late", Loudspeaker(10.0)),
        "playback-1m": ("the whole clip replayed by a loudspeaker 1 m from the recorder, outdoors", Playback(1.0)),
        "playback-10m": ("the whole clip replayed by a loudspeaker 10 m from the recorder, outdoors", Playback(10.0)),
        "room-3m": ("the whole clip replayed by a loudspeaker 3 m from the recorder, in a room", Playback(3.0, environment="room")),
        "noise-20": ("ambient noise 20 dB below the clip", AmbientNoise(20.0)),
    }


def transform_waveform(waveform: np.ndarray, sample_rate: int, transform: Transform, *, clean: np.ndarray | None = None) -> np.ndarray:
    """A transformation's evaluation draw applied to one clip.

    Parameters
    ----------
    waveform : np.ndarray [shape=(n_samples,)], full-scale amplitude
    sample_rate : int [Hz]
    transform : Transform
    clean : np.ndarray [shape=(n_samples,)], optional
        The clip before the attack. Transformations that play the perturbation apart (``needs_clean``) need it;
        for the clean clip itself pass the same array twice (or ``clean=waveform``).

    Returns
    -------
    np.ndarray [shape=(n_samples,), dtype=float32], clipped to [-1, 1]

    Raises
    ------
    ParameterError
        ``transform.needs_clean`` and no ``clean``.
    """
    x = torch.as_tensor(np.asarray(waveform, dtype=np.float32)[None])
    c = None if clean is None else torch.as_tensor(np.asarray(clean, dtype=np.float32)[None])
    with torch.no_grad():
        return transform(x, int(sample_rate), clean=c).clamp(-1.0, 1.0)[0].numpy()
