"""Benchmark: check randomized-smoothing certificates by attacking the smoothed classifier (issue 26, item 4).

For ``--windows`` test windows (``--per-species`` recordings of each species, in each the first window the model labels
correctly), :func:`core.studies.certificate_check.check_certificates` certifies the window (CERTIFY, Cohen et al.
2019, ``--n`` copies), attacks the smoothed classifier at 0.95 of the certified radius with PGD-L2, APGD-CE-L2 and
APGD-DLR-L2 under EOT over the smoothing noise, and then with PGD at 4, 16, 64, ... times the radius until it flips.
Windows are taken round-robin over species (each species' first labelled test recording, then each one's second, ...),
so the first nine are the one-per-species set. Prints the table per window and the docs/ summary; ``--out`` writes the
CSV after every window (with a JSON of the settings beside it), and a rerun with the same settings resumes: the rows
already there are kept and the remaining windows run with the numbers (seeds) they have in the full list, so a run
split over sessions gives the rows of one uninterrupted run.

Run: ``BIRDSHIELD_THREADS=1 python bench/certificate_check.py --windows 30 --per-species 4 --out assets/certify/check_30windows.csv``
(``--windows 3`` to try it; the run prints each window's seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.windows import labelled_test_windows  # noqa: E402
from core.attacks.smoothing import DEFAULT_ALPHA, DEFAULT_SIGMA  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.io.device import apply_thread_policy  # noqa: E402
from core.io.fileio import atomic_write_text  # noqa: E402
from core.models.defaults import DEFAULT_MODEL  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402
from core.studies.certificate_check import CHECK_LEGS, check_certificates, check_markdown  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--windows", type=int, default=30)
    p.add_argument("--per-species", type=int, default=4)
    p.add_argument("--sigma", type=float, default=DEFAULT_SIGMA)
    p.add_argument("--n", type=int, default=1000, help="CERTIFY's estimation copies (default 1,000)")
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--samples", type=int, default=8, help="EOT draws of the smoothing noise per step (default 8)")
    p.add_argument("--legs", default=",".join(CHECK_LEGS))
    p.add_argument("--split-scheme", default=None, help="the data's split scheme (default the project's)")
    p.add_argument("--out", help="CSV to write")
    args = p.parse_args()
    apply_thread_policy()
    model = load_checkpoint(args.model)
    ds = open_dataset(split_scheme=args.split_scheme) if args.split_scheme else open_dataset()
    every = labelled_test_windows(model, ds, 9 * args.per_species, per_species=args.per_species)
    chosen = round_robin(every, model)[:args.windows]
    names = [f"{rid}@{start:.0f}s" for rid, start, _, _ in chosen]
    windows = torch.stack([torch.as_tensor(x) for _, _, x, _ in chosen]).numpy()
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "windows", "per_species")}  # the names check the choice
    settings["model_card_sha"] = model.card.get("weights_sha256")
    out = Path(args.out) if args.out else None
    table, spent = pd.DataFrame(), 0.0
    if out is not None and out.is_file():
        table, spent = resume_from(out, settings, names)
        print(f"resuming: {len(table)} of {len(names)} windows already in {out}")
    t0 = time.time()
    legs = tuple(args.legs.split(","))
    for i in range(len(table), len(names)):
        row = check_certificates(model, windows[i:i + 1], sigma=args.sigma, n=args.n, alpha=args.alpha, steps=args.steps,
                                 samples=args.samples, legs=legs, names=names[i:i + 1], first_index=i)
        table = pd.concat([table, row], ignore_index=True)
        print(f"  {i + 1}/{len(names)} windows, {time.time() - t0:.0f} s", flush=True)
        if out is not None:
            write(out, table, {**settings, "windows": len(table), "seconds": spent + time.time() - t0})
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(check_markdown(table, alpha=args.alpha))
    if out is not None:
        print(f"written to {out}")


def round_robin(chosen: list, model) -> list:
    """``chosen`` (recording order) reordered round-robin over species: every species' first window, then every
    species' second, ... (recording order within each round)."""
    names = list(model.config.class_names)
    rank, seen = [], {}
    for _, _, _, top in chosen:
        rank.append(seen.get(names[top], 0))
        seen[names[top]] = rank[-1] + 1
    return [c for _, _, c in sorted(zip(rank, range(len(chosen)), chosen), key=lambda t: t[:2])]


def resume_from(out: Path, settings: dict, names: list[str]) -> tuple[pd.DataFrame, float]:
    """The rows of an earlier run with the same settings and the seconds it spent; refuses other settings or windows."""
    meta_path = out.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    differ = {k: (meta.get(k), v) for k, v in settings.items() if meta.get(k) != v}
    if differ:
        raise SystemExit(f"{out} was made with other settings ({differ}); choose another --out or the same settings")
    table = pd.read_csv(out, converters={"flip_leg": str})  # "" where no leg flipped, as the run writes it
    if list(table["window"]) != names[:len(table)]:
        raise SystemExit(f"{out} holds windows {list(table['window'])}, not the first {len(table)} of this run's list")
    return table, float(meta.get("seconds", 0.0))


def write(out: Path, table: pd.DataFrame, meta: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, table.to_csv(index=False))
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
