"""Metrics against hand-computed cases and scikit-learn; sweep tables, summaries and resumable runs."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from core import metrics
from core.attacks import PGD, OutputTargeted
from core.attacks.sweep import run_sweep
from core.errors import ParameterError
from core.studies.sweep import read_table, summarize, sweep_table, sweep_windows, write_table


def test_cmap_and_roc_auc_match_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((40, 4)) < 0.3).astype(int)
    y[:, 3] = 0  # a class without positives is left out
    s = rng.random((40, 4))
    keep = [0, 1, 2]
    assert metrics.cmap(s, y) == pytest.approx(np.mean([average_precision_score(y[:, c], s[:, c]) for c in keep]))
    assert metrics.macro_roc_auc(s, y) == pytest.approx(np.mean([roc_auc_score(y[:, c], s[:, c]) for c in keep]))
    assert metrics.top1_accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [1, 0]])) == 0.5


def test_prs_drs_tars_hand_computed():
    # PRS = min(1, exp(1 - L'/L)); L' = 2 L -> exp(-1)
    assert metrics.prs(1.0, 2.0) == pytest.approx(math.exp(-1))
    assert metrics.prs(1.0, 0.5) == 1.0  # attack made the prediction better: clipped at 1
    # DRS = min(1, exp(1 - L(x,t)/L(x',t))); the attack halves the distance to t -> exp(-1)
    assert metrics.drs(2.0, 1.0) == pytest.approx(math.exp(-1))
    assert metrics.drs(1.0, 3.0) == 1.0  # moved away from the target
    p, d = 0.5, 0.25
    assert metrics.tars(p, d) == pytest.approx(2 * p * d / (p + d))
    assert metrics.tars(p, d, beta=2.0) == pytest.approx(5 * p * d / (4 * p + d))
    assert metrics.tars(1.0, 1.0) == 1.0


def test_robustness_score_edge_cases():
    # zero clean loss: any increase gives PRS ~ 0, no change gives 1
    assert metrics.prs(0.0, 1e-3) == pytest.approx(0.0, abs=1e-12)
    assert metrics.prs(0.0, 0.0) == 1.0
    # target reached exactly: L(x', t) = 0 -> DRS ~ 0
    assert metrics.drs(1.0, 0.0) == pytest.approx(0.0, abs=1e-12)
    # no target (untargeted attack): NaN DRS propagates to TARS
    assert np.isnan(metrics.drs(np.nan, np.nan))
    assert np.isnan(metrics.tars(0.7, np.nan))
    assert metrics.tars(0.0, 0.0) == 0.0
    with pytest.raises(ParameterError, match="beta"):
        metrics.tars(0.5, 0.5, beta=0)
    assert metrics.attack_success_rate([True, False, True, True]) == 0.75
    assert np.isnan(metrics.attack_success_rate([]))


def test_perceptibility():
    x = np.array([[0.5, -0.5, 0.5, -0.5]])
    xp = x + np.array([[0.05, -0.05, 0.05, -0.05]])
    assert float(metrics.snr_db(x, xp)[0]) == pytest.approx(20.0, abs=1e-4)
    # dB_x = 20 log10(max|delta|) - 20 log10(max|x|) = 20 log10(0.05 / 0.5) = -20
    assert float(metrics.db_x(x, xp)[0]) == pytest.approx(-20.0, abs=1e-4)
    assert float(metrics.l2(x, xp)[0]) == pytest.approx(0.1)
    assert float(metrics.linf(x, xp)[0]) == pytest.approx(0.05)
    assert float(metrics.db_x(x, x)[0]) == -np.inf
    with pytest.raises(ParameterError, match="norm"):
        metrics.eps_for_snr(x, 20.0, norm="l1")


def _sweep(model, n=3, objective=None):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 16_000, generator=gen) * 2 - 1) * 0.3
    labels = torch.eye(3)[torch.arange(n) % 3]
    attack = PGD(eps=0.05, steps=2, objective=objective)
    res = run_sweep(attack, model, x, labels, epsilons=[0.0, 0.001, 0.05])
    return attack, res, x, labels


def test_sweep_table_and_summary(tiny_proto):
    attack, res, x, labels = _sweep(tiny_proto, objective=OutputTargeted(2, "add"))
    ids = ["c0", "c1", "c2"]
    df = sweep_table(res, model="tiny", attack=attack, clip_ids=ids, class_names=["aaa", "bbb", "ccc"], labels=labels.numpy())
    assert len(df) == 4 * 3 and set(df["budget_kind"]) == {"clean", "eps"}
    assert {"score:aaa", "label:ccc", "prs", "drs", "tars", "snr_db", "db_x"} <= set(df.columns)
    summary = summarize(df)
    assert list(summary["budget_kind"]) == ["clean", "eps", "eps", "eps"]
    clean = summary.iloc[0]
    # the summary's cmAP is the metric of the clip scores, recomputed by hand
    assert clean["cmap"] == pytest.approx(metrics.cmap(res.clean_scores, labels.numpy()))
    strong = summary.iloc[3]
    assert strong["cmap"] == pytest.approx(metrics.cmap(res.scores[2], labels.numpy()))
    assert strong["success_rate"] == pytest.approx(res.success[2].mean())
    assert strong["tars"] == pytest.approx(np.mean(res.tars[2]))
    assert strong["snr_db"] == pytest.approx(np.median(res.snr_db[2]))
    # eps 0 changes nothing: success equals the clean state's (a target may already be ranked first)
    assert summary.iloc[1]["success_rate"] == summary.iloc[0]["success_rate"] and summary.iloc[1]["prs"] == 1.0
    assert set(summary["success_definition"]) == {"target species ranked first"}
    with pytest.raises(ParameterError, match="clip ids"):
        sweep_table(res, model="tiny", attack=attack, clip_ids=["a"], class_names=["aaa", "bbb", "ccc"])


def test_tables_round_trip_and_reject_bad_files(tmp_path, tiny_proto):
    attack, res, x, labels = _sweep(tiny_proto)
    df = sweep_table(res, model="tiny", attack=attack, clip_ids=["a", "b", "c"], class_names=["aaa", "bbb", "ccc"], labels=labels.numpy())
    for ext in ("csv", "parquet"):
        write_table(df, tmp_path / f"t.{ext}")
        back = read_table(tmp_path / f"t.{ext}")
        pd.testing.assert_frame_equal(summarize(back), summarize(df), check_dtype=False)
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temporary file
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ParameterError, match="not a sweep table"):
        read_table(tmp_path / "bad.csv")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(ParameterError, match="cannot read"):
        read_table(tmp_path / "junk.parquet")
    with pytest.raises(ParameterError, match=".csv or .parquet"):
        write_table(df, tmp_path / "t.xlsx")


@pytest.mark.slow
def test_sweep_windows_resumes(tmp_path, tiny_proto, tiny_model):
    gen = torch.Generator().manual_seed(0)
    x = ((torch.rand(5, 16_000, generator=gen) * 2 - 1) * 0.3).numpy()
    labels = np.eye(3, dtype=np.float32)[np.arange(5) % 3]
    ids = [f"clip{i}" for i in range(5)]
    attack = PGD(eps=0.01, steps=2)
    out = tmp_path / "sweep.csv"
    full = sweep_windows({"m": tiny_proto}, attack, x, ids, labels, epsilons=[0.0, 0.01], clips_per_batch=2, out=out)
    # an interrupted run: keep only the rows of the first batch, then resume
    part = full[full["clip"].isin(ids[:2])]
    write_table(part, out)
    calls = []
    resumed = sweep_windows({"m": tiny_proto}, attack, x, ids, labels, epsilons=[0.0, 0.01], clips_per_batch=2, out=out,
                            progress=lambda d, t: calls.append(d))
    assert calls[0] == 2  # the two finished clips were skipped
    cols = ["clip", "budget_kind", "budget", "success", "prs", "score:aaa"]
    key = ["clip", "budget_kind", "budget"]
    pd.testing.assert_frame_equal(resumed[cols].sort_values(key).reset_index(drop=True),
                                  full[cols].sort_values(key).reset_index(drop=True), check_dtype=False, atol=1e-6)
    # another model joins the same table; other settings are refused
    both = sweep_windows({"m": tiny_proto, "other": tiny_model}, attack, x, ids, labels, epsilons=[0.0, 0.01], out=out)
    assert set(both["model"]) == {"m", "other"} and len(both) == 2 * 3 * 5
    with pytest.raises(ParameterError, match="other settings"):
        sweep_windows({"m": tiny_proto}, attack, x, ids, labels, epsilons=[0.0, 0.02], out=out)


def test_dataset_clips_subset_labels_and_bounds(tiny_dataset):
    import soundfile as sf

    from core.io.clips import dataset_clips
    from core.io.data import Dataset

    # a float WAV that overshoots full scale (as resampling can): clips must still be attackable
    loud = next((tiny_dataset / "audio" / "bbb").glob("bbbtrain0.wav"))
    t = np.arange(int(2.5 * 22_050)) / 22_050
    sf.write(loud, (1.3 * np.sin(2 * np.pi * 2000 * t)).astype(np.float32), 22_050, subtype="FLOAT")
    ds = Dataset(tiny_dataset)
    clips = dataset_clips(ds, split="train", class_names=["aaa", "bbb", "ccc"], sample_rate=16_000, window_samples=16_000)
    assert np.abs(clips.waveforms).max() <= 1.0
    assert len(clips) == len(set(clips.clip_ids)) == 6 * 3  # 6 recordings of 2.5 s: windows at 0, 1, 2 s
    assert clips.masks[:, -1].sum() == 6 * 2  # the last window of each recording is half padding
    assert set(clips.species) == {"aaa", "bbb", "ccc"}
    np.testing.assert_array_equal(clips.labels.argmax(1), [("aaa", "bbb", "ccc").index(s) for s in clips.species])
    sub = dataset_clips(ds, split="train", class_names=["aaa", "bbb", "ccc"], sample_rate=16_000, window_samples=16_000, max_clips=3)
    assert len(sub) == 3 and len(set(sub.species)) == 3  # a small subset still spreads over species
    one = dataset_clips(ds, split="test", class_names=["aaa", "bbb", "ccc"], sample_rate=16_000, window_samples=16_000, species="ccc")
    assert set(one.species) == {"ccc"}
    with pytest.raises(ParameterError, match="species"):
        dataset_clips(ds, split="test", class_names=["aaa", "bbb", "ccc"], sample_rate=16_000, window_samples=16_000, species="zzz")


@pytest.mark.slow
def test_cancelled_sweep_leaves_a_complete_table_and_resumes(tmp_path, tiny_proto):
    gen = torch.Generator().manual_seed(1)
    x = ((torch.rand(6, 16_000, generator=gen) * 2 - 1) * 0.3).numpy()
    ids = [f"c{i}" for i in range(6)]
    out = tmp_path / "s.parquet"

    def cancel_after_first_batch(done, total):
        if done >= 2:
            raise KeyboardInterrupt  # what Ctrl-C (CLI) or Stop (dashboard) does to a run

    with pytest.raises(KeyboardInterrupt):
        sweep_windows({"m": tiny_proto}, PGD(eps=0.01, steps=1), x, ids, epsilons=[0.01], clips_per_batch=2, out=out,
                      progress=cancel_after_first_batch)
    partial = read_table(out)  # a readable table with exactly the finished batch
    assert sorted(partial["clip"].unique()) == ["c0", "c1"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    full = sweep_windows({"m": tiny_proto}, PGD(eps=0.01, steps=1), x, ids, epsilons=[0.01], clips_per_batch=2, out=out)
    assert sorted(full["clip"].unique()) == ids and len(full) == 6 * 2
