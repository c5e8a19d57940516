"""One shared contract test over every attack, norm and objective, plus sweeps and bisection."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from core.attacks import (
    ATTACKS,
    BIM,
    FGSM,
    PGD,
    make_attack,
    make_objective,
)
from core.attacks import objectives as ob
from core.attacks.sweep import minimal_eps, run_sweep
from core.errors import ParameterError
from core.metrics import eps_for_snr, snr_db

EPS = {"linf": 0.01, "l2": 1.0}


def _clips(n=2, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = ((torch.rand(n, 16_000, generator=gen) * 2 - 1) * 0.9).to(dtype)
    x[0, :100] = 1.0  # samples at the bound stay inside it
    return x


def _objectives(model):
    target = _clips(1, seed=7)[0] * 0.5
    objs = [ob.OutputUntargeted(), ob.OutputMargin(), ob.OutputTargeted(1, "add"), ob.OutputTargeted(0, "remove"), ob.OutputTargetedMargin(2),
            ob.EmbeddingUntargeted(), ob.EmbeddingTargeted(target)]
    if hasattr(model, "prototype_vectors"):
        objs += [ob.PrototypeSuppress(k=2), ob.PrototypeActivate(prototype_index=3), ob.PrototypeShift()]
    return objs


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_contract(tiny_model, name, norm):
    x = _clips()
    eps = EPS[norm]
    for objective in _objectives(tiny_model):
        if getattr(objective, "needs_random_start", False) and name in ("fgsm", "bim"):
            with pytest.raises(ParameterError, match="random start"):  # it would not move the clip at all
                make_attack(name, eps=EPS[norm], norm=norm, steps=5, objective=objective)
            continue
        tiny_model.train()
        before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
        attack = make_attack(name, eps=eps, norm=norm, steps=5, objective=objective)
        adv = attack(tiny_model, x)
        label = f"{name}/{norm}/{objective.name}"
        assert tiny_model.training, label  # mode restored
        assert adv.shape == x.shape and adv.dtype == x.dtype, label
        delta = adv - x
        size = delta.abs().amax(-1) if norm == "linf" else delta.norm(dim=-1)
        assert (size <= eps + 1e-6).all(), label
        assert adv.min() >= -1.0 and adv.max() <= 1.0, label
        assert all(p.grad is None for p in tiny_model.parameters()), label
        for k, v in tiny_model.state_dict().items():  # BatchNorm statistics untouched
            assert torch.equal(v, before[k]), label
        tiny_model.eval()
        state = objective.prepare(tiny_model, x)
        with torch.no_grad():
            value = objective.evaluate(tiny_model.forward_all(adv), state)["objective"]
        assert (value > state["clean_objective"]).all(), f"{label}: {value} vs {state['clean_objective']}"
        zero = make_attack(name, eps=0.0, norm=norm, objective=objective)
        assert torch.equal(zero(tiny_model, x), x), label


def test_prototype_objective_needs_protopnet():
    from core.models.registry import build_model
    from tests.conftest import tiny_config

    baseline = build_model(tiny_config("baseline")).eval()
    with pytest.raises(ParameterError, match="AudioProtoPNet"):
        PGD(eps=0.01, objective=ob.PrototypeSuppress())(baseline, _clips())


def test_mask_keeps_padding(tiny_model):
    x = torch.rand(1, 16_000) * 0.2
    mask = torch.ones_like(x)
    mask[:, 8000:] = 0
    for norm in ("linf", "l2"):
        adv = PGD(eps=EPS[norm], norm=norm, steps=2)(tiny_model, x, mask=mask)
        assert torch.equal(adv[:, 8000:], x[:, 8000:])
        assert (adv[:, :8000] != x[:, :8000]).any()


def test_snr_budget_reaches_at_least_target(tiny_proto):
    x = _clips() * 0.3
    for norm in ("linf", "l2"):
        adv = PGD(snr_db=30.0, norm=norm, steps=3)(tiny_proto, x)
        snr = snr_db(x, adv)
        assert (snr >= 30.0 - 1e-3).all(), (norm, snr)
        assert (snr <= 36.0).all(), (norm, snr)  # the budget is used, not wasted
    # eps for an SNR: L2 exactly ||x|| 10^(-SNR/20); L-inf rms(x) 10^(-SNR/20)
    w = np.array([0.5, -0.5, 0.5, -0.5])
    assert eps_for_snr(w, 20.0, norm="l2") == pytest.approx(1.0 * 0.1)
    assert eps_for_snr(w, 20.0) == pytest.approx(0.5 * 0.1)


@pytest.mark.slow
def test_seeded_attacks_are_reproducible(tiny_proto):
    x = _clips()
    # small steps, so that the random start still shows (default steps saturate at +-eps)
    a = PGD(eps=0.01, steps=2, alpha_ratio=0.05, seed=3)(tiny_proto, x)
    assert torch.equal(a, PGD(eps=0.01, steps=2, alpha_ratio=0.05, seed=3)(tiny_proto, x))
    assert not torch.equal(a, PGD(eps=0.01, steps=2, alpha_ratio=0.05, seed=4)(tiny_proto, x))
    # a clip's random start does not depend on the batch it is in
    for norm in ("linf", "l2"):
        attack = PGD(eps=0.01, norm=norm, seed=3)
        both = attack.start_noise(x)
        assert torch.equal(both[1], attack.start_noise(x[1:])[0])
        assert not torch.equal(both[0], both[1])


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sweep_equals_looped_attacks(tiny_model, norm):
    """Batched eps grid == one attack per eps with the same seed (float64: no ties in sign())."""
    model = tiny_model.double()
    x = _clips(3, dtype=torch.float64) * 0.5
    grid = [0.0, EPS[norm] / 4, EPS[norm]]
    for objective in (ob.OutputUntargeted(), ob.EmbeddingUntargeted()):
        attack = PGD(eps=grid[-1], norm=norm, steps=3, seed=5, objective=objective)
        res = run_sweep(attack, model, x, epsilons=grid, max_rows=4, keep_waveforms=True)
        assert res.success.shape == (3, 3) and res.scores.shape == (3, 3, 3)
        for i, e in enumerate(grid):
            single = PGD(eps=e, norm=norm, steps=3, seed=5, objective=objective)(model, x)
            np.testing.assert_allclose(res.adversarial[i], single.float().numpy(), atol=1e-6)
            with torch.no_grad():
                scores = torch.sigmoid(model(single)).numpy()
            np.testing.assert_allclose(res.scores[i], scores, atol=1e-5)
        np.testing.assert_array_equal(res.adversarial[0], x.float().numpy())
        assert np.all(res.prs[0] == 1.0) and not res.success[0].any()


def test_sweep_snr_grid_and_targeted_scores(tiny_proto):
    x = _clips() * 0.3
    attack = PGD(eps=0.1, steps=5, objective=ob.OutputTargeted(2, "add"))
    res = run_sweep(attack, tiny_proto, x, snr_db=[60.0, 20.0, 0.0])
    assert np.all(res.snr_db >= np.array([60.0, 20.0, 0.0])[:, None] - 1e-3)
    assert np.all(np.diff(res.eps, axis=0) > 0)  # lower SNR, bigger eps, per clip
    assert np.isfinite(res.drs).all() and np.isfinite(res.tars).all()
    # at 0 dB the target class is pushed up: its score rises, DRS falls below the clean 1
    assert (res.scores[2, :, 2] > res.clean_scores[:, 2]).all()
    assert (res.drs[2] < res.drs[0]).all()
    untargeted = run_sweep(PGD(eps=0.1, steps=2), tiny_proto, x, epsilons=[0.01])
    assert np.isnan(untargeted.drs).all() and np.isnan(untargeted.tars).all()


@pytest.mark.slow
def test_minimal_eps_brackets_the_flip(tiny_proto):
    x = _clips(2) * 0.3
    attack = BIM(eps=0.1, steps=5)
    found = minimal_eps(attack, tiny_proto, x, eps_low=1e-5, eps_high=0.5, iterations=8)
    assert found["found"].all()
    eps = found["eps"]
    assert ((eps > 1e-5) & (eps <= 0.5)).all()
    # BIM is deterministic: the attack succeeds at the eps found and fails a little below it
    for i in range(2):
        at = run_sweep(attack, tiny_proto, x[i : i + 1], epsilons=[float(eps[i]), float(eps[i]) * 0.98])
        assert at.success[0, 0] and not at.success[1, 0], (i, eps[i])
        assert at.snr_db[0, 0] == pytest.approx(found["snr_db"][i], abs=1e-3)


def test_minimal_eps_not_found_is_nan(tiny_proto):
    x = _clips(1) * 0.3
    found = minimal_eps(FGSM(eps=0.1), tiny_proto, x, eps_low=1e-9, eps_high=1e-8, iterations=2)
    assert not found["found"][0] and np.isnan(found["eps"][0]) and np.isnan(found["snr_db"][0])
    with pytest.raises(ParameterError, match="eps_low"):
        minimal_eps(FGSM(eps=0.1), tiny_proto, x, eps_low=0.2, eps_high=0.1)


def test_parameter_errors(tiny_model):
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ParameterError, match="eps"):
            PGD(eps=bad)
    with pytest.raises(ParameterError, match="exactly one budget"):
        PGD()
    with pytest.raises(ParameterError, match="exactly one budget"):
        PGD(eps=0.1, snr_db=30.0)
    with pytest.raises(ParameterError, match="snr_db"):
        PGD(snr_db=500.0)
    with pytest.raises(ParameterError, match="steps"):
        PGD(eps=0.1, steps=0)
    with pytest.raises(ParameterError, match="steps"):
        PGD(eps=0.1, steps=10_000)
    with pytest.raises(ParameterError, match="norm"):
        PGD(eps=0.1, norm="l1")
    with pytest.raises(ParameterError, match="single step"):
        FGSM(eps=0.1, steps=3)
    with pytest.raises(ParameterError, match="random start"):
        BIM(eps=0.1, random_start=True)
    with pytest.raises(ParameterError, match="attack must be one of"):
        make_attack("cw", eps=0.1)
    with pytest.raises(ParameterError, match="objective must be one of"):
        make_objective("nope")
    with pytest.raises(ParameterError, match="class_index"):
        make_objective("output-targeted")
    with pytest.raises(ParameterError, match="bounds"):
        PGD(eps=0.1)(tiny_model, torch.full((1, 16_000), 2.0))
    with pytest.raises(ParameterError, match="NaN"):
        PGD(eps=0.1)(tiny_model, torch.full((1, 16_000), float("nan")))
    with pytest.raises(ParameterError, match="class_index"):
        PGD(eps=0.1, objective=ob.OutputTargeted(7))(tiny_model, _clips())
    with pytest.raises(ParameterError, match="samples"):
        PGD(eps=0.1, objective=ob.EmbeddingTargeted(torch.zeros(100)))(tiny_model, _clips())
    with pytest.raises(ParameterError, match="grid is empty"):
        run_sweep(PGD(eps=0.1), tiny_model, _clips(), epsilons=[])
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        run_sweep(PGD(eps=0.1), tiny_model, _clips(), epsilons=[0.1, -1.0])


def test_output_margin_is_threshold_free_top1():
    """Margin = best other logit minus the source class's; success exactly when top-1 moves."""
    from core.models.base import ModelOutput

    obj = ob.OutputMargin()
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.1, 0.3, 0.2]])
    out = ModelOutput(logits=logits, embedding=torch.zeros(2, 4), feature_map=torch.zeros(2, 1, 1, 1))
    state = {"source_class": torch.tensor([0, 1])}
    assert torch.allclose(obj._value(out, state), torch.tensor([-1.0, -0.1]))
    assert obj._success(out, state).tolist() == [False, False]
    moved = ModelOutput(logits=torch.tensor([[0.9, 1.0, -1.0], [0.1, 0.3, 0.2]]), embedding=out.embedding, feature_map=out.feature_map)
    assert obj._success(moved, state).tolist() == [True, False]
    # with true labels the source is the labelled class the clean clip scores highest, not the overall top-1
    class Fixed(torch.nn.Module):
        def forward_all(self, x):
            return out

    st = obj.prepare(Fixed(), torch.zeros(2, 10), labels=torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]]))
    assert st["source_class"].tolist() == [1, 0]


def test_l2_random_start_is_uniform_in_the_ball():
    """In n = 3 dimensions a uniform point of the unit ball has P(r < 1/2) = 1/8 (a uniform radius would give 1/2)."""
    x = torch.rand(4000, 3, generator=torch.Generator().manual_seed(0)) * 0.5  # distinct rows: distinct seeds
    start = PGD(eps=1.0, norm="l2", steps=1, seed=0).start_noise(x)
    r = start.norm(dim=1)
    assert (r <= 1 + 1e-6).all()
    assert abs(float((r < 0.5).float().mean()) - 0.125) < 0.02
    assert abs(float((r < 0.8).float().mean()) - 0.512) < 0.03


def test_success_is_top1_not_a_score_threshold():
    """Uncalibrated scores: a set change at 0.5 is not success; a top-1 change is, whatever the scores."""
    from core.models.base import ModelOutput

    def out(logits):
        return ModelOutput(logits=torch.tensor(logits), embedding=torch.zeros(1, 2), feature_map=torch.zeros(1, 1, 1, 1))

    state = {"clean_top1": torch.tensor([0]), "clean_pred": torch.tensor([[1.0, 0.0, 0.0]])}
    obj = ob.OutputUntargeted()
    assert obj.success_definition == "top-1 species changed"
    assert not obj._success(out([[3.0, 2.0, 1.0]]), state)  # two more species above 0.5, same top-1
    assert obj._success(out([[-3.0, -2.0, -4.0]]), state)  # nothing above 0.5 but the top-1 moved
    add, remove = ob.OutputTargeted(1, "add"), ob.OutputTargeted(0, "remove")
    assert add._success(out([[-1.0, -0.5, -2.0]]), state)  # ranked first at a score of 0.38
    assert not add._success(out([[2.0, 1.5, -2.0]]), state)  # above 0.5 but not first
    assert remove._success(out([[0.9, 1.0, 0.0]]), state) and not remove._success(out([[0.1, 0.0, -1.0]]), state)


def test_apgd_checkpoints_follow_the_paper():
    from core.attacks.apgd import apgd_checkpoints

    # Croce & Hein 2020, Sec. 3.2: p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (times N_iter)
    assert apgd_checkpoints(100)[:8] == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(1) == [1]



def _evaluations(model, objective, x, *adversarials) -> list[dict]:
    """``objective.evaluate`` of each adversarial batch of ``x``, against the state of the clean batch (eval mode)."""
    model.eval()
    state = objective.prepare(model, x)
    with torch.no_grad():
        return [objective.evaluate(model.forward_all(a), state) for a in adversarials]


@pytest.mark.slow
def test_apgd_beats_a_too_large_fixed_step(tiny_model):
    # PGD with a step of 2 eps bounces between corners of the ball; APGD starts there and halves its step,
    # so with the same number of gradient steps it reaches a higher objective on every clip
    from core.attacks import APGD

    x = _clips(4, seed=5)
    objective = ob.OutputMargin()
    pgd = PGD(eps=0.02, steps=30, alpha_ratio=2.0, objective=objective)(tiny_model, x)
    apgd = APGD(eps=0.02, steps=30, objective=objective)(tiny_model, x)
    v_pgd, v_apgd = (e["objective"] for e in _evaluations(tiny_model, objective, x, pgd, apgd))
    assert (v_apgd >= v_pgd - 1e-6).all() and (v_apgd > v_pgd).any(), (v_apgd, v_pgd)


@pytest.mark.slow
def test_restarts_never_worse_and_validated(tiny_model):
    x = _clips(3, seed=9)
    objective = ob.OutputUntargeted()
    one = PGD(eps=0.003, steps=2, objective=objective)(tiny_model, x)
    many = PGD(eps=0.003, steps=2, restarts=4, objective=objective)(tiny_model, x)
    e1, e4 = _evaluations(tiny_model, objective, x, one, many)
    # per clip: success is kept, and without success the objective never drops below the first restart's
    assert (e4["success"] >= e1["success"]).all()
    assert ((e4["objective"] >= e1["objective"] - 1e-6) | e4["success"]).all()
    assert (many - x).abs().amax() <= 0.003 + 1e-7
    with pytest.raises(ParameterError, match="restarts"):
        PGD(eps=0.01, restarts=0)
    with pytest.raises(ParameterError, match="random start"):
        BIM(eps=0.01, restarts=2)


@pytest.mark.slow
def test_targeted_margin_makes_the_model_say_the_chosen_species(tiny_model):
    tiny_model.eval()
    x = _clips(4) * 0.3
    with torch.no_grad():
        clean = tiny_model(x)
    target = int(clean.mean(0).argmin())  # the species it is least inclined to say
    obj = ob.OutputTargetedMargin(target)
    adv = PGD(eps=0.3, steps=40, objective=obj)(tiny_model, x)
    with torch.no_grad():
        out = tiny_model.forward_all(adv)
    state = obj.prepare(tiny_model, x)
    res = obj.evaluate(out, state)
    assert (out.logits.argmax(-1) == target).float().mean() >= 0.75 and res["success"].float().mean() >= 0.75
    assert not state["clean_success"].any()  # nothing said it before the attack
    with pytest.raises(ParameterError, match="class_index"):
        ob.OutputTargetedMargin(99).check_model(tiny_model)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pgd", "apgd"])
def test_restarts_with_true_labels(tiny_proto, name):
    """Regression (issue 23): restarts with labels raised KeyError 'clean_top1' (the labelled state had no clean pass)."""
    x = _clips(3, seed=11)
    labels = torch.zeros(3, len(tiny_proto.config.class_names))
    labels[:, 1] = 1.0
    for objective in _objectives(tiny_proto):
        one = make_attack(name, eps=0.003, steps=2, objective=objective)(tiny_proto, x, labels)
        two = make_attack(name, eps=0.003, steps=2, restarts=2, objective=objective)(tiny_proto, x, labels)
        state = objective.prepare(tiny_proto, x, labels)
        with torch.no_grad():
            e1 = objective.evaluate(tiny_proto.forward_all(one), state)
            e2 = objective.evaluate(tiny_proto.forward_all(two), state)
        label = f"{name}/{objective.name}"
        assert two.shape == x.shape and (two - x).abs().amax() <= 0.003 + 1e-7, label
        # restart 0 is the single run: a restart only ever replaces it by a success or a higher objective
        assert (e2["success"] >= e1["success"]).all(), label
        assert ((e2["objective"] >= e1["objective"] - 1e-6) | e2["success"]).all(), label


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["protopnet", "birdnet_protopnet_ato"])
def test_restarts_with_labels_on_real_windows(data_dir, checkpoint):
    """The issue's case: PGD(eps=1e-4, steps=3, restarts=2) with labels on two real test windows."""
    from core.io.clips import dataset_clips
    from core.io.data import open_dataset
    from core.models.registry import load_checkpoint

    model = load_checkpoint(checkpoint, device="cpu")
    cfg = model.config
    clips = dataset_clips(open_dataset(data_dir), split="test", class_names=cfg.class_names,
                          sample_rate=cfg.frontend.sample_rate, window_samples=cfg.window_samples, max_clips=2)
    x, y = torch.as_tensor(clips.waveforms), torch.as_tensor(clips.labels)
    adv = PGD(eps=1e-4, steps=3, restarts=2, random_start=True)(model, x, y)
    assert adv.shape == x.shape and (adv - x).abs().amax() <= 1e-4 + 1e-7


def test_prototype_shift_moves_every_activation_and_counts_a_new_top_prototype(tiny_proto):
    x = _clips(2)
    state = ob.PrototypeShift().prepare(tiny_proto, x)
    assert torch.allclose(state["clean_objective"], torch.full((2,), 1e-6), atol=1e-7)  # no change: only the floor
    with torch.no_grad():
        acts = tiny_proto.forward_all(x).prototype_activations
    shifted = acts.clone()
    shifted[0] = acts[0].flip(-1)  # row 0: another prototype on top; row 1: unchanged
    expected = ((shifted - acts).square().mean(-1) + 1e-12).sqrt()
    torch.testing.assert_close(ob.prototype_activation_distance(shifted, acts), expected)
    out = SimpleNamespace(prototype_activations=shifted, logits=torch.zeros(2, 3))
    success = ob.PrototypeShift()._success(out, state)
    assert success.tolist() == [bool(acts[0].argmax() != acts[0].flip(-1).argmax()), False]
