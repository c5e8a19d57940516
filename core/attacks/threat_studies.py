"""Studies of the realistic threats: survival of perturbations after MP3 and playback, and the masking-threshold attack."""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.attacks.threats import EOT, Mixture, threat_transforms

log = logging.getLogger(__name__)


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


def survival_study(models: dict, dataset, *, split: str = "test", max_clips: int = 24, snr_db=(40.0, 30.0), steps: int = 20,
                   eot_samples: int = 4, transforms: dict | None = None, seed: int = 0, clips_per_batch: int = 4,
                   progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """How often adversarial clips still fool each model after each real transformation, with and without EOT.

    Per model, on its own windows of the split's recordings (evenly spread over the
    species), two attacks at each SNR budget (PGD, L-inf, ``steps`` steps, the
    margin objective: push the clean top-1 species below the runner-up): plain, and
    EOT over a :class:`Mixture` of ``transforms`` (``eot_samples`` draws a step). Then
    each transformation's evaluation draw is applied to the clean and to the
    adversarial clip (the same draw: same room, noise and codec).

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
        Default :func:`threat_transforms`.
    seed : int
    clips_per_batch : int
    progress : callable, optional
        ``progress(done, total)`` over (model, budget, attack, batch) units.

    Returns
    -------
    pandas.DataFrame
        One row per (model, clip, snr_db, attack, transform): ``clean_top1``,
        ``adv_top1`` (digital), ``snr_measured_db``, ``t_clean_top1``, ``t_adv_top1``,
        ``fooled_digital`` (adv top-1 != clean top-1), ``control_changed`` (the
        transformation alone changed the clean top-1), ``fooled_after`` (transformed
        adversarial top-1 != clean top-1), ``seconds`` (the attack's time per clip).
        ``transform`` "none" repeats the digital result.
    """
    from core.attacks import PGD
    from core.attacks.objectives import OutputMargin
    from core.metrics import snr_db as measure_snr

    transforms = transforms or threat_transforms()
    mixture = Mixture(tuple(transforms.values()))
    rows = []
    units = len(models) * len(snr_db) * 2 * -(-max_clips // clips_per_batch)
    done = 0
    for name, model in models.items():
        c = model.config
        clips, sr, device = _model_clips(model, dataset, split, max_clips)
        x_all = torch.as_tensor(clips.waveforms, device=device)
        clean = _top1(model, x_all)
        t_clean = {t: _top1(model, tr(x_all, sr).clamp(-1, 1)) for t, tr in transforms.items()}
        for s in snr_db:
            for kind in ("pgd", "eot-pgd"):
                objective = OutputMargin() if kind == "pgd" else EOT(OutputMargin(), mixture, samples=eot_samples, seed=seed)
                attack = PGD(snr_db=float(s), steps=steps, seed=seed, objective=objective)
                for i in range(0, len(x_all), clips_per_batch):
                    x = x_all[i : i + clips_per_batch]
                    t0 = time.time()
                    adv = attack(model, x)
                    secs = (time.time() - t0) / len(x)
                    measured = measure_snr(x, adv).cpu().numpy()
                    adv_top = _top1(model, adv)
                    after = {"none": adv_top} | {t: _top1(model, tr(adv, sr).clamp(-1, 1)) for t, tr in transforms.items()}
                    for j in range(len(x)):
                        k = i + j
                        for t, top in after.items():
                            tc = clean[k] if t == "none" else t_clean[t][k]
                            rows.append({"model": name, "clip": clips.clip_ids[k], "species": clips.species[k], "snr_db": float(s),
                                         "attack": kind, "transform": t, "clean_top1": c.class_names[clean[k]],
                                         "adv_top1": c.class_names[adv_top[j]], "snr_measured_db": float(measured[j]),
                                         "t_clean_top1": c.class_names[tc], "t_adv_top1": c.class_names[top[j]],
                                         "fooled_digital": bool(adv_top[j] != clean[k]), "control_changed": bool(tc != clean[k]),
                                         "fooled_after": bool(top[j] != clean[k]), "seconds": secs,
                                         "steps": steps, "eot_samples": eot_samples if kind == "eot-pgd" else 0})
                    done += 1
                    if progress:
                        progress(done, units)
        log.info("%s done", name)
    return pd.DataFrame(rows)


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
                  clips_per_batch: int = 4, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """A perturbation under the masking threshold (:class:`core.attacks.psychoacoustic.MaskedPGD`) against L-inf PGD at the same SNR.

    Per model and window (its own windows of the split, spread over the species): the
    masked attack (margin objective, ``steps`` steps), its measured SNR and what of it
    lies above the clean clip's masking threshold; then the control, plain L-inf PGD
    (same objective and steps) with its budget set to that clip's measured SNR, and
    the same measures. Where the masked attack leaves the top-1 unchanged its SNR is
    still the control's budget.

    Returns
    -------
    pandas.DataFrame
        One row per (model, clip, attack in {"masked", "linf-same-snr"}): ``clean_top1``,
        ``adv_top1``, ``success`` (top-1 changed), ``snr_db``, ``share_above``,
        ``share_above_3db``, ``p99_excess_db`` (:func:`core.attacks.psychoacoustic.masking_excess`).
    """
    from core.attacks import PGD
    from core.attacks.objectives import OutputMargin
    from core.attacks.psychoacoustic import MaskedPGD, masking_excess, masking_threshold
    from core.metrics import snr_db as measure_snr

    rows = []
    units = len(models) * -(-max_clips // clips_per_batch)
    done = 0
    for name, model in models.items():
        c = model.config
        clips, sr, device = _model_clips(model, dataset, split, max_clips)
        for i in range(0, len(clips.waveforms), clips_per_batch):
            x = torch.as_tensor(clips.waveforms[i : i + clips_per_batch], device=device)
            clean = _top1(model, x)
            masked = MaskedPGD(steps=steps, seed=seed)
            adv = masked(model, x)
            snr = measure_snr(x, adv).cpu().numpy()
            th = masking_threshold(x, sr)
            out = {"masked": (adv, snr)}
            ctrl = torch.cat([PGD(snr_db=float(min(max(s, -20.0), 120.0)), steps=steps, seed=seed, objective=OutputMargin())(model, x[j : j + 1])
                              for j, s in enumerate(snr)])
            out["linf-same-snr"] = (ctrl, measure_snr(x, ctrl).cpu().numpy())
            for kind, (a, s) in out.items():
                top = _top1(model, a)
                ex = masking_excess((a - x).cpu(), th)
                for j in range(len(x)):
                    rows.append({"model": name, "clip": clips.clip_ids[i + j], "species": clips.species[i + j], "attack": kind,
                                 "clean_top1": c.class_names[clean[j]], "adv_top1": c.class_names[top[j]],
                                 "success": bool(top[j] != clean[j]), "snr_db": float(s[j]),
                                 **{k: float(v[j]) for k, v in ex.items()}, "steps": steps})
            done += 1
            if progress:
                progress(done, units)
    return pd.DataFrame(rows)


def masking_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (model, attack): windows, success rate, median SNR, median share of cells above the threshold, median p99 excess."""
    g = table.groupby(["model", "attack"], sort=False)
    return g.agg(windows=("clip", "size"), success=("success", "mean"), snr_db=("snr_db", "median"),
                 share_above=("share_above", "median"), share_above_3db=("share_above_3db", "median"),
                 p99_excess_db=("p99_excess_db", "median")).reset_index()
