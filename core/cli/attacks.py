"""Subcommands that attack a dataset split: sweep (eps grids, sharded on Ray), threats (MP3, playback, EOT), masking-attack."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from core.cli.args import (
    HELD_OUT,
    SPLITS,
    Subcommand,
    add_eps_grid,
    add_int,
    add_max_clips,
    add_models,
    add_out,
    add_seed,
    add_split,
    add_steps,
    check_models_split,
    floats,
    names,
    open_args_dataset,
    out_path,
    through,
)
from core.cli.common import count_batches, load_models, progress_bar
from core.errors import ParameterError

OBJECTIVES = ["output-untargeted", "output-margin", "output-targeted", "embedding-untargeted", "embedding-targeted",
              "prototype-suppress", "prototype-activate", "prototype-shift"]


def sweep_args(p) -> None:
    add_models(p, "baseline,protopnet", "comma-separated checkpoint names")
    p.add_argument("--attack", default="pgd", choices=["fgsm", "bim", "pgd"])
    p.add_argument("--norm", default="linf", choices=["linf", "l2"])
    p.add_argument("--objective", default="output-untargeted", choices=OBJECTIVES)
    add_eps_grid(p)
    add_eps_grid(p, "--snr", help="comma-separated grid of target SNR in dB instead of eps, e.g. 60,50,40,30")
    add_steps(p)
    add_seed(p)
    add_split(p, SPLITS)
    p.add_argument("--species", help="only clips of this species code")
    add_max_clips(p, help="at most N clips, spread over the split")
    p.add_argument("--target-species", help="output-targeted: species code to add or remove")
    p.add_argument("--mode", default="add", choices=["add", "remove"], help="output-targeted: add or remove the species")
    p.add_argument("--target-clip", help="embedding-targeted: recording id whose first window is the target")
    p.add_argument("--prototype", help="prototype-activate: index or CODE:j")
    add_int(p, "--k", 3, "prototype-suppress: number of prototypes")
    add_int(p, "--batch-clips", help="clips attacked together (default 4 on a CPU, enough to fill a GPU on CUDA)")
    p.add_argument("--through", metavar="T1,T2",
                   help="also score every clip after these transformations (mp3-128, mp3-64, speaker-1m, speaker-10m: the "
                        "perturbation alone from a loudspeaker, playback-1m, playback-10m, room-3m: the whole clip replayed, "
                        "noise-20): does the attack survive them? the clean rows are the control")
    p.add_argument("--masking", action="store_true", help="also measure each perturbation's share above the clip's masking threshold")
    p.add_argument("--minimal-eps", action="store_true", help="also find each clip's minimal flipping eps (bisection)")
    add_int(p, "--iterations", 7, "bisection steps for --minimal-eps (after one attack per decade)")
    add_int(p, "--shards", metavar="N",
            help="run as N independent, resumable shards per group on Ray (a local instance unless --ray-address)")
    p.add_argument("--ray-address", help="Ray cluster address for --shards (e.g. auto, ray://host:10001); default: local")
    add_int(p, "--workers", help="CPUs of the local Ray instance (default: all)")
    add_out(p, "results/sweep.csv", "output table, .csv or .parquet; an existing one with the same settings is resumed")


def _sweep_options(args):
    """The :class:`core.studies.distributed.SweepOptions` of the ``sweep`` options, with the clips per batch chosen."""
    from core.studies.distributed import SweepOptions

    if (args.epsilons is None) == (args.snr is None):
        raise ParameterError("give exactly one of --epsilons (full-scale amplitude) and --snr (dB)")
    models = names(args.models)
    if not models:
        raise ParameterError("--models needs at least one checkpoint name")
    through(args.through)  # unknown names fail before any work
    opts = SweepOptions(models=tuple(models), epsilons=tuple(floats(args.epsilons, "--epsilons")) if args.epsilons is not None else None,
                        snr_db=tuple(floats(args.snr, "--snr")) if args.snr is not None else None, attack=args.attack, norm=args.norm,
                        objective=args.objective, steps=args.steps, seed=args.seed, target_species=args.target_species,
                        mode=args.mode, target_clip=args.target_clip, prototype=args.prototype, k=args.k, split=args.split,
                        species=args.species, max_clips=args.max_clips, data_dir=args.data_dir, split_scheme=args.split_scheme,
                        batch_clips=args.batch_clips,
                        through=tuple(names(args.through or "")), masking=args.masking)
    if opts.batch_clips is not None:
        return opts
    from core.io.device import clips_per_batch, get_device

    per_batch = 4  # on a CPU; on CUDA enough clips to fill one pass (measured on the first model)
    if get_device().type == "cuda":  # only then is a model needed to size the batch
        from core.models.registry import load_checkpoint

        first = load_checkpoint(models[0])
        grid = opts.epsilons if opts.epsilons is not None else opts.snr_db
        per_batch = clips_per_batch(first, first.config.window_samples, len(grid) + 1)
    return replace(opts, batch_clips=per_batch)


def _minimal_eps_table(opts, iterations: int):
    """Each clip's minimal flipping eps (bisection, :func:`core.attacks.sweep.minimal_eps`) for every model of ``opts``."""
    import pandas as pd
    import torch

    from core.attacks.sweep import minimal_eps
    from core.studies.distributed import sweep_groups

    rows, step = [], opts.batch_clips
    for g in sweep_groups(opts):
        clips = g["clips"]
        for name, model in g["models"].items():
            x = torch.as_tensor(clips.waveforms, device=next(model.parameters()).device)
            for b in range(0, len(clips), step):
                sl = slice(b, b + step)
                found = minimal_eps(g["make"](model), model, x[sl], torch.as_tensor(clips.labels[sl]),
                                    masks=torch.as_tensor(clips.masks[sl]), iterations=iterations)
                for i, cid in enumerate(clips.clip_ids[sl]):
                    rows.append({"model": name, "clip": cid, "species": clips.species[b + i], "min_eps": found["eps"][i],
                                 "snr_db": found["snr_db"][i], "db_x": found["db_x"][i], "found": bool(found["found"][i])})
    return pd.DataFrame(rows)


def cmd_sweep(args) -> int:
    from core.studies.distributed import sweep_sharded, sweep_single_process
    from core.studies.sweep import summarize, write_table

    opts = _sweep_options(args)
    args.batch_clips = opts.batch_clips
    out = Path(args.out)
    if args.shards is not None:
        with progress_bar("shard", "shards") as progress:
            table = sweep_sharded(opts, out, n_shards=args.shards, address=args.ray_address, num_cpus=args.workers, progress=progress)
    else:
        with progress_bar("clip") as progress:
            table = sweep_single_process(opts, out, progress=progress)
    summary = summarize(table)
    cols = ["model", "budget_kind", "budget", "n_clips", "cmap", "success_rate", "prs", "drs", "tars", "snr_db"]
    cols += [c for c in summary.columns if c == "above_masking" or c.startswith("success_rate_after:")]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{len(table)} rows written to {out}")
    if args.minimal_eps:
        min_out = out.with_name(out.stem + "_min_eps" + out.suffix)
        min_table = _minimal_eps_table(opts, args.iterations)
        write_table(min_table, min_out)
        print(min_table.groupby("model")[["min_eps", "snr_db"]].median().to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"minimal flipping eps per clip written to {min_out}")
    return 0


def _held_out_study_args(p, max_clips_help: str | None = None) -> None:
    """The first options of ``threats`` and ``masking-attack``: BirdNET and its head on 24 held-out windows."""
    add_models(p, "birdnet,birdnet_protopnet")
    add_split(p, HELD_OUT)
    add_max_clips(p, 24, max_clips_help)


def _resumable_args(p, default_out: str) -> None:
    """``--out`` (resumed when its settings match), ``--fresh`` and ``--max-units`` of the threat studies."""
    add_out(p, default_out, f"table written after every batch (default {default_out}); a rerun with the same data, weights and "
                            "settings resumes it, computing only what is missing")
    p.add_argument("--fresh", action="store_true", help="replace --out instead of resuming it")
    add_int(p, "--max-units", help="compute at most N batches now and stop (a rerun continues); default: all")


def threats_args(p) -> None:
    _held_out_study_args(p, "windows per model, spread over the species")
    add_eps_grid(p, "--snr", "40,30", "budgets as SNR of the perturbation [dB], comma-separated")
    add_steps(p, 20)
    add_int(p, "--eot-samples", 4, "random transformations per EOT step")
    add_seed(p)
    _resumable_args(p, "assets/threats/survival.csv")


def _write_study(table, out: Path, summary, decimals: int, width: int, complete: bool = True) -> None:
    """Print a threat study's ``summary`` of ``table`` (already written to ``out`` unit by unit)."""
    import pandas as pd

    print(file=sys.stderr)  # ends the line of count_batches
    if table.empty:
        print(f"nothing computed yet; {out} continues on the next run")
        return
    with pd.option_context("display.width", width, "display.max_columns", 20):
        print(summary(table).to_string(index=False, float_format=lambda v: f"{v:.{decimals}f}"))
    print(f"written to {out}" + ("" if complete else " (stopped at --max-units: rerun the same command to continue)"))


def cmd_threats(args) -> int:
    from core.attacks.sweep import parse_float_list
    from core.attacks.threat_studies import survival_study, survival_summary

    out = out_path(args.out, (".csv", ".parquet"))
    snrs = parse_float_list(args.snr, "--snr")
    models = load_models(args.models)
    dataset = open_args_dataset(args)
    check_models_split(models, dataset)
    table = survival_study(models, dataset, split=args.split, max_clips=args.max_clips, snr_db=snrs, steps=args.steps,
                           eot_samples=args.eot_samples, seed=args.seed, progress=count_batches, out=out, resume=not args.fresh,
                           max_units=args.max_units)
    _write_study(table, out, survival_summary, 2, 220, complete=args.max_units is None)
    return 0


def masking_attack_args(p) -> None:
    _held_out_study_args(p)
    add_steps(p, 30)
    add_seed(p)
    p.add_argument("--margin-db", default="0,6,10",
                   help="distances kept below the clean clip's masking threshold [dB], comma-separated (default 0,6,10; "
                        "the attack's own default is 6 dB)")
    _resumable_args(p, "assets/threats/masking.csv")


def cmd_masking_attack(args) -> int:
    from core.attacks.psychoacoustic import check_margin_db
    from core.attacks.sweep import parse_float_list
    from core.attacks.threat_studies import masking_study, masking_summary

    out = out_path(args.out, (".csv", ".parquet"))
    try:
        margins = [check_margin_db(m) for m in parse_float_list(args.margin_db, "--margin-db")]
    except ParameterError as exc:
        raise ParameterError(f"--margin-db: {exc}") from None
    models = load_models(args.models)
    dataset = open_args_dataset(args)
    check_models_split(models, dataset)
    table = masking_study(models, dataset, split=args.split, max_clips=args.max_clips, steps=args.steps,
                          seed=args.seed, margin_db=margins, progress=count_batches, out=out, resume=not args.fresh,
                          max_units=args.max_units)
    _write_study(table, out, masking_summary, 3, 200, complete=args.max_units is None)
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "threats": Subcommand("do attacks survive MP3 at 128 kbps and a loudspeaker 1 m and 10 m away? with and without EOT; resumable",
                          threats_args, cmd_threats),
    "masking-attack": Subcommand("attacks kept 0, 6 and 10 dB under the clean clip's masking threshold vs L-inf PGD at the same SNR; resumable",
                                 masking_attack_args, cmd_masking_attack),
    "sweep": Subcommand("attack a dataset split at every eps of a grid; writes a tidy, resumable table", sweep_args, cmd_sweep),
}
