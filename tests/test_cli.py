"""The CLI on the shipped checkpoints: predictions, attack, and one-line errors for bad input."""

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")


def run(*args):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def wav(tmp_path):
    rng = np.random.default_rng(0)
    x = tone(3000, 8.0, 44_100, amp=0.2) + rng.standard_normal(int(8.0 * 44_100)).astype(np.float32) * 0.01
    path = tmp_path / "clip.wav"
    sf.write(path, np.stack([x, x], 1), 44_100)  # stereo 44.1 kHz: down-mixed and resampled
    return path


@pytest.mark.slow

def _help_text(parser) -> str:
    """A parser's help on one line, formatted unwrapped (argparse wraps at hyphens, e.g. "birdnet-" / "all")."""
    import functools

    fmt = parser.formatter_class
    parser.formatter_class = functools.partial(fmt, width=100_000, max_help_position=100_000)
    try:
        return " ".join(parser.format_help().split())
    finally:
        parser.formatter_class = fmt

def test_predict_json(wav):
    r = run("predict", str(wav), "--model", "protopnet", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["windows"]) == 2  # 8 s -> a 5 s window and a padded 3 s window
    scores = res["windows"][0]["scores"]
    assert len(scores) == 9 and all(0 <= v <= 1 for v in scores.values())
    assert res["top"][0]["score"] >= res["top"][1]["score"]


@pytest.mark.slow
def test_attack_writes_audio(wav, tmp_path):
    out = tmp_path / "adv.wav"
    r = run("attack", str(wav), "--model", "baseline", "--eps", "0.002", "--steps", "3", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["linf"] <= 0.002 + 1e-4  # 16-bit WAV quantisation aside, the budget holds
    assert 10 < res["snr_db"] < 60
    adv, sr = sf.read(out, dtype="float32")
    assert sr == 32_000 and len(adv) == 8 * 32_000


def test_attack_file_targeted_makes_the_windows_say_the_target(wav):
    from core.field.inference import attack_file
    from core.models.registry import load_checkpoint

    model = load_checkpoint("baseline")
    names = list(model.config.class_names)
    clean, _ = attack_file(model, str(wav), eps=0.0, steps=1)
    target = next(n for n in names if n != clean["windows"][0]["top_before"][0]["species"])
    res, adv = attack_file(model, str(wav), eps=0.01, steps=50, objective="output-targeted-margin", target_species=target.upper())
    assert res["objective"] == "output-targeted-margin" and res["target_species"] == target
    assert [w["top_after"][0]["species"] for w in res["windows"]] == [target] * len(res["windows"])
    assert res["linf"] <= 0.01 + 1e-6 and len(adv) == 8 * 32_000
    assert clean["objective"] == "output-untargeted" and not clean["masking"]  # the default for a non-BirdNET model


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["predict", "missing.wav"], "no such file"),
    (["attack", "{wav}", "--eps", "-0.1"], "eps must be a number in [0, 1]"),
    (["attack", "{wav}", "--eps", "0.01", "--steps", "0"], "steps"),
    (["attack", "{wav}", "--model", "baseline", "--eps", "0.01", "--target-species", "parmaj"], "a target species goes with"),
    (["attack", "{wav}", "--model", "baseline", "--eps", "0.01", "--objective", "output-targeted-margin", "--target-species",
      "parma"], "did you mean parmaj"),
    (["predict", "{wav}", "--model", "nonexistent"], "checkpoint not found"),
    (["predict", "{txt}"], "not a readable audio file"),
])
def test_bad_input_one_line_error(args, needle, wav, tmp_path):
    txt = tmp_path / "notes.wav"
    txt.write_text("not audio at all")
    r = run(*[a.format(wav=wav, txt=txt) for a in args])
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_command_writes_checkpoint_card_and_log(tiny_dataset, tmp_path):
    """`python -m core train` end to end on a tiny generated dataset (fewer clips than one batch)."""
    out = tmp_path / "ck"
    r = run("train", "--config", "baseline-small", "--name", "smoke", "--epochs", "1", "--data-dir", str(tiny_dataset),
            "--out-dir", str(out), "--adv", "at-o", "--adv-snr", "40", "--adv-beta", "0.5")
    assert r.returncode == 0, r.stderr
    card = json.loads((out / "smoke.json").read_text())
    tc = card["train_config"]
    assert (tc["adv"], tc["adv_snr_db"], tc["adv_beta"], tc["adv_steps"]) == ("at-o", 40.0, 0.5, 1)
    assert card["history"][0]["adv_term"] > 0
    assert card["config"]["class_names"] == ["aaa", "bbb", "ccc"]
    assert card["metrics"]["test"]["window"]["n"] == 3
    assert card["command"].startswith("python -m core train --config baseline-small")
    assert "train epoch 1/1" in (out / "smoke.log").read_text()
    r = run("predict", str(next(tiny_dataset.rglob("*.ogg"))), "--model", str(out / "smoke.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    r = run("train", "--config", "nope", "--data-dir", str(tiny_dataset))
    assert r.returncode == 2 and "--config must be one of" in r.stderr
    # fine-tuning: all weights from the first run; a checkpoint of another config is refused
    r = run("train", "--config", "baseline-small", "--name", "tuned", "--epochs", "1", "--data-dir", str(tiny_dataset),
            "--out-dir", str(out), "--init", str(out / "smoke.safetensors"), "--lr", "1e-4")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "tuned.json").read_text())["init"].endswith("smoke.safetensors")
    r = run("train", "--config", "protopnet-small", "--name", "x", "--epochs", "1", "--data-dir", str(tiny_dataset),
            "--out-dir", str(out), "--init", str(out / "smoke.safetensors"))
    assert r.returncode == 2 and "config differs" in r.stderr


@pytest.mark.slow
def test_sweep_command_writes_table_and_resumes(data_dir, tmp_path):
    out = tmp_path / "sweep.parquet"
    args = ["sweep", "--models", "baseline,protopnet", "--attack", "bim", "--epsilons", "0,1e-3", "--steps", "2",
            "--max-clips", "2", "--out", str(out), "--minimal-eps", "--iterations", "2"]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_parquet(out)
    assert len(df) == 2 * 2 * 3 and set(df["model"]) == {"baseline", "protopnet"}
    assert (df[df["budget"] == 1e-3]["linf"] <= 1e-3 + 1e-6).all()
    assert (tmp_path / "sweep_min_eps.parquet").exists()
    again = run(*args[:-3])  # same settings: everything is resumed, nothing recomputed
    assert again.returncode == 0, again.stderr
    assert len(pd.read_parquet(out)) == len(df)
    other = run("sweep", "--models", "baseline", "--epsilons", "0,1e-2", "--max-clips", "2", "--out", str(out))
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,needle", [
    (["--epsilons", "0,abc"], "comma-separated numbers"),
    (["--epsilons", "0,-1"], "[0, 1]"),
    (["--epsilons", "0", "--snr", "30"], "exactly one of"),
    (["--objective", "output-targeted", "--epsilons", "1e-3"], "target species"),
    (["--objective", "prototype-activate", "--models", "baseline", "--epsilons", "1e-3"], "AudioProtoPNet"),
    (["--epsilons", "1e-3", "--out", "x.txt"], ".csv or .parquet"),
    (["--epsilons", "1e-3", "--through", "mp3-128,underwater"], "unknown transformation"),
    (["--epsilons", "1e-3", "--shards", "0"], "--shards must be an integer >= 1"),
])
def test_sweep_bad_options(args, needle, data_dir, tmp_path):
    argv = ["sweep", "--max-clips", "1", "--steps", "1", "--out", str(tmp_path / "s.csv"), *args]
    r = run(*argv)
    assert r.returncode == 2, r.stdout
    assert needle in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_sweep_command_scores_after_transformations_and_measures_audibility(data_dir, tmp_path):
    out = tmp_path / "sweep.csv"
    args = ["sweep", "--models", "protopnet", "--epsilons", "0,1e-3", "--steps", "2", "--max-clips", "2",
            "--through", "mp3-128,noise-20", "--masking", "--out", str(out)]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    import json

    import pandas as pd

    df = pd.read_csv(out)
    assert {"after:mp3-128", "after:noise-20", "above_masking"} <= set(df.columns) and len(df) == 2 * 3
    assert (df.loc[df["budget_kind"] == "clean", "above_masking"] == 0).all()
    assert "success_rate_after:mp3-128" in r.stdout
    meta = json.loads(out.with_suffix(".csv.json").read_text())
    assert set(meta["transforms"]) == {"mp3-128", "noise-20"} and meta["masking"] is True
    other = run(*args[:-5], "--out", str(out))  # the same sweep without them is another sweep: not mixed into this table
    assert other.returncode == 2 and "other settings" in other.stderr


@pytest.mark.slow
def test_shift_command(data_dir, tmp_path):
    out = tmp_path / "shift.csv"
    r = run("shift", "--models", "baseline", "--max-clips", "9", "--snr", "0", "--out", str(out))
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_csv(out)
    assert list(df["condition"]) == ["clean", "noise", "gain", "mixup"]
    clean, noisy = df["cmap"].iloc[0], df["cmap"].iloc[1]
    assert noisy < clean  # site noise at 0 dB SNR hurts


@pytest.mark.slow
def test_compare_command_computes_stores_and_updates_cards(tiny_dataset, tmp_path):
    import torch

    from core.models.registry import build_model, read_model_card, save_checkpoint
    from tests.conftest import tiny_config

    paths = []
    for i, arch in enumerate(("protopnet", "baseline")):
        torch.manual_seed(i)
        paths.append(str(save_checkpoint(build_model(tiny_config(arch)), tmp_path / f"m{i}.safetensors", {"name": f"m{i}"})))
    args = ("compare", "--models", ",".join(paths), "--data-dir", str(tiny_dataset), "--max-clips", "4", "--epsilons", "1e-3",
            "--target-epsilons", "1e-3", "--steps", "1", "--out", str(tmp_path / "store"))
    r = run(*args, "--update-cards")
    assert r.returncode == 0, r.stderr
    assert "computed in" in r.stdout and "cmAP PGD eps 1e-03" in r.stdout
    card = read_model_card(paths[0])
    assert card["robustness"]["n_clips"] == 4 and card["robustness"]["by_eps"][0]["eps"] == pytest.approx(1e-3)
    assert len(list((tmp_path / "store").glob("*/meta.json"))) == 1
    again = run(*args)
    assert again.returncode == 0 and "found a stored result" in again.stdout
    bad = run("compare", "--models", paths[0], "--epsilons", "1e-3, lots", "--data-dir", str(tiny_dataset))
    assert bad.returncode == 2 and "must be comma-separated numbers" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_predict_with_birdnet_uses_its_rate_and_window(wav):
    r = run("predict", str(wav), "--model", "birdnet", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert len(res["windows"]) == 3  # 8 s -> 3 s, 3 s and a padded 2 s window
    assert len(res["windows"][0]["scores"]) == 9


@pytest.mark.slow
def test_evaluate_out_stores_each_split(tmp_path, data_dir):
    out = tmp_path / "metrics.json"
    r = run("evaluate", "--model", "birdnet", "--split", "val", "--out", str(out), "--data-dir", str(data_dir))
    assert r.returncode == 0, r.stderr
    stored = json.loads(out.read_text())
    assert f"cmAP window {stored['val']['window']['cmap']:.3f}" in r.stdout
    assert stored["command"].startswith("python -m core evaluate --model birdnet --split val")
    bad = run("evaluate", "--model", "birdnet", "--out", str(tmp_path / "m.txt"), "--data-dir", str(data_dir))
    assert bad.returncode != 0 and "must end in .json" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_sweep_birdnet_beside_a_32k_model(data_dir, tmp_path):
    """Models with other windows in one sweep: each on its own windows of the same recordings, one table."""
    import pandas as pd

    out = tmp_path / "mixed.csv"
    r = run("sweep", "--models", "birdnet,baseline", "--objective", "output-margin", "--epsilons", "0,1e-3", "--steps", "1",
            "--max-clips", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    df = pd.read_csv(out)
    assert set(df["model"]) == {"birdnet", "baseline"} and len(df) == 2 * 2 * 3
    assert not (tmp_path / "x.txt.json").exists()
    recs = {m: {c.split("@")[0] for c in df.loc[df["model"] == m, "clip"]} for m in ("birdnet", "baseline")}
    assert recs["birdnet"] == recs["baseline"]  # the same recordings


@pytest.mark.slow
def test_sweep_bad_extension_writes_nothing(data_dir, tmp_path):
    r = run("sweep", "--models", "baseline", "--epsilons", "1e-3", "--max-clips", "1", "--steps", "1", "--out", str(tmp_path / "x.txt"))
    assert r.returncode == 2 and ".csv or .parquet" in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_embed_metrics_bad_options(tmp_path):
    r = run("embed-metrics", "--models", "baseline", "--out", str(tmp_path / "m.txt"))
    assert r.returncode == 2 and ".csv or .parquet" in r.stderr and "Traceback" not in r.stderr
    r = run("embed-metrics", "--models", "baseline", "--eps", "0")
    assert r.returncode == 2 and "eps must be > 0" in r.stderr


def _subparsers():
    from core.cli import build_parser

    return next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_parser_lists_every_subcommand_once_and_data_dir_where_it_reads_the_dataset():
    from core.cli import SUBCOMMANDS

    subs = _subparsers()
    from core.cli import attacks, data, field, studies, train

    defined = {**train.COMMANDS, **field.COMMANDS, **attacks.COMMANDS, **studies.COMMANDS, **data.COMMANDS}
    assert list(subs) == list(SUBCOMMANDS) and len(set(SUBCOMMANDS)) == len(SUBCOMMANDS) and set(SUBCOMMANDS) == set(defined)
    no_data = {n for n, p in subs.items() if "--data-dir" not in p._option_string_actions}
    assert no_data == {"predict", "analyze", "attack", "certify", "fetch-model", "explain-published", "download"}
    assert all(p._actions[-1].dest == "data_dir" for n, p in subs.items() if n not in no_data)  # always the last option


@pytest.mark.parametrize("cmd,default", [("predict", "birdnet_protopnet_gated"), ("analyze", "birdnet_protopnet_gated"), ("attack", "birdnet_protopnet_gated"),
                                         ("evaluate", "protopnet"), ("audit", "birdnet_protopnet"), ("calibrate", None)])
def test_model_help_names_the_shipped_models_and_the_default(cmd, default):
    text = _help_text(_subparsers()[cmd])
    shipped = list_checkpoints()
    if cmd == "audit":  # only the prototype heads on BirdNET
        shipped = [n for n in shipped if n.startswith("birdnet_protopnet")]
        assert "birdnet_protopnet" in shipped and "baseline" not in shipped
    assert f"shipped: {', '.join(shipped)}" + (f" (default: {default})" if default else ";") in text
    assert ("birdnet-all: BirdNET V2.4 over all its 6,522 species" in text) == (cmd != "audit")


@pytest.mark.slow
def test_predict_reports_detections_through_the_api(wav, tmp_path):
    """predict's detections are core.predict's: every (window, species) at or above --min-conf, none on silence."""
    r = run("predict", str(wav), "--model", "protopnet", "--min-conf", "0.3", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["settings"] == {"min_conf": 0.3, "min_conf_source": "min_conf", "sensitivity": 1.0, "locale": "en", "species_filter": None}
    assert res["model"] == "protopnet"
    expected = sorted((w["start_s"], c) for w in res["windows"] for c, s in w["scores"].items() if s >= 0.3)
    got = sorted((d["start_time"], d["label"]) for d in res["detections"])
    assert len(got) == len(expected) > 0
    assert {"start_time", "end_time", "scientific_name", "common_name", "label", "confidence"} <= set(res["detections"][0])
    silent = tmp_path / "silence.wav"
    sf.write(silent, np.zeros(5 * 32_000, np.float32), 32_000)
    r = run("predict", str(silent), "--model", "protopnet")
    assert r.returncode == 0, r.stderr
    # digital silence is called silence (below -90 dBFS), as analyze's windows table calls it, not "no bird detected"
    assert "silence (below -90 dBFS): no window holds audio" in r.stdout and "validation threshold" in r.stdout
    assert "no bird detected" not in r.stdout
    r = run("predict", str(silent), "--model", "protopnet", "--json")
    windows = json.loads(r.stdout)["windows"]
    assert [w["outcome"] for w in windows] == ["silence (below -90 dBFS)"] * len(windows)
    assert windows[0]["end_s"] == pytest.approx(windows[0]["start_s"] + 5.0)


@pytest.mark.parametrize("cmd,default", [("sweep", "baseline,protopnet"), ("compare", None)])
def test_models_help_names_the_shipped_models(cmd, default):
    text = _help_text(_subparsers()[cmd])
    assert f"shipped: {', '.join(list_checkpoints())}" + (f" (default: {default})" if default else "") in text


def test_predict_refuses_a_clip_shorter_than_half_a_second(tmp_path, capsys):
    """A 1-sample file is refused in one line, never padded silently into a window and answered."""
    from core.cli import main

    short = tmp_path / "one.wav"
    sf.write(short, np.zeros(1, np.float32), 32_000)
    assert main(["predict", str(short), "--model", "protopnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: one.wav: waveform is 0.00 s long; predict needs at least 0.5 s") and len(err.splitlines()) == 1


@pytest.mark.parametrize("cmd", ["predict", "analyze"])
@pytest.mark.parametrize("args,needle", [
    (["--locale", "xx"], "error: locale must be one of en, af, ar"),
    (["--sensitivity", "1.6"], "error: sensitivity must lie in [0.5, 1.5]"),
    (["--lat", "95", "--lon", "10"], "error: lat must lie in [-90, 90]"),
    (["--lat", "50", "--lon", "10", "--week", "49"], "error: week must be an integer in 1..48"),
    (["--lat", "50"], "error: the species filter needs both lat and lon"),
    (["--min-conf", "1.2"], "error: --min-conf must lie in (0, 1)"),
])
def test_detection_options_refuse_bad_values_in_one_line(cmd, args, needle, tmp_path, capsys):
    """Checked before any model loads or any file is read: one line, exit code 2."""
    from core.cli import main

    out = ["--out", str(tmp_path / "o")] if cmd == "analyze" else []
    assert main([cmd, str(tmp_path / "never-read.wav"), *out, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(needle) and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cmd", ["predict", "analyze"])
def test_detection_options_in_help(cmd):
    from core.field.detect import DEFAULT_SENSITIVITY, LOCATION_FILTER_THRESHOLD

    p = _subparsers()[cmd]
    text = _help_text(p)
    for option in ("--min-conf", "--sensitivity", "--locale", "--lat", "--lon", "--week", "--sf-thresh"):
        assert option in p._option_string_actions
    assert ("--threshold" in p._option_string_actions) == (cmd == "analyze")  # analyze's older name, an alias of --min-conf
    assert p.get_default("sensitivity") == DEFAULT_SENSITIVITY and p.get_default("sf_thresh") == LOCATION_FILTER_THRESHOLD
    assert "birdnet-all: BirdNET V2.4 over all its 6,522 species" in text and "[0.5, 1.5]" in text


def test_analyze_refuses_a_recording_shorter_than_half_a_second(tmp_path, capsys):
    from core.cli import main

    short = tmp_path / "blip.wav"
    sf.write(short, np.zeros(3_200, np.float32), 32_000)  # 0.1 s
    assert main(["analyze", str(short), "--model", "protopnet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: blip.wav is 0.10 s long; analyze needs at least 0.5 s") and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("o/*"))  # no table written
