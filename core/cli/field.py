"""Subcommands on recordings in the field: predict, analyze, attack, no-bird-check."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.cli.args import Subcommand, add_eps, add_float, add_int, add_json, add_model, add_models, add_out, add_seed, add_steps, names, out_path
from core.cli.common import load_models
from core.errors import CoreError, ParameterError
from core.models.registry import DEFAULT_MODEL

FORMATS = ("birdnet", "raven", "windows")


def _top(scores: list[dict]) -> str:
    """``"CODE 0.93, CODE 0.05"``: a window's top species and scores."""
    return ", ".join(f"{t['species']} {t['score']:.2f}" for t in scores)


def predict_args(p) -> None:
    p.add_argument("file")
    add_model(p, DEFAULT_MODEL)
    add_float(p, "--min-conf", help="score from which a species counts as detected, in (0, 1) "
                                    "(default: the model's validation threshold, as the Field page)")
    add_json(p)


def _detections(model, path: str, min_conf: float | None) -> tuple[list[dict] | None, dict]:
    """:func:`core.api.predict` on the file: (detections or None without a threshold, the settings used)."""
    from core.api import decision_threshold, load_audio, predict

    try:
        threshold, source = decision_threshold(model, min_conf)
    except ParameterError as e:  # a checkpoint without a stored threshold: scores only, and say why
        return None, {"min_conf": None, "min_conf_source": str(e)}
    waveform = load_audio(path, int(model.config.frontend.sample_rate))
    return predict(model, waveform, min_conf=threshold), {"min_conf": threshold, "min_conf_source": source}


def cmd_predict(args) -> int:
    from core.field.inference import predict_file
    from core.models.registry import load_checkpoint

    model = load_checkpoint(args.model)
    res = predict_file(model, args.file)
    dets, settings = _detections(model, args.file, args.min_conf)
    if args.json:
        print(json.dumps({**res, "model": args.model, "settings": settings, "detections": dets}, indent=2))
        return 0
    print(f"{res['file']}: {res['duration_s']:.1f} s, {len(res['windows'])} window(s), model {args.model}")
    for w in res["windows"]:
        print(f"  {w['start_s']:6.1f} s  {_top(w['top'])}")
    print(f"  recording (max over windows): {_top(res['top'])}")
    if dets is None:
        print(f"  detections: none computed ({settings['min_conf_source']})")
        return 0
    print(f"  detections at min_conf {settings['min_conf']:.2f} ({settings['min_conf_source']}):")
    for d in dets:
        print(f"  {d['start_time']:6.1f}-{d['end_time']:.1f} s  {d['common_name']} ({d['scientific_name']}) {d['confidence']:.2f}")
    if not dets:
        print("  no bird detected")
    return 0


def analyze_args(p) -> None:
    p.add_argument("path", help="an audio file or a directory of them")
    add_model(p, DEFAULT_MODEL)
    p.add_argument("--out", required=True, help="directory for the tables (created)")
    add_float(p, "--threshold", help="score cut-off in (0, 1) (default: the model's validation threshold)")
    p.add_argument("--format", default="birdnet,raven,windows",
                   help="comma-separated: birdnet (BirdNET-Analyzer CSV), raven (selection table), windows (every window's outcome)")
    p.add_argument("--recursive", action="store_true", help="also analyse audio files in sub-directories")


def _write_tables(res, out: Path, stem: str, formats: list[str], names: dict, band: tuple[float, float]) -> str:
    """Write one analysed file's tables in ``formats`` under ``out``; returns the line that summarises it."""
    from core.field.tables import detections, to_birdnet_csv, to_raven_table, window_outcomes
    from core.io.fileio import atomic_write_text

    dets = detections(res, names=names)
    wins = window_outcomes(res, names=names)
    if "birdnet" in formats:
        atomic_write_text(out / (stem + ".BirdNET.results.csv"), to_birdnet_csv(dets))
    if "raven" in formats:
        atomic_write_text(out / (stem + ".BirdNET.selection.table.txt"), to_raven_table(dets, low_hz=band[0], high_hz=band[1]))
    if "windows" in formats:
        atomic_write_text(out / (stem + ".windows.csv"), wins.to_csv(index=False, float_format="%.4f"))
    found = dets.groupby("english_name")["confidence"].agg(["size", "max"]).sort_values("size", ascending=False)
    say = ", ".join(f"{n} {int(r['size'])}" for n, r in found.iterrows()) or "none"
    return (f"{res.duration_s:.1f} s, {len(wins)} windows of {res.window_s:g} s in {res.info['seconds']:.1f} s; "
            f"threshold {res.threshold:.3f} ({res.threshold_source}); no bird in {int((wins['n_species'] == 0).sum())} windows; "
            f"detections by species: {say}"
            + (f"; the last {res.unanalysed_s:.1f} s (under half a window) are not analysed" if res.unanalysed_s >= 0.05 else ""))


def cmd_analyze(args) -> int:
    from tqdm import tqdm

    from core.field.analyze import analyze_file, audio_files, model_band_hz, species_names
    from core.models.registry import load_checkpoint

    formats = names(args.format)
    if sorted(set(formats) - set(FORMATS)) or not formats:
        raise ParameterError(f"--format takes birdnet, raven and/or windows, got {args.format!r}")
    if args.threshold is not None and not 0 < args.threshold < 1:
        raise ParameterError(f"--threshold must lie in (0, 1), got {args.threshold}")
    files = audio_files(args.path, recursive=args.recursive)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out must be a directory, got the file {out}")
    model = load_checkpoint(args.model)
    species = species_names(model.config.class_names, model)
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
        print(f"{f.name}: {_write_tables(res, out, f.stem, formats, species, band)}")
    print(f"written to {out}/")
    return 1 if failed else 0


def attack_args(p) -> None:
    p.add_argument("file")
    add_model(p, DEFAULT_MODEL)
    add_eps(p, required=True, help="L-inf budget in full-scale amplitude, e.g. 0.002")
    add_steps(p, help="PGD steps (1 = FGSM)")
    add_float(p, "--alpha", help="step size (default 2.5 * eps / steps)")
    add_seed(p)
    add_out(p, help="write the perturbed audio to this WAV file")
    add_json(p)


def cmd_attack(args) -> int:
    from core.field.inference import attack_file
    from core.io.audio import wav_bytes
    from core.models.registry import load_checkpoint

    model = load_checkpoint(args.model)
    res, adv = attack_file(model, args.file, eps=args.eps, steps=args.steps, alpha=args.alpha, seed=args.seed)
    sr = model.config.frontend.sample_rate
    if args.out:
        Path(args.out).write_bytes(wav_bytes(adv, sr))
        res["out"] = args.out
        res["out_sample_rate"] = sr
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['file']}: PGD eps={args.eps:g} steps={args.steps}, SNR {res['snr_db']:.1f} dB, L-inf {res['linf']:.5f}")
    for w in res["windows"]:
        print(f"  {w['start_s']:6.1f} s  before: {_top(w['top_before'])}\n          after:  {_top(w['top_after'])}")
    if args.out:
        print(f"perturbed audio written to {args.out} (mono, {sr / 1000:g} kHz: the signal the model "
              "heard, after down-mixing and resampling)")
    return 0


def no_bird_check_args(p) -> None:
    add_models(p, "baseline,protopnet,birdnet_protopnet,birdnet_linear,birdnet")
    add_int(p, "--windows", 8, "windows of each synthetic control (default 8)")
    add_out(p, "assets/analyze/no_bird.csv")


def cmd_no_bird_check(args) -> int:
    import pandas as pd

    from core.field.nobird import no_bird_check
    from core.io.data import open_dataset
    from core.io.fileio import atomic_write_text

    out = out_path(args.out)
    models = load_models(args.models)
    table = no_bird_check(models, dataset=open_dataset(args.data_dir), n_windows=args.windows)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    with pd.option_context("display.width", 200):
        print(table.pivot(index="model", columns="signal", values="no_bird_rate").loc[list(models)]
              .to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"written to {out}")
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "predict": Subcommand("species scores and detections for an audio file, per window of the model's clip length (5 s, BirdNET 3 s)",
                          predict_args, cmd_predict, dataset=False),
    "analyze": Subcommand("whole recordings of any length (streamed): detections per window, selection tables", analyze_args, cmd_analyze, dataset=False),
    "no-bird-check": Subcommand("how often each model says 'no bird' on silence, a tone, noise and bird-free site noise",
                                no_bird_check_args, cmd_no_bird_check),
    "attack": Subcommand("PGD attack (L-inf, waveform domain) on an audio file", attack_args, cmd_attack, dataset=False),
}
