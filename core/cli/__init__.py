"""Command-line interface: ``python -m core SUBCOMMAND`` (``python -m core --help`` lists them).

Duty: read the command line and call core's functions; a handler does no study of its own. The CLI sits above
every wing of core (io, models, attacks, training, studies, field) and may import any of them; nothing in core
imports it. Layout: :mod:`core.cli.args` (options shared by subcommands, each written once), :mod:`core.cli.common`
(what handlers share at run time), and one module per group of subcommands: :mod:`core.cli.train`,
:mod:`core.cli.field`, :mod:`core.cli.attacks`, :mod:`core.cli.studies`, :mod:`core.cli.data`.

Every error a user can cause ends in a one-line message on stderr and exit code 2;
nothing prints a traceback for bad input.

Before a subcommand runs, :func:`core.io.device.apply_thread_policy` sets torch's threads from the machine's CPUs
and how busy other programs keep them (``BIRDSHIELD_THREADS=N`` fixes N). ``--help`` does no such work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from core.cli import attacks, data, field, studies, train
from core.cli.args import add_data_dir
from core.errors import CoreError

# the order of `python -m core --help`
SUBCOMMANDS = ("train", "reference", "calibrate", "open-set", "open-set-seeds", "train-head", "finetune-head",
               "audit", "head-study", "evaluate", "predict", "analyze", "no-bird-check", "threats", "masking-attack",
               "attack", "certify", "sweep", "arms", "noise-bank", "shift", "embed-metrics", "transfer", "compare",
               "worst-case", "cutoff", "fetch-model", "explain-published", "download", "data")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m core``: one subparser per subcommand, its handler in ``args.func``."""
    commands = {**train.COMMANDS, **field.COMMANDS, **attacks.COMMANDS, **studies.COMMANDS, **data.COMMANDS}
    p = argparse.ArgumentParser(prog="python -m core", description="birdshield: explain and attack bird-sound classifiers")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in SUBCOMMANDS:
        command = commands[name]
        s = sub.add_parser(name, help=command.help.replace("%", "%%"))  # plain text: "1 %" must not break --help
        if command.options is not None:
            command.options(s)
        if command.dataset:
            add_data_dir(s)
        s.set_defaults(func=command.handler)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        The arguments after ``python -m core``; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 1 when ``analyze`` could not read some of its files, 2 for a :class:`core.errors.CoreError`
        (one line on stderr, no traceback), 130 when interrupted. Bad options exit through argparse (code 2).
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = "python -m core " + " ".join(argv if argv is not None else sys.argv[1:])
    try:
        from core.io.device import apply_thread_policy

        policy = apply_thread_policy()
        logging.getLogger(__name__).info("torch threads: %d (%s)", policy.intra_op, policy.reason)
        return args.func(args)
    except CoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `python -m core predict ... --json | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
