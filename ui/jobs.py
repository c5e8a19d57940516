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
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from core.errors import CoreError

__all__ = ["BACKGROUND", "Job", "JobCancelled", "start_job", "job_panel", "jobs_sidebar", "running_job"]

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
    """

    label: str
    page: str
    fraction: float = 0.0
    text: str = "starting…"
    result: Any = None
    error: BaseException | None = None
    cancel_requested: bool = False
    started: float = field(default_factory=time.time)
    finished: float | None = None
    thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.finished is None

    def progress(self, fraction: float, text: str = "") -> None:
        """The callback handed to the work: record progress, or stop it with :class:`JobCancelled`."""
        if self.cancel_requested:
            raise JobCancelled()
        self.fraction = min(1.0, max(0.0, float(fraction)))
        self.text = text or self.text

    def _run(self, fn: Callable[["Job"], Any]) -> None:
        try:
            self.result = fn(self)
        except BaseException as exc:  # reported on the page, never lost silently
            self.error = exc
        finally:
            self.finished = time.time()


def start_job(key: str, label: str, page: str, fn: Callable[[Job], Any]) -> Job:
    """Start ``fn(job)`` in a background thread and keep the job in this session under ``key``.

    Parameters
    ----------
    key : str
        One job per key and session; starting while one runs cancels the old one.
    label, page : str
        Shown in the progress bar and the sidebar.
    fn : callable
        ``fn(job) -> result``; calls ``job.progress(fraction, text)`` as it goes and
        never calls Streamlit.

    Returns
    -------
    Job
    """
    old = st.session_state.get(_PREFIX + key)
    if old is not None and old.running:
        old.cancel_requested = True
    job = Job(label=label, page=page)
    job.thread = threading.Thread(target=job._run, args=(fn,), name=f"birdshield-{key}", daemon=True)
    st.session_state[_PREFIX + key] = job
    job.thread.start()
    return job


def running_job(key: str) -> Job | None:
    """The job under ``key`` if it is still running."""
    job = st.session_state.get(_PREFIX + key)
    return job if job is not None and job.running else None


def _elapsed(job: Job) -> str:
    s = int((job.finished or time.time()) - job.started)
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


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
