"""Retrain every shipped model on the people-disjoint split ("person"), three seeds each, over several sessions.

Issue 24: every shipped model is retrained on the split that shares no person between train, val and test, with
at least three seeds for every compared arm, and every figure is regenerated. On a 2-core CPU that is many hours,
spread over sessions that may stop at any moment and keep only what is committed to git. This driver holds the plan
as an ordered list of steps (a command line, the files it writes, a done-check) and runs the pending ones in order:

- outputs go to ``checkpoints/person/`` (seed 0) and ``checkpoints/person/seeds/`` (seeds 1 and 2, names ending in
  ``_s1``, ``_s2``), never to ``checkpoints/`` itself, whose files are the shipped models
  (:func:`core.models.registry.list_checkpoints` reads only that directory's top level);
- a step is done when its output says so: a model card that names the person split, the step's seed and the
  step's exact command (``check="card"``); the reference's JSON naming the person split; for a study, the
  ledger's record of its command finishing;
- every training step is resumable (``<out_dir>/<name>.resume.pt``, written after every epoch by ``train``,
  ``train-head`` and ``finetune-head``): a killed run loses at most an epoch, and the next session continues it;
- the ledger ``checkpoints/person/plan.json`` records each finished step's duration; a step's estimate is the
  median of the uninterrupted durations of its kind (e.g. every ``baseline_ato`` seed), else a first guess, times
  the share its resume state has not done yet;
- ``--budget-minutes M`` runs pending steps in order until the next one's estimate does not fit in what is left
  of M (then it stops: later steps depend on earlier ones); ``--dry-run`` says what would run; ``--list`` shows every
  step with done/pending; ``--commit`` commits each step's outputs and the ledger as soon as it is done.
- two runners may work at once (one per core): a runner claims a step before it starts it
  (``checkpoints/person/running/<id>.pid``, created exclusively, removed when the step ends), and the other runner
  passes over a step claimed by a live process and over every step that needs it; a claim whose process is gone (a
  killed session) is stale and taken over. The ledger is re-read before each write, so neither runner drops the
  other's records.

Order: the reference, then each family's seed-0 parent, its AT-O / AT-E / OT+FT fine-tunes at seed 0 and at once
their seeds 1 and 2 (fine-tunes of the seed-0 parent with ``--seed 1``, ``--seed 2``: if time runs out, seeds go to
the AT-vs-control comparisons first), BirdNET heads first (the default model is built on them), with seeds 1 and 2
of the ordinarily trained heads and of the gate (so the open-set study of the default model's recipe can run early);
then the small models and seeds 1 and 2 of the ordinarily trained small models (AudioProtoPNet seed s starts from
baseline seed s). The studies come last and run only with ``--studies``: the seed studies on the staging directory
(``arms``, ``open-set-seeds``), then, after the seed-0 models are promoted into ``checkpoints/`` (a manual step:
``--promote``, :func:`promote`), the documented commands that regenerate the figures, each with ``--split-scheme person``.

Run, in each session (``BIRDSHIELD_THREADS`` as for any run)::

    python bench/rebuild_person_split.py --list
    python bench/rebuild_person_split.py --budget-minutes 170 --commit
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCHEME = "person"
STAGING = "checkpoints/person"
SEEDS_DIR = f"{STAGING}/seeds"
STUDIES_DIR = f"{STAGING}/studies"
LEDGER = f"{STAGING}/plan.json"
SEEDS = (0, 1, 2)
AT_ARMS = (("ato", "at-o"), ("ate", "at-e"), ("ft", None))  # name suffix, --adv (None: the OT+FT control)
#: The head fine-tunes of every seed: AT-O, AT-E, the OT+FT control, explanation-guided AT (AT-X, issue 26 item 6) and
#: Gaussian noise at the certify sigma (3e-4;
#: Cohen et al. 2019's training for randomized smoothing, issue 26).
HEAD_ARMS = (("ato", "at-o"), ("ate", "at-e"), ("ft", "none"), ("noise", "noise"), ("atx", "at-x"))


@dataclass(frozen=True)
class Step:
    """One step of the plan.

    Attributes
    ----------
    id : str
        Unique, e.g. ``baseline_ato@s1``.
    kind : str
        Steps of one kind share their estimate (e.g. every seed of ``baseline_ato``).
    argv : tuple of str
        The command after ``python`` (``-m core train ...`` or a script); empty for a manual step.
    outputs : tuple of str
        Files it writes, relative to the repository (the first one is the checkpoint of a training step).
    guess_min : float
        First guess of its duration [min] on this 2-core CPU, used until a step of its kind has been timed.
    check : str
        ``card`` (a checkpoint whose card names the person split, ``seed`` and this command), ``reference`` (the
        reference's JSON names the person split), ``files`` (every output exists), ``ledger`` (the ledger records this
        command finishing), ``promoted`` (every name in ``outputs`` is a checkpoint in ``checkpoints/`` whose card names
        the person split).
    seed : int or None
    needs : tuple of str
        Ids of the steps it reads the outputs of.
    study : bool
        Run only with ``--studies``.
    note : str
        Shown by ``--list`` (what a manual step asks for).
    replaces : tuple of str
        Files deleted just before the step runs: tables of the recordist split's run that the command would otherwise
        refuse to overwrite or would resume (they stay in git's history).
    """

    id: str
    kind: str
    argv: tuple[str, ...]
    outputs: tuple[str, ...]
    guess_min: float
    check: str = "card"
    seed: int | None = None
    needs: tuple[str, ...] = ()
    study: bool = False
    note: str = ""
    replaces: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        """The command line as a model card records it (``python -m core ...``)."""
        return "python " + " ".join(self.argv)

    @property
    def manual(self) -> bool:
        return not self.argv


# ---------------------------------------------------------------------------------------------------------- the plan

def ckpt(name: str, seed: int) -> str:
    """Where seed ``seed`` of ``name`` is written: ``checkpoints/person/NAME`` (seed 0) or ``.../seeds/NAME_sS``."""
    return f"{STAGING}/{name}.safetensors" if seed == 0 else f"{SEEDS_DIR}/{name}_s{seed}.safetensors"


def _where(name: str, seed: int) -> list[str]:
    """``--name`` and ``--out-dir`` of seed ``seed`` of ``name``, and ``--seed`` unless 0 (the default)."""
    out = ["--name", name if seed == 0 else f"{name}_s{seed}"]
    return out + (["--seed", str(seed)] if seed else []) + ["--split-scheme", SCHEME, "--out-dir", STAGING if seed == 0 else SEEDS_DIR]


def _train(name: str, seed: int, options: list[str], guess: float, needs=()) -> Step:
    p = ckpt(name, seed)
    return Step(f"{name}@s{seed}", name, ("-m", "core", "train", *options[:2], *_where(name, seed)[:2], *options[2:],
                                          *_where(name, seed)[2:]), (p, p.replace(".safetensors", ".json")), guess,
                seed=seed, needs=tuple(needs))


def small_model_steps(seeds: Sequence[int] = SEEDS, *, ot_seeds: bool = True) -> list[Step]:
    """The baseline and AudioProtoPNet at seed 0, each followed by its AT-O / AT-E / OT+FT fine-tunes at every seed (the
    commands of docs/models.md); with ``ot_seeds``, then seeds 1, 2 of the two ordinarily trained models."""
    steps = []
    for arch, parent_opts, guess, arm_guess, arm_opts in (
            ("baseline", ["--config", "baseline-small", "--epochs", "30"], 26.0, {"ato": 13.0, "ate": 11.0, "ft": 4.0},
             ["--config", "baseline-small"]),
            ("protopnet", ["--config", "protopnet-small", "--init-backbone", ckpt("baseline", 0), "--epochs", "12", "--lr", "5e-4"], 11.0,
             {"ato": 8.0, "ate": 8.0, "ft": 4.0}, ["--config", "protopnet-small"])):
        steps.append(_train(arch, 0, parent_opts, guess, needs=("baseline@s0",) if arch == "protopnet" else ()))
        for seed in seeds:  # seed 0 of each arm, then at once its seeds 1 and 2 (all fine-tunes of the seed-0 parent)
            for suffix, adv in AT_ARMS:
                opts = [*arm_opts, "--init", ckpt(arch, 0)] + (["--warm-epochs", "0"] if arch == "protopnet" else [])
                opts += ["--epochs", "4", "--lr", "5e-4"] + (["--adv", adv, "--adv-eps", "1e-4"] if adv else [])
                steps.append(_train(f"{arch}_{suffix}", seed, opts, arm_guess[suffix], needs=(f"{arch}@s0",)))
    if ot_seeds:
        steps += small_model_ot_seeds(seeds[1:])
    return steps


def small_model_ot_seeds(seeds: Sequence[int]) -> list[Step]:
    """Seeds 1, 2 of the ordinarily trained small models (AudioProtoPNet seed s on baseline seed s's backbone)."""
    steps = []
    for seed in seeds:
        steps.append(_train("baseline", seed, ["--config", "baseline-small", "--epochs", "30"], 26.0))
        steps.append(_train("protopnet", seed, ["--config", "protopnet-small", "--init-backbone", ckpt("baseline", seed), "--epochs", "12",
                                                "--lr", "5e-4"], 11.0, needs=(f"baseline@s{seed}",)))
    return steps


def _head(name: str, seed: int, options: list[str], guess: float) -> Step:
    p = ckpt(name, seed)
    argv = ("-m", "core", "train-head", *_where(name, seed)[:2], *options, *_where(name, seed)[2:])
    return Step(f"{name}@s{seed}", name, argv, (p, p.replace(".safetensors", ".json")), guess, seed=seed)


def _gate(seed: int) -> Step:
    head, gated = ckpt("birdnet_protopnet", seed), ckpt("birdnet_protopnet_gated", seed)
    # the argument order open-set writes into the gated card's command
    argv = ("-m", "core", "open-set", "--model", head, "--out", gated, "--split-scheme", SCHEME)
    return Step(f"birdnet_protopnet_gated@s{seed}", "birdnet_protopnet_gated", argv, (gated, gated.replace(".safetensors", ".json")), 5.0,
                seed=seed, needs=(f"birdnet_protopnet@s{seed}",))


#: The shipped head's recipe: the one the validation rule picked over three seeds on the recordist split (v1 + gate:
#: validation top-1 0.935 against 0.913 for ``--no-bird 512 --no-bird-families train`` with the gate;
#: docs/results.md#sounds-without-birds, core.field.open_set_seeds.best_recipe).
HEAD_RECIPE = ["--layer", "BLOCK_3-5_ADD", "--tuned-from", "BLOCK_3-4_ADD", "--no-bird", "256"]
LINEAR_RECIPE = ["--layer", "BLOCK_3-5_ADD", "--head", "linear", "--lr", "1e-2"]


def head_steps(seeds: Sequence[int] = SEEDS) -> list[Step]:
    """The BirdNET heads at seed 0 (birdnet_protopnet, birdnet_linear, the gate) and the AT-O / AT-E / OT+FT / noise head
    fine-tunes of the seed-0 head at every seed (seed 0 of each, then seeds 1, 2).

    First guess of an AT-O / AT-E fine-tune: 22 min (an AT-O epoch took 5.4 min on one thread of this CPU, shared).
    """
    steps = [_head("birdnet_protopnet", 0, HEAD_RECIPE, 8.0), _head("birdnet_linear", 0, LINEAR_RECIPE, 3.0)]
    for seed in seeds:
        for suffix, adv in HEAD_ARMS:
            name = f"birdnet_protopnet_{suffix}"
            p = ckpt(name, seed)
            argv = ("-m", "core", "finetune-head", "--init", ckpt("birdnet_protopnet", 0), "--adv", adv, *_where(name, seed))
            steps.append(Step(f"{name}@s{seed}", name, argv, (p, p.replace(".safetensors", ".json")),
                              {"none": 2.0, "noise": 8.0}.get(adv, 22.0),
                              seed=seed, needs=("birdnet_protopnet@s0",)))
        if seed == 0:
            steps.append(_gate(0))
    return steps


def head_ot_seeds(seeds: Sequence[int]) -> list[Step]:
    """Seeds 1, 2 of the ordinarily trained heads and of the gate on each."""
    steps = []
    for seed in seeds:
        steps += [_head("birdnet_protopnet", seed, HEAD_RECIPE, 8.0), _head("birdnet_linear", seed, LINEAR_RECIPE, 3.0), _gate(seed)]
    return steps


def _arms(study: str, arms: dict[str, str], out: str, guess: float) -> Step:
    """An ``arms`` study over the three seeds of each arm (names in ``arms``: label -> checkpoint name)."""
    argv = ["-m", "core", "arms"]
    needs = []
    for label, name in arms.items():
        argv += ["--arm", f"{label}=" + ",".join(ckpt(name, s) for s in SEEDS)]
        needs += [f"{name}@s{s}" for s in SEEDS]
    # arms writes them too; the windows' settings (OUT_windows.csv.json) let a stopped run resume model by model
    beside = (*(out.replace(".csv", f"_{kind}.csv") for kind in ("windows", "differences")), out.replace(".csv", "_windows.csv.json"))
    return Step(f"study:{study}", study, (*argv, "--split-scheme", SCHEME, "--out", out), (out, *beside), guess, check="ledger",
                needs=tuple(needs), study=True)


#: Seed of the held-out synthetic draw of the person split's open-set study: not the 2026 draw that the gate's
#: defaults (core.training.open_set, 2026-12-03) were set looking at on the recordist split.
OPEN_SET_HELD_OUT_SEED = 2027

#: Models whose seed 0 is promoted from checkpoints/person/ into checkpoints/ before the figure studies.
PROMOTED = ("baseline", "baseline_ato", "baseline_ate", "baseline_ft", "protopnet", "protopnet_ato", "protopnet_ate", "protopnet_ft",
            "birdnet_protopnet", "birdnet_protopnet_ato", "birdnet_protopnet_ate", "birdnet_protopnet_ft", "birdnet_linear",
            "birdnet_protopnet_gated")

#: The documented commands that make the figures (docs/models.md, docs/results.md), run after the promotion, and a
#: first guess of each [min]. Each gets ``--split-scheme person`` (the shipped models then name the person split).
#: The ones that write into the shipped cards come first (CARD_STUDIES): the promotion lands with them.
FIGURE_STUDIES = [
    # BirdNET's threshold on the person split's validation recordings first: the cut-off and no-bird studies read it
    ("birdnet_threshold", "-m core calibrate --model birdnet", 3.0),
    # the worst case with the APGD legs at every eps: about 70 min of PGD and targeted units, then the worst case of the
    # 8 models (transfer, then each model's legs; resumable model by model since 2026-12-04)
    ("compare", "-m core compare --strong --out assets/compare --update-cards", 180.0),
    ("audit", "-m core audit --model birdnet_protopnet --out assets/birdnet_heads/audit.csv", 5.0),
    *[(f"audit_{a}", f"-m core audit --model birdnet_protopnet_{a} --out assets/birdnet_heads/audit_{a}.csv", 5.0) for a in ("ato", "ate", "ft")],
    ("cutoff", "-m core cutoff --models birdnet,birdnet_linear,birdnet_protopnet,birdnet_protopnet_ato,birdnet_protopnet_ate,"
               "birdnet_protopnet_ft --update-cards", 5.0),
    ("cutoff_gated", "-m core cutoff --models birdnet_protopnet_gated --update-cards", 2.0),
    ("no_bird", "-m core no-bird-check", 10.0),
    ("birdnet_metrics", "-m core evaluate --model birdnet --split test --out assets/birdnet/metrics.json", 3.0),
    ("birdnet_metrics_val", "-m core evaluate --model birdnet --split val --out assets/birdnet/metrics.json", 2.0),  # the val half of it
    ("compare_heads", "-m core compare --models birdnet_protopnet,birdnet_linear --max-clips 24 --out assets/birdnet_heads/compare", 20.0),
    ("compare_at", "-m core compare --models birdnet_protopnet,birdnet_protopnet_ft,birdnet_protopnet_ato,birdnet_protopnet_ate "
                   "--max-clips 48 --strong --out assets/birdnet_heads/compare_at", 600.0),  # APGD legs on BirdNET's backbone: hours
    ("head_layers", "-m core head-study --out assets/birdnet_heads/layers.csv", 8.0),
    ("head_finetune", "-m core head-study --layers BLOCK_3-5_ADD --finetune-from BLOCK_3-4_ADD --out assets/birdnet_heads/finetune.csv", 25.0),
    *[(f"sweep_margin_{m}", f"-m core sweep --models {m} --objective output-margin --epsilons 0,1e-5,3e-5,1e-4,3e-4,1e-3 --steps 10 "
                            f"--split test --max-clips 96 --out assets/birdnet/sweep_margin_{m}.csv", 20.0)
      for m in ("birdnet", "protopnet", "baseline")],
    *[(f"transfer_{e}", f"-m core transfer --models birdnet,protopnet,baseline --eps {e} --max-segments 24 "
                        f"--out assets/birdnet/transfer_eps{e}.csv", 5.0) for e in ("1e-3", "1e-4")],
    ("sweep_pgd10", "-m core sweep --models baseline,protopnet --attack pgd --epsilons 0,1e-5,3e-5,1e-4,3e-4,1e-3 --split test "
                    "--out assets/robustness/sweep_test_pgd10.csv", 30.0),
    ("minimal_eps", "-m core sweep --models baseline,protopnet --attack pgd --epsilons 1e-3 --split test --max-clips 40 --minimal-eps "
                    "--out assets/robustness/minimal_eps_40.csv", 20.0),
    ("targeted_parmaj", "-m core sweep --models baseline,protopnet --objective output-targeted --target-species parmaj --mode add "
                        "--epsilons 1e-3 --split test --max-clips 40 --out assets/robustness/targeted_parmaj_add.csv", 10.0),
    ("targeted_embedding", "-m core sweep --models baseline,protopnet --objective embedding-targeted --target-clip XC215926 "
                           "--epsilons 1e-3 --split test --max-clips 40 --out assets/robustness/targeted_embedding_XC215926.csv", 10.0),
    ("prototype_suppress", "-m core sweep --models protopnet --objective prototype-suppress --k 3 --epsilons 1e-3 --split test "
                           "--max-clips 40 --out assets/robustness/prototype_suppress_k3.csv", 10.0),
    # the documented command stops every 9 min to be run again; here it runs to the end in one go
    ("worst_case", "-m core worst-case --models birdnet_protopnet_ato,baseline_ato,birdnet --epsilons 1e-4,3e-5 --max-clips 24 "
                   "--max-minutes 100000 --out assets/robustness/worst_case_windows.csv", 90.0),
    ("threats", "-m core threats --fresh", 40.0),
    ("masking", "-m core masking-attack --fresh", 40.0),
    ("embeddings", "-m core embed-metrics --models baseline,protopnet,birdnet --eps 1e-4 --steps 10 "
                   "--out assets/embeddings/metrics_test_eps1e-4.csv", 6.0),
    ("home_figure", "bench/home_figure.py", 10.0),
]


#: The figure studies that add a block to the shipped cards (robustness, audit, post_cutoff, no_bird).
CARD_STUDIES = ("birdnet_threshold", "compare", "audit", "audit_ato", "audit_ate", "audit_ft", "cutoff", "cutoff_gated", "no_bird")


def study_steps() -> list[Step]:
    """The seed studies on the staging directory, the promotion (by hand), then the figure studies."""
    steps = [
        _arms("arms_baseline", {"OT": "baseline", "AT-O": "baseline_ato", "AT-E": "baseline_ate", "OT+FT": "baseline_ft"},
              f"{STUDIES_DIR}/arms_baseline.csv", 30.0),
        _arms("arms_protopnet", {"OT": "protopnet", "AT-O": "protopnet_ato", "AT-E": "protopnet_ate", "OT+FT": "protopnet_ft"},
              f"{STUDIES_DIR}/arms_protopnet.csv", 35.0),
        _arms("arms_heads", {"OT": "birdnet_protopnet", "AT-O": "birdnet_protopnet_ato", "AT-E": "birdnet_protopnet_ate",
                             "OT+FT": "birdnet_protopnet_ft", "noise": "birdnet_protopnet_noise", "AT-X": "birdnet_protopnet_atx"},
              f"{STUDIES_DIR}/arms_heads.csv", 65.0),
    ]
    # the paper check over seeds: every seed of the small models' four arms in one comparison (no --strong: the worst
    # case over seeds is the arms tables'; the clean and shifted claims need the windows' scores); its paper check
    # resamples recordings, then seeds within each arm
    small = [f"{a}{x}" for a in ("baseline", "protopnet") for x in ("", "_ato", "_ate", "_ft")]
    out_seeds = f"{STUDIES_DIR}/compare_seeds"
    steps.append(Step("study:compare_seeds", "compare_seeds",
                      ("-m", "core", "compare", "--models", ",".join(ckpt(n, s) for n in small for s in SEEDS),
                       "--split-scheme", SCHEME, "--out", out_seeds), (out_seeds,), 60.0, check="ledger",
                      needs=tuple(f"{n}@s{s}" for n in small for s in SEEDS), study=True))
    gated = ",".join(ckpt("birdnet_protopnet_gated", s) for s in SEEDS)
    ungated = ",".join(ckpt("birdnet_protopnet", s) for s in SEEDS)
    out = f"{STUDIES_DIR}/open_set_seeds.csv"
    # a fresh draw of the held-out families (seed 2027): the gate's defaults were set looking at the 2026 draw
    steps.append(Step("study:open_set_seeds", "open_set_seeds", ("-m", "core", "open-set-seeds", "--recipe", f"ungated={ungated}",
                                                                 "--recipe", f"shipped={gated}", "--reference", "ungated",
                                                                 "--held-out-seed", str(OPEN_SET_HELD_OUT_SEED),
                                                                 "--split-scheme", SCHEME, "--out", out),
                      (out,), 15.0, check="ledger", needs=tuple(f"birdnet_protopnet_gated@s{s}" for s in SEEDS), study=True))
    steps.append(Step("promote", "promote", (), PROMOTED, 0.0, check="promoted", needs=tuple(f"{n}@s0" for n in PROMOTED), study=True,
                      note=f"run bench/rebuild_person_split.py --promote (seed 0 of each model from {STAGING}/ into checkpoints/, "
                           "DEFAULT_SPLIT_SCHEME 'person'), update docs/models.md's commands where it says they change"))
    for key, cmd, guess in FIGURE_STUDIES:
        argv = tuple(shlex.split(cmd))
        replaces: tuple[str, ...] = ()
        if argv[:3] in (("-m", "core", "sweep"), ("-m", "core", "worst-case")):  # resumable tables keyed by their settings
            out = argv[argv.index("--out") + 1]
            replaces = (out, out + ".json") + ((out.replace(".csv", "_min_eps.csv"),) if "--minimal-eps" in argv else ())
        if argv[:2] == ("-m", "core"):
            argv += ("--split-scheme", SCHEME)
        steps.append(Step(f"study:{key}", key, argv, (), guess, check="ledger", needs=("promote",), study=True, replaces=replaces))
    return steps


def reference_step() -> Step:
    out = f"{STAGING}/reference_logreg.json"
    return Step("reference", "reference", ("-m", "core", "reference", "--split-scheme", SCHEME, "--out", out), (out,), 1.0,
                check="reference")


def default_plan() -> list[Step]:
    """Every step, in the order they run (see the module docstring)."""
    return [reference_step(), *head_steps(), *head_ot_seeds(SEEDS[1:]), *small_model_steps(ot_seeds=False),
            *small_model_ot_seeds(SEEDS[1:]), *study_steps()]


# ------------------------------------------------------------------------------------------------ state and checks

def read_ledger(path: Path) -> dict:
    """The ledger (``{"steps": {id: record}}``); empty when there is none yet."""
    if not path.is_file():
        return {"steps": {}}
    data = json.loads(path.read_text())
    data.setdefault("steps", {})
    return data


def write_ledger(path: Path, ledger: dict) -> None:
    from core.io.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(ledger, indent=1, sort_keys=True) + "\n")


def record_step(path: Path, step_id: str, record: dict) -> dict:
    """Add one finished step to the ledger on disk (re-read first: another runner may have recorded steps meanwhile);
    returns the merged ledger."""
    ledger = read_ledger(path)
    ledger["steps"][step_id] = record
    write_ledger(path, ledger)
    return ledger


def _claim_path(step: Step, root: Path) -> Path:
    return root / STAGING / "running" / f"{step.id.replace('/', '_')}.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claimed_by(step: Step, root: Path) -> int | None:
    """The pid of a live process (other than this one) that has claimed ``step``, else None (no claim, or a stale one)."""
    try:
        pid = int(_claim_path(step, root).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid != os.getpid() and _alive(pid) else None


def claim(step: Step, root: Path) -> bool:
    """Claim ``step`` for this process (exclusive create; a stale claim is taken over); False if a live one holds it."""
    path = _claim_path(step, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if claimed_by(step, root) is not None:
                return False
            path.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        return True
    return False


def release(step: Step, root: Path) -> None:
    """Remove this process's claim on ``step``."""
    path = _claim_path(step, root)
    try:
        if int(path.read_text().split()[0]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, IndexError):
        pass


def _card(root: Path, checkpoint: str) -> dict | None:
    weights, card = root / checkpoint, (root / checkpoint).with_suffix(".json")
    if not (weights.is_file() and card.is_file()):
        return None
    try:
        return json.loads(card.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_done(step: Step, root: Path, ledger: dict) -> bool:
    """Whether ``step``'s done-check passes (see :class:`Step`)."""
    if step.check == "card":
        card = _card(root, step.outputs[0])
        return bool(card) and (card.get("data") or {}).get("split_scheme") == SCHEME and \
            (card.get("train_config") or {}).get("seed") == step.seed and card.get("command") == step.command
    if step.check == "reference":
        try:
            return json.loads((root / step.outputs[0]).read_text()).get("split_scheme") == SCHEME
        except (OSError, json.JSONDecodeError):
            return False
    if step.check == "files":
        return all((root / o).is_file() for o in step.outputs)
    if step.check == "ledger":
        rec = ledger["steps"].get(step.id)
        return bool(rec) and rec.get("command") == step.command and all((root / o).exists() for o in step.outputs)
    if step.check == "promoted":
        cards = [_card(root, f"checkpoints/{n}.safetensors") for n in step.outputs]
        return all(c and (c.get("data") or {}).get("split_scheme") == SCHEME for c in cards)
    raise ValueError(f"unknown check {step.check!r} of step {step.id}")


def resume_state(step: Step, root: Path) -> Path | None:
    """The resume state a killed run of a training step left (``NAME.resume.pt`` beside its checkpoint), if any."""
    if not step.outputs or not step.outputs[0].endswith(".safetensors"):
        return None
    p = root / step.outputs[0].replace(".safetensors", ".resume.pt")
    return p if p.is_file() else None


def done_share(step: Step, root: Path) -> float:
    """Share of a training step already done by an interrupted run (its resume state's progress; 0 without one)."""
    state = resume_state(step, root)
    if state is None:
        return 0.0
    from core.training.resume import read_progress

    return float(read_progress(state) or 0.0)


def estimate_minutes(step: Step, ledger: dict, root: Path) -> float:
    """Minutes ``step`` still needs: the median uninterrupted duration of its kind (else its first guess), times the
    share its resume state has not done."""
    timed = [r["seconds"] / 60 for r in ledger["steps"].values() if r.get("kind") == step.kind and not r.get("resumed")
             and r.get("seconds") is not None]
    base = statistics.median(timed) if timed else step.guess_min
    return base * (1.0 - done_share(step, root))


# --------------------------------------------------------------------------------------------------------- running

@dataclass
class Decision:
    """What the runner does with one pending step: ``run``, ``skip`` (with ``--studies`` off, or manual / blocked) or
    ``stop`` (its estimate does not fit in the budget left)."""

    step: Step
    action: str
    minutes: float
    reason: str = ""


def plan_run(steps: Sequence[Step], root: Path, ledger: dict, *, budget_minutes: float | None, studies: bool,
             elapsed_minutes: float = 0.0) -> list[Decision]:
    """The decisions for the pending steps, in order, as if each step took its estimate (``--dry-run``, and the
    runner's first look). Stops at the first step whose estimate does not fit in the budget left."""
    done = {s.id for s in steps if is_done(s, root, ledger)}
    out, t = [], elapsed_minutes
    for step in steps:
        if step.id in done:
            continue
        est = estimate_minutes(step, ledger, root)
        if step.study and not studies:
            out.append(Decision(step, "skip", est, "a study: runs with --studies"))
            continue
        if step.manual:
            out.append(Decision(step, "skip", est, f"manual: {step.note}"))
            continue
        pid = claimed_by(step, root)
        if pid is not None:
            out.append(Decision(step, "skip", est, f"running in another process (pid {pid})"))
            continue
        missing = [n for n in step.needs if n not in done]
        if missing:
            out.append(Decision(step, "skip", est, f"needs {', '.join(missing)}"))
            continue
        if budget_minutes is not None and t + est > budget_minutes:
            out.append(Decision(step, "stop", est, f"needs ~{est:.0f} min, {max(0.0, budget_minutes - t):.0f} min of the budget left"))
            break
        out.append(Decision(step, "run", est))
        t += est
        done.add(step.id)  # what follows may need it
    return out


def commit(paths: Sequence[str], message: str, root: Path) -> bool:
    """``git add`` and ``git commit -- paths`` (only these paths, whatever else is staged); False if git refused."""
    present = [p for p in paths if (root / p).exists()]
    if not present:
        return True
    for _ in range(3):  # another process may hold the index lock for a moment
        add = subprocess.run(["git", "add", "--", *present], cwd=root, capture_output=True, text=True)
        if add.returncode == 0:
            done = subprocess.run(["git", "commit", "-q", "-m", message, "--", *present], cwd=root, capture_output=True, text=True)
            if done.returncode == 0 or "nothing to commit" in done.stdout + done.stderr:
                return True
        time.sleep(5)
    print(f"warning: could not commit {', '.join(present)}: {(add.stderr or done.stderr).strip()[:300]}", file=sys.stderr)
    return False


def run_plan(steps: Sequence[Step], root: Path, ledger_path: Path, *, budget_minutes: float | None = None, studies: bool = False,
             do_commit: bool = False, clock: Callable[[], float] = time.monotonic,
             execute: Callable[[Step], int] | None = None) -> int:
    """Run the pending steps in order within the budget; returns 0, or 1 when a step failed or its done-check did not pass.

    Parameters
    ----------
    steps : sequence of Step
    root : Path
        The repository (commands run there; outputs are relative to it).
    ledger_path : Path
    budget_minutes : float, optional
        Wall-clock minutes from now; no step starts whose estimate does not fit in what is left.
    studies : bool
        Also run the study steps.
    do_commit : bool
        Commit each step's outputs and the ledger when it is done.
    clock : callable
        Seconds (tests pass a fake clock).
    execute : callable, optional
        ``execute(step) -> exit code``; default: the command in a subprocess in ``root``.
    """
    execute = execute or (lambda step: subprocess.run([sys.executable, *step.argv], cwd=root).returncode)
    t0 = clock()
    ran = 0
    while True:
        ledger = read_ledger(ledger_path)  # another runner may have recorded steps
        elapsed = (clock() - t0) / 60
        todo = plan_run(steps, root, ledger, budget_minutes=budget_minutes, studies=studies, elapsed_minutes=elapsed)
        nxt = next((d for d in todo if d.action in ("run", "stop")), None)
        if nxt is None:
            print(f"nothing left to run ({ran} step(s) run now)" + ("" if studies else "; studies run with --studies"))
            return 0
        if nxt.action == "stop":
            print(f"stopping before {nxt.step.id}: {nxt.reason} ({ran} step(s) run now)")
            return 0
        step = nxt.step
        resumed = resume_state(step, root) is not None
        print(f"[{time.strftime('%H:%M')}] {step.id}: ~{nxt.minutes:.0f} min{' (resuming)' if resumed else ''}\n  {step.command}",
              flush=True)
        for old in step.replaces:
            if (root / old).is_file():
                print(f"  replacing {old} (the earlier run's table; it stays in git's history)")
                (root / old).unlink()
        if not claim(step, root):
            continue  # another runner took it a moment ago: look again
        try:
            start = clock()
            rc = execute(step)
            seconds = clock() - start
        finally:
            release(step, root)
        if rc != 0:
            print(f"{step.id} failed (exit code {rc}) after {seconds / 60:.1f} min; fix it and run again (a training step resumes)")
            return 1
        if not is_done(step, root, ledger if step.check != "ledger" else {"steps": {step.id: {"command": step.command}}}):
            print(f"{step.id} finished but its done-check fails ({step.check}: {', '.join(step.outputs) or 'ledger'}); not recorded")
            return 1
        ledger = record_step(ledger_path, step.id, {
            "kind": step.kind, "seconds": round(seconds, 1), "resumed": resumed, "command": step.command,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "threads": os.environ.get("BIRDSHIELD_THREADS")})
        ran += 1
        print(f"{step.id} done in {seconds / 60:.1f} min", flush=True)
        if do_commit:
            rel = [str(Path(o)) for o in step.outputs if not step.study or o.startswith(STAGING)]
            log = [o.replace(".safetensors", ".log") for o in step.outputs if o.endswith(".safetensors")]
            commit([*rel, *log, str(ledger_path.relative_to(root))], f"person split: {step.id} ({step.kind}), "
                   f"{seconds / 60:.1f} min (issue 24)", root)


#: Card fields that name a parent or how the model was made (rewritten from the staging paths to the shipped names).
CARD_COMMANDS = ("command", "trained_by", "init", "init_backbone")
SPLIT_LINE = "core/io/split.py"


def shipped_form(text: str) -> str:
    """A staging command or path as the shipped model's card gives it: ``checkpoints/person/NAME.safetensors`` ->
    ``NAME``; ``--split-scheme person`` and ``--out-dir checkpoints/person`` dropped (the default once promoted)."""
    import re

    text = re.sub(rf"(?<![\w/.-]){re.escape(STAGING)}/([\w-]+)\.safetensors\b", r"\1", text)
    return re.sub(rf" --(split-scheme {SCHEME}|out-dir {re.escape(STAGING)})(?=\s|$)", "", text)


def promote(root: Path, names: Sequence[str] = PROMOTED, *, dry_run: bool = False) -> list[str]:
    """The manual step, by hand or by this: ship seed 0 of every model of ``names`` and make the person split the default.

    Copies ``STAGING/NAME.{safetensors,json,log}`` into ``checkpoints/`` (the card's command, parent and ``trained_by``
    in their shipped form, :func:`shipped_form`; the weights byte for byte) and the reference's results
    (``reference_logreg.json``), and switches
    ``core.io.split.DEFAULT_SPLIT_SCHEME`` to ``person``. The studies that add to the cards (``compare --update-cards``,
    ``audit``, ``cutoff``, ``no-bird-check``) must run before the result can land: the copied cards have none of their
    blocks yet.

    Parameters
    ----------
    root : Path
        The repository root.
    names : sequence of str
        Staging model names (seed 0).
    dry_run : bool
        Only report what would change.

    Returns
    -------
    list of str
        One line per file written (or to be written) and per command that changes from the shipped card's.

    Raises
    ------
    SystemExit
        A model whose staging weights or card is missing, or whose card does not name the person split.
    """
    import re
    import shutil

    report = []
    for name in names:
        src = root / STAGING / f"{name}.safetensors"
        card = _card(root, f"{STAGING}/{name}.safetensors")
        if card is None or (card.get("data") or {}).get("split_scheme") != SCHEME:
            raise SystemExit(f"{src} or its card is missing, or the card does not name the {SCHEME} split: train it first")
        for key in CARD_COMMANDS:
            if isinstance(card.get(key), str):
                card[key] = shipped_form(card[key])
        shipped = root / "checkpoints" / f"{name}.json"
        old = json.loads(shipped.read_text()) if shipped.is_file() else {}
        if old.get("command") and old["command"] != card.get("command"):
            report.append(f"{name}: command changes from {old['command']!r} to {card.get('command')!r} (update docs/models.md)")
        report.append(f"checkpoints/{name}.safetensors, .json, .log <- {STAGING}/{name}.*")
        if not dry_run:
            shutil.copyfile(src, root / "checkpoints" / f"{name}.safetensors")
            (root / "checkpoints" / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
            log = src.with_suffix(".log")
            if log.is_file():
                shutil.copyfile(log, root / "checkpoints" / f"{name}.log")
    # the reference the cards and the head tables compare with (its own step, not a model of ``names``)
    ref = root / STAGING / "reference_logreg.json"
    if ref.is_file():
        report.append(f"checkpoints/reference_logreg.json <- {STAGING}/reference_logreg.json")
        if not dry_run:
            shutil.copyfile(ref, root / "checkpoints" / "reference_logreg.json")
    split = root / SPLIT_LINE
    text = split.read_text()
    switched = re.sub(r'^DEFAULT_SPLIT_SCHEME = "\w+"$', f'DEFAULT_SPLIT_SCHEME = "{SCHEME}"', text, count=1, flags=re.M)
    if switched != text:
        report.append(f'{SPLIT_LINE}: DEFAULT_SPLIT_SCHEME = "{SCHEME}"')
        if not dry_run:
            split.write_text(switched)
    return report


def list_plan(steps: Sequence[Step], root: Path, ledger: dict) -> str:
    """Every step with done / pending (with its estimate, and how much a killed run had done) and the totals."""
    lines, pending, pending_studies = [], 0.0, 0.0
    for s in steps:
        if is_done(s, root, ledger):
            rec = ledger["steps"].get(s.id)
            took = f"{rec['seconds'] / 60:.1f} min" if rec and rec.get("seconds") is not None else "done"
            lines.append(f"done     {s.id:34s} {took}")
            continue
        est = estimate_minutes(s, ledger, root)
        share = done_share(s, root)
        part = f", {share:.0%} done by an interrupted run" if share else ""
        what = f"manual: {s.note}" if s.manual else s.command
        lines.append(f"pending  {s.id:34s} ~{est:.0f} min{part}{' [study]' if s.study else ''}\n         {what}")
        if s.study:
            pending_studies += est
        else:
            pending += est
    size = sum(p.stat().st_size for p in (root / STAGING).rglob("*") if p.is_file()) / 1e6 if (root / STAGING).is_dir() else 0.0
    n_done = sum(ln.startswith("done") for ln in lines)
    lines.append(f"{n_done}/{len(steps)} steps done; pending: training ~{pending / 60:.1f} h, studies ~{pending_studies / 60:.1f} h; "
                 f"{STAGING}/ holds {size:.0f} MB")
    return "\n".join(lines)


def main(argv: list[str] | None = None, steps: Sequence[Step] | None = None, root: Path = ROOT) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--list", action="store_true", help="print every step with done/pending and the estimates, run nothing")
    p.add_argument("--dry-run", action="store_true", help="print what would run within the budget, run nothing")
    p.add_argument("--budget-minutes", type=float, help="run pending steps in order while the next one's estimate fits (default: all)")
    p.add_argument("--studies", action="store_true", help="also run the study steps (never without this flag)")
    p.add_argument("--commit", action="store_true", help="commit each finished step's outputs and the ledger (git commit -- paths)")
    p.add_argument("--promote", action="store_true", help="the manual step: ship seed 0 of every model and switch "
                   "DEFAULT_SPLIT_SCHEME to person (with --dry-run: say what would change)")
    p.add_argument("--ledger", default=LEDGER, help=f"the ledger of finished steps and their durations (default {LEDGER})")
    args = p.parse_args(argv)
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        p.error(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")
    steps = list(default_plan() if steps is None else steps)
    ids = [s.id for s in steps]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"duplicate step ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    ledger_path = root / args.ledger
    ledger = read_ledger(ledger_path)
    if args.list:
        print(list_plan(steps, root, ledger))
        return 0
    if args.promote:
        print("\n".join(promote(root, dry_run=args.dry_run)))
        return 0
    if args.dry_run:
        decisions = plan_run(steps, root, ledger, budget_minutes=args.budget_minutes, studies=args.studies)
        for d in decisions:
            print(f"{d.action:5s} {d.step.id:34s} ~{d.minutes:.0f} min" + (f"  ({d.reason})" if d.reason else ""))
        total = sum(d.minutes for d in decisions if d.action == "run")
        print(f"would run {sum(d.action == 'run' for d in decisions)} step(s), ~{total:.0f} min")
        return 0
    return run_plan(steps, root, ledger_path, budget_minutes=args.budget_minutes, studies=args.studies, do_commit=args.commit)


if __name__ == "__main__":
    sys.exit(main())
