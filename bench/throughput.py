"""Benchmark: attack throughput (clips x steps per second) and the share of the forward+backward bound reached.

For each model, on the device :func:`core.io.device.get_device` picks (CPU here, CUDA where there is one):

1. the work of one attack step per clip: the floating-point operations of one
   forward pass and one backward pass to the input, counted by
   ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and
   convolutions; element-wise work is not counted, so the bound below is a
   compute bound that memory-bound layers cannot reach);
2. the device's bound: the dense float32 matrix-product rate measured here
   (``--matmul-size``; the best this device does on the work that dominates
   the counted operations), and the clips x steps per second it would allow;
3. PGD throughput at several batch sizes (rows per pass, up to the one
   :func:`core.io.device.rows_per_pass` chooses), as clips x steps / s, and its
   share of the bound;
4. whether mixed precision is safe for attack gradients: the share of input
   gradient samples whose sign under bfloat16 autocast equals float32's, and
   the relative L2 error (the sign is what an L-inf step uses).

Medians of ``--repeats`` warm runs. Prints one table per model and the ratios.
Run: ``python bench/throughput.py --models protopnet,birdnet_protopnet``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.attacks import PGD, predicted_sets  # noqa: E402
from core.io.device import get_device, rows_per_pass  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(device: torch.device, size: int, repeats: int) -> float:
    """Measured dense float32 matrix-product rate of the device [FLOP/s]."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    t = timed(lambda: a @ b, repeats, device)
    return 2 * size**3 / t


def step_flops(model, x: torch.Tensor) -> float:
    """Counted FLOPs of one forward + backward-to-input pass, per clip."""
    from torch.utils.flop_counter import FlopCounterMode

    params = [q for q in model.parameters() if q.requires_grad]
    for q in params:  # as in an attack: the backward pass goes to the input only, never to the weights
        q.requires_grad_(False)
    try:
        xa = x.clone().requires_grad_(True)
        with FlopCounterMode(display=False) as counter:
            model(xa).sum().backward()
    finally:
        for q in params:
            q.requires_grad_(True)
    return counter.get_total_flops() / x.shape[0]


def clips(model, n: int, device: torch.device) -> torch.Tensor:
    """``n`` real test windows of the model's rate and length when the dataset is found, else band-limited noise."""
    win, sr = model.config.window_samples, model.config.frontend.sample_rate
    try:
        from core.io.clips import dataset_clips
        from core.io.data import open_dataset

        c = dataset_clips(open_dataset(), split="test", class_names=model.config.class_names, sample_rate=sr,
                          window_samples=win, max_clips=n)
        x = torch.as_tensor(c.waveforms)
        if len(x) < n:
            x = x.repeat(-(-n // len(x)), 1)[:n]
    except Exception:  # noqa: BLE001 - no dataset: synthetic clips
        x = torch.as_tensor((np.random.default_rng(0).standard_normal((n, win)) * 0.05).astype(np.float32))
    return x.to(device)


def gradient_agreement(model, x: torch.Tensor, device: torch.device) -> tuple[float, float]:
    """(share of samples with the same gradient sign, relative L2 error) of bfloat16 autocast vs float32."""
    y = predicted_sets(model(x).detach())

    def grad(autocast: bool):
        xa = x.clone().requires_grad_(True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            logits = model(xa)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), y.float())
        return torch.autograd.grad(loss, xa)[0]

    g32, g16 = grad(False), grad(True)
    nz = g32 != 0
    same = float((torch.sign(g32) == torch.sign(g16))[nz].float().mean())
    return same, float((g16 - g32).norm() / g32.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="protopnet,birdnet_protopnet")
    ap.add_argument("--steps", type=int, default=10, help="PGD steps per attack")
    ap.add_argument("--batches", default="1,2,4,8", help="rows per pass to time (the device's rows_per_pass is added)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--matmul-size", type=int, default=0, help="side of the timed matrix product (default 2048 CPU, 8192 CUDA)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    device = get_device()
    torch.manual_seed(0)
    size = args.matmul_size or (8192 if device.type == "cuda" else 2048)
    peak = matmul_rate(device, size, args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({name}), torch {torch.__version__}; dense fp32 matmul {size}^2: {peak / 1e9:.1f} GFLOP/s")
    results = {"device": str(device), "device_name": name, "matmul_gflops": peak / 1e9, "models": {}}
    for m in [s.strip() for s in args.models.split(",") if s.strip()]:
        model = load_checkpoint(m, device=device).eval()
        win = model.config.window_samples
        auto = rows_per_pass(model, win)
        sizes = sorted({int(b) for b in args.batches.split(",")} | {auto})
        x_all = clips(model, max(sizes), device)
        flops = step_flops(model, x_all[:2])
        bound = peak / flops  # clips x steps per second if every counted FLOP ran at the matmul rate
        print(f"\n{m}: {win / model.config.frontend.sample_rate:g} s at {model.config.frontend.sample_rate} Hz; "
              f"{flops / 1e9:.2f} GFLOP per clip and step (forward + backward to the input); bound {bound:.1f} clips x steps/s; "
              f"rows_per_pass {auto}")
        rows = []
        for b in sizes:
            x = x_all[:b]
            with torch.no_grad():
                y = predicted_sets(model(x))
            attack = PGD(eps=1e-4, steps=args.steps, seed=0)
            t = timed(lambda x=x, y=y, attack=attack, model=model: attack(model, x, y), args.repeats, device)
            rate = b * args.steps / t
            rows.append({"rows": b, "seconds": t, "clips_steps_per_s": rate, "share_of_bound": rate / bound})
            print(f"  {b:4d} rows: PGD-{args.steps} {t:7.2f} s, {rate:7.2f} clips x steps/s, {100 * rate / bound:5.1f} % of the bound")
        same, rel = gradient_agreement(model, x_all[: min(4, len(x_all))], device)
        print(f"  bfloat16 autocast vs float32 input gradients: same sign on {100 * same:.1f} % of samples, relative L2 error {rel:.3f}")
        best = max(rows, key=lambda r: r["clips_steps_per_s"])
        print(f"  ratios: best batch / batch 1 = {best['clips_steps_per_s'] / rows[0]['clips_steps_per_s']:.2f}x; "
              f"best share of the bound {100 * best['share_of_bound']:.1f} %")
        results["models"][m] = {"gflop_per_clip_step": flops / 1e9, "bound_clips_steps_per_s": bound, "rows_per_pass": auto,
                                "rows": rows, "bf16_sign_agreement": same, "bf16_relative_l2": rel}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
