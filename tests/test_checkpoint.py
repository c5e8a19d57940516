import json

import pytest
import torch
from safetensors.torch import save_file

from core.errors import CheckpointError
from core.models.registry import ModelConfig, build_model, load_checkpoint, save_checkpoint
from tests.conftest import tiny_config


def test_round_trip(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors", {"note": "test"})
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.config == tiny_model.config
    assert loaded.card["note"] == "test" and loaded.card["config"]["arch"] == tiny_model.config.arch
    x = torch.randn(2, 16_000) * 0.1
    with torch.no_grad():
        assert torch.allclose(loaded(x), tiny_model(x), atol=1e-6)
    assert not loaded.training


def test_missing_and_not_safetensors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04pickle-ish bytes")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(bad)


def test_truncated(tiny_model, tmp_path):
    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors", {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_config_mismatch(tiny_model, tmp_path):
    state = {k: v.contiguous() for k, v in tiny_model.state_dict().items()}
    cfg = tiny_model.config.to_dict()
    # another code version
    save_file(state, str(tmp_path / "v.safetensors"), metadata={"config": json.dumps({**cfg, "version": 999})})
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(tmp_path / "v.safetensors")
    # unknown config key
    save_file(state, str(tmp_path / "k.safetensors"), metadata={"config": json.dumps({**cfg, "bogus": 1})})
    with pytest.raises(CheckpointError, match="bogus"):
        load_checkpoint(tmp_path / "k.safetensors")
    # weights of another architecture under this config
    other = "baseline" if tiny_model.config.arch == "protopnet" else "protopnet"
    save_file(state, str(tmp_path / "a.safetensors"), metadata={"config": json.dumps({**cfg, "arch": other})})
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(tmp_path / "a.safetensors")
    # no config at all
    save_file(state, str(tmp_path / "n.safetensors"))
    with pytest.raises(CheckpointError, match="no birdshield config"):
        load_checkpoint(tmp_path / "n.safetensors")


def test_shape_mismatch(tmp_path):
    small = build_model(tiny_config("baseline"))
    cfg = ModelConfig.from_dict({**tiny_config("baseline").to_dict(), "class_names": ["a", "b"]}).to_dict()
    save_file({k: v.contiguous() for k, v in small.state_dict().items()}, str(tmp_path / "s.safetensors"),
              metadata={"config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(tmp_path / "s.safetensors")


def test_corrupt_card_is_an_error_not_defaults(tiny_model, tmp_path):
    from core.models.registry import read_model_card

    path = save_checkpoint(tiny_model, tmp_path / "m.safetensors", {"note": "x"})
    path.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        read_model_card(path)
    with pytest.raises(CheckpointError, match="not readable JSON"):
        load_checkpoint(path)
    path.with_suffix(".json").unlink()
    assert read_model_card(path) == {}  # no card at all is allowed
    assert load_checkpoint(path).card == {}


def test_card_and_weights_are_a_pair(tmp_path):
    torch.manual_seed(0)
    a = build_model(tiny_config("baseline"))
    torch.manual_seed(1)
    b = build_model(tiny_config("baseline"))
    pa = save_checkpoint(a, tmp_path / "a.safetensors", {"note": "a"})
    pb = save_checkpoint(b, tmp_path / "b.safetensors", {"note": "b"})
    assert len(json.loads(pa.with_suffix(".json").read_text())["weights_sha256"]) == 64
    pa.write_bytes(pb.read_bytes())  # a's card now sits beside b's weights
    with pytest.raises(CheckpointError, match="belongs to other weights"):
        load_checkpoint(pa)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.safetensors", "b.json", "b.safetensors"]  # no temporaries
