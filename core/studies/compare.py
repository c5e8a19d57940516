"""The model zoo side by side: clean, shifted and attacked metrics on the same clips, and a disk store.

The eight shipped models are {baseline, AudioProtoPNet} x {ordinary training (OT),
output-space adversarial training (AT-O), embedding-space adversarial training
(AT-E)} (Heinrich et al. 2025, arXiv 2507.13727), plus the matched control of the AT
models (OT+FT: the same fine-tuning without the adversary). :func:`run_compare` evaluates
any set of models on the same clips of a split:

- ``shift``: per-clip scores on the clean windows and under the natural shifts of
  :mod:`core.studies.shift` (site noise, gain, mixup);
- ``robustness``: a PGD sweep of the output-space untargeted objective over an eps
  grid (the tidy table of :func:`core.studies.sweep.sweep_table`, ``attack == "pgd"``) and,
  with ``settings.strong``, the ``transfer`` and ``worst-case`` rows of
  :func:`core.attacks.worstcase.worst_case_tables`;
- ``targeted``: a PGD sweep of the targeted embedding-space objective, each clip
  pulled towards a clip of another species (DRS and TARS, Heinrich et al. 2023);
- ``prototypes``: for AudioProtoPNet models, how far each prototype's activation
  (max cosine similarity) moves under both attacks, per eps.

:class:`CompareStore` keeps results on disk under a key of the settings, every
model's weight fingerprint and the data's identity, so a result is never shown for other
weights or data; an interrupted comparison resumes from its finished units
(:mod:`core.studies.compare_units`). The
results for the shipped models are shipped in ``assets/compare``; recomputed ones
go to the user cache.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from core.errors import ParameterError, check_int, check_split
from core.io.device import rows_per_pass

__all__ = [
    "estimate_minutes",
    "ZOO", "model_recipe", "CompareSettings", "CompareResult", "run_compare", "model_summary",
    "prototype_stability", "SHIPPED_DIR", "card_robustness",
]

#: The shipped models: name -> (architecture, training recipe). ``OT+FT`` is the matched control of the AT
#: models: the OT model fine-tuned with the same epochs, learning rate and seed, without the adversary.
ZOO = {
    "baseline": ("ConvNeXt baseline", "OT"),
    "baseline_ato": ("ConvNeXt baseline", "AT-O"),
    "baseline_ate": ("ConvNeXt baseline", "AT-E"),
    "protopnet": ("AudioProtoPNet", "OT"),
    "protopnet_ato": ("AudioProtoPNet", "AT-O"),
    "protopnet_ate": ("AudioProtoPNet", "AT-E"),
    "baseline_ft": ("ConvNeXt baseline", "OT+FT"),
    "protopnet_ft": ("AudioProtoPNet", "OT+FT"),
}

SHIPPED_DIR = Path(__file__).resolve().parents[2] / "assets" / "compare"


def model_recipe(name: str, card: dict | None = None) -> tuple[str, str]:
    """(architecture, recipe) of a model: from :data:`ZOO`, else from its model card (``"unknown"`` without one).

    Recipes: ``OT`` (ordinary training), ``OT+FT`` (the AT models' matched control), ``AT-O``, ``AT-E``.
    """
    if name in ZOO:
        return ZOO[name]
    if card is None:
        from core.errors import CoreError
        from core.models.registry import read_model_card

        try:
            card = read_model_card(name)
        except (CoreError, OSError):
            card = {}
    arch = {"protopnet": "AudioProtoPNet", "baseline": "ConvNeXt baseline", "birdnet": "BirdNET V2.4",
            "birdnet-protopnet": "AudioProtoPNet on BirdNET", "birdnet-linear": "linear head on BirdNET"}.get(
        card.get("config", {}).get("arch"), "unknown")
    if arch == "BirdNET V2.4":
        return arch, "pretrained (Cornell Lab)"
    if arch.endswith("on BirdNET"):
        c = card["config"]
        if c.get("tuned_from"):
            base = f"head on BirdNET's {c.get('layer', '?')}, {c['tuned_from']} -> {c.get('layer', '?')} fine-tuned"
            tc = card.get("train_config", {})
            if tc.get("adv") in ("at-o", "at-e"):  # core.training.heads.adversarial_finetune_head
                return arch, f"{base}, then {tc['adv'].upper()} ({tc.get('finetune_epochs')} epochs, eps {tc.get('adv_eps'):g})"
            if tc.get("adv") == "none":
                return arch, f"{base}, then OT+FT ({tc.get('finetune_epochs')} clean epochs)"
            if tc.get("adv") == "noise":
                return arch, f"{base}, then Gaussian noise ({tc.get('finetune_epochs')} epochs, sigma {tc.get('noise_sigma'):g})"
            return arch, base
        return arch, f"head on BirdNET's frozen {c.get('layer', '?')}"
    adv = card.get("train_config", {}).get("adv", "none" if "train_config" in card else None)
    recipe = {"none": "OT", "at-o": "AT-O", "at-e": "AT-E"}.get(adv, "unknown")
    if recipe == "OT" and card.get("init"):
        recipe = "OT+FT"
    return arch, recipe


@dataclass(frozen=True)
class CompareSettings:
    """What :func:`run_compare` measures.

    Attributes
    ----------
    split : {"train", "val", "test"}
    shift_max_clips : int or None
        Windows for the clean and shifted metrics (None: every window of the split).
    max_clips : int >= 2
        Windows for the attacks (evenly spread over the split's species).
    epsilons : tuple of float [full-scale amplitude]
        L-inf budgets of the untargeted output-space PGD sweep.
    target_epsilons : tuple of float [full-scale amplitude]
        L-inf budgets of the targeted embedding-space PGD sweep.
    steps : int >= 1
        PGD steps (step size 2.5 eps / steps, random start).
    strong : bool
        Also run the worst case over attacks (:mod:`core.attacks.worstcase`: transfer, APGD,
        PGD with restarts) for the untargeted sweep. Off by default: for the eight
        zoo models it costs more than 40 min on a 2-core CPU (the PGD part about 12).
    strong_steps, restarts : int
        APGD steps; steps and random restarts of the strong PGD.
    apgd_steps : int >= 0
        Iterations of the worst case's APGD-CE, APGD-DLR and APGD-T legs (Croce & Hein 2020; issue 24); 0 leaves them
        out. A stored result made before they existed reads as 0.
    seed : int
        Attack random starts, noise draws, mixup partners and attack targets.
    snr_db, gain_db, lam : float
        Shift settings (:func:`core.studies.shift.shift_clips`): site-noise SNR [dB], gain [dB], mixup weight.
    """

    split: str = "test"
    shift_max_clips: int | None = None
    max_clips: int = 48
    epsilons: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)
    target_epsilons: tuple[float, ...] = (1e-4, 1e-3)
    steps: int = 10
    strong: bool = False
    strong_steps: int = 20
    restarts: int = 2
    apgd_steps: int = 50
    seed: int = 0
    # shift settings of core.studies.shift.shift_clips
    snr_db: float = 10.0  # site-noise SNR [dB]
    gain_db: float = -20.0  # [dB]
    lam: float = 0.6  # mixup weight of the clip itself

    def __post_init__(self) -> None:
        check_split(self.split)
        check_int("max_clips", self.max_clips, 2)
        if self.shift_max_clips is not None and (not isinstance(self.shift_max_clips, int) or self.shift_max_clips < 2):
            raise ParameterError(f"shift_max_clips must be None or an integer >= 2, got {self.shift_max_clips!r}")
        for name in ("epsilons", "target_epsilons"):
            grid = getattr(self, name)
            if not grid or not all(isinstance(e, (int, float)) and 0 < e <= 1 for e in grid):
                raise ParameterError(f"{name} must be a non-empty list of eps in (0, 1], got {grid!r}")
            object.__setattr__(self, name, tuple(sorted(float(e) for e in grid)))
        for name in ("steps", "strong_steps"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
                raise ParameterError(f"{name} must be an integer in [1, 1000], got {v!r}")
        if isinstance(self.apgd_steps, bool) or not isinstance(self.apgd_steps, int) or not 0 <= self.apgd_steps <= 1000:
            raise ParameterError(f"apgd_steps must be an integer in [0, 1000], got {self.apgd_steps!r}")
        if isinstance(self.restarts, bool) or not isinstance(self.restarts, int) or not 1 <= self.restarts <= 100:
            raise ParameterError(f"restarts must be an integer in [1, 100], got {self.restarts!r}")
        if not 0 <= self.lam <= 1:
            raise ParameterError(f"lam must be in [0, 1], got {self.lam}")

    def to_dict(self) -> dict:
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if not d["apgd_steps"]:
            del d["apgd_steps"]  # a worst case without the APGD legs keeps the key it was stored under before they existed
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "CompareSettings":
        known = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in cls.__dataclass_fields__}
        known.setdefault("apgd_steps", 0)  # stored before the worst case had AutoAttack's APGD legs
        return cls(**known)


@dataclass
class CompareResult:
    """Per-clip tables of :func:`run_compare` (see the module docstring).

    Attributes
    ----------
    settings : CompareSettings
    fingerprints : dict of name -> str
        Weight fingerprint of every model (:func:`core.studies.embeddings.model_fingerprint`).
    shift, robustness, targeted, prototypes : pandas.DataFrame
    seconds : float
        Compute time [s].
    info : dict
        Free-form provenance (command, device, dataset root).
    """

    settings: CompareSettings
    fingerprints: dict
    shift: pd.DataFrame
    robustness: pd.DataFrame
    targeted: pd.DataFrame
    prototypes: pd.DataFrame
    seconds: float = 0.0
    info: dict = field(default_factory=dict)
    claims: pd.DataFrame | None = None

    TABLES = ("shift", "robustness", "targeted", "prototypes")

    @property
    def models(self) -> list[str]:
        return list(self.fingerprints)

    def subset(self, names) -> "CompareResult":
        """The same result restricted to some of its models (the paper check is kept only if every zoo model stays).

        Raises
        ------
        ParameterError
            A name that is not in the result.
        """
        names = list(names)
        missing = [n for n in names if n not in self.fingerprints]
        if missing:
            raise ParameterError(f"models not in this result: {missing}")
        if names == self.models:
            return self
        tables = {t: getattr(self, t) for t in self.TABLES}
        tables = {t: df[df["model"].isin(names)].reset_index(drop=True) if "model" in df.columns else df for t, df in tables.items()}
        # the paper check concerns only the zoo: it stays valid for any subset that keeps every zoo model it had
        zoo_kept = all(n in names for n in self.models if n in ZOO)
        return CompareResult(settings=self.settings, fingerprints={n: self.fingerprints[n] for n in names},
                             seconds=self.seconds, info=self.info, claims=self.claims if zoo_kept else None, **tables)


def _progress(progress, stage: str, done: int, total: int) -> None:
    if progress:
        progress(stage, done, total)


def _batches(n: int, size: int) -> list[np.ndarray]:
    return [np.arange(i, min(n, i + size)) for i in range(0, n, size)]


def _activations(model, waveforms: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.forward_all(waveforms).prototype_activations


def _attack_tables(name, model, clips, attack_for, grid, *, clips_per_batch, progress, stage, cancel, counter,
                   units=None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One model, one objective: the sweep table and, for AudioProtoPNet, per-prototype activation changes (per batch a unit)."""
    from core.attacks.sweep import run_sweep
    from core.studies.compare_units import UnitStore, unit_name
    from core.studies.sweep import sweep_table

    device = next(model.parameters()).device
    is_proto = getattr(model, "prototype_vectors", None) is not None
    parts = []
    clean_sum = change_sum = None
    units = units or UnitStore(None, {})
    for b, idx in enumerate(_batches(len(clips), clips_per_batch)):
        unit = unit_name(stage, name, f"{b:04d}")
        part, sums = units.table(unit), units.arrays(unit) if is_proto else {}
        if part is None or sums is None:  # not finished in an earlier, interrupted run
            if cancel is not None and cancel():
                raise InterruptedError("comparison cancelled")
            x = torch.as_tensor(clips.waveforms[idx], device=device)
            y = torch.as_tensor(clips.labels[idx], device=device)
            m = torch.as_tensor(clips.masks[idx], device=device)
            attack = attack_for(idx)
            res = run_sweep(attack, model, x, y, epsilons=grid, masks=m, max_rows=rows_per_pass(model, x.shape[1]), keep_waveforms=is_proto)
            part = sweep_table(res, model=name, attack=attack, clip_ids=[clips.clip_ids[i] for i in idx],
                               class_names=model.config.class_names, labels=clips.labels[idx])
            if is_proto:
                clean = _activations(model, x).double().cpu()  # (b, P)
                adv = torch.stack([_activations(model, torch.as_tensor(a, device=device)).double().cpu() for a in res.adversarial])  # (n_eps, b, P)
                sums = {"clean": clean.sum(0).numpy(), "change": (adv - clean[None]).abs().sum(1).numpy()}
                units.put_arrays(unit, **sums)
            units.put_table(unit, part)  # the table last: a unit counts as finished once its table is there
        parts.append(part)
        if is_proto:
            clean_sum = torch.as_tensor(sums["clean"]) if clean_sum is None else clean_sum + torch.as_tensor(sums["clean"])
            change_sum = torch.as_tensor(sums["change"]) if change_sum is None else change_sum + torch.as_tensor(sums["change"])
        counter[0] += len(idx)
        _progress(progress, stage, counter[0], counter[1])
    table = pd.concat(parts, ignore_index=True)
    protos = None
    if is_proto:
        n, k = len(clips), model.config.prototypes_per_class
        classes = list(model.config.class_names)
        rows = []
        for e, eps in enumerate(grid):
            for p in range(clean_sum.numel()):
                rows.append({"model": name, "objective": parts[0]["objective"].iloc[0], "eps": float(eps), "prototype": p,
                             "class": classes[p // k], "clean_activation": float(clean_sum[p] / n),
                             "mean_abs_change": float(change_sum[e, p] / n)})
        protos = pd.DataFrame(rows)
    return table, protos


def run_compare(
    models: dict,
    dataset,
    settings: CompareSettings | None = None,
    *,
    clips_per_batch: int = 4,
    progress: Callable[[str, int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    units_dir: str | os.PathLike | None = None,
) -> CompareResult:
    """Evaluate every model on the same clips: clean, shifted, attacked (see the module docstring).

    Parameters
    ----------
    models : dict of name -> BirdClassifier
        Same classes. Models that share a sample rate and window length are
        measured on the very same clips; others (BirdNET: 3 s at 48 kHz) on the same
        recordings of the split cut into their own windows.
    dataset : core.io.data.Dataset
    settings : CompareSettings, optional
    clips_per_batch : int >= 1
        Clips attacked together (memory vs. speed).
    progress : callable, optional
        ``progress(stage, done, total)``; stages ``clips``, ``shift``, ``robustness``, ``targeted``,
        ``transfer`` and ``strong`` (the worst case, with ``settings.strong``).
    cancel : callable, optional
        Polled between batches; when it returns True, :class:`InterruptedError` is raised.
    units_dir : path, optional
        Keep every finished unit there and resume from it (:mod:`core.studies.compare_units`; the CLI uses
        :meth:`core.studies.compare_store.CompareStore.units_dir`); None: nothing kept.

    Returns
    -------
    CompareResult
        ``info["data"]`` is the data's identity (:func:`core.io.journal.dataset_identity`).

    Raises
    ------
    ParameterError
        No models, models that disagree on classes, a split with fewer
        than two species, ``units_dir`` holding another comparison's units.
    InterruptedError
        Cancelled.
    """
    from core.attacks import PGD, EmbeddingTargeted, OutputUntargeted
    from core.io.clips import dataset_clips
    from core.studies.embeddings import model_fingerprint
    from core.studies.shift import partner_indices, shift_scores, split_noise_bank

    settings = settings or CompareSettings()
    if not models:
        raise ParameterError("no models to compare")
    first = next(iter(models.values())).config
    groups: dict[tuple[int, int], dict] = {}
    for name, m in models.items():
        c = m.config
        if list(c.class_names) != list(first.class_names):
            raise ParameterError(f"model {name!r} differs from the others in its classes")
        groups.setdefault((c.frontend.sample_rate, c.window_samples), {})[name] = m
    check_int("clips_per_batch", clips_per_batch, 1)
    from core.io.journal import dataset_identity
    from core.studies.compare_units import UnitStore, unit_name

    data = dataset_identity(dataset)
    fingerprints = {name: model_fingerprint(m) for name, m in models.items()}
    units = UnitStore(units_dir, {"settings": settings.to_dict(), "fingerprints": fingerprints, "data": data,
                                  "clips_per_batch": clips_per_batch})
    t0 = time.time()
    # Models that share a sample rate and window see the very same clips; a model with other windows (BirdNET:
    # 3 s at 48 kHz) gets the same recordings of the split cut into its own windows, and its own noise bank.
    sets = {}
    _progress(progress, "clips", 0, len(groups))
    for gi, (sr, window) in enumerate(groups):
        kw = dict(split=settings.split, class_names=first.class_names, sample_rate=sr, window_samples=window)
        sets[(sr, window)] = (dataset_clips(dataset, max_clips=settings.shift_max_clips, **kw),
                              dataset_clips(dataset, max_clips=settings.max_clips, **kw),
                              split_noise_bank(dataset, settings.split, sr, window))  # site noise: never a clip's own recording
        _progress(progress, "clips", gi + 1, len(groups))
    n_attack = sum(len(g) * len(sets[k][1]) for k, g in groups.items())
    shift_parts, rob, tgt, protos = [], [], [], []
    counter_r, counter_t, counter_s = [0, n_attack], [0, n_attack], [0, sum(len(sets[k][0]) for k in groups)]
    for key, group in groups.items():
        shift_set, attack_set, bank = sets[key]
        base, unit = counter_s[0], unit_name("shift", *key)
        part = units.table(unit)
        if part is None:
            part = shift_scores(group, shift_set, bank=bank, snr_db=settings.snr_db, gain_db=settings.gain_db, lam=settings.lam,
                                seed=settings.seed, progress=lambda d, t, b=base: _progress(progress, "shift", b + d, counter_s[1]))
            units.put_table(unit, part)
        shift_parts.append(part)
        counter_s[0] += len(shift_set)
        targets = partner_indices(attack_set.species, np.random.default_rng(settings.seed))
        group_rob = []
        for name, model in group.items():
            def untargeted(idx):
                return PGD(eps=0.0, steps=settings.steps, seed=settings.seed, objective=OutputUntargeted())

            def targeted(idx, attack_set=attack_set, targets=targets):
                tw = torch.as_tensor(attack_set.waveforms[targets[idx]])
                return PGD(eps=0.0, steps=settings.steps, seed=settings.seed, objective=EmbeddingTargeted(tw))

            common = dict(clips_per_batch=clips_per_batch, progress=progress, cancel=cancel, units=units)
            t, p = _attack_tables(name, model, attack_set, untargeted, settings.epsilons, stage="robustness", counter=counter_r, **common)
            group_rob.append(t)
            protos += [p] if p is not None else []
            t, p = _attack_tables(name, model, attack_set, targeted, settings.target_epsilons, stage="targeted", counter=counter_t, **common)
            t["target_clip"] = [attack_set.clip_ids[targets[attack_set.clip_ids.index(c)]] for c in t["clip"]]
            tgt.append(t)
            protos += [p] if p is not None else []
        rob += group_rob
        if settings.strong:
            from core.attacks.worstcase import worst_case_tables

            unit = unit_name("strong", *key)  # the group's worst case; inside it, each model's rows are units of their own
            part = units.table(unit)
            if part is None:
                part = worst_case_tables(group, attack_set, pd.concat(group_rob, ignore_index=True), settings.epsilons,
                                         steps=settings.steps, strong_steps=settings.strong_steps, restarts=settings.restarts,
                                         apgd_steps=settings.apgd_steps, seed=settings.seed, clips_per_batch=clips_per_batch, progress=progress, cancel=cancel,
                                         units=units, unit_key=key)  # resumes model by model
                units.put_table(unit, part)
            rob.append(part)
    shift = pd.concat(shift_parts, ignore_index=True)
    first_sets = next(iter(sets.values()))
    targeted_table = pd.concat(tgt, ignore_index=True)
    return CompareResult(
        settings=settings,
        fingerprints=fingerprints,
        shift=shift,
        robustness=pd.concat(rob, ignore_index=True),
        targeted=targeted_table,
        prototypes=pd.concat(protos, ignore_index=True) if protos else pd.DataFrame(
            columns=["model", "objective", "eps", "prototype", "class", "clean_activation", "mean_abs_change"]),
        seconds=time.time() - t0,
        info={"dataset": str(dataset.root), "data": data, "n_shift_clips": len(first_sets[0]), "n_attack_clips": len(first_sets[1]),
              "windows": {f"{sr} Hz, {win / sr:g} s": {"models": list(g), "n_shift_clips": len(sets[(sr, win)][0]),
                                                        "n_attack_clips": len(sets[(sr, win)][1])} for (sr, win), g in groups.items()},
              "device": str(next(iter(models.values())).parameters().__next__().device)},
    )


def _work_units(settings: CompareSettings, n_models: int) -> float:
    """Attack steps a comparison runs, the unit its time scales with (clips x budgets x steps x models)."""
    return n_models * settings.max_clips * (len(settings.epsilons) + len(settings.target_epsilons)) * settings.steps


#: Seconds per attack step and clip on this project's 2-core CPU when no stored result says better (the
#: PGD-only comparison of the eight small models: 1,008 s for 8 models x 48 clips x 7 budgets x 10 steps).
SECONDS_PER_UNIT = 0.0375


def estimate_minutes(settings: CompareSettings, n_models: int, results=()) -> tuple[float, str]:
    """Expected compute time of a comparison, scaled from the stored result most like it.

    Parameters
    ----------
    settings : CompareSettings
    n_models : int
    results : iterable of CompareResult
        Stored results (e.g. ``CompareStore().results()``); the first with the same
        ``strong`` flag, split and device sets the rate, else :data:`SECONDS_PER_UNIT`
        (PGD-only; a worst case takes several times more, depending on how many
        windows survive the first attacks).

    Returns
    -------
    (float, str)
        Minutes, and where the rate comes from.
    """
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for r in results:
        if r.settings.strong == settings.strong and r.seconds > 0 and str(r.info.get("device", "cpu")).startswith(device):
            rate = r.seconds / max(_work_units(r.settings, len(r.models)), 1)
            return rate * _work_units(settings, n_models) / 60, f"scaled from a stored run of {r.seconds / 60:.0f} min on {device}"
    return SECONDS_PER_UNIT * _work_units(settings, n_models) / 60 * (4 if settings.strong else 1), \
        "rough: no stored run of this kind to scale from"


# -- summaries ----------------------------------------------------------------------------------


def prototype_stability(result: CompareResult) -> pd.DataFrame:
    """Mean over prototypes of the mean absolute activation change, per model, objective and eps.

    Returns
    -------
    pandas.DataFrame
        ``model, objective, eps, mean_abs_change, relative_change`` (change divided by
        the mean clean activation).
    """
    p = result.prototypes
    if p.empty:
        return pd.DataFrame(columns=["model", "objective", "eps", "mean_abs_change", "relative_change"])
    g = p.groupby(["model", "objective", "eps"], sort=False)
    out = g[["mean_abs_change", "clean_activation"]].mean().reset_index()
    out["relative_change"] = out["mean_abs_change"] / out["clean_activation"]
    return out.drop(columns="clean_activation")


def model_summary(result: CompareResult) -> pd.DataFrame:
    """One row per model: architecture, recipe, clean and shifted cmAP, attacked cmAP and
    success at every eps, targeted TARS at every target eps, prototype stability.

    Parameters
    ----------
    result : CompareResult

    Returns
    -------
    pandas.DataFrame
        Columns ``model, architecture, recipe``, ``cmAP <condition>``, ``cmAP PGD eps <e>``,
        ``success PGD eps <e>``, with the worst case also ``success worst eps <e>`` and ``success transfer
        eps <e>`` (no cmAP: the worst case takes, per window, the first attack that changes the top-1 species,
        whose scores can leave cmAP higher than PGD's BCE attack does), then ``TARS targeted eps <e>``, ``success targeted eps <e>`` and
        ``prototype change PGD eps <e>`` (relative activation change; NaN without prototypes).
    """
    from core.studies.shift import summarize_shift
    from core.studies.sweep import summarize

    shift = summarize_shift(result.shift)
    rob = summarize(result.robustness)
    tgt = summarize(result.targeted)
    stab = prototype_stability(result)
    grid = sorted(set(result.settings.epsilons) | set(result.settings.target_epsilons))
    short = {e: f"{e:.0e}" for e in grid}
    if len(set(short.values())) < len(grid):  # e.g. 1.5e-4 and 2e-4: one digit would merge their columns
        short = {e: f"{e:.3g}" for e in grid}

    def label(eps):
        return short[min(grid, key=lambda e: abs(e - eps))]  # table eps went through float32

    rows = []
    for name in result.models:
        arch, recipe = model_recipe(name)
        row = {"model": name, "architecture": arch, "recipe": recipe}
        for _, r in shift[shift["model"] == name].iterrows():
            row[f"cmAP {r['condition']}"] = r["cmap"]
        for attack, word in (("pgd", "PGD"), ("worst-case", "worst"), ("transfer", "transfer")):
            for _, r in rob[(rob["model"] == name) & (rob["budget_kind"] != "clean") & (rob["attack"] == attack)].iterrows():
                if attack == "pgd":  # the worst case picks per window the first attack that flips top-1: not a cmAP attack
                    row[f"cmAP {word} eps {label(r['eps'])}"] = r["cmap"]
                row[f"success {word} eps {label(r['eps'])}"] = r["success_rate"]
        for _, r in tgt[(tgt["model"] == name) & (tgt["budget_kind"] != "clean")].iterrows():
            row[f"TARS targeted eps {label(r['eps'])}"] = r["tars"]
            row[f"success targeted eps {label(r['eps'])}"] = r["success_rate"]
        s = stab[(stab["model"] == name) & (stab["objective"] == "output-untargeted")]
        for _, r in s.iterrows():
            row[f"prototype change PGD eps {label(r['eps'])}"] = r["relative_change"]
        rows.append(row)
    return pd.DataFrame(rows)


def card_robustness(result: CompareResult, name: str) -> dict:
    """Model-card field: clean cmAP and, at the smallest and largest eps >= 1e-4, cmAP under PGD and attack
    success and median SNR under the worst case over attacks when the comparison has it, else under PGD."""
    from core.attacks.worstcase import worst_case_label
    from core.studies.sweep import summarize

    table = result.robustness[result.robustness["model"] == name]
    s = result.settings
    worst = "attack" in table and (table["attack"] == "worst-case").any()
    pgd = summarize(table[table["attack"] == "pgd"] if "attack" in table else table)
    rob = summarize(table[table["attack"] == "worst-case"]) if worst else pgd
    attacked = rob[rob["budget_kind"] != "clean"].sort_values("budget")
    big = attacked[attacked["budget"] >= 1e-4]
    pick = big.iloc[[0, -1]] if len(big) >= 2 else attacked.iloc[[0, -1]]
    clean = pgd[pgd["budget_kind"] == "clean"].iloc[0]
    pgd_cmap = pgd[pgd["budget_kind"] != "clean"].set_index("budget")["cmap"]
    words = (worst_case_label(s.steps, s.strong_steps, s.restarts, (table["source"].fillna("") != "").any(), apgd_steps=s.apgd_steps)
             if worst else f"PGD-{s.steps}")
    return {
        "attack": f"success: {words}, L-inf, output-space untargeted (random start, seed {s.seed}), top-1 changed; "
                  f"cmAP: under PGD-{s.steps} (BCE against the labels)",
        "split": s.split, "n_clips": int(clean["n_clips"]), "clean_cmap": float(clean["cmap"]),
        "by_eps": [{"eps": float(r["budget"]), "cmap": float(pgd_cmap.loc[r["budget"]]), "success_rate": float(r["success_rate"]),
                    "median_snr_db": float(r["snr_db"])} for _, r in pick.iterrows()],
        "source": "python -m core compare --strong --update-cards",
    }


# -- disk store ---------------------------------------------------------------------------------


