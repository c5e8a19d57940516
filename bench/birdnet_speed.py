"""Benchmark: the torch port of BirdNET V2.4 against the TFLite interpreter, on this machine.

Prints, in one run (medians of ``--repeats`` warm runs, 3 s windows of noise at 48 kHz):
1. forward of one window: TFLite interpreter (ai-edge-litert, XNNPACK, ``--threads``) vs the torch port with
   the same number of threads, and the ratio torch / TFLite (goal <= 1.2);
2. forward + backward to the waveform per window (torch only: TFLite has no gradients);
3. one PGD-10 (L-inf, margin objective over the 9 dataset species) per window (goal <= 1 s);
4. batched vs single: time per window of a forward and of a forward + backward at batch 8 vs batch 1,
   and the ratio single / batched;
5. torch's forward per window at batch 8 (as ``analyze`` runs it) against TFLite's single window (as birdnetlib
   runs it), the ratio torch / TFLite.

Threads: ``--threads`` (default: what :func:`core.io.device.apply_thread_policy` chooses for this machine now, as
the CLI does: one per core that other programs leave free). Both runtimes get the same number. The load average and
the cores other programs kept busy are printed beside the figures: on a shared machine they decide the ratio.

Run: ``python bench/birdnet_speed.py`` (needs requirements-dev.txt for the interpreter).
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

from core.attacks import PGD, OutputMargin  # noqa: E402
from core.models.birdnet import birdnet_files, load_birdnet  # noqa: E402

WINDOW = 144_000



def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch and TFLite threads (default: the project's policy)")
    args = ap.parse_args()
    import os

    from core.io.device import apply_thread_policy, busy_cpus

    busy = busy_cpus(0.5)
    policy = apply_thread_policy()
    args.threads = args.threads or policy.intra_op
    torch.set_num_threads(args.threads)
    print(f"load average {os.getloadavg()[0]:.2f}, other programs busy on {busy:.1f} of {len(os.sched_getaffinity(0))} cores; "
          f"policy: {policy.intra_op} thread(s) ({policy.reason})")
    from ai_edge_litert.interpreter import Interpreter

    gen = torch.Generator().manual_seed(0)
    x8 = 0.05 * torch.randn(8, WINDOW, generator=gen)
    x1 = x8[:1].clone()
    model = load_birdnet("dataset", device="cpu")
    full = load_birdnet("all", device="cpu")

    it = Interpreter(model_path=str(birdnet_files()["model"]), num_threads=args.threads)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
    x1_np = x1.numpy()

    def tflite_forward():
        it.set_tensor(inp, x1_np)
        it.invoke()
        return it.get_tensor(out)

    def torch_forward(x):
        with torch.no_grad():
            return full.all_logits(x)

    def fwd_bwd(x):
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).logsumexp(1).sum(), x)
        return g

    t_tfl = median_time(tflite_forward, args.repeats)
    t_fwd1 = median_time(lambda: torch_forward(x1), args.repeats)
    print(f"threads: {args.threads} (torch and TFLite)")
    print(f"1. forward, 1 window: TFLite {t_tfl * 1e3:.1f} ms, torch {t_fwd1 * 1e3:.1f} ms, ratio torch/TFLite {t_fwd1 / t_tfl:.2f} (goal <= 1.2)")
    t_fb1 = median_time(lambda: fwd_bwd(x1), args.repeats)
    print(f"2. forward + backward, 1 window: {t_fb1 * 1e3:.1f} ms")
    attack = PGD(eps=1e-4, steps=10, seed=0, objective=OutputMargin())
    t_pgd = median_time(lambda: attack(model, x1), max(1, args.repeats // 2))
    t_pgd8 = median_time(lambda: attack(model, x8), max(1, args.repeats // 2))
    print(f"3. PGD-10, 1 window: {t_pgd:.2f} s (goal <= 1 s); in a batch of 8: {t_pgd8 / 8:.2f} s per window")
    t_fwd8 = median_time(lambda: torch_forward(x8), args.repeats)
    t_fb8 = median_time(lambda: fwd_bwd(x8), args.repeats)
    print(f"4. per window, batch 8 vs 1: forward {t_fwd8 / 8 * 1e3:.1f} vs {t_fwd1 * 1e3:.1f} ms (ratio {t_fwd1 / (t_fwd8 / 8):.2f}); "
          f"forward + backward {t_fb8 / 8 * 1e3:.1f} vs {t_fb1 * 1e3:.1f} ms (ratio {t_fb1 / (t_fb8 / 8):.2f})")
    print(f"5. as analyze runs them: torch batch 8 {t_fwd8 / 8 * 1e3:.1f} ms per window vs TFLite one window at a time "
          f"(as birdnetlib) {t_tfl * 1e3:.1f} ms, ratio {t_fwd8 / 8 / t_tfl:.2f}")
    ref = np.asarray(tflite_forward())[0]
    got = torch_forward(x1)[0].numpy()
    print(f"   (parity on this input: max |logit difference| {np.abs(ref - got).max():.2e})")


if __name__ == "__main__":
    main()
