"""Benchmark: CLI start-up, ``python -m core --help`` and ``python -m core predict`` on a 5 s file.

Each command runs ``--repeats`` times in a fresh process (the first run of a session also pays the disk cache; it is
printed but left out of the median). Prints the median wall time, the load average before the runs, and the targets
(issue 25: ``--help`` < 1 s; ``predict`` on a 5 s file < 6 s on a quiet machine). The 5 s file is cut from a dataset
recording (or is quiet noise when no dataset is found); ``--model`` chooses predict's model (default: the CLI's).

Run: ``python bench/cli_startup.py [--repeats 5] [--model birdnet]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent


def five_seconds(path: Path) -> str:
    """Write a 5 s 48 kHz mono WAV to ``path``; returns where it came from."""
    sys.path.insert(0, str(ROOT))
    try:
        from core.io.audio import load_audio
        from core.io.data import open_dataset

        rec = open_dataset().split("test")[0]
        clip = load_audio(rec.path, sample_rate=48_000, offset_s=0.0, duration_s=5.0).waveform
        source = f"the first 5 s of {rec.recording_id}"
    except Exception:  # no dataset: quiet noise
        clip = (np.random.default_rng(0).standard_normal(240_000) * 0.01).astype(np.float32)
        source = "noise at -40 dBFS (no dataset found)"
    sf.write(str(path), clip, 48_000)
    return source


def timed(cmd: list[str], repeats: int) -> tuple[float, float]:
    """(first run, median of the ``repeats`` runs after it) wall time [s]; raises on a failed run."""
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        if r.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[2:])} failed: {r.stderr.strip()[-500:]}")
    return times[0], statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default=None, help="predict's --model (default: the CLI's default)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="birdshield-startup-") as tmp:
        wav = Path(tmp) / "clip5.wav"
        source = five_seconds(wav)
        print(f"load average before: {os.getloadavg()[0]:.2f} (1 min), {len(os.sched_getaffinity(0))} CPUs")
        first, med = timed([sys.executable, "-m", "core", "--help"], args.repeats)
        print(f"python -m core --help: {med:.2f} s median of {args.repeats} (first run {first:.2f} s; target < 1 s)")
        cmd = [sys.executable, "-m", "core", "predict", str(wav)] + (["--model", args.model] if args.model else [])
        first, med = timed(cmd, args.repeats)
        print(f"python -m core predict on a 5 s file ({source}){' --model ' + args.model if args.model else ''}: "
              f"{med:.2f} s median of {args.repeats} (first run {first:.2f} s; target < 6 s on a quiet machine)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
