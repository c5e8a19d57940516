"""Device choices: how many rows fill a pass, where mixed precision is (not) used, and how many CPU threads torch gets."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import core.io.device as device
from core.errors import ParameterError
from core.io.device import CPU_ROWS, clips_per_batch, fit_rows, rows_per_pass, scoring_autocast, scoring_batch_size, thread_policy

ROOT = Path(__file__).resolve().parent.parent


def test_fit_rows_takes_the_largest_power_of_two_that_fits():
    gib = 2**30
    assert fit_rows(1 * gib, 10 * gib) == 4  # 0.6 x 10 GiB = 6 GiB: 4 rows fit, 8 do not
    assert fit_rows(100 * 2**20, 139 * gib) == 512  # an H200: capped
    assert fit_rows(100 * 2**20, 139 * gib, cap=64) == 64
    assert fit_rows(5 * gib, 1 * gib) == 1  # never zero: one row is tried and fails loudly if it must
    assert fit_rows(0, gib) == 512


def test_cpu_keeps_the_measured_defaults_and_full_precision(monkeypatch):
    model = torch.nn.Linear(4, 2)
    assert rows_per_pass(model, 160_000) == CPU_ROWS
    assert clips_per_batch(model, 160_000, 5) == 4
    assert scoring_batch_size("cpu", 32) == 32
    assert isinstance(scoring_autocast("cpu"), contextlib.nullcontext)
    monkeypatch.setenv("BIRDSHIELD_PRECISION", "fp32")
    assert isinstance(scoring_autocast("cuda"), contextlib.nullcontext)
    monkeypatch.delenv("BIRDSHIELD_PRECISION")
    assert isinstance(scoring_autocast("cuda"), torch.autocast)
    assert scoring_batch_size("cuda", 32) == 256


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_rows_per_pass_on_cuda_fits_the_free_memory():
    model = torch.nn.Sequential(torch.nn.Unflatten(1, (1, -1)), torch.nn.Conv1d(1, 64, 9, padding=4), torch.nn.Flatten()).cuda()
    rows = rows_per_pass(model, 160_000)
    free, _ = torch.cuda.mem_get_info()
    assert 1 <= rows <= 512 and rows * 64 * 160_000 * 4 < free


@pytest.mark.parametrize(("n_cpus", "busy", "concurrent", "threads"), [
    (1, 0.0, False, 1), (1, 3.0, False, 1), (1, 0.0, True, 1),  # never fewer than one
    (2, 0.0, False, 2), (2, 0.2, False, 2),  # a quiet 2-core machine: both cores
    (2, 0.3, False, 1), (2, 1.0, False, 1), (2, 1.2, False, 1), (2, 8.0, False, 1),  # one core taken by another program
    (2, 0.0, True, 1),  # a core left to the decoder
    (16, 0.0, False, 16), (16, 3.5, False, 12), (16, 3.5, True, 11), (16, 40.0, False, 1),
])
def test_thread_policy_gives_one_thread_per_core_nobody_else_uses(n_cpus, busy, concurrent, threads):
    policy = thread_policy(n_cpus, busy, decode_concurrently=concurrent)
    assert policy.intra_op == threads
    assert policy.inter_op == 1
    assert f"{n_cpus} CPUs" in policy.reason


def test_thread_policy_override_and_bad_values():
    assert thread_policy(2, 2.0, override="3").intra_op == 3  # taken as given, whatever the load
    assert thread_policy(2, 0.0, override=" ").intra_op == 2  # empty: measured
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ParameterError, match="BIRDSHIELD_THREADS"):
            thread_policy(2, override=bad)
    with pytest.raises(ParameterError, match="n_cpus"):
        thread_policy(0)
    with pytest.raises(ParameterError, match="busy"):
        thread_policy(2, -0.5)


def test_busy_cpus_measures_the_others_share_of_this_process_cpus(monkeypatch):
    samples = iter([{0: (100, 200), 1: (100, 200), 2: (0, 100)}, {0: (150, 300), 1: (110, 300), 2: (0, 200)}])
    monkeypatch.setattr(device, "_cpu_times", lambda: next(samples))
    monkeypatch.setattr(device.os, "sched_getaffinity", lambda pid: {0, 1})  # CPU 2 (fully busy) is not ours
    assert device.busy_cpus(0.0) == pytest.approx(0.5 + 0.9)


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(("busy", "threads"), [(0.0, 2), (1.0, 1)])
def test_cli_sets_torch_threads_from_the_policy(monkeypatch, tmp_path, torch_threads, busy, threads):
    from core.cli import main

    monkeypatch.delenv("BIRDSHIELD_THREADS", raising=False)
    monkeypatch.setattr(device, "usable_cpus", lambda: 2)
    monkeypatch.setattr(device, "busy_cpus", lambda interval_s=0.1: busy)
    torch.set_num_threads(3)
    # a subcommand that fails fast on its input: the policy is applied before the handler runs
    assert main(["analyze", str(tmp_path / "missing.wav"), "--out", str(tmp_path)]) == 2
    assert torch.get_num_threads() == threads


def test_cli_takes_the_override_and_refuses_a_bad_one_in_one_line(monkeypatch, tmp_path, torch_threads, capsys):
    from core.cli import main

    monkeypatch.setenv("BIRDSHIELD_THREADS", "1")
    torch.set_num_threads(2)
    main(["analyze", str(tmp_path / "missing.wav"), "--out", str(tmp_path)])
    assert torch.get_num_threads() == 1
    capsys.readouterr()
    monkeypatch.setenv("BIRDSHIELD_THREADS", "many")
    assert main(["analyze", str(tmp_path / "missing.wav"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: BIRDSHIELD_THREADS must be an integer >= 1") and "\n" not in err


def test_choosing_threads_does_not_import_torch():
    code = ("import sys, os\nfrom core.io.device import apply_thread_policy\np = apply_thread_policy()\n"
            "assert 'torch' not in sys.modules\nassert os.environ['OMP_NUM_THREADS'] == str(p.intra_op)\n"
            "import torch\nassert torch.get_num_threads() == p.intra_op, (torch.get_num_threads(), p)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
