"""Dataset sweeps as independent, resumable shards, run on Ray (a local instance or a cluster).

A sweep (the ``python -m core sweep`` options, as a :class:`SweepOptions`) is
cut into shards of whole batches of clips: shard ``s`` of a group of models that
share a sample rate and window holds batches ``s, s + n, ...`` of that group's
clips, so every batch is exactly the batch the single-process run attacks (same
clips, same random start), and the merged table equals the single-process one.
Each shard is an ordinary resumable sweep (:func:`core.studies.sweep.sweep_windows`)
writing its own table under ``<out>.shards/``; a shard that finished is skipped
when the sweep is run again, one that was interrupted resumes after its last
finished batch. Scheduling, retries and placement are Ray's (Moritz et al. 2018,
"Ray: A distributed framework for emerging AI applications", OSDI); nothing here
schedules.

The driver decodes the clips once and hands each shard its own through Ray's
object store (no worker decodes audio). On a cluster every worker needs this
repository's code (sent by Ray as the job's ``working_dir``) and the checkpoints
at the same paths (a shared file system); the dataset only where the driver runs
(and for an embedding-targeted sweep's target clip).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from core.errors import CoreError, ParameterError, check_int
from core.io.fileio import atomic_write_text

__all__ = ["SweepOptions", "sweep_groups", "run_shard", "shard_batches", "sweep_single_process", "sweep_sharded", "canonical_order"]

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SweepOptions:
    """Everything that defines a dataset sweep (the options of ``python -m core sweep``).

    Attributes
    ----------
    models : tuple of str
        Checkpoint names or paths.
    epsilons, snr_db : tuple of float or None
        Exactly one grid: eps [full-scale amplitude] or target SNR [dB].
    attack, norm, objective, steps, seed, target_species, mode, target_clip, prototype, k
        As :func:`core.studies.sweep.attack_from_options`.
    split, species, max_clips, data_dir
        The clips (:func:`core.studies.sweep.dataset_clips`).
    split_scheme : str or None
        How the dataset's splits are drawn (:class:`core.io.data.Dataset`); None: :data:`core.io.split.DEFAULT_SPLIT_SCHEME`.
        Models trained on another split scheme are refused (:func:`core.models.registry.check_split_scheme`).
    batch_clips : int or None
        Clips per batch; also the unit of sharding. None only while the CLI has not
        yet sized it to the device (:func:`core.io.device.clips_per_batch`).
    through : tuple of str
        Transformations every clip is also scored after (:func:`core.attacks.threats.threat_choices`).
    masking : bool
    data : dict or None
        The data's identity (:func:`core.io.journal.dataset_identity`), part of every table's key; filled in by
        :func:`sweep_single_process` and :func:`sweep_sharded` (the driver, which has the data).
    """

    models: tuple[str, ...]
    epsilons: tuple[float, ...] | None = None
    snr_db: tuple[float, ...] | None = None
    attack: str = "pgd"
    norm: str = "linf"
    objective: str = "output-untargeted"
    steps: int = 10
    seed: int = 0
    target_species: str | None = None
    mode: str = "add"
    target_clip: str | None = None
    prototype: str | None = None
    k: int = 3
    split: str = "test"
    species: str | None = None
    max_clips: int | None = None
    data_dir: str | None = None
    split_scheme: str | None = None
    batch_clips: int | None = 4
    through: tuple[str, ...] = field(default_factory=tuple)
    masking: bool = False
    data: dict | None = None

    def __post_init__(self) -> None:
        if not self.models:
            raise ParameterError("a sweep needs at least one model")
        if (self.epsilons is None) == (self.snr_db is None):
            raise ParameterError("give exactly one of epsilons (full-scale amplitude) and snr_db (dB)")
        if self.batch_clips is not None and (isinstance(self.batch_clips, bool) or not isinstance(self.batch_clips, int)
                                             or self.batch_clips < 1):
            raise ParameterError(f"batch_clips must be an integer >= 1, got {self.batch_clips!r}")

    def settings(self) -> dict:
        """The settings recorded beside every table (the same for the whole sweep and each shard)."""
        return {"split": self.split, "species": self.species, "max_clips": self.max_clips, "target_clip": self.target_clip,
                "data": self.data}

    def with_data(self) -> "SweepOptions":
        """These options with the identity of their data directory filled in (unchanged if there is none to find)."""
        if self.data is not None:
            return self
        from core.io.data import Dataset, find_data_dir
        from core.io.journal import dataset_identity

        root = find_data_dir(self.data_dir)
        if root is None:
            return self
        return replace(self, data=dataset_identity(root if self.split_scheme is None else Dataset(root, self.split_scheme)))


def _transforms(names) -> dict:
    if not names:
        return {}
    from core.attacks.threats import threat_choices

    choices = threat_choices()
    unknown = [t for t in names if t not in choices]
    if unknown:
        raise ParameterError(f"unknown transformation(s) {unknown}; choose from {', '.join(choices)}")
    return {t: choices[t][1] for t in names}


def sweep_groups(opts: SweepOptions, *, models: dict | None = None, clips: bool = True, progress=None) -> list[dict]:
    """The sweep's groups: models that share a sample rate and window, their clips and their attack factory.

    Parameters
    ----------
    opts : SweepOptions
    models : dict of name -> BirdClassifier, optional
        Already loaded models (default: load ``opts.models``).
    clips : bool
        Decode the groups' clips (False: ``clips`` is None; a shard gets its clips from the driver).

    Returns
    -------
    list of dict
        ``key`` ("<rate>Hz-<samples>"), ``models`` (name -> model), ``clips``
        (:class:`core.studies.sweep.ClipSet` or None), ``make`` (model -> Attack), in model order.

    Raises
    ------
    ParameterError
        Models with different species lists, an unknown target clip, bad options.
    """
    from core.attacks.sweep import attack_from_options
    from core.io.clips import dataset_clips
    from core.io.data import open_dataset
    from core.io.split import DEFAULT_SPLIT_SCHEME
    from core.models.registry import check_split_scheme, load_checkpoint

    models = models if models is not None else {n: load_checkpoint(n) for n in opts.models}
    first = next(iter(models.values()))
    if any(list(m.config.class_names) != list(first.config.class_names) for m in models.values()):
        raise ParameterError("all models must share the species list")
    dataset = open_dataset(opts.data_dir, opts.split_scheme or DEFAULT_SPLIT_SCHEME) if (clips or opts.target_clip) else None
    for name, m in models.items() if dataset is not None else ():  # a shard without a target needs no data
        check_split_scheme(m, dataset, name)
    if opts.target_clip and opts.target_clip not in dataset.by_id:
        raise ParameterError(f"target clip: no recording {opts.target_clip!r} in the manifest")
    by_key: dict[tuple[int, int], dict] = {}
    for name, m in models.items():
        by_key.setdefault((m.config.frontend.sample_rate, m.config.window_samples), {})[name] = m
    groups = []
    for (sr, win), group in by_key.items():
        clip_set = (dataset_clips(dataset, split=opts.split, class_names=first.config.class_names, sample_rate=sr,
                                  window_samples=win, species=opts.species, max_clips=opts.max_clips, progress=progress)
                    if clips else None)
        target = None
        if opts.target_clip:
            target = dataset.load(dataset.by_id[opts.target_clip], sr)[:win]
            target = np.pad(target, (0, win - len(target)))

        def make(model, target=target):
            return attack_from_options(model, attack=opts.attack, norm=opts.norm, objective=opts.objective, steps=opts.steps,
                                       seed=opts.seed, species=opts.target_species, mode=opts.mode, target_waveform=target,
                                       prototype=opts.prototype, k=opts.k)

        groups.append({"key": f"{sr}Hz-{win}", "models": group, "clips": clip_set, "make": make})
    return groups


def _grid(opts: SweepOptions) -> dict:
    return {"epsilons": list(opts.epsilons)} if opts.epsilons is not None else {"snr_db": list(opts.snr_db)}


def canonical_order(table: pd.DataFrame, models, clip_ids) -> pd.DataFrame:
    """Rows ordered by model (as given), then clip (as given), keeping the order within each (model, clip).

    The single-process and the sharded sweep write their rows in different orders;
    both are put in this one.
    """
    model_rank = {m: i for i, m in enumerate(models)}
    clip_rank = {c: i for i, c in enumerate(clip_ids)}
    order = np.lexsort((np.arange(len(table)), table["clip"].map(clip_rank).to_numpy(), table["model"].map(model_rank).to_numpy()))
    return table.iloc[order].reset_index(drop=True)


def sweep_single_process(opts: SweepOptions, out: str | os.PathLike | None = None, *, models: dict | None = None,
                         progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The whole sweep in this process (resumable through ``out``), rows in :func:`canonical_order`.

    Returns
    -------
    pandas.DataFrame
        As :func:`core.studies.sweep.sweep_windows`.
    """
    from core.studies.sweep import sweep_windows

    opts = opts.with_data()
    tables, clip_order = [], []
    transforms = _transforms(opts.through)
    for g in sweep_groups(opts, models=models):
        c = g["clips"]
        tables.append(sweep_windows(g["models"], g["make"], c.waveforms, c.clip_ids, c.labels, masks=c.masks, out=out,
                                    settings=opts.settings(), clips_per_batch=opts.batch_clips, progress=progress,
                                    transforms=transforms, masking=opts.masking, **_grid(opts)))
        clip_order += [cid for cid in c.clip_ids if cid not in clip_order]
    table = tables[-1]  # with one `out` file every group appends to the same table
    if out is None and len(tables) > 1:
        table = pd.concat(tables, ignore_index=True)
    return canonical_order(table, list(opts.models), clip_order)


def shard_batches(n_clips: int, batch_clips: int, n_shards: int) -> list[list[int]]:
    """Clip indices of each shard: whole batches of ``batch_clips``, batch ``b`` in shard ``b mod n_shards``.

    Returns
    -------
    list of list of int
        ``n_shards`` lists (some empty when there are fewer batches than shards).

    Raises
    ------
    ParameterError
        ``n_shards`` or ``batch_clips`` < 1.
    """
    if isinstance(n_shards, bool) or not isinstance(n_shards, int) or n_shards < 1 or batch_clips < 1:
        raise ParameterError(f"n_shards and batch_clips must be integers >= 1, got {n_shards!r}, {batch_clips!r}")
    batches = [list(range(i, min(i + batch_clips, n_clips))) for i in range(0, n_clips, batch_clips)]
    return [[i for b in batches[s::n_shards] for i in b] for s in range(n_shards)]


def _shard_path(out: Path, key: str, shard: int) -> Path:
    return out.with_name(out.name + ".shards") / f"{key}-shard{shard:04d}.parquet"


def run_shard(options: dict, group_key: str, clips: dict, out: str, threads: int = 1) -> dict:
    """One shard: the sweep's models of one group on the given clips, written (resumably) to ``out``.

    Runs in a Ray worker (or anywhere): it loads its models itself; its clips come
    from the driver (through Ray's object store), so no worker decodes audio.

    Parameters
    ----------
    options : dict
        :class:`SweepOptions` as a dict.
    group_key : str
        Which group (:func:`sweep_groups`).
    clips : dict
        ``waveforms`` (n, n_samples) float32, ``clip_ids``, ``labels`` (n, n_classes), ``masks`` (n, n_samples).
    out : str
        The shard's table (``.parquet``).
    threads : int
        torch threads in this worker.

    Returns
    -------
    dict
        ``out``, ``rows``, ``clips``, ``seconds``.
    """
    import time

    import torch

    from core.studies.sweep import sweep_windows

    torch.set_num_threads(max(1, int(threads)))
    t0 = time.time()
    opts = SweepOptions(**{**options, "models": tuple(options["models"]), "through": tuple(options.get("through") or ())})
    group = next(g for g in sweep_groups(opts, clips=False) if g["key"] == group_key)
    table = sweep_windows(group["models"], group["make"], clips["waveforms"], list(clips["clip_ids"]), clips["labels"],
                          masks=clips["masks"], out=out, settings=opts.settings(), clips_per_batch=opts.batch_clips,
                          transforms=_transforms(opts.through), masking=opts.masking, **_grid(opts))
    return {"out": out, "rows": int(len(table)), "clips": len(clips["clip_ids"]), "seconds": time.time() - t0}


def sweep_sharded(opts: SweepOptions, out: str | os.PathLike, *, n_shards: int, address: str | None = None,
                  num_cpus: int | None = None, progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """The sweep as ``n_shards`` shards per group on Ray; merged into ``out`` in :func:`canonical_order`.

    Parameters
    ----------
    opts : SweepOptions
    out : path
        The merged table (``.csv`` or ``.parquet``); shard tables go to ``<out>.shards/``.
    n_shards : int >= 1
        Shards per group (a few per worker balance the load).
    address : str, optional
        A Ray cluster ("auto", "ray://host:10001"); default: start a local Ray
        instance for this call (``num_cpus`` workers) and stop it afterwards.
        An already initialised Ray is used as it is.
    num_cpus : int, optional
        CPUs of the local instance (default: all).
    progress : callable, optional
        ``progress(done_shards, total_shards)``.

    Returns
    -------
    pandas.DataFrame
        The same table as :func:`sweep_single_process` with the same options.

    Raises
    ------
    ParameterError
        Bad options or output name, or a shard table from a sweep with other settings.
    """
    import ray

    from core.studies.sweep import write_table

    out = Path(out)
    if out.suffix not in (".csv", ".parquet"):
        raise ParameterError(f"sweep table must end in .csv or .parquet, got {out.name!r}")
    check_int("--shards", n_shards, 1)
    opts = opts.with_data()
    groups = sweep_groups(opts)  # validates the options and fixes each group's clips before any worker starts
    started = False
    if not ray.is_initialized():
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                            "OMP_NUM_THREADS": "1"}}
        if address:
            env = {"working_dir": str(REPO_ROOT), "excludes": [".git", ".cache", "data", "results", "checkpoints/published"]}
        ray.init(address=address, num_cpus=None if address else num_cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env=env, ignore_reinit_error=True)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=2)(run_shard)
        options = {**asdict(opts), "models": list(opts.models), "through": list(opts.through)}
        jobs, shard_files = [], []
        for g in groups:
            for s, idx in enumerate(shard_batches(len(g["clips"]), opts.batch_clips, n_shards)):
                if idx:
                    path = _shard_path(out, g["key"], s)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shard_files.append(path)
                    c = g["clips"]
                    part = ray.put({"waveforms": c.waveforms[idx], "clip_ids": [c.clip_ids[i] for i in idx],
                                    "labels": c.labels[idx], "masks": c.masks[idx]})
                    jobs.append(remote.remote(options, g["key"], part, str(path)))
        done, pending = 0, list(jobs)
        while pending:
            finished, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(finished)  # a shard's error surfaces here (after Ray's retries)
            except ray.exceptions.RayTaskError as e:
                if isinstance(e.cause, CoreError):  # bad input in a shard: the same clear error as a single-process run
                    raise e.cause from None
                raise
            done += 1
            if progress:
                progress(done, len(jobs))
    finally:
        if started:
            ray.shutdown()
    from core.studies.sweep import read_table

    table = pd.concat([read_table(p) for p in shard_files], ignore_index=True)
    clip_order = [cid for g in groups for cid in g["clips"].clip_ids]
    table = canonical_order(table, list(opts.models), list(dict.fromkeys(clip_order)))
    write_table(table, out)
    meta = {**opts.settings(), "options": {**asdict(opts), "models": list(opts.models), "through": list(opts.through)},
            "shards": n_shards, "shard_tables": [str(p) for p in shard_files]}
    atomic_write_text(out.with_suffix(out.suffix + ".json"), json.dumps(meta, indent=1, default=str))
    return table
