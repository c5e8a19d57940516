"""Resumable training: a run interrupted after an epoch and started again ends with the weights of an uninterrupted run.

Tiny models on generated clips or random feature maps (CI never trains a shipped model); the interruption is an
exception raised from the state's ``on_save`` hook, as a killed process leaves the state of its last finished epoch.
"""

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ParameterError
from core.io.data import Dataset
from core.models.birdnet_heads import HeadConfig
from core.models.registry import build_model
from core.training.heads import train_head
from core.training.resume import TrainingResume, read_progress, resume_path
from core.training.train import TrainConfig, train_model
from tests.conftest import tiny_config


class Interrupted(Exception):
    pass


def interrupt_after(n_saves: int):
    """An ``on_save`` hook that raises after the ``n_saves``-th state is written (a run killed right after it)."""
    seen = []

    def hook(position):
        seen.append(position)
        if len(seen) == n_saves:
            raise Interrupted(position)

    return hook


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=1e-6, msg=k)


def _train(arch, dataset, cfg, resume=None):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    return model, train_model(model, dataset, cfg, resume=resume)


@pytest.mark.parametrize("arch,stop", [("baseline", 1), ("protopnet", 2)])
def test_an_interrupted_training_resumes_to_the_weights_of_an_uninterrupted_one(arch, stop, tiny_dataset, tmp_path):
    """Baseline: 2 epochs, killed after the first. AudioProtoPNet: 1 warm-up + 2 joint epochs, killed after the first joint
    epoch, so the resumed run skips the warm-up and restores the joint phase's optimiser, schedule and best weights."""
    ds = Dataset(tiny_dataset)
    cfg = TrainConfig(epochs=2, warm_epochs=1, last_layer_epochs=2, batch_size=2, lr=3e-3, freq_mask=2, time_mask=4,
                      loss="bce" if arch == "baseline" else "asl")
    reference, ref_card = _train(arch, ds, cfg)

    path = tmp_path / f"{arch}.resume.pt"
    settings = {"options": {"arch": arch}, "data": "tiny"}
    with pytest.raises(Interrupted):
        _train(arch, ds, cfg, TrainingResume(path, settings, on_save=interrupt_after(stop)))
    assert path.is_file()
    total = 2 + (1 if arch == "protopnet" else 0)
    assert read_progress(path) == pytest.approx(stop / total)

    resume = TrainingResume(path, settings)
    stage = 1 if arch == "protopnet" else 0
    assert resume.resumed_from == {"stage": stage, "epoch": 1} and resume.prior_seconds > 0
    resumed, card = _train(arch, ds, cfg, resume)
    assert_same_weights(resumed, reference)
    assert [h["phase"] for h in card["history"]] == [h["phase"] for h in ref_card["history"]]
    assert [h.get("loss") for h in card["history"]] == pytest.approx([h.get("loss") for h in ref_card["history"]], abs=1e-9)
    assert card["metrics"]["test"]["window"]["cmap"] == pytest.approx(ref_card["metrics"]["test"]["window"]["cmap"], abs=1e-9)
    resume.delete()
    assert not path.exists()


def _features(n=24, seed=0):
    rng = np.random.default_rng(seed)
    feats = rng.random((n, 4, 3, 5)).astype(np.float32)
    focal = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    feats[np.arange(n), np.arange(n) % 3] += 1.0  # each class lights its own channel
    return feats, focal


@pytest.mark.parametrize("kind,with_stage", [("prototype", True), ("linear", False)])
def test_a_head_resumes_to_the_weights_of_an_uninterrupted_one(kind, with_stage, tmp_path):
    """train_head on cached maps (with a tuned stage for the prototype head): killed after epoch 1 of 3, resumed."""
    feats, focal = _features()
    cfg = HeadConfig(kind=kind, prototypes_per_class=2, epochs=3, batch_size=8, seed=3, push_every=2)

    def run(resume=None):
        torch.manual_seed(0)
        stage = nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU()) if with_stage else None
        head, history = train_head(cfg, feats, focal, focal, stage=stage, resume=resume)
        return head, stage, history

    head_ref, stage_ref, hist_ref = run()
    path = tmp_path / "head.resume.pt"
    with pytest.raises(Interrupted):
        run(TrainingResume(path, {"options": {"kind": kind}}, on_save=interrupt_after(1)))
    head, stage, hist = run(TrainingResume(path, {"options": {"kind": kind}}))
    assert_same_weights(head, head_ref)
    if with_stage:
        assert_same_weights(stage, stage_ref)
    def timeless(h):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in h]

    assert timeless(hist) == timeless(hist_ref) and any(row["phase"] == "push" for row in hist) == (kind == "prototype")


def test_a_state_of_other_arguments_is_refused_unless_restart(tmp_path):
    path = resume_path(tmp_path / "m.safetensors")
    assert path == tmp_path / "m.resume.pt"
    model = nn.Linear(2, 2)
    TrainingResume(path, {"options": {"epochs": 4, "lr": 1e-3}, "data": "abc"}).save(0, 1, modules={"model": model})
    with pytest.raises(ParameterError, match=r"other arguments.*epochs.*--restart"):
        TrainingResume(path, {"options": {"epochs": 5, "lr": 1e-3}, "data": "abc"})
    with pytest.raises(ParameterError, match="data"):
        TrainingResume(path, {"options": {"epochs": 4, "lr": 1e-3}, "data": "other"})
    same = TrainingResume(path, {"options": {"lr": 1e-3, "epochs": 4}, "data": "abc"})  # key order does not matter
    assert same.resumed_from == {"stage": 0, "epoch": 1}
    fresh = TrainingResume(path, {"options": {"epochs": 5, "lr": 1e-3}, "data": "abc"}, restart=True)
    assert fresh.resumed_from is None and not path.exists()  # discarded; the first epoch writes the new one
    assert fresh.restore(0, modules={"model": model}) == (0, {})


def test_an_unreadable_state_is_a_one_line_error(tmp_path):
    from core.errors import CheckpointError

    path = tmp_path / "m.resume.pt"
    path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable resume state.*--restart"):
        TrainingResume(path, {"options": {}})
    assert read_progress(path) is None and read_progress(tmp_path / "none.resume.pt") is None


@pytest.fixture
def root_logging():
    """``python -m core train`` in this process sets the root logger's level: restored afterwards."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.slow
def test_train_command_resumes_its_interrupted_run_and_refuses_other_arguments(tiny_dataset, tmp_path, monkeypatch, capsys,
                                                                              root_logging):
    import core.training.resume as resume_module
    from core.cli import main
    from core.models.registry import load_checkpoint, read_model_card

    base = ["train", "--config", "baseline-small", "--name", "m", "--epochs", "2", "--batch-size", "4", "--data-dir", str(tiny_dataset)]
    a, b = tmp_path / "a", tmp_path / "b"
    assert main([*base, "--out-dir", str(a)]) == 0  # uninterrupted
    assert not (a / "m.resume.pt").exists() and "resumed_from" not in read_model_card(a / "m.safetensors")

    def interrupt():
        real = resume_module.TrainingResume.save

        def save_then_die(self, *args, **kw):
            real(self, *args, **kw)
            raise Interrupted()

        with monkeypatch.context() as m:
            m.setattr(resume_module.TrainingResume, "save", save_then_die)
            with pytest.raises(Interrupted):
                main([*base, "--out-dir", str(b)])
        assert (b / "m.resume.pt").is_file()

    interrupt()
    assert not (b / "m.safetensors").exists()
    capsys.readouterr()
    assert main([*base, "--out-dir", str(b), "--lr", "1e-3"]) == 2  # other arguments: refused, the state kept
    err = capsys.readouterr().err
    assert "other arguments" in err and "lr" in err and "--restart" in err and "Traceback" not in err
    assert (b / "m.resume.pt").is_file()
    assert main([*base, "--out-dir", str(b)]) == 0  # the same arguments: resumed
    assert "resuming m from m.resume.pt (stage 0, epoch 1 done" in capsys.readouterr().err
    assert read_model_card(b / "m.safetensors")["resumed_from"] == {"stage": 0, "epoch": 1}
    assert not (b / "m.resume.pt").exists()
    assert_same_weights(load_checkpoint(b / "m.safetensors", device="cpu"), load_checkpoint(a / "m.safetensors", device="cpu"))
    log = (b / "m.log").read_text()
    assert "train epoch 1/2" in log and "train epoch 2/2" in log  # appended to, not replaced, by the resumed run

    interrupt()
    assert main([*base, "--out-dir", str(b), "--lr", "1e-3", "--restart"]) == 0  # --restart: a fresh run with the new arguments
    card = read_model_card(b / "m.safetensors")
    assert "resumed_from" not in card and card["train_config"]["lr"] == 1e-3 and not (b / "m.resume.pt").exists()
