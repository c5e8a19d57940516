"""Glossary page: every term the dashboard uses, in plain words.

Other pages link a term as ``Glossary?term=eps`` (:func:`ui.links.glossary_link`): that entry comes first, and the
search box starts with it.
"""

from __future__ import annotations

import streamlit as st

from ui.glossary import GLOSSARY

st.set_page_config(page_title="Glossary · birdshield", page_icon="🐦", layout="wide")
st.title("Glossary: the words on these pages")
st.caption("What each term means, in plain words, and when to distrust the number it names.")

linked = st.query_params.get("term")
if linked and st.session_state.get("glossary_linked") != linked:  # a new link: start the search with its term
    st.session_state["glossary_linked"] = linked
    st.session_state["glossary_query"] = linked
query = st.text_input("Find a term", key="glossary_query", placeholder="e.g. eps, prototype, threshold")
terms = sorted(GLOSSARY, key=lambda t: t.lower() != (query or "").lower())  # the exact term first, then the others in order
shown = 0
for term in terms:
    short, long = GLOSSARY[term]
    if query and query.lower() not in (term + " " + short + " " + long).lower():
        continue
    shown += 1
    st.markdown(f"**{term}**: {short}")
    st.caption(long)
if not shown:
    st.info(f"No term matches \"{query}\".")
