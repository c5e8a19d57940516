"""Glossary page: every term the dashboard uses, in plain words."""

from __future__ import annotations

import streamlit as st

from ui.glossary import GLOSSARY

st.set_page_config(page_title="Glossary · birdshield", page_icon="🐦", layout="wide")
st.title("Glossary: the words on these pages")
st.caption("What each term means, in plain words, and when to distrust the number it names.")

query = st.text_input("Find a term", key="glossary_query", placeholder="e.g. eps, prototype, threshold")
shown = 0
for term, (short, long) in GLOSSARY.items():
    if query and query.lower() not in (term + " " + short + " " + long).lower():
        continue
    shown += 1
    st.markdown(f"**{term}**: {short}")
    st.caption(long)
if not shown:
    st.info(f"No term matches \"{query}\".")
