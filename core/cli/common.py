"""What the subcommands' handlers share at run time: the models of ``--models``, progress bars, saved checkpoints."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from core.cli.args import names
from core.errors import ParameterError


def load_models(text: str) -> dict:
    """Checkpoints named in ``--models`` (comma-separated), by name, in the order given.

    Raises
    ------
    ParameterError
        No name at all.
    CheckpointError
        A name that is no checkpoint.
    """
    from core.models.registry import load_checkpoint

    chosen = names(text)
    if not chosen:
        raise ParameterError("--models needs at least one checkpoint name")
    return {n: load_checkpoint(n) for n in chosen}


def common_window(models: dict) -> tuple[int, int]:
    """The sample rate [Hz] and window length [samples] that all ``models`` share.

    Raises
    ------
    ParameterError
        Two models differ in either.
    """
    first = next(iter(models.values()))
    sr, win = first.config.frontend.sample_rate, first.config.window_samples
    if any((m.config.frontend.sample_rate, m.config.window_samples) != (sr, win) for m in models.values()):
        raise ParameterError("all --models must share the sample rate and window length")
    return sr, win


@contextmanager
def progress_bar(unit: str | None = None, desc: str | None = None, total: float = 1) -> Iterator[Callable]:
    """A tqdm bar on stderr (off when stderr is no terminal) and its callback.

    The callback takes ``(done, total)`` or ``(stage, done, total)``; a stage becomes the bar's description.
    """
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit or "it", dynamic_ncols=True, disable=None, desc=desc)

    def progress(*report):
        *stage, done, todo = report
        if stage:
            bar.set_description(str(stage[0]))
        bar.total, bar.n = todo, done
        bar.refresh()

    try:
        yield progress
    finally:
        bar.close()


def count_batches(done: int, total: int) -> None:
    """Progress of a study as ``done/total attack batches`` on one line of stderr."""
    print(f"\r{done}/{total} attack batches", end="", file=sys.stderr, flush=True)


def save_trained(args, model, card: dict) -> Path:
    """Write a newly trained head as ``--out-dir``/``--name``.safetensors with its card; returns the path."""
    from core.models.registry import CHECKPOINT_DIR, save_checkpoint

    card["command"] = args.command_line
    out = Path(args.out_dir or CHECKPOINT_DIR) / f"{args.name}.safetensors"
    save_checkpoint(model, out, card)
    return out


def saved_line(out: Path, card: dict, *, recording_cmap: bool = False) -> str:
    """``saved OUT; test cmAP window W[ recording C], recording top-1 R (val recording top-1 V); M min``."""
    m = card["metrics"]["test"]
    rec = f" recording {m['recording']['cmap']:.3f}" if recording_cmap else ""
    return (f"saved {out}; test cmAP window {m['window']['cmap']:.3f}{rec}, recording top-1 {m['recording']['top1']:.3f} "
            f"(val recording top-1 {card['metrics']['val']['recording']['top1']:.3f}); {card['train_seconds'] / 60:.1f} min")
