"""Do the headline claims of Heinrich et al. 2025 (arXiv 2507.13727) hold on our data and models?

The paper: R. Heinrich, L. Rauch, B. Sick and C. Scholz, *Adversarial Training Improves Generalization
Under Distribution Shifts in Bioacoustics*, arXiv 2507.13727 (2025), https://arxiv.org/abs/2507.13727.

One row per distinct claim of the paper (``kind == "paper claim"``), plus rows flagged
``kind == "our additional check"``: measurements of ours that the paper has no counterpart for
(site noise as a stand-in for a new site; robustness at ten times the training eps). Each row is one
statistic of a :class:`~core.studies.compare.CompareResult`, an *effect* whose sign says whether the claim holds
(positive: in the claimed direction).

Uncertainty. A paired bootstrap over recordings: the test recordings are resampled with replacement (all
windows of a drawn recording go in together, since windows of one recording are not independent) and the
effect is recomputed for every model on the same resample. From the resampled effects come an unadjusted
two-sided 95 % percentile interval ``[ci_low, ci_high]`` (for display) and a two-sided bootstrap p-value,
``p = min(1, 2 min(P(boot <= 0), P(boot >= 0)))``.

Multiplicity. With m rows tested, the p-values are Holm-Bonferroni adjusted (Holm 1979, *Scand. J.
Statist.* 6:65-70) over all m rows, paper claims and additional checks alike, at family-wise alpha 0.05.
``direction`` comes from the adjusted test: ``"claimed"`` (``p_holm < 0.05`` and the effect is
positive), ``"opposite"`` (``p_holm < 0.05`` and negative), else ``"inconclusive"``.

Comparable conditions. A measurement only tests a claim when its conditions match the paper's, and ours
do not: the paper tests on data with a strong shift from its training data (soundscapes from other sites
than its training recordings), its eps lives in its own input domain, and its ConvNeXt and AudioProtoPNet
are full-size models pretrained on a large corpus; ours are 9 xeno-canto species of focal recordings, a
recordist-disjoint test split (no recordist shared with training: a much milder shift), small models
trained here (the AT models fine-tuned from the ordinarily trained ones) and an L-inf eps on the waveform in
full-scale amplitude, matched to the paper's by role (the training eps, ten times it), not by number. Each
claim records whether its conditions are comparable (``comparable``) and why not (``conditions``). The
``verdict`` then reads ``"not tested under comparable conditions; ours: <direction>"``; only a comparable
paper claim can be called ``reproduced`` or ``not reproduced``.

Control arm. AT-O (and AT-E) are compared with recipe ``"OT+FT"`` (ordinary training fine-tuned for the
same 4 epochs as the AT models, without the adversary) where the result has such a model for the
architecture, else with ``"OT"``; ``control`` and the ``measure`` text say which.

Robustness. Where the robustness table has an ``attack`` column with ``"worst-case"`` rows (per clip, the
attack succeeds if any of PGD-10, a transfer attack, APGD or PGD with restarts does; steps and restarts
from the comparison's settings, by default APGD-20 and PGD-20 x 2), those are used, and robustness is the
share of windows whose top-1 species survives every attack (the worst case chooses, per window, the first attack
that flips top-1, so its scores are no worst case for cmAP); else the ``"pgd"`` rows (PGD-10) and cmAP under
them. Tables without the column are PGD-10 only.

A claim averaged over architectures in the paper ("on average") is averaged over our two architectures
(ConvNeXt baseline and AudioProtoPNet). The paper's numbers are kept only where they can be traced to the
paper (:data:`PAPER_SOURCES`); a number that cannot is left out (``paper_effect`` None), and where the
paper gives an effect size, ``size`` says whether it lies inside, above or below our interval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import CoreError, ParameterError, check_int
from core.studies.paper_stats import bootstrap_p, direction_of, fast_cmap, holm, multiplicity_note, recording_of, size_note, verdict_text

__all__ = [
    "Claim", "CLAIMS", "COLUMNS", "CONTROL", "PAPER_URL", "PAPER_SOURCES", "paper_check",
    "verdict_text", "direction_of", "bootstrap_p", "holm", "multiplicity_note", "size_note", "recording_of", "fast_cmap",
]

ARCHS = ("baseline", "protopnet")

#: Recipe of the matched control arm: ordinary training fine-tuned for as many epochs as the AT models, without the adversary.
CONTROL = "OT+FT"
_CONTROL_WORDS = {CONTROL: "OT+FT (ordinary training fine-tuned for the same epochs without the adversary: the matched control)",
                  "OT": "OT (ordinary training; no OT+FT control in this result, so the AT models also had more epochs of training)"}


PAPER_URL = "https://arxiv.org/abs/2507.13727"
_ABSTRACT = f"the paper's abstract, {PAPER_URL} (full text: https://arxiv.org/html/2507.13727v1)"
#: Where each claim's wording or number comes from in the paper. ``figure`` is the number we compare with
#: (None: no traceable figure); ``untraced`` records a number that circulated for the claim but was not
#: found in the paper's text available here (only the abstract and the start of the introduction).
PAPER_SOURCES: dict[str, dict] = {
    "clean": {"figure": 10.5, "source": _ABSTRACT,
              "quote": "adversarial training, particularly using output-space attacks, improves clean test data performance "
                       "by an average of 10.5% relative"},
    "robust": {"figure": None, "source": _ABSTRACT,
               "quote": "[adversarial training] simultaneously strengthens the adversarial robustness of the models"},
    "ato_vs_ate": {"figure": None, "source": _ABSTRACT, "quote": "particularly using output-space attacks"},
    "ato_vs_ate_robust": {"figure": None, "source": _ABSTRACT,
                          "quote": "particularly using output-space attacks [...] simultaneously strengthens the adversarial robustness"},
    "tars": {"figure": None, "source": _ABSTRACT,
             "quote": "for AudioProtoPNet, the study assesses the stability of its learned prototypes under targeted embedding-space attacks",
             "untraced": "TARS 0.27 -> 0.65 at eps = 0.1 (from this project's issue text; not in the abstract)"},
}

_PAPER_SETTING = ("the paper tests on data with a strong shift from its training data (soundscapes from other sites), "
                  "with full-size ConvNeXt / AudioProtoPNet pretrained on a large corpus")
_OUR_SETTING = ("ours: 9 xeno-canto species, focal recordings, a recordist-disjoint test split (no recordist shared with "
                "training: a much milder shift), small models trained here, the AT models fine-tuned from the OT ones")
_EPS = "the paper's eps lives in its own input domain; ours is L-inf on the waveform in full-scale amplitude, matched by role, not by number"


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
    """One headline claim of the paper, or one additional check of ours, and how we measure it.

    Attributes
    ----------
    key : str
    claim : str
        The claim, in words.
    paper : str
        What the paper says (its number where one can be traced to it, see :data:`PAPER_SOURCES`).
    paper_effect : float or None
        The paper's effect on our effect's scale, when it gives a traceable one.
    measure : str
        What our number is (including the comparison arm and the attack).
    unit : str
        ``"%"`` (relative change), ``"cmAP"`` or ``"TARS"`` (absolute differences).
    kind : {"paper claim", "our additional check"}
    comparable : bool
        Whether our measurement is taken under conditions comparable to the paper's.
    conditions : str
        Why not, where not (what differs between the paper's setting and ours).
    source : str
        Where the paper says it (URL), "" for an additional check.
    """

    key: str
    claim: str
    paper: str
    paper_effect: float | None
    measure: str
    unit: str
    kind: str = "paper claim"
    comparable: bool = False
    conditions: str = ""
    source: str = ""


def _training_eps(names: dict) -> float:
    """Median L-inf training eps of the AT models' cards (1e-4, the shipped value, when none records one); ``names``
    maps (architecture, recipe) to models."""
    from core.models.registry import read_model_card

    found = []
    for (_arch, recipe), models in names.items():
        for m in models if recipe in ("AT-O", "AT-E") else ():
            try:
                tc = read_model_card(m).get("train_config", {})
            except (CoreError, OSError):
                continue
            if tc.get("adv_eps") and tc.get("adv_snr_db") is None:
                found.append(float(tc["adv_eps"]))
    return float(np.median(found)) if found else 1e-4


def _rel(a: float, b: float) -> float:
    return 100 * (a - b) / b


def _attack_rows(tab: pd.DataFrame, settings) -> tuple[pd.DataFrame, str]:
    """The robustness rows to use (worst case if present, else PGD) and their description."""
    steps = settings.steps
    if "attack" not in tab.columns:
        return tab, f"PGD-{steps}"
    values = set(tab["attack"].dropna().unique())
    if "worst-case" in values:
        from core.attacks.worstcase import worst_case_label

        worst = tab[tab["attack"] == "worst-case"].copy()
        # the worst case picks, per window, the first attack that changes the top-1 species; its scores are not a
        # worst case for cmAP (a narrow flip by APGD can leave cmAP higher than PGD's BCE attack does), so robustness
        # under it is the share of windows whose top-1 species survives every attack
        worst["top1_kept"] = 1.0 - worst["success"].astype(float)
        transfer = "source" in worst.columns and bool((worst["source"].fillna("") != "").any())
        words = worst_case_label(steps, getattr(settings, "strong_steps", 50), getattr(settings, "restarts", 2), transfer,
                                 apgd_steps=getattr(settings, "apgd_steps", 0))
        return worst, f"the per-clip {words} (success if any of them succeeds)"
    if "pgd" in values:
        return tab[tab["attack"] == "pgd"], f"PGD-{steps}"
    raise ParameterError(f"the robustness table has neither 'worst-case' nor 'pgd' rows in its attack column, got {sorted(values)}")


def _claims(result) -> list[tuple[Claim, "_Scores", Callable, Callable, str, str]]:
    """(claim, scores, effect(rows, rng=None) -> float, detail(rows) -> str, control, seeds) for the statistics available
    in ``result``; every model of an (architecture, recipe) is a seed of that arm, and ``seeds`` counts them
    (``"3 vs 3"``)."""
    from core.studies.compare import ZOO, model_recipe

    s = result.settings
    names: dict = {}  # (architecture, recipe) -> its models, one per training seed; the shipped model first
    for m in [m for m in ZOO if m in result.models] + [m for m in result.models if m not in ZOO]:
        names.setdefault(model_recipe(m), []).append(m)

    def pair(recipe_a, recipe_b, archs=("ConvNeXt baseline", "AudioProtoPNet")):
        """(a's models, b's models, b's recipe) per architecture; an "OT" arm is replaced by the matched OT+FT control
        where there is one."""
        out = []
        for arch in archs:
            b_recipe = CONTROL if recipe_b == "OT" and (arch, CONTROL) in names else recipe_b
            a, b = names.get((arch, recipe_a)), names.get((arch, b_recipe))
            if a and b:
                out.append((a, b, b_recipe))
        return out

    def arm(pairs, recipe_a):
        recipes = [r for _, _, r in pairs]
        if len(set(recipes)) == 1:
            return recipes[0], f"{recipe_a} vs {_CONTROL_WORDS.get(recipes[0], recipes[0])}"
        per = "; ".join(f"{b[0]} ({r})" for _, b, r in pairs)
        return ", ".join(recipes), f"{recipe_a} vs a mixed control arm: {per} (OT+FT is the matched control, OT the fallback)"

    shift_tab = result.shift
    clean = _Scores(shift_tab, shift_tab["condition"] == "clean")
    noise = _Scores(shift_tab, shift_tab["condition"] == "noise")
    rob_tab, attack = _attack_rows(result.robustness, s)
    train_eps = min(s.epsilons, key=lambda e: abs(np.log(e / _training_eps(names))))
    big_eps = max(s.epsilons)
    tgt_eps = max(s.target_epsilons)

    def eps_rows(tab, eps):
        return (tab["budget_kind"] != "clean") & np.isclose(tab["eps"], eps, rtol=1e-6)

    def value_fns(scores, column):
        return (lambda m, rows: scores.mean(m, column, rows)) if column else (lambda m, rows: scores.cmap(m, rows))

    def make(scores, pairs, relative, column=None):
        one = value_fns(scores, column)

        def value(models, rows, rng=None):
            """An arm's value: the mean over its seeds' models; with ``rng``, over seeds drawn with replacement (the
            second level of the hierarchical bootstrap; an arm of one seed draws nothing)."""
            picked = models if rng is None or len(models) == 1 else [models[i] for i in rng.integers(len(models), size=len(models))]
            return float(np.mean([one(m, rows) for m in picked]))

        def effect(rows, rng=None):
            return float(np.mean([(_rel if relative else np.subtract)(value(a, rows, rng), value(b, rows, rng)) for a, b, _ in pairs]))

        def detail(rows):
            def named(models):
                first = Path(models[0]).stem  # a seed given by its path: its file name
                return first if len(models) == 1 else f"{first} and {len(models) - 1} more seed{'s' if len(models) > 2 else ''}"
            return "; ".join(f"{named(a)} {value(a, rows):.3f} vs {named(b)} ({r}) {value(b, rows):.3f}" for a, b, r in pairs)
        return effect, detail

    def seeds(pairs) -> str:
        counts = list(dict.fromkeys(f"{len(a)} vs {len(b)}" for a, b, _ in pairs))
        return ", ".join(counts)

    clean_cond = (f"not comparable: {_PAPER_SETTING}; {_OUR_SETTING}. The abstract does not name the metric of its 10.5 % "
                  "nor what it averages over; we use cmAP averaged over our two architectures")
    rob_cond = f"not comparable: {_EPS}; {_PAPER_SETTING}; {_OUR_SETTING}"
    ate_cond = f"not comparable: {_PAPER_SETTING}; {_OUR_SETTING}"
    robust_scores = _Scores(rob_tab, eps_rows(rob_tab, train_eps))
    big_scores = _Scores(rob_tab, eps_rows(rob_tab, big_eps))
    kept = "top1_kept" in rob_tab.columns  # worst case: robustness = share of windows whose top-1 survives
    rob_what = "share of windows whose top-1 species survives" if kept else "cmAP under"
    specs = [
        # key, claim, paper, kind, conditions, scores, recipes, relative, measure(arm_text)
        ("clean", "AT-O improves cmAP on test data from other sites than training (under distribution shift)",
         "+10.5 % relative: AT, 'particularly using output-space attacks', improves 'clean test data performance by an average "
         "of 10.5% relative' (abstract), on test data that differ from its training data in environment and recording method",
         "paper claim", clean_cond,
         clean, ("AT-O", "OT"), True,
         lambda a: f"relative cmAP change, {a}, on the clean recordist-disjoint test windows (our closest analogue to test "
                   "data from other sites), mean over architectures"),
        ("shift", "AT-O improves cmAP on test windows mixed with site noise (our stand-in for a new site)",
         "no number in the paper for this setting", "our additional check",
         "our own setting (site noise mixed into our test windows); the paper has no counterpart", noise, ("AT-O", "OT"), True,
         lambda a: f"relative cmAP change, {a}, on test windows with site noise at {s.snr_db:g} dB SNR, mean over architectures"),
        ("robust", "AT-O strengthens adversarial robustness",
         "'strengthens the adversarial robustness of the models' (abstract; no figure there)", "paper claim", rob_cond,
         robust_scores, ("AT-O", "OT"), False,
         lambda a: f"{rob_what} {attack} (output space, L-inf) at eps {train_eps:g}, the grid eps nearest to the AT models' "
                   f"training eps: {a}, difference, mean over architectures"),
        ("robust_big", "AT-O strengthens adversarial robustness at a larger budget",
         "no number in the paper for this setting (the paper's robustness claim is the 'robust' row; this is a second budget of ours)",
         "our additional check", f"our own second budget; {_EPS}", big_scores, ("AT-O", "OT"), False,
         lambda a: f"{rob_what} {attack} at eps {big_eps:g} ({big_eps / train_eps:.3g}x the eps nearest to training): {a}, "
                   "difference, mean over architectures"),
        ("ato_vs_ate", "Output-space AT beats embedding-space AT (clean performance)",
         "AT-O ahead of AT-E: 'particularly using output-space attacks' (abstract; no figure there)", "paper claim", ate_cond,
         clean, ("AT-O", "AT-E"), True,
         lambda a: f"relative cmAP change, {a}, on the clean recordist-disjoint test windows, mean over architectures"),
        ("ato_vs_ate_robust", "Output-space AT beats embedding-space AT (robustness)",
         "AT-O ahead of AT-E: 'particularly using output-space attacks' also qualifies the robustness gain (abstract; no figure there)",
         "paper claim", rob_cond, robust_scores, ("AT-O", "AT-E"), False,
         lambda a: f"{rob_what} {attack} at eps {train_eps:g}: {a}, difference, mean over architectures"),
    ]
    out = []
    for key, text, paper, kind, cond, scores, (ra, rb), relative, measure in specs:
        pairs = pair(ra, rb)
        if not pairs:
            continue
        control, arm_text = arm(pairs, ra)
        robustness = scores is robust_scores or scores is big_scores
        effect, detail = make(scores, pairs, relative, column="top1_kept" if robustness and kept else None)
        unit = "%" if relative else ("top-1 kept" if robustness and kept else "cmAP")
        src = PAPER_SOURCES.get(key, {})
        claim = Claim(key, text, paper, src.get("figure") if kind == "paper claim" else None, measure(arm_text),
                      unit, kind=kind, comparable=False, conditions=cond, source=src.get("source", ""))
        out.append((claim, scores, effect, detail, control, seeds(pairs)))
    # prototype stability: AudioProtoPNet only, TARS of the targeted embedding-space attack
    tgt = result.targeted
    if "attack" in tgt.columns and tgt["attack"].nunique() > 1:
        tgt = tgt[tgt["attack"] == "pgd"]
    t_scores = _Scores(tgt, eps_rows(tgt, tgt_eps))
    pairs = pair("AT-O", "OT", archs=("AudioProtoPNet",))
    if pairs:
        control, arm_text = arm(pairs, "AT-O")
        effect, detail = make(t_scores, pairs, False, column="tars")
        claim = Claim("tars", "AT-O stabilises AudioProtoPNet's prototypes under targeted embedding-space attacks",
                      "the abstract says prototype stability under targeted embedding-space attacks is assessed, not in which "
                      "direction AT moves it (figure not traceable here)", None,
                      f"mean TARS under targeted embedding-space PGD-{s.steps} at eps {tgt_eps:g}: {arm_text}, difference "
                      "(AudioProtoPNet)", "TARS", kind="paper claim", comparable=False,
                      conditions=f"not comparable: {_EPS}; {_PAPER_SETTING}; {_OUR_SETTING}. The direction tested is the one "
                                 "this project's issue attributes to the paper",
                      source=PAPER_SOURCES["tars"]["source"])
        out.append((claim, t_scores, effect, detail, control, seeds(pairs)))
    return out


#: Columns of :func:`paper_check`'s table, in order.
COLUMNS = ["key", "kind", "claim", "paper", "paper_effect", "measure", "control", "unit", "ours", "ci_low", "ci_high", "p_not_claimed",
           "p_two_sided", "p_holm", "direction", "comparable", "conditions", "verdict", "size", "multiplicity", "detail", "source",
           "n_recordings", "n_clips", "n_seeds", "n_boot", "boot_seed"]


def paper_check(result, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per claim: the claim, the paper's number, ours with a bootstrap interval and p-value, a direction and a verdict.

    Parameters
    ----------
    result : core.studies.compare.CompareResult
    n_boot : int >= 100
        Bootstrap resamples: of the test recordings, then, where ``result`` holds several models of one (architecture,
        recipe), of those training seeds within each arm (a hierarchical bootstrap; Saravanan, Berman & Sober 2020).
        Every arm's value is the mean over its seeds.
    seed : int

    Returns
    -------
    pandas.DataFrame
        Columns :data:`COLUMNS`: ``key``; ``kind`` (``"paper claim"`` or ``"our additional check"``); ``claim``;
        ``paper`` (what the paper says) and ``paper_effect`` (its traceable number on our scale, else NaN);
        ``measure`` (what our number is, with the comparison arm and attack); ``control`` (recipe of the
        comparison arm: ``"OT+FT"``, ``"OT"``, ``"AT-E"``, or a comma-joined mix); ``unit``; ``ours``;
        ``ci_low, ci_high`` (unadjusted 95 % percentile interval); ``p_not_claimed`` (fraction of resamples
        whose effect is <= 0); ``p_two_sided`` (see :func:`bootstrap_p`); ``p_holm`` (Holm-adjusted over
        every row, :func:`holm`); ``direction`` (:func:`direction_of` at family-wise 0.05); ``comparable`` and
        ``conditions``; ``verdict`` (:func:`verdict_text`); ``size`` (the paper's effect size against our
        interval, when it gives one); ``multiplicity`` (:func:`multiplicity_note`); ``detail`` (the
        per-model values); ``source`` (where the paper says it); ``n_recordings``, ``n_clips``, ``n_seeds`` (models of
        the arm against models of its control, e.g. ``"3 vs 3"``), ``n_boot``,
        ``boot_seed``. Claims whose models are missing from ``result`` are left out.

    Raises
    ------
    ParameterError
        ``n_boot < 100``; a robustness table whose ``attack`` column has neither PGD nor worst-case rows.
    """
    check_int("n_boot", n_boot, 100)
    from core.studies.compare import ZOO, model_recipe

    archs = {arch for arch, _ in ZOO.values()}  # the zoo's models and other seeds of its architectures (by their cards)
    zoo = [n for n in result.models if n in ZOO or model_recipe(n)[0] in archs]
    if not zoo:  # the claims are about the zoo's recipes; other models have none to test
        return pd.DataFrame(columns=COLUMNS)
    result = result.subset(zoo)  # the claims are about the zoo (BirdNET has other clips)
    rows = []
    for claim, scores, effect, detail, control, n_seeds in _claims(result):
        groups = pd.Series([recording_of(c) for c in scores.clips])
        members = [np.flatnonzero(groups.to_numpy() == g) for g in groups.unique()]
        all_rows = np.arange(len(scores.clips))
        rng = np.random.default_rng(seed)
        boots = []
        for _ in range(n_boot):
            pick = rng.integers(len(members), size=len(members))
            boots.append(effect(np.concatenate([members[i] for i in pick]), rng))
        boots = np.asarray(boots, dtype=float)
        boots = boots[np.isfinite(boots)]
        low, high = (np.percentile(boots, [2.5, 97.5]) if len(boots) else (np.nan, np.nan))
        rows.append({
            "key": claim.key, "kind": claim.kind, "claim": claim.claim, "paper": claim.paper,
            "paper_effect": np.nan if claim.paper_effect is None else float(claim.paper_effect), "measure": claim.measure,
            "control": control, "unit": claim.unit, "ours": effect(all_rows), "ci_low": float(low), "ci_high": float(high),
            "p_not_claimed": float(np.mean(boots <= 0)) if len(boots) else np.nan, "p_two_sided": bootstrap_p(boots),
            "comparable": bool(claim.comparable), "conditions": claim.conditions,
            "size": size_note(float(low), float(high), claim.paper_effect, claim.unit), "detail": detail(all_rows), "source": claim.source,
            "n_recordings": len(members), "n_clips": len(all_rows), "n_seeds": n_seeds, "n_boot": n_boot, "boot_seed": seed,
        })
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c not in ("p_holm", "direction", "verdict", "multiplicity")])
    table.insert(table.columns.get_loc("p_two_sided") + 1, "p_holm", holm(table["p_two_sided"].to_numpy(dtype=float)) if len(table) else [])
    table.insert(table.columns.get_loc("p_holm") + 1, "direction",
                 [direction_of(e, p) for e, p in zip(table["ours"], table["p_holm"])])
    table.insert(table.columns.get_loc("conditions") + 1, "verdict",
                 [verdict_text(d, comparable=c, kind=k, p_holm=p, n_boot=n_boot)
                  for d, c, k, p in zip(table["direction"], table["comparable"], table["kind"], table["p_holm"])])
    table.insert(table.columns.get_loc("size") + 1, "multiplicity", multiplicity_note(table))
    return table[COLUMNS]


CLAIMS = ("clean", "shift", "robust", "robust_big", "ato_vs_ate", "ato_vs_ate_robust", "tars")
