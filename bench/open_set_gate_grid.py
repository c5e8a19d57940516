"""Benchmark: the bird gate's settings on a grid, with their validation, test and held-out figures (issue 25).

The grid from which the gate's defaults of :mod:`core.training.open_set` (bird evidence, 10 %, slope 8) were chosen on
2026-12-03, on the recordist split, looking at the held-out windows (so its held-out column is not held out for the
chosen setting; docs/results.md#sounds-without-birds). For each ungated head given, each evidence (BirdNET's largest
logit over its animal or its bird classes, :func:`core.models.birdnet.class_groups`), each quantile of that evidence
over labelled validation windows and each slope, the head is gated (:func:`core.models.birdnet_proto.gated_logits`)
and its threshold chosen as :func:`core.training.open_set.open_set_model` does; printed and written per head: the
threshold, validation micro-F1, window recall and recording top-1, the share of validation bird-free windows passing,
test window recall and recording top-1, and the held-out false windows (the no-bird check's 2026 draw of the held-out
families and the test split's bird-free site noise) with the families that passed.

Run: ``BIRDSHIELD_THREADS=1 python bench/open_set_gate_grid.py --heads birdnet_protopnet,.cache/heads/bpn_v1_256_s1.safetensors,
.cache/heads/bpn_v1_256_s2.safetensors --out assets/birdnet_heads/open_set_gate_grid.csv`` (about 10 minutes).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.field.nobird import CHECK_SEED  # noqa: E402
from core.field.open_set_seeds import window_recall  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.io.device import apply_thread_policy  # noqa: E402
from core.io.synth import HELD_OUT_FAMILIES, nonbird_windows  # noqa: E402
from core.metrics import metrics_from_scores  # noqa: E402
from core.models.birdnet import class_groups, load_birdnet  # noqa: E402
from core.models.birdnet_proto import BirdNETHeadModel, gated_logits  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402
from core.training.heads import split_windows  # noqa: E402
from core.training.noisebank import birdfree_bank  # noqa: E402
from core.training.open_set import bird_free_validation, constrained_threshold  # noqa: E402

QUANTILES = (0.01, 0.02, 0.05, 0.1, 0.2)
SLOPES = (0.5, 1.0, 2.0, 4.0, 8.0)


@torch.no_grad()
def _batched(fn, x: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([fn(torch.as_tensor(x[i : i + batch])).float().numpy() for i in range(0, len(x), batch)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--heads", required=True, help="ungated BirdNET heads, comma-separated (names or paths)")
    p.add_argument("--split-scheme", default="recordist")
    p.add_argument("--out", help="CSV to write")
    args = p.parse_args()
    apply_thread_policy()
    ds = open_dataset(split_scheme=args.split_scheme)
    wins = {s: split_windows(ds, s) for s in ("val", "test")}
    n = int(wins["val"].waveforms.shape[1])
    held, fams = nonbird_windows(HELD_OUT_FAMILIES, 16, n, 48_000, seed=CHECK_SEED)
    site = [np.resize(w, n) for _, w in birdfree_bank(ds, "test", 48_000, n)]
    sets = {"val": wins["val"].waveforms, "test": wins["test"].waveforms, "free": bird_free_validation(ds, 48_000, n)[0],
            "held": np.concatenate([held, np.stack(site).astype(np.float32)]) if site else held}
    held_src = np.array(fams + ["test site noise"] * len(site))
    birdnet = load_birdnet(None).eval()
    logits = {k: _batched(birdnet.all_logits, x) for k, x in sets.items()}
    groups = class_groups()
    masks = {"animal": groups != "other", "bird": groups == "bird"}
    evidence = {e: {k: v[:, m].max(1) for k, v in logits.items()} for e, m in masks.items()}
    labelled = wins["val"].targets.sum(1) > 0
    rows = []
    for name in args.heads.split(","):
        m = load_checkpoint(name)
        probe = BirdNETHeadModel(dataclasses.replace(m.config, bird_gate=None))
        probe.load_state_dict(m.state_dict())
        probe.eval()
        head = {k: _batched(probe, x) for k, x in sets.items()}
        for ev_name, quantile, slope in itertools.product(masks, QUANTILES, SLOPES):
            ev = evidence[ev_name]
            tau = float(np.quantile(ev["val"][labelled], quantile))
            sc = {k: torch.sigmoid(gated_logits(torch.as_tensor(head[k]), torch.as_tensor(ev[k]), tau, slope)).numpy() for k in sets}
            th = constrained_threshold(sc["val"], wins["val"].targets, sc["free"])
            t = th["value"]
            passed = sc["held"].max(1) >= t
            rows.append({"head": Path(str(name)).stem, "evidence": ev_name, "quantile": quantile, "slope": slope, "tau": tau,
                         "threshold": t, "val_f1": th["micro_f1"], "val_recall": window_recall(sc["val"], wins["val"].targets, t),
                         "val_top1": metrics_from_scores(sc["val"], wins["val"], ds.class_names)["recording"]["top1"],
                         "val_false": th["false_rate"], "test_recall": window_recall(sc["test"], wins["test"].targets, t),
                         "test_top1": metrics_from_scores(sc["test"], wins["test"], ds.class_names)["recording"]["top1"],
                         "held_out_windows": int(len(passed)), "held_out_false": int(passed.sum()),
                         "held_out_false_families": ",".join(sorted(held_src[passed]))})
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.groupby(["evidence", "quantile", "slope"])[["val_f1", "val_recall", "val_false", "test_recall", "test_top1",
                                                                 "held_out_false"]].mean().round(3))
    if args.out:
        table.to_csv(args.out, index=False, float_format="%.4g")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
