"""Markdown tables of stored results, as docs/ shows them.

Each function turns a stored table (written by a documented ``python -m core ...`` command into
``assets/``) into the exact Markdown of a block in docs/; ``tests/test_docs.py`` regenerates every
block and compares, so no figure in docs/ is typed by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from core.models.protopnet import prototype_bands
from core.studies.sweep import summarize

__all__ = ["robustness_markdown", "minimal_eps_markdown", "targeted_markdown", "model_table_markdown", "compare_markdown",
           "claims_markdown", "prototype_bands", "prototype_bands_markdown", "survival_markdown", "masking_markdown"]


def prototype_bands_markdown(prototypes: Sequence[dict], class_names: Sequence[str], display: dict[str, str] | None = None) -> str:
    """:func:`prototype_bands` as a Markdown table with a totals row."""
    t = prototype_bands(prototypes, class_names)
    t.loc["all"] = t.sum(axis=0)
    head = "| species | " + " | ".join(t.columns) + " |"
    sep = "|---|" + "---:|" * len(t.columns)
    rows = [f"| {(display or {}).get(c, c)} | " + " | ".join(str(int(v)) for v in t.loc[c]) + " |" for c in t.index]
    return "\n".join([head, sep, *rows])


def _f(v: float, digits: int = 3) -> str:
    return "nan" if pd.isna(v) else f"{v:.{digits}f}"


def robustness_markdown(table: pd.DataFrame, models: Sequence[str], labels: dict[str, str] | None = None) -> str:
    """Models side by side per eps: median SNR, cmAP, top-1, success rate and PRS.

    Parameters
    ----------
    table : pandas.DataFrame
        A tidy sweep table (:func:`core.studies.sweep.sweep_table` rows) of one objective.
    models : sequence of str
        Column order.
    labels : dict, optional
        Display name per model.
    """
    labels = labels or {}
    s = summarize(table)
    s = s[s["budget"].notna()]
    names = [labels.get(m, m) for m in models]
    head = ["eps", "median SNR (dB)"] + [f"{n} {k}" for k in ("cmAP", "top-1", "success", "PRS") for n in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for b in sorted(s["budget"].unique()):
        rows = {m: s[(s["model"] == m) & (s["budget"] == b)].iloc[0] for m in models}
        snr = " / ".join("inf" if not np.isfinite(rows[m]["snr_db"]) else f"{rows[m]['snr_db']:.1f}" for m in models)
        cells = [f"{b:g}", snr]
        for key in ("cmap", "top1", "success_rate", "prs"):
            cells += [_f(rows[m][key]) for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def minimal_eps_markdown(table: pd.DataFrame, labels: dict[str, str] | None = None) -> str:
    """Per model: clips, searches that found a flip, median minimal eps with its interquartile range, median SNR.

    Parameters
    ----------
    table : pandas.DataFrame
        The ``*_min_eps`` table of ``python -m core sweep --minimal-eps`` (``model, clip, min_eps, snr_db, found``).
    """
    labels = labels or {}
    lines = ["| model | clips | flipped below 0.1 | median minimal eps | interquartile eps | median SNR (dB) |", "|---|---|---|---|---|---|"]
    for m, g in table.groupby("model", sort=False):
        f = g[g["found"].astype(str).str.lower().isin(("true", "1"))]
        q1, med, q3 = np.quantile(f["min_eps"], [0.25, 0.5, 0.75]) if len(f) else (np.nan,) * 3
        lines.append(f"| {labels.get(m, m)} | {len(g)} | {len(f)} | {med:.2g} | {q1:.2g} to {q3:.2g} | {np.median(f['snr_db']):.1f} |")
    return "\n".join(lines) + "\n"


def targeted_markdown(tables: dict[str, pd.DataFrame], labels: dict[str, str] | None = None) -> str:
    """One row per (attack description, model) at the table's attacked budget: success (and before), PRS, DRS, TARS.

    Parameters
    ----------
    tables : dict of description -> tidy sweep table
        Each of one objective and one budget.
    """
    labels = labels or {}
    lines = ["| attack | model | success definition | median SNR (dB) | success (before the attack) | PRS | DRS | TARS |",
             "|---|---|---|---|---|---|---|---|"]
    for desc, table in tables.items():
        s = summarize(table)
        for m in s["model"].unique():
            clean = s[(s["model"] == m) & (s["budget_kind"] == "clean")].iloc[0]
            adv = s[(s["model"] == m) & (s["budget_kind"] != "clean")].iloc[-1]
            lines.append(f"| {desc} | {labels.get(m, m)} | {adv.get('success_definition', '')} | {adv['snr_db']:.1f} | "
                         f"{_f(adv['success_rate'], 2)} ({_f(clean['success_rate'], 2)}) | {_f(adv['prs'], 2)} | {_f(adv['drs'], 2)} | "
                         f"{_f(adv['tars'], 2)} |")
    return "\n".join(lines) + "\n"


def model_table_markdown(cards: dict[str, dict], labels: dict[str, str], reference: dict | None = None) -> str:
    """The docs' model table from model cards: test metrics per window and recording, val cmAP, training time.

    Parameters
    ----------
    cards : dict name -> model card (``metrics``; ``train_seconds`` if trained here, else "-")
    labels : dict name -> row label
    reference : dict, optional
        The reference's results (``metrics``); default the first card's ``reference``.
    """
    head = ("| model | cmAP (window) | ROC-AUC (window) | top-1 (window) | cmAP (recording) | ROC-AUC (recording) | "
            "top-1 (recording) | val cmAP (window) | train min (this 2-core CPU) |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]

    def row(label, m, minutes):
        t, v = m["test"], m["val"]
        cells = [_f(t["window"]["cmap"]), _f(t["window"]["roc_auc"]), _f(t["window"]["top1"]), _f(t["recording"]["cmap"]),
                 _f(t["recording"]["roc_auc"]), _f(t["recording"]["top1"]), _f(v["window"]["cmap"]), minutes]
        return f"| {label} | " + " | ".join(cells) + " |"

    for name, card in cards.items():
        minutes = "-" if "train_seconds" not in card else f"{card['train_seconds'] / 60:.1f}" + (" (fine-tuning)" if card.get("init") else "")
        lines.append(row(labels.get(name, name), card["metrics"], minutes))
    ref = reference or next(iter(cards.values())).get("reference")
    if ref:
        lines.append(row("Reference (log. regr. on mean log-mel)", ref["metrics"], "< 1"))
    return "\n".join(lines)


def compare_markdown(result, labels: dict[str, str]) -> str:
    """The docs' comparison table: clean/shifted cmAP, attacked cmAP and success per eps, TARS, prototype change.

    cmAP under attack is PGD's (BCE against the labels); success is the worst case over attacks when the comparison
    has it (``settings.strong``), else PGD's.

    Parameters
    ----------
    result : core.studies.compare.CompareResult
    labels : dict name -> row label
    """
    from core.studies.compare import model_summary

    s = model_summary(result).set_index("model")
    word = "worst" if any(c.startswith("success worst eps ") for c in s.columns) else "PGD"
    eps = [c.removeprefix("cmAP PGD eps ") for c in s.columns if c.startswith("cmAP PGD eps ")]
    tgt = [c for c in s.columns if c.startswith("TARS targeted eps ")][-1:]
    head = ("| model | recipe | clean | bird-free noise 10 dB | mixup | " + " | ".join(f"PGD cmAP {e}" for e in eps)
            + " | " + " | ".join(f"{'worst-case ' if word == 'worst' else ''}success {e}" for e in eps) + " | TARS targeted "
            + tgt[0].removeprefix("TARS targeted eps ") + " | prototype change 1e-04 |")
    lines = [head, "|---|---|" + "---:|" * (3 + 2 * len(eps) + 2)]
    for name, r in s.iterrows():
        cells = [r["recipe"], _f(r["cmAP clean"]), _f(r["cmAP noise"]), _f(r["cmAP mixup"])]
        cells += [_f(r[f"cmAP PGD eps {e}"]) for e in eps]
        cells += [f"{r[f'success {word} eps {e}']:.2f}" for e in eps]
        cells.append(_f(r[tgt[0]]))
        change = r.get("prototype change PGD eps 1e-04", np.nan)
        cells.append("" if pd.isna(change) else f"{100 * change:.1f} %")
        lines.append(f"| {labels.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims_markdown(claims: pd.DataFrame) -> str:
    """The docs' paper-check table from a comparison's claims (:func:`core.studies.papercheck.paper_check`)."""
    lines = ["| claim | kind | paper | ours [95 % CI] | p (Holm) | direction | verdict |", "|---|---|---|---|---|---|---|"]
    for _, r in claims.iterrows():
        unit = r["unit"]

        def f(v, unit=unit):
            return f"{v:+.1f} %" if unit == "%" else f"{v:+.3f} {unit}"
        lines.append(f"| {r['claim']} | {r['kind']} | {r['paper']} | {f(r['ours'])} [{f(r['ci_low'])}, {f(r['ci_high'])}] | "
                     f"{r['p_holm']:.3g} | {r['direction']} | {r['verdict']} |")
    return "\n".join(lines)


def _metric_rows(study: pd.DataFrame, lead) -> list[str]:
    """Rows ``| <lead columns> | val cmAP | val top-1 | test cmAP | test top-1 |`` of a head study."""
    return [f"| {lead(r)} | {_f(r.val_window_cmap)} | {_f(r.val_recording_top1)} | {_f(r.test_window_cmap)} | {_f(r.test_recording_top1)} |"
            for r in study.itertuples()]


_SPLIT_METRICS = "val cmAP (window) | val top-1 (recording) | test cmAP (window) | test top-1 (recording)"


def layer_study_markdown(study: pd.DataFrame) -> str:
    """The layer study (:func:`core.studies.heads.layer_study`) as a Markdown table: map, cell size, val and test metrics."""
    rows = _metric_rows(study, lambda r: f"{r.layer} | {r.head} | {r.map} | {r.cell_s:.3f}")
    return "\n".join([f"| BirdNET layer | head | map (freq x time) | cell (s) | {_SPLIT_METRICS} |", "|---|---|---|---|---|---|---|---|", *rows])


def finetune_markdown(study: pd.DataFrame) -> str:
    """Frozen vs partly fine-tuned backbone (:func:`core.studies.heads.finetune_study`) as a Markdown table."""
    rows = [row + f" {r.train_seconds / 60:.1f} |" for row, r in
            zip(_metric_rows(study, lambda r: f"{r.head} | {r.backbone} | {int(r.stage_parameters):,}"), study.itertuples())]
    return "\n".join([f"| head | backbone | trained parameters of the backbone | {_SPLIT_METRICS} | train min |",
                      "|---|---|---:|---|---|---|---|---:|", *rows])


def audit_markdown(audit: pd.DataFrame) -> str:
    """Summary of a prototype audit (:func:`core.studies.audit.audit_summary` rows) as a Markdown table."""
    n = len(audit)
    counts = audit["plausibility"].value_counts()
    rows = [
        ("prototypes audited", f"{n}"),
        ("own-species windows per prototype (median)", f"{audit['n_windows'].median():.0f}"),
        ("score drop when its region is silenced / when a random region is (median over prototypes; unstable where the "
         "random drop is near 0)", _f(audit["drop_ratio"].median(), 2)),
        ("prototypes whose random-region drop is <= 0 (their ratio is meaningless)", f"{int((audit['drop_random'] <= 0).sum())}"),
        ("median class-score drop when its region / a random region is silenced", f"{audit['drop_proto'].median():.4f} / "
                                                                                   f"{audit['drop_random'].median():.4f}"),
        ("prototypes whose region's silencing raises the class score", f"{int((audit['drop_proto'] < 0).sum())}"),
        ("prototypes whose region removes more than random in most windows", f"{(audit['wins'] > 0.5).mean():.0%}"),
        ("max similarity on its own species / on the others (median)", f"{_f(audit['act_own'].median(), 2)} / {_f(audit['act_other'].median(), 2)}"),
        ("prototypes more similar to their own species than to the others", f"{(audit['act_own'] > audit['act_other']).mean():.0%}"),
        ("plausible / implausible / no source", " / ".join(str(int(counts.get(k, 0))) for k in ("plausible", "implausible", "no source"))),
    ]
    if "plausibility_attr" in audit.columns:  # the input attribution (core.studies.audit.attribution_audit)
        attr = audit["plausibility_attr"].value_counts()
        rows += [
            ("share of a prototype's occlusion evidence inside its peak row's nominal bands, both channels (median; "
             "gradient x input)", f"{_f(audit['attr_share_row_band'].median(), 2)} ({_f(audit['attr_share_row_band_gxi'].median(), 2)})"),
            ("share of the occlusion evidence inside the species' sourced range (median over sourced prototypes; "
             "gradient x input; an even spread)", f"{_f(audit['attr_share_range_occlusion'].median(), 2)} "
             f"({_f(audit['attr_share_range_gxi'].median(), 2)}; {_f(audit['attr_share_range_even'].median(), 2)})"),
            ("by the evidence (>= 50 % inside the range): plausible / implausible / no evidence / no source",
             " / ".join(str(int(attr.get(k, 0))) for k in ("plausible", "implausible", "no evidence", "no source"))),
        ]
    return "\n".join(["| measure | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows]])


def survival_markdown(summary: pd.DataFrame) -> str:
    """The docs' survival table from :func:`core.attacks.threats.survival_summary`: one row per (model, SNR, attack), one column per transformation.

    Each transformation's cell: ``survives (fooled after / control)`` as shares, so a
    reader sees the rate, the unconditional rate and what the transformation alone did.
    """
    transforms = [t for t in dict.fromkeys(summary["transform"]) if t != "none"]
    head = ("| model | budget (SNR) | measured SNR (dB, median) | attack | digital success | "
            + " | ".join(f"{t}: survives (fooled after; control)" for t in transforms) + " |")
    lines = [head, "|---|---|---|---|---|" + "---|" * len(transforms)]
    for (model, snr, attack), g in summary.groupby(["model", "snr_db", "attack"], sort=False):
        g = g.set_index("transform")
        cells = [f"{g.loc[t, 'survives']:.2f} ({g.loc[t, 'fooled_after']:.2f}; {g.loc[t, 'control_changed']:.2f})" for t in transforms]
        lines.append(f"| {model} | {snr:g} dB | {g.loc['none', 'snr_measured_db']:.1f} | {attack} | {g.loc['none', 'fooled_digital']:.2f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def masking_markdown(summary: pd.DataFrame) -> str:
    """The docs' masking table from :func:`core.attacks.threats.masking_summary`."""
    lines = ["| model | attack | windows | success | SNR (dB, median) | cells above the masking threshold (median) | above by > 3 dB "
             "| 99th percentile of excess (dB) |", "|---|---|---|---|---|---|---|---|"]
    for r in summary.itertuples():
        lines.append(f"| {r.model} | {r.attack} | {r.windows} | {r.success:.2f} | {r.snr_db:.1f} | {100 * r.share_above:.1f} % | "
                     f"{100 * r.share_above_3db:.1f} % | {r.p99_excess_db:.1f} |")
    return "\n".join(lines)
