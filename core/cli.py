"""Command-line interface: ``python -m core {train,predict,attack,reference,evaluate,download,data}``.

Every error a user can cause ends in a one-line message on stderr and exit code 2;
nothing prints a traceback for bad input.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

from core.errors import CoreError, ParameterError

log = logging.getLogger("core")


def _csv_out(path: str) -> Path:
    """``--out`` of a command that writes one CSV table; ParameterError for any other extension."""
    out = Path(path)
    if out.suffix != ".csv":
        raise ParameterError(f"--out must end in .csv, got {out}")
    return out


def _names(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (model lists)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="dataset directory with manifest.csv (default: $BIRDSHIELD_DATA_DIR, then ../shared/data/xc9)")


def cmd_train(args) -> int:
    import torch
    from tqdm import tqdm

    from core.io.data import open_dataset
    from core.models.registry import CHECKPOINT_DIR, NAMED_CONFIGS, ModelConfig, build_model, load_checkpoint, save_checkpoint
    from core.training.train import TrainConfig, train_model

    if args.config not in NAMED_CONFIGS:
        raise ParameterError(f"--config must be one of {sorted(NAMED_CONFIGS)}, got {args.config!r}")
    dataset = open_dataset(args.data_dir)
    out_dir = Path(args.out_dir or CHECKPOINT_DIR)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = args.name or args.config
    log_path = out_dir / f"{name}.log"
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    torch.manual_seed(args.seed)
    config = ModelConfig(class_names=tuple(dataset.class_names), **NAMED_CONFIGS[args.config])
    cfg = TrainConfig(seed=args.seed)
    # AudioProtoPNet uses the asymmetric loss of the paper; the baseline trains far faster with BCE here
    cfg = replace(cfg, loss="asl" if config.arch == "protopnet" else "bce")
    keys = ("epochs", "warm_epochs", "last_layer_epochs", "batch_size", "lr", "loss", "adv", "adv_eps", "adv_snr_db", "adv_steps", "adv_random_start",
            "adv_alpha_ratio", "adv_beta", "awp_gamma",
            "awp_warmup")
    overrides = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    cfg = replace(cfg, **overrides)
    model = build_model(config)
    if args.init_backbone:
        donor = load_checkpoint(args.init_backbone, device="cpu")
        if donor.config.backbone != config.backbone or donor.config.frontend != config.frontend:
            raise ParameterError(f"--init-backbone {args.init_backbone}: its backbone/front end differ from {args.config}")
        model.backbone.load_state_dict(donor.backbone.state_dict())
        log.info("backbone initialised from %s", args.init_backbone)
    if args.init:
        donor = load_checkpoint(args.init, device="cpu")
        if donor.config != config:
            raise ParameterError(f"--init {args.init}: its config differs from {args.config} (classes, front end or architecture)")
        model.load_state_dict(donor.state_dict())
        log.info("all weights initialised from %s (fine-tuning)", args.init)
    bar = tqdm(total=0, unit="step", dynamic_ncols=True, disable=None)

    def progress(phase, epoch, epochs, step, steps, loss):
        if bar.total != steps:
            bar.reset(total=steps)
        bar.set_description(f"{phase} {epoch + 1}/{epochs}")
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.n = step
        bar.refresh()

    log.info("training %s (%s) on %s: %s", name, args.config, dataset.root, cfg)
    card = train_model(model, dataset, cfg, progress=progress, max_train_recordings=args.max_recordings)
    bar.close()
    card = {
        "name": name,
        "config_name": args.config,
        "command": args.command_line,
        "init_backbone": args.init_backbone,
        "init": args.init,
        "created": time.strftime("%Y-%m-%d"),
        **card,
    }
    ref_path = out_dir / "reference_logreg.json"
    if ref_path.is_file():
        card["reference"] = json.loads(ref_path.read_text())
    path = save_checkpoint(model, out_dir / f"{name}.safetensors", card)
    t = card["metrics"]["test"]
    print(f"saved {path}; test cmAP window {t['window']['cmap']:.3f} recording {t['recording']['cmap']:.3f}; "
          f"{card['train_seconds'] / 60:.1f} min")
    return 0


def cmd_reference(args) -> int:
    from core.io.data import open_dataset
    from core.models.registry import CHECKPOINT_DIR
    from core.studies.reference import reference_logreg

    result = reference_logreg(open_dataset(args.data_dir))
    out = Path(args.out or CHECKPOINT_DIR / "reference_logreg.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    t = result["metrics"]["test"]
    print(f"reference test cmAP window {t['window']['cmap']:.3f} recording {t['recording']['cmap']:.3f} -> {out}")
    return 0


def cmd_calibrate(args) -> int:
    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import BUILTIN_MODELS, load_checkpoint, update_model_card
    from core.training.calibration import builtin_threshold_path, calibrate_model

    ds = open_dataset(args.data_dir)
    for name in args.model:
        entry = calibrate_model(load_checkpoint(name), ds)
        if name in BUILTIN_MODELS:  # no card of ours: stored beside its measured metrics
            atomic_write_text(builtin_threshold_path(name), json.dumps(entry, indent=2) + "\n")
        else:
            update_model_card(name, decision_threshold=entry)
        print(f"{name}: threshold {entry['value']:.3f} on {entry['n_windows']} validation windows "
              f"(micro-F1 {entry['micro_f1']:.3f}, at 0.5 {entry['micro_f1_at_0.5']:.3f}; "
              f"{entry['mean_predicted']:.2f} species predicted per window)")
    return 0


def cmd_train_head(args) -> int:
    from core.io.data import open_dataset
    from core.models.birdnet import birdnet_files
    from core.models.birdnet_heads import HeadConfig, layer_tensor
    from core.models.registry import CHECKPOINT_DIR, save_checkpoint
    from core.models.tflite_graph import TFLiteFile
    from core.training.heads import train_birdnet_head

    cfg = HeadConfig(kind=args.head, prototypes_per_class=args.prototypes_per_class, epochs=args.epochs, lr=args.lr,
                     loss=args.loss, seed=args.seed)
    layer_tensor(TFLiteFile(birdnet_files()["model"]), args.layer)  # an unknown layer fails before any decoding
    if args.tuned_from:
        layer_tensor(TFLiteFile(birdnet_files()["model"]), args.tuned_from)
    if args.no_bird < 0:
        raise ParameterError(f"--no-bird must be >= 0, got {args.no_bird}")
    model, card = train_birdnet_head(open_dataset(args.data_dir), args.layer, cfg, tuned_from=args.tuned_from,
                                     lr_stage=args.lr_stage, no_bird=args.no_bird)
    card["command"] = "python -m core " + " ".join(sys.argv[1:])
    out = Path(args.out_dir or CHECKPOINT_DIR) / f"{args.name}.safetensors"
    save_checkpoint(model, out, card)
    m = card["metrics"]["test"]
    print(f"saved {out}; test cmAP window {m['window']['cmap']:.3f} recording {m['recording']['cmap']:.3f}, "
          f"recording top-1 {m['recording']['top1']:.3f} (val recording top-1 {card['metrics']['val']['recording']['top1']:.3f}); "
          f"{card['train_seconds'] / 60:.1f} min")
    return 0


def cmd_fetch_model(args) -> int:
    from core.models.published import PUBLISHED_MODELS
    from core.models.published_io import fetch_model

    dest = Path(args.dest or Path("checkpoints") / "published" / args.name)
    print(f"downloading {PUBLISHED_MODELS.get(args.name, {}).get('repo', args.name)} (weights and config.json only) into {dest} ...")
    fetch_model(args.name, dest)
    print(f"done; explain a clip with: python -m core explain-published --model {dest} --audio FILE")
    return 0


def cmd_explain_published(args) -> int:
    from core.io.audio import load_audio
    from core.models.published_io import explain_clip, load_published

    if args.offset < 0:
        raise ParameterError(f"--offset must be >= 0 seconds, got {args.offset}")
    model = load_published(args.model)
    fc = model.config.frontend
    clip = load_audio(args.audio, sample_rate=fc.sample_rate, offset_s=args.offset, duration_s=fc.clip_seconds)
    res = explain_clip(model, clip.waveform, top_k=args.top_k)
    if args.json:
        print(json.dumps([{**c, "prototypes": [{k: v for k, v in p.items() if k != "map"} for p in c["prototypes"]]} for c in res],
                         indent=2))
        return 0
    print(f"{args.audio} from {args.offset:g} s ({fc.clip_seconds:g} s at {fc.sample_rate} Hz), model {args.model}")
    for c in res:
        print(f"  {c['class_name']}: score {c['score']:.3f}")
        for p in c["prototypes"][: args.prototypes]:
            print(f"    prototype {p['prototype']}: similarity {p['similarity']:.3f} x weight {p['weight']:.3f}, "
                  f"at {p['t_s']:.2f} s, {p['f_hz']:.0f} Hz")
    return 0


def cmd_finetune_head(args) -> int:
    from core.io.data import open_dataset
    from core.models.birdnet_proto import BirdNETHeadModel
    from core.models.registry import CHECKPOINT_DIR, load_checkpoint, save_checkpoint
    from core.training.head_finetune import adversarial_finetune_head

    init = load_checkpoint(args.init)
    if not isinstance(init, BirdNETHeadModel):
        raise ParameterError(f"--init {args.init}: not a head on BirdNET (train one with train-head --tuned-from)")
    model, card = adversarial_finetune_head(open_dataset(args.data_dir), init, adv=args.adv, epochs=args.epochs,
                                            eps=args.adv_eps, beta=args.adv_beta, seed=args.seed)
    card["command"] = "python -m core " + " ".join(sys.argv[1:])
    out = Path(args.out_dir or CHECKPOINT_DIR) / f"{args.name}.safetensors"
    save_checkpoint(model, out, card)
    m = card["metrics"]["test"]
    print(f"saved {out}; test cmAP window {m['window']['cmap']:.3f}, recording top-1 {m['recording']['top1']:.3f} "
          f"(val recording top-1 {card['metrics']['val']['recording']['top1']:.3f}); {card['train_seconds'] / 60:.1f} min")
    return 0


def cmd_audit(args) -> int:
    from core.io.data import build_windows, open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint, update_model_card
    from core.studies.audit import audit_summary, prototype_audit, song_bands

    out = _csv_out(args.out)
    model = load_checkpoint(args.model)
    ds = open_dataset(args.data_dir)
    c = model.config
    w = build_windows(ds, ds.split(args.split), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    table = audit_summary(prototype_audit(model, w, max_windows_per_class=args.max_windows, n_random=args.n_random), song_bands())
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    s = {"split": args.split, "windows_per_prototype": args.max_windows, "random_regions": args.n_random,
         "median_drop_ratio": float(table["drop_ratio"].median()), "share_beating_random": float((table["wins"] > 0.5).mean()),
         "median_act_own": float(table["act_own"].median()), "median_act_other": float(table["act_other"].median()),
         "plausibility": table["plausibility"].value_counts().to_dict(), "table": str(out)}
    update_model_card(args.model, audit=s)
    print(f"{args.model}: deletion drop / random drop, median {s['median_drop_ratio']:.2f}; prototypes whose region beats "
          f"random in most windows {s['share_beating_random']:.2f}; similarity own class {s['median_act_own']:.2f} vs other "
          f"{s['median_act_other']:.2f}; plausibility {s['plausibility']}")
    print(f"written to {out} and the model card")
    return 0


def cmd_head_study(args) -> int:
    import pandas as pd

    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.studies.heads import layer_study

    out = _csv_out(args.out)
    layers = [x.strip() for x in args.layers.split(",") if x.strip()]
    if args.finetune_from:
        from core.studies.heads import finetune_study

        if len(layers) != 1:
            raise ParameterError(f"--finetune-from needs exactly one --layers (the head's layer), got {len(layers)}")
        if args.lr_stage <= 0:
            raise ParameterError(f"--lr-stage must be > 0, got {args.lr_stage}")
        rows = pd.DataFrame(finetune_study(open_dataset(args.data_dir), layer=layers[0], from_layer=args.finetune_from,
                                           lr_stage=args.lr_stage))
        cols = ["layer", "head", "backbone"]
    else:
        rows = pd.DataFrame(layer_study(open_dataset(args.data_dir), layers))
        cols = ["layer", "head", "map", "cell_s"]
    atomic_write_text(out, rows.to_csv(index=False, float_format="%.4g"))
    cols += ["val_window_cmap", "val_recording_top1", "test_window_cmap", "test_recording_top1"]
    print(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {out}")
    return 0


def cmd_evaluate(args) -> int:
    from core.io.data import build_windows, open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint
    from core.training.train import evaluate

    if args.out and Path(args.out).suffix != ".json":
        raise ParameterError(f"--out must end in .json, got {args.out}")
    model = load_checkpoint(args.model)
    ds = open_dataset(args.data_dir)
    c = model.config
    w = build_windows(ds, ds.split(args.split), sample_rate=c.frontend.sample_rate, window_s=c.clip_seconds, class_names=c.class_names)
    m = evaluate(model, w)
    if args.out:
        out = Path(args.out)
        stored = json.loads(out.read_text()) if out.is_file() else {}
        stored[args.split] = m
        stored["command"] = f"python -m core evaluate --model {args.model} --split {args.split} --out {args.out}"
        atomic_write_text(out, json.dumps(stored, indent=2) + "\n")
    print(json.dumps(m, indent=2) if args.json else
          f"{args.model} on {args.split}: cmAP window {m['window']['cmap']:.3f} recording {m['recording']['cmap']:.3f}, "
          f"ROC-AUC {m['window']['roc_auc']:.3f}, top-1 {m['window']['top1']:.3f}")
    return 0


def cmd_predict(args) -> int:
    from core.field.inference import predict_file
    from core.models.registry import load_checkpoint

    model = load_checkpoint(args.model)
    res = predict_file(model, args.file)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['file']}: {res['duration_s']:.1f} s, {len(res['windows'])} window(s), model {args.model}")
        for w in res["windows"]:
            top = ", ".join(f"{t['species']} {t['score']:.2f}" for t in w["top"])
            print(f"  {w['start_s']:6.1f} s  {top}")
        top = ", ".join(f"{t['species']} {t['score']:.2f}" for t in res["top"])
        print(f"  recording (max over windows): {top}")
    return 0


def cmd_analyze(args) -> int:
    from tqdm import tqdm

    from core.field.analyze import analyze_file, audio_files, model_band_hz, species_names
    from core.field.tables import detections, to_birdnet_csv, to_raven_table, window_outcomes
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint

    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - {"birdnet", "raven", "windows"})
    if bad or not formats:
        raise ParameterError(f"--format takes birdnet, raven and/or windows, got {args.format!r}")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ParameterError(f"--threshold must lie in (0, 1), got {args.threshold}")
    files = audio_files(args.path, recursive=args.recursive)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out must be a directory, got the file {out}")
    model = load_checkpoint(args.model)
    names = species_names(model.config.class_names, model)
    band = model_band_hz(model)
    failed = 0
    for f in files:
        bar = tqdm(total=0, unit="s", dynamic_ncols=True, disable=None, desc=f.name)

        def progress(done, total, bar=bar):
            bar.total = round(total) or None
            bar.n = round(done)
            bar.refresh()

        try:
            res = analyze_file(model, f, model_name=args.model, threshold=args.threshold,
                               threshold_source="--threshold" if args.threshold is not None else "", progress=progress)
        except CoreError as exc:
            bar.close()
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        bar.close()
        if res.threshold is None:
            raise ParameterError(f"model {args.model} has no validation threshold in its card: give --threshold")
        dets = detections(res, names=names)
        wins = window_outcomes(res, names=names)
        stem = out / f.stem
        if "birdnet" in formats:
            atomic_write_text(stem.with_name(f.stem + ".BirdNET.results.csv"), to_birdnet_csv(dets))
        if "raven" in formats:
            atomic_write_text(stem.with_name(f.stem + ".BirdNET.selection.table.txt"), to_raven_table(dets, low_hz=band[0], high_hz=band[1]))
        if "windows" in formats:
            atomic_write_text(stem.with_name(f.stem + ".windows.csv"), wins.to_csv(index=False, float_format="%.4f"))
        found = dets.groupby("english_name")["confidence"].agg(["size", "max"]).sort_values("size", ascending=False)
        say = ", ".join(f"{n} {int(r['size'])}" for n, r in found.iterrows()) or "none"
        print(f"{f.name}: {res.duration_s:.1f} s, {len(wins)} windows of {res.window_s:g} s in {res.info['seconds']:.1f} s; "
              f"threshold {res.threshold:.3f} ({res.threshold_source}); no bird in {int((wins['n_species'] == 0).sum())} windows; "
              f"detections by species: {say}"
              + (f"; the last {res.unanalysed_s:.1f} s (under half a window) are not analysed" if res.unanalysed_s > 0 else ""))
    print(f"written to {out}/")
    return 1 if failed else 0


def cmd_no_bird_check(args) -> int:
    import pandas as pd

    from core.field.nobird import no_bird_check
    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint

    out = _csv_out(args.out)
    names = _names(args.models)
    models = {n: load_checkpoint(n) for n in names}
    table = no_bird_check(models, dataset=open_dataset(args.data_dir), n_windows=args.windows)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    with pd.option_context("display.width", 200):
        print(table.pivot(index="model", columns="signal", values="no_bird_rate").loc[names].to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"written to {out}")
    return 0


def cmd_threats(args) -> int:
    import pandas as pd

    from core.attacks.sweep import parse_float_list
    from core.attacks.threat_studies import survival_study, survival_summary
    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint

    out = _csv_out(args.out)
    snrs = parse_float_list(args.snr, "--snr")
    names = _names(args.models)
    models = {n: load_checkpoint(n) for n in names}
    ds = open_dataset(args.data_dir)

    def progress(done, total):
        print(f"\r{done}/{total} attack batches", end="", file=sys.stderr, flush=True)

    table = survival_study(models, ds, split=args.split, max_clips=args.max_clips, snr_db=snrs, steps=args.steps,
                           eot_samples=args.eot_samples, seed=args.seed, progress=progress)
    print(file=sys.stderr)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.5g"))
    summary = survival_summary(table)
    with pd.option_context("display.width", 220, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"written to {out}")
    return 0


def cmd_masking_attack(args) -> int:
    import pandas as pd

    from core.attacks.threat_studies import masking_study, masking_summary
    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.models.registry import load_checkpoint

    out = _csv_out(args.out)
    names = _names(args.models)
    models = {n: load_checkpoint(n) for n in names}
    table = masking_study(models, open_dataset(args.data_dir), split=args.split, max_clips=args.max_clips, steps=args.steps,
                          seed=args.seed, progress=lambda d, t: print(f"\r{d}/{t} attack batches", end="", file=sys.stderr, flush=True))
    print(file=sys.stderr)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.5g"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(masking_summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"written to {out}")
    return 0


def cmd_attack(args) -> int:
    from core.field.inference import attack_file
    from core.io.audio import wav_bytes
    from core.models.registry import load_checkpoint

    model = load_checkpoint(args.model)
    res, adv = attack_file(model, args.file, eps=args.eps, steps=args.steps, alpha=args.alpha, seed=args.seed)
    if args.out:
        Path(args.out).write_bytes(wav_bytes(adv, model.config.frontend.sample_rate))
        res["out"] = args.out
        res["out_sample_rate"] = model.config.frontend.sample_rate
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['file']}: PGD eps={args.eps:g} steps={args.steps}, SNR {res['snr_db']:.1f} dB, L-inf {res['linf']:.5f}")
        for w in res["windows"]:
            before = ", ".join(f"{t['species']} {t['score']:.2f}" for t in w["top_before"])
            after = ", ".join(f"{t['species']} {t['score']:.2f}" for t in w["top_after"])
            print(f"  {w['start_s']:6.1f} s  before: {before}\n          after:  {after}")
        if args.out:
            print(f"perturbed audio written to {args.out} (mono, {model.config.frontend.sample_rate / 1000:g} kHz: the signal the model "
                  "heard, after down-mixing and resampling)")
    return 0


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{option} must be comma-separated numbers, e.g. 0,1e-4,1e-3; got {text!r}") from None


def _load_models(text: str, *, same_rate: bool = True) -> tuple[dict, int, int]:
    """Checkpoints named in ``--models`` (comma-separated), and the first one's sample rate and window length.

    With ``same_rate`` (default) every model must share them.
    """
    from core.models.registry import load_checkpoint

    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ParameterError("--models needs at least one checkpoint name")
    models = {n: load_checkpoint(n) for n in names}
    if not same_rate:
        return models, 0, 0
    first = next(iter(models.values()))
    sr, win = first.config.frontend.sample_rate, first.config.window_samples
    if any((m.config.frontend.sample_rate, m.config.window_samples) != (sr, win) for m in models.values()):
        raise ParameterError("all --models must share the sample rate and window length")
    return models, sr, win


def cmd_transfer(args) -> int:
    from core.io.data import open_dataset
    from core.studies.sweep import write_table
    from core.studies.transfer import TransferSettings, transfer_summary, transfer_table

    settings = TransferSettings(split=args.split, max_segments=args.max_segments, segment_seconds=args.segment_seconds,
                                eps=args.eps, steps=args.steps, objective=args.objective, seed=args.seed)
    if args.out and Path(args.out).suffix not in (".csv", ".parquet"):
        raise ParameterError(f"--out must end in .csv or .parquet, got {args.out}")
    models, _, _ = _load_models(args.models, same_rate=False)
    ds = open_dataset(args.data_dir)
    t0 = time.time()
    from tqdm import tqdm

    bar = tqdm(total=1, unit="segment", dynamic_ncols=True, disable=None, desc="transfer")

    def progress(done, total):
        bar.total, bar.n = total, done
        bar.refresh()

    table = transfer_table(models, ds, settings, progress=progress)
    bar.close()
    if args.out:
        write_table(table, args.out)
    summary = transfer_summary(table)
    print(summary.round(3).to_string(index=False))
    print(f"{len(table)} rows in {time.time() - t0:.0f} s" + (f"; table written to {args.out}" if args.out else ""))
    return 0


def cmd_embed_metrics(args) -> int:
    from core.io.data import open_dataset
    from core.studies.embeddings import EmbeddingCache, embedding_markdown, embedding_table
    from core.studies.sweep import write_table

    if args.out and Path(args.out).suffix not in (".csv", ".parquet"):
        raise ParameterError(f"--out must end in .csv or .parquet, got {args.out}")
    if args.steps < 1:
        raise ParameterError(f"--steps must be >= 1, got {args.steps}")
    models, _, _ = _load_models(args.models, same_rate=False)
    ds = open_dataset(args.data_dir)
    t0 = time.time()
    table = embedding_table(models, ds, split=args.split, eps=args.eps, steps=args.steps, seed=args.seed, cache=EmbeddingCache())
    if args.out:
        write_table(table, args.out)
    print(embedding_markdown(table))
    print(f"{time.time() - t0:.0f} s" + (f"; table written to {args.out}" if args.out else ""))
    return 0


def _through(text: str | None) -> dict:
    """``--through mp3-128,playback-1m`` -> the transformations (:func:`core.attacks.threats.threat_choices`)."""
    if not text:
        return {}
    from core.attacks.threats import threat_choices

    choices = threat_choices()
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in choices]
    if unknown:
        raise ParameterError(f"--through: unknown transformation(s) {unknown}; choose from {', '.join(choices)}")
    return {t: choices[t][1] for t in names}


def cmd_sweep(args) -> int:
    from tqdm import tqdm

    from core.attacks.sweep import minimal_eps
    from core.studies.distributed import SweepOptions, sweep_groups, sweep_sharded, sweep_single_process
    from core.studies.sweep import summarize, write_table

    if (args.epsilons is None) == (args.snr is None):
        raise ParameterError("give exactly one of --epsilons (full-scale amplitude) and --snr (dB)")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names:
        raise ParameterError("--models needs at least one checkpoint name")
    _through(args.through)  # unknown names fail before any work
    opts = SweepOptions(models=tuple(names), epsilons=tuple(_floats(args.epsilons, "--epsilons")) if args.epsilons is not None else None,
                        snr_db=tuple(_floats(args.snr, "--snr")) if args.snr is not None else None, attack=args.attack, norm=args.norm,
                        objective=args.objective, steps=args.steps, seed=args.seed, target_species=args.target_species,
                        mode=args.mode, target_clip=args.target_clip, prototype=args.prototype, k=args.k, split=args.split,
                        species=args.species, max_clips=args.max_clips, data_dir=args.data_dir, batch_clips=args.batch_clips,
                        through=tuple(t.strip() for t in (args.through or "").split(",") if t.strip()), masking=args.masking)
    if opts.batch_clips is None:  # 4 on a CPU; on CUDA enough clips to fill one pass (measured on the first model)
        from core.io.device import clips_per_batch, get_device

        per_batch = 4
        if get_device().type == "cuda":  # only then is a model needed to size the batch
            from core.models.registry import load_checkpoint

            first = load_checkpoint(names[0])
            grid = opts.epsilons if opts.epsilons is not None else opts.snr_db
            per_batch = clips_per_batch(first, first.config.window_samples, len(grid) + 1)
        opts = replace(opts, batch_clips=per_batch)
    args.batch_clips = opts.batch_clips
    out = Path(args.out)
    if args.shards is not None:
        bar = tqdm(total=1, unit="shard", dynamic_ncols=True, disable=None, desc="shards")

        def progress(done, total):
            bar.total, bar.n = total, done
            bar.refresh()

        table = sweep_sharded(opts, out, n_shards=args.shards, address=args.ray_address, num_cpus=args.workers, progress=progress)
        bar.close()
    else:
        bar = tqdm(total=1, unit="clip", dynamic_ncols=True, disable=None)

        def progress(done, total):
            bar.total, bar.n = total, done
            bar.refresh()

        table = sweep_single_process(opts, out, progress=progress)
        bar.close()
    summary = summarize(table)
    cols = ["model", "budget_kind", "budget", "n_clips", "cmap", "success_rate", "prs", "drs", "tars", "snr_db"]
    cols += [c for c in summary.columns if c == "above_masking" or c.startswith("success_rate_after:")]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"{len(table)} rows written to {out}")
    if args.minimal_eps:
        import pandas as pd
        import torch

        rows = []
        for g in sweep_groups(opts):
            clips = g["clips"]
            for name, model in g["models"].items():
                x = torch.as_tensor(clips.waveforms, device=next(model.parameters()).device)
                for b in range(0, len(clips), args.batch_clips):
                    sl = slice(b, b + args.batch_clips)
                    found = minimal_eps(g["make"](model), model, x[sl], torch.as_tensor(clips.labels[sl]),
                                        masks=torch.as_tensor(clips.masks[sl]), iterations=args.iterations)
                    for i, cid in enumerate(clips.clip_ids[sl]):
                        rows.append({"model": name, "clip": cid, "species": clips.species[b + i], "min_eps": found["eps"][i],
                                     "snr_db": found["snr_db"][i], "db_x": found["db_x"][i], "found": bool(found["found"][i])})
        min_out = out.with_name(out.stem + "_min_eps" + out.suffix)
        min_table = pd.DataFrame(rows)
        write_table(min_table, min_out)
        print(min_table.groupby("model")[["min_eps", "snr_db"]].median().to_string(float_format=lambda v: f"{v:.4g}"))
        print(f"minimal flipping eps per clip written to {min_out}")
    return 0


def cmd_shift(args) -> int:
    from core.io.clips import dataset_clips
    from core.io.data import open_dataset
    from core.studies.shift import shift_evaluation, split_noise_bank
    from core.studies.sweep import write_table

    models, sr, win = _load_models(args.models)
    first = next(iter(models.values()))
    dataset = open_dataset(args.data_dir)
    clips = dataset_clips(dataset, split=args.split, class_names=first.config.class_names, sample_rate=sr, window_samples=win,
                          max_clips=args.max_clips)
    bank = split_noise_bank(dataset, args.split, sr, win)
    table = shift_evaluation(models, clips, bank=bank, snr_db=args.snr, gain_db=args.gain, lam=args.mix, seed=args.seed)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.out:
        write_table(table, args.out)
        print(f"written to {args.out}")
    return 0


def cmd_arms(args) -> int:
    from tqdm import tqdm

    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.training.seeds import arm_markdown, arm_table, parse_arms

    arms = parse_arms(args.arm)
    if args.out and Path(args.out).suffix != ".csv":
        raise ParameterError(f"--out must end in .csv, got {args.out}")
    bar = tqdm(total=sum(len(v) for v in arms.values()), desc="models", disable=None)
    table = arm_table(arms, open_dataset(args.data_dir), eps=args.eps, max_clips=args.max_clips, steps=args.steps,
                      strong_steps=args.strong_steps, seed=args.seed, progress=lambda d, t: bar.update(d - bar.n))
    bar.close()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(arm_markdown(table))
    if args.out:
        atomic_write_text(args.out, table.to_csv(index=False))
        print(f"written to {args.out}")
    return 0


def cmd_noise_bank(args) -> int:
    from tqdm import tqdm

    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text
    from core.training.noisebank import bank_path, vet_noise_windows

    dataset = open_dataset(args.data_dir)
    out = Path(args.out) if args.out else bank_path(dataset)
    if out.suffix != ".csv":
        raise ParameterError(f"--out must end in .csv, got {out}")
    bar = tqdm(total=len(dataset.available()), desc="recordings", disable=None)

    def progress(done, total):
        bar.update(done - bar.n)

    table = vet_noise_windows(dataset, candidates=args.candidates, threshold=args.threshold, progress=progress)
    bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    kept = table[table["kept"]]
    print(f"{len(kept)} of {len(table)} candidate windows kept (BirdNET < {args.threshold:g} for every animal class), "
          f"from {kept['recording_id'].nunique()} recordings; per split: "
          + ", ".join(f"{s} {int((kept['split'] == s).sum())}" for s in ("train", "val", "test")))
    print(f"written to {out}")
    return 0


def cmd_compare(args) -> int:
    import pandas as pd

    from core.attacks.sweep import parse_float_list as _float_list
    from core.io.data import open_dataset
    from core.studies.compare import ZOO, CompareSettings, model_summary, run_compare
    from core.studies.compare_store import CompareStore
    from core.studies.papercheck import paper_check

    settings = CompareSettings(
        split=args.split, max_clips=args.max_clips, shift_max_clips=args.shift_max_clips,
        epsilons=_float_list(args.epsilons, "--epsilons"), target_epsilons=_float_list(args.target_epsilons, "--target-epsilons"),
        steps=args.steps, seed=args.seed, strong=args.strong, strong_steps=args.strong_steps, restarts=args.restarts,
    )
    models, _, _ = _load_models(args.models or ",".join(ZOO), same_rate=False)  # run_compare groups models by window
    dataset = open_dataset(args.data_dir)
    store = CompareStore(args.out) if args.out else CompareStore()
    from core.studies.embeddings import model_fingerprint

    result = None if args.recompute else store.find(settings, {n: model_fingerprint(m) for n, m in models.items()})
    if result is None:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="clip", disable=None)

        def progress(stage, done, total):
            bar.set_description(stage)
            bar.total = total
            bar.n = done
            bar.refresh()

        from core.io.device import clips_per_batch

        first = next(iter(models.values()))  # 4 clips per batch on a CPU; on CUDA enough to fill a pass
        per_batch = clips_per_batch(first, first.config.window_samples, len(settings.epsilons))
        result = run_compare(models, dataset, settings, progress=progress, clips_per_batch=per_batch)
        bar.close()
        result.info["command"] = args.command_line
        where = store.save(result)
        if settings.split == "test":  # the claims are about held-out test recordings
            result.claims = paper_check(result, n_boot=args.n_boot, seed=args.boot_seed)
            store.save(result)
        print(f"computed in {result.seconds / 60:.1f} min; saved to {where}")
    else:
        print("found a stored result for these settings and weights (--recompute to compute again)")
        if args.recheck:
            result.claims = paper_check(result, n_boot=args.n_boot, seed=args.boot_seed)
            print(f"paper check recomputed from the stored tables; saved to {store.save(result)}")
    with pd.option_context("display.width", 200, "display.max_columns", 50):
        print(model_summary(result).set_index("model").T.to_string(float_format=lambda v: f"{v:.3f}"))
        from core.attacks.worstcase import masking_check

        checks = masking_check(result.robustness)
        for r in checks[checks["warning"] != ""].itertuples() if not checks.empty else []:
            print(f"gradient-masking check: {r.model} at eps {r.eps:g}: {r.warning}")
        if result.claims is not None and len(result.claims):
            cols = ["key", "ours", "ci_low", "ci_high", "p_holm", "direction", "detail"]
            print(result.claims[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if args.update_cards:
        from core.models.registry import BUILTIN_MODELS, update_model_card
        from core.studies.compare import card_robustness

        ours = [n for n in result.models if n not in BUILTIN_MODELS]  # BirdNET's card is built in code, never written
        for name in ours:
            update_model_card(name, robustness=card_robustness(result, name))
        print(f"model cards updated: {', '.join(ours)}")
    return 0


def cmd_download(args) -> int:
    from tqdm import tqdm

    from core.io.data import REPO_ROOT, download_dataset

    dest = Path(args.dest or REPO_ROOT / "data" / "xc9")
    bar = tqdm(total=0, unit="rec", disable=None)

    def progress(done, total, rid):
        bar.total = total
        bar.n = done
        bar.set_description(rid)
        bar.refresh()

    download_dataset(dest, progress=progress)
    bar.close()
    print(f"dataset ready in {dest}")
    return 0


def cmd_data(args) -> int:
    from core.io.data import candidate_data_dirs, open_dataset

    ds = open_dataset(args.data_dir)
    print(f"{ds.root}: {len(ds)} recordings ({len(ds.available())} on disk), {len(ds.class_names)} classes")
    for s in ("train", "val", "test"):
        print(f"  {s}: {len(ds.split(s))} recordings")
    print("search order: " + ", ".join(str(p) for p in candidate_data_dirs(args.data_dir)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="birdshield: explain and attack bird-sound classifiers")
    sub = p.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train a model and write checkpoints/NAME.safetensors + NAME.json")
    t.add_argument("--config", required=True, help="named config: baseline-small, protopnet-small, baseline-paper, protopnet-paper")
    t.add_argument("--name", help="checkpoint name (default: the config name)")
    t.add_argument("--init-backbone", help="checkpoint whose backbone initialises this model (AudioProtoPNet)")
    t.add_argument("--init", help="checkpoint of the same config whose weights initialise the whole model (fine-tuning, e.g. adversarial)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--warm-epochs", type=int)
    t.add_argument("--last-layer-epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--loss", choices=["asl", "bce"], help="default: asl for protopnet, bce for baseline")
    t.add_argument("--adv", choices=["none", "at-o", "at-e"], help="adversarial training: output space (at-o) or embedding space (at-e)")
    t.add_argument("--adv-eps", type=float, help="L-inf budget of the training perturbations, full-scale amplitude (default 1e-4)")
    t.add_argument("--adv-snr", dest="adv_snr_db", type=float, help="budget as a target SNR in dB per clip instead of --adv-eps")
    t.add_argument("--adv-steps", type=int, help="1 = FGSM-RS (default; FGSM with --adv-no-random-start); more = PGD steps")
    t.add_argument("--adv-no-random-start", dest="adv_random_start", action="store_false", default=None,
                   help="start from the clean waveform (plain FGSM; known to overfit catastrophically, Wong et al. 2020)")
    t.add_argument("--adv-alpha-ratio", type=float, help="step size / eps (default 1.25 for FGSM-RS, 2.5/steps for PGD)")
    t.add_argument("--adv-beta", type=float, help="weight of the TRADES-style adversarial term (default 1)")
    t.add_argument("--awp-gamma", type=float, help="adversarial weight perturbation, relative size (e.g. 0.005; default 0 = off)")
    t.add_argument("--awp-warmup", type=int, help="epochs of each phase before AWP starts (default 1)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--max-recordings", type=int, help="use only N recordings per class and split (smoke test)")
    t.add_argument("--out-dir", help="directory for the checkpoint (default: checkpoints/)")
    _add_data_dir(t)
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reference", help="fit the logistic-regression reference and write its metrics")
    r.add_argument("--out")
    _add_data_dir(r)
    r.set_defaults(func=cmd_reference)

    cal = sub.add_parser("calibrate", help="choose each model's decision threshold on the validation split (stored in its card)")
    cal.add_argument("--model", nargs="+", required=True, help="checkpoint names or paths (not BirdNET: its card is built in)")
    _add_data_dir(cal)
    cal.set_defaults(func=cmd_calibrate)

    th = sub.add_parser("train-head", help="train a prototype or linear head on BirdNET's backbone, frozen or partly fine-tuned (cached features)")
    th.add_argument("--name", required=True)
    th.add_argument("--layer", default="ACT_POST")
    th.add_argument("--head", default="prototype", choices=["prototype", "linear"])
    th.add_argument("--prototypes-per-class", type=int, default=10)
    th.add_argument("--epochs", type=int, default=60)
    th.add_argument("--lr", type=float, default=5e-2, help="Adam lr of the prototypes (linear head: of its weights)")
    th.add_argument("--loss", default="asl", choices=["asl", "bce"])
    th.add_argument("--seed", type=int, default=0)
    th.add_argument("--tuned-from", metavar="LAYER",
                    help="fine-tune BirdNET's layers from LAYER's output up to --layer with the head (e.g. BLOCK_3-4_ADD); "
                         "default: BirdNET frozen")
    th.add_argument("--lr-stage", type=float, default=1e-4, help="Adam learning rate of the tuned layers (default 1e-4)")
    th.add_argument("--no-bird", type=int, default=0, metavar="N",
                    help="add N synthetic no-bird windows (noise, tones) and the train split's bird-free site noise as "
                         "negatives (all-zero targets); default 0")
    th.add_argument("--out-dir", help="default checkpoints/")
    _add_data_dir(th)
    th.set_defaults(func=cmd_train_head)

    ft = sub.add_parser("finetune-head", help="fine-tune a BirdNET head model adversarially (AT-O, AT-E) or clean (the OT+FT control)")
    ft.add_argument("--init", required=True, help="a head model with tuned BirdNET layers, e.g. birdnet_protopnet")
    ft.add_argument("--name", required=True)
    ft.add_argument("--adv", required=True, choices=["at-o", "at-e", "none"],
                    help="output space (at-o), embedding space (at-e), or none: the same epochs on clean windows (control)")
    ft.add_argument("--epochs", type=int, default=4)
    ft.add_argument("--adv-eps", type=float, default=1e-4, help="L-inf budget of the FGSM-RS training perturbations, full-scale amplitude")
    ft.add_argument("--adv-beta", type=float, default=1.0, help="weight of the TRADES-style adversarial term")
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--out-dir", help="default checkpoints/")
    _add_data_dir(ft)
    ft.set_defaults(func=cmd_finetune_head)

    au = sub.add_parser("audit", help="audit a BirdNET prototype head: where prototypes fire, deletion vs random regions, plausibility")
    au.add_argument("--model", default="birdnet_protopnet")
    au.add_argument("--split", default="test", choices=["val", "test"])
    au.add_argument("--max-windows", type=int, default=12, help="own-class windows per prototype")
    au.add_argument("--n-random", type=int, default=4, help="random regions per window (the control)")
    au.add_argument("--out", default="assets/birdnet_heads/audit.csv")
    _add_data_dir(au)
    au.set_defaults(func=cmd_audit)

    hs = sub.add_parser("head-study", help="prototype and linear heads on each candidate BirdNET layer (cached features): val and test metrics")
    hs.add_argument("--layers", default="BLOCK_2-4_ADD,BLOCK_3-5_ADD,ACT_POST,POST_ACT_1")
    hs.add_argument("--out", default="assets/birdnet_heads/layers.csv")
    hs.add_argument("--finetune-from", metavar="LAYER",
                    help="instead of the layer study: frozen vs fine-tuned from LAYER up to the one --layers (e.g. BLOCK_3-4_ADD)")
    hs.add_argument("--lr-stage", type=float, default=1e-4, help="Adam learning rate of the fine-tuned layers (default 1e-4)")
    _add_data_dir(hs)
    hs.set_defaults(func=cmd_head_study)

    e = sub.add_parser("evaluate", help="metrics of a checkpoint on a split")
    e.add_argument("--model", default="protopnet")
    e.add_argument("--split", default="test", choices=["train", "val", "test"])
    e.add_argument("--json", action="store_true")
    e.add_argument("--out", help="also store the metrics under the split's key in this JSON file (e.g. assets/birdnet/metrics.json)")
    _add_data_dir(e)
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="species scores for an audio file, per 5 s window")
    pr.add_argument("file")
    pr.add_argument("--model", default="protopnet")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_predict)

    an = sub.add_parser("analyze", help="whole recordings of any length (streamed): detections per window, selection tables")
    an.add_argument("path", help="an audio file or a directory of them")
    an.add_argument("--model", default="protopnet")
    an.add_argument("--out", required=True, help="directory for the tables (created)")
    an.add_argument("--threshold", type=float, help="score cut-off in (0, 1) (default: the model's validation threshold)")
    an.add_argument("--format", default="birdnet,raven,windows",
                    help="comma-separated: birdnet (BirdNET-Analyzer CSV), raven (selection table), windows (every window's outcome)")
    an.add_argument("--recursive", action="store_true", help="also analyse audio files in sub-directories")
    an.set_defaults(func=cmd_analyze)

    nb = sub.add_parser("no-bird-check", help="how often each model says 'no bird' on silence, a tone, noise and bird-free site noise")
    nb.add_argument("--models", default="baseline,protopnet,birdnet_protopnet,birdnet_linear,birdnet")
    nb.add_argument("--windows", type=int, default=8, help="windows of each synthetic control (default 8)")
    nb.add_argument("--out", default="assets/analyze/no_bird.csv")
    _add_data_dir(nb)
    nb.set_defaults(func=cmd_no_bird_check)

    tt = sub.add_parser("threats", help="do attacks survive MP3 at 128 kbps and playback at 1 m and 10 m? with and without EOT")
    tt.add_argument("--models", default="birdnet,birdnet_protopnet")
    tt.add_argument("--split", default="test", choices=["val", "test"])
    tt.add_argument("--max-clips", type=int, default=24, help="windows per model, spread over the species")
    tt.add_argument("--snr", default="40,30", help="budgets as SNR of the perturbation [dB], comma-separated")
    tt.add_argument("--steps", type=int, default=20)
    tt.add_argument("--eot-samples", type=int, default=4, help="random transformations per EOT step")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--out", default="assets/threats/survival.csv")
    _add_data_dir(tt)
    tt.set_defaults(func=cmd_threats)

    ma = sub.add_parser("masking-attack", help="attacks kept under the clean clip's psychoacoustic masking threshold vs L-inf PGD at the same SNR")
    ma.add_argument("--models", default="birdnet,birdnet_protopnet")
    ma.add_argument("--split", default="test", choices=["val", "test"])
    ma.add_argument("--max-clips", type=int, default=24)
    ma.add_argument("--steps", type=int, default=30)
    ma.add_argument("--seed", type=int, default=0)
    ma.add_argument("--out", default="assets/threats/masking.csv")
    _add_data_dir(ma)
    ma.set_defaults(func=cmd_masking_attack)

    a = sub.add_parser("attack", help="PGD attack (L-inf, waveform domain) on an audio file")
    a.add_argument("file")
    a.add_argument("--model", default="protopnet")
    a.add_argument("--eps", type=float, required=True, help="L-inf budget in full-scale amplitude, e.g. 0.002")
    a.add_argument("--steps", type=int, default=10, help="PGD steps (1 = FGSM)")
    a.add_argument("--alpha", type=float, default=None, help="step size (default 2.5 * eps / steps)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", help="write the perturbed audio to this WAV file")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_attack)

    sw = sub.add_parser("sweep", help="attack a dataset split at every eps of a grid; writes a tidy, resumable table")
    sw.add_argument("--models", default="baseline,protopnet", help="comma-separated checkpoint names")
    sw.add_argument("--attack", default="pgd", choices=["fgsm", "bim", "pgd"])
    sw.add_argument("--norm", default="linf", choices=["linf", "l2"])
    sw.add_argument("--objective", default="output-untargeted",
                    choices=["output-untargeted", "output-margin", "output-targeted", "embedding-untargeted", "embedding-targeted",
                             "prototype-suppress", "prototype-activate"])
    sw.add_argument("--epsilons", help="comma-separated eps grid in full-scale amplitude, e.g. 0,1e-5,1e-4,1e-3")
    sw.add_argument("--snr", help="comma-separated grid of target SNR in dB instead of eps, e.g. 60,50,40,30")
    sw.add_argument("--steps", type=int, default=10)
    sw.add_argument("--seed", type=int, default=0)
    sw.add_argument("--split", default="test", choices=["train", "val", "test"])
    sw.add_argument("--species", help="only clips of this species code")
    sw.add_argument("--max-clips", type=int, help="at most N clips, spread over the split")
    sw.add_argument("--target-species", help="output-targeted: species code to add or remove")
    sw.add_argument("--mode", default="add", choices=["add", "remove"], help="output-targeted: add or remove the species")
    sw.add_argument("--target-clip", help="embedding-targeted: recording id whose first window is the target")
    sw.add_argument("--prototype", help="prototype-activate: index or CODE:j")
    sw.add_argument("--k", type=int, default=3, help="prototype-suppress: number of prototypes")
    sw.add_argument("--batch-clips", type=int, help="clips attacked together (default 4 on a CPU, enough to fill a GPU on CUDA)")
    sw.add_argument("--through", metavar="T1,T2",
                    help="also score every clip after these transformations (mp3-128, mp3-64, playback-1m, playback-10m, "
                         "room-3m, noise-20): does the attack survive them? the clean rows are the control")
    sw.add_argument("--masking", action="store_true", help="also measure each perturbation's share above the clip's masking threshold")
    sw.add_argument("--minimal-eps", action="store_true", help="also find each clip's minimal flipping eps (bisection)")
    sw.add_argument("--iterations", type=int, default=7, help="bisection steps for --minimal-eps (after one attack per decade)")
    sw.add_argument("--shards", type=int, metavar="N",
                    help="run as N independent, resumable shards per group on Ray (a local instance unless --ray-address)")
    sw.add_argument("--ray-address", help="Ray cluster address for --shards (e.g. auto, ray://host:10001); default: local")
    sw.add_argument("--workers", type=int, help="CPUs of the local Ray instance (default: all)")
    sw.add_argument("--out", default="results/sweep.csv", help="output table, .csv or .parquet; an existing one with the same settings is resumed")
    _add_data_dir(sw)
    sw.set_defaults(func=cmd_sweep)

    ar = sub.add_parser("arms", help="training arms over seeds (e.g. AT-O vs its OT+FT control): clean metrics and attack success, mean and sd")
    ar.add_argument("--arm", action="append", required=True, help="NAME=checkpoint1,checkpoint2,... (names in checkpoints/ or paths); repeat")
    ar.add_argument("--eps", type=float, default=1e-4, help="L-inf budget, full-scale amplitude (default 1e-4)")
    ar.add_argument("--max-clips", type=int, default=48, help="test windows attacked per model (default 48)")
    ar.add_argument("--steps", type=int, default=10, help="PGD steps (default 10)")
    ar.add_argument("--strong-steps", type=int, default=50, help="APGD steps of the worst case (default 50)")
    ar.add_argument("--seed", type=int, default=0)
    ar.add_argument("--out", help="CSV to write")
    _add_data_dir(ar)
    ar.set_defaults(func=cmd_arms)

    nb = sub.add_parser("noise-bank", help="vet the quietest windows of every recording with BirdNET: the bird-free site-noise bank")
    nb.add_argument("--candidates", type=int, default=4, help="quietest 5 s windows tried per recording (default 4)")
    nb.add_argument("--threshold", type=float, default=0.1, help="highest BirdNET score of any animal class that counts as empty")
    nb.add_argument("--out", help="CSV to write (default assets/noise/<dataset>_birdfree.csv)")
    _add_data_dir(nb)
    nb.set_defaults(func=cmd_noise_bank)

    sh = sub.add_parser("shift", help="clean vs shifted (site noise, gain, mixup) metrics of models on a split")
    sh.add_argument("--models", default="baseline,protopnet", help="comma-separated checkpoint names")
    sh.add_argument("--split", default="test", choices=["train", "val", "test"])
    sh.add_argument("--max-clips", type=int, help="at most N clips, spread over the split")
    sh.add_argument("--snr", type=float, default=10.0, help="SNR of the added site noise [dB] (a bird-free window of another recording)")
    sh.add_argument("--gain", type=float, default=-20.0, help="gain change [dB]")
    sh.add_argument("--mix", type=float, default=0.6, help="mixup weight of the clip itself (partner: another species)")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--out", help="also write the table (.csv or .parquet)")
    _add_data_dir(sh)
    sh.set_defaults(func=cmd_shift)

    em = sub.add_parser("embed-metrics", help="cluster and retrieval quality of embeddings, clean and under PGD, per model")
    em.add_argument("--models", default="baseline,protopnet,birdnet", help="comma-separated model names (rates may differ)")
    em.add_argument("--split", default="test", choices=["train", "val", "test"])
    em.add_argument("--eps", type=float, default=1e-4)
    em.add_argument("--steps", type=int, default=10)
    em.add_argument("--seed", type=int, default=0)
    em.add_argument("--out", help="also write the table (.csv or .parquet)")
    _add_data_dir(em)
    em.set_defaults(func=cmd_embed_metrics)

    tr = sub.add_parser("transfer", help="adversarial segments made on each model, scored by every model, with a random-noise control")
    tr.add_argument("--models", default="birdnet,protopnet,baseline", help="comma-separated model names (rates may differ)")
    tr.add_argument("--split", default="test", choices=["train", "val", "test"])
    tr.add_argument("--max-segments", type=int, default=24, help="recordings (one segment each), spread over the species")
    tr.add_argument("--segment-seconds", type=float, default=15.0)
    tr.add_argument("--eps", type=float, default=1e-3, help="L-inf budget of the attack and of the control")
    tr.add_argument("--steps", type=int, default=10)
    tr.add_argument("--objective", default="output-margin", choices=["output-margin", "output-untargeted"])
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", help="also write the per-segment table (.csv or .parquet)")
    _add_data_dir(tr)
    tr.set_defaults(func=cmd_transfer)

    c = sub.add_parser("compare", help="the model zoo side by side (clean, shifted, attacked) and the paper check; cached")
    c.add_argument("--models", help="comma-separated checkpoint names (default: the eight shipped models)")
    c.add_argument("--split", default="test", choices=["train", "val", "test"])
    c.add_argument("--max-clips", type=int, default=48, help="windows attacked per model (spread over the split)")
    c.add_argument("--shift-max-clips", type=int, help="windows for clean/shifted metrics (default: all)")
    c.add_argument("--epsilons", default="1e-5,3e-5,1e-4,3e-4,1e-3", help="L-inf eps grid of the untargeted PGD sweep")
    c.add_argument("--target-epsilons", default="1e-4,1e-3", help="L-inf eps grid of the targeted embedding-space PGD sweep")
    c.add_argument("--steps", type=int, default=10)
    c.add_argument("--strong", action="store_true",
                   help="add the worst case over attacks (transfer, APGD, PGD with restarts); > 40 min for the zoo on 2 cores")
    c.add_argument("--strong-steps", type=int, default=20, help="steps of APGD and of the restarted PGD in the worst case (default 20)")
    c.add_argument("--restarts", type=int, default=2, help="random restarts of the strong PGD (default 2)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the test recordings for the paper check")
    c.add_argument("--boot-seed", type=int, default=0, help="seed of the paper check's bootstrap")
    c.add_argument("--out", help="result store directory (default: .cache/compare; the shipped results live in assets/compare)")
    c.add_argument("--recompute", action="store_true", help="compute even if a stored result exists")
    c.add_argument("--recheck", action="store_true", help="recompute only the paper check of a stored result (bootstrap)")
    c.add_argument("--update-cards", action="store_true", help="write robustness at two eps into each model's card")
    _add_data_dir(c)
    c.set_defaults(func=cmd_compare)

    fm = sub.add_parser("fetch-model", help="download a published BirdSet checkpoint (AudioProtoPNet-P-BirdSet-XCL, ConvNeXT-Base-BirdSet-XCL; network)")
    fm.add_argument("name", help="audioprotopnet-{1,5,10,20}-birdset-xcl or convnext-base-birdset-xcl")
    fm.add_argument("--dest", help="target folder (default checkpoints/published/NAME, not tracked by git)")
    fm.set_defaults(func=cmd_fetch_model)

    ep = sub.add_parser("explain-published", help="top classes of a clip and where their prototypes fire (published AudioProtoPNet)")
    ep.add_argument("--model", required=True, help="folder with model.safetensors and config.json (see fetch-model)")
    ep.add_argument("--audio", required=True)
    ep.add_argument("--offset", type=float, default=0.0, help="start of the 5 s clip in the file, seconds")
    ep.add_argument("--top-k", type=int, default=3)
    ep.add_argument("--prototypes", type=int, default=3, help="prototypes printed per class")
    ep.add_argument("--json", action="store_true")
    ep.set_defaults(func=cmd_explain_published)

    d = sub.add_parser("download", help="download the xc9 recordings from xeno-canto (network)")
    d.add_argument("--dest", help="target directory (default: data/xc9 in the repository)")
    d.set_defaults(func=cmd_download)

    s = sub.add_parser("data", help="show which dataset is found and its splits")
    _add_data_dir(s)
    s.set_defaults(func=cmd_data)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "python -m core " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        return args.func(args)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m core predict ... --json | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
