"""Subcommands of the dataset-level studies: audit, arms, shift, embed-metrics, transfer, compare (with the paper check),
worst-case, cutoff."""

from __future__ import annotations

import time
from pathlib import Path

from core.cli.args import (
    HELD_OUT,
    SPLITS,
    Subcommand,
    add_eps,
    add_eps_grid,
    add_float,
    add_int,
    add_max_clips,
    add_model,
    add_models,
    add_out,
    add_seed,
    add_split,
    add_steps,
    check_models_split,
    open_args_dataset,
    out_path,
)
from core.cli.common import common_window, load_models, progress_bar
from core.errors import ParameterError

RATES_MAY_DIFFER = "comma-separated model names (rates may differ)"
TABLE_OUT = (".csv", ".parquet")


def audit_args(p) -> None:
    add_model(p, "birdnet_protopnet", what="a prototype head on BirdNET (checkpoint name or .safetensors path)", arch="birdnet-protopnet")
    add_split(p, HELD_OUT)
    add_int(p, "--max-windows", 12, "own-class windows per prototype")
    add_int(p, "--n-random", 4, "random regions per window (the control)")
    add_int(p, "--attribution-windows", 4, "own-class windows per class for the input attribution (occlusion and gradient x "
            "input of each prototype in third-octave bands; about 10 s per window; 0: skip)")
    add_out(p, "assets/birdnet_heads/audit.csv")


def cmd_audit(args) -> int:
    from core.io.data import build_windows
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint, update_model_card
    from core.studies.audit import attribution_card, audit_summary, prototype_audit, song_bands

    out = out_path(args.out)
    model = load_checkpoint(args.model)
    ds = open_args_dataset(args)
    check_models_split({args.model: model}, ds)
    c = model.config
    w = build_windows(ds, ds.split(args.split), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    if args.attribution_windows < 0:
        raise ParameterError(f"--attribution-windows must be >= 0, got {args.attribution_windows}")
    with progress_bar("window", "input attribution") as progress:
        table = audit_summary(prototype_audit(model, w, max_windows_per_class=args.max_windows, n_random=args.n_random,
                                              attribution_windows=args.attribution_windows, progress=progress), song_bands())
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    s = {"split": args.split, "windows_per_prototype": args.max_windows, "random_regions": args.n_random,
         "median_drop_ratio": float(table["drop_ratio"].median()), "share_beating_random": float((table["wins"] > 0.5).mean()),
         "median_act_own": float(table["act_own"].median()), "median_act_other": float(table["act_other"].median()),
         "plausibility": table["plausibility"].value_counts().to_dict(), "table": str(out)}
    if args.attribution_windows:
        s["attribution"] = attribution_card(table, args.attribution_windows)
    update_model_card(args.model, audit=s)
    print(f"{args.model}: deletion drop / random drop, median {s['median_drop_ratio']:.2f}; prototypes whose region beats "
          f"random in most windows {s['share_beating_random']:.2f}; similarity own class {s['median_act_own']:.2f} vs other "
          f"{s['median_act_other']:.2f}; plausibility {s['plausibility']}")
    if "attribution" in s:
        a = s["attribution"]
        print(f"input attribution (occlusion): median share inside the peak row's bands {a['median_share_row_band']:.2f}; "
              f"plausibility by the share inside the sourced range {a['plausibility']}")
    print(f"written to {out} and the model card")
    return 0


def arms_args(p) -> None:
    p.add_argument("--arm", action="append", required=True, help="NAME=checkpoint1,checkpoint2,... (names in checkpoints/ or paths); repeat")
    add_eps(p, 1e-4, "L-inf budget, full-scale amplitude (default 1e-4)")
    add_max_clips(p, 48, "test windows attacked per model (default 48)")
    add_steps(p, 10, "PGD steps (default 10)")
    add_int(p, "--strong-steps", 50, "APGD steps of the worst case (default 50)")
    add_seed(p)
    add_out(p, help="CSV to write; its per-window rows (OUT_windows.csv) are written after every model, and a rerun with the "
                    "same data, weights and settings attacks only the models not yet done")
    p.add_argument("--fresh", action="store_true", help="replace OUT_windows.csv instead of resuming it")


def cmd_arms(args) -> int:
    import pandas as pd

    from core.io.fileio import atomic_write_text
    from core.training.seeds import arm_differences, arm_markdown, arm_table, differences_markdown, parse_arms

    arms = parse_arms(args.arm)
    out = out_path(args.out)
    stem = None if out is None else (str(out)[: -len(out.suffix)] if out.suffix else str(out))
    rows: list = []
    with progress_bar(desc="models", total=sum(len(v) for v in arms.values())) as progress:
        table = arm_table(arms, open_args_dataset(args), eps=args.eps, max_clips=args.max_clips, steps=args.steps,
                          strong_steps=args.strong_steps, seed=args.seed, progress=progress, windows=rows,
                          out=None if stem is None else stem + "_windows.csv", resume=not args.fresh)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(arm_markdown(table))
    windows = pd.DataFrame(rows)
    diffs = arm_differences(windows, seed=args.seed)
    if len(diffs):
        print("against the control, recordings and seeds resampled (hierarchical bootstrap):")
        print(differences_markdown(diffs))
    if out is not None:
        atomic_write_text(out, table.to_csv(index=False))
        if len(diffs):
            atomic_write_text(Path(stem + "_differences.csv"), diffs.to_csv(index=False))
        print(f"written to {out} (and its per-window results and differences beside it)")
    return 0


def shift_args(p) -> None:
    add_models(p, "baseline,protopnet", "comma-separated checkpoint names")
    add_split(p, SPLITS)
    add_max_clips(p, help="at most N clips, spread over the split")
    add_float(p, "--snr", 10.0, "SNR of the added site noise [dB] (a bird-free window of another recording)")
    add_float(p, "--gain", -20.0, "gain change [dB]")
    add_float(p, "--mix", 0.6, "mixup weight of the clip itself (partner: another species)")
    add_seed(p)
    add_out(p, help="also write the table (.csv or .parquet)")


def cmd_shift(args) -> int:
    from core.io.clips import dataset_clips
    from core.studies.shift import shift_evaluation, split_noise_bank
    from core.studies.sweep import write_table

    models = load_models(args.models)
    sr, win = common_window(models)
    first = next(iter(models.values()))
    dataset = open_args_dataset(args)
    check_models_split(models, dataset)
    clips = dataset_clips(dataset, split=args.split, class_names=first.config.class_names, sample_rate=sr, window_samples=win,
                          max_clips=args.max_clips)
    bank = split_noise_bank(dataset, args.split, sr, win)
    table = shift_evaluation(models, clips, bank=bank, snr_db=args.snr, gain_db=args.gain, lam=args.mix, seed=args.seed)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        write_table(table, args.out)
        print(f"written to {args.out}")
    return 0


def embed_metrics_args(p) -> None:
    add_models(p, "baseline,protopnet,birdnet", RATES_MAY_DIFFER)
    add_split(p, SPLITS)
    add_eps(p, 1e-4)
    add_steps(p)
    add_seed(p)
    add_out(p, help="also write the table (.csv or .parquet)")


def _finish(table, out: str | None, summary: str, t0: float, rows: str = "") -> None:
    """Write ``table`` to ``--out`` if given; print the study's ``summary`` and how long it took."""
    from core.studies.sweep import write_table

    if out:
        write_table(table, out)
    print(summary)
    print(f"{rows}{time.time() - t0:.0f} s" + (f"; table written to {out}" if out else ""))


def cmd_embed_metrics(args) -> int:
    from core.studies.embeddings import EmbeddingCache, embedding_markdown, embedding_table

    out_path(args.out, TABLE_OUT)
    if args.steps < 1:
        raise ParameterError(f"--steps must be >= 1, got {args.steps}")
    models = load_models(args.models)
    ds = open_args_dataset(args)
    check_models_split(models, ds)
    t0 = time.time()
    table = embedding_table(models, ds, split=args.split, eps=args.eps, steps=args.steps, seed=args.seed, cache=EmbeddingCache())
    _finish(table, args.out, embedding_markdown(table), t0)
    return 0


def transfer_args(p) -> None:
    add_models(p, "birdnet,protopnet,baseline", RATES_MAY_DIFFER)
    add_split(p, SPLITS)
    add_int(p, "--max-segments", 24, "recordings (one segment each), spread over the species")
    add_float(p, "--segment-seconds", 15.0)
    add_eps(p, 1e-3, "L-inf budget of the attack and of the control")
    add_steps(p)
    p.add_argument("--objective", default="output-margin", choices=["output-margin", "output-untargeted"])
    add_seed(p)
    add_out(p, help="also write the per-segment table (.csv or .parquet)")


def cmd_transfer(args) -> int:
    from core.studies.transfer import TransferSettings, transfer_summary, transfer_table

    settings = TransferSettings(split=args.split, max_segments=args.max_segments, segment_seconds=args.segment_seconds,
                                eps=args.eps, steps=args.steps, objective=args.objective, seed=args.seed)
    out_path(args.out, TABLE_OUT)
    models = load_models(args.models)
    ds = open_args_dataset(args)
    check_models_split(models, ds)
    t0 = time.time()
    with progress_bar("segment", "transfer") as progress:
        table = transfer_table(models, ds, settings, progress=progress)
    _finish(table, args.out, transfer_summary(table).round(3).to_string(index=False), t0, rows=f"{len(table)} rows in ")
    return 0


def compare_args(p) -> None:
    add_models(p, None, "comma-separated checkpoint names (default: the eight shipped models)")
    add_split(p, SPLITS)
    add_max_clips(p, 48, "windows attacked per model (spread over the split)")
    add_int(p, "--shift-max-clips", help="windows for clean/shifted metrics (default: all)")
    add_eps_grid(p, default="1e-5,3e-5,1e-4,3e-4,1e-3", help="L-inf eps grid of the untargeted PGD sweep")
    add_eps_grid(p, "--target-epsilons", "1e-4,1e-3", "L-inf eps grid of the targeted embedding-space PGD sweep")
    add_steps(p)
    p.add_argument("--strong", action="store_true",
                   help="add the worst case over attacks (transfer, APGD, PGD with restarts, APGD-CE/DLR/T); hours for the zoo on 2 cores")
    add_int(p, "--strong-steps", 20, "steps of APGD and of the restarted PGD in the worst case (default 20)")
    add_int(p, "--restarts", 2, "random restarts of the strong PGD (default 2)")
    add_int(p, "--apgd-steps", 50, "iterations of the worst case's APGD-CE, APGD-DLR and APGD-T legs (default 50; 0: leave them out)")
    add_seed(p)
    add_int(p, "--n-boot", 1000, "bootstrap resamples of the test recordings for the paper check")
    add_int(p, "--boot-seed", 0, "seed of the paper check's bootstrap")
    add_out(p, help="result store directory (default: .cache/compare; the shipped results live in assets/compare)")
    p.add_argument("--recompute", action="store_true", help="compute even if a stored result exists (finished units of an "
                                                                 "interrupted run with the same inputs are still reused)")
    p.add_argument("--fresh", action="store_true", help="discard the finished units of an interrupted run and start over")
    p.add_argument("--recheck", action="store_true", help="recompute only the paper check of a stored result (bootstrap)")
    p.add_argument("--update-cards", action="store_true", help="write robustness at two eps into each model's card")


def _run_compare(args, models: dict, dataset, settings, store, fingerprints: dict):
    """Compute the comparison of ``models`` on ``dataset`` (resuming an interrupted run), store it and, on the test split, its paper check."""
    import shutil

    from core.io.device import clips_per_batch
    from core.studies.compare import run_compare
    from core.studies.papercheck import paper_check

    first = next(iter(models.values()))  # 4 clips per batch on a CPU; on CUDA enough to fill a pass
    per_batch = clips_per_batch(first, first.config.window_samples, len(settings.epsilons))
    units_dir = store.units_dir(settings, fingerprints, dataset)
    if args.fresh and units_dir.exists():
        shutil.rmtree(units_dir)
    elif units_dir.exists():
        print(f"resuming an interrupted comparison: {len(list(units_dir.glob('*.parquet')))} finished units in {units_dir}")
    with progress_bar("clip", total=0) as progress:
        result = run_compare(models, dataset, settings, progress=progress, clips_per_batch=per_batch, units_dir=units_dir)
    result.info["command"] = args.command_line
    where = store.save(result)
    shutil.rmtree(units_dir, ignore_errors=True)  # stored whole: the units are no longer needed
    if settings.split == "test":  # the claims are about held-out test recordings
        result.claims = paper_check(result, n_boot=args.n_boot, seed=args.boot_seed)
        store.save(result)
    print(f"computed in {result.seconds / 60:.1f} min; saved to {where}")
    return result


def _print_compare(result) -> None:
    """The model summary, gradient-masking warnings and the paper check of a comparison."""
    import pandas as pd

    from core.attacks.worstcase import masking_check
    from core.studies.compare import model_summary

    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(model_summary(result).set_index("model").T.to_string(float_format=lambda v: f"{v:.3f}"))
        checks = masking_check(result.robustness)
        for r in checks[checks["warning"] != ""].itertuples() if not checks.empty else []:
            print(f"gradient-masking check: {r.model} at eps {r.eps:g}: {r.warning}")
        if result.claims is not None and len(result.claims):
            cols = ["key", "ours", "ci_low", "ci_high", "p_holm", "direction", "detail"]
            print(result.claims[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def cmd_compare(args) -> int:
    from core.attacks.sweep import parse_float_list
    from core.studies.compare import ZOO, CompareSettings
    from core.studies.compare_store import CompareStore
    from core.studies.embeddings import model_fingerprint
    from core.studies.papercheck import paper_check

    settings = CompareSettings(
        split=args.split, max_clips=args.max_clips, shift_max_clips=args.shift_max_clips,
        epsilons=parse_float_list(args.epsilons, "--epsilons"), target_epsilons=parse_float_list(args.target_epsilons, "--target-epsilons"),
        steps=args.steps, seed=args.seed, strong=args.strong, strong_steps=args.strong_steps, restarts=args.restarts, apgd_steps=args.apgd_steps,
    )
    models = load_models(args.models or ",".join(ZOO))  # run_compare groups models by window
    dataset = open_args_dataset(args)
    check_models_split(models, dataset)
    store = CompareStore(args.out) if args.out else CompareStore()
    fingerprints = {n: model_fingerprint(m) for n, m in models.items()}
    result = None if args.recompute else store.find(settings, fingerprints, dataset)
    if result is None:
        result = _run_compare(args, models, dataset, settings, store, fingerprints)
    else:
        print("found a stored result for these settings and weights (--recompute to compute again)")
        if args.recheck:
            result.claims = paper_check(result, n_boot=args.n_boot, seed=args.boot_seed)
            print(f"paper check recomputed from the stored tables; saved to {store.save(result)}")
    _print_compare(result)
    if args.update_cards:
        from core.models.registry import BUILTIN_MODELS, update_model_card
        from core.studies.compare import card_robustness

        ours = [n for n in result.models if n not in BUILTIN_MODELS]  # BirdNET's card is built in code, never written
        for name in ours:
            update_model_card(name, robustness=card_robustness(result, name))
        print(f"model cards updated: {', '.join(ours)}")
    return 0


WORST_CASE_MODELS = "birdnet_protopnet_ato,baseline_ato,birdnet"
WORST_CASE_SOURCES = "birdnet_protopnet_ato=birdnet_protopnet,baseline_ato=baseline,birdnet=birdnet_protopnet"


def worst_case_args(p) -> None:
    add_models(p, WORST_CASE_MODELS, "comma-separated models to attack (checkpoints, or birdnet)")
    p.add_argument("--sources", default=WORST_CASE_SOURCES,
                   help="model=source pairs of the transfer leg, comma-separated (same rate and window; default: %(default)s)")
    add_split(p, HELD_OUT)
    add_max_clips(p, 24, "windows per model, spread over the split's species (default 24)")
    add_eps_grid(p, default="1e-4,3e-5", help="L-inf eps grid, full-scale amplitude (default 1e-4,3e-5)")
    add_steps(p)
    add_int(p, "--strong-steps", 20, "steps of the margin APGD and of the restarted PGD (default 20)")
    add_int(p, "--restarts", 2, "random restarts of the strong PGD (default 2)")
    add_int(p, "--apgd-steps", 50, "iterations of APGD-CE, APGD-DLR and APGD-T (default 50; 0: the worst case before issue 24)")
    add_seed(p)
    add_float(p, "--max-minutes", 9.0, "start no new chunk of windows after this long; run again to go on (default 9)")
    add_out(p, "assets/robustness/worst_case_windows.csv", "per-window CSV, appended to and resumed (default: %(default)s)")


def cmd_worst_case(args) -> int:
    import pandas as pd

    from core.attacks.sweep import parse_float_list
    from core.cli.args import names
    from core.studies.worst_case_study import worst_case_study, worst_case_study_summary

    out = out_path(args.out)
    models = load_models(args.models)
    if any("=" not in p for p in names(args.sources)):
        raise ParameterError(f"--sources must be model=source pairs, got {args.sources!r}")
    pairs = {t.strip(): s.strip() for t, s in (p.split("=", 1) for p in names(args.sources)) if t.strip() in models}
    loaded = load_models(",".join(sorted(set(pairs.values())))) if pairs else {}
    sources = {t: loaded[s] for t, s in pairs.items()}
    dataset = open_args_dataset(args)
    check_models_split({**models, **{pairs[t]: m for t, m in sources.items()}}, dataset)  # the transfer sources too
    t0 = time.time()
    with progress_bar("window", "worst case") as progress:
        worst_case_study(models, dataset, epsilons=parse_float_list(args.epsilons, "--epsilons"), out=out, sources=sources,
                         split=args.split, max_clips=args.max_clips, steps=args.steps, strong_steps=args.strong_steps, restarts=args.restarts,
                         apgd_steps=args.apgd_steps, seed=args.seed, max_seconds=60 * args.max_minutes,
                         progress=progress)
    if not out.is_file():
        print(f"no window finished yet; nothing written to {out}")
        return 0
    table = worst_case_study_summary(pd.read_csv(out, keep_default_na=False))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.max_colwidth", 80):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"{out} ({time.time() - t0:.0f} s); success over windows whose clean top-1 is a true label; run again to go on if a model has "
          f"fewer than {args.max_clips} windows per eps")
    return 0


BIRDNET_BASED = ("birdnet,birdnet_linear,birdnet_protopnet,birdnet_protopnet_ato,birdnet_protopnet_ate,birdnet_protopnet_ft,"
                 "birdnet_protopnet_gated")


def cutoff_args(p) -> None:
    add_models(p, BIRDNET_BASED, "comma-separated models on BirdNET's backbone (birdnet itself or heads on it)")
    add_out(p, "assets/birdnet_heads/cutoff.csv", "CSV to write; the rows of other models already in it are kept (default: %(default)s)")
    p.add_argument("--update-cards", action="store_true",
                   help="write each head's figures into its model card (field post_cutoff; the weights file is not touched; "
                        "BirdNET's card is built in code and not written)")


def _birdnet_based(text: str) -> dict:
    """The models of ``--models``, each checked to exist (before any loads) and to run BirdNET's backbone."""
    from core.cli.args import names
    from core.errors import CheckpointError
    from core.models.registry import BUILTIN_MODELS, resolve_checkpoint, uses_birdnet

    chosen = names(text)
    if not chosen:
        raise ParameterError("--models needs at least one model name")
    for n in chosen:
        if n == "birdnet-all":
            raise ParameterError("birdnet-all scores 6,522 classes, not the dataset's; use birdnet (its 9 species)")
        if n not in BUILTIN_MODELS and not resolve_checkpoint(n).is_file():
            raise CheckpointError(f"unknown model {n!r}: no checkpoint {resolve_checkpoint(n)} (BirdNET-based shipped models: {BIRDNET_BASED})")
    models = load_models(",".join(chosen))
    other = [n for n, m in models.items() if not uses_birdnet(m.config)]
    if other:
        raise ParameterError(f"{', '.join(other)} does not run BirdNET's backbone: BirdNET's training cut-off does not concern it")
    return models


def cmd_cutoff(args) -> int:
    import pandas as pd

    from core.io.fileio import atomic_write_text
    from core.models.registry import BUILTIN_MODELS, update_model_card
    from core.studies.leakage import BIRDNET_TRAINING_CUTOFF_XC, card_post_cutoff, cutoff_table, merge_cutoff_tables

    out = out_path(args.out)
    models = _birdnet_based(args.models)
    ds = open_args_dataset(args)
    check_models_split(models, ds)
    t0 = time.time()
    with progress_bar("model", "cut-off") as progress:
        table = cutoff_table(models, ds, progress=progress)
    cols = ["model", "recordings", "side", "n_recordings", "n_windows", "recording_top1", "window_cmap"]
    print(f"BirdNET V2.4 trained on xeno-canto up to XC{BIRDNET_TRAINING_CUTOFF_XC}; pre: at or below it, post: after it")
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if out is not None:
        old = pd.read_csv(out, keep_default_na=False, na_values=[""]) if out.is_file() else None
        atomic_write_text(out, merge_cutoff_tables(old, table).to_csv(index=False, float_format="%.6g"))
        print(f"written to {out} ({time.time() - t0:.0f} s)")
    if args.update_cards:
        ours = [n for n in models if n not in BUILTIN_MODELS]  # BirdNET's card is built in code, never written
        for name in ours:
            update_model_card(name, post_cutoff=card_post_cutoff(table, name, command=args.command_line))
        print(f"model cards updated (post_cutoff): {', '.join(ours) or 'none'}")
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "audit": Subcommand("audit a BirdNET prototype head: where prototypes fire, deletion vs random regions, plausibility", audit_args, cmd_audit),
    "arms": Subcommand("training arms over seeds (e.g. AT-O vs its OT+FT control): clean metrics and attack success, mean and sd", arms_args, cmd_arms),
    "shift": Subcommand("clean vs shifted (site noise, gain, mixup) metrics of models on a split", shift_args, cmd_shift),
    "embed-metrics": Subcommand("cluster and retrieval quality of embeddings, clean and under PGD, per model", embed_metrics_args, cmd_embed_metrics),
    "transfer": Subcommand("adversarial segments made on each model, scored by every model, with a random-noise control", transfer_args, cmd_transfer),
    "compare": Subcommand("the model zoo side by side (clean, shifted, attacked) and the paper check; cached", compare_args, cmd_compare),
    "worst-case": Subcommand("the worst case over attacks per window (PGD, transfer, APGD, APGD-CE/DLR/T), resumable CSV; success over "
                             "windows with a true clean top-1", worst_case_args, cmd_worst_case),
    "cutoff": Subcommand("figures of BirdNET and its heads on recordings after BirdNET's xeno-canto training cut-off and before it",
                         cutoff_args, cmd_cutoff),
}
