"""Background jobs (ui.jobs): a run outlives the script run that started it, reports progress, errors and cancels."""

import pytest
from streamlit.testing.v1 import AppTest

from ui.jobs import Job, JobCancelled


def _page():
    import threading

    import streamlit as st

    from core.errors import CoreError
    from ui.jobs import job_panel, jobs_sidebar, start_job

    gate = st.session_state.setdefault("gate", threading.Event())
    mode = st.radio("mode", ["ok", "bad input", "bug"], key="mode")
    if st.button("go", key="go"):
        def work(job, mode=mode):
            job.progress(0.5, "half way")
            if not gate.wait(60):
                raise TimeoutError("gate never opened")
            job.progress(0.9, "almost")
            if mode == "bad input":
                raise CoreError("the clip is silent")
            if mode == "bug":
                raise ZeroDivisionError("division by zero")
            return 42

        start_job("t", "Test run", "Test", work)
    jobs_sidebar()
    job_panel("t", lambda r: st.session_state.__setitem__("answer", r))
    st.write(f"answer: {st.session_state.get('answer')}")


def _start(mode="ok"):
    at = AppTest.from_function(_page, default_timeout=30).run()
    at.radio(key="mode").set_value(mode).run()
    at.button(key="go").click().run()
    return at


def _finish(at):
    at.session_state["gate"].set()
    at.session_state["job:t"].thread.join(30)
    return at.run()


def test_a_job_outlives_the_script_run_that_started_it_and_its_result_arrives_later():
    at = _start()
    job = at.session_state["job:t"]
    assert job.running and job.fraction == 0.5  # the script has returned; the work goes on
    assert any("Test run: half way" in p.text for p in at.get("progress"))
    assert any("Running: Test run on the Test page" in c.value for c in at.sidebar.caption)
    at.run()  # any other run of the page (e.g. coming back to it) finds the job still there
    assert at.session_state["job:t"].running and "answer: None" in at.markdown[-1].value
    _finish(at)
    assert not at.exception and "answer: 42" in at.markdown[-1].value
    assert "job:t" not in at.session_state and not at.sidebar.caption  # collected once, then gone


@pytest.mark.parametrize("mode, message", [("bad input", "Test run not run: the clip is silent"),
                                           ("bug", "Test run failed after 0 s: ZeroDivisionError: division by zero")])
def test_a_failed_job_is_reported_in_words_not_lost(mode, message):
    at = _finish(_start(mode))
    assert not at.exception and [e.value for e in at.error] == [message]
    assert "answer: None" in at.markdown[-1].value


def test_cancel_stops_the_work_at_its_next_progress_report():
    job = Job(label="Sweep", page="Sweep")
    job.progress(0.25, "a")
    assert job.fraction == 0.25 and job.text == "a"
    job.cancel_requested = True
    with pytest.raises(JobCancelled):
        job.progress(0.5, "b")
    assert job.fraction == 0.25


def test_a_cancelled_job_says_so():
    at = _start()
    at.session_state["job:t"].cancel_requested = True  # what the Cancel button sets
    _finish(at)
    assert not at.exception and any("Test run cancelled after" in i.value for i in at.info)
    assert "answer: None" in at.markdown[-1].value
