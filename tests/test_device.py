"""Device choices: how many rows fill a pass, and where mixed precision is (not) used."""

from __future__ import annotations

import contextlib

import pytest
import torch

from core.io.device import CPU_ROWS, clips_per_batch, fit_rows, rows_per_pass, scoring_autocast, scoring_batch_size


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
