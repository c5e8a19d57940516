"""Benchmark: explanation stability of prototype heads, arm by arm, under attack and under noise (issue 26, item 6).

For every checkpoint of every ``--arm`` and ``--per-species`` test windows of each species (chosen without any model),
:func:`core.studies.explanation_stability.stability_rows` runs the prototype-swap and peak-shift attacks (L-inf PGD,
``--eps``, ``--steps``) and Gaussian noise of the swap perturbation's energy, and measures each explanation through
the model. Resumable: rows go to ``--out`` after every (model, window), and a rerun measures only what is missing.
Prints the docs/ table (mean ± SD over seeds) and each arm's difference from ``--control`` with hierarchical
bootstrap intervals; ``--report`` prints them from ``--out`` alone.

Run (one core; 3-5 s per model and window for a BirdNET head)::

    BIRDSHIELD_THREADS=1 python bench/explanation_stability.py --split-scheme person \\
        --arm OT+FT=checkpoints/person/birdnet_protopnet_ft.safetensors,... --out assets/explanation_attack/stability_windows.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.errors import CoreError, ParameterError  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.io.device import apply_thread_policy  # noqa: E402
from core.io.fileio import atomic_write_text  # noqa: E402
from core.models.registry import check_split_scheme, load_checkpoint  # noqa: E402
from core.studies.certified_accuracy import stratified_test_windows  # noqa: E402
from core.studies.explanation_stability import (  # noqa: E402
    stability_differences,
    stability_markdown,
    stability_rows,
    stability_summary,
)
from core.training.seeds import parse_arms  # noqa: E402


def report(rows: pd.DataFrame, control: str) -> None:
    """Print the docs/ table and the differences from the control."""
    print(stability_markdown(stability_summary(rows)))
    diffs = stability_differences(rows, control=control)
    if len(diffs):
        print(f"\nagainst {control} (recordings, then seeds, resampled):")
        for _, d in diffs.iterrows():
            print(f"  {d['arm']:6s} {d['perturbation']:5s} {d['measure']:22s} {d['effect']:+.3f} "
                  f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] p {d['p_two_sided']:.3f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arm", action="append", default=[], help="NAME=checkpoint1,checkpoint2,... (one per seed); repeat")
    p.add_argument("--control", default="OT+FT", help="the arm the others are compared with (default OT+FT)")
    p.add_argument("--eps", type=float, default=1e-4, help="L-inf budget of the attacks, full-scale amplitude (default 1e-4)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--per-species", type=int, default=3, help="test windows per species (default 3: 27 windows)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-scheme", default=None, help="the data's split scheme (default the project's)")
    p.add_argument("--out", required=True, help="CSV of per-window rows (read first: a rerun resumes)")
    p.add_argument("--report", action="store_true", help="only print the tables of --out")
    args = p.parse_args()
    out = Path(args.out)
    old = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    if args.report:
        if old.empty:
            print(f"error: no rows in {out}", file=sys.stderr)
            return 2
        if args.control not in set(old["arm"]):
            print(f"error: --control {args.control!r} is not one of the arms in {out} ({', '.join(dict.fromkeys(old['arm']))})",
                  file=sys.stderr)
            return 2
        report(old, args.control)
        return 0
    apply_thread_policy()
    try:
        if not args.arm:
            raise ParameterError("give at least one --arm NAME=checkpoint1,checkpoint2,...")
        arms = parse_arms(args.arm)
        if args.control not in arms:
            raise ParameterError(f"--control {args.control!r} is not one of the arms ({', '.join(arms)})")
        ds = open_dataset(split_scheme=args.split_scheme) if args.split_scheme else open_dataset()
        models, info = {}, {}
        for arm, paths in arms.items():
            for path in paths:
                model = load_checkpoint(path).eval()
                check_split_scheme(model, ds, path)
                models[path] = model
                info[path] = {"arm": arm, "train_seed": model.card.get("train_config", {}).get("seed", 0)}
        c = next(iter(models.values())).config
        windows = stratified_test_windows(ds, class_names=c.class_names, sample_rate=c.frontend.sample_rate,
                                          window_samples=c.window_samples, per_species=args.per_species, seed=args.seed)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    same = old[(old["eps"] == args.eps) & (old["steps"] == args.steps)] if len(old) else old
    skip = set(zip(same["model"], same["window"])) if len(same) else set()
    print(f"{len(models)} models in {len(arms)} arms, {len(windows)} windows, eps {args.eps:g}, {args.steps} steps; "
          f"{len(skip)} (model, window) pairs already in {out}", flush=True)
    state = {"rows": old, "t0": time.time()}

    def on_window(done: list[dict]) -> None:
        state["rows"] = pd.concat([state["rows"], pd.DataFrame(done)], ignore_index=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, state["rows"].to_csv(index=False))

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} (model, window) pairs, {time.time() - state['t0']:.0f} s", flush=True)

    try:
        stability_rows(models, windows, eps=args.eps, steps=args.steps, seed=args.seed, info=info, skip=skip, on_window=on_window,
                       progress=progress)
    except CoreError as exc:  # bad settings are refused before any window is drawn
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = state["rows"]
    report(rows[(rows["eps"] == args.eps) & (rows["steps"] == args.steps)], args.control)
    return 0


if __name__ == "__main__":
    sys.exit(main())
