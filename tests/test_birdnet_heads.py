"""Prototype and linear heads on BirdNET features: the trunk matches BirdNET, heads learn, the push is a real cell."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from core.errors import ParameterError
from core.io.data import WindowSet
from core.models.birdnet import load_birdnet
from core.models.birdnet_heads import BirdNETStage, BirdNETTrunk, HeadConfig, PrototypeHead, head_scores, stage_features
from core.training.heads import extract_features, push_head, train_head, train_last_layer


def _synthetic(n=120, c=16, f=4, t=6, k=3, seed=0):
    """Windows of noise with their class's pattern (a strong channel) in one cell."""
    rng = np.random.default_rng(seed)
    y = np.zeros((n, k), np.float32)
    y[np.arange(n), np.arange(n) % k] = 1
    feats = rng.normal(size=(n, c, f, t)).astype(np.float32)
    cells = rng.integers(0, [f, t], size=(n, 2))
    for i in range(n):
        feats[i, i % k, cells[i, 0], cells[i, 1]] += 6.0
    return feats.astype(np.float16), y, cells


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["prototype", "linear"])
def test_heads_learn_a_pattern_hidden_in_one_cell(kind):
    feats, y, _ = _synthetic()
    # the classification loss alone (the cluster/separation costs are tuned for BirdNET's maps, not this toy)
    cfg = HeadConfig(kind=kind, prototypes_per_class=2, epochs=40, batch_size=16, lr=5e-2 if kind == "prototype" else 1e-2,
                     loss="bce", cluster_weight=0.0, separation_weight=0.0)
    head, history = train_head(cfg, feats, y, y)
    assert history[-1]["loss"] < history[0]["loss"]
    acc = (head_scores(head, feats).argmax(1) == y.argmax(1)).mean()
    assert acc > (0.75 if kind == "prototype" else 0.9)  # chance is 1/3


@pytest.mark.slow
def test_push_puts_each_prototype_on_a_real_cell_of_its_own_class():
    feats, y, _ = _synthetic()
    cfg = HeadConfig(prototypes_per_class=2, epochs=5, batch_size=16, loss="bce")
    head, _ = train_head(cfg, feats, y, y)
    sources = push_head(head, feats, y)
    assert len(sources) == head.n_prototypes == 6
    for s in sources:
        assert y[s["window"], s["class_index"]] == 1  # a window whose focal species is the prototype's class
        cell = torch.as_tensor(feats[s["window"], :, s["freq_index"], s["time_index"]]).float()
        cell = (cell - head.feature_mean.cpu()) / head.feature_std.cpu()  # the head compares standardised cells
        assert torch.allclose(head.prototype_vectors[s["prototype"], :, 0, 0].detach().cpu(), cell, atol=1e-5)
        assert -1 <= s["similarity"] <= 1
    # after the push each prototype fires fully (cosine 1) on its source cell
    with torch.no_grad():
        sims = head.similarity_maps(torch.as_tensor(feats[[s["window"] for s in sources]]).float())
    for i, s in enumerate(sources):
        assert float(sims[i, s["prototype"], s["freq_index"], s["time_index"]]) == pytest.approx(1.0, abs=1e-4)
    before = head.last_layer.detach().clone()
    history = train_last_layer(head, cfg, feats, y)
    assert len(history) == cfg.last_layer_epochs and not torch.equal(before, head.last_layer.detach())


def test_prototype_head_class_connection_is_non_negative_and_own_class_only():
    head = PrototypeHead(channels=8, n_classes=3, prototypes_per_class=2)
    with torch.no_grad():
        head.last_layer.fill_(-1.0)  # negative weights act as zero
    x = torch.randn(4, 8, 3, 5)
    assert torch.allclose(head(x), head.last_layer_bias.expand(4, 3))


def test_head_config_rejects_bad_values():
    with pytest.raises(ParameterError, match="kind"):
        HeadConfig(kind="mlp")
    with pytest.raises(ParameterError, match="loss"):
        HeadConfig(loss="focal")
    with pytest.raises(ParameterError, match="epochs"):
        HeadConfig(epochs=0)


@pytest.fixture(scope="module")
def birdnet():
    return load_birdnet(device="cpu")


@pytest.mark.slow
def test_trunk_equals_birdnet_intermediates_and_caches(birdnet, tmp_path, monkeypatch):
    monkeypatch.setenv("BIRDSHIELD_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    x = torch.randn(2, 144_000) * 0.05
    trunk = BirdNETTrunk("BLOCK_3-5_ADD")
    with torch.no_grad():
        got = trunk(x)
        want = birdnet.intermediates(x, ("BLOCK_3-5_ADD",))["BLOCK_3-5_ADD"]
    assert got.shape == (2, 108, 6, 16) and torch.allclose(got, want, atol=1e-5)
    windows = WindowSet(waveforms=x.numpy(), targets=np.zeros((2, 9), np.float32), recording_index=np.array([0, 0]),
                        starts=np.array([0, 144_000]), recordings=[type("R", (), {"recording_id": "XC1"})()])
    maps = extract_features(["BLOCK_3-5_ADD", "ACT_POST"], windows, batch_size=1)
    assert maps["BLOCK_3-5_ADD"].dtype == np.float16 and maps["ACT_POST"].shape == (2, 192, 3, 8)
    assert np.allclose(maps["BLOCK_3-5_ADD"].astype(np.float32), want.numpy(), atol=2e-2, rtol=2e-3)
    assert len(list((tmp_path / "birdnet_features").glob("*.npy"))) == 2
    again = extract_features("ACT_POST", windows)  # from the cache
    assert np.array_equal(again["ACT_POST"], maps["ACT_POST"])
    with pytest.raises(ParameterError, match="no layer"):
        BirdNETTrunk("BLOCK_9-9_ADD")


@pytest.mark.slow
def test_stage_continues_the_trunk_and_fine_tunes_with_the_head(birdnet):
    torch.manual_seed(0)
    x = torch.randn(6, 144_000) * 0.05
    with torch.no_grad():
        inter = birdnet.intermediates(x, ("BLOCK_3-4_ADD", "BLOCK_3-5_ADD"))
    stage = BirdNETStage("BLOCK_3-4_ADD", "BLOCK_3-5_ADD")
    got = stage_features(stage, inter["BLOCK_3-4_ADD"].numpy())
    assert got.shape == (6, 108, 6, 16) and np.allclose(got, inter["BLOCK_3-5_ADD"].numpy(), atol=1e-4)
    before = {k: v.detach().clone() for k, v in stage.state_dict().items()}
    y = np.eye(3, dtype=np.float32)[np.arange(6) % 3]
    cfg = HeadConfig(kind="linear", epochs=3, batch_size=3, lr=1e-2, loss="bce")
    train_head(cfg, inter["BLOCK_3-4_ADD"].numpy().astype(np.float16), y, y, stage=stage, lr_stage=1e-3)
    moved = [k for k, v in stage.state_dict().items() if not torch.equal(v, before[k])]
    assert moved  # the stage's weights were trained with the head
    assert not np.allclose(stage_features(stage, inter["BLOCK_3-4_ADD"].numpy()), got, atol=1e-4)
    with pytest.raises(ParameterError, match="no layer"):
        BirdNETStage("BLOCK_3-4_ADD", "BLOCK_9-9_ADD")


def test_trunk_rows_map_to_both_input_channels_bands():
    trunk = BirdNETTrunk("ACT_POST")
    bands = trunk.row_bands_hz(3)
    assert len(bands) == 3
    (low_top, high_top), (low_bottom, high_bottom) = bands[0], bands[-1]
    assert high_top[1] > high_bottom[1] and low_top[1] > low_bottom[1]  # row 0 is the highest band
    assert high_top[1] > 10_000 and low_top[1] <= 3_100  # the two channels span 0.5-15 kHz and 0-3 kHz


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["birdnet-protopnet", "birdnet-linear"])
def test_head_model_checkpoint_holds_only_the_head_and_round_trips(arch, tmp_path):
    from safetensors import safe_open

    from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
    from core.models.registry import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = BirdNETHeadConfig(arch=arch, class_names=("aaa", "bbb", "ccc"), layer="BLOCK_3-5_ADD", channels=108,
                            prototypes_per_class=2)
    model = BirdNETHeadModel(cfg).eval()
    path = save_checkpoint(model, tmp_path / "head.safetensors", {"note": "test"})
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("head.") for k in keys)  # never BirdNET's own weights
    assert path.stat().st_size < 200_000
    loaded = load_checkpoint(path, device="cpu")
    assert isinstance(loaded, BirdNETHeadModel) and loaded.config == cfg
    x = (torch.randn(2, 144_000) * 0.05).requires_grad_(True)
    out = loaded.forward_all(x)
    assert out.logits.shape == (2, 3) and out.feature_map.shape == (2, 108, 6, 16)
    with torch.no_grad():
        assert torch.allclose(out.logits, model(x), atol=1e-5)
    if arch == "birdnet-protopnet":
        assert out.similarity_maps.shape == (2, 6, 6, 16) and out.prototype_activations.shape == (2, 6)
        # the model's maps are BirdNET's rows flipped (row 0 = lowest band), so they overlay the display spectrogram
        with torch.no_grad():
            raw = model.trunk_features(x)  # frozen BirdNET, its own row order
        assert torch.allclose(out.feature_map, raw.flip(2))
        assert loaded.class_connection().shape == (3, 6)
    else:
        assert out.similarity_maps is None
    out.logits.sum().backward()  # white-box: gradients reach the waveform
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.slow
def test_tuned_head_checkpoint_holds_the_tuned_stage_and_reproduces_it(birdnet, tmp_path):
    from safetensors import safe_open

    from core.models.birdnet_proto import BirdNETHeadConfig, BirdNETHeadModel
    from core.models.registry import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = BirdNETHeadConfig(arch="birdnet-protopnet", class_names=("aaa", "bbb", "ccc"), layer="BLOCK_3-5_ADD",
                            channels=108, prototypes_per_class=2, tuned_from="BLOCK_3-4_ADD")
    model = BirdNETHeadModel(cfg).eval()
    x = (torch.randn(2, 144_000) * 0.05).requires_grad_(True)
    with torch.no_grad():  # untouched, the stage continues BirdNET's own graph exactly
        want = birdnet.intermediates(x, ("BLOCK_3-5_ADD",))["BLOCK_3-5_ADD"]
        assert torch.allclose(model.head_map(model.forward_features(x)), want.flip(2), atol=1e-4)
        for q in model.tuned_parameters():  # as fine-tuning would
            q.add_(0.01 * torch.randn_like(q))
        tuned = model.head_map(model.forward_features(x))  # the features are the frozen trunk's; the head reads the stage's map
    assert not torch.allclose(tuned, want.flip(2), atol=1e-3)
    path = save_checkpoint(model, tmp_path / "tuned.safetensors", {"note": "test"})
    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    stage_keys = [k for k in keys if k.startswith("stage.")]
    assert stage_keys and all(k.startswith(("head.", "stage.")) for k in keys)
    n_stage = sum(model.stage.state_dict()[k[6:]].numel() for k in stage_keys)
    assert 100_000 < n_stage < 400_000  # the last block only, never the whole of BirdNET
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == cfg and loaded.config.tuned_from == "BLOCK_3-4_ADD"
    out = loaded.forward_all(x)
    with torch.no_grad():
        assert torch.allclose(out.feature_map, tuned, atol=1e-5) and torch.allclose(out.logits, model(x), atol=1e-5)
    out.logits.sum().backward()  # white-box through the tuned stage too
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    frozen = BirdNETHeadModel(BirdNETHeadConfig(**{**cfg.to_dict(), "tuned_from": None, "frontend": cfg.frontend}))
    with pytest.raises(RuntimeError, match="outside the head"):  # a tuned checkpoint never loads into a frozen model
        frozen.load_state_dict(loaded.state_dict())
    # training reaches the stage and head through methods: shared parts, and a model assembled from trained parts
    stage, head = loaded.trainable_parts()
    assert [id(q) for q in stage.parameters()] == [id(q) for q in loaded.tuned_parameters()] and loaded.tuned_parameters()
    with torch.no_grad():
        assert torch.allclose(loaded.tuned_features(loaded.trunk_features(x)).flip(2), out.feature_map, atol=1e-5)
        rebuilt = BirdNETHeadModel.from_parts(cfg, head, stage).eval()
        assert torch.allclose(rebuilt(x), out.logits, atol=1e-5)
    with pytest.raises(ParameterError, match="tuned_from"):
        BirdNETHeadModel.from_parts(cfg, head)


@pytest.mark.slow
def test_no_bird_windows_are_train_split_site_noise_and_synthetic_sounds(data_dir):
    from core.io.data import Dataset
    from core.training.heads import NO_BIRD_SYNTHETIC_ID, no_bird_windows
    from core.training.noisebank import bank_path, read_bank_table

    ds = Dataset(data_dir)
    w = no_bird_windows(ds, n_synthetic=30, seed=3)
    kept = read_bank_table(bank_path(ds))
    kept_train = set(kept[kept["kept"].astype(bool) & (kept["split"] == "train")]["recording_id"])
    site = [r.recording_id for r in w.recordings[:-1]]
    assert site and len(set(site)) == len(site) and set(site) <= kept_train  # never a val or test recording: the no-bird check's site noise stays held out
    assert w.recordings[-1].recording_id.startswith(NO_BIRD_SYNTHETIC_ID)
    n_site = int(np.sum(w.recording_index < len(w.recordings) - 1))
    assert n_site == int(kept["kept"].astype(bool)[kept["split"] == "train"].sum()) and len(w.waveforms) == n_site + 30
    assert w.waveforms.shape[1] == 144_000 and w.waveforms.dtype == np.float32 and not w.targets.any()
    synth = w.waveforms[n_site:]
    rms_db = 20 * np.log10(np.sqrt(np.mean(synth.astype(np.float64) ** 2, axis=1)))
    assert rms_db.min() > -82 and rms_db.max() < -5 and rms_db.std() > 5  # levels spread over the drawn range
    assert len(set(w.clip_ids(48_000))) == len(w.waveforms)  # unique ids: the feature cache keys them
    again = no_bird_windows(ds, n_synthetic=30, seed=3)
    assert np.array_equal(again.waveforms, w.waveforms)
    assert not np.array_equal(no_bird_windows(ds, n_synthetic=30, seed=4).waveforms[n_site:], synth)
    with pytest.raises(ParameterError, match="n_synthetic"):
        no_bird_windows(ds, n_synthetic=-1)


def test_adversarial_finetuning_refuses_bad_settings_before_any_work():
    from types import SimpleNamespace

    from core.training.head_finetune import adversarial_finetune_head

    tuned = SimpleNamespace(config=SimpleNamespace(tuned_from="BLOCK_3-4_ADD", layer="BLOCK_3-5_ADD"), card={})
    frozen = SimpleNamespace(config=SimpleNamespace(tuned_from=None, layer="BLOCK_3-5_ADD"), card={})
    for kw, needle in [({"adv": "at-z"}, "adv must be one of"), ({"epochs": 0}, "epochs >= 1"), ({"eps": 0.0}, "eps in (0, 1]"),
                       ({"eps": 2.0}, "eps in (0, 1]"), ({"beta": -1.0}, "beta >= 0"),
                       ({"adv": "noise", "noise_sigma": 0.0}, "noise_sigma must lie in (0, 1)")]:
        with pytest.raises(ParameterError, match=re.escape(needle)):
            adversarial_finetune_head(None, tuned, **kw)
    with pytest.raises(ParameterError, match="BirdNET frozen"):
        adversarial_finetune_head(None, frozen)
    linear = SimpleNamespace(config=SimpleNamespace(tuned_from="BLOCK_3-4_ADD", layer="BLOCK_3-5_ADD", arch="birdnet-linear"), card={})
    with pytest.raises(ParameterError, match="needs a prototype head"):
        adversarial_finetune_head(None, linear, adv="at-x")


@pytest.mark.parametrize("synthetic_recipe,recipe", [("no-bird-families-v1-seed1", "train"), ("no-bird-synthetic-v1-seed1", "v1")])
def test_adversarial_finetuning_draws_the_no_bird_windows_its_head_was_trained_with(synthetic_recipe, recipe, monkeypatch):
    """A head trained with --no-bird-families train is fine-tuned on the same kinds of negatives (issue 24's recipe)."""
    from types import SimpleNamespace

    import core.training.head_finetune as head_finetune

    seen = {}

    def stop(dataset, read, **kw):
        seen.update(kw)
        raise ParameterError("stopped by the test")

    monkeypatch.setattr(head_finetune, "head_training_data", stop)
    card = {"data": {"no_bird_negatives": {"synthetic": 512, "synthetic_recipe": synthetic_recipe}}, "train_config": {"seed": 0}}
    tuned = SimpleNamespace(config=SimpleNamespace(tuned_from="BLOCK_3-4_ADD", layer="BLOCK_3-5_ADD"), card=card)
    with pytest.raises(ParameterError, match="stopped by the test"):
        head_finetune.adversarial_finetune_head(None, tuned)
    assert seen["no_bird"] == 512 and seen["recipe"] == recipe


def test_recipe_of_a_finetuned_head_names_the_adversary_or_the_control():
    from core.studies.compare import model_recipe

    base = {"config": {"arch": "birdnet-protopnet", "layer": "BLOCK_3-5_ADD", "tuned_from": "BLOCK_3-4_ADD"}}
    assert model_recipe("h", {**base, "train_config": {"adv": "at-e", "finetune_epochs": 4, "adv_eps": 1e-4}})[1].endswith(
        "then AT-E (4 epochs, eps 0.0001)")
    assert model_recipe("h", {**base, "train_config": {"adv": "none", "finetune_epochs": 4}})[1].endswith("then OT+FT (4 clean epochs)")
    assert model_recipe("h", {**base, "train_config": {"adv": "noise", "finetune_epochs": 4, "noise_sigma": 3e-4}})[1].endswith(
        "then Gaussian noise (4 epochs, sigma 0.0003)")
    assert model_recipe("h", {**base, "train_config": {"lr": 0.05}})[1] == "head on BirdNET's BLOCK_3-5_ADD, BLOCK_3-4_ADD -> BLOCK_3-5_ADD fine-tuned"


def test_noise_arm_adds_gaussian_noise_of_its_sigma_to_every_sample_unclipped():
    from core.training.head_finetune import noisy_windows

    waves = np.zeros((4, 48_000), np.float32)
    waves[0, :100] = 1.0  # full scale: the noise is not clipped (nor is the smoothing noise it trains for)
    out = noisy_windows(waves, 3e-4, np.random.default_rng(0))
    assert out.dtype == np.float32 and out.shape == waves.shape
    d = (out - waves).astype(np.float64)
    assert abs(d.mean()) < 3e-6 and d.std() == pytest.approx(3e-4, rel=0.01)
    assert out[0, :100].max() > 1.0
    assert np.array_equal(out, noisy_windows(waves, 3e-4, np.random.default_rng(0)))  # the generator decides the draw
    assert not np.array_equal(out, noisy_windows(waves, 3e-4, np.random.default_rng(1)))
