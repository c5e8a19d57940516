"""The Certify panel (randomized smoothing) on the Clip and Field recording pages, under Streamlit's AppTest.

Kept apart from tests/test_pages.py, which is over the 600-line limit already.
"""

import pytest
import soundfile as sf
from streamlit.testing.v1 import AppTest

from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone
from tests.test_pages import TIMEOUT, finish_job, no_exception

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")


def cert_names(at):
    from core.models.registry import read_model_card

    return read_model_card(at.session_state["model_name"] if "model_name" in at.session_state else "protopnet")["config"]["class_names"]


def certify_and_read(at, key: str):
    """Press the panel's button with N = 100 (the fewest: n0 = 100 choose the answer) and return its sentence."""
    assert not [b for b in at.button if b.key == f"{key}_run" and b.disabled]
    assert f"{key}_results" not in at.session_state or not at.session_state[f"{key}_results"]  # nothing ran before the click
    at.number_input(key=f"{key}_n").set_value(100).run()
    at.button(key=f"{key}_run").click().run()
    no_exception(at)
    assert not at.error
    ((cert, reading),) = at.session_state[f"{key}_results"].values()
    assert cert.n == 100 and cert.n0 == 100 and cert.counts.sum() == 100
    # the warnings beside it are the core's notes on this certificate and the plain model's reading of the window
    from core.field.analyze import species_names
    from core.field.certificates import certificate_notes

    names = species_names(cert_names(at), None)
    notes = certificate_notes(cert, reading, lambda code: names[code][1])
    assert notes and set(notes) <= {w.value for w in at.warning}  # a tone: at least "no bird" or the cap
    said = [m.value for m in (*at.success, *at.info) if m.value.startswith(("Certified:", "Not certified (abstain):"))]
    assert len(said) == 1
    return cert, said[0]


def test_clip_page_certifies_the_window_on_request(tmp_path):
    from core.field.analyze import species_names
    from core.models.registry import read_model_card

    path = tmp_path / "t.wav"
    sf.write(path, tone(2500, 5.0, 32_000, amp=0.2), 32_000)
    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "protopnet"
    at.session_state["field_window"] = {"path": str(path), "name": "t.wav", "offset_s": 0.0}  # as the Field page opens it
    at.session_state["shared_source"] = "Field recording"
    at.run()
    no_exception(at)
    cert, sentence = certify_and_read(at, "clip_cert")
    name = species_names(read_model_card("protopnet")["config"]["class_names"])[cert.class_name][1]
    assert f"({name}; the probability" in sentence or f"answer, {name}, is guaranteed" in sentence  # g's answer beside its radius
    assert "smoothed model, whose answer may differ from the plain model's" in sentence
    if not cert.abstained:
        assert f"no sound quieter than {cert.snr_db:.0f} dB below this window" in sentence
        assert "N = 100, alpha = 0.001" in sentence
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Smoothed model's answer"] == ("abstain" if cert.abstained else name)


@pytest.mark.slow
def test_field_recording_page_certifies_the_chosen_window(tmp_path):
    path = tmp_path / "field.wav"
    sf.write(path, tone(3000, 10.0, 32_000, amp=0.2), 32_000)
    at = AppTest.from_file(str(ROOT / "pages" / "0_Field_recording.py"), default_timeout=TIMEOUT).run()
    at.radio(key="field_source").set_value("File on this computer").run()
    at.text_input(key="field_path").set_value(str(path)).run()
    at.multiselect(key="field_models").set_value(["protopnet"]).run()
    at.button(key="field_run").click().run()
    finish_job(at, "field")
    no_exception(at)
    at.number_input(key="field_window_protopnet").set_value(1).run()
    cert, _ = certify_and_read(at, "field_cert_protopnet")
    assert (cert.start_s, cert.end_s) == (5.0, 10.0)  # the chosen window, in the recording's time
