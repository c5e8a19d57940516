import io

import numpy as np
import pytest
import soundfile as sf

from core.errors import AudioLoadError, ParameterError
from core.io.audio import frame_windows, load_audio, wav_bytes, window_starts
from tests.conftest import tone


@pytest.mark.parametrize("fmt,subtype", [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", "PCM_24"), ("OGG", "VORBIS")])
def test_load_formats_resample_and_mono(tmp_path, fmt, subtype):
    sr = 44_100
    x = tone(1000, 1.0, sr, amp=0.5, channels=2)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, x, sr, format=fmt, subtype=subtype)
    clip = load_audio(path, sample_rate=32_000)
    assert clip.waveform.dtype == np.float32 and clip.waveform.ndim == 1
    assert clip.source_channels == 2 and clip.source_sample_rate == sr
    assert abs(len(clip.waveform) - 32_000) <= 1
    # amplitude preserved (a 1 kHz tone survives resampling); skip the edges
    assert np.abs(clip.waveform[2000:-2000]).max() == pytest.approx(0.5, abs=0.05)


def test_load_mp3_from_dataset(data_dir):
    mp3 = next((data_dir / "audio").rglob("*.mp3"))
    clip = load_audio(mp3, sample_rate=32_000, duration_s=2.0)
    assert len(clip.waveform) == 64_000 and np.isfinite(clip.waveform).all()


def test_bytes_and_errors(tmp_path):
    buf = io.BytesIO()
    sf.write(buf, tone(440, 0.5, 16_000), 16_000, format="WAV")
    assert len(load_audio(buf.getvalue(), sample_rate=16_000).waveform) == 8000
    with pytest.raises(AudioLoadError, match="empty"):
        load_audio(b"", sample_rate=16_000)
    bad = tmp_path / "text.wav"
    bad.write_text("this is not audio")
    with pytest.raises(AudioLoadError, match="not a readable audio file"):
        load_audio(bad)
    with pytest.raises(AudioLoadError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioLoadError, match="empty path"):  # not "no such file: ." (Path("") is the directory)
        load_audio("")
    with pytest.raises(ParameterError):
        load_audio(buf.getvalue(), sample_rate=0)


def test_nan_samples_replaced(tmp_path):
    x = tone(440, 0.5, 16_000)
    x[100:200] = np.nan
    x[300] = np.inf
    path = tmp_path / "nan.wav"
    sf.write(path, x, 16_000, subtype="FLOAT")
    assert np.isfinite(load_audio(path, sample_rate=16_000).waveform).all()


def test_too_long_refused(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(8000 * 5, np.float32), 8000)
    with pytest.raises(AudioLoadError, match="longer than the limit"):
        load_audio(path, max_duration_s=2.0)


def test_windows_pad_and_cover():
    assert window_starts(10, 4) == [0, 4, 8]  # rest 2 >= 50 % of 4: kept, padded
    assert window_starts(9, 4) == [0, 4]  # rest 1 < 50 %: dropped
    assert window_starts(3, 4) == [0]  # shorter than a window: one padded window
    w, s = frame_windows(np.ones(3, np.float32), 4)
    assert w.shape == (1, 4) and w[0].tolist() == [1, 1, 1, 0]


def test_wav_bytes_keep_true_level():
    x = tone(440, 0.2, 16_000, amp=0.01)
    y, sr = sf.read(io.BytesIO(wav_bytes(x, 16_000)), dtype="float32")
    assert sr == 16_000 and np.abs(y).max() == pytest.approx(0.01, abs=2e-4)  # not peak-normalised
    y2, _ = sf.read(io.BytesIO(wav_bytes(x, 16_000, gain=10)), dtype="float32")
    assert np.abs(y2).max() == pytest.approx(0.1, abs=1e-3)
