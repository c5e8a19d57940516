"""Resumable training: the state of a run, written after every epoch, continued when the same run starts again.

A run killed mid-training (a session that ends, a machine that is taken back) loses at most the epoch it was in:
:class:`TrainingResume` writes ``<out_dir>/<name>.resume.pt`` atomically (:mod:`core.io.fileio`) after every epoch
with everything the next epoch depends on: the weights, the optimisers and schedulers, every random generator
(torch's global one, Python's, numpy's, and the run's own), the epoch, the history and whatever else the loop keeps
(e.g. the best weights so far). Started again with the same settings, the run continues after the last finished
epoch and ends with the same weights as a run that was never interrupted (on the same device and thread count).

The state names the run it belongs to: a hash of the settings it was started with (the options and the data's
identity, :func:`core.io.journal.dataset_identity`), so that a state is never continued by another run; one written
with other settings is refused unless ``restart`` is asked for. The caller deletes it once the checkpoint is written.
States are read with ``torch.load(weights_only=True)``: nothing in them is unpickled as code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from core.errors import CheckpointError, ParameterError
from core.io.fileio import atomic_path
from core.io.journal import dataset_identity, jsonable

__all__ = ["RESUME_SUFFIX", "STATE_FORMAT", "TrainingResume", "resume_path", "run_settings", "read_progress"]

log = logging.getLogger(__name__)

#: A checkpoint ``NAME.safetensors`` has its resume state at ``NAME.resume.pt``.
RESUME_SUFFIX = ".resume.pt"
#: Bumped when the layout of a state changes (an older state is then refused, naming the format).
STATE_FORMAT = 1


def resume_path(checkpoint: str | os.PathLike) -> Path:
    """``out/NAME.safetensors`` (or ``out/NAME``) -> ``out/NAME.resume.pt``."""
    p = Path(checkpoint)
    return p.with_name((p.stem if p.suffix == ".safetensors" else p.name) + RESUME_SUFFIX)


def run_settings(options: dict, dataset) -> dict:
    """The settings that identify a training run: ``options`` (JSON-ready) and the data it trains on.

    Parameters
    ----------
    options : dict
        Every option that changes what is trained (not where the data lies: the data enters by content).
    dataset : core.io.data.Dataset

    Returns
    -------
    dict
        ``options``, ``data`` (the content hash of :func:`core.io.journal.dataset_identity`, which covers the split
        scheme and every recording's split) and ``split_scheme``.
    """
    return jsonable({"options": options, "data": dataset_identity(dataset)["content"], "split_scheme": dataset.split_scheme})


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def _rng_state(generators: dict) -> dict:
    legacy = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [legacy[0], [int(v) for v in legacy[1]], *[v.item() if hasattr(v, "item") else v for v in legacy[2:]]],
             "own": {}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    for name, gen in generators.items():
        state["own"][name] = gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state
    return state


def _set_rng_state(state: dict, generators: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(v if not isinstance(v, list) else tuple(v) for v in state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, gen in generators.items():
        if isinstance(gen, torch.Generator):
            gen.set_state(state["own"][name])
        else:
            gen.bit_generator.state = state["own"][name]


def _load(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or holds objects weights_only refuses
        raise CheckpointError(f"{path} is not a readable resume state ({type(exc).__name__}: {str(exc)[:200]}); "
                              "delete it or pass --restart") from exc


def read_progress(path: str | os.PathLike) -> float | None:
    """Share of a run's epochs that its resume state at ``path`` has finished (0-1); None without a readable state."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        return float(_load(p).get("progress", 0.0))
    except CheckpointError:
        return None


class TrainingResume:
    """The resume state of one training run at ``path``: read when the run starts, written after every epoch.

    The run's loop is split into stages (e.g. AudioProtoPNet's warm-up and joint phases) of epochs. At the start of
    each stage the loop calls :meth:`restore`, after each epoch :meth:`save`.

    Parameters
    ----------
    path : path
        ``<out_dir>/<name>.resume.pt`` (:func:`resume_path`).
    settings : dict
        Everything that identifies the run (:func:`run_settings`); JSON-ready.
    restart : bool
        A state written with other settings is deleted (and the run starts afresh) instead of refused.
    on_save : callable, optional
        ``on_save(position)`` after each state is written (``position``: ``{"stage": s, "epoch": e}``); tests
        interrupt a run from here.

    Attributes
    ----------
    resumed_from : dict or None
        The position (``stage``, ``epoch``) of the state this run continues; None for a fresh run.
    prior_seconds : float
        Training time spent by the earlier, interrupted runs (0 for a fresh run).
    stage_epochs : list of int or None
        Epochs of each stage, set by the training loop; the state's ``progress`` is computed from it.

    Raises
    ------
    ParameterError
        A state at ``path`` written with other settings (the message names them), without ``restart``.
    CheckpointError
        A state that cannot be read, or of another format.
    """

    def __init__(self, path: str | os.PathLike, settings: dict, *, restart: bool = False,
                 on_save: Callable[[dict], None] | None = None) -> None:
        self.path = Path(path)
        self.settings = jsonable(settings)
        self.key = _digest(self.settings)
        self.on_save = on_save
        self.stage_epochs: list[int] | None = None
        self.resumed_from: dict | None = None
        self.prior_seconds = 0.0
        self._loaded: dict | None = None
        self._t0 = time.time()
        if not self.path.is_file():
            return
        state = _load(self.path)
        same = state.get("format") == STATE_FORMAT and state.get("key") == self.key
        if not same and not restart:
            if state.get("format") != STATE_FORMAT:
                raise CheckpointError(f"{self.path} is a resume state of format {state.get('format')!r}, this code writes "
                                      f"{STATE_FORMAT}; pass --restart to start afresh")
            was, now = state.get("settings", {}), self.settings
            differ = sorted(k for k in set(was.get("options", {})) | set(now["options"])
                            if was.get("options", {}).get(k) != now["options"].get(k))
            differ += [k for k in ("data", "split_scheme") if was.get(k) != now.get(k)]
            raise ParameterError(f"{self.path} holds an interrupted run with other arguments or data ({', '.join(differ) or 'settings'} "
                                 "differ); rerun with the same arguments to resume it, or pass --restart to start afresh")
        if not same:
            log.info("--restart: discarding %s (another run's state)", self.path)
            self.path.unlink()
            return
        self._loaded = state
        self.resumed_from = dict(state["position"])
        self.prior_seconds = float(state.get("elapsed_seconds", 0.0))

    @property
    def elapsed_seconds(self) -> float:
        """Training time of this run so far, the interrupted runs' included."""
        return self.prior_seconds + time.time() - self._t0

    def restore(self, stage: int, *, modules: dict, optimizers: dict | None = None, schedulers: dict | None = None,
                generators: dict | None = None) -> tuple[int, dict] | None:
        """Where stage ``stage`` starts, with everything restored from the state when the state lies in it.

        Parameters
        ----------
        stage : int
            The stage about to start (0, 1, ... in the order the loop runs them).
        modules, optimizers, schedulers : dict of name -> object with ``load_state_dict``
            Built as a fresh run builds them; their states are loaded in place.
        generators : dict of name -> torch.Generator or numpy.random.Generator
            The run's own generators (torch's global, Python's and numpy's are always restored).

        Returns
        -------
        (int, dict) or None
            ``(first epoch to run, extra)``: ``(0, {})`` for a fresh stage, or the epoch after the state's and the
            ``extra`` saved with it; None when the state lies in a later stage (this one finished before it was
            written: skip it).
        """
        if self._loaded is None:
            return 0, {}
        at = self._loaded["position"]
        if at["stage"] > stage:
            return None
        if at["stage"] < stage:  # cannot happen when every stage calls restore in order; start it fresh
            self._loaded = None
            return 0, {}
        state, self._loaded = self._loaded, None
        for name, obj in modules.items():
            obj.load_state_dict(state["modules"][name])
        for name, obj in (optimizers or {}).items():
            obj.load_state_dict(state["optimizers"][name])
        for name, obj in (schedulers or {}).items():
            obj.load_state_dict(state["schedulers"][name])
        _set_rng_state(state["rng"], generators or {})
        log.info("resumed from %s: stage %d, epoch %d done", self.path, at["stage"], at["epoch"])
        return int(at["epoch"]), state.get("extra", {})

    def save(self, stage: int, epoch: int, *, modules: dict, optimizers: dict | None = None, schedulers: dict | None = None,
             generators: dict | None = None, extra: dict | None = None) -> Path:
        """Write the state after epoch ``epoch`` (1-based, within stage ``stage``) atomically; returns the path.

        Parameters
        ----------
        stage, epoch : int
        modules, optimizers, schedulers : dict of name -> object with ``state_dict``
        generators : dict of name -> torch.Generator or numpy.random.Generator
        extra : dict, optional
            Whatever else the loop needs to go on (tensors, state dicts, numbers, JSON-ready lists and dicts).
        """
        done = epoch + sum((self.stage_epochs or [])[:stage])
        total = sum(self.stage_epochs or []) or 0
        state = {
            "format": STATE_FORMAT, "key": self.key, "settings": self.settings,
            "position": {"stage": int(stage), "epoch": int(epoch)},
            "progress": min(1.0, done / total) if total else 0.0,
            "elapsed_seconds": self.elapsed_seconds,
            "modules": {n: {k: v.detach().cpu().clone() for k, v in m.state_dict().items()} for n, m in modules.items()},
            "optimizers": {n: o.state_dict() for n, o in (optimizers or {}).items()},
            "schedulers": {n: s.state_dict() for n, s in (schedulers or {}).items()},
            "rng": _rng_state(generators or {}),
            "extra": extra or {},
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        if self.on_save is not None:
            self.on_save(dict(state["position"]))
        return self.path

    def delete(self) -> None:
        """Remove the state (the checkpoint it led to is written)."""
        self.path.unlink(missing_ok=True)
