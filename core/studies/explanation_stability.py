"""Does robustness buy stable explanations? Explanation stability of prototype heads under noise and under attack.

Issue 26, item 6. Ross & Doshi-Velez 2018 (AAAI) found that training for stable input gradients buys robustness, and
Hoedt, Flexer & Widmer 2024 asked whether interpretable audio models are more robust; this study asks the converse for
AudioProtoPNet heads: do heads trained against attacks (AT-O, AT-E), on noise (for randomized smoothing) or to keep
their explanation (AT-X, :func:`core.training.head_finetune.adversarial_finetune_head`) explain more stably than their
control (OT+FT: the same extra epochs on clean windows)?

Every model meets the same test windows (:func:`core.studies.certified_accuracy.stratified_test_windows`, chosen
without any model) and, per window, explains its own clean top-1 class ``c``. Three perturbations, all measured on the
returned waveform through the model's own path (:func:`core.field.explanation_measure.build_result`):

- ``swap``: :func:`core.field.explanation_attack.prototype_swap` (L-inf PGD, ``eps``, ``steps``): keep ``c``, make
  another of its prototypes the most active (Hoffmann et al. 2021);
- ``peak``: :func:`core.field.explanation_attack.peak_shift`: keep ``c``, move the top prototype's peak >= 2 map cells;
- ``noise``: Gaussian noise scaled to the L2 norm of that window's ``swap`` perturbation (so the same SNR), clipped to
  full scale: how much of what the attack moves any sound of that level moves.

Per (model, window, perturbation): ``label_kept``, ``moved`` (the top prototype of ``c`` changed; for ``peak``, its
peak moved), ``success`` (both; NaN for noise), the top-3 prototype overlap, the Spearman correlations of the top
prototype's similarity map and of the gradient x input map of ``c``, the shift of the evidence centroid [Hz, s], the
RMS change of the prototype activations and the SNR [dB]. :func:`stability_summary` gives mean ± SD over each arm's
seeds; :func:`stability_differences` each arm minus the control with hierarchical bootstrap intervals (recordings,
then seeds; :func:`core.metrics.hierarchical_difference`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError

__all__ = ["PERTURBATIONS", "MEASURES", "stability_rows", "stability_summary", "stability_differences", "stability_markdown",
           "stability_differences_markdown"]

PERTURBATIONS = ("swap", "peak", "noise")
#: The summary's measures: (perturbation, column, label).
MEASURES = (
    ("swap", "success", "swap success"),
    ("swap", "topk_overlap", "top-3 overlap (swap)"),
    ("swap", "attribution_spearman", "attribution Spearman (swap)"),
    ("swap", "centroid_shift_abs_hz", "centroid shift, absolute, Hz (swap)"),
    ("swap", "activation_rms_change", "activation RMS change (swap)"),
    ("noise", "activation_rms_change", "activation RMS change (noise)"),
    ("peak", "success", "peak-shift success"),
    ("noise", "moved", "top prototype changed (noise)"),
    ("noise", "attribution_spearman", "attribution Spearman (noise)"),
    ("swap", "snr_db", "SNR dB (swap)"),
)


def _row(kind: str, result, *, success: bool | None) -> dict:
    """The measures of one :class:`~core.field.explanation_measure.ExplanationAttackResult`."""
    acts_b, acts_a = result.activations_before, result.activations_after
    return {"perturbation": kind, "clean_class": result.class_name, "label_kept": bool(result.label_kept), "moved": bool(result.moved),
            "success": np.nan if success is None else float(success), "topk_overlap": result.topk_overlap,
            "similarity_spearman": result.similarity_spearman, "attribution_spearman": result.attribution_spearman,
            "centroid_shift_hz": result.centroid_shift_hz, "centroid_shift_s": result.centroid_shift_s,
            "centroid_shift_abs_hz": abs(result.centroid_shift_hz),
            "activation_rms_change": float(np.sqrt(np.mean((acts_a - acts_b) ** 2))) if acts_b is not None else np.nan,
            "snr_db": result.snr_db}


def _same_energy_noise(clean: np.ndarray, adversarial: np.ndarray, gen: np.random.Generator) -> np.ndarray:
    """Gaussian noise with the L2 norm of ``adversarial - clean``, added to ``clean`` and clipped to [-1, 1]."""
    delta = adversarial - clean
    noise = gen.standard_normal(clean.shape).astype(np.float32)
    noise *= float(np.linalg.norm(delta)) / max(float(np.linalg.norm(noise)), 1e-12)
    return np.clip(clean + noise, -1.0, 1.0).astype(np.float32)


def stability_rows(models: Mapping[str, torch.nn.Module], windows: Sequence, *, eps: float = 1e-4, steps: int = 20, seed: int = 0,
                   info: Mapping[str, Mapping] | None = None, skip: set | None = None,
                   on_window: Callable[[list[dict]], None] | None = None,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Measure each model's explanation under the swap and peak attacks and under noise of the same energy.

    Parameters
    ----------
    models : mapping name -> prototype model
        AudioProtoPNet or prototype heads on BirdNET, same window length.
    windows : sequence of core.studies.certified_accuracy.CertWindow
        Waveforms are clipped to [-1, 1] (a few decoded windows overshoot full scale).
    eps : float in (0, 1] [full-scale amplitude]
        L-inf budget of both attacks.
    steps : int
        PGD steps of both attacks.
    seed : int
        Seeds the attacks' random starts and the noise.
    info : mapping name -> dict, optional
        Extra columns per model (``arm``, ``train_seed``).
    skip : set of (model name, window_id), optional
        Pairs already measured (a resumed run).
    on_window : callable, optional
        ``on_window(rows)`` after each (model, window) pair: its three rows.
    progress : callable, optional
        ``progress(done, total)`` in (model, window) pairs.

    Returns
    -------
    pandas.DataFrame
        One row per (model, window, perturbation): ``model``, the ``info`` columns, ``window``, ``recording``,
        ``species``, ``perturbation`` and the measures of :mod:`core.studies.explanation_stability`'s docstring.

    Raises
    ------
    ParameterError
        No model, models reading different windows (sample rate, length), or a model without prototypes (from the attacks).
    """
    from core.field.explanation_attack import peak_shift, prototype_swap
    from core.field.explanation_measure import build_result

    if not models:
        raise ParameterError("no model to measure")
    rates = {(m.config.frontend.sample_rate, m.config.window_samples) for m in models.values()}
    if len(rates) > 1:
        raise ParameterError(f"the models read different windows (sample rate, samples: {sorted(rates)}): measure them apart")
    skip, info = skip or set(), info or {}
    rows: list[dict] = []
    total, done = len(models) * len(windows), 0
    for name, model in models.items():
        for w_i, win in enumerate(windows):
            done += 1
            if (name, win.window_id) in skip:
                continue
            x = np.clip(np.asarray(win.waveform, np.float32), -1.0, 1.0)
            swap = prototype_swap(model, x, eps=eps, steps=steps, seed=seed)
            peak = peak_shift(model, x, eps=eps, steps=steps, seed=seed)
            n = len(x)
            gen = np.random.default_rng([seed, w_i])
            noisy = _same_energy_noise(x, np.pad(swap.adversarial, (0, n - len(swap.adversarial))), gen)
            settings = dict(eps=eps, alpha=0.0, steps=0, seed=seed, n_valid=n)
            noise = build_result("prototype_swap", model, x, noisy, swap.class_index, settings=settings)
            base = {"model": name, **dict(info.get(name, {})), "window": win.window_id, "recording": win.recording_id,
                    "species": win.species, "eps": eps, "steps": steps}
            new = [{**base, **_row("swap", swap, success=swap.success)}, {**base, **_row("peak", peak, success=peak.success)},
                   {**base, **_row("noise", noise, success=None)}]
            rows += new
            if on_window is not None:
                on_window(new)
            if progress is not None:
                progress(done, total)
    return pd.DataFrame(rows)


def stability_summary(rows: pd.DataFrame, measures: Sequence[tuple[str, str, str]] = MEASURES) -> pd.DataFrame:
    """Per arm: each measure's mean over windows per model, then mean and SD (ddof 1) over the arm's models (seeds).

    Returns
    -------
    pandas.DataFrame
        ``arm, n_models, n_windows`` and ``<label> mean``, ``<label> sd`` per measure.

    Raises
    ------
    ParameterError
        No ``arm`` column.
    """
    if "arm" not in rows.columns:
        raise ParameterError("the rows need an 'arm' column")
    out = []
    for arm, part in rows.groupby("arm", sort=False):
        row = {"arm": arm, "n_models": int(part["model"].nunique()), "n_windows": int(part.groupby("model")["window"].nunique().min())}
        for kind, col, label in measures:
            per_model = part[part["perturbation"] == kind].groupby("model", sort=False)[col].mean()
            row[f"{label} mean"] = float(per_model.mean())
            row[f"{label} sd"] = float(per_model.std(ddof=1)) if len(per_model) > 1 else np.nan
        out.append(row)
    return pd.DataFrame(out)


def stability_differences(rows: pd.DataFrame, *, control: str = "OT+FT", n_boot: int = 2000, seed: int = 0,
                          measures: Sequence[tuple[str, str]] = (("swap", "success"), ("swap", "activation_rms_change"),
                                                                 ("swap", "attribution_spearman"), ("noise", "attribution_spearman"))
                          ) -> pd.DataFrame:
    """Each arm's mean minus the control's, with a 95 % interval resampling recordings, then seeds within arm.

    Returns
    -------
    pandas.DataFrame
        ``arm, control, perturbation, measure, effect, ci_low, ci_high, p_two_sided, n_recordings, n_seeds_arm,
        n_seeds_control, n_boot`` (:func:`core.metrics.hierarchical_difference`, windows matched by name); empty
        without the control arm. A measure with NaN on some windows gets NaN figures and a ``note`` saying why.
    """
    from core.metrics import hierarchical_difference

    if control not in set(rows["arm"]):
        return pd.DataFrame()
    out = []
    for kind, col in measures:
        part = rows[rows["perturbation"] == kind]
        for arm in dict.fromkeys(part["arm"]):
            if arm == control:
                continue
            row = {"arm": arm, "control": control, "perturbation": kind, "measure": col}
            try:
                row.update(hierarchical_difference(part, arm, control, col, n_boot=n_boot, seed=seed, window="window"))
            except ParameterError as exc:  # e.g. a map without spread gave NaN on some windows only: said, not hidden
                row.update(effect=np.nan, ci_low=np.nan, ci_high=np.nan, p_two_sided=np.nan, note=str(exc))
            out.append(row)
    return pd.DataFrame(out)


def stability_markdown(summary: pd.DataFrame, measures: Sequence[tuple[str, str, str]] = MEASURES) -> str:
    """docs/ table of :func:`stability_summary`: one row per arm, mean ± SD over seeds."""
    def cell(r, label):
        m, sd = r[f"{label} mean"], r[f"{label} sd"]
        digits = 0 if "Hz" in label or "dB" in label else 3 if "RMS" in label else 2
        return f"{m:.{digits}f} ± {sd:.{digits}f}" if np.isfinite(sd) else f"{m:.{digits}f}"

    lines = ["| arm | seeds | windows | " + " | ".join(label for _, _, label in measures) + " |",
             "|---|---:|---:|" + "---:|" * len(measures)]
    for _, r in summary.iterrows():
        lines.append(f"| {r['arm']} | {int(r['n_models'])} | {int(r['n_windows'])} | "
                     + " | ".join(cell(r, label) for _, _, label in measures) + " |")
    return "\n".join(lines)


def stability_differences_markdown(diffs: pd.DataFrame) -> str:
    """docs/ table of :func:`stability_differences`: per arm and measure, the difference from the control with its
    95 % interval, bootstrap p (two-sided) and that p Holm-adjusted over the table's rows with a p
    (:func:`core.metrics.holm`)."""
    from core.metrics import format_p, holm_cells

    adjusted = holm_cells(diffs["p_two_sided"].to_numpy(dtype=float),
                          diffs["n_boot"].to_numpy(dtype=float) if "n_boot" in diffs else None) if len(diffs) else []
    m = int(np.isfinite(diffs["p_two_sided"].to_numpy(dtype=float)).sum()) if len(diffs) else 0
    lines = [f"| arm | against | perturbation | measure | difference [95 % CI] | p | p (Holm, {m} rows) | recordings | seeds |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for (_, d), p_holm in zip(diffs.iterrows(), adjusted):
        cell = (f"{d['effect']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]" if np.isfinite(d["effect"])
                else f"not computed: {d.get('note', '')}")
        n_boot = int(d["n_boot"]) if np.isfinite(d.get("n_boot", np.nan)) else None
        p = f"{format_p(d['p_two_sided'], n_boot)} | {p_holm}"
        seeds = f"{int(d['n_seeds_arm'])} vs {int(d['n_seeds_control'])}" if np.isfinite(d.get("n_seeds_arm", np.nan)) else ""
        recs = f"{int(d['n_recordings'])}" if np.isfinite(d.get("n_recordings", np.nan)) else ""
        lines.append(f"| {d['arm']} | {d['control']} | {d['perturbation']} | {d['measure']} | {cell} | {p} | {recs} | {seeds} |")
    return "\n".join(lines)
