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


#: Attributes of a parsed command line that do not change what a training run computes.
NOT_TRAINING_OPTIONS = ("func", "command_line", "restart", "data_dir", "split_scheme", "cmd")


def training_resume(args, dataset, checkpoint: Path, *, inits: tuple[str, ...] = ()):
    """The resume state of the run that writes ``checkpoint`` (:class:`core.training.resume.TrainingResume`).

    The run is identified by every option of ``args`` but where the data lies (the data enters by content and split
    scheme) and whether to restart, and by the weights of the checkpoints in ``inits`` (the options naming them, e.g.
    ``("init", "init_backbone")``), so that a retrained parent does not let an old state go on.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (``--restart`` read from it).
    dataset : core.io.data.Dataset
        The data the run trains on.
    checkpoint : Path
        The ``.safetensors`` file the run writes; the state lies beside it (``NAME.resume.pt``).
    inits : tuple of str
        Options of ``args`` that name parent checkpoints.

    Returns
    -------
    core.training.resume.TrainingResume
        With ``resumed_from`` set when an interrupted run of the same arguments is continued (said on stderr).

    Raises
    ------
    ParameterError
        A state beside ``checkpoint`` written by another run, without ``--restart``.
    CheckpointError
        An unreadable state.
    """
    from core.models.registry import BUILTIN_MODELS, read_model_card, resolve_checkpoint
    from core.training.resume import TrainingResume, resume_path, run_settings

    options = {k: v for k, v in sorted(vars(args).items()) if k not in NOT_TRAINING_OPTIONS}
    for opt in inits:
        name = getattr(args, opt, None)
        if name and str(name) not in BUILTIN_MODELS:
            options[f"{opt}_weights_sha256"] = read_model_card(name).get("weights_sha256") or str(resolve_checkpoint(name))
    resume = TrainingResume(resume_path(checkpoint), run_settings(options, dataset), restart=getattr(args, "restart", False))
    if resume.resumed_from is not None:
        at = resume.resumed_from
        print(f"resuming {checkpoint.stem} from {resume.path.name} (stage {at['stage']}, epoch {at['epoch']} done; "
              f"{resume.prior_seconds / 60:.1f} min spent)", file=sys.stderr)
    return resume


def trained_path(args) -> Path:
    """Where a training subcommand writes its checkpoint: ``--out-dir``/``--name``.safetensors."""
    from core.models.registry import CHECKPOINT_DIR

    return Path(args.out_dir or CHECKPOINT_DIR) / f"{args.name}.safetensors"


def save_trained(args, model, card: dict, resume=None) -> Path:
    """Write a newly trained head as ``--out-dir``/``--name``.safetensors with its card; returns the path.

    With ``resume`` (:func:`training_resume`) the card says where an interrupted run was resumed
    (``resumed_from``), and the resume state is deleted once the checkpoint is written.
    """
    from core.models.registry import save_checkpoint

    card["command"] = args.command_line
    if resume is not None and resume.resumed_from is not None:
        card["resumed_from"] = resume.resumed_from
    out = trained_path(args)
    save_checkpoint(model, out, card)
    if resume is not None:
        resume.delete()
    return out


def saved_line(out: Path, card: dict, *, recording_cmap: bool = False) -> str:
    """``saved OUT; test cmAP window W[ recording C], recording top-1 R (val recording top-1 V); M min``."""
    m = card["metrics"]["test"]
    rec = f" recording {m['recording']['cmap']:.3f}" if recording_cmap else ""
    return (f"saved {out}; test cmAP window {m['window']['cmap']:.3f}{rec}, recording top-1 {m['recording']['top1']:.3f} "
            f"(val recording top-1 {card['metrics']['val']['recording']['top1']:.3f}); {card['train_seconds'] / 60:.1f} min")
