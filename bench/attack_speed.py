"""Benchmark: attack and sweep speed for the shipped AudioProtoPNet on this machine.

Prints
1. the time of one PGD-10 (L-inf) attack on a 5 s clip;
2. an 8-eps sweep of one clip: ``run_sweep`` with the eps grid on the batch axis
   vs a loop of 8 single attacks, and the ratio (loop / batched);
3. the same PGD-10 written as a straightforward loop in the way torchattacks'
   ``PGD.forward`` is written (random start, sign step, clamp of delta and of the
   sample range; here [-1, 1] and a summed BCE loss), and the ratio (reference / ours);
4. throughput of one forward + backward pass per batch size, which bounds what
   batching can gain on this machine.

Medians of ``--repeats`` warm runs. Run: ``python bench/attack_speed.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from timing import median_time  # noqa: E402

from core.attacks import PGD, multilabel_loss, predicted_sets  # noqa: E402
from core.attacks.sweep import run_sweep  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402

EPSILONS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3]


def reference_pgd(model, x, y, *, eps, alpha, steps, generator):
    """PGD as torchattacks writes it (random start, sign step, clamps), adapted to [-1, 1] audio."""
    adv = x.clone().detach()
    adv = adv + (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    adv = torch.clamp(adv, min=-1, max=1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = multilabel_loss(model(adv), y).sum()
        grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=-1, max=1).detach()
    return adv


def clip() -> torch.Tensor:
    """A real 5 s test window if the dataset is found, else band-limited noise."""
    try:
        from core.io.data import open_dataset

        ds = open_dataset()
        rec = ds.split("test")[0]
        wav = ds.load(rec, 32_000)[:160_000]
        if len(wav) == 160_000:
            return torch.as_tensor(wav)[None]
    except Exception:  # dataset absent: synthetic clip
        pass
    rng = np.random.default_rng(0)
    return torch.as_tensor((rng.standard_normal(160_000) * 0.05).astype(np.float32))[None]



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="protopnet")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_checkpoint(args.model, device="cpu")
    x = clip()
    print(f"model {args.model}, clip {tuple(x.shape)}, torch {torch.__version__}, {torch.get_num_threads()} threads")

    with torch.no_grad():
        y = predicted_sets(model(x))  # both implementations get the same labels
    pgd = PGD(eps=1e-4, steps=10)
    t_pgd = median_time(lambda: pgd(model, x, y), args.repeats)
    print(f"1. PGD-10 on one 5 s clip: {t_pgd:.3f} s (target <= 0.5 s)")

    def loop():
        for e in EPSILONS:
            PGD(eps=e, steps=10)(model, x, y)

    t_loop = median_time(loop, args.repeats)
    t_batched = median_time(lambda: run_sweep(pgd, model, x, y, epsilons=EPSILONS, max_rows=8), args.repeats)
    print(f"2. 8-eps sweep of one clip: loop of 8 attacks {t_loop:.2f} s, batched run_sweep {t_batched:.2f} s, "
          f"ratio {t_loop / t_batched:.2f}x (target >= 4x)")

    gen = torch.Generator()
    t_ref = median_time(lambda: reference_pgd(model, x, y, eps=1e-4, alpha=2.5e-5, steps=10, generator=gen.manual_seed(0)), args.repeats)
    print(f"3. PGD-10 reference loop (torchattacks style) {t_ref:.3f} s vs ours {t_pgd:.3f} s: ratio {t_ref / t_pgd:.2f}x (target >= 1)")

    print("4. one forward + backward, per batch size:")
    for b in (1, 2, 4, 8, 16):
        xb = x.repeat(b, 1)

        def fb(xb=xb):
            xa = xb.clone().requires_grad_(True)
            torch.autograd.grad(model(xa).sum(), xa)

        t = median_time(fb, args.repeats)
        print(f"   batch {b:2d}: {t * 1000:6.0f} ms, {t / b * 1000:5.1f} ms per clip")


if __name__ == "__main__":
    main()
