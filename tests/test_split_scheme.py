"""``--split-scheme`` on every subcommand that reads the dataset, and the refusal to evaluate a model on a split scheme
other than the one in its card (its val/test recordings would include recordings it trained on).

The dataset is the shipped xc9 manifest (``assets/xc9``: both schemes, no audio needed), so these run everywhere:
every refusal comes before any audio is read.
"""

import argparse
import json

import pytest
import torch

from core.cli import build_parser, main
from core.errors import ParameterError
from core.io.data import SHIPPED_MANIFEST_DIR, Dataset, open_dataset
from core.io.split import DEFAULT_SPLIT_SCHEME
from core.models.registry import build_model, check_split_scheme, save_checkpoint, trained_split_scheme
from tests.conftest import tiny_config

XC9 = str(SHIPPED_MANIFEST_DIR)
OTHER = "person" if DEFAULT_SPLIT_SCHEME == "recordist" else "recordist"


def subparsers() -> dict:
    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_every_subcommand_that_reads_the_dataset_takes_split_scheme():
    with_data = {n: p for n, p in subparsers().items() if "--data-dir" in p._option_string_actions}
    assert {"train", "train-head", "finetune-head", "open-set", "calibrate", "evaluate", "arms", "compare", "audit",
            "no-bird-check", "worst-case", "threats", "masking-attack", "sweep", "shift", "transfer", "embed-metrics",
            "cutoff", "reference", "head-study", "open-set-seeds", "noise-bank", "data"} <= set(with_data)
    for name, p in with_data.items():
        action = p._option_string_actions.get("--split-scheme")
        assert action is not None, f"{name} has no --split-scheme"
        assert action.choices == ["recordist", "person"] and action.default is None  # None: DEFAULT_SPLIT_SCHEME
    args = build_parser().parse_args(["evaluate", "--split-scheme", "person", "--data-dir", XC9])
    assert args.split_scheme == "person"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["evaluate", "--split-scheme", "manifest"])  # not offered: it may share recordists


def test_data_reports_the_chosen_split(capsys):
    person = Dataset(XC9, "person")
    assert main(["data", "--split-scheme", "person", "--data-dir", XC9]) == 0
    out = capsys.readouterr().out
    assert "person split" in out
    for s in ("train", "val", "test"):
        assert f"  {s}: {len(person.split(s))} recordings" in out
    assert main(["data", "--data-dir", XC9]) == 0
    assert f"{DEFAULT_SPLIT_SCHEME} split" in capsys.readouterr().out


def _captured(monkeypatch, module, attr):
    """Replace ``module.attr`` (a trainer) by one that records the dataset it gets and stops the command."""
    seen = {}

    def fake(dataset, *a, **kw):
        seen["scheme"] = dataset.split_scheme
        raise ParameterError("stopped by the test")

    monkeypatch.setattr(module, attr, fake)
    return seen


def test_training_commands_train_on_the_chosen_split(monkeypatch, tmp_path, capsys):
    import core.training.train as train

    seen = {}

    def fake(model, dataset, cfg, **kw):
        seen["scheme"] = dataset.split_scheme
        raise ParameterError("stopped by the test")

    monkeypatch.setattr(train, "train_model", fake)
    assert main(["train", "--config", "baseline-small", "--out-dir", str(tmp_path), "--split-scheme", "person", "--data-dir", XC9]) == 2
    assert seen == {"scheme": "person"} and "stopped by the test" in capsys.readouterr().err
    assert main(["train", "--config", "baseline-small", "--out-dir", str(tmp_path), "--data-dir", XC9]) == 2
    assert seen == {"scheme": DEFAULT_SPLIT_SCHEME}


def _tiny_checkpoint(tmp_path, scheme, name="tiny"):
    torch.manual_seed(0)
    card = {"name": name, "data": {"split_scheme": scheme}, "train_config": {"seed": 0}, "metrics": {"test": {}}}
    return str(save_checkpoint(build_model(tiny_config("baseline")), tmp_path / f"{name}.safetensors", card))


def test_check_split_scheme_names_both_schemes(tmp_path):
    from core.models.registry import load_checkpoint

    person, recordist = Dataset(XC9, "person"), Dataset(XC9, "recordist")
    model = load_checkpoint(_tiny_checkpoint(tmp_path, "recordist"), device="cpu")
    assert trained_split_scheme(model) == "recordist" == trained_split_scheme(model.card)
    check_split_scheme(model, recordist)  # the same scheme: fine
    with pytest.raises(ParameterError, match=r"tiny was trained on the 'recordist' split scheme.*split by 'person'.*--split-scheme recordist"):
        check_split_scheme(model, person)
    check_split_scheme({}, person)  # no card (BirdNET's has no data entry): not checked
    check_split_scheme({"data": {"n_recordings": 3}}, person)


# subcommands that evaluate checkpoints on a split; each must refuse before any audio is read
REFUSING = [
    ["evaluate", "--model", "{m}"],
    ["calibrate", "--model", "{m}"],
    ["arms", "--arm", "A={m}"],
    ["compare", "--models", "{m}", "--out", "{tmp}/store"],
    ["no-bird-check", "--models", "{m}", "--out", "{tmp}/nb.csv"],
    ["worst-case", "--models", "{m}", "--out", "{tmp}/wc.csv"],
    ["threats", "--models", "{m}", "--out", "{tmp}/t.csv"],
    ["masking-attack", "--models", "{m}", "--out", "{tmp}/m.csv"],
    ["shift", "--models", "{m}"],
    ["transfer", "--models", "{m}"],
    ["embed-metrics", "--models", "{m}"],
    ["sweep", "--models", "{m}", "--epsilons", "1e-3", "--out", "{tmp}/s.csv"],
    ["train", "--config", "baseline-small", "--init", "{m}", "--out-dir", "{tmp}/ck"],
]


@pytest.mark.parametrize("argv", REFUSING, ids=lambda a: a[0])
def test_a_model_is_refused_on_another_split_scheme(argv, tmp_path, capsys):
    m = _tiny_checkpoint(tmp_path, DEFAULT_SPLIT_SCHEME)
    argv = [a.format(m=m, tmp=tmp_path) for a in argv]
    assert main([*argv, "--split-scheme", OTHER, "--data-dir", XC9]) == 2
    err = capsys.readouterr().err
    assert f"trained on the '{DEFAULT_SPLIT_SCHEME}' split scheme" in err and f"split by '{OTHER}'" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob("*.csv"))  # nothing computed, nothing written
    assert json.loads((tmp_path / "tiny.json").read_text())["data"] == {"split_scheme": DEFAULT_SPLIT_SCHEME}  # card untouched


def test_open_dataset_default_is_the_default_scheme():
    assert open_dataset(XC9).split_scheme == DEFAULT_SPLIT_SCHEME
