"""Links between pages: a term to its Glossary entry, written as relative Markdown links."""

from __future__ import annotations

from urllib.parse import quote

from ui.glossary import GLOSSARY


def glossary_link(term: str, text: str | None = None) -> str:
    """Markdown link ``[text](Glossary?term=...)`` to a term of :data:`ui.glossary.GLOSSARY`.

    Relative, so it works whatever address the dashboard is served under; the Glossary page reads ``term`` and
    shows that entry.

    Raises
    ------
    KeyError
        When ``term`` is not in the glossary (a link to nothing is a bug of the page that writes it).
    """
    if term not in GLOSSARY:
        raise KeyError(f"{term!r} is not a glossary term; terms: {', '.join(GLOSSARY)}")
    return f"[{text or term}](Glossary?term={quote(term)})"
