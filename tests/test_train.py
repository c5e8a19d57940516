"""Training runs end to end on a tiny model and generated clips (CI never trains a shipped model)."""

import numpy as np
import pytest
import torch

from core.data import Dataset
from core.models.registry import build_model, load_checkpoint, save_checkpoint
from core.train import TrainConfig, train_model
from tests.conftest import tiny_config


@pytest.mark.parametrize("arch", ["baseline", "protopnet"])
def test_train_model_end_to_end(arch, tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_config(arch))
    cfg = TrainConfig(epochs=3, warm_epochs=1, last_layer_epochs=3, batch_size=4, lr=3e-3, mixup_p=0.0,
                      freq_mask=2, time_mask=4, loss="bce" if arch == "baseline" else "asl")
    card = train_model(model, Dataset(tiny_dataset), cfg)
    phases = [h["phase"] for h in card["history"]]
    if arch == "protopnet":
        assert phases[:1] == ["warm"] and "joint" in phases and "push" in phases and phases[-1] == "last_layer"
        assert len(card["prototypes"]) == 6
        assert {p["class_name"] for p in card["prototypes"]} == {"aaa", "bbb", "ccc"}
    train_losses = [h["loss"] for h in card["history"] if h["phase"] in ("train", "joint")]
    assert train_losses[-1] < train_losses[0]
    for split in ("val", "test"):
        m = card["metrics"][split]["window"]
        assert 0 <= m["cmap"] <= 1 and m["n"] == 9
    # the trained model round-trips through a checkpoint with its card
    path = save_checkpoint(model, tmp_path / f"{arch}.safetensors", card)
    loaded = load_checkpoint(path, device="cpu")
    x = torch.randn(2, 16_000) * 0.1
    with torch.no_grad():
        assert np.allclose(loaded(x).numpy(), model.eval()(x).numpy(), atol=1e-5)
