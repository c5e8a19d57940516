"""Training runs end to end on a tiny model and generated clips (CI never trains a shipped model)."""

import numpy as np
import pytest
import torch

from core.io.data import Dataset
from core.models.registry import build_model, load_checkpoint, save_checkpoint
from core.training.train import TrainConfig, train_model
from tests.conftest import tiny_config


@pytest.mark.slow
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
    t = card["decision_threshold"]  # chosen on the validation windows, never the test ones
    assert t["split"] == "val" and t["n_windows"] == card["metrics"]["val"]["window"]["n"] and 0 < t["value"] < 1
    # the trained model round-trips through a checkpoint with its card
    path = save_checkpoint(model, tmp_path / f"{arch}.safetensors", card)
    loaded = load_checkpoint(path, device="cpu")
    x = torch.randn(2, 16_000) * 0.1
    with torch.no_grad():
        assert np.allclose(loaded(x).numpy(), model.eval()(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("adv", ["at-o", "at-e"])
@pytest.mark.parametrize("arch", ["baseline", "protopnet"])
def test_adversarial_training_steps(adv, arch, monkeypatch):
    """AT-O / AT-E: batches are really perturbed within eps, the adversarial term is non-zero, the loss falls."""
    import core.training.train as train

    torch.manual_seed(0)
    model = build_model(tiny_config(arch)).train()
    cfg = TrainConfig(batch_size=6, mixup_p=0.0, gain_db=0.0, freq_mask=0, time_mask=0, adv=adv, adv_eps=0.01, adv_beta=1.0,
                      loss="bce")
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(16_000) / 16_000
    freqs = torch.tensor([500.0, 2000.0, 5000.0, 500.0, 2000.0, 5000.0])
    x = 0.3 * torch.sin(2 * torch.pi * freqs[:, None] * t[None])
    y = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    seen = {}
    real = train.adversarial_batch

    def spy(model, xb, yb, cfg):
        out = real(model, xb, yb, cfg)
        seen["delta"] = (out - xb).abs().amax().item()
        seen["training"] = model.training
        return out

    monkeypatch.setattr(train, "adversarial_batch", spy)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, terms = [], []
    for _ in range(15):
        loss, term = train.training_step(model, x, y, cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        terms.append(term)
    assert 0 < seen["delta"] <= 0.01 + 1e-6  # perturbed, within eps
    assert seen["training"]  # train mode restored after the attack
    assert all(t is not None and t > 0 for t in terms)  # the adversarial term is non-zero
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    plain, none_term = train.training_step(model, x, y, TrainConfig(batch_size=6, loss="bce"), gen)
    assert none_term is None


def test_frozen_backbone_stays_frozen_under_adversarial_training():
    import core.training.train as train

    model = build_model(tiny_config("protopnet")).train()
    model.backbone.eval()
    cfg = TrainConfig(mixup_p=0.0, adv="at-o", adv_eps=0.01)
    train.training_step(model, torch.rand(2, 16_000) * 0.2, torch.eye(3)[:2], cfg, torch.Generator().manual_seed(0))
    assert model.training and not model.backbone.training
    with pytest.raises(Exception, match="adv"):
        TrainConfig(adv="trades")


def test_awp_moves_each_weight_by_gamma_uphill_and_restores_exactly():
    import core.training.train as train

    torch.manual_seed(0)
    model = build_model(tiny_config("baseline")).train()
    cfg = TrainConfig(batch_size=4, mixup_p=0.0, gain_db=0.0, freq_mask=0, time_mask=0, adv="at-o", adv_eps=0.01, loss="bce")
    x = torch.rand(4, 16_000) * 0.4 - 0.2
    y = torch.eye(3)[[0, 1, 2, 0]]
    batch = train._prepare_batch(model, x, y, cfg, torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.eval()  # fixed BatchNorm statistics, so the two losses differ only by the weights
    loss0 = train._batch_loss(model, batch, cfg)[0]
    diffs = train.awp_perturb(model, loss0, 0.005)
    assert len(diffs) == sum(p.ndim > 1 for p in model.parameters())
    for p, v in diffs:
        assert v.norm().item() == pytest.approx(0.005 * (p - v).norm().item(), rel=1e-4)
    loss1 = train._batch_loss(model, batch, cfg)[0]
    assert loss1.item() > loss0.item()  # an ascent step on the loss
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if p.ndim == 1)  # biases, norms untouched
    train.awp_restore(diffs)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-7)
    with pytest.raises(Exception, match="awp"):
        TrainConfig(awp_gamma=-1.0)


def test_training_with_awp_runs_and_lowers_the_loss(tiny_dataset):
    torch.manual_seed(0)
    model = build_model(tiny_config("baseline"))
    cfg = TrainConfig(epochs=3, batch_size=4, lr=3e-3, mixup_p=0.0, freq_mask=2, time_mask=4, loss="bce", adv="at-o", adv_eps=0.01,
                      awp_gamma=0.005, awp_warmup=1)
    card = train_model(model, Dataset(tiny_dataset), cfg)
    losses = [h["loss"] for h in card["history"]]
    assert losses[-1] < losses[0] and all(np.isfinite(losses))
    assert card["train_config"]["awp_gamma"] == 0.005


def test_fgsm_rs_starts_inside_the_ball_and_plain_fgsm_sits_on_its_corners():
    from core.training.adversarial import adversarial_batch

    torch.manual_seed(0)
    model = build_model(tiny_config("baseline")).eval()
    x = (torch.rand(3, 16_000, generator=torch.Generator().manual_seed(1)) * 2 - 1) * 0.5
    y = torch.zeros(3, 3)
    y[:, 0] = 1
    eps = 1e-3
    plain = adversarial_batch(model, x, y, TrainConfig(adv="at-o", adv_eps=eps, adv_random_start=False)) - x
    rs = adversarial_batch(model, x, y, TrainConfig(adv="at-o", adv_eps=eps)) - x
    assert torch.allclose(plain.abs(), torch.full_like(plain, eps), atol=1e-7)  # FGSM: every sample at +-eps
    assert rs.abs().max() <= eps + 1e-7
    inside = (rs.abs() < eps * (1 - 1e-3)).float().mean()
    # FGSM-RS: a uniform start u in [-eps, eps] plus a 1.25 eps signed step stays inside the ball when u lies in the
    # opposite 0.75 eps of the interval: 3/8 of the samples
    assert 0.3 < inside < 0.45, inside
    again = adversarial_batch(model, x, y, TrainConfig(adv="at-o", adv_eps=eps)) - x
    assert not torch.equal(rs, again)  # a fresh random start per batch
