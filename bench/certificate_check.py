"""Benchmark: check randomized-smoothing certificates by attacking the smoothed classifier (issue 26, item 4).

For ``--windows`` test windows (``--per-species`` recordings of each species, in each the first window the model labels
correctly), :func:`core.studies.certificate_check.check_certificates` certifies the window (CERTIFY, Cohen et al.
2019, ``--n`` copies), attacks the smoothed classifier at 0.95 of the certified radius with PGD-L2, APGD-CE-L2 and
APGD-DLR-L2 under EOT over the smoothing noise, and then with PGD at 4, 16, 64, ... times the radius until it flips.
Prints the table per window and the docs/ summary; ``--out`` writes the CSV (with a JSON of the settings beside it).

Run: ``BIRDSHIELD_THREADS=1 python bench/certificate_check.py --windows 30 --out assets/certify/check.csv``
(``--windows 3`` to try it; the run prints each window's seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.windows import labelled_test_windows  # noqa: E402
from core.attacks.smoothing import DEFAULT_ALPHA, DEFAULT_SIGMA  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.io.device import apply_thread_policy  # noqa: E402
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
    chosen = labelled_test_windows(model, ds, args.windows, per_species=args.per_species)
    names = [f"{rid}@{start:.0f}s" for rid, start, _, _ in chosen]
    windows = torch.stack([torch.as_tensor(x) for _, _, x, _ in chosen]).numpy()
    t0 = time.time()
    table = check_certificates(model, windows, sigma=args.sigma, n=args.n, alpha=args.alpha, steps=args.steps,
                               samples=args.samples, legs=tuple(args.legs.split(",")), names=names,
                               progress=lambda d, t: print(f"  {d}/{t} windows, {time.time() - t0:.0f} s", flush=True))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(check_markdown(table, alpha=args.alpha))
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(out, index=False)
        settings = {k: v for k, v in vars(args).items() if k != "out"}
        out.with_suffix(".json").write_text(json.dumps({**settings, "model_card_sha": model.card.get("weights_sha256"),
                                                        "seconds": time.time() - t0}, indent=1) + "\n")
        print(f"written to {out}")


if __name__ == "__main__":
    main()
