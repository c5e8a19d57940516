"""Shared fixtures: tiny models built in the test, generated audio, and the shipped data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.io.data import find_data_dir  # noqa: E402
from core.models.convnext import BackboneConfig  # noqa: E402
from core.models.frontend import FrontendConfig  # noqa: E402
from core.models.registry import ModelConfig, build_model  # noqa: E402

TINY_FRONTEND = FrontendConfig(sample_rate=16_000, n_fft=512, hop_length=256, n_mels=32, f_min=50.0, f_max=8_000.0)
TINY_BACKBONE = BackboneConfig(depths=(1, 1), dims=(8, 16), drop_path_rate=0.0, stem="overlap", norm="batch", layer_scale_init=1.0)
CLASSES = ("aaa", "bbb", "ccc")


def tiny_config(arch: str, **kw) -> ModelConfig:
    return ModelConfig(arch=arch, class_names=CLASSES, frontend=TINY_FRONTEND, backbone=TINY_BACKBONE,
                       clip_seconds=1.0, prototypes_per_class=2, **kw)


@pytest.fixture(params=["protopnet", "baseline"])
def tiny_model(request):
    torch.manual_seed(0)
    return build_model(tiny_config(request.param)).eval()


@pytest.fixture
def tiny_proto():
    torch.manual_seed(0)
    return build_model(tiny_config("protopnet")).eval()


def tone(freq: float, seconds: float, sr: int, amp: float = 0.3, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    x = (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


@pytest.fixture
def tiny_dataset(tmp_path):
    """A 3-class dataset of generated tones in WAV, FLAC and OGG, with a manifest."""
    return make_tiny_dataset(tmp_path)


def make_tiny_dataset(tmp_path: Path) -> Path:
    """Write the :func:`tiny_dataset` files under ``tmp_path`` and return it."""
    rows = ["path,recording_id,labels,secondary_labels,split,duration_s"]
    freqs = {"aaa": 500.0, "bbb": 2000.0, "ccc": 5000.0}
    fmt = {"train": "wav", "val": "flac", "test": "ogg"}
    for code, f in freqs.items():
        for split, n in (("train", 2), ("val", 1), ("test", 1)):
            for i in range(n):
                rid = f"{code}{split}{i}"
                path = tmp_path / "audio" / code / f"{rid}.{fmt[split]}"
                path.parent.mkdir(parents=True, exist_ok=True)
                sr = 22_050 if split == "train" else 44_100
                sf.write(path, tone(f, 2.5, sr, channels=2 if i else 1), sr)
                rows.append(f"audio/{code}/{rid}.{fmt[split]},{rid},{code},,{split},")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "species.csv").write_text(
        "species_code,scientific_name,english_name\n" + "\n".join(f"{c},{c} sci,{c} bird" for c in freqs) + "\n"
    )
    return tmp_path


@pytest.fixture(scope="session")
def data_dir():
    d = find_data_dir()
    if d is None:
        pytest.skip("xc9 dataset not found (set BIRDSHIELD_DATA_DIR)")
    return d


_RESULT_SKIPS: list[str] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "data_dir" in getattr(item, "fixturenames", ()):
        _RESULT_SKIPS.append(item.nodeid)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Results tests (shipped checkpoints, the figures in docs/) need the dataset; when they skip, say so loudly."""
    if _RESULT_SKIPS:
        bar = "!" * 100
        terminalreporter.write_line(bar, red=True, bold=True)
        terminalreporter.write_line(f"{len(_RESULT_SKIPS)} RESULTS TESTS SKIPPED: the xc9 dataset was not found (set BIRDSHIELD_DATA_DIR "
                                    "or put it at ../shared/data/xc9). The shipped figures were NOT checked:", red=True, bold=True)
        for nodeid in _RESULT_SKIPS[:20]:
            terminalreporter.write_line(f"  {nodeid}", red=True)
        terminalreporter.write_line(bar, red=True, bold=True)
