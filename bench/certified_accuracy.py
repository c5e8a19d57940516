"""Benchmark: certified accuracy against radius (in dB SNR) of smoothed heads, arm by arm (issue 26, item 2).

CERTIFY (Cohen, Rosenfeld & Kolter 2019; :func:`core.studies.certified_accuracy.certify_models`) every checkpoint of
every ``--arm`` on ``--per-species`` test windows of each species (chosen without any model), all on the same noisy
copies, at one ``--sigma``. Resumable: rows go to ``--out`` after every window, and a rerun certifies only the
(model, window, sigma) triples missing there; runs at other sigmas or with other arms add to the same file. ``--report``
prints the docs/ tables of everything in ``--out`` (all windows, then those after BirdNET's training cut-off).

Run (one core; about 20 s a window for all heads of one BirdNET trunk together at n = 1,000)::

    BIRDSHIELD_THREADS=1 python bench/certified_accuracy.py --sigma 3e-4 --split-scheme person \\
        --arm OT=checkpoints/person/birdnet_protopnet.safetensors,... --out assets/certify/certified_accuracy.csv
    python bench/certified_accuracy.py --report --out assets/certify/certified_accuracy.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.attacks.smoothing import DEFAULT_ALPHA, N0, check_smoothing  # noqa: E402
from core.errors import CoreError, ParameterError  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.io.device import apply_thread_policy  # noqa: E402
from core.io.fileio import atomic_write_text  # noqa: E402
from core.models.registry import check_split_scheme, load_checkpoint  # noqa: E402
from core.studies.certified_accuracy import (  # noqa: E402
    certified_markdown,
    certified_summary,
    certify_models,
    stratified_test_windows,
)
from core.training.seeds import parse_arms  # noqa: E402


def report(rows: pd.DataFrame) -> None:
    """Print the docs/ tables: every window, then the windows after BirdNET's training cut-off."""
    for subset in ("all", "post-cutoff"):
        s = certified_summary(rows, subset=subset)
        print(f"\n{subset} windows:\n{certified_markdown(s)}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", default=[], help="NAME=checkpoint1,checkpoint2,... (one per seed); repeat")
    p.add_argument("--sigma", type=float, default=3e-4, help="smoothing noise std per sample, full-scale amplitude")
    p.add_argument("--per-species", type=int, default=11, help="test windows per species (default 11: up to 99 windows; 96 on the person split)")
    p.add_argument("--n", type=int, default=1000, help="CERTIFY's estimation copies (default 1,000)")
    p.add_argument("--n0", type=int, default=N0, help="CERTIFY's selection copies (default 100)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seeds the choice of windows and the noise")
    p.add_argument("--split-scheme", default=None, help="the data's split scheme (default the project's)")
    p.add_argument("--out", required=True, help="CSV of per-window rows (read first: a rerun resumes)")
    p.add_argument("--reverse", action="store_true", help="certify the windows last to first (a second process, writing to "
                                                          "another --out, can then meet the first half-way; merge the two files)")
    p.add_argument("--report", action="store_true", help="only print the tables of --out")
    args = p.parse_args()
    out = Path(args.out)
    old = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    if args.report:
        if old.empty:
            print(f"error: no rows in {out}", file=sys.stderr)
            return 2
        report(old)
        return 0
    apply_thread_policy()
    try:
        check_smoothing(args.sigma, args.alpha, args.n0, args.n, batch_size=args.batch_size)  # before any model is loaded
        if not args.arm:
            raise ParameterError("give at least one --arm NAME=checkpoint1,checkpoint2,...")
        arms = parse_arms(args.arm)
        ds = open_dataset(split_scheme=args.split_scheme) if args.split_scheme else open_dataset()
        models, info = {}, {}
        for arm, paths in arms.items():
            for path in paths:
                model = load_checkpoint(path).eval()
                check_split_scheme(model, ds, path)
                models[path] = model
                info[path] = {"arm": arm, "train_seed": model.card.get("train_config", {}).get("seed", 0)}
        first = next(iter(models.values()))
        c = first.config
        windows = stratified_test_windows(ds, class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                                          window_samples=c.window_samples, per_species=args.per_species, seed=args.seed)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.reverse:  # the noise is seeded by the window's id, so the order changes no row
        windows = windows[::-1]
    # rows of the same settings only: a rerun with another n, n0 or alpha certifies anew (and adds rows beside the old)
    same = old[(old["n"] == args.n) & (old["n0"] == args.n0) & (old["alpha"] == args.alpha)] if len(old) else old
    skip = set(zip(same["model"], same["window"], same["sigma"])) if len(same) else set()
    print(f"{len(models)} models in {len(arms)} arms, {len(windows)} windows, sigma {args.sigma:g}, n0 {args.n0}, n {args.n}; "
          f"{sum((m, w.window_id, args.sigma) in skip for m in models for w in windows)} (model, window) pairs with these settings "
          f"already in {out}",
          flush=True)
    state = {"rows": old, "t0": time.time()}

    def on_window(done: list[dict]) -> None:
        state["rows"] = pd.concat([state["rows"], pd.DataFrame(done)], ignore_index=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, state["rows"].to_csv(index=False))

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} windows, {time.time() - state['t0']:.0f} s", flush=True)

    try:
        certify_models(models, windows, sigma=args.sigma, n=args.n, n0=args.n0, alpha=args.alpha, batch_size=args.batch_size,
                       seed=args.seed, info=info, skip=skip, on_window=on_window, progress=progress)
    except CoreError as exc:  # bad settings are refused before any window is drawn
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(state["rows"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
