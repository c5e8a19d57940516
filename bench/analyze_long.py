"""Benchmark: whole-file analysis of a long field recording (time and peak memory).

Writes a synthetic AudioMoth-like file (mono, 16-bit WAV at 48 kHz; pink noise at
-50 dBFS with a 3 kHz tone burst every 30 s) of ``--minutes`` minutes, then runs
``python -m core analyze`` on it in a fresh process for each model and prints the
wall time, the real-time factor (audio seconds per second of compute) and the
peak resident memory of that process. Memory should not grow with the file:
``--minutes 10`` and ``--minutes 60`` give about the same peak.

Run: ``python bench/analyze_long.py --minutes 60 --models protopnet,birdnet_protopnet``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
#: The CLI in a child process that reports its own peak resident memory (Linux: ru_maxrss in KiB) when it ends.
CHILD = ("import resource, sys\nfrom core.cli import main\ntry:\n    code = main(sys.argv[1:])\nfinally:\n"
         "    print('PEAK_RSS_KIB=%d' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\nsys.exit(code)")


def write_recording(path: Path, minutes: float, sample_rate: int = 48_000, seed: int = 0) -> None:
    """Write the synthetic recording in 60 s blocks (the benchmark itself stays small in memory)."""
    sys.path.insert(0, str(ROOT))
    from core.io.audio import pink_noise

    rng = np.random.default_rng(seed)
    with sf.SoundFile(path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16") as f:
        total = int(minutes * 60 * sample_rate)
        for start in range(0, total, 60 * sample_rate):
            n = min(60 * sample_rate, total - start)
            x = pink_noise(n, rng) * 10 ** (-50 / 20)
            t = np.arange(n) / sample_rate
            burst = (np.mod(t, 30.0) < 1.0) * 0.05 * np.sin(2 * np.pi * 3000 * t)
            f.write((x + burst).astype(np.float32))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--models", default="protopnet,birdnet_protopnet")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "field.wav"
        t0 = time.time()
        write_recording(wav, args.minutes)
        print(f"wrote {args.minutes:g} min ({wav.stat().st_size / 2**20:.0f} MiB) in {time.time() - t0:.0f} s")
        for model in args.models.split(","):
            t0 = time.time()
            r = subprocess.run([sys.executable, "-c", CHILD, "analyze", str(wav), "--model", model, "--out", tmp, "--threshold", "0.5"],
                               cwd=ROOT, capture_output=True, text=True)
            wall = time.time() - t0
            if r.returncode != 0:
                print(f"{model}: failed: {r.stderr.strip()[-400:]}")
                continue
            peak_kib = int(r.stderr.rsplit("PEAK_RSS_KIB=", 1)[1].split()[0])
            print(f"{model}: {wall:.0f} s for {args.minutes:g} min of audio (real-time factor {args.minutes * 60 / wall:.0f}x), "
                  f"peak memory of the analysing process {peak_kib / 1024:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
