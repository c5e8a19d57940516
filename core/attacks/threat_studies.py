"""Studies of the realistic threats: survival of perturbations after MP3 and a loudspeaker, and the masking-threshold attack.

Both studies are long (hours for the shipped models on a 2-core CPU), so both resume: given ``out``, each finished
unit (a batch of windows of one model under one setting) is written to that table as soon as it is computed, with
every input in a settings sidecar (:class:`core.io.journal.ResumableTable`: the data's identity, the models' weight
fingerprints, every option); a rerun with the same inputs computes only the units that are missing, and returns the
same table an uninterrupted run would (the attacks are seeded per batch, EOT's draws per clip).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.attacks.threats import EOT, Mixture, threat_transforms

log = logging.getLogger(__name__)

#: Margins [dB] below the masking threshold the masking study runs by default (see :mod:`core.attacks.psychoacoustic`).
MARGINS_DB = (0.0, 6.0, 10.0)


@torch.no_grad()
def _top1(model, x: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    return torch.cat([model(x[i : i + batch_size]).argmax(-1).cpu() for i in range(0, len(x), batch_size)]).numpy()


def _model_clips(model, dataset, split: str, max_clips: int):
    """The model's own windows of a split (evenly over the species), its sample rate [Hz] and device."""
    from core.io.clips import dataset_clips

    c = model.config
    sr = int(c.frontend.sample_rate)
    clips = dataset_clips(dataset, split=split, class_names=c.class_names, sample_rate=sr, window_samples=c.window_samples,
                          max_clips=max_clips)
    return clips, sr, next(model.parameters()).device


def _journal(out, study: str, models: dict, dataset, unit, resume: bool, **options):
    """The resumable table of a study (None without ``out``), keyed by the data, the weights and every option."""
    if out is None:
        return None
    from core.io.journal import ResumableTable, dataset_identity, weights_fingerprint

    settings = {"study": study, "data": dataset_identity(dataset), "models": {n: weights_fingerprint(m) for n, m in models.items()},
                **options}
    return ResumableTable(out, settings, unit, resume=resume)


class _Units:
    """Counts units for ``progress`` and for ``max_units`` (units computed in this call; None: no limit)."""

    def __init__(self, total: int, progress, max_units: int | None) -> None:
        from core.errors import ParameterError

        if max_units is not None and (isinstance(max_units, bool) or not isinstance(max_units, int) or max_units < 0):
            raise ParameterError(f"max_units must be None or an integer >= 0, got {max_units!r}")
        self.total, self.progress, self.max_units, self.done, self.computed = total, progress, max_units, 0, 0

    def full(self) -> bool:
        return self.max_units is not None and self.computed >= self.max_units

    def tick(self, computed: bool) -> None:
        self.done += 1
        self.computed += int(computed)
        if self.progress:
            self.progress(self.done, self.total)


def survival_study(models: dict, dataset, *, split: str = "test", max_clips: int = 24, snr_db=(40.0, 30.0), steps: int = 20,
                   eot_samples: int = 4, transforms: dict | None = None, seed: int = 0, clips_per_batch: int = 4,
                   progress: Callable[[int, int], None] | None = None, out=None, resume: bool = True,
                   max_units: int | None = None) -> pd.DataFrame:
    """How often adversarial clips still fool each model after each real transformation, with and without EOT.

    Per model, on its own windows of the split's recordings (evenly spread over the
    species), two attacks at each SNR budget (PGD, L-inf, ``steps`` steps, the
    margin objective: push the clean top-1 species below the runner-up): plain, and
    EOT over a :class:`core.attacks.threats.Mixture` of ``transforms`` (``eot_samples``
    draws a step, each clip its own transformation and parameters). Then each
    transformation's evaluation draw is applied to the clean and to the adversarial
    clip (the same draw: same room, lag, noise and codec; a loudspeaker threat plays
    only the perturbation, so its clean control is the clip itself).

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    dataset : core.io.data.Dataset
    split : str
    max_clips : int
        Windows per model.
    snr_db : sequence of float [dB]
        Budgets as SNR of the perturbation below each clip (matched between the two attacks).
    steps, eot_samples : int
    transforms : dict of name -> Transform, optional
        Default :func:`core.attacks.threats.threat_transforms` (MP3 at 128 kbps, the perturbation from a
        loudspeaker at 1 m and at 10 m).
    seed : int
    clips_per_batch : int
    progress : callable, optional
        ``progress(done, total)`` over (model, budget, attack, batch) units, skipped ones included.
    out : path, optional
        ``.csv`` or ``.parquet``: written after every unit, resumed from (module docstring).
    resume : bool
        False: replace an existing ``out`` instead of resuming it.
    max_units : int, optional
        Compute at most this many units in this call and return what the table then holds (the rest is left
        for a rerun); None: all.

    Returns
    -------
    pandas.DataFrame
        One row per (model, clip, snr_db, attack, transform): ``clean_top1``,
        ``adv_top1`` (digital), ``snr_measured_db``, ``t_clean_top1``, ``t_adv_top1``,
        ``fooled_digital`` (adv top-1 != clean top-1), ``control_changed`` (the
        transformation alone changed the clean top-1), ``fooled_after`` (transformed
        adversarial top-1 != clean top-1), ``seconds`` (the attack's time per clip).
        ``transform`` "none" repeats the digital result.

    Raises
    ------
    ParameterError
        ``out`` holds a study with other inputs (with ``resume``), or bad options.
    """
    from core.attacks import PGD
    from core.attacks.objectives import OutputMargin
    from core.metrics import snr_db as measure_snr

    transforms = transforms or threat_transforms()
    mixture = Mixture(tuple(transforms.values()))
    journal = _journal(out, "survival", models, dataset, ("model", "snr_db", "attack", "clip"), resume, split=split,
                       max_clips=max_clips, snr_db=[float(s) for s in snr_db], steps=steps, eot_samples=eot_samples,
                       transforms={t: tr.describe() for t, tr in transforms.items()}, seed=seed, clips_per_batch=clips_per_batch)
    done = journal.done() if journal else set()
    rows = []
    units = _Units(len(models) * len(snr_db) * 2 * -(-max_clips // clips_per_batch), progress, max_units)
    for name, model in models.items():
        c = model.config
        clips, sr, device = _model_clips(model, dataset, split, max_clips)
        x_all = torch.as_tensor(clips.waveforms, device=device)
        clean = t_clean = None
        for s in snr_db:
            for kind in ("pgd", "eot-pgd"):
                objective = OutputMargin() if kind == "pgd" else EOT(OutputMargin(), mixture, samples=eot_samples, seed=seed)
                attack = PGD(snr_db=float(s), steps=steps, seed=seed, objective=objective)
                for i in range(0, len(x_all), clips_per_batch):
                    if (name, float(s), kind, clips.clip_ids[i]) in done:
                        units.tick(False)
                        continue
                    if units.full():
                        return journal.result() if journal else pd.DataFrame(rows)
                    if clean is None:  # the clean answers, plain and after each transformation's evaluation draw
                        clean = _top1(model, x_all)
                        t_clean = {t: _top1(model, tr(x_all, sr, clean=x_all).clamp(-1, 1)) for t, tr in transforms.items()}
                    x = x_all[i : i + clips_per_batch]
                    t0 = time.time()
                    adv = attack(model, x)
                    secs = (time.time() - t0) / len(x)
                    measured = measure_snr(x, adv).cpu().numpy()
                    adv_top = _top1(model, adv)
                    after = {"none": adv_top} | {t: _top1(model, tr(adv, sr, clean=x).clamp(-1, 1)) for t, tr in transforms.items()}
                    part = []
                    for j in range(len(x)):
                        k = i + j
                        for t, top in after.items():
                            tc = clean[k] if t == "none" else t_clean[t][k]
                            part.append({"model": name, "clip": clips.clip_ids[k], "species": clips.species[k], "snr_db": float(s),
                                         "attack": kind, "transform": t, "clean_top1": c.class_names[clean[k]],
                                         "adv_top1": c.class_names[adv_top[j]], "snr_measured_db": float(measured[j]),
                                         "t_clean_top1": c.class_names[tc], "t_adv_top1": c.class_names[top[j]],
                                         "fooled_digital": bool(adv_top[j] != clean[k]), "control_changed": bool(tc != clean[k]),
                                         "fooled_after": bool(top[j] != clean[k]), "seconds": secs,
                                         "steps": steps, "eot_samples": eot_samples if kind == "eot-pgd" else 0})
                    rows += part
                    if journal:
                        journal.add(pd.DataFrame(part))
                    units.tick(True)
        log.info("%s done", name)
    return journal.result() if journal else pd.DataFrame(rows)


def survival_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, snr_db, attack, transform): windows, digital success, control change and survival rates.

    ``survives`` = share of windows whose transformed adversarial clip has another
    top-1 than the clean clip, among the windows whose top-1 the transformation
    alone left unchanged (``control_stable``); ``fooled_after`` = the same share over
    all windows. ``control_changed`` is the transformation's own effect on clean clips.
    """
    t = table.copy()
    t["stable_and_fooled"] = t["fooled_after"] & ~t["control_changed"]
    g = t.groupby(["model", "snr_db", "attack", "transform"], sort=False)
    out = g.agg(windows=("clip", "size"), snr_measured_db=("snr_measured_db", "median"), fooled_digital=("fooled_digital", "mean"),
                control_changed=("control_changed", "mean"), fooled_after=("fooled_after", "mean"),
                stable=("control_changed", lambda v: int((~v).sum())), stable_and_fooled=("stable_and_fooled", "sum"),
                seconds=("seconds", "mean")).reset_index()
    out["survives"] = out["stable_and_fooled"] / out["stable"].where(out["stable"] > 0)
    return out.drop(columns=["stable_and_fooled"])


def masking_study(models: dict, dataset, *, split: str = "test", max_clips: int = 24, steps: int = 30, seed: int = 0,
                  margin_db=MARGINS_DB, clips_per_batch: int = 4, progress: Callable[[int, int], None] | None = None, out=None,
                  resume: bool = True, max_units: int | None = None) -> pd.DataFrame:
    """A perturbation under the masking threshold (:class:`core.attacks.psychoacoustic.MaskedPGD`) against L-inf PGD at the same SNR.

    Per model, margin and window (its own windows of the split, spread over the
    species): the masked attack kept ``margin_db`` below the clean clip's masking
    threshold (margin objective, ``steps`` steps), its measured SNR and what of it
    lies above the threshold itself; then the control, plain L-inf PGD (same
    objective and steps) with its budget set to that clip's measured SNR, and the
    same measures. Where the masked attack leaves the top-1 unchanged its SNR is
    still the control's budget.

    Parameters
    ----------
    models : dict of name -> BirdClassifier
    dataset : core.io.data.Dataset
    split : str
    max_clips : int
        Windows per model.
    steps, seed, clips_per_batch : int
    margin_db : sequence of float in [0, 60] [dB]
        Distances below the threshold (default 0, 6 and 10 dB).
    progress : callable, optional
        ``progress(done, total)`` over (model, batch, margin) units.
    out, resume, max_units
        As :func:`survival_study`.

    Returns
    -------
    pandas.DataFrame
        One row per (model, clip, margin_db, attack in {"masked", "linf-same-snr"}): ``clean_top1``,
        ``adv_top1``, ``success`` (top-1 changed), ``snr_db``, ``share_above``,
        ``share_above_3db``, ``p99_excess_db`` (against the threshold itself,
        :func:`core.attacks.psychoacoustic.masking_excess`; about ``-margin_db`` where the masked attack
        uses its whole budget).

    Raises
    ------
    ParameterError
        A margin outside [0, 60] dB, ``out`` holding a study with other inputs (with ``resume``), bad options.
    """
    from core.attacks import PGD
    from core.attacks.objectives import OutputMargin
    from core.attacks.psychoacoustic import MaskedPGD, check_margin_db, masking_excess, masking_threshold
    from core.metrics import snr_db as measure_snr

    margins = [check_margin_db(m) for m in margin_db]
    journal = _journal(out, "masking", models, dataset, ("model", "margin_db", "clip"), resume, split=split, max_clips=max_clips,
                       steps=steps, seed=seed, margin_db=margins, clips_per_batch=clips_per_batch, masked_eps_cap=MaskedPGD().pgd.eps,
                       final_iterations=MaskedPGD.final_iterations)
    done = journal.done() if journal else set()
    rows = []
    units = _Units(len(models) * len(margins) * -(-max_clips // clips_per_batch), progress, max_units)
    for name, model in models.items():
        c = model.config
        clips, sr, device = _model_clips(model, dataset, split, max_clips)
        for i in range(0, len(clips.waveforms), clips_per_batch):
            x = torch.as_tensor(clips.waveforms[i : i + clips_per_batch], device=device)
            clean = th = None
            for margin in margins:
                if (name, margin, clips.clip_ids[i]) in done:
                    units.tick(False)
                    continue
                if units.full():
                    return journal.result() if journal else pd.DataFrame(rows)
                if clean is None:
                    clean, th = _top1(model, x), masking_threshold(x, sr)
                adv = MaskedPGD(steps=steps, seed=seed, margin_db=margin)(model, x)
                snr = measure_snr(x, adv).cpu().numpy()
                out_ = {"masked": (adv, snr)}
                ctrl = torch.cat([PGD(snr_db=float(min(max(s, -20.0), 120.0)), steps=steps, seed=seed, objective=OutputMargin())(model, x[j : j + 1])
                                  for j, s in enumerate(snr)])
                out_["linf-same-snr"] = (ctrl, measure_snr(x, ctrl).cpu().numpy())
                part = []
                for kind, (a, s) in out_.items():
                    top = _top1(model, a)
                    ex = masking_excess((a - x).cpu(), th)
                    for j in range(len(x)):
                        part.append({"model": name, "clip": clips.clip_ids[i + j], "species": clips.species[i + j], "margin_db": margin,
                                     "attack": kind, "clean_top1": c.class_names[clean[j]], "adv_top1": c.class_names[top[j]],
                                     "success": bool(top[j] != clean[j]), "snr_db": float(s[j]),
                                     **{k: float(v[j]) for k, v in ex.items()}, "steps": steps})
                rows += part
                if journal:
                    journal.add(pd.DataFrame(part))
                units.tick(True)
    return journal.result() if journal else pd.DataFrame(rows)


def masking_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, margin, attack): windows, success rate, median SNR, median share of cells above the threshold, median p99 excess.

    With a ``margin_db`` column (tables since the margin option) the ``attack`` of the summary names the
    margin ("masked, 6 dB margin"; the control "linf-same-snr, 6 dB margin": L-inf PGD at the SNR the masked attack
    reached with that margin); tables without it were computed at 0 dB and keep their attack names.
    """
    keys = ["model", "margin_db", "attack"] if "margin_db" in table.columns else ["model", "attack"]
    g = table.groupby(keys, sort=False)
    out = g.agg(windows=("clip", "size"), success=("success", "mean"), snr_db=("snr_db", "median"),
                share_above=("share_above", "median"), share_above_3db=("share_above_3db", "median"),
                p99_excess_db=("p99_excess_db", "median")).reset_index()
    if "margin_db" in out.columns:
        out["attack"] = [f"{a}, {m:g} dB margin" for a, m in zip(out["attack"], out["margin_db"])]
    return out
