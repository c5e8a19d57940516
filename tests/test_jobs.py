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


# -- done/total and time left (ui.jobs.report, Plan, eta_text), on a fake clock ------------------------------------


class FakeClock:
    """``clock()`` returns ``now``, moved by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fresh_costs(monkeypatch, tmp_path):
    """An empty store of unit costs, kept in a temporary cache."""
    import ui.jobs

    monkeypatch.setenv("BIRDSHIELD_CACHE_DIR", str(tmp_path / "cache" / "embeddings"))
    monkeypatch.setattr(ui.jobs, "_COSTS", {})
    monkeypatch.setattr(ui.jobs, "_COSTS_LOADED", [False])
    return tmp_path / "cache" / "unit_costs.json"


def test_eta_text_and_durations_read_as_people_say_them():
    from ui.jobs import duration_text, eta_text

    assert eta_text(12, 60, 40.2) == "12/60, about 40 s left"
    assert eta_text(0, 60, None) == "0/60"  # nothing measured: no guess
    assert eta_text(60, 60, 0.0) == "60/60, finishing"
    assert eta_text(2.5, 10, 3.0) == "2.5/10, about 3 s left"
    assert [duration_text(s) for s in (0.2, 7.4, 42, 89, 150, 7200)] == [
        "about 1 s", "about 7 s", "about 40 s", "about 90 s", "about 2 min", "about 2.0 h"]


def test_report_extrapolates_the_time_left_from_the_rate_since_the_first_unit():
    clock = FakeClock()
    job = Job(label="Sweep", page="Sweep", clock=clock)
    job.report(0, 40, "PGD steps")
    assert job.fraction == 0 and job.text == "PGD steps: 0/40"  # no rate and no expected cost yet
    clock.now += 10
    job.report(8, 40, "PGD steps")  # 0.8 units per second: 32 units left take 40 s
    assert job.fraction == pytest.approx(0.2) and job.text == "PGD steps: 8/40, about 40 s left"
    clock.now += 30
    job.report(32, 40, "PGD steps")  # 0.8 units/s still: 10 s left
    assert job.text == "PGD steps: 32/40, about 10 s left" and job.fraction == pytest.approx(0.8)
    clock.now += 100  # elapsed on the page is the job's, from the same clock
    from ui.jobs import _elapsed

    assert _elapsed(job) == "2 min 20 s"


def test_report_uses_the_expected_cost_before_the_first_unit_and_stops_on_cancel():
    clock = FakeClock()
    job = Job(label="Map", page="Embeddings", clock=clock, unit_s=0.5)
    job.report(0, 30, "clips")
    assert job.text == "clips: 0/30, about 15 s left"
    job.cancel_requested = True
    with pytest.raises(JobCancelled):
        job.report(1, 30, "clips")


def test_plan_adds_later_stages_at_their_expected_cost_and_remembers_what_a_unit_cost(fresh_costs):
    from ui.jobs import Plan, unit_cost

    clock = FakeClock()
    job = Job(label="Map", page="Embeddings", clock=clock)
    plan = Plan(job, [("emb:decode", 10, 0.5), ("emb:embed:m", 20, 0.25), ("umap", 1, 15.0)], transient=("umap",))
    plan.update("emb:decode", 0, "Decoding")
    # before any unit: 10 x 0.5 + 20 x 0.25 + 15 = 25 s
    assert job.text == "Decoding: 0/10, about 25 s left"
    clock.now += 2
    plan.update("emb:decode", 5, "Decoding")  # measured 0.4 s per recording: 2 s left here, then 5 + 15
    assert job.text == "Decoding: 5/10, about 20 s left"
    assert job.fraction == pytest.approx(2.5 / 25)  # weighted by the expected costs
    clock.now += 2
    plan.update("emb:decode", 10, "Decoding")
    assert unit_cost("emb:decode") == pytest.approx(0.4) and fresh_costs.is_file()  # measured here, kept on disk
    plan.skip("emb:embed:m")  # found in the cache: counted as done, its cost not recorded
    assert unit_cost("emb:embed:m") is None
    plan.update("umap", 0, "UMAP")
    clock.now += 3
    plan.update("umap", 1, "UMAP")
    assert unit_cost("umap") is None and job.fraction == pytest.approx(1.0)  # a one-off is never remembered
    # a later plan starts from what this machine measured, not from the first guess
    again = Plan(Job(label="Map", page="Embeddings", clock=clock), [("emb:decode", 10, 0.5)])
    assert again.expected["emb:decode"] == pytest.approx(0.4)


def test_estimates_come_from_measured_costs_else_from_first_guesses(fresh_costs):
    from ui.jobs import estimate_seconds, record_unit_cost

    assert estimate_seconds({"sweep:a": 100, "sweep:b": 50}, {"sweep:a": 0.3, "sweep:b": 0.6}) == (pytest.approx(60.0), False)
    record_unit_cost("sweep:a", 12.0, 40)  # 0.3 s per unit measured
    record_unit_cost("sweep:b", 4.0, 40)
    assert estimate_seconds({"sweep:a": 100, "sweep:b": 50}, {"sweep:a": 9.0, "sweep:b": 9.0}) == (pytest.approx(35.0), True)
    record_unit_cost("sweep:a", 0.0, 40)  # nothing measured: ignored
    assert estimate_seconds({"sweep:a": 10})[0] == pytest.approx(3.0)


def test_counting_steps_reports_every_gradient_step_of_a_sweep():
    import torch

    from core.attacks.sweep import attack_from_options, run_sweep
    from core.models.registry import list_checkpoints, load_checkpoint
    from ui.jobs import counting_steps

    if "protopnet" not in list_checkpoints():
        pytest.skip("shipped checkpoints missing")
    model = load_checkpoint("protopnet")
    attack = attack_from_options(model, steps=3)
    seen = []
    x = torch.rand(2, model.config.window_samples, generator=torch.Generator().manual_seed(0)) * 0.2 - 0.1
    res = run_sweep(counting_steps(attack, seen.append), model, x, epsilons=[0.0, 1e-3, 3e-3])
    assert sum(seen) == 2 * 2 * 3  # clips x budgets > 0 x steps; the clean rows take no step
    assert res.success.shape == (3, 2) and attack.objective is not None  # the original attack is untouched
    assert type(attack.objective).__name__ != "_Counting"


def test_the_rate_leaves_out_what_the_first_unit_cost(fresh_costs):
    """Start-up work (a clean pass, a first call's warm-up) does not scale with a run: it must not inflate estimates."""
    from ui.jobs import Plan, unit_cost, unit_rate

    assert unit_rate((0.0, 0.0), None, 10.0, 4.0) == pytest.approx(2.5)  # only one report with units: from the start
    assert unit_rate((0.0, 0.0), (10.0, 4.0), 12.0, 8.0) == pytest.approx(0.5)  # later units: from the first done
    assert unit_rate((0.0, 0.0), None, 3.0, 0.0) is None
    clock = FakeClock(0.0)
    job = Job(label="Sweep", page="Sweep", clock=clock)
    job.report(0, 40, "steps")
    clock.now = 10.0
    job.report(4, 40, "steps")  # 10 s for the first 4: warm-up included
    clock.now = 12.0
    job.report(8, 40, "steps")  # then 0.5 s per step: 32 left take 16 s
    assert job.text == "steps: 8/40, about 15 s left"
    plan = Plan(Job(label="Map", page="Embeddings", clock=clock), [("emb:embed:m", 24, 1.0)])
    plan.update("emb:embed:m", 0, "Embedding")
    clock.now = 20.0
    plan.update("emb:embed:m", 4, "Embedding")  # 8 s for the first batch (the model's first call)
    clock.now = 24.0
    plan.update("emb:embed:m", 24, "Embedding")  # 0.2 s per clip after it
    assert unit_cost("emb:embed:m") == pytest.approx(0.2)


def test_threads_one_per_job_when_jobs_share_the_server_and_the_machines_choice_otherwise(monkeypatch):
    import torch

    import ui.jobs
    from ui.jobs import choose_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("BIRDSHIELD_THREADS", "2")  # the machine's policy, fixed for the test
        monkeypatch.setattr(ui.jobs, "_RUNNING", [0])
        assert choose_threads(force=True) == 2
        monkeypatch.setattr(ui.jobs, "_RUNNING", [2])  # two background runs at once: one thread each
        assert choose_threads(force=True) == 1
        monkeypatch.setattr(ui.jobs, "_RUNNING", [1])
        monkeypatch.setattr(ui.jobs, "_THREADS_CHOSEN", [float("-inf")])
        assert choose_threads() == 1  # a page's own call leaves a running job's choice alone
        monkeypatch.setenv("BIRDSHIELD_THREADS", "two")
        from core.errors import ParameterError

        with pytest.raises(ParameterError, match="BIRDSHIELD_THREADS"):
            choose_threads(force=True)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("cpus, busy, expected", [(2, 0.0, 1), (8, 0.0, 4), (8, 6.0, 2), (1, 0.0, 1)])
def test_threads_at_most_half_the_cores_without_an_override(monkeypatch, cpus, busy, expected):
    """A 0.1 s look at the machine misses load that comes and goes; two threads next to it cost 4-10x (ui.jobs)."""
    import torch

    import core.io.device
    import ui.jobs
    from ui.jobs import choose_threads

    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("BIRDSHIELD_THREADS", raising=False)
        monkeypatch.setattr(ui.jobs, "_RUNNING", [1])
        monkeypatch.setattr(core.io.device, "usable_cpus", lambda: cpus)
        monkeypatch.setattr(core.io.device, "busy_cpus", lambda interval_s=0.1: busy)
        assert choose_threads(force=True) == expected
    finally:
        torch.set_num_threads(before)


def test_costs_measured_while_the_process_is_busy_elsewhere_are_not_kept(fresh_costs):
    from ui.jobs import Plan, unit_cost

    clock, busy = FakeClock(0.0), [True]
    plan = Plan(Job(label="Map", page="Embeddings", clock=clock), [("emb:decode", 4, 0.1), ("emb:embed:m", 4, 0.1)],
                fair=lambda: not busy[0])
    plan.update("emb:decode", 0, "Decoding")  # UMAP compiling on the other core: this stage's rate is inflated
    busy[0] = False
    clock.now = 4.0
    plan.update("emb:decode", 4, "Decoding")
    assert unit_cost("emb:decode") is None
    plan.update("emb:embed:m", 0, "Embedding")  # quiet from start to end: kept
    clock.now = 5.0
    plan.update("emb:embed:m", 4, "Embedding")
    assert unit_cost("emb:embed:m") == pytest.approx(0.25)
