"""The dashboard's language of species names (ui/locale.py) and the Field page that uses it."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from core.io.names import available_locales
from core.models.registry import list_checkpoints
from tests.conftest import ROOT

TIMEOUT = 120


def _page():
    import streamlit as st

    from ui.locale import species_locale

    st.write(f"locale={species_locale()}")


def test_language_choice_defaults_to_english_and_is_kept_in_the_session():
    from ui.locale import LANGUAGE_NAMES, language_name

    assert set(LANGUAGE_NAMES) == set(available_locales()) and language_name("de") == "Deutsch (de)"
    at = AppTest.from_function(_page, default_timeout=TIMEOUT).run()
    assert not at.exception and at.markdown[0].value == "locale=en"
    box = at.sidebar.selectbox(key="species_locale_select")
    assert box.options == [language_name(loc) for loc in available_locales()]
    box.set_value("fr").run()
    assert at.markdown[0].value == "locale=fr" and at.session_state["species_locale"] == "fr"
    at.run()
    assert at.markdown[0].value == "locale=fr"


@pytest.mark.slow
@pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
def test_field_page_names_species_in_the_chosen_language(data_dir):
    path = sorted((data_dir / "audio" / "parmaj").glob("*.*"))[0]
    at = AppTest.from_file(str(ROOT / "pages" / "0_Field_recording.py"), default_timeout=TIMEOUT).run()
    at.sidebar.selectbox(key="species_locale_select").set_value("de").run()
    at.radio(key="field_source").set_value("File on this computer").run()
    at.text_input(key="field_path").set_value(str(path)).run()
    at.multiselect(key="field_models").set_value(["protopnet"]).run()
    at.button(key="field_run").click().run()
    job = at.session_state["job:field"]
    job.thread.join(600)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    summary = at.dataframe[0].value
    assert "Kohlmeise" in set(summary["species"])
    full = at.dataframe[1].value
    assert "gretit1" in set(full["ebird_code"]) and "Kohlmeise" in set(full["species"])
