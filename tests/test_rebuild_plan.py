"""bench/rebuild_person_split.py, the plan that retrains every shipped model on the person split over several sessions:
its listing, dry run and budget on a temporary plan of cheap fake steps, its done-checks, and the shape of the real plan
(whose commands are parsed by the real CLI, never run here)."""

import importlib.util
import json
import shlex
import sys

import pytest

from core.models.registry import CHECKPOINT_DIR, list_checkpoints
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def plan():
    spec = importlib.util.spec_from_file_location("rebuild_person_split", ROOT / "bench" / "rebuild_person_split.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def fake(plan, name, minutes, *, kind=None, study=False, needs=(), code=None):
    """A step whose command writes out/<name>.txt (or runs ``code``), done when that file exists."""
    out = f"out/{name}.txt"
    code = code or f"import pathlib; p = pathlib.Path({out!r}); p.parent.mkdir(exist_ok=True); p.write_text('x')"
    return plan.Step(name, kind or name, ("-c", code), (out,), minutes, check="files", study=study, needs=tuple(needs))


class Clock:
    """Fake time: each executed step advances it by its recorded cost."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def executor(clock, root, minutes: dict, fail=()):
    def execute(step):
        clock.t += 60 * minutes[step.id]
        if step.id in fail:
            return 3
        out = root / step.outputs[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("x")
        return 0

    return execute


def test_list_and_dry_run_on_a_temporary_plan(plan, tmp_path, capsys):
    steps = [fake(plan, "a", 2), fake(plan, "b", 3, needs=["a"]), fake(plan, "c", 4), fake(plan, "s", 1, study=True)]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("x")
    assert plan.main(["--list"], steps, root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "done     a" in out and "pending  b" in out and "~3 min" in out and "pending  s" in out and "[study]" in out
    assert "1/4 steps done; pending: training ~0.1 h" in out
    assert plan.main(["--dry-run", "--budget-minutes", "5"], steps, root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "run   b" in out and "stop  c" in out and "needs ~4 min, 2 min of the budget left" in out and "would run 1 step(s), ~3 min" in out
    assert plan.main(["--dry-run", "--studies"], steps, root=tmp_path) == 0
    out = capsys.readouterr().out
    assert "run   b" in out and "run   c" in out and "run   s" in out and "would run 3 step(s), ~8 min" in out
    assert not (tmp_path / "out" / "b.txt").exists() and not (tmp_path / "checkpoints").exists()  # nothing ran


def test_real_subprocesses_run_in_order_are_recorded_and_not_rerun(plan, tmp_path, capsys):
    steps = [fake(plan, "a", 1), fake(plan, "b", 1, needs=["a"]), fake(plan, "s", 1, study=True)]
    assert plan.main([], steps, root=tmp_path) == 0
    assert (tmp_path / "out" / "a.txt").is_file() and (tmp_path / "out" / "b.txt").is_file()
    assert not (tmp_path / "out" / "s.txt").exists()  # a study never runs without --studies
    ledger = json.loads((tmp_path / plan.LEDGER).read_text())["steps"]
    assert set(ledger) == {"a", "b"} and ledger["a"]["command"].startswith("python -c") and ledger["a"]["resumed"] is False
    capsys.readouterr()
    assert plan.main([], steps, root=tmp_path) == 0
    assert "nothing left to run (0 step(s) run now); studies run with --studies" in capsys.readouterr().out
    assert plan.main(["--studies"], steps, root=tmp_path) == 0 and (tmp_path / "out" / "s.txt").is_file()


def test_budget_stops_before_the_first_step_that_does_not_fit(plan, tmp_path, capsys):
    steps = [fake(plan, "a", 2), fake(plan, "b", 2), fake(plan, "c", 3), fake(plan, "d", 0.5)]
    clock = Clock()
    took = {"a": 2.5, "b": 1.0, "c": 3.0, "d": 0.5}
    ledger = tmp_path / "ledger.json"
    rc = plan.run_plan(steps, tmp_path, ledger, budget_minutes=5, clock=clock, execute=executor(clock, tmp_path, took))
    assert rc == 0
    # a took 2.5 min, b 1 min: 1.5 min left, c's 3 min do not fit; d would, but the order is kept (later steps may need c)
    assert [p.stem for p in sorted((tmp_path / "out").glob("*.txt"))] == ["a", "b"]
    assert "stopping before c: needs ~3 min, 2 min of the budget left (2 step(s) run now)" in capsys.readouterr().out
    recorded = json.loads(ledger.read_text())["steps"]
    assert recorded["a"]["seconds"] == 150.0 and recorded["b"]["seconds"] == 60.0


def test_estimates_learn_from_recorded_durations_and_resume_states(plan, tmp_path):
    import torch

    from core.training.resume import TrainingResume

    steps = [fake(plan, "k@s0", 10, kind="k"), fake(plan, "k@s1", 10, kind="k"), fake(plan, "k@s2", 10, kind="k")]
    ledger = {"steps": {}}
    assert plan.estimate_minutes(steps[1], ledger, tmp_path) == 10  # the first guess
    ledger["steps"]["k@s0"] = {"kind": "k", "seconds": 240.0, "resumed": False}
    ledger["steps"]["x"] = {"kind": "k", "seconds": 6000.0, "resumed": True}  # a resumed run timed only its last part: ignored
    ledger["steps"]["y"] = {"kind": "k", "seconds": 360.0, "resumed": False}
    assert plan.estimate_minutes(steps[1], ledger, tmp_path) == pytest.approx(5.0)  # median of 4 and 6 min
    # a training step that a killed run left half done: half the estimate
    ckpt = plan.Step("t@s0", "k", ("-c", "pass"), ("ck/t.safetensors", "ck/t.json"), 10, seed=0)
    resume = TrainingResume(tmp_path / "ck" / "t.resume.pt", {"options": {}})
    resume.stage_epochs = [4]
    resume.save(0, 2, modules={"m": torch.nn.Linear(1, 1)})
    assert plan.done_share(ckpt, tmp_path) == pytest.approx(0.5)
    assert plan.estimate_minutes(ckpt, ledger, tmp_path) == pytest.approx(2.5)
    decisions = plan.plan_run([ckpt], tmp_path, ledger, budget_minutes=3, studies=False)
    assert [(d.action, d.step.id) for d in decisions] == [("run", "t@s0")]  # fits only thanks to the state


def test_a_failing_step_stops_the_run_and_is_not_recorded(plan, tmp_path, capsys):
    steps = [fake(plan, "a", 1), fake(plan, "bad", 1, code="raise SystemExit(3)"), fake(plan, "c", 1)]
    assert plan.main([], steps, root=tmp_path) == 1
    assert "bad failed (exit code 3)" in capsys.readouterr().out
    assert set(json.loads((tmp_path / plan.LEDGER).read_text())["steps"]) == {"a"} and not (tmp_path / "out" / "c.txt").exists()
    liar = fake(plan, "liar", 1, code="pass")  # exits 0 but writes nothing
    assert plan.main([], [liar], root=tmp_path) == 1
    assert "finished but its done-check fails" in capsys.readouterr().out


def test_card_done_check_needs_the_person_split_the_seed_and_the_command(plan, tmp_path):
    step = next(s for s in plan.default_plan() if s.id == "baseline_ato@s1")
    weights, card_path = tmp_path / step.outputs[0], tmp_path / step.outputs[1]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"w")
    card = {"data": {"split_scheme": "person"}, "train_config": {"seed": 1}, "command": step.command}
    for change, done in [({}, True), ({"data": {"split_scheme": "recordist"}}, False), ({"train_config": {"seed": 0}}, False),
                         ({"command": step.command.replace("--epochs 4", "--epochs 1")}, False)]:
        card_path.write_text(json.dumps({**card, **change}))
        assert plan.is_done(step, tmp_path, {"steps": {}}) is done, change
    weights.unlink()
    assert not plan.is_done(step, tmp_path, {"steps": {}})


def test_the_real_plan(plan):
    from core.cli import build_parser

    steps = plan.default_plan()
    ids = [s.id for s in steps]
    assert len(set(ids)) == len(ids)
    training = [s for s in steps if not s.study]
    # three seeds of every arm: the small models and their AT / control arms, every head variant and its control, the gate
    kinds = {"baseline", "baseline_ato", "baseline_ate", "baseline_ft", "protopnet", "protopnet_ato", "protopnet_ate", "protopnet_ft",
             "birdnet_protopnet", "birdnet_linear", "birdnet_protopnet_ato", "birdnet_protopnet_ate", "birdnet_protopnet_ft",
             "birdnet_protopnet_gated"}
    for kind in kinds:
        assert sorted(s.seed for s in training if s.kind == kind) == [0, 1, 2], kind
    parser = build_parser()
    position = {s.id: i for i, s in enumerate(steps)}
    for s in training:
        # outputs in the staging directory, never among the shipped checkpoints
        assert all(o.startswith("checkpoints/person/") for o in s.outputs), s.id
        args = parser.parse_args(list(s.argv[2:]))  # every option exists
        assert args.split_scheme == "person"
        for need in s.needs:  # what a step reads is made before it
            assert position[need] < position[s.id]
        for flag in ("--init", "--init-backbone", "--model"):
            if flag in s.argv:
                source = s.argv[s.argv.index(flag) + 1]
                assert any(source in steps[position[n]].outputs for n in s.needs), (s.id, source)
    head = next(s for s in steps if s.id == "birdnet_protopnet@s0")
    assert "--no-bird 256 " in head.command
    assert "--no-bird-families" not in head.command  # the recipe the validation rule picked (issue 25)
    # within each family, seeds 1, 2 of every AT arm and its control come before any seed 1, 2 of an ordinarily
    # trained model; the heads (and their gate's seeds, for the open-set study) come before the small models
    for family in ("baseline", "protopnet", "birdnet_protopnet"):
        ot = ("baseline", "protopnet") if family != "birdnet_protopnet" else ("birdnet_protopnet", "birdnet_linear")
        first_ot_seed = min(position[f"{k}@s1"] for k in ot)
        for kind in {k for k in kinds if k.startswith(family + "_") and k not in ot + ("birdnet_protopnet_gated",)}:
            assert position[f"{kind}@s2"] < first_ot_seed, kind
            assert position[f"{kind}@s1"] > position[f"{kind.rsplit('_', 1)[0]}@s0"]
    assert max(position[f"birdnet_protopnet_gated@s{s}"] for s in (0, 1, 2)) < position["baseline@s0"]
    # studies last, each a documented subcommand of the CLI
    assert all(s.study for s in steps[len(training):]) and steps[len(training)].id == "study:arms_baseline"
    for s in steps[len(training):]:
        if s.argv[:2] == ("-m", "core"):
            assert parser.parse_args(list(s.argv[2:])).split_scheme == "person"
    assert shlex.split(plan.reference_step().command)[-1] == "checkpoints/person/reference_logreg.json"


def test_the_staging_directory_is_not_taken_for_shipped_models(plan, tmp_path):
    (tmp_path / "person" / "seeds").mkdir(parents=True)
    for p in (tmp_path / "top.safetensors", tmp_path / "person" / "a.safetensors", tmp_path / "person" / "seeds" / "a_s1.safetensors"):
        p.write_bytes(b"")
    assert list_checkpoints(tmp_path, builtin=False) == ["top"]
    assert (CHECKPOINT_DIR / "person").resolve() == (ROOT / plan.STAGING).resolve()
    assert not any("/" in n or n.endswith(("_s1", "_s2")) for n in list_checkpoints())


def test_commit_records_each_finished_step_in_git(plan, tmp_path, monkeypatch):
    import subprocess

    for key, value in {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
                       "GIT_COMMITTER_EMAIL": "t@example.org"}.items():
        monkeypatch.setenv(key, value)
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "other.txt").write_text("someone else's work")
    subprocess.run(["git", "add", "other.txt"], cwd=tmp_path, check=True)  # staged by another engineer: never committed here
    steps = [fake(plan, "a", 1), fake(plan, "b", 1)]
    assert plan.main(["--commit"], steps, root=tmp_path) == 0
    log = subprocess.run(["git", "log", "--format=%s", "--name-only"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert "person split: a (a)" in log and "person split: b (b)" in log and "out/a.txt" in log and plan.LEDGER in log
    assert "other.txt" not in log
    status = subprocess.run(["git", "status", "--porcelain"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert status.strip() == "A  other.txt"


def test_two_runners_share_the_plan_through_claims_and_the_ledger(plan, tmp_path, capsys):
    import subprocess

    steps = [fake(plan, "a", 1), fake(plan, "b", 1, needs=["a"]), fake(plan, "c", 1)]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # another live runner has claimed a: this one passes over a and b (which needs a) and runs c
        claim = tmp_path / plan.STAGING / "running" / "a.pid"
        claim.parent.mkdir(parents=True)
        claim.write_text(f"{other.pid} 2026-12-03 00:00:00\n")
        decisions = plan.plan_run(steps, tmp_path, {"steps": {}}, budget_minutes=None, studies=False)
        assert [(d.step.id, d.action) for d in decisions] == [("a", "skip"), ("b", "skip"), ("c", "run")]
        assert decisions[0].reason == f"running in another process (pid {other.pid})"
        # meanwhile the other runner records a step of its own in the ledger: this runner's record must not drop it
        ledger = tmp_path / plan.LEDGER
        plan.write_ledger(ledger, {"steps": {"x": {"kind": "x", "seconds": 1.0}}})
        assert plan.main([], steps, root=tmp_path) == 0
        assert (tmp_path / "out" / "c.txt").is_file() and not (tmp_path / "out" / "a.txt").exists()
        assert set(json.loads(ledger.read_text())["steps"]) == {"x", "c"}
        assert claim.is_file() and not (claim.parent / "c.pid").exists()  # its own claim released, the other's kept
    finally:
        other.kill()
        other.wait()
    # the other runner's process is gone: its claim is stale, taken over, and a and b run
    assert plan.claimed_by(steps[0], tmp_path) is None
    assert plan.main([], steps, root=tmp_path) == 0
    assert (tmp_path / "out" / "a.txt").is_file() and (tmp_path / "out" / "b.txt").is_file()
    assert not list((tmp_path / plan.STAGING / "running").iterdir())


def test_promote_ships_seed_zero_in_its_shipped_form_and_switches_the_default(plan, tmp_path):
    (tmp_path / "checkpoints" / "person").mkdir(parents=True)
    (tmp_path / "core" / "io").mkdir(parents=True)
    split = tmp_path / "core" / "io" / "split.py"
    split.write_text('X = 1\nDEFAULT_SPLIT_SCHEME = "recordist"\nY = "recordist"\n')
    staged = {"command": "python -m core finetune-head --init checkpoints/person/birdnet_protopnet.safetensors --adv at-o "
                         "--name h --split-scheme person --out-dir checkpoints/person",
              "init": "checkpoints/person/birdnet_protopnet.safetensors", "data": {"split_scheme": "person"}, "metrics": {"a": 1}}
    (tmp_path / "checkpoints" / "person" / "h.safetensors").write_bytes(b"weights")
    (tmp_path / "checkpoints" / "person" / "h.json").write_text(json.dumps(staged))
    (tmp_path / "checkpoints" / "person" / "h.log").write_text("log")
    (tmp_path / "checkpoints" / "h.json").write_text(json.dumps({"command": "python -m core finetune-head --init old"}))
    (tmp_path / "checkpoints" / "person" / "reference_logreg.json").write_text('{"split_scheme": "person"}')
    (tmp_path / "checkpoints" / "reference_logreg.json").write_text('{"split_scheme": "recordist"}')
    report = plan.promote(tmp_path, ["h"], dry_run=True)
    assert any("command changes" in r for r in report) and not (tmp_path / "checkpoints" / "h.safetensors").exists()
    assert 'DEFAULT_SPLIT_SCHEME = "recordist"' in split.read_text()  # a dry run writes nothing
    assert "recordist" in (tmp_path / "checkpoints" / "reference_logreg.json").read_text()
    plan.promote(tmp_path, ["h"])
    card = json.loads((tmp_path / "checkpoints" / "h.json").read_text())
    assert card["command"] == "python -m core finetune-head --init birdnet_protopnet --adv at-o --name h"
    assert card["init"] == "birdnet_protopnet" and card["metrics"] == {"a": 1} and card["data"] == {"split_scheme": "person"}
    assert (tmp_path / "checkpoints" / "h.safetensors").read_bytes() == b"weights"
    assert (tmp_path / "checkpoints" / "h.log").read_text() == "log"
    assert json.loads((tmp_path / "checkpoints" / "reference_logreg.json").read_text()) == {"split_scheme": "person"}  # the cards' reference
    assert split.read_text() == 'X = 1\nDEFAULT_SPLIT_SCHEME = "person"\nY = "recordist"\n'
    assert plan.is_done(plan.Step("promote", "promote", (), ("h",), 0.0, check="promoted"), tmp_path, {"steps": {}})
    staged["data"] = {"split_scheme": "recordist"}  # a card of the other split is never shipped as this one's
    (tmp_path / "checkpoints" / "person" / "h.json").write_text(json.dumps(staged))
    with pytest.raises(SystemExit, match="does not name the person split"):
        plan.promote(tmp_path, ["h"])
    # every real command keeps its meaning: only the staging paths and the two staging options go
    assert plan.shipped_form("--init-backbone checkpoints/person/baseline.safetensors --epochs 12 --split-scheme person") == (
        "--init-backbone baseline --epochs 12")
    assert plan.shipped_form("--out other/checkpoints/person/x.safetensors --split-scheme personal") == (
        "--out other/checkpoints/person/x.safetensors --split-scheme personal")


def test_the_studies_that_write_into_the_shipped_cards_run_first_after_the_promotion(plan):
    steps = plan.default_plan()
    after = [s.kind for s in steps[[s.id for s in steps].index("promote") + 1:]]
    assert after[: len(plan.CARD_STUDIES)] == list(plan.CARD_STUDIES)  # the promotion can land once these ran
    # every study that adds a block to a card is among them
    assert {k for k in after if any(f in dict((k2, c) for k2, c, _ in plan.FIGURE_STUDIES)[k]
                                    for f in ("--update-cards", "core audit", "no-bird-check"))} <= set(plan.CARD_STUDIES)
