"""core.field.certificates: what the plain model says beside a certificate, and the warnings an ecologist reads."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from core.attacks.smoothing import Certificate, max_certifiable_radius
from core.field.certificates import at_cap, certificate_notes, plain_reading
from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone

NAMES = ("aaa", "bbb", "ccc")


def cert(label: str, *, p_lower=0.99, n=1000, sigma=3e-4, radius="cap") -> Certificate:
    top = max_certifiable_radius(sigma, n, 0.001)
    r = None if p_lower <= 0.5 else (top if radius == "cap" else radius)
    return Certificate(0.0, 3.0, NAMES.index(label), label, np.zeros(3, np.int64), np.zeros(3, np.int64), p_lower, r,
                       None if r is None else 60.0, 1.0, top, 100, n, sigma, 0.001, 1.0)


def name(code: str) -> str:
    return code.upper()


def test_plain_reading_detects_at_the_threshold_and_never_on_silence():
    loud = 0.1 * np.ones(100, np.float32)
    r = plain_reading(np.array([0.2, 0.7, 0.5]), NAMES, 0.5, loud)
    assert (r.top_class, r.top_score, r.detected, r.silent) == ("bbb", 0.7, ("bbb", "ccc"), False)
    assert r.level_dbfs == pytest.approx(-20.0)
    quiet = plain_reading(np.array([0.2, 0.9, 0.1]), NAMES, 0.5, np.zeros(100, np.float32))
    assert quiet.silent and quiet.detected == () and quiet.level_dbfs == -math.inf


def test_notes_name_silence_no_detection_a_different_plain_answer_and_the_cap():
    loud = 0.1 * np.ones(100, np.float32)
    agree = plain_reading(np.array([0.9, 0.1, 0.1]), NAMES, 0.5, loud)
    assert certificate_notes(cert("aaa", radius=1e-4), agree, name) == []  # detected, same answer, below the cap
    (cap,) = certificate_notes(cert("aaa"), agree, name)
    assert at_cap(cert("aaa")) and "Every noisy copy agreed" in cap and "1,000 copies" in cap
    nothing = plain_reading(np.array([0.3, 0.1, 0.2]), NAMES, 0.5, loud)
    notes = certificate_notes(cert("ccc", radius=1e-4), nothing, name)
    assert len(notes) == 2 and "detects no bird here" in notes[0] and "AAA at 0.30" in notes[0]
    assert "plain model's top species is AAA, not CCC" in notes[1]
    silent = plain_reading(np.array([0.9, 0.1, 0.1]), NAMES, 0.5, np.zeros(100, np.float32))
    notes = certificate_notes(cert("aaa", radius=1e-4), silent, name)
    assert len(notes) == 1 and "silent" in notes[0]  # not also "no bird detected"
    # an abstention is not "a different answer", and has no radius to be capped
    assert certificate_notes(cert("bbb", p_lower=0.4), agree, name) == []


@pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
def test_cli_certify_warns_on_a_silent_window_and_writes_valid_json(tmp_path):
    path = tmp_path / "half_silent.wav"
    sf.write(path, np.concatenate([np.zeros(5 * 32_000, np.float32), tone(3000, 5.0, 32_000, amp=0.2)]), 32_000)
    r = subprocess.run([sys.executable, "-m", "core", "certify", str(path), "--model", "protopnet", "--n0", "10", "--n", "20", "--json"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Infinity" not in r.stdout and "NaN" not in r.stdout  # strict JSON
    silent, toned = json.loads(r.stdout)["windows"]
    assert silent["level_dbfs"] is None and silent["plain_detected"] == [] and "silent" in silent["notes"][0]
    if not silent["abstain"]:
        assert silent["snr_db"] is None  # an SNR of -inf dB: no figure
    assert toned["level_dbfs"] == pytest.approx(20 * math.log10(0.2 / math.sqrt(2)), abs=0.1)
    assert (not toned["plain_detected"]) == any("detects no bird" in n for n in toned["notes"])
    from core.io.names import ebird_code

    # named as predict's detections and the detections table name species
    assert toned["ebird_code"] == ebird_code(toned["scientific_name"]) and toned["common_name"] and toned["species_code"]
    assert (toned["species_code"] != toned["plain_species_code"] and not toned["abstain"]) == any("plain model's top species" in n for n in toned["notes"])
    text = subprocess.run([sys.executable, "-m", "core", "certify", str(path), "--model", "protopnet", "--n0", "10", "--n", "20",
                           "--end", "4"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    assert "no SNR (a silent window)" in text.stdout or "abstain" in text.stdout
    assert "note: The window is silent" in text.stdout
