"""The simple reference (core.studies.reference): logistic regression on the time-mean log-mel."""

import runpy
import sys

import numpy as np
import pytest

from core.io.data import Dataset
from core.studies.reference import mean_logmel_features, reference_logreg
from tests.conftest import TINY_FRONTEND, tone


def test_mean_logmel_puts_a_tone_in_its_band():
    low, high = tone(500.0, 2.0, TINY_FRONTEND.sample_rate), tone(5000.0, 2.0, TINY_FRONTEND.sample_rate)
    f = mean_logmel_features(np.stack([low, high]), TINY_FRONTEND)
    assert f.shape == (2, TINY_FRONTEND.n_mels) and f.dtype == np.float32
    assert f[0].argmax() < f[1].argmax()  # the 500 Hz tone peaks in a lower mel band than the 5 kHz one
    assert mean_logmel_features(np.zeros((0, 32_000), np.float32), TINY_FRONTEND).shape == (0, TINY_FRONTEND.n_mels)


def test_reference_separates_tones_and_chooses_c_on_validation(tiny_dataset):
    ds = Dataset(tiny_dataset)
    res = reference_logreg(ds, frontend=TINY_FRONTEND, window_s=1.0, c_grid=(0.1, 1.0))
    assert res["C"] in (0.1, 1.0)
    test = res["metrics"]["test"]
    assert test["recording"]["top1"] == 1.0 and test["window"]["cmap"] > 0.9  # three tones, three classes


def test_python_dash_m_core_runs_the_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["python -m core", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("core", run_name="__main__")
    assert e.value.code == 0 and "predict" in capsys.readouterr().out
