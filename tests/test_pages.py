"""Every page runs under Streamlit's AppTest: dataset clip, upload of a real file, an attack."""

import io

import numpy as np
import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
TIMEOUT = 120


def no_exception(at):
    assert not at.exception, [e.value for e in at.exception]


def test_home():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.title[0].value == "birdshield"
    assert any("test" in s.value.lower() for s in at.subheader)
    assert len(at.dataframe) >= 1


def test_clip_page_dataset_clip(data_dir):
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    assert at.radio(key="clip_source").value == "Dataset"
    at.multiselect(key="clip_species").set_value(["parmaj"]).run()
    no_exception(at)
    assert any("Great Tit" in m.value for m in at.markdown)  # the chosen recording is labelled parmaj
    subheaders = [s.value for s in at.subheader]
    assert any("score" in s for s in subheaders)  # prototype explanations rendered for the top classes
    assert not at.error


def test_clip_page_upload_real_file(data_dir):
    # a real recording from the dataset, uploaded as a file
    flac = next((data_dir / "audio").rglob("*.flac"))
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    at.radio(key="clip_source").set_value("Upload").run()
    at.file_uploader(key="clip_upload").set_value((flac.name, flac.read_bytes(), "audio/flac")).run()
    no_exception(at)
    assert not at.error
    assert any("score" in s.value for s in at.subheader)


def test_clip_page_upload_bad_file():
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
    at.radio(key="clip_source").set_value("Upload").run()
    at.file_uploader(key="clip_upload").set_value(("notes.wav", b"not audio", "audio/wav")).run()
    no_exception(at)
    assert at.error and "not a readable audio file" in at.error[0].value


def test_attack_page_runs_attack():
    buf = io.BytesIO()
    sf.write(buf, tone(2500, 5.0, 32_000, amp=0.2) + np.float32(0), 32_000, format="WAV")
    at = AppTest.from_file(str(ROOT / "pages" / "2_Attack.py"), default_timeout=TIMEOUT).run()
    no_exception(at)
    at.radio(key="attack_source").set_value("Upload").run()
    at.file_uploader(key="attack_upload").set_value(("tone.wav", buf.getvalue(), "audio/wav")).run()
    at.number_input(key="attack_eps").set_value(0.005).run()
    at.number_input(key="attack_steps").set_value(3).run()
    at.button(key="attack_run").click().run()
    no_exception(at)
    assert not at.error
    labels = {m.label: m.value for m in at.metric}
    snr = float(labels["SNR of perturbation"].split()[0])
    assert 10 < snr < 40
    assert float(labels["L-inf"]) <= 0.005 + 1e-6
    assert len(at.dataframe) >= 2  # score table and changed prototypes


def test_pages_without_dataset(monkeypatch, tmp_path):
    """No dataset anywhere: the pages still run on uploads and say how to get the data."""
    import streamlit as st

    import core.data

    monkeypatch.delenv("BIRDSHIELD_DATA_DIR", raising=False)
    monkeypatch.setattr(core.data, "candidate_data_dirs", lambda explicit=None: [tmp_path / "nothing"])
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT).run()
        no_exception(at)
        assert at.radio(key="clip_source").options == ["Upload", "Record"]
        assert any("python -m core download" in i.value for i in at.info)
        home = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT).run()
        no_exception(home)
        assert any("No dataset found" in w.value for w in home.warning)
    finally:
        st.cache_resource.clear()
