"""One-file HTML reports to take away: settings, audio, figures and tables of an attack or a comparison."""

from __future__ import annotations

import base64
import datetime as _dt
import html
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.io.audio import wav_bytes


@dataclass
class Audio:
    """A clip to embed in a report (16-bit WAV, base64), played at its true level."""

    waveform: np.ndarray
    sample_rate: int
    label: str
    gain: float = 1.0


def html_report(title: str, sections: list[tuple[str, list]], *, footer: str = "") -> str:
    """A self-contained HTML page (no network needed to open it: plotly.js and the audio are embedded).

    Parameters
    ----------
    title : str
    sections : list of (heading, items)
        Items are ``str`` (a paragraph, HTML-escaped), ``dict`` (a two-column table of settings),
        :class:`pandas.DataFrame`, :class:`plotly.graph_objects.Figure` or :class:`Audio`.
    footer : str
        A closing line (e.g. licences).

    Returns
    -------
    str
        The HTML document.
    """
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
             "th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.audio{margin:0.4em 0}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p><small>Made with birdshield on {_dt.datetime.now().strftime('%Y-%m-%d %H:%M')}.</small></p>"]
    plotly_included = False
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        for item in items:
            if isinstance(item, go.Figure):
                parts.append(item.to_html(full_html=False, include_plotlyjs=not plotly_included,
                                          config={"toImageButtonOptions": {"format": "svg"}, "displaylogo": False}))
                plotly_included = True
            elif isinstance(item, Audio):
                data = base64.b64encode(wav_bytes(item.waveform, item.sample_rate, gain=item.gain)).decode()
                parts.append(f"<div class='audio'>{html.escape(item.label)}<br><audio controls src='data:audio/wav;base64,{data}'></audio></div>")
            elif isinstance(item, pd.DataFrame):
                parts.append(item.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0))
            elif isinstance(item, dict):
                rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in item.items())
                parts.append(f"<table>{rows}</table>")
            else:
                parts.append(f"<p>{html.escape(str(item))}</p>")
    if footer:
        parts.append(f"<hr><p><small>{html.escape(footer)}</small></p>")
    parts.append("</body></html>")
    return "\n".join(parts)
