"""The language of species names on the pages: one sidebar choice, kept across pages in ``st.session_state``.

The names come from BirdNET V2.4's label files (:mod:`core.io.names`, 38 locales), as BirdNET-Analyzer's
``--locale`` uses them. A page calls :func:`species_locale` and passes the result as ``locale`` to
:func:`core.field.tables.detections` / :func:`core.field.tables.window_outcomes`.
"""

from __future__ import annotations

import streamlit as st

from core.io.names import available_locales

#: Session key of the chosen locale (kept while pages change; the widget's own key is dropped when a page lacks it).
LOCALE_KEY = "species_locale"

#: Each locale's name in its own language.
LANGUAGE_NAMES = {
    "en": "English", "af": "Afrikaans", "ar": "العربية", "bg": "Български", "ca": "Català", "cs": "Čeština", "da": "Dansk",
    "de": "Deutsch", "el": "Ελληνικά", "en_uk": "English (UK)", "es": "Español", "fi": "Suomi", "fr": "Français", "he": "עברית",
    "hr": "Hrvatski", "hu": "Magyar", "in": "Bahasa Indonesia", "is": "Íslenska", "it": "Italiano", "ja": "日本語", "ko": "한국어",
    "lt": "Lietuvių", "ml": "മലയാളം", "nl": "Nederlands", "no": "Norsk", "pl": "Polski", "pt_BR": "Português (Brasil)",
    "pt_PT": "Português (Portugal)", "ro": "Română", "ru": "Русский", "sk": "Slovenčina", "sl": "Slovenščina", "sr": "Српски",
    "sv": "Svenska", "th": "ไทย", "tr": "Türkçe", "uk": "Українська", "zh": "中文",
}


def language_name(locale: str) -> str:
    """``"Deutsch (de)"``: a locale as the selectbox shows it."""
    return f"{LANGUAGE_NAMES.get(locale, locale)} ({locale})"


def species_locale() -> str:
    """A sidebar selectbox for the language of species names; returns the chosen locale (default ``"en"``).

    Returns
    -------
    str
        One of :func:`core.io.names.available_locales`, also stored in ``st.session_state["species_locale"]``.
    """
    locales = list(available_locales())
    current = st.session_state.get(LOCALE_KEY, "en")
    choice = st.sidebar.selectbox(
        "Species names in", locales, index=locales.index(current) if current in locales else 0, format_func=language_name,
        key="species_locale_select",
        help="Common names as BirdNET-Analyzer writes them (--locale), from BirdNET V2.4's label files. Where a language "
             "has no name for a species, the English one is shown. Tables also carry each species' eBird code.")
    st.session_state[LOCALE_KEY] = choice
    return choice
