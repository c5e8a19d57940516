"""Benchmark: how often the default model keeps a window's clean top-1 under Gaussian noise, per sigma.

Chooses :data:`core.attacks.smoothing.DEFAULT_SIGMA` (issue 26): randomized smoothing (Cohen et al. 2019) certifies a
larger radius the larger sigma is, as long as the base model still answers correctly on the noisy copies. Prints, for
each of ``--windows`` test windows (one recording per species, the first window whose clean top-1 is one of the
recording's labels) and each sigma [full-scale amplitude], the share of ``--copies`` noisy copies whose top-1 equals
the clean top-1, and the window's level (RMS [dBFS]) and the noise's SNR [dB].

Run: ``BIRDSHIELD_THREADS=1 python bench/smoothing_sigma.py`` (about a minute on one core).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.windows import labelled_test_windows  # noqa: E402
from core.attacks.smoothing import noise_counts, noise_generator  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.models.defaults import DEFAULT_MODEL  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--copies", type=int, default=40)
    p.add_argument("--sigmas", default="1e-4,3e-4,1e-3,3e-3,1e-2")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_checkpoint(args.model)
    cfg, ds = model.config, open_dataset()
    names = list(cfg.class_names)
    sigmas = [float(s) for s in args.sigmas.split(",")]
    chosen = [(rid, x, label) for rid, _, x, label in labelled_test_windows(model, ds, args.windows)]
    print(f"{args.model}: share of {args.copies} noisy copies keeping the clean top-1")
    print("recording      top-1   RMS dBFS  " + "  ".join(f"s={s:g} (SNR)".rjust(16) for s in sigmas))
    kept = np.zeros((len(chosen), len(sigmas)))
    for i, (rid, x, label) in enumerate(chosen):
        rms = float(np.sqrt(np.mean(x.astype(np.float64) ** 2)))
        for j, s in enumerate(sigmas):
            c = noise_counts(model, torch.as_tensor(x), sigma=s, n=args.copies, n_classes=len(names), batch_size=20,
                             generator=noise_generator(torch.device("cpu"), 0, i))
            kept[i, j] = c[label] / args.copies
        print(f"{rid:14s} {names[label]:7s} {20 * math.log10(rms):8.1f}  "
              + "  ".join(f"{kept[i, j]:5.2f} ({20 * math.log10(rms / s):5.1f} dB)".rjust(16) for j, s in enumerate(sigmas)))
    print("mean" + " " * 29 + "  ".join(f"{v:5.2f}".rjust(16) for v in kept.mean(0)))


if __name__ == "__main__":
    main()
