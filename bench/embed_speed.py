"""Benchmark: embedding explorer speed for a shipped model on this machine.

Prints the time to embed the test split, numba's first compilation of UMAP, the
UMAP fit of the test split, a fit of 2,000 points (all splits' real embeddings,
padded to 2,000 with jittered copies when there are fewer), and a warm reload of
the test split's embeddings and map from the disk cache (what a second page load
does). Targets: warm reload < 1 s; the first UMAP of up to 2,000 clips < 10 s
after numba's first compilation. Run: ``python bench/embed_speed.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.io.clips import dataset_clips  # noqa: E402
from core.io.data import open_dataset  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402
from core.studies.embeddings import EmbeddingCache, compute_embeddings, embed, umap_map  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="protopnet")
    args = ap.parse_args()
    model = load_checkpoint(args.model, device="cpu")
    ds = open_dataset()
    sr, win, names = model.config.frontend.sample_rate, model.config.window_samples, model.config.class_names

    def clips(split):
        return dataset_clips(ds, split=split, class_names=names, sample_rate=sr, window_samples=win)

    test = clips("test")
    cache = EmbeddingCache(tempfile.mkdtemp(prefix="birdshield-bench-"))
    t = time.perf_counter()
    emb = compute_embeddings(model, test, cache=cache)
    t_embed = time.perf_counter() - t
    print(f"model {args.model}: embed the test split ({len(test)} clips of 5 s): {t_embed:.1f} s")

    t = time.perf_counter()
    umap_map(np.random.default_rng(0).standard_normal((50, 8)))
    print(f"numba's first compilation (UMAP of 50 points, once per process): {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    coords, _ = umap_map(emb.embeddings)
    t_fit = time.perf_counter() - t
    print(f"UMAP fit of the test split ({len(test)} points): {t_fit:.2f} s")
    key = EmbeddingCache.key("bench-umap", len(coords))
    cache.save(key, coords=coords)

    rest = [embed(model, clips(s).waveforms)[0] for s in ("train", "val")]
    pool = np.concatenate([emb.embeddings, *rest])
    n_real = len(pool)
    rng = np.random.default_rng(0)
    if n_real < 2000:
        extra = pool[rng.integers(0, n_real, 2000 - n_real)]
        pool = np.concatenate([pool, extra + rng.standard_normal(extra.shape).astype(np.float32) * pool.std() * 0.05])
    t = time.perf_counter()
    umap_map(pool[:2000])
    t_2000 = time.perf_counter() - t
    print(f"UMAP fit of 2,000 points ({n_real} real clips of all splits, the rest jittered copies): {t_2000:.2f} s (target < 10 s)")

    t = time.perf_counter()
    again = compute_embeddings(model, test, cache=cache)
    cache.load(key)
    t_warm = time.perf_counter() - t
    assert again.from_cache
    print(f"warm reload of the test split's embeddings and map from the cache: {t_warm * 1000:.0f} ms (target < 1 s)")


if __name__ == "__main__":
    main()
