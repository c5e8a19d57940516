"""Do the headline claims of Heinrich et al. 2025 (arXiv 2507.13727) hold on our data and models?

Each claim becomes one statistic of a :class:`~core.compare.CompareResult`, an
*effect* whose sign says whether the claim holds (positive: in the claimed
direction). Its uncertainty comes from a paired bootstrap over recordings: the
test recordings are resampled with replacement (all windows of a drawn recording
go in together, since windows of one recording are not independent) and the
effect is recomputed for every model on the same resample.

Verdicts, from the two-sided 95 % percentile interval ``[low, high]`` of the effect:

- ``reproduced``: ``low > 0``, the effect is in the claimed direction;
- ``not reproduced``: ``high < 0`` (the opposite holds), or the paper gives an
  effect size and ``high`` is below it (no significant effect, and the claimed size
  is ruled out);
- ``inconclusive``: otherwise.

Where the paper gives an effect size, a separate note says whether it lies inside, above
or below our interval: a claim can be reproduced in direction but not in size.

A claim averaged over architectures in the paper ("on average") is averaged over
our two architectures (ConvNeXt baseline and AudioProtoPNet) here.

The paper's numbers are those of its abstract and of this project's issue text;
its eps lives in its own input domain, which is not our waveform's full-scale
amplitude, so eps values are matched by role (the training eps and ten times it),
not by number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import CoreError, ParameterError

__all__ = ["Claim", "CLAIMS", "paper_check", "verdict", "size_note", "recording_of", "fast_cmap"]

ARCHS = ("baseline", "protopnet")


def recording_of(clip_id: str) -> str:
    """Recording id of a window id ``"<recording>@<start>s"``."""
    return str(clip_id).split("@", 1)[0]


def size_note(low: float, high: float, paper_effect: float | None, unit: str) -> str:
    """Where the paper's effect size lies relative to our 95 % interval ("" when the paper gives none)."""
    if paper_effect is None or not (np.isfinite(low) and np.isfinite(high)):
        return ""
    shown = f"{paper_effect:+g} %" if unit == "%" else f"{paper_effect:+g} {unit}"
    if high < paper_effect:
        return f"smaller than the paper's {shown}, which lies above our interval"
    if low > paper_effect:
        return f"larger than the paper's {shown}, which lies below our interval"
    return f"the paper's {shown} lies inside our interval"


def verdict(low: float, high: float, paper_effect: float | None = None) -> str:
    """Verdict from a 95 % interval of an effect whose positive sign means the claim holds (see module docstring)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if low > 0:
        return "reproduced"
    if high < 0 or (paper_effect is not None and paper_effect > 0 and high < paper_effect):
        return "not reproduced"
    return "inconclusive"


def _average_precision(y: np.ndarray, s: np.ndarray) -> float:
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last row of every distinct score (ties count together)
    tps = np.cumsum(y)[last]
    precision = tps / (last + 1)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fast_cmap(scores: np.ndarray, targets: np.ndarray) -> float:
    """cmAP with the definition of :func:`core.metrics.cmap` (scikit-learn's average precision,
    classes without a positive left out), about 20x faster, for bootstrap loops.

    Parameters
    ----------
    scores, targets : np.ndarray [shape=(n, n_classes)]

    Returns
    -------
    float, NaN if no class has a positive.
    """
    y = np.asarray(targets) > 0.5
    s = np.asarray(scores, dtype=np.float64)
    keep = np.flatnonzero(y.any(0))
    if not len(keep):
        return float("nan")
    return float(np.mean([_average_precision(y[:, c], s[:, c]) for c in keep]))


class _Scores:
    """Scores and labels of one table condition per model, rows aligned by clip, with recording groups."""

    def __init__(self, table: pd.DataFrame, mask: pd.Series) -> None:
        sub = table[mask]
        self.classes = [c.split(":", 1)[1] for c in table.columns if c.startswith("score:")]
        self.by_model = {}
        clips = None
        for name, g in sub.groupby("model", sort=False):
            g = g.sort_values("clip", kind="stable")
            if clips is None:
                clips = list(g["clip"])
            elif list(g["clip"]) != clips:
                raise ParameterError(f"model {name!r} was evaluated on other clips than the rest")
            self.by_model[name] = (g[[f"score:{c}" for c in self.classes]].to_numpy(), g[[f"label:{c}" for c in self.classes]].to_numpy(),
                                   g.drop(columns=[c for c in g.columns if ":" in c]).reset_index(drop=True))
        self.clips = clips or []

    def cmap(self, model: str, rows: np.ndarray) -> float:
        s, y, _ = self.by_model[model]
        return fast_cmap(s[rows], y[rows])

    def mean(self, model: str, column: str, rows: np.ndarray) -> float:
        return float(np.nanmean(self.by_model[model][2][column].to_numpy(dtype=float)[rows]))


@dataclass(frozen=True)
class Claim:
    """One headline claim and how we measure it.

    Attributes
    ----------
    key : str
    claim : str
        The paper's claim, in words.
    paper : str
        The paper's number, in words.
    paper_effect : float or None
        The paper's effect on our effect's scale, when it has one.
    measure : str
        What our number is.
    unit : str
        ``"%"`` (relative change), ``"cmAP"`` or ``"TARS"`` (absolute differences).
    """

    key: str
    claim: str
    paper: str
    paper_effect: float | None
    measure: str
    unit: str


def _training_eps(names: dict) -> float:
    """Median L-inf training eps of the AT models' cards (1e-4, the shipped value, when none records one)."""
    from core.models.registry import read_model_card

    found = []
    for (_arch, recipe), m in names.items():
        if recipe in ("AT-O", "AT-E"):
            try:
                tc = read_model_card(m).get("train_config", {})
            except (CoreError, OSError):
                continue
            if tc.get("adv_eps") and tc.get("adv_snr_db") is None:
                found.append(float(tc["adv_eps"]))
    return float(np.median(found)) if found else 1e-4


def _rel(a: float, b: float) -> float:
    return 100 * (a - b) / b


def _claims(result) -> list[tuple[Claim, Callable, Callable]]:
    """(claim, effect(rows) -> float, detail(rows) -> str) for the statistics available in ``result``."""
    from core.compare import ZOO, model_recipe

    s = result.settings
    names: dict = {}
    for m in [m for m in ZOO if m in result.models] + [m for m in result.models if m not in ZOO]:
        names.setdefault(model_recipe(m), m)  # the shipped models first; then the first of each (architecture, recipe)

    def pair(recipe_a, recipe_b):
        out = []
        for arch in ("ConvNeXt baseline", "AudioProtoPNet"):
            a, b = names.get((arch, recipe_a)), names.get((arch, recipe_b))
            if a and b:
                out.append((a, b))
        return out

    out = []
    shift_tab = result.shift
    clean = _Scores(shift_tab, shift_tab["condition"] == "clean")
    noise = _Scores(shift_tab, shift_tab["condition"] == "noise")
    rob_tab = result.robustness
    train_eps = min(s.epsilons, key=lambda e: abs(np.log(e / _training_eps(names))))
    big_eps = max(s.epsilons)
    tgt_eps = max(s.target_epsilons)

    def eps_rows(tab, eps):
        return (tab["budget_kind"] != "clean") & np.isclose(tab["eps"], eps, rtol=1e-6)

    def rel_claim(scores, a_recipe, b_recipe):
        pairs = pair(a_recipe, b_recipe)

        def effect(rows):
            return float(np.mean([_rel(scores.cmap(a, rows), scores.cmap(b, rows)) for a, b in pairs]))

        def detail(rows):
            return "; ".join(f"{a} {scores.cmap(a, rows):.3f} vs {b} {scores.cmap(b, rows):.3f}" for a, b in pairs)
        return pairs, effect, detail

    def diff_claim(scores, a_recipe, b_recipe, column=None):
        pairs = pair(a_recipe, b_recipe)

        def value(m, rows):
            return scores.mean(m, column, rows) if column else scores.cmap(m, rows)

        def effect(rows):
            return float(np.mean([value(a, rows) - value(b, rows) for a, b in pairs]))

        def detail(rows):
            return "; ".join(f"{a} {value(a, rows):.3f} vs {b} {value(b, rows):.3f}" for a, b in pairs)
        return pairs, effect, detail

    specs = [
        (Claim("clean", "AT-O improves clean test performance (the paper's test recordings come from other sites than its "
               "training recordings)", "+10.5 % relative cmAP, average over ConvNeXt and AudioProtoPNet", 10.5,
               "relative cmAP change AT-O vs OT on the clean test windows (same sites as training), mean over architectures", "%"),
         clean, rel_claim, ("AT-O", "OT")),
        (Claim("shift", "AT-O improves performance under distribution shift", "+10.5 % relative cmAP (test data from other sites)", 10.5,
               f"relative cmAP change AT-O vs OT on test windows with site noise at {s.snr_db:g} dB SNR (our stand-in for a new site), "
               "mean over architectures", "%"),
         noise, rel_claim, ("AT-O", "OT")),
        (Claim("robust", "AT-O strengthens adversarial robustness", "stronger robustness (no single number in the abstract)", None,
               f"cmAP under PGD-{s.steps} (output space, L-inf) at eps {train_eps:g}, the grid eps nearest to the AT models' "
               "training eps: AT-O minus OT, mean over architectures", "cmAP"),
         _Scores(rob_tab, eps_rows(rob_tab, train_eps)), diff_claim, ("AT-O", "OT")),
        (Claim("robust_big", "AT-O strengthens adversarial robustness (larger budget)", "stronger robustness (no single number in the abstract)", None,
               f"cmAP under PGD-{s.steps} at eps {big_eps:g} ({big_eps / train_eps:.3g}x the eps nearest to training): AT-O minus OT, "
               "mean over architectures", "cmAP"),
         _Scores(rob_tab, eps_rows(rob_tab, big_eps)), diff_claim, ("AT-O", "OT")),
        (Claim("ato_vs_ate", "Output-space AT beats embedding-space AT (clean performance)", "AT-O ahead of AT-E (\"particularly using output-space attacks\")",
               None, "relative cmAP change AT-O vs AT-E on the clean test windows, mean over architectures", "%"),
         clean, rel_claim, ("AT-O", "AT-E")),
        (Claim("ato_vs_ate_robust", "Output-space AT beats embedding-space AT (robustness)", "AT-O ahead of AT-E", None,
               f"cmAP under PGD-{s.steps} at eps {train_eps:g}: AT-O minus AT-E, mean over architectures", "cmAP"),
         _Scores(rob_tab, eps_rows(rob_tab, train_eps)), diff_claim, ("AT-O", "AT-E")),
    ]
    for claim, scores, make, recipes in specs:
        pairs, effect, detail = make(scores, *recipes)
        if pairs:
            out.append((claim, scores, effect, detail))
    # prototype stability: AudioProtoPNet only, TARS of the targeted embedding-space attack
    tgt = result.targeted
    t_scores = _Scores(tgt, eps_rows(tgt, tgt_eps))
    p_ot, p_ato = names.get(("AudioProtoPNet", "OT")), names.get(("AudioProtoPNet", "AT-O"))
    if p_ot and p_ato:
        claim = Claim("tars", "AT-O stabilises AudioProtoPNet's prototypes under targeted embedding-space attacks",
                      "TARS 0.27 -> 0.65 at eps = 0.1 (+0.38)", 0.38,
                      f"mean TARS under targeted embedding-space PGD-{s.steps} at eps {tgt_eps:g}: AT-O minus OT (AudioProtoPNet)", "TARS")

        def effect(rows, a=p_ato, b=p_ot):
            return t_scores.mean(a, "tars", rows) - t_scores.mean(b, "tars", rows)

        def detail(rows, a=p_ato, b=p_ot):
            return f"{a} {t_scores.mean(a, 'tars', rows):.3f} vs {b} {t_scores.mean(b, 'tars', rows):.3f}"
        out.append((claim, t_scores, effect, detail))
    return out


def paper_check(result, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per claim: the claim, the paper's number, ours with a bootstrap interval, and a verdict.

    Parameters
    ----------
    result : core.compare.CompareResult
    n_boot : int >= 100
        Bootstrap resamples of the test recordings.
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``key, claim, paper, measure, unit, ours, ci_low, ci_high, p_not_claimed`` (fraction of
        resamples whose effect is <= 0), ``verdict``, ``size`` (the paper's effect size against our
        interval, when it gives one), ``detail`` (the per-model values),
        ``n_recordings``, ``n_clips``, ``n_boot``, ``boot_seed``. Claims whose models are missing
        from ``result`` are left out.

    Raises
    ------
    ParameterError
        ``n_boot < 100``.
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise ParameterError(f"n_boot must be an integer >= 100, got {n_boot!r}")
    from core.compare import ZOO

    result = result.subset([n for n in result.models if n in ZOO])  # the claims are about the zoo (BirdNET has other clips)
    rows = []
    for claim, scores, effect, detail in _claims(result):
        groups = pd.Series([recording_of(c) for c in scores.clips])
        members = [np.flatnonzero(groups.to_numpy() == g) for g in groups.unique()]
        all_rows = np.arange(len(scores.clips))
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            pick = rng.integers(len(members), size=len(members))
            boots.append(effect(np.concatenate([members[i] for i in pick])))
        boots = np.asarray(boots, dtype=float)
        boots = boots[np.isfinite(boots)]
        low, high = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (np.nan, np.nan))
        ours = effect(all_rows)
        rows.append({
            "key": claim.key, "claim": claim.claim, "paper": claim.paper, "measure": claim.measure, "unit": claim.unit,
            "ours": ours, "ci_low": float(low), "ci_high": float(high),
            "p_not_claimed": float(np.mean(boots <= 0)) if len(boots) else np.nan,
            "verdict": verdict(float(low), float(high), claim.paper_effect),
            "size": size_note(float(low), float(high), claim.paper_effect, claim.unit), "detail": detail(all_rows),
            "n_recordings": len(members), "n_clips": len(all_rows), "n_boot": n_boot, "boot_seed": seed,
        })
    columns = ["key", "claim", "paper", "measure", "unit", "ours", "ci_low", "ci_high", "p_not_claimed", "verdict", "size", "detail",
               "n_recordings", "n_clips", "n_boot", "boot_seed"]
    return pd.DataFrame(rows, columns=columns)


CLAIMS = ("clean", "shift", "robust", "robust_big", "ato_vs_ate", "ato_vs_ate_robust", "tars")
