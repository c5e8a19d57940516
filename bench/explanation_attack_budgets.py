"""Benchmark: the smallest L-inf budget at which each explanation attack keeps the label and moves the explanation.

Issue 26: attacks on explanations (:mod:`core.field.explanation_attack`). For each of ``--windows`` test windows (one
recording per species, the first window whose clean top-1 is one of the recording's labels) and each attack
(``prototype_swap``, ``peak_shift`` with its default of 2 map cells, ``attribution_shift`` towards ``--band`` Hz over
the whole window), tries the budgets of ``--epsilons`` in increasing order (:func:`~core.field.explanation_attack.smallest_eps`)
and prints the first that succeeds, with its SNR [dB], or "none" up to the largest.

Run: ``BIRDSHIELD_THREADS=1 python bench/explanation_attack_budgets.py --model protopnet`` (about a minute on one
core; the default model, BirdNET's backbone, about 5-10 minutes).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.windows import labelled_test_windows  # noqa: E402
from core.field.explanation_attack import KINDS, smallest_eps  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.models.defaults import DEFAULT_MODEL  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--epsilons", default="1e-6,3e-6,1e-5,3e-5,1e-4,3e-4,1e-3")
    p.add_argument("--band", default="4000,8000", help="the attribution attack's band [Hz], low,high")
    p.add_argument("--kinds", default=",".join(KINDS))
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.model)
    cfg, ds = model.config, open_dataset()
    names = list(cfg.class_names)
    epsilons = [float(e) for e in args.epsilons.split(",")]
    band = tuple(float(v) for v in args.band.split(","))
    chosen = labelled_test_windows(model, ds, args.windows)
    print(f"{args.model}: smallest eps of {args.epsilons} (PGD-{args.steps}, seed 0) that keeps the top-1 and moves the explanation")
    print(f"{'recording':12s} {'start s':>7s} {'top-1':7s} {'attack':18s} {'eps':>8s} {'SNR dB':>7s}  details")
    wins = {k: 0 for k in args.kinds.split(",")}
    for rid, start, x, label in chosen:
        for kind in wins:
            t0 = time.perf_counter()
            extra = {"band_hz": band} if kind == "attribution_shift" else {}
            r, rows = smallest_eps(kind, model, x, epsilons, steps=args.steps, **extra)
            changed = sum(not row["label_kept"] for row in rows)
            if r is None:
                print(f"{rid:12s} {start:7.1f} {names[label]:7s} {kind:18s} {'none':>8s} {'':>7s}  "
                      f"label changed at {changed} of {len(rows)} budgets ({time.perf_counter() - t0:.0f} s)")
                continue
            wins[kind] += 1
            if kind == "prototype_swap":
                detail = f"prototype {r.prototype} -> {r.top_prototype_after}"
            elif kind == "peak_shift":
                detail = f"peak {r.peak_cell_before} -> {r.peak_cell_after}"
            else:
                detail = f"share {r.region_share_before:.2f} -> {r.region_share_after:.2f}"
            print(f"{rid:12s} {start:7.1f} {names[label]:7s} {kind:18s} {r.eps:8.0e} {r.snr_db:7.1f}  {detail}; top-3 overlap "
                  f"{r.topk_overlap:.2f}, Spearman sim {r.similarity_spearman:.2f} attr {r.attribution_spearman:.2f}, centroid "
                  f"{r.centroid_shift_hz:+.0f} Hz {r.centroid_shift_s:+.2f} s; label changed at {changed} smaller budgets "
                  f"({time.perf_counter() - t0:.0f} s)")
    print("succeeded within the grid: " + ", ".join(f"{k} {v}/{len(chosen)}" for k, v in wins.items()))


if __name__ == "__main__":
    main()
