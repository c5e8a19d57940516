"""Benchmark: latency of a warm prediction, as the Clip page sees it.

Prints the median time of one 5 s prediction (model forward with similarity maps)
after warm-up, and the time of a full warm re-run of the Clip page under AppTest.
Run: ``python bench/warm_predict.py``.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.field.inference import analyze_waveform  # noqa: E402
from core.models.registry import load_checkpoint  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(160_000) * 0.05).astype(np.float32)
    for name in ("baseline", "protopnet"):
        model = load_checkpoint(name, device="cpu")
        analyze_waveform(model, x)
        times = []
        for _ in range(10):
            t = time.perf_counter()
            analyze_waveform(model, x)
            times.append(time.perf_counter() - t)
        print(f"{name}: one 5 s prediction, median of 10 warm runs: {statistics.median(times) * 1000:.0f} ms")

    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "pages" / "1_Clip.py"), default_timeout=300)
    t = time.perf_counter()
    at.run()
    cold = time.perf_counter() - t
    t = time.perf_counter()
    at.run()
    warm = time.perf_counter() - t
    print(f"Clip page (AppTest, dataset clip, prototypes shown): cold run {cold:.2f} s, warm re-run {warm:.2f} s")


if __name__ == "__main__":
    main()
