"""Subcommands on recordings in the field: predict, analyze, attack, certify, no-bird-check."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from core.cli.args import (
    Subcommand,
    add_detection_options,
    add_eps,
    add_float,
    add_int,
    add_json,
    add_model,
    add_models,
    add_out,
    add_seed,
    add_steps,
    check_models_split,
    names,
    open_args_dataset,
    out_path,
)
from core.cli.common import load_models
from core.errors import CoreError, ParameterError
from core.models.defaults import DEFAULT_MODEL

FORMATS = ("birdnet", "raven", "windows")


def _top(scores: list[dict]) -> str:
    """``"CODE 0.93, CODE 0.05"``: a window's top species and scores."""
    return ", ".join(f"{t['species']} {t['score']:.2f}" for t in scores)


def predict_args(p) -> None:
    p.add_argument("file")
    add_model(p, DEFAULT_MODEL)
    add_detection_options(p)
    add_json(p)


def _settings(args) -> dict:
    """The detection options of ``args`` as keywords of :func:`core.api.predict` / :func:`core.api.analyze`."""
    return {"min_conf": args.min_conf, "sensitivity": args.sensitivity, "locale": args.locale, "lat": args.lat, "lon": args.lon,
            "week": args.week, "sf_thresh": args.sf_thresh}


def _check_settings(args):
    """Refuse bad detection options in one line before any model loads; returns (species filter or None, locale)."""
    import math

    from core.field.detect import check_sensitivity, species_filter
    from core.io.names import check_locale

    if args.min_conf is not None and not (math.isfinite(args.min_conf) and 0 < args.min_conf < 1):
        raise ParameterError(f"--min-conf must lie in (0, 1), got {args.min_conf}")
    check_sensitivity(args.sensitivity)
    return species_filter(args.lat, args.lon, args.week, args.sf_thresh), check_locale(args.locale)


def _settings_text(res, settings: dict) -> str:
    """``"min_conf 0.67 (validation threshold ...), sensitivity 1.0, locale de, location filter ..."``."""
    where = res.species_filter
    place = (f"location filter {where['lat']:g}, {where['lon']:g}, week {where['week']} (sf_thresh {where['sf_thresh']:g}): "
             f"{len(where['excluded'])} of {len(res.class_names)} species not expected there") if where else "no location filter"
    return f"min_conf {res.threshold:.2f} ({res.threshold_source}), sensitivity {res.sensitivity:.2f}, locale {settings['locale']}, {place}"


def _json_settings(res, settings: dict) -> dict:
    """The settings a detection list was made with; the location filter's left-out classes listed up to 100, else counted."""
    where = res.species_filter
    if where and len(where["excluded"]) > 100:
        where = {**{k: v for k, v in where.items() if k != "excluded"}, "n_excluded": len(where["excluded"])}
    return {"min_conf": res.threshold, "min_conf_source": res.threshold_source, "sensitivity": res.sensitivity,
            "locale": settings["locale"], "species_filter": where}


def cmd_predict(args) -> int:
    import numpy as np

    from core.api import decision_threshold, load_audio, predict_windows
    from core.field.inference import top_classes
    from core.models.registry import load_checkpoint

    _, locale = _check_settings(args)
    settings = {**_settings(args), "locale": locale}
    model = load_checkpoint(args.model)
    try:
        decision_threshold(model, args.min_conf)
        missing = ""
    except ParameterError as e:  # a checkpoint without a stored threshold: its scores, no detections, and why
        missing = str(e)
        settings["min_conf"] = 0.5  # the scores do not depend on it; its detections are dropped below
    waveform = load_audio(args.file, int(model.config.frontend.sample_rate))
    try:
        res, dets = predict_windows(model, waveform, path=args.file, **settings)
    except ParameterError as e:  # e.g. too short: name the file, as the other errors do
        raise ParameterError(f"{Path(args.file).name}: {e}") from e
    if missing:
        res.threshold, res.threshold_source, dets = None, missing, None
    names = model.config.class_names
    outcomes = None
    if dets is not None:
        from core.field.tables import window_outcomes

        outcomes = window_outcomes(res, locale=locale)["outcome"].tolist()
    windows = [{"start_s": float(s), "end_s": float(s + res.valid_s[i]),
                **({"outcome": outcomes[i]} if outcomes is not None else {}),
                "top": top_classes(res.scores[i], names), "scores": dict(zip(names, map(float, res.scores[i])))}
               for i, s in enumerate(res.starts_s)]
    duration = res.info["n_samples"] / res.sample_rate
    if args.json:
        print(json.dumps({"file": str(args.file), "duration_s": duration, "model": args.model, "settings": _json_settings(res, settings),
                          "detections": dets, "windows": windows, "top": top_classes(res.scores.max(0), names)}, indent=2))
        return 0
    print(f"{args.file}: {duration:.1f} s, {len(windows)} window(s) of {res.window_s:g} s, model {args.model}")
    if dets is None:
        print(f"  detections: none computed ({missing}; give --min-conf)")
    else:
        print(f"  {_settings_text(res, settings)}")
    for d in dets or []:
        print(f"  {d['start_time']:6.1f}-{d['end_time']:.1f} s  {d['common_name']} ({d['scientific_name']}, {d['ebird_code'] or '-'}) "
              f"{d['confidence']:.2f}")
    if dets == []:
        from core.field.analyze import NO_BIRD

        silent = outcomes is not None and all(o != NO_BIRD for o in outcomes)
        print(f"  {outcomes[0]}: no window holds audio above that level" if silent else "  no bird detected")
    print("  top scores per window (every species, before the location filter):")
    for start, row in zip(res.starts_s, res.scores):
        print(f"  {start:6.1f} s  " + ", ".join(f"{names[j]} {row[j]:.2f}" for j in np.argsort(-row)[:3]))
    return 0


def _windows(n: int) -> str:
    """``"1 window"``, ``"3 windows"``."""
    return f"{n} window" + ("" if n == 1 else "s")


def analyze_args(p) -> None:
    p.add_argument("path", help="an audio file or a directory of them")
    add_model(p, DEFAULT_MODEL)
    p.add_argument("--out", required=True, help="directory for the tables (created)")
    add_detection_options(p, threshold_alias=True)
    p.add_argument("--format", default="birdnet,raven,windows",
                   help="comma-separated: birdnet (BirdNET-Analyzer CSV), raven (selection table: eBird codes, common names in "
                        "--locale), windows (every window's outcome)")
    p.add_argument("--recursive", action="store_true", help="also analyse audio files in sub-directories")


def _write_tables(res, out: Path, stem: str, formats: list[str], names: dict, band: tuple[float, float], locale: str,
                  ebird: dict) -> str:
    """Write one analysed file's tables in ``formats`` under ``out``; returns the line that summarises it."""
    from core.field.tables import detections, to_birdnet_csv, to_raven_table, window_outcomes
    from core.io.fileio import atomic_write_text

    dets = detections(res, names=names, locale=locale, ebird=ebird)
    wins = window_outcomes(res, names=names, locale=locale)
    if "birdnet" in formats:
        atomic_write_text(out / (stem + ".BirdNET.results.csv"), to_birdnet_csv(dets))
    if "raven" in formats:
        atomic_write_text(out / (stem + ".BirdNET.selection.table.txt"), to_raven_table(dets, low_hz=band[0], high_hz=band[1]))
    if "windows" in formats:
        atomic_write_text(out / (stem + ".windows.csv"), wins.to_csv(index=False, float_format="%.4f"))
    found = dets.groupby("common_name")["confidence"].agg(["size", "max"]).sort_values("size", ascending=False)
    say = ", ".join(f"{n} {int(r['size'])}" for n, r in found.iterrows()) or "none"
    return (f"{res.duration_s:.1f} s, {len(wins)} windows of {res.window_s:g} s in {res.info['seconds']:.1f} s; "
            f"{_settings_text(res, {'locale': locale})}; no bird in {_windows(int((wins['n_species'] == 0).sum()))}; "
            f"detections by species: {say}"
            + (f"; the last {res.unanalysed_s:.1f} s (under half a window) are not analysed" if res.unanalysed_s >= 0.05 else ""))


def cmd_analyze(args) -> int:
    from tqdm import tqdm

    from core.api import decision_threshold
    from core.field.analyze import analyze_file, audio_files, ebird_classes, model_band_hz, species_names
    from core.models.registry import load_checkpoint

    formats = names(args.format)
    if sorted(set(formats) - set(FORMATS)) or not formats:
        raise ParameterError(f"--format takes birdnet, raven and/or windows, got {args.format!r}")
    filt, locale = _check_settings(args)
    files = audio_files(args.path, recursive=args.recursive)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ParameterError(f"--out must be a directory, got the file {out}")
    model = load_checkpoint(args.model)
    try:
        threshold, source = decision_threshold(model, args.min_conf)
    except ParameterError as e:
        raise ParameterError(f"{e} (--min-conf)") from None
    source = "--min-conf" if args.min_conf is not None else source
    species = species_names(model.config.class_names, model)
    band = model_band_hz(model)
    ebird = ebird_classes(model)
    single = len(files) == 1 and Path(args.path).is_file()
    failed = 0
    for f in files:
        bar = tqdm(total=0, unit="s", dynamic_ncols=True, disable=None, desc=f.name)

        def progress(done, total, bar=bar):
            bar.total = round(total) or None
            bar.n = round(done)
            bar.refresh()

        try:
            res = analyze_file(model, f, model_name=args.model, threshold=threshold, threshold_source=source, sensitivity=args.sensitivity,
                               species_filter=filt, progress=progress)
        except CoreError as exc:
            bar.close()
            if single:  # one file asked for: its error is the command's, in one line (exit 2)
                raise
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        bar.close()
        print(f"{f.name}: {_write_tables(res, out, f.stem, formats, species, band, locale, ebird)}")
    print(f"written to {out}/")
    return 1 if failed else 0


def attack_args(p) -> None:
    p.add_argument("file")
    add_model(p, DEFAULT_MODEL)
    add_eps(p, required=True, help="L-inf budget in full-scale amplitude, e.g. 0.002")
    add_steps(p, help="PGD steps (1 = FGSM)")
    add_float(p, "--alpha", help="step size (default 2.5 * eps / steps)")
    p.add_argument("--objective", choices=["output-untargeted", "output-margin", "output-targeted-margin"],
                   help="what the attack tries: scramble the species list (BCE), push the top species below the runner-up "
                        "(margin), or make every window say --target-species (default: margin for BirdNET itself, else BCE)")
    p.add_argument("--target-species", help="output-targeted-margin: the class name the model should say (a targeted attack "
                                            "needs more steps than an untargeted one: try --steps 50)")
    p.add_argument("--masking", action="store_true",
                   help="keep the perturbation under each window's psychoacoustic masking threshold (eps caps the search)")
    add_seed(p)
    add_out(p, help="write the perturbed audio to this WAV file")
    add_json(p)


def cmd_attack(args) -> int:
    from core.field.inference import attack_file
    from core.io.audio import wav_bytes
    from core.models.registry import load_checkpoint

    model = load_checkpoint(args.model)
    res, adv = attack_file(model, args.file, eps=args.eps, steps=args.steps, alpha=args.alpha, seed=args.seed,
                           objective=args.objective, target_species=args.target_species, masking=args.masking)
    sr = model.config.frontend.sample_rate
    if args.out:
        Path(args.out).write_bytes(wav_bytes(adv, sr))
        res["out"] = args.out
        res["out_sample_rate"] = sr
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    how = res["objective"] + (f" -> {res['target_species']}" if res["target_species"] else "") + (", masked" if args.masking else "")
    print(f"{res['file']}: PGD eps={args.eps:g} steps={args.steps} ({how}), SNR {res['snr_db']:.1f} dB, L-inf {res['linf']:.5f}")
    for w in res["windows"]:
        print(f"  {w['start_s']:6.1f} s  before: {_top(w['top_before'])}\n          after:  {_top(w['top_after'])}")
    if args.out:
        print(f"perturbed audio written to {args.out} (mono, {sr / 1000:g} kHz: the signal the model "
              "heard, after down-mixing and resampling)")
    return 0


def certify_args(p) -> None:
    # the defaults of core.attacks.smoothing, written out: importing it would load torch before the threads are chosen
    # (tests/test_smoothing.py checks that they agree)
    p.add_argument("file")
    add_model(p, DEFAULT_MODEL)
    add_float(p, "--sigma", 3e-4, "noise std per sample in full-scale amplitude, in (0, 1) (default %(default)g: the largest "
                                  "that left the default model's answer on 5 test windows intact)")
    add_int(p, "--n", help="noisy copies per window that estimate the answer's probability, at least --n0 (default: as many as "
                           "fit in --seconds)")
    add_float(p, "--seconds", help="time budget per window [s] instead of --n (default 60): n is what fits after the --n0 copies "
                                   "measured this machine's rate, at least 1,000")
    add_float(p, "--alpha", 0.001, "probability that a certificate is wrong, in (0, 1) (default %(default)g)")
    add_int(p, "--n0", 100, "noisy copies that choose the answer (default %(default)s)")
    add_float(p, "--start", help="only windows that end after this time [s]")
    add_float(p, "--end", help="only windows that start before this time [s]")
    add_int(p, "--batch-size", help="noisy copies per forward pass (default 8 on a CPU, 64 on CUDA)")
    add_seed(p)
    add_json(p)


def _certificate_line(c, names: dict) -> str:
    """One window's certificate: ``0.0-3.0 s  Sedge Warbler (acrsch)  p_A >= 0.993  radius 0.00074 = 72.3 dB SNR  n 1,000``."""
    who = f"{names[c.class_name][1]} ({c.class_name})"
    head, p = f"  {c.start_s:6.1f}-{c.end_s:.1f} s  ", f"{math.floor(c.p_lower * 1000) / 1000:.3f}"  # a lower bound, rounded down
    if c.abstained:
        return head + f"abstain (most copies: {who}, p_A >= {p})  n {c.n:,}  {c.seconds:.0f} s"
    snr = f"{c.snr_db:.1f} dB SNR" if math.isfinite(c.snr_db) else "no SNR (a silent window)"
    return head + f"{who}  p_A >= {p}  radius {c.radius:.3g} = {snr}  n {c.n:,}  {c.seconds:.0f} s"


def cmd_certify(args) -> int:
    from core.api import certify, load_audio
    from core.attacks.smoothing import DEFAULT_SECONDS, check_smoothing, max_certifiable_radius
    from core.cli.common import progress_bar
    from core.field.analyze import ebird_classes, species_names
    from core.field.certificates import at_cap, certificate_notes, reading_threshold, window_reading
    from core.field.tables import local_names
    from core.models.registry import load_checkpoint

    check_smoothing(args.sigma, args.alpha, args.n0, args.n, args.seconds, batch_size=args.batch_size)  # before any work
    model = load_checkpoint(args.model)
    waveform = load_audio(args.file, int(model.config.frontend.sample_rate))
    seconds = args.seconds if args.seconds is not None or args.n is not None else DEFAULT_SECONDS
    with progress_bar("copy") as progress:
        certs = certify(model, waveform, sigma=args.sigma, n=args.n, seconds=seconds, alpha=args.alpha, n0=args.n0, start_s=args.start,
                        end_s=args.end, batch_size=args.batch_size, seed=args.seed, progress=progress)
    names = species_names(model.config.class_names, model)
    threshold, threshold_source = reading_threshold(model)
    readings = [window_reading(model, waveform, c.start_s, c.end_s, threshold) for c in certs]
    notes = [certificate_notes(c, r, lambda code: names[code][1]) for c, r in zip(certs, readings)]
    if args.json:
        local = local_names(names, None, ebird_classes(model))  # the detections table's names and eBird codes
        rows = [{"start_s": c.start_s, "end_s": c.end_s, "abstain": c.abstained, "species_code": c.class_name,
                 "scientific_name": names[c.class_name][0], "common_name": local[c.class_name][0], "ebird_code": local[c.class_name][1],
                 "p_lower": c.p_lower, "radius": c.radius, "snr_db": _finite(c.snr_db),
                 "signal_norm": c.signal_norm, "max_radius": c.max_radius, "at_cap": at_cap(c), "n0": c.n0, "n": c.n, "seconds": c.seconds,
                 "counts": {model.config.class_names[i]: int(v) for i, v in enumerate(c.counts) if v},
                 "plain_species_code": r.top_class, "plain_score": r.top_score, "plain_detected": list(r.detected),
                 "level_dbfs": _finite(r.level_dbfs), "notes": ns} for c, r, ns in zip(certs, readings, notes)]
        print(json.dumps({"file": str(args.file), "model": args.model, "sigma": args.sigma, "alpha": args.alpha, "seed": args.seed,
                          "threshold": threshold, "threshold_source": threshold_source, "windows": rows}, indent=2))
        return 0
    print(f"{args.file}: {len(waveform) / model.config.frontend.sample_rate:.1f} s, model {args.model}, randomized smoothing "
          f"(Cohen et al. 2019): sigma {args.sigma:g} (full scale), alpha {args.alpha:g}, n0 {args.n0}")
    for c, ns in zip(certs, notes):
        print(_certificate_line(c, names))
        for note in ns:
            print(f"      note: {note}")
    for n in sorted({c.n for c in certs}):
        r = max_certifiable_radius(args.sigma, n, args.alpha)
        print(f"  at n = {n:,} and alpha {args.alpha:g} the largest certifiable radius is {r / args.sigma:.2f} sigma = {r:.3g}")
    if args.seconds is not None and any(c.seconds > 1.5 * args.seconds for c in certs):
        print(f"  --seconds {args.seconds:g} is a target: n is at least the minimum of 1,000 copies, which took "
              f"{max(c.seconds for c in certs):.0f} s a window here.")
    print("  A certified window: no sound quieter than its SNR below the window can change the smoothed model's answer "
          f"(with probability {1 - args.alpha:g}); a lower bound, not the level at which a sound does change it (attacks on "
          "test windows needed 4-256 times the certified radius). p_A: a lower bound on the probability that a noisy copy "
          "gives that answer. The certificate is for the smoothed model, whose answer may differ from the plain model's "
          "(`predict`); L2, not the L-inf budget of `attack`.")
    return 0


def _finite(v):
    """``v`` for JSON: None where it is None or not finite (JSON has no -Infinity)."""
    return None if v is None or not math.isfinite(v) else v


def no_bird_check_args(p) -> None:
    add_models(p, "baseline,protopnet,birdnet_protopnet,birdnet_linear,birdnet")
    add_int(p, "--windows", 8, "windows of each synthetic control (default 8)")
    add_out(p, "assets/analyze/no_bird.csv")


def cmd_no_bird_check(args) -> int:
    import pandas as pd

    from core.field.nobird import no_bird_check, record_in_cards
    from core.io.fileio import atomic_write_text

    out = out_path(args.out)
    models = load_models(args.models)
    dataset = open_args_dataset(args)
    check_models_split(models, dataset)
    table = no_bird_check(models, dataset=dataset, n_windows=args.windows)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.4g"))
    record_in_cards(table, out)
    with pd.option_context("display.width", 200):
        print(table.pivot(index="model", columns="signal", values="no_bird_rate").loc[list(models)]
              .to_string(float_format=lambda v: f"{v:.2f}"))
    print(f"written to {out}")
    return 0


# the subcommands of this module, by name
COMMANDS = {
    "predict": Subcommand("species scores and detections for an audio file, per window of the model's clip length (5 s, BirdNET 3 s)",
                          predict_args, cmd_predict, dataset=False),
    "analyze": Subcommand("whole recordings of any length (streamed): detections per window, BirdNET-Analyzer CSV and Raven "
                          "selection tables with eBird codes and local names", analyze_args, cmd_analyze, dataset=False),
    "no-bird-check": Subcommand("how often each model says 'no bird' on silence, a tone, noise and bird-free site noise",
                                no_bird_check_args, cmd_no_bird_check),
    "attack": Subcommand("PGD attack (L-inf, waveform domain) on an audio file", attack_args, cmd_attack, dataset=False),
    "certify": Subcommand("randomized smoothing per window of an audio file: the smoothed model's answer and the quietest "
                          "sound (SNR, dB) that could change it, or 'abstain'", certify_args, cmd_certify, dataset=False),
}
