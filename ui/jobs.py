"""Long runs that survive leaving the page: a background thread per run, its progress shown wherever the user is.

Streamlit stops a page's script when the user opens another page, so a sweep
computed inside the script was lost with everything it had done. A page now
starts the work with :func:`start_job` (a plain thread that never calls
Streamlit; it reports through a ``progress(fraction, text)`` callback) and calls
:func:`job_panel` on every run: while the job runs, a fragment refreshes its
progress bar every second and offers Cancel; when it has finished, the page's
``on_done`` stores the result in the session, the same way a run inside the
script did. The sidebar of every page says which runs are under way
(:func:`jobs_sidebar`).

Inputs that need Streamlit (cached clips, loaded models) are prepared in the
script before the job starts; the job gets plain objects.

Progress is counted in units of work (attack steps x rows, clips, segments):
:meth:`Job.report` shows "done/total" and the time left, extrapolated from the
rate so far (:func:`eta_text`). What a unit cost on this machine is remembered
(:func:`record_unit_cost`, kept in ``unit_costs.json`` beside the caches), so a
page can state how long a bigger run will take before it starts
(:func:`estimate_seconds`, :func:`duration_text`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import streamlit as st

from core.errors import CoreError

__all__ = [
    "BACKGROUND", "Job", "JobCancelled", "start_job", "job_panel", "jobs_sidebar", "running_job",
    "choose_threads", "eta_text", "duration_text", "unit_rate", "record_unit_cost", "unit_cost", "estimate_seconds", "counting_steps", "Plan",
]

_PREFIX = "job:"
#: What the pages say under a button that starts a background job.
BACKGROUND = "It runs in the background: you can open other pages meanwhile and come back to its result."


class JobCancelled(Exception):
    """Raised inside a job's ``progress`` callback once the user asked to cancel."""


@dataclass
class Job:
    """One background run and what it has reported so far.

    Attributes
    ----------
    label : str
        What runs, for the user ("Sweep", "Comparison").
    page : str
        Title of the page that started it (the sidebar names it).
    fraction : float in [0, 1]
    text : str
        The last progress message.
    result : Any
        ``fn``'s return value once it has finished.
    error : BaseException or None
    cancel_requested : bool
    started, finished : float [seconds since the epoch]; ``finished`` is None while running
    done, total : float
        Units of work done and to do, as last reported by :meth:`report` (0 and 0 until then).
    unit_s : float or None [seconds]
        Expected cost of one unit, for the time left before the first unit has finished.
    clock : callable
        ``clock() -> seconds``; :func:`time.time` (a fake clock in tests).
    """

    label: str
    page: str
    fraction: float = 0.0
    text: str = "starting…"
    result: Any = None
    error: BaseException | None = None
    cancel_requested: bool = False
    started: float | None = None
    finished: float | None = None
    thread: threading.Thread | None = None
    done: float = 0.0
    total: float = 0.0
    unit_s: float | None = None
    clock: Callable[[], float] = time.time
    _units_t0: float | None = field(default=None, repr=False)
    _units_done0: float = field(default=0.0, repr=False)
    _first_done: tuple[float, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = self.clock()

    @property
    def running(self) -> bool:
        return self.finished is None

    def progress(self, fraction: float, text: str = "") -> None:
        """The callback handed to the work: record progress, or stop it with :class:`JobCancelled`."""
        if self.cancel_requested:
            raise JobCancelled()
        self.fraction = min(1.0, max(0.0, float(fraction)))
        self.text = text or self.text

    def report(self, done: float, total: float, what: str = "") -> None:
        """Record ``done`` of ``total`` units: the bar's fraction and a text "what: done/total, about N s left".

        The time left is the rate times the units left (:func:`eta_text`). The rate is
        measured from the first report with a unit done, so start-up work (a clean pass,
        a first call's warm-up) does not inflate it, as soon as later units have finished
        (:func:`unit_rate`); before any unit has finished it is ``unit_s`` when known.

        Parameters
        ----------
        done, total : float >= 0
            Units of work done so far and in all (``total`` may grow, e.g. per stage).
        what : str
            What the units are ("PGD steps", "clips").

        Raises
        ------
        JobCancelled
            Once the user asked to cancel.
        """
        if self.cancel_requested:
            raise JobCancelled()
        now = self.clock()
        if self._units_t0 is None:
            self._units_t0, self._units_done0 = now, float(done)
        elif self._first_done is None and done > self._units_done0:
            self._first_done = (now, float(done))
        self.done, self.total = float(done), float(total)
        rate = unit_rate((self._units_t0, self._units_done0), self._first_done, now, self.done)
        rate = self.unit_s if rate is None else rate
        left = None if rate is None else rate * max(0.0, self.total - self.done)
        self.fraction = 0.0 if total <= 0 else min(1.0, max(0.0, self.done / self.total))
        self.text = (f"{what}: " if what else "") + eta_text(done, total, left)

    def _run(self, fn: Callable[["Job"], Any]) -> None:
        try:
            self.result = fn(self)
        except BaseException as exc:  # reported on the page, never lost silently
            self.error = exc
        finally:
            with _RUNNING_LOCK:
                _RUNNING[0] -= 1
            self.finished = self.clock()


def start_job(key: str, label: str, page: str, fn: Callable[[Job], Any], *, unit_s: float | None = None) -> Job:
    """Start ``fn(job)`` in a background thread and keep the job in this session under ``key``.

    Parameters
    ----------
    key : str
        One job per key and session; starting while one runs cancels the old one.
    label, page : str
        Shown in the progress bar and the sidebar.
    fn : callable
        ``fn(job) -> result``; calls ``job.progress(fraction, text)`` or ``job.report(done, total, what)``
        as it goes and never calls Streamlit.
    unit_s : float, optional [seconds]
        Expected cost of one unit of ``job.report`` (the time left before the first unit has finished).

    Returns
    -------
    Job
    """
    old = st.session_state.get(_PREFIX + key)
    if old is not None and old.running:
        old.cancel_requested = True
    job = Job(label=label, page=page, unit_s=unit_s)
    with _RUNNING_LOCK:
        _RUNNING[0] += 1  # counted until the job's thread ends (Job._run)
    try:
        choose_threads(force=True)
    except CoreError:
        pass  # a bad BIRDSHIELD_THREADS: the CLI says so; here the job runs with torch's current threads
    job.thread = threading.Thread(target=job._run, args=(fn,), name=f"birdshield-{key}", daemon=True)
    st.session_state[_PREFIX + key] = job
    job.thread.start()
    return job


_RUNNING_LOCK = threading.Lock()
_RUNNING = [0]  # background jobs running in this server process
_THREADS_CHOSEN = [float("-inf")]


def choose_threads(*, force: bool = False, every_s: float = 30.0) -> int:
    """Set torch's threads for the work about to start, and return them.

    One thread while more than one background job runs in this server (each would
    otherwise spread over both cores); else the machine's policy now
    (:func:`core.io.device.apply_thread_policy`: one thread per core that other programs
    leave free), capped at half the usable cores unless ``BIRDSHIELD_THREADS`` says
    otherwise. On this 2-core machine two OpenMP threads next to other busy programs
    made the Sweep page's default 5-10x slower than one thread (8-21 s against 1.3-2.4 s
    per model at load 3.5-5), and a 120-step sweep of 8 clips 4-7x slower even at load
    1.5-3 (0.33-0.65 s against 0.08-0.10 s per step of one row), while on an idle
    machine two threads saved about a third. Re-measured at most every ``every_s``
    seconds unless ``force`` (a job starting); a page's own work never changes what
    running jobs chose.

    Returns
    -------
    int
        ``torch.get_num_threads()`` afterwards.

    Raises
    ------
    ParameterError
        A bad ``BIRDSHIELD_THREADS`` (:data:`core.io.device.THREADS_ENV`).
    """
    import torch

    now = time.monotonic()
    with _RUNNING_LOCK:
        running = _RUNNING[0]
    if force or (running == 0 and now - _THREADS_CHOSEN[0] >= every_s):
        _THREADS_CHOSEN[0] = now
        from core.io.device import THREADS_ENV, apply_thread_policy, usable_cpus

        if running > 1:
            torch.set_num_threads(1)
        else:
            policy = apply_thread_policy()
            if not os.environ.get(THREADS_ENV, "").strip():
                # at most half the cores: the policy's 0.1 s look at the machine misses load that comes and goes, and
                # a wrong guess costs far more than it saves (see above)
                torch.set_num_threads(max(1, min(policy.intra_op, usable_cpus() // 2)))
    return torch.get_num_threads()


def running_job(key: str) -> Job | None:
    """The job under ``key`` if it is still running."""
    job = st.session_state.get(_PREFIX + key)
    return job if job is not None and job.running else None


def _elapsed(job: Job) -> str:
    s = int((job.finished or job.clock()) - job.started)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


# -- time left and estimates ---------------------------------------------------------------------


def unit_rate(start: tuple[float, float], first_done: tuple[float, float] | None, now: float, done: float) -> float | None:
    """Seconds per unit of work so far.

    Parameters
    ----------
    start : (time [s], units done)
        When the work (or stage) began.
    first_done : (time [s], units done) or None
        The first report after some unit had finished.
    now : float [s]
    done : float
        Units done now.

    Returns
    -------
    float or None
        From ``first_done`` to now when units have finished since (what the first unit
        cost, warm-up included, does not count); else from ``start``; None before any unit.
    """
    if first_done is not None and done > first_done[1] and now > first_done[0]:
        return (now - first_done[0]) / (done - first_done[1])
    if done > start[1]:
        return (now - start[0]) / (done - start[1])
    return None


def duration_text(seconds: float) -> str:
    """A duration as people say it: "about 40 s", "about 3 min" (rounded; never "0 s").

    Parameters
    ----------
    seconds : float >= 0 [seconds]

    Returns
    -------
    str
    """
    s = max(0.0, float(seconds))
    if s < 90:
        return f"about {max(1, round(s / 5) * 5 if s >= 10 else round(s))} s"
    return f"about {round(s / 60)} min" if s < 5400 else f"about {s / 3600:.1f} h"


def eta_text(done: float, total: float, left_s: float | None) -> str:
    """``"done/total, about N s left"``; without an estimate only ``"done/total"``.

    Parameters
    ----------
    done, total : float >= 0
        Units of work (shown as integers when they are whole numbers).
    left_s : float or None [seconds]
        Time left; None when not yet known.

    Returns
    -------
    str

    Examples
    --------
    >>> eta_text(12, 60, 40.2)
    '12/60, about 40 s left'
    """
    fmt = lambda v: f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"  # noqa: E731
    text = f"{fmt(done)}/{fmt(total)}"
    if done >= total > 0:
        return text + ", finishing"
    if left_s is None:
        return text
    return f"{text}, {duration_text(left_s)} left"


_COSTS_LOCK = threading.Lock()
_COSTS: dict[str, float] = {}
_COSTS_LOADED: list[bool] = [False]


def _costs_path() -> Path:
    from core.studies.embeddings import default_cache_dir

    return default_cache_dir().parent / "unit_costs.json"


def _load_costs() -> None:
    if _COSTS_LOADED[0]:
        return
    _COSTS_LOADED[0] = True
    try:
        stored = json.loads(_costs_path().read_text())
        _COSTS.update({str(k): float(v) for k, v in stored.items() if float(v) > 0})
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # no measurements on this machine yet


def record_unit_cost(kind: str, seconds: float, units: float) -> None:
    """Remember what one unit of ``kind`` cost on this machine (the latest run counts; kept on disk).

    Parameters
    ----------
    kind : str
        What was measured, e.g. ``"sweep:protopnet"`` (seconds per PGD step of one row).
    seconds : float > 0 [seconds]
        Wall time of the work.
    units : float > 0
        Units done in that time.
    """
    if not (seconds > 0 and units > 0):
        return
    with _COSTS_LOCK:
        _load_costs()
        _COSTS[kind] = float(seconds) / float(units)
        try:
            path = _costs_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(_COSTS, indent=1, sort_keys=True))
            tmp.replace(path)
        except OSError:
            pass  # a read-only cache only loses the memory across restarts


def unit_cost(kind: str, default: float | None = None) -> float | None:
    """Seconds per unit of ``kind`` last measured on this machine, else ``default``."""
    with _COSTS_LOCK:
        _load_costs()
        return _COSTS.get(kind, default)


def estimate_seconds(parts: dict[str, float], defaults: dict[str, float] | None = None) -> tuple[float, bool]:
    """Time a run will take: units of each kind times their measured cost.

    Parameters
    ----------
    parts : dict of kind -> units
    defaults : dict of kind -> seconds per unit, optional
        Used for kinds not yet measured here (a first guess from an idle 2-core machine).

    Returns
    -------
    (seconds, measured) : float [seconds], bool
        ``measured`` is False when some part rests on a default.
    """
    total, measured = 0.0, True
    for kind, units in parts.items():
        cost = unit_cost(kind)
        if cost is None:
            measured = False
            cost = (defaults or {}).get(kind, 0.0)
        total += cost * units
    return total, measured


class Plan:
    """Work in stages of different cost (decode, embed, UMAP): one bar, "done/total" per stage, time left for all.

    The time left is the current stage's rate so far times its units left, plus every
    later stage's units times its expected cost per unit (measured on this machine
    before, :func:`unit_cost`, else the given first guess). A finished stage records
    what its units cost (:func:`record_unit_cost`), so the next estimate is this
    machine's.

    Parameters
    ----------
    job : Job
    stages : list of (kind, units, first_guess_s)
        In order; ``kind`` names the unit cost kept on disk (e.g. ``"emb:decode"``),
        ``units`` > 0, ``first_guess_s`` [seconds per unit] or None.
    transient : tuple of str
        Kinds whose cost is not remembered (a one-off such as compiling UMAP's code):
        their first guess is always used.
    fair : callable, optional
        ``fair() -> bool``: whether this process does nothing else heavy now (e.g. UMAP's
        code compiled in another thread). A stage's cost is remembered only when it was
        fair at the stage's start and end, so contention does not inflate later estimates.
    """

    def __init__(self, job: Job, stages: list[tuple[str, float, float | None]], *, transient: tuple[str, ...] = (),
                 fair: Callable[[], bool] | None = None) -> None:
        self.job = job
        self.fair = fair or (lambda: True)
        self.unfair: set[str] = set()
        self.order = [k for k, _, _ in stages]
        self.units = {k: float(u) for k, u, _ in stages}
        self.transient = set(transient)
        self.expected = {k: g if k in self.transient else unit_cost(k, g) for k, _, g in stages}
        self.done = dict.fromkeys(self.order, 0.0)
        self.began: dict[str, float] = {}
        self.first_done: dict[str, tuple[float, float]] = {}
        self.recorded: set[str] = set()

    def skip(self, kind: str) -> None:
        """Stage ``kind`` needed no work (e.g. found in a cache): counted as done, its cost not recorded."""
        self.units[kind] = self.done[kind] = 0.0

    def seconds_left(self, kind: str) -> float | None:
        """Time left [s] while ``kind`` runs; None when a stage's cost is not known at all."""
        now = self.job.clock()
        done, units = self.done[kind], self.units[kind]
        rate = unit_rate((self.began[kind], 0.0), self.first_done.get(kind), now, done)
        rate = self.expected[kind] if rate is None else rate
        later = self.order[self.order.index(kind) + 1:]
        if rate is None or any(self.expected[k] is None for k in later):
            return None
        return rate * max(0.0, units - done) + sum(self.units[k] * self.expected[k] for k in later)

    def update(self, kind: str, done: float, what: str, *, units: float | None = None, shown: tuple | None = None) -> None:
        """``done`` units of stage ``kind`` finished; shows "what: done/units, about N s left".

        Call it with ``done=0`` when the stage starts (its rate counts from then);
        ``units`` corrects the stage's size once it is known exactly; ``shown`` =
        ``(done, total)`` counts something plainer for the user (recordings rather than units).

        Raises
        ------
        JobCancelled
            Once the user asked to cancel.
        KeyError
            ``kind`` is not a stage of this plan.
        """
        if self.job.cancel_requested:
            raise JobCancelled()
        now = self.job.clock()
        if kind not in self.began:
            self.began[kind] = now
            if not self.fair():
                self.unfair.add(kind)
        if kind not in self.first_done and done > 0 and now > self.began[kind]:
            self.first_done[kind] = (now, float(done))
        if units is not None:
            self.units[kind] = float(units)
        self.done[kind] = float(done)
        weight = {k: self.expected[k] if self.expected[k] is not None else 1.0 for k in self.order}
        total = sum(self.units[k] * weight[k] for k in self.order)
        self.job.fraction = min(1.0, sum(min(self.done[k], self.units[k]) * weight[k] for k in self.order) / total) if total else 0.0
        shown_done, shown_total = shown if shown is not None else (done, self.units[kind])
        self.job.text = f"{what}: " + eta_text(shown_done, shown_total, self.seconds_left(kind))
        if done >= self.units[kind] > 0 and kind not in self.recorded | self.transient | self.unfair and self.fair():
            self.recorded.add(kind)
            rate = unit_rate((self.began[kind], 0.0), self.first_done.get(kind), now, done)
            if rate is not None:
                record_unit_cost(kind, rate * self.units[kind], self.units[kind])


def counting_steps(attack, on_rows: Callable[[int], None]):
    """The attack with its objective wrapped so that every gradient step reports its rows.

    ``on_rows(n)`` is called after the loss of each step of a batch of ``n`` rows
    (an eps x clip row of a sweep), so progress can move per step instead of per
    batch. The attack itself is unchanged (a shallow copy is returned).

    Parameters
    ----------
    attack : core.attacks.base.Attack
    on_rows : callable
        May raise (e.g. :class:`JobCancelled`) to stop the attack.

    Returns
    -------
    Attack
    """
    import copy

    class _Counting:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def loss(self, model, x, state):
            out = self._inner.loss(model, x, state)
            on_rows(int(x.shape[0]))
            return out

    counted = copy.copy(attack)
    counted.objective = _Counting(attack.objective)
    return counted


def job_panel(key: str, on_done: Callable[[Any], None], *, refresh_s: float = 1.0) -> bool:
    """Show the job under ``key``: progress while it runs, its result or error once it has finished.

    Call on every run of the page, before the page reads the result from the session.

    Parameters
    ----------
    key : str
    on_done : callable
        ``on_done(result)``, called once, in the script, when the job has finished
        without error (stores the result in ``st.session_state``).
    refresh_s : float [seconds]
        How often the progress bar refreshes.

    Returns
    -------
    bool
        True while the job runs.
    """
    job = st.session_state.get(_PREFIX + key)
    if job is None:
        return False
    if not job.running:
        del st.session_state[_PREFIX + key]
        if isinstance(job.error, JobCancelled):
            st.info(f"{job.label} cancelled after {_elapsed(job)}.")
        elif isinstance(job.error, CoreError):
            st.error(f"{job.label} not run: {job.error}")
        elif job.error is not None:
            st.error(f"{job.label} failed after {_elapsed(job)}: {type(job.error).__name__}: {job.error}")
        else:
            on_done(job.result)
        return False

    @st.fragment(run_every=refresh_s)
    def _progress() -> None:
        if not job.running:
            st.rerun(scope="app")  # the whole page collects the result
        st.progress(job.fraction, text=f"{job.label}: {job.text} ({_elapsed(job)})")
        if st.button("Cancel", key=f"{key}_cancel"):
            job.cancel_requested = True
            st.caption("Cancelling at the next step…")
        st.caption("This runs in the background: you can open other pages and come back; the result waits here.")

    _progress()
    return True


def jobs_sidebar() -> None:
    """One line in the sidebar per run under way in this session (so a run left behind on another page is seen)."""
    for name, job in list(st.session_state.items()):
        if str(name).startswith(_PREFIX) and job.running:
            st.sidebar.caption(f"Running: {job.label} on the {job.page} page: {job.fraction:.0%} ({_elapsed(job)})")
