"""Argument helpers of the subcommands: every option that more than one subcommand takes is written here once.

The ``add_*`` functions add one option (or one fixed group of options) to a subcommand's parser; the other
functions read an option's value and raise :class:`core.errors.ParameterError` with a message that names the
option and the value.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from core.errors import ParameterError

SPLITS = ["train", "val", "test"]
HELD_OUT = ["val", "test"]  # the splits a study may report on


class Subcommand(NamedTuple):
    """One subcommand: its one-line ``help``, the function that adds its ``options`` to its parser, its ``handler``.

    With ``dataset`` (default) it also takes ``--data-dir``, its last option.
    """

    help: str
    options: Callable[[argparse.ArgumentParser], None] | None
    handler: Callable[[argparse.Namespace], int]
    dataset: bool = True


class _ShippedModels:
    """The model names ``--model`` accepts, listed only when a help text is printed (the listing imports torch).

    With ``arch``, only the checkpoints whose model card names that architecture (e.g. ``birdnet-protopnet``).
    """

    def __init__(self, arch: str | None = None):
        self.arch = arch

    def __str__(self) -> str:
        from core.models.registry import BUILTIN_MODELS, list_checkpoints, read_model_card

        found = list_checkpoints()
        if self.arch is not None:
            found = [n for n in found if n not in BUILTIN_MODELS and read_model_card(n).get("config", {}).get("arch") == self.arch]
        return ", ".join(found) or "none"


class _DefaultSplitScheme:
    """:data:`core.io.split.DEFAULT_SPLIT_SCHEME`, read only when a help text is printed."""

    def __str__(self) -> str:
        from core.io.split import DEFAULT_SPLIT_SCHEME

        return DEFAULT_SPLIT_SCHEME


#: The split schemes ``--split-scheme`` offers (:data:`core.io.split.SPLIT_SCHEMES` without ``manifest``).
SPLIT_SCHEME_CHOICES = ["recordist", "person"]


def add_data_dir(p: argparse.ArgumentParser) -> None:
    """``--split-scheme`` (how the dataset's train/val/test are drawn) and ``--data-dir`` (the dataset directory), last.

    Every subcommand that reads the dataset takes both, and opens it with :func:`open_args_dataset`.
    """
    action = p.add_argument("--split-scheme", default=None, choices=SPLIT_SCHEME_CHOICES,
                            help="how train/val/test are drawn: recordist (no recordist string in two splits) or person (no "
                                 "person in two splits: names repaired, co-recordists split; for xc9 assets/xc9/recordist_split.csv) "
                                 "(default: %(scheme)s); a model is evaluated only on the split scheme in its card")
    action.scheme = _DefaultSplitScheme()  # %(scheme)s: read when the help is formatted (core.io.split imports numpy)
    p.add_argument("--data-dir", default=None, help="dataset directory with manifest.csv (default: $BIRDSHIELD_DATA_DIR, then ../shared/data/xc9)")


def open_args_dataset(args: argparse.Namespace):
    """The dataset of ``--data-dir``, split by ``--split-scheme`` (:func:`core.io.data.open_dataset`).

    Parameters
    ----------
    args : argparse.Namespace
        With ``data_dir`` and, when the subcommand has it, ``split_scheme`` (default
        :data:`core.io.split.DEFAULT_SPLIT_SCHEME`).

    Returns
    -------
    core.io.data.Dataset

    Raises
    ------
    DatasetError
        No dataset found.
    """
    from core.io.data import open_dataset
    from core.io.split import DEFAULT_SPLIT_SCHEME

    return open_dataset(getattr(args, "data_dir", None), getattr(args, "split_scheme", None) or DEFAULT_SPLIT_SCHEME)


def check_models_split(models, dataset) -> None:
    """Refuse models (a dict name -> model, or one model) trained on another split scheme than ``dataset``'s.

    Raises
    ------
    ParameterError
        A model's card names another split scheme (:func:`core.models.registry.check_split_scheme`).
    """
    from core.models.registry import check_split_scheme

    for name, model in (models.items() if isinstance(models, dict) else [(None, models)]):
        check_split_scheme(model, dataset, name)


def add_restart(p: argparse.ArgumentParser) -> None:
    """``--restart``: discard a resume state written with other arguments instead of refusing it."""
    p.add_argument("--restart", action="store_true",
                   help="start afresh even if OUT_DIR/NAME.resume.pt holds an interrupted run with other arguments (it is "
                        "overwritten); without it such a state is refused, and one with the same arguments is resumed")


def add_model(p: argparse.ArgumentParser, default: str | None = None, *, what: str = "checkpoint name or .safetensors path",
              arch: str | None = None, **kwargs) -> None:
    """``--model``: one checkpoint (``nargs="+"``: several); its help names the valid models and the default.

    Parameters
    ----------
    p : argparse.ArgumentParser
    default : str, optional
        The model used without ``--model``; None with ``required=True``.
    what : str
        What the subcommand needs, the first words of the help.
    arch : str, optional
        List only the shipped checkpoints of this architecture (e.g. ``"birdnet-protopnet"``).
    **kwargs
        Passed to ``add_argument`` (``nargs``, ``required``).
    """
    tail = "" if default is None else " (default: %(default)s)"
    birdnet_all = "" if arch else "; birdnet-all: BirdNET V2.4 over all its 6,522 species, not only the dataset's 9"
    action = p.add_argument("--model", default=default, help=f"{what}; shipped: %(models)s{tail}{birdnet_all}", **kwargs)
    action.models = _ShippedModels(arch)  # %(models)s: read when the help is formatted


def add_models(p: argparse.ArgumentParser, default: str | None, help: str | None = None) -> None:
    """``--models``: comma-separated checkpoint names (read with :func:`core.cli.common.load_models`); its help names
    the valid models and the default."""
    what = help or "comma-separated checkpoint names"
    tail = "" if default is None else " (default: %(default)s)"
    action = p.add_argument("--models", default=default, help=f"{what}; shipped: %(models)s{tail}")
    action.models = _ShippedModels()


def add_detection_options(p: argparse.ArgumentParser, *, threshold_alias: bool = False) -> None:
    """BirdNET-Analyzer's detection options: ``--min-conf``, ``--sensitivity``, ``--locale``, ``--lat``, ``--lon``,
    ``--week``, ``--sf-thresh`` (BirdNET-Analyzer's underscore spellings ``--min_conf``, ``--sf_thresh`` work too).

    Parameters
    ----------
    p : argparse.ArgumentParser
    threshold_alias : bool
        Also accept ``--threshold`` for ``--min-conf`` (``analyze``'s older name).

    The values are checked (one-line errors) by the subcommand before any model loads, with the functions that
    :func:`core.api.predict` and :func:`core.api.analyze` use (:mod:`core.field.detect`, :mod:`core.io.names`).
    """
    alias = ["--threshold"] if threshold_alias else []
    p.add_argument("--min-conf", "--min_conf", *alias, dest="min_conf", type=float, default=None,
                   help="score from which a species counts as detected, in (0, 1) (default: the model's validation threshold, "
                        "as the Field page; for birdnet-all, birdnetlib's 0.1)" + ("; --threshold is the same option" if alias else ""))
    p.add_argument("--sensitivity", type=float, default=1.0,
                   help="BirdNET-Analyzer's sigmoid sensitivity in [0.5, 1.5] (default 1.0): every logit is shifted by "
                        "10 x (sensitivity - 1) before the sigmoid, so higher values detect more; applies to every model")
    p.add_argument("--locale", default="en", help="language of the common names, e.g. de, fr, es, en_uk, pt_BR (default en; "
                                                  "BirdNET V2.4's 38 label languages)")
    p.add_argument("--lat", type=float, default=None, help="latitude of the recording [-90, 90]; with --lon, species that BirdNET's "
                                                           "location model does not expect there are not reported (BirdNET-Analyzer's filter)")
    p.add_argument("--lon", type=float, default=None, help="longitude of the recording [-180, 180]")
    p.add_argument("--week", type=int, default=-1, help="week of the year for the location filter, 1-48 (4 a month); -1 all year (default)")
    p.add_argument("--sf-thresh", "--sf_thresh", dest="sf_thresh", type=float, default=0.03,
                   help="occurrence probability from which the location filter keeps a species (default 0.03, BirdNET-Analyzer's)")


def add_split(p: argparse.ArgumentParser, choices: list[str] = SPLITS) -> None:
    """``--split``, default ``test``."""
    p.add_argument("--split", default="test", choices=choices)


def add_seed(p: argparse.ArgumentParser) -> None:
    """``--seed``, default 0."""
    p.add_argument("--seed", type=int, default=0)


def add_json(p: argparse.ArgumentParser) -> None:
    """``--json``: print JSON instead of text."""
    p.add_argument("--json", action="store_true")


def add_int(p: argparse.ArgumentParser, flag: str, default: int | None = None, help: str | None = None, **kwargs) -> None:
    """An integer option (``--steps``, ``--max-clips``, ``--epochs``, ...)."""
    p.add_argument(flag, type=int, default=default, help=help, **kwargs)


def add_float(p: argparse.ArgumentParser, flag: str, default: float | None = None, help: str | None = None, **kwargs) -> None:
    """A float option (``--eps`` [full-scale amplitude], ``--lr``, ``--snr`` [dB], ...)."""
    p.add_argument(flag, type=float, default=default, help=help, **kwargs)


def add_steps(p: argparse.ArgumentParser, default: int = 10, help: str | None = None) -> None:
    """``--steps``: attack iterations."""
    add_int(p, "--steps", default, help)


def add_max_clips(p: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    """``--max-clips``: at most N windows, spread over the split."""
    add_int(p, "--max-clips", default, help)


def add_eps(p: argparse.ArgumentParser, default: float | None = None, help: str | None = None, **kwargs) -> None:
    """``--eps``: an L-inf budget in full-scale amplitude."""
    add_float(p, "--eps", default, help, **kwargs)


def add_out(p: argparse.ArgumentParser, default: str | None = None, help: str | None = None) -> None:
    """``--out``: the file (or directory) a subcommand writes."""
    p.add_argument("--out", default=default, help=help)


def add_out_dir(p: argparse.ArgumentParser, help: str = "default checkpoints/") -> None:
    """``--out-dir``: where a new checkpoint is written."""
    p.add_argument("--out-dir", help=help)


def add_lr_stage(p: argparse.ArgumentParser, which: str) -> None:
    """``--lr-stage``: Adam learning rate of BirdNET's ``which`` layers."""
    add_float(p, "--lr-stage", 1e-4, f"Adam learning rate of the {which} layers (default 1e-4)")


def add_eps_grid(p: argparse.ArgumentParser, flag: str = "--epsilons", default: str | None = None,
                 help: str = "comma-separated eps grid in full-scale amplitude, e.g. 0,1e-5,1e-4,1e-3") -> None:
    """A comma-separated grid of budgets (``--epsilons``, ``--target-epsilons``, ``--snr``)."""
    p.add_argument(flag, default=default, help=help)


def names(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (model lists, layer lists, formats)."""
    return [m.strip() for m in text.split(",") if m.strip()]


def floats(text: str, option: str) -> list[float]:
    """Comma-separated numbers of ``option``.

    Raises
    ------
    ParameterError
        A value that is not a number.
    """
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ParameterError(f"{option} must be comma-separated numbers, e.g. 0,1e-4,1e-3; got {text!r}") from None


def out_path(path: str | None, suffixes: tuple[str, ...] = (".csv",)) -> Path | None:
    """``--out`` of a command that writes one table or JSON file; None stays None.

    Raises
    ------
    ParameterError
        ``path`` ends in none of ``suffixes``.
    """
    if not path:
        return None
    out = Path(path)
    if out.suffix not in suffixes:
        raise ParameterError(f"--out must end in {' or '.join(suffixes)}, got {out}")
    return out


def through(text: str | None) -> dict:
    """``--through mp3-128,playback-1m`` -> the transformations (:func:`core.attacks.threats.threat_choices`).

    Raises
    ------
    ParameterError
        An unknown transformation name.
    """
    if not text:
        return {}
    from core.attacks.threats import threat_choices

    choices = threat_choices()
    chosen = names(text)
    unknown = [t for t in chosen if t not in choices]
    if unknown:
        raise ParameterError(f"--through: unknown transformation(s) {unknown}; choose from {', '.join(choices)}")
    return {t: choices[t][1] for t in chosen}
