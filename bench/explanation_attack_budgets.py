"""Benchmark: the smallest L-inf budget at which each explanation attack keeps the label and moves the explanation.

Issue 26: attacks on explanations (:mod:`core.field.explanation_attack`). For each of ``--windows`` test windows (one
recording per species, the first window whose clean top-1 is one of the recording's labels) and each attack
(``prototype_swap``, ``peak_shift`` with its default of 2 map cells, ``attribution_shift`` towards ``--band`` Hz over
the whole window), tries the budgets of ``--epsilons`` in increasing order and records the first that succeeds
(:func:`core.studies.explanation_budgets.budget_table`); prints the Markdown of docs/methods.md and, with ``--out``,
writes the table (``assets/explanation_attack/budgets_<model>.csv``).

Run: ``BIRDSHIELD_THREADS=1 python bench/explanation_attack_budgets.py --model protopnet --out
assets/explanation_attack/budgets_protopnet.csv`` (about 2 minutes on one core; the default model, on BirdNET's
backbone, about 10).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.windows import labelled_test_windows  # noqa: E402
from core.field.explanation_attack import KINDS  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.models.defaults import DEFAULT_MODEL  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402
from core.studies.explanation_budgets import budget_table, budgets_markdown  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--epsilons", default="1e-6,3e-6,1e-5,3e-5,1e-4,3e-4,1e-3")
    p.add_argument("--band", default="4000,8000", help="the attribution attack's band [Hz], low,high")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--out", type=Path, help="write the table here (CSV)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.model)
    windows = [(rid, start, x) for rid, start, x, _ in labelled_test_windows(model, open_dataset(), args.windows)]
    table = budget_table(model, args.model, windows, epsilons=[float(e) for e in args.epsilons.split(",")],
                         kinds=args.kinds.split(","), steps=args.steps, band_hz=tuple(float(v) for v in args.band.split(",")),
                         progress=lambda done, total: print(f"{done}/{total}", file=sys.stderr, flush=True))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    print(budgets_markdown(table))


if __name__ == "__main__":
    main()
