"""Whole-file analysis: streamed windows equal the whole-file path, outcomes follow the threshold, tables parse."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from core.errors import AudioLoadError, ParameterError
from core.field.analyze import NO_BIRD, FileAnalysis, analyze_file, audio_files, iter_windows
from core.field.tables import RAVEN_COLUMNS, detections, to_birdnet_csv, to_raven_table, window_outcomes
from core.io.audio import frame_windows, load_audio
from core.models.registry import list_checkpoints, load_checkpoint, read_model_card
from tests.conftest import ROOT, tone


def _stereo_file(path, seconds, sr=44_100, seed=0):
    rng = np.random.default_rng(seed)
    x = tone(2500, seconds, sr, amp=0.2) + rng.standard_normal(int(seconds * sr)).astype(np.float32) * 0.02
    y = rng.standard_normal(int(seconds * sr)).astype(np.float32) * 0.05
    sf.write(path, np.stack([x, y], 1), sr)
    return path


@pytest.mark.parametrize("block_s", [1.3, 30.0])
def test_streamed_windows_equal_the_whole_file_path(tmp_path, block_s):
    path = _stereo_file(tmp_path / "long.flac", 23.7)
    whole = load_audio(path, sample_rate=32_000).waveform
    want, want_starts = frame_windows(whole, 160_000)
    got = list(iter_windows(path, 32_000, 160_000, block_s=block_s))
    assert [g[0] for g in got] == want_starts == [0, 160_000, 320_000, 480_000, 640_000]  # 23.7 s: the 3.7 s tail is kept, padded
    assert [g[2] for g in got] == [160_000] * 4 + [len(whole) - 640_000]
    # the streaming resampler leaves no seam at block edges: equal to the one-shot resampler up to its filter edge
    stacked = np.stack([g[1] for g in got])
    assert np.abs(stacked[:, 2000:-2000] - want[:, 2000:-2000]).max() < 1e-3
    assert got[-1][3]["source_channels"] == 2 and got[-1][3]["source_sample_rate"] == 44_100
    assert got[-1][3]["n_samples"] == pytest.approx(len(whole), abs=2)


def test_short_tail_is_not_analysed_but_counted(tmp_path):
    path = _stereo_file(tmp_path / "t.wav", 12.0, sr=32_000)  # 2 windows of 5 s and a 2 s tail (< half a window)
    got = list(iter_windows(path, 32_000, 160_000))
    assert [g[0] for g in got] == [0, 160_000]
    short = _stereo_file(tmp_path / "s.wav", 1.0, sr=32_000)  # shorter than a window: one padded window
    (start, w, valid, _), = iter_windows(short, 32_000, 160_000)
    assert start == 0 and valid == 32_000 and not w[valid:].any()


def test_unreadable_and_empty_files_raise_clear_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF not really a wave file" * 10)
    with pytest.raises(AudioLoadError, match="bad.wav"):
        list(iter_windows(bad, 32_000, 160_000))
    empty = tmp_path / "e.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioLoadError, match="empty"):
        list(iter_windows(empty, 32_000, 160_000))
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    with pytest.raises(ParameterError, match="no audio files"):
        audio_files(d)
    with pytest.raises(ParameterError, match="no such file"):
        audio_files(tmp_path / "nowhere")


def _analysis(scores, window_s=5.0, valid=None):
    scores = np.asarray(scores, np.float32)
    n = len(scores)
    return FileAnalysis(path="f.wav", model="m", class_names=("parmaj", "acrsch"), sample_rate=32_000, window_s=window_s,
                        starts_s=np.arange(n) * window_s, valid_s=np.asarray(valid if valid is not None else [window_s] * n, float),
                        scores=scores, threshold=0.4, threshold_source="test", info={})


def test_outcomes_and_detections_follow_the_threshold():
    a = _analysis([[0.9, 0.5], [0.1, 0.39], [0.2, 0.8]], valid=[5.0, 5.0, 2.6])
    out = window_outcomes(a)
    assert list(out["outcome"]) == ["Great Tit, Sedge Warbler", NO_BIRD, "Sedge Warbler"]
    assert list(out["n_species"]) == [2, 0, 1] and list(out["padded"]) == [False, False, True]
    assert out["end_s"].iloc[-1] == pytest.approx(12.6)
    d = detections(a)
    assert list(zip(d["start_s"], d["species_code"])) == [(0.0, "parmaj"), (0.0, "acrsch"), (10.0, "acrsch")]
    assert list(window_outcomes(a, threshold=0.95)["outcome"]) == [NO_BIRD] * 3
    a.threshold = None
    with pytest.raises(ParameterError, match="no validation threshold"):
        detections(a)


def test_selection_tables_parse_back(tmp_path):
    d = detections(_analysis([[0.9, 0.5], [0.1, 0.2]]))
    raven = tmp_path / "r.txt"
    raven.write_text(to_raven_table(d, low_hz=50, high_hz=14_000))
    t = pd.read_csv(raven, sep="\t")
    assert tuple(t.columns) == RAVEN_COLUMNS and list(t["Selection"]) == [1, 2]
    assert list(t["Common Name"]) == ["Great Tit", "Sedge Warbler"] and (t["High Freq (Hz)"] == 14_000).all()
    assert (t["End Time (s)"] - t["Begin Time (s)"] == 5.0).all()
    c = pd.read_csv(pd.io.common.StringIO(to_birdnet_csv(d)))
    assert list(c.columns) == ["Start (s)", "End (s)", "Scientific name", "Common name", "Confidence", "File"]
    assert list(c["Scientific name"]) == ["Parus major", "Acrocephalus schoenobaenus"] and c["Confidence"].iloc[0] == 0.9
    with pytest.raises(ParameterError):
        to_raven_table(d, low_hz=5_000, high_hz=100)


needs_models = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")


@pytest.mark.slow
@needs_models
def test_analyze_file_scores_every_window_like_the_clip_path(tmp_path):
    from core.field.inference import analyze_waveform

    path = _stereo_file(tmp_path / "x.wav", 18.0)
    model = load_checkpoint("protopnet")
    seen = []
    res = analyze_file(model, path, model_name="protopnet", batch_size=2, block_s=2.0, progress=lambda d, t: seen.append((d, t)))
    want = analyze_waveform(model, load_audio(path, sample_rate=32_000).waveform)
    assert res.scores.shape == want.scores.shape == (4, 9)
    assert np.abs(res.scores - want.scores).max() < 2e-3
    assert res.threshold == pytest.approx(read_model_card("protopnet")["decision_threshold"]["value"])
    assert res.duration_s == pytest.approx(18.0, abs=1e-3) and list(res.padded) == [False, False, False, True]
    assert seen[-1][0] == pytest.approx(18.0, abs=1e-3) and seen[-1][1] == pytest.approx(18.0, abs=1e-3)
    with pytest.raises(InterruptedError):
        analyze_file(model, path, batch_size=1, cancel=lambda: True)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_models
def test_cli_analyses_a_directory_and_keeps_going_past_a_bad_file(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _stereo_file(src / "a.wav", 11.0)
    (src / "b.wav").write_bytes(b"RIFF" + b"\0" * 100)
    r = run_cli("analyze", str(src), "--model", "protopnet", "--out", str(tmp_path / "out"), "--threshold", "0.3")
    assert r.returncode == 1 and "b.wav" in r.stderr and "Traceback" not in r.stderr
    assert "a.wav: 11.0 s, 2 windows of 5 s" in r.stdout and "min_conf 0.30 (--min-conf)" in r.stdout  # --threshold: --min-conf's alias
    t = pd.read_csv(tmp_path / "out" / "a.BirdNET.selection.table.txt", sep="\t")
    fe = load_checkpoint("protopnet").config.frontend
    assert (t["Low Freq (Hz)"] == fe.f_min).all() and (t["High Freq (Hz)"] == fe.f_max).all()  # the band the model hears
    w = pd.read_csv(tmp_path / "out" / "a.windows.csv")
    assert len(w) == 2 and tuple(t.columns) == RAVEN_COLUMNS
    assert len(t) == int(w["n_species"].sum())  # one selection per (window, species) at the threshold
    assert not (tmp_path / "out" / "b.windows.csv").exists()
    r = run_cli("analyze", str(src / "a.wav"), "--model", "protopnet", "--out", str(tmp_path / "o2"), "--format", "mp4")
    assert r.returncode == 2 and "--format" in r.stderr


@pytest.mark.slow
@needs_models
def test_json_output_piped_into_head_ends_quietly(tmp_path):
    path = _stereo_file(tmp_path / "x.wav", 6.0)
    p = subprocess.run(f'"{sys.executable}" -m core predict "{path}" --model protopnet --json | head -n 1', shell=True, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.stdout.strip() == "{" and "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


def test_silent_windows_are_never_detections():
    a = _analysis([[0.9, 0.5], [0.9, 0.1]])
    a.level_dbfs = np.array([-95.0, -40.0])
    out = window_outcomes(a)
    assert out["outcome"].iloc[0].startswith("silence") and out["n_species"].iloc[0] == 0
    assert list(detections(a)["start_s"]) == [5.0]


@pytest.mark.slow
@needs_models
def test_no_bird_check_agrees_with_the_file_path(tmp_path):
    from core.field.nobird import _control_signals, no_bird_check

    model = load_checkpoint("protopnet")
    table = no_bird_check({"protopnet": model}, n_windows=3, families=()).set_index("signal")
    assert len(table) == 4 and (table["windows"] == 3).all()
    tone_wave = _control_signals(32_000, 160_000, 3)["3 kHz tone, -20 dBFS"]
    sf.write(tmp_path / "tone.wav", tone_wave, 32_000, subtype="FLOAT")
    res = analyze_file(model, tmp_path / "tone.wav", model_name="protopnet")
    got = (window_outcomes(res)["n_species"] == 0).mean()
    assert table.loc["3 kHz tone, -20 dBFS", "no_bird_rate"] == pytest.approx(got)
    assert table.loc["3 kHz tone, -20 dBFS", "median_top_score"] == pytest.approx(np.median(res.scores.max(1)), abs=1e-5)
    with pytest.raises(ParameterError, match="n_windows"):
        no_bird_check({"protopnet": model}, n_windows=0)


def test_read_segment_equals_the_window_of_the_whole_file(tmp_path):
    from core.field.analyze import read_segment

    path = _stereo_file(tmp_path / "x.flac", 20.0)
    whole = load_audio(path, sample_rate=32_000).waveform
    seg = read_segment(path, 32_000, 10.0, 5.0)
    assert seg.shape == (160_000,)
    assert np.abs(seg[2000:-2000] - whole[320_000 + 2000 : 480_000 - 2000]).max() < 1e-3
    assert len(read_segment(path, 32_000, 18.0, 5.0)) == 64_000  # the last 2 s
    with pytest.raises(AudioLoadError, match="past the end"):
        read_segment(path, 32_000, 25.0, 5.0)


def test_raven_table_as_raven_pro_reads_it_with_ebird_codes_and_german_names(tmp_path):
    """Tab-separated, Raven's standard columns; Species Code is the eBird code, Common Name in the chosen locale."""
    from core.io.names import common_name, ebird_code

    d = detections(_analysis([[0.9, 0.5], [0.1, 0.2]]), locale="de")
    raven = tmp_path / "r.BirdNET.selection.table.txt"
    raven.write_text(to_raven_table(d, low_hz=150, high_hz=15_000), encoding="utf-8")
    t = pd.read_csv(raven, sep="\t", encoding="utf-8")
    assert {"Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Species Code",
            "Common Name", "Confidence"} <= set(t.columns)
    assert list(t["Species Code"]) == [ebird_code("Parus major"), ebird_code("Acrocephalus schoenobaenus")] == ["gretit1", "sedwar1"]
    assert list(t["Common Name"]) == ["Kohlmeise", common_name("Acrocephalus schoenobaenus", "de")] and t["Common Name"][1] != "Sedge Warbler"
    assert list(t["View"]) == ["Spectrogram 1"] * 2 and (t["Channel"] == 1).all() and list(t["Confidence"]) == [0.9, 0.5]
    c = pd.read_csv(pd.io.common.StringIO(to_birdnet_csv(d)))
    assert list(c["Common name"]) == list(t["Common Name"]) and list(d["ebird_code"]) == ["gretit1", "sedwar1"]
    assert list(window_outcomes(_analysis([[0.9, 0.1]]), locale="fr")["outcome"]) == ["Mésange charbonnière"]
    with pytest.raises(ParameterError, match="locale must be one of"):
        detections(_analysis([[0.9, 0.5]]), locale="klingon")


def test_species_left_out_by_the_location_filter_appear_in_no_table():
    a = _analysis([[0.9, 0.5], [0.1, 0.8]])
    a.allowed = np.array([False, True])  # Great Tit not expected at the place
    d = detections(a)
    assert list(d["species_code"]) == ["acrsch", "acrsch"]
    out = window_outcomes(a)
    assert list(out["outcome"]) == ["Sedge Warbler", "Sedge Warbler"] and list(out["top_species"]) == ["Sedge Warbler"] * 2
    a.allowed = np.array([False, False])
    assert detections(a).empty and list(window_outcomes(a)["outcome"]) == [NO_BIRD] * 2


def test_flat_sigmoid_is_birdnet_analyzers_and_sensitivity_is_checked():
    """score = sigmoid(clip(logit + 10 (sensitivity - 1), -20, 20)) (birdnet-analyzer 2.4.0, model.flat_sigmoid)."""
    import torch

    from core.field.detect import flat_sigmoid

    x = torch.linspace(-30, 30, 61)
    assert torch.allclose(flat_sigmoid(x, 1.0), torch.sigmoid(x.clamp(-20, 20)))
    assert torch.allclose(flat_sigmoid(x, 1.5), torch.sigmoid((x + 5).clamp(-20, 20)))
    assert torch.allclose(flat_sigmoid(x, 0.75), torch.sigmoid((x - 2.5).clamp(-20, 20)))
    assert (flat_sigmoid(x, 1.2) >= flat_sigmoid(x, 1.0)).all() and (flat_sigmoid(x, 0.8) <= flat_sigmoid(x, 1.0)).all()
    for bad in (0.49, 1.51, float("nan"), True, "1"):
        with pytest.raises(ParameterError, match="sensitivity"):
            flat_sigmoid(x, bad)


@pytest.mark.parametrize("kw,needle", [
    ({"lat": 90.5, "lon": 0.0}, "lat must lie in"), ({"lat": 10.0, "lon": -181.0}, "lon must lie in"),
    ({"lat": 10.0, "lon": 10.0, "week": 0}, "week must be"), ({"lat": 10.0, "lon": 10.0, "week": 49}, "week must be"),
    ({"lat": 10.0}, "both lat and lon"), ({"week": 12}, "give lat and lon"), ({"lat": float("nan"), "lon": 0.0}, "finite"),
    ({"lat": 10.0, "lon": 10.0, "threshold": 1.0}, "sf_thresh"),
])
def test_species_filter_refuses_bad_places_and_weeks(kw, needle):
    from core.field.detect import species_filter

    with pytest.raises(ParameterError, match=needle):
        species_filter(**kw)


def test_species_filter_off_without_a_place_or_at_birdnet_analyzers_minus_one():
    from core.field.detect import SpeciesFilter, species_filter

    assert species_filter() is None and species_filter(-1, -1, 20) is None  # BirdNET-Analyzer's "Set -1 to ignore"
    f = species_filter(48.1, 11.6, 20)
    assert isinstance(f, SpeciesFilter) and f.describe() == {"lat": 48.1, "lon": 11.6, "week": 20, "sf_thresh": 0.03}


def test_analyze_file_refuses_a_recording_shorter_than_half_a_second(tmp_path, tiny_proto):
    path = tmp_path / "blip.wav"
    sf.write(path, np.full(7_000, 0.1, np.float32), 16_000)  # 0.44 s
    with pytest.raises(ParameterError, match=r"blip.wav is 0.44 s long; analyze needs at least 0.5 s"):
        analyze_file(tiny_proto, path, threshold=0.5)
    sf.write(path, np.full(8_000, 0.1, np.float32), 16_000)  # 0.5 s: enough
    assert analyze_file(tiny_proto, path, threshold=0.5).scores.shape == (1, 3)


def test_sensitivity_shifts_the_logits_of_every_window(tmp_path, tiny_proto):
    """analyze_file's scores at sensitivity s are sigmoid(logit + 10 (s - 1)) of the model's own logits."""
    import torch

    path = _stereo_file(tmp_path / "x.wav", 2.0, sr=16_000)
    wave = load_audio(path, sample_rate=16_000).waveform
    with torch.no_grad():
        logits = tiny_proto(torch.as_tensor(frame_windows(wave, 16_000)[0]))
    for s in (0.5, 1.0, 1.3):
        res = analyze_file(tiny_proto, path, threshold=0.5, sensitivity=s)
        assert res.sensitivity == s
        assert np.allclose(res.scores, torch.sigmoid((logits + 10 * (s - 1)).clamp(-20, 20)).numpy(), atol=1e-5)


@pytest.mark.parametrize("sr,n", [(48_000, 144_000), (32_000, 1_000), (22_050, 5_000)])
def test_overview_band_power_is_librosas_melspectrogram(sr, n):
    """The overview's cached filterbank gives librosa.feature.melspectrogram's band power exactly."""
    import librosa

    from core.field.analyze import OVERVIEW_MELS, _band_power_db

    x = (np.random.default_rng(n).standard_normal(n) * 0.05).astype(np.float32)
    ref = librosa.feature.melspectrogram(y=np.pad(x, (0, max(0, 2048 - n))), sr=sr, n_fft=2048, hop_length=1024,
                                         n_mels=OVERVIEW_MELS, fmin=50.0, fmax=min(15_000.0, sr / 2), power=2.0)
    np.testing.assert_allclose(_band_power_db(x, sr), 10 * np.log10(np.maximum(ref.mean(axis=1) / 512, 1e-12)), atol=1e-4)
