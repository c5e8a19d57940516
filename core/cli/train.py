"""Subcommands that train or measure models: train, reference, calibrate, train-head, finetune-head, head-study, evaluate."""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from core.cli.args import (
    SPLITS,
    Subcommand,
    add_float,
    add_int,
    add_json,
    add_lr_stage,
    add_model,
    add_out,
    add_out_dir,
    add_restart,
    add_seed,
    add_split,
    check_models_split,
    names,
    open_args_dataset,
    out_path,
)
from core.cli.common import progress_bar, save_trained, saved_line, trained_path, training_resume
from core.errors import ParameterError

log = logging.getLogger("core")

# TrainConfig fields that a `train` option overrides when given
TRAIN_OVERRIDES = ("epochs", "warm_epochs", "last_layer_epochs", "batch_size", "lr", "loss", "adv", "adv_eps", "adv_snr_db", "adv_steps",
                   "adv_random_start", "adv_alpha_ratio", "adv_beta", "awp_gamma", "awp_warmup")


def train_args(p) -> None:
    p.add_argument("--config", required=True, help="named config: baseline-small, protopnet-small, baseline-paper, protopnet-paper")
    p.add_argument("--name", help="checkpoint name (default: the config name)")
    p.add_argument("--init-backbone", help="checkpoint whose backbone initialises this model (AudioProtoPNet)")
    p.add_argument("--init", help="checkpoint of the same config whose weights initialise the whole model (fine-tuning, e.g. adversarial)")
    for flag in ("--epochs", "--warm-epochs", "--last-layer-epochs", "--batch-size"):
        add_int(p, flag)
    add_float(p, "--lr")
    p.add_argument("--loss", choices=["asl", "bce"], help="default: asl for protopnet, bce for baseline")
    p.add_argument("--adv", choices=["none", "at-o", "at-e"], help="adversarial training: output space (at-o) or embedding space (at-e)")
    add_float(p, "--adv-eps", help="L-inf budget of the training perturbations, full-scale amplitude (default 1e-4)")
    add_float(p, "--adv-snr", dest="adv_snr_db", help="budget as a target SNR in dB per clip instead of --adv-eps")
    add_int(p, "--adv-steps", help="1 = FGSM-RS (default; FGSM with --adv-no-random-start); more = PGD steps")
    p.add_argument("--adv-no-random-start", dest="adv_random_start", action="store_false", default=None,
                   help="start from the clean waveform (plain FGSM; known to overfit catastrophically, Wong et al. 2020)")
    add_float(p, "--adv-alpha-ratio", help="step size / eps (default 1.25 for FGSM-RS, 2.5/steps for PGD)")
    add_float(p, "--adv-beta", help="weight of the TRADES-style adversarial term (default 1)")
    add_float(p, "--awp-gamma", help="adversarial weight perturbation, relative size (e.g. 0.005; default 0 = off)")
    add_int(p, "--awp-warmup", help="epochs of each phase before AWP starts (default 1)")
    add_seed(p)
    add_int(p, "--max-recordings", help="use only N recordings per class and split (smoke test)")
    add_out_dir(p, "directory for the checkpoint (default: checkpoints/)")
    add_restart(p)


def _init_weights(model, config, args, dataset) -> None:
    """``--init-backbone`` / ``--init``: weights of an earlier checkpoint into ``model`` (trained on ``dataset``'s split scheme)."""
    from core.models.registry import check_split_scheme, load_checkpoint

    if args.init_backbone:
        donor = load_checkpoint(args.init_backbone, device="cpu")
        check_split_scheme(donor, dataset, f"--init-backbone {args.init_backbone}")
        if donor.config.backbone != config.backbone or donor.config.frontend != config.frontend:
            raise ParameterError(f"--init-backbone {args.init_backbone}: its backbone/front end differ from {args.config}")
        model.copy_backbone_from(donor)
        log.info("backbone initialised from %s", args.init_backbone)
    if args.init:
        donor = load_checkpoint(args.init, device="cpu")
        check_split_scheme(donor, dataset, f"--init {args.init}")
        if donor.config != config:
            raise ParameterError(f"--init {args.init}: its config differs from {args.config} (classes, front end or architecture)")
        model.load_state_dict(donor.state_dict())
        log.info("all weights initialised from %s (fine-tuning)", args.init)


@contextmanager
def _log_file(path: Path, *, append: bool):
    """Log core's INFO messages to ``path`` (appended to when a run is resumed) while the block runs."""
    handler = logging.FileHandler(path, mode="a" if append else "w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def cmd_train(args) -> int:
    import torch
    from tqdm import tqdm

    from core.models.registry import CHECKPOINT_DIR, NAMED_CONFIGS, ModelConfig, build_model, save_checkpoint
    from core.training.train import TrainConfig, train_model

    if args.config not in NAMED_CONFIGS:
        raise ParameterError(f"--config must be one of {sorted(NAMED_CONFIGS)}, got {args.config!r}")
    dataset = open_args_dataset(args)
    out_dir = Path(args.out_dir or CHECKPOINT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or args.config
    resume = training_resume(args, dataset, out_dir / f"{name}.safetensors", inits=("init", "init_backbone"))
    with _log_file(out_dir / f"{name}.log", append=resume.resumed_from is not None):
        torch.manual_seed(args.seed)
        config = ModelConfig(class_names=tuple(dataset.class_names), **NAMED_CONFIGS[args.config])
        # AudioProtoPNet uses the asymmetric loss of the paper; the baseline trains far faster with BCE here
        cfg = TrainConfig(seed=args.seed, loss="asl" if config.arch == "protopnet" else "bce")
        cfg = replace(cfg, **{k: getattr(args, k) for k in TRAIN_OVERRIDES if getattr(args, k) is not None})
        model = build_model(config)
        _init_weights(model, config, args, dataset)
        bar = tqdm(total=0, unit="step", dynamic_ncols=True, disable=None)

        def progress(phase, epoch, epochs, step, steps, loss):
            if bar.total != steps:
                bar.reset(total=steps)
            bar.set_description(f"{phase} {epoch + 1}/{epochs}")
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.n = step
            bar.refresh()

        log.info("training %s (%s) on %s: %s", name, args.config, dataset.root, cfg)
        card = train_model(model, dataset, cfg, progress=progress, max_train_recordings=args.max_recordings, resume=resume)
        bar.close()
        card = {"name": name, "config_name": args.config, "command": args.command_line, "init_backbone": args.init_backbone,
                "init": args.init, "created": time.strftime("%Y-%m-%d"), **card}
        if resume.resumed_from is not None:
            card["resumed_from"] = resume.resumed_from
        ref_path = out_dir / "reference_logreg.json"
        reference = json.loads(ref_path.read_text()) if ref_path.is_file() else {}
        if reference and reference.get("split_scheme", "recordist") == dataset.split_scheme:  # written before split schemes: recordist
            card["reference"] = reference
        path = save_checkpoint(model, out_dir / f"{name}.safetensors", card)
        resume.delete()  # the checkpoint is written: nothing to resume
        t = card["metrics"]["test"]
        print(f"saved {path}; test cmAP window {t['window']['cmap']:.3f} recording {t['recording']['cmap']:.3f}; "
              f"{card['train_seconds'] / 60:.1f} min")
        return 0


def reference_args(p) -> None:
    add_out(p)


def cmd_reference(args) -> int:
    from core.io.fileio import atomic_write_text
    from core.models.registry import CHECKPOINT_DIR
    from core.studies.reference import reference_logreg

    ds = open_args_dataset(args)
    result = {**reference_logreg(ds), "split_scheme": ds.split_scheme}
    out = Path(args.out or CHECKPOINT_DIR / "reference_logreg.json")
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    t = result["metrics"]["test"]
    print(f"reference test cmAP window {t['window']['cmap']:.3f} recording {t['recording']['cmap']:.3f} -> {out}")
    return 0


def calibrate_args(p) -> None:
    add_model(p, what="checkpoint names or paths (not BirdNET: its card is built in)", nargs="+", required=True)


def cmd_calibrate(args) -> int:
    from core.io.fileio import atomic_write_text
    from core.models.registry import BUILTIN_MODELS, load_checkpoint, update_model_card
    from core.training.calibration import builtin_threshold_path, calibrate_model

    ds = open_args_dataset(args)
    for name in args.model:
        model = load_checkpoint(name)
        check_models_split({name: model}, ds)
        entry = calibrate_model(model, ds)
        if name in BUILTIN_MODELS:  # no card of ours: stored beside its measured metrics
            atomic_write_text(builtin_threshold_path(name), json.dumps(entry, indent=2) + "\n")
        else:
            update_model_card(name, decision_threshold=entry)
        print(f"{name}: threshold {entry['value']:.3f} on {entry['n_windows']} validation windows "
              f"(micro-F1 {entry['micro_f1']:.3f}, at 0.5 {entry['micro_f1_at_0.5']:.3f}; "
              f"{entry['mean_predicted']:.2f} species predicted per window)")
    return 0


def open_set_args(p) -> None:
    add_model(p, what="BirdNET head checkpoints (birdnet_protopnet, its AT/FT variants, birdnet_linear)", nargs="+", required=True)
    add_float(p, "--quantile", 0.10, "share of labelled validation windows whose score the bird gate may halve")
    add_float(p, "--slope", 8.0, "steepness of the gate per BirdNET logit (1: the first gates; 8: nearly a step)")
    p.add_argument("--evidence", choices=("bird", "animal"), default="bird",
                   help="BirdNET classes the gate reads: its 6,421 birds (default) or all 6,511 animals (the first gates)")
    add_float(p, "--max-false-rate", 0.01, "largest share of validation bird-free windows the decision threshold may pass")
    p.add_argument("--out", help="checkpoint name (or a path ending in .safetensors) to write (default: overwrite each --model; with one --model only)")


def cmd_open_set(args) -> int:
    from core.io.split import DEFAULT_SPLIT_SCHEME
    from core.models.registry import CHECKPOINT_DIR, load_checkpoint, resolve_checkpoint, save_checkpoint
    from core.training.open_set import open_set_model

    if args.out and len(args.model) != 1:
        raise ParameterError("--out needs exactly one --model")
    ds = open_args_dataset(args)
    for name in args.model:
        model = load_checkpoint(name)
        check_models_split({name: model}, ds)
        card = dict(model.card)
        target = resolve_checkpoint(name) if not args.out else (
            Path(args.out) if args.out.endswith(".safetensors") else CHECKPOINT_DIR / f"{args.out}.safetensors")
        gated, fields = open_set_model(model, ds, quantile=args.quantile, max_false_rate=args.max_false_rate,
                                       slope=args.slope, evidence=args.evidence, progress=lambda m, name=name: log.info("%s: %s", name, m))
        before = card.get("open_set", {}).get("metrics_before_gate") or card.get("metrics")
        fields["open_set"]["metrics_before_gate"] = before
        fields["open_set"]["threshold_before_gate"] = (card.get("open_set", {}).get("threshold_before_gate")
                                                       or card.get("decision_threshold"))
        card.update(fields)
        card.pop("config", None)
        card.pop("weights_sha256", None)
        if args.out:
            card["trained_by"] = card.get("command")
            card["command"] = f"python -m core open-set --model {name} --out {args.out}" + (
                f" --split-scheme {ds.split_scheme}" if ds.split_scheme != DEFAULT_SPLIT_SCHEME else "")
            if "audit" in card:
                card["audit"] = {**card["audit"], "measured_on": (
                    f"{name}: the same head without the gate (the gate scales every class of a window by one factor; "
                    "the deletion drops were not re-measured through the gate)")}
        save_checkpoint(gated, target, card)
        t, m = fields["decision_threshold"], fields["metrics"]
        print(f"{target.stem}: bird gate tau {fields['open_set']['tau']:.2f}, threshold {t['value']:.3f} "
              f"(micro-F1 threshold {t['f1_threshold']:.3f}; {t['false_rate']:.1%} of {t['n_bird_free']} validation "
              f"bird-free windows pass); test recording top-1 {m['test']['recording']['top1']:.3f} "
              f"(before {before['test']['recording']['top1']:.3f})")
    return 0


def open_set_seeds_args(p) -> None:
    p.add_argument("--recipe", action="append", required=True,
                   help="NAME=checkpoint1,checkpoint2,... (heads of one recipe, one per seed; names in checkpoints/ or paths); repeat")
    add_int(p, "--per-family", 16, "windows of each held-out synthetic family (default 16)")
    add_int(p, "--held-out-seed", 2026, "seed of the held-out synthetic draw (default 2026, the no-bird check's; "
                                          "another seed gives a fresh draw of the same families)")
    add_float(p, "--max-false-rate", 0.01, "largest mean share of validation bird-free windows a recommended recipe may pass")
    p.add_argument("--reference", help="recipe (the ungated heads) whose mean validation window recall a recommended recipe "
                                       "may fall short of by at most --max-recall-cost")
    add_float(p, "--max-recall-cost", 0.05, "largest drop of validation window recall below --reference's (default 0.05)")
    add_out(p, help="CSV to write")


def cmd_open_set_seeds(args) -> int:
    from core.field.open_set_seeds import best_recipe, recipe_markdown, recipe_table
    from core.io.fileio import atomic_write_text
    from core.training.seeds import parse_arms

    recipes = parse_arms(args.recipe, flag="--recipe")
    if args.reference is not None and args.reference not in recipes:
        raise ParameterError(f"--reference {args.reference!r} is not one of the recipes ({', '.join(recipes)})")
    out = out_path(args.out)
    with progress_bar(desc="heads", total=sum(len(v) for v in recipes.values())) as progress:
        table = recipe_table(recipes, open_args_dataset(args), per_family=args.per_family, held_out_seed=args.held_out_seed,
                             progress=progress)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(recipe_markdown(table))
    if out is not None:
        atomic_write_text(out, table.to_csv(index=False))
        print(f"written to {out}")
    cond = (f" and losing <= {args.max_recall_cost:g} of {args.reference}'s validation window recall"
            if args.reference is not None else "")
    print(f"best by mean validation top-1 among recipes passing <= {args.max_false_rate:.0%} of validation bird-free windows"
          f"{cond}: {best_recipe(table, max_false_rate=args.max_false_rate, reference=args.reference, max_recall_cost=args.max_recall_cost)}")
    return 0


def train_head_args(p) -> None:
    p.add_argument("--name", required=True)
    p.add_argument("--layer", default="ACT_POST")
    p.add_argument("--head", default="prototype", choices=["prototype", "linear"])
    add_int(p, "--prototypes-per-class", 10)
    add_int(p, "--epochs", 60)
    add_float(p, "--lr", 5e-2, "Adam lr of the prototypes (linear head: of its weights)")
    p.add_argument("--loss", default="asl", choices=["asl", "bce"])
    add_seed(p)
    p.add_argument("--tuned-from", metavar="LAYER",
                   help="fine-tune BirdNET's layers from LAYER's output up to --layer with the head (e.g. BLOCK_3-4_ADD); "
                        "default: BirdNET frozen")
    add_lr_stage(p, "tuned")
    add_int(p, "--no-bird", 0, metavar="N",
            help="add N synthetic no-bird windows (noise, tones) and the train split's bird-free site noise as "
                 "negatives (all-zero targets); default 0")
    p.add_argument("--no-bird-families", default="v1", metavar="RECIPE",
                   help="kinds of the synthetic no-bird windows: v1 (white and pink noise, tones: the shipped heads' recipe) "
                        "or train (every family of core.io.synth.TRAIN_FAMILIES: noises, hum, rain, engine, wind, tones)")
    add_out_dir(p)
    add_restart(p)


def cmd_train_head(args) -> int:
    from core.models.birdnet import birdnet_files
    from core.models.birdnet_heads import HeadConfig, layer_tensor
    from core.models.tflite_graph import TFLiteFile
    from core.training.heads import train_birdnet_head

    cfg = HeadConfig(kind=args.head, prototypes_per_class=args.prototypes_per_class, epochs=args.epochs, lr=args.lr,
                     loss=args.loss, seed=args.seed)
    graph = TFLiteFile(birdnet_files()["model"])
    for layer in [args.layer] + ([args.tuned_from] if args.tuned_from else []):  # an unknown layer fails before any decoding
        layer_tensor(graph, layer)
    if args.no_bird < 0:
        raise ParameterError(f"--no-bird must be >= 0, got {args.no_bird}")
    if args.no_bird_families not in ("v1", "train"):
        raise ParameterError(f"--no-bird-families must be v1 or train, got {args.no_bird_families!r}")
    dataset = open_args_dataset(args)
    resume = training_resume(args, dataset, trained_path(args))
    model, card = train_birdnet_head(dataset, args.layer, cfg, tuned_from=args.tuned_from, lr_stage=args.lr_stage,
                                     no_bird=args.no_bird, no_bird_recipe=args.no_bird_families, resume=resume)
    print(saved_line(save_trained(args, model, card, resume), card, recording_cmap=True))
    return 0


def finetune_head_args(p) -> None:
    p.add_argument("--init", required=True, help="a head model with tuned BirdNET layers, e.g. birdnet_protopnet")
    p.add_argument("--name", required=True)
    p.add_argument("--adv", required=True, choices=["at-o", "at-e", "at-x", "none", "noise"],
                   help="output space (at-o), embedding space (at-e), explanation-guided (at-x: keeps the prototype activations, "
                        "a TRADES-style consistency term on the prototype activations), none: the same epochs on clean windows (control), or noise: "
                        "Gaussian noise of --noise-sigma on every sample (Cohen et al. 2019, for randomized smoothing)")
    add_int(p, "--epochs", 4)
    add_float(p, "--adv-eps", 1e-4, "L-inf budget of the FGSM-RS training perturbations, full-scale amplitude")
    add_float(p, "--adv-beta", 1.0, "weight of the adversarial term: the outputs' KL (at-o), the feature maps' cosine "
                                     "dissimilarity (at-e) or the prototype activations' RMS change (at-x; prototype heads only) "
                                     "(default 1)")
    add_float(p, "--noise-sigma", 3e-4, "std per sample of the noise arm's Gaussian noise, full-scale amplitude (default 3e-4, "
                                        "the certify default)")
    add_seed(p)
    add_out_dir(p)
    add_restart(p)


def cmd_finetune_head(args) -> int:
    from core.models.birdnet_proto import BirdNETHeadModel
    from core.models.registry import check_split_scheme, load_checkpoint
    from core.training.head_finetune import adversarial_finetune_head

    init = load_checkpoint(args.init)
    if not isinstance(init, BirdNETHeadModel):
        raise ParameterError(f"--init {args.init}: not a head on BirdNET (train one with train-head --tuned-from)")
    dataset = open_args_dataset(args)
    check_split_scheme(init, dataset, f"--init {args.init}")
    resume = training_resume(args, dataset, trained_path(args), inits=("init",))
    model, card = adversarial_finetune_head(dataset, init, adv=args.adv, epochs=args.epochs, eps=args.adv_eps, beta=args.adv_beta,
                                            seed=args.seed, noise_sigma=args.noise_sigma, resume=resume)
    print(saved_line(save_trained(args, model, card, resume), card))
    return 0


def head_study_args(p) -> None:
    p.add_argument("--layers", default="BLOCK_2-4_ADD,BLOCK_3-5_ADD,ACT_POST,POST_ACT_1")
    add_out(p, "assets/birdnet_heads/layers.csv")
    p.add_argument("--finetune-from", metavar="LAYER",
                   help="instead of the layer study: frozen vs fine-tuned from LAYER up to the one --layers (e.g. BLOCK_3-4_ADD)")
    add_lr_stage(p, "fine-tuned")


def cmd_head_study(args) -> int:
    import pandas as pd

    from core.io.fileio import atomic_write_text
    from core.studies.heads import finetune_study, layer_study

    out = out_path(args.out)
    layers = names(args.layers)
    if args.finetune_from:
        if len(layers) != 1:
            raise ParameterError(f"--finetune-from needs exactly one --layers (the head's layer), got {len(layers)}")
        if args.lr_stage <= 0:
            raise ParameterError(f"--lr-stage must be > 0, got {args.lr_stage}")
        rows = pd.DataFrame(finetune_study(open_args_dataset(args), layer=layers[0], from_layer=args.finetune_from,
                                           lr_stage=args.lr_stage))
        cols = ["layer", "head", "backbone"]
    else:
        rows = pd.DataFrame(layer_study(open_args_dataset(args), layers))
        cols = ["layer", "head", "map", "cell_s"]
    atomic_write_text(out, rows.to_csv(index=False, float_format="%.4g"))
    cols += ["val_window_cmap", "val_recording_top1", "test_window_cmap", "test_recording_top1"]
    print(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {out}")
    return 0


def evaluate_args(p) -> None:
    add_model(p, "protopnet")
    add_split(p, SPLITS)
    add_json(p)
    add_out(p, help="also store the metrics under the split's key in this JSON file (e.g. assets/birdnet/metrics.json)")


def cmd_evaluate(args) -> int:
    from core.io.data import build_windows
    from core.io.fileio import atomic_write_text
    from core.io.split import DEFAULT_SPLIT_SCHEME
    from core.models.registry import load_checkpoint
    from core.training.train import evaluate

    out = out_path(args.out, (".json",))
    model = load_checkpoint(args.model)
    ds = open_args_dataset(args)
    check_models_split({args.model: model}, ds)
    c = model.config
    w = build_windows(ds, ds.split(args.split), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    m = evaluate(model, w)
    if out is not None:
        stored = json.loads(out.read_text()) if out.is_file() else {}
        if stored.get("split_scheme", DEFAULT_SPLIT_SCHEME) != ds.split_scheme:  # the other splits' figures: another split scheme
            stored = {}
        stored[args.split] = m
        stored["split_scheme"] = ds.split_scheme
        stored["command"] = f"python -m core evaluate --model {args.model} --split {args.split} --out {args.out}" + (
            f" --split-scheme {ds.split_scheme}" if ds.split_scheme != DEFAULT_SPLIT_SCHEME else "")
        atomic_write_text(out, json.dumps(stored, indent=2) + "\n")
    print(json.dumps(m, indent=2) if args.json else
          f"{args.model} on {args.split}: cmAP window {m['window']['cmap']:.3f} recording {m['recording']['cmap']:.3f}, "
          f"ROC-AUC {m['window']['roc_auc']:.3f}, top-1 {m['window']['top1']:.3f}")
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "train": Subcommand("train a model and write checkpoints/NAME.safetensors + NAME.json", train_args, cmd_train),
    "reference": Subcommand("fit the logistic-regression reference and write its metrics", reference_args, cmd_reference),
    "calibrate": Subcommand("choose each model's decision threshold on the validation split (stored in its card)", calibrate_args, cmd_calibrate),
    "open-set": Subcommand("give BirdNET heads the bird gate and a threshold that bird-free validation audio passes <= 1 %",
                           open_set_args, cmd_open_set),
    "open-set-seeds": Subcommand("head recipes over seeds: validation/test top-1, window recall and held-out false windows, mean and sd",
                                 open_set_seeds_args, cmd_open_set_seeds),
    "train-head": Subcommand("train a prototype or linear head on BirdNET's backbone, frozen or partly fine-tuned (cached features)",
                             train_head_args, cmd_train_head),
    "finetune-head": Subcommand("fine-tune a BirdNET head model adversarially (AT-O, AT-E) or clean (the OT+FT control)",
                                finetune_head_args, cmd_finetune_head),
    "head-study": Subcommand("prototype and linear heads on each candidate BirdNET layer (cached features): val and test metrics",
                             head_study_args, cmd_head_study),
    "evaluate": Subcommand("metrics of a checkpoint on a split", evaluate_args, cmd_evaluate),
}
