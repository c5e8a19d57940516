"""Whole-file analysis of long field recordings: streamed windows, detections, selection tables.

A field recording (an AudioMoth night, hours long) is never held in memory: it is
decoded in blocks by libsndfile, down-mixed, resampled with a streaming soxr
resampler (so block edges leave no seams), cut into the model's non-overlapping
windows and scored batch by batch. Only the scores, ``(n_windows, n_classes)``
float32, are kept: an hour of 5 s windows is 720 x 9 numbers.

A window's outcome is the set of species whose score reaches the model's
*decision threshold*, chosen on the validation split (:mod:`core.training.calibration`);
a window with none is "no bird detected", so silence, a tone or white noise do
not get a species without warning. A partial last window (zero-padded, kept when
it holds at least half a window, as everywhere in the project) is flagged; a
recording shorter than :data:`MIN_DURATION_S` is refused. Scores are BirdNET-Analyzer's:
the sigmoid of the logits shifted by its ``sensitivity``, and its location/week species
filter can leave out species not expected at the place (:mod:`core.field.detect`).

Detections export to BirdNET-Analyzer's CSV (``Start (s),End (s),Scientific
name,Common name,Confidence,File``) and to a Raven selection table (tab-separated,
the columns BirdNET-Analyzer writes), both readable by the tools ecologists use.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from core.errors import AudioLoadError, ParameterError, check_int
from core.field.detect import DEFAULT_SENSITIVITY, SpeciesFilter, check_sensitivity, flat_sigmoid
from core.io.audio import load_audio
from core.models.frontend import mel_band_centres

__all__ = [
    "AUDIO_SUFFIXES",
    "MIN_DURATION_S",
    "FileAnalysis",
    "analyze_file",
    "audio_files",
    "ebird_classes",
    "filter_mask",
    "iter_windows",
    "level_dbfs",
    "model_band_hz",
    "read_segment",
    "score_windows",
    "species_names",
]

#: File suffixes taken from a directory by :func:`audio_files`.
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".aif", ".aiff")
#: Shortest recording analysed [s]: a shorter one would be scored as one window of mostly zero padding.
MIN_DURATION_S = 0.5
NO_BIRD = "no bird detected"
#: Windows quieter than this RMS level [dBFS] are "silent" whatever a model says: 16-bit quantisation noise sits
#: near -101 dBFS, a quiet night at an AudioMoth near -60 dBFS. Some models name a species on digital silence
#: (see :func:`no_bird_check`); this guard keeps that out of the detections.
SILENCE_DBFS = -90.0
SILENT = f"silence (below {SILENCE_DBFS:g} dBFS)"


#: Mel bands of the whole-file overview spectrogram, 50 Hz to min(15 kHz, Nyquist).
OVERVIEW_MELS = 48


def _overview_hz(sample_rate: int) -> np.ndarray:

    return mel_band_centres(OVERVIEW_MELS, 50.0, min(15_000.0, sample_rate / 2))


@functools.lru_cache(maxsize=8)
def _overview_filters(sample_rate: int) -> np.ndarray:
    """librosa's mel filterbank of the overview, ``(OVERVIEW_MELS, 1025)``, built once per sample rate (not per window)."""
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=2048, n_mels=OVERVIEW_MELS, fmin=50.0, fmax=min(15_000.0, sample_rate / 2))


#: Periodic Hann window of the overview's 2048-point frames (``scipy.signal.get_window("hann", 2048)``, librosa's).
_OVERVIEW_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(2048) / 2048)).astype(np.float32)


def _band_power_db(waveform: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mean power per overview mel band of one window [dB, relative], ``(OVERVIEW_MELS,)``.

    ``librosa.feature.melspectrogram(power=2)`` (centred frames, zero padding, Hann window) with its filterbank
    built once per sample rate and the frames' FFT done by numpy: per call librosa rebuilt the filterbank
    (80-90 ms a window under load) and its STFT pulled in numba (about 170 MiB). Equal to librosa's to 1e-4 dB
    (``tests/test_analyze.py``).
    """
    from numpy.lib.stride_tricks import sliding_window_view

    x = np.asarray(waveform, np.float32)
    if len(x) < 2048:
        x = np.pad(x, (0, 2048 - len(x)))
    frames = sliding_window_view(np.pad(x, (1024, 1024)), 2048)[::1024]
    power = np.abs(np.fft.rfft(frames * _OVERVIEW_WINDOW, axis=-1)) ** 2  # (frames, 1025)
    mel = power.mean(axis=0) @ _overview_filters(int(sample_rate)).T
    return (10 * np.log10(np.maximum(mel / (2048 / 4), 1e-12))).astype(np.float32)


def read_segment(path: str | os.PathLike, sample_rate: int, offset_s: float, duration_s: float) -> np.ndarray:
    """One stretch of a recording of any length, mono at ``sample_rate`` (decodes only that stretch when libsndfile can seek).

    Parameters
    ----------
    path : path-like
    sample_rate : int [Hz]
    offset_s, duration_s : float [seconds], offset >= 0, duration > 0

    Returns
    -------
    np.ndarray [shape=(<= round(duration_s * sample_rate),), dtype=float32], full-scale amplitude

    Raises
    ------
    AudioLoadError
        Unreadable file, or an offset past its end.
    ParameterError
        Negative offset or non-positive duration.
    """
    from core.io.audio import resample, to_mono

    if offset_s < 0 or duration_s <= 0:
        raise ParameterError(f"offset_s must be >= 0 and duration_s > 0, got {offset_s}, {duration_s}")
    path = Path(path)
    try:
        with sf.SoundFile(str(path)) as f:
            sr = int(f.samplerate)
            start = int(round(offset_s * sr))
            if start >= f.frames:
                raise AudioLoadError(f"{path.name}: offset {offset_s:.1f} s is past the end ({f.frames / sr:.1f} s)")
            f.seek(start)
            x = f.read(int(round(duration_s * sr)), dtype="float32", always_2d=True)
    except AudioLoadError:
        raise
    except Exception:
        clip = load_audio(path, sample_rate=sample_rate, offset_s=offset_s, duration_s=duration_s)
        return clip.waveform
    mono = np.nan_to_num(to_mono(x), nan=0.0, posinf=0.0, neginf=0.0)
    return resample(mono, sr, sample_rate)[: int(round(duration_s * sample_rate))]


def level_dbfs(waveform: np.ndarray) -> float:
    """RMS level of a waveform [dB re full scale, a full-scale square wave = 0 dB]; -inf when all zero."""
    rms = float(np.sqrt(np.mean(np.square(np.asarray(waveform, np.float64))))) if len(waveform) else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf
SPECIES_CSV = Path(__file__).resolve().parents[2] / "assets" / "xc9" / "species.csv"


def species_names(class_names, model=None) -> dict[str, tuple[str, str]]:
    """``{code: (scientific name, English name)}`` for the model's classes.

    BirdNET-derived models carry their names; the project's own models name
    their classes by the codes of ``assets/xc9/species.csv``; a class named by an
    eBird code among BirdNET's species (the published BirdSet models) gets BirdNET's
    names (:mod:`core.io.names`). A code without a name is its own name.
    """
    from core.io.names import common_name, scientific_name_of

    cfg = getattr(model, "config", None)
    sci, eng = getattr(cfg, "scientific_names", ()), getattr(cfg, "english_names", ())
    if len(sci) == len(class_names) and len(eng) == len(class_names):
        return {c: (s, e) for c, s, e in zip(class_names, sci, eng)}
    from core.models.birdnet import dataset_species

    rows = {r["species_code"]: r for r in dataset_species(SPECIES_CSV)}
    out = {}
    for c in class_names:
        if c in rows:
            out[c] = (rows[c]["scientific_name"], rows[c]["english_name"])
        elif scientific_name_of(c) is not None:
            out[c] = (scientific_name_of(c), common_name(scientific_name_of(c)))
        else:
            out[c] = (c, c)
    return out


def ebird_classes(model) -> dict[str, str]:
    """``{class: class}`` for a model whose classes are eBird codes (BirdSet's published models), else ``{}``: the
    ``ebird`` argument of :func:`core.field.tables.detections`."""
    from core.models.published import PublishedConfig

    return {c: c for c in model.config.class_names} if isinstance(model.config, PublishedConfig) else {}


def model_band_hz(model) -> tuple[float, float]:
    """The band a model hears [Hz], ``(f_min, f_max)`` of its front end (Nyquist when it sets none): a selection's band."""
    fe = model.config.frontend
    return float(getattr(fe, "f_min", 0.0) or 0.0), float(getattr(fe, "f_max", None) or fe.sample_rate / 2)


def audio_files(path: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Audio files to analyse: ``path`` itself, or the audio files of a directory (sorted).

    Raises
    ------
    ParameterError
        No such file or directory, or a directory without audio files.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise ParameterError(f"no such file or directory: {p}")
    files = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ParameterError(f"{p}: no audio files ({', '.join(AUDIO_SUFFIXES)}){'' if recursive else '; --recursive looks in sub-directories'}")
    return files


def _stream_blocks(path: Path, sample_rate: int, block_s: float) -> Iterator[tuple[np.ndarray, dict]]:
    """Mono float32 blocks at ``sample_rate``; the dict holds the source's rate, channels, frames."""
    try:
        f = sf.SoundFile(str(path))
    except Exception:
        # libsndfile cannot read it (e.g. some MP3 or M4A): decode whole, within load_audio's limit
        try:
            clip = load_audio(path, sample_rate=sample_rate)
        except AudioLoadError as exc:
            raise AudioLoadError(f"{exc} (files that libsndfile cannot stream are decoded whole; convert long ones to WAV or FLAC)") from exc
        yield clip.waveform, {"source_sample_rate": clip.source_sample_rate, "source_channels": clip.source_channels,
                              "n_nonfinite": clip.n_nonfinite, "n_samples": len(clip.waveform)}
        return
    with f:
        sr, channels = int(f.samplerate), int(f.channels)
        if sr <= 0:
            raise AudioLoadError(f"{path.name}: invalid sample rate {sr}")
        info = {"source_sample_rate": sr, "source_channels": channels, "n_nonfinite": 0, "n_samples": 0}
        stream = soxr.ResampleStream(sr, sample_rate, 1, dtype="float32", quality="HQ") if sr != sample_rate else None
        frames = max(1, int(block_s * sr))
        read_any = False
        while True:
            try:
                block = f.read(frames, dtype="float32", always_2d=True)
            except Exception as exc:
                raise AudioLoadError(f"{path.name}: decoding failed after {f.tell() / sr:.1f} s ({exc})") from exc
            last = len(block) < frames
            if len(block):
                read_any = True
            mono = block.mean(axis=1, dtype=np.float32) if len(block) else np.zeros(0, np.float32)
            bad = ~np.isfinite(mono)
            if bad.any():
                info["n_nonfinite"] += int(bad.sum())
                mono = np.where(bad, np.float32(0), mono)
            out = stream.resample_chunk(mono, last=last) if stream is not None else mono
            if len(out):
                info["n_samples"] += len(out)
                yield np.asarray(out, dtype=np.float32), info
            if last:
                break
        if not read_any:
            raise AudioLoadError(f"{path.name}: the file holds no samples")


def iter_windows(path: str | os.PathLike, sample_rate: int, window_samples: int, *, block_s: float = 30.0,
                 min_fraction: float = 0.5) -> Iterator[tuple[int, np.ndarray, int, dict]]:
    """Stream a recording of any length as non-overlapping windows at ``sample_rate``.

    Parameters
    ----------
    path : path-like
        WAV, FLAC, OGG, MP3 (streamed by libsndfile); other formats are decoded
        whole by :func:`core.io.audio.load_audio` (and its 10-minute limit).
    sample_rate : int > 0 [Hz]
    window_samples : int > 0 [samples]
    block_s : float > 0 [seconds]
        Decoding block; memory stays about ``block_s * source rate * channels`` floats.
    min_fraction : float in [0, 1]
        A partial last window is kept (zero-padded) when it holds at least this
        fraction of a window; a recording shorter than one window always yields one.

    Yields
    ------
    (start, window, valid, info)
        ``start`` [samples at ``sample_rate``], ``window`` float32 ``(window_samples,)``
        in full-scale amplitude, ``valid`` the number of real (not padded) samples,
        ``info`` the source's ``source_sample_rate``, ``source_channels``,
        ``n_nonfinite`` (non-finite samples replaced by 0 so far) and ``n_samples``
        (samples at ``sample_rate`` decoded so far; a tail shorter than
        ``min_fraction`` of a window is decoded but not yielded).

    Raises
    ------
    AudioLoadError
        Missing, empty or undecodable file.
    ParameterError
        Non-positive rate, window or block.
    """
    if sample_rate <= 0 or window_samples <= 0 or block_s <= 0:
        raise ParameterError(f"sample_rate, window_samples and block_s must be > 0, got {sample_rate}, {window_samples}, {block_s}")
    path = Path(path)
    if not path.is_file():
        raise AudioLoadError(f"no such file: {path}")
    if path.stat().st_size == 0:
        raise AudioLoadError(f"{path.name}: the file is empty (0 bytes)")
    buf = np.zeros(0, np.float32)
    start, info = 0, {}
    for block, info in _stream_blocks(path, sample_rate, block_s):
        buf = np.concatenate([buf, block])
        while len(buf) >= window_samples:
            yield start, buf[:window_samples].copy(), window_samples, info
            buf = buf[window_samples:]
            start += window_samples
    if len(buf) and (start == 0 or len(buf) >= min_fraction * window_samples):
        window = np.zeros(window_samples, np.float32)
        window[: len(buf)] = buf
        yield start, window, len(buf), info
    elif start == 0:
        raise AudioLoadError(f"{path.name}: the file holds no samples")


@dataclass
class FileAnalysis:
    """Scores of every window of one recording.

    Attributes
    ----------
    path : str
    model : str
        Name of the model (checkpoint or built-in).
    class_names : tuple of str
        Species codes, the score columns.
    sample_rate : int [Hz]
        The model's rate.
    window_s : float [seconds]
    starts_s : np.ndarray [shape=(n_windows,), dtype=float64], window starts [seconds]
    valid_s : np.ndarray [shape=(n_windows,), dtype=float64], real (not padded) audio per window [seconds]
    scores : np.ndarray [shape=(n_windows, n_classes), dtype=float32]
        Scores in [0, 1]: the sigmoid of the logits shifted by ``sensitivity`` (:func:`core.field.detect.flat_sigmoid`).
    level_dbfs : np.ndarray [shape=(n_windows,), dtype=float64]
        RMS level of each window's real audio [dB re full scale]; -inf for digital silence.
    overview_db : np.ndarray [shape=(n_windows, OVERVIEW_MELS), dtype=float32]
        Mean power of each window in :data:`OVERVIEW_MELS` mel bands [dB, relative; same
        scale for every window]: a long-duration spectrogram of the whole file (one column per window).
    overview_hz : np.ndarray [shape=(OVERVIEW_MELS,)], centre frequency of each band [Hz]
    threshold : float or None
        The model's validation decision threshold (None: the model has none).
    threshold_source : str
        Where ``threshold`` comes from.
    info : dict
        Source rate, channels, non-finite samples, seconds taken.
    sensitivity : float in [0.5, 1.5]
        BirdNET-Analyzer's sigmoid sensitivity the scores were computed with (1.0: the plain sigmoid).
    allowed : np.ndarray or None [shape=(n_classes,), dtype=bool]
        Species the location/week filter keeps (None: no filter); the tables report only these.
    species_filter : dict or None
        The filter's settings (:meth:`core.field.detect.SpeciesFilter.describe`) and the species it left out
        (``excluded``: class codes).
    """

    path: str
    model: str
    class_names: tuple
    sample_rate: int
    window_s: float
    starts_s: np.ndarray
    valid_s: np.ndarray
    scores: np.ndarray
    threshold: float | None
    threshold_source: str
    level_dbfs: np.ndarray | None = None
    overview_db: np.ndarray | None = None
    overview_hz: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    sensitivity: float = DEFAULT_SENSITIVITY
    allowed: np.ndarray | None = None
    species_filter: dict | None = None

    @property
    def duration_s(self) -> float:
        """Length of the recording [seconds], including a short tail no window holds."""
        held = float(self.starts_s[-1] + self.valid_s[-1]) if len(self.starts_s) else 0.0
        return max(held, self.info.get("n_samples", 0) / self.sample_rate)

    @property
    def unanalysed_s(self) -> float:
        """Audio at the end shorter than half a window, left out of every window [seconds]."""
        held = float(self.starts_s[-1] + self.valid_s[-1]) if len(self.starts_s) else 0.0
        return self.duration_s - held

    @property
    def padded(self) -> np.ndarray:
        """Whether each window is partly zero padding, ``(n_windows,)`` bool."""
        return self.valid_s < self.window_s - 1e-9


def filter_mask(model, class_names, species_filter: SpeciesFilter | None) -> tuple[np.ndarray | None, dict | None]:
    """The location/week filter applied to a model's classes: (kept ``(n_classes,)`` bool, settings with ``excluded``).

    Parameters
    ----------
    model : BirdClassifier or None
        Gives the classes' scientific names (:func:`species_names`).
    class_names : sequence of str
    species_filter : SpeciesFilter or None
        None: (None, None), no filter.
    """
    if species_filter is None:
        return None, None
    names = species_names(class_names, model)
    keep = species_filter.mask([names[c][0] for c in class_names])
    return keep, {**species_filter.describe(), "excluded": [c for c, k in zip(class_names, keep) if not k]}


@torch.no_grad()
def _scores(model, windows: np.ndarray, sensitivity: float, device) -> np.ndarray:
    """``flat_sigmoid(model(windows), sensitivity)`` as float32 numpy, ``(n, n_classes)``."""
    return flat_sigmoid(model(torch.as_tensor(windows, device=device)).float(), sensitivity).cpu().numpy()


def score_windows(model, windows: np.ndarray, valid: np.ndarray, *, path: str = "", model_name: str = "",
                  threshold: float | None = None, threshold_source: str = "", sensitivity: float = DEFAULT_SENSITIVITY,
                  species_filter: SpeciesFilter | None = None, batch_size: int = 16) -> FileAnalysis:
    """:func:`analyze_file` for a waveform already in memory, cut into the model's non-overlapping windows.

    Parameters
    ----------
    model : BirdClassifier
    windows : np.ndarray [shape=(n_windows, window_samples), dtype=float32]
        At the model's rate, full-scale amplitude; window ``i`` starts at ``i * window_samples``, zero-padded after
        its ``valid`` samples (e.g. :func:`core.attacks.windows.cut_windows`).
    valid : np.ndarray [shape=(n_windows,)] [samples]
        Real (not padded) samples of each window.
    path, model_name, threshold, threshold_source, sensitivity, species_filter
        As in :func:`analyze_file` (no threshold is looked up here).
    batch_size : int >= 1

    Returns
    -------
    FileAnalysis
        Without the overview spectrogram.

    Raises
    ------
    ParameterError
        Bad ``batch_size``, ``sensitivity`` or ``windows`` shape.
    """
    check_int("batch_size", batch_size, 1)
    sensitivity = check_sensitivity(sensitivity)
    sr, n = int(model.config.frontend.sample_rate), int(model.config.window_samples)
    windows = np.asarray(windows, np.float32)
    valid = np.asarray(valid, np.int64)
    if windows.ndim != 2 or windows.shape[1] != n or len(valid) != len(windows) or not len(windows):
        raise ParameterError(f"windows must be (n_windows >= 1, {n}) with one valid count each, got {windows.shape} and {valid.shape}")
    allowed, filter_settings = filter_mask(model, model.config.class_names, species_filter)
    device = next(model.parameters()).device
    model.eval()
    scores = np.concatenate([_scores(model, windows[i : i + batch_size], sensitivity, device) for i in range(0, len(windows), batch_size)])
    return FileAnalysis(
        path=str(path), model=model_name, class_names=tuple(model.config.class_names), sample_rate=sr, window_s=n / sr,
        starts_s=np.arange(len(windows), dtype=np.float64) * n / sr, valid_s=valid.astype(np.float64) / sr, scores=scores.astype(np.float32),
        threshold=None if threshold is None else float(threshold), threshold_source=threshold_source if threshold is not None else "",
        level_dbfs=np.asarray([level_dbfs(x[:v]) for x, v in zip(windows, valid)]), info={"n_samples": int(valid.sum())},
        sensitivity=sensitivity, allowed=allowed, species_filter=filter_settings)


def analyze_file(model, path: str | os.PathLike, *, model_name: str = "", threshold: float | None = None,
                 threshold_source: str = "", sensitivity: float = DEFAULT_SENSITIVITY, species_filter: SpeciesFilter | None = None,
                 batch_size: int = 16, block_s: float = 30.0, progress: Callable[[float, float], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> FileAnalysis:
    """Score every window of a recording of any length, streamed (bounded memory).

    Parameters
    ----------
    model : BirdClassifier
    path : path-like
    model_name : str
        Recorded in the result.
    threshold : float in (0, 1), optional
        Decision threshold for :func:`detections`; default the model card's
        validation threshold when ``model_name`` has one.
    sensitivity : float in [0.5, 1.5], default 1.0
        BirdNET-Analyzer 2.4.0's sigmoid sensitivity, applied to the logits (:func:`core.field.detect.flat_sigmoid`).
    species_filter : SpeciesFilter, optional
        BirdNET-Analyzer's location/week filter (:func:`core.field.detect.species_filter`): species not expected
        there are left out of the tables (``allowed``).
    batch_size : int >= 1
        Windows scored together.
    block_s : float [seconds]
        Decoding block (:func:`iter_windows`).
    progress : callable, optional
        ``progress(seconds_done, seconds_total)`` after every batch (total from the
        file header; 0 when unknown).
    cancel : callable, optional
        Polled after every batch; True raises :class:`InterruptedError`.

    Returns
    -------
    FileAnalysis

    Raises
    ------
    AudioLoadError
        Unreadable file.
    ParameterError
        Bad ``batch_size``, ``threshold`` or ``sensitivity``, or a recording shorter than :data:`MIN_DURATION_S`
        (never padded silently into a window).
    InterruptedError
        Cancelled.
    """
    import time

    from core.training.calibration import card_thresholds

    check_int("batch_size", batch_size, 1)
    sensitivity = check_sensitivity(sensitivity)
    if threshold is None and model_name:
        found = card_thresholds([model_name])
        if model_name in found:
            threshold, threshold_source = found[model_name], "validation threshold of the model card"
    if threshold is not None and not (0.0 < float(threshold) < 1.0):
        raise ParameterError(f"threshold must lie in (0, 1), got {threshold}")
    t0 = time.time()
    sr, window = int(model.config.frontend.sample_rate), int(model.config.window_samples)
    try:
        total = float(sf.info(str(path)).duration)
    except Exception:
        total = 0.0
    allowed, filter_settings = filter_mask(model, model.config.class_names, species_filter)
    device = next(model.parameters()).device
    model.eval()
    starts, valid, scores, batch, levels, overview, info = [], [], [], [], [], [], {}

    def flush():
        scores.append(_scores(model, np.stack(batch), sensitivity, device))
        batch.clear()
        if progress:
            progress(min((starts[-1] + valid[-1]) / sr, total) if total else (starts[-1] + valid[-1]) / sr, total)
        if cancel and cancel():
            raise InterruptedError("analysis cancelled")

    for start, w, n_valid, source in iter_windows(path, sr, window, block_s=block_s):
        if start == 0 and n_valid < MIN_DURATION_S * sr:
            raise ParameterError(f"{Path(path).name} is {n_valid / sr:.2f} s long; analyze needs at least {MIN_DURATION_S} s "
                                 f"(a shorter recording would be scored as a {window / sr:g} s window of mostly silence)")
        info = source
        starts.append(start)
        valid.append(n_valid)
        levels.append(level_dbfs(w[:n_valid]))
        overview.append(_band_power_db(w[:n_valid], sr))
        batch.append(w)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    return FileAnalysis(
        path=str(path), model=model_name, class_names=tuple(model.config.class_names), sample_rate=sr, window_s=window / sr,
        starts_s=np.asarray(starts, np.float64) / sr, valid_s=np.asarray(valid, np.float64) / sr,
        scores=np.concatenate(scores).astype(np.float32), threshold=None if threshold is None else float(threshold),
        threshold_source=threshold_source if threshold is not None else "", level_dbfs=np.asarray(levels, np.float64),
        overview_db=np.stack(overview).astype(np.float32), overview_hz=_overview_hz(sr),
        info={**info, "seconds": time.time() - t0}, sensitivity=sensitivity, allowed=allowed, species_filter=filter_settings)
