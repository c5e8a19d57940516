"""Sharded sweeps on a local Ray instance give the single-process table; shards are independent and resumable."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from core.errors import ParameterError
from core.models.registry import list_checkpoints
from core.studies.distributed import REPO_ROOT, SweepOptions, shard_batches, sweep_sharded, sweep_single_process

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")


def test_shards_are_whole_batches_dealt_round_robin():
    assert shard_batches(7, 2, 2) == [[0, 1, 4, 5], [2, 3, 6]]
    assert shard_batches(3, 4, 3) == [[0, 1, 2], [], []]
    assert sorted(i for s in shard_batches(23, 3, 4) for i in s) == list(range(23))
    with pytest.raises(ParameterError, match="n_shards"):
        shard_batches(5, 2, 0)
    with pytest.raises(ParameterError, match="exactly one of"):
        SweepOptions(models=("baseline",))


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_sharded_sweep_on_local_ray_equals_the_single_process_sweep(data_dir, tmp_path, local_ray):
    # 3 rows per clip and model (clean, eps 0, eps 1e-4); two groups (32 kHz 5 s models and a 48 kHz 3 s BirdNET
    # head), 5 clips in batches of 2 -> 3 batches over 2 shards
    opts = SweepOptions(models=("baseline", "protopnet", "birdnet_linear"), epsilons=(0.0, 1e-4), attack="pgd", steps=2,
                        max_clips=5, batch_clips=2, data_dir=str(data_dir))
    import torch

    torch.set_num_threads(1)  # as in the workers: the same reductions, the same floats
    single = sweep_single_process(opts, tmp_path / "single.parquet")
    out = tmp_path / "sharded.parquet"
    sharded = sweep_sharded(opts, out, n_shards=2)
    assert len(single) == 3 * 5 * 3 and set(single["model"]) == {"baseline", "protopnet", "birdnet_linear"}
    pd.testing.assert_frame_equal(sharded, single, check_exact=False, rtol=1e-5, atol=1e-7)
    pd.testing.assert_frame_equal(pd.read_parquet(out), single, check_exact=False, rtol=1e-5, atol=1e-7)
    shard_dir = tmp_path / "sharded.parquet.shards"
    files = sorted(shard_dir.glob("*.parquet"))
    assert len(files) == 4  # 2 groups x 2 shards
    # shard 0 holds batches 0 and 2 (clips 0, 1, 4), shard 1 batch 1 (clips 2, 3); 3 rows (clean, 2 budgets) per clip and model
    assert sorted(len(pd.read_parquet(f)) for f in files) == [3 * 2 * 1, 3 * 3 * 1, 3 * 2 * 2, 3 * 3 * 2]

    # resumable: a lost shard is recomputed, the finished ones are not touched
    lost = files[0]
    mtimes = {f: os.stat(f).st_mtime_ns for f in files[1:]}
    lost.unlink()
    again = sweep_sharded(opts, out, n_shards=2)
    assert lost.exists() and all(os.stat(f).st_mtime_ns == t for f, t in mtimes.items())
    pd.testing.assert_frame_equal(again, single, check_exact=False, rtol=1e-5, atol=1e-7)

    # a shard table of other settings is refused, not silently mixed in
    other = SweepOptions(**{**opts.__dict__, "epsilons": (0.0, 1e-3)})
    with pytest.raises(ParameterError, match="other settings"):
        sweep_sharded(other, out, n_shards=2)
