import pytest
import torch

from core.attacks import FGSM, PGD, clean_prediction_targets, multilabel_loss
from core.errors import ParameterError

ATTACKS = [
    lambda eps: PGD(eps=eps, steps=5, generator=torch.Generator().manual_seed(0)),
    lambda eps: PGD(eps=eps, steps=3, random_start=False),
    lambda eps: FGSM(eps=eps),
]


@pytest.mark.parametrize("make", ATTACKS, ids=["pgd", "bim", "fgsm"])
def test_attack_contract(tiny_model, make):
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(2, 16_000, generator=gen) * 2 - 1) * 0.9
    x[0, :100] = 1.0  # samples at the bound stay inside it
    eps = 0.01
    tiny_model.train()
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    with torch.no_grad():
        tiny_model.eval()
        y = clean_prediction_targets(tiny_model(x))
        tiny_model.train()
    adv = make(eps)(tiny_model, x)
    assert tiny_model.training  # mode restored
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= -1.0 and adv.max() <= 1.0
    assert all(p.grad is None for p in tiny_model.parameters())
    for k, v in tiny_model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(v, before[k])
    tiny_model.eval()
    with torch.no_grad():
        assert (multilabel_loss(tiny_model(adv), y) > multilabel_loss(tiny_model(x), y)).all()
    assert torch.equal(make(0.0)(tiny_model, x), x)


def test_mask_keeps_padding(tiny_model):
    x = torch.rand(1, 16_000) * 0.2
    mask = torch.ones_like(x)
    mask[:, 8000:] = 0
    adv = PGD(eps=0.05, steps=2)(tiny_model, x, mask=mask)
    assert torch.equal(adv[:, 8000:], x[:, 8000:])
    assert (adv[:, :8000] != x[:, :8000]).any()


def test_parameter_errors(tiny_model):
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ParameterError, match="eps"):
            PGD(eps=bad)
    with pytest.raises(ParameterError, match="steps"):
        PGD(eps=0.1, steps=0)
    with pytest.raises(ParameterError, match="bounds"):
        PGD(eps=0.1)(tiny_model, torch.full((1, 16_000), 2.0))
    with pytest.raises(ParameterError, match="NaN"):
        PGD(eps=0.1)(tiny_model, torch.full((1, 16_000), float("nan")))
