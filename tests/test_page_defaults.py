"""Pages that finish (issue 25): each page's default run is as small as the page says, its estimate is stated,
the bigger run is one click away, and the Embeddings page names the window length its model really uses.

Not timed (bench/pages.py measures the times in a browser); these check what the pages say against what they do.
"""

import re

import pytest
from streamlit.testing.v1 import AppTest

from core.attacks.sweep import parse_float_list
from core.models.registry import list_checkpoints, load_checkpoint
from tests.conftest import ROOT

pytestmark = pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing")
TIMEOUT = 300


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    """Measured unit costs and caches of a test stay in its own temporary directory."""
    import ui.jobs

    monkeypatch.setenv("BIRDSHIELD_CACHE_DIR", str(tmp_path / "cache" / "embeddings"))
    monkeypatch.setattr(ui.jobs, "_COSTS", {})
    monkeypatch.setattr(ui.jobs, "_COSTS_LOADED", [False])


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages" / name), default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def captions(at) -> list[str]:
    return [c.value for c in at.caption]


def finish(at, key: str, timeout: float = 900):
    job = at.session_state[f"job:{key}"]
    job.thread.join(timeout)
    assert not job.running, f"{key} still running after {timeout} s"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return job


# -- Sweep --------------------------------------------------------------------------------------------------------


def sweep_plan(at) -> tuple[int, int, int, int]:
    """(models, clips, budgets > 0, steps) as the Sweep page's widgets stand."""
    grid = parse_float_list(at.text_input(key="sweep_grid_eps").value, "grid")
    clips = 1 if at.radio(key="sweep_clip_mode").value == "Current clip" else int(at.number_input(key="sweep_max_clips").value)
    return len(at.multiselect(key="sweep_models").value), clips, sum(1 for g in grid if g > 0), int(at.number_input(key="sweep_steps").value)


def test_sweep_default_is_small_and_says_how_many_steps_it_takes(data_dir):
    at = page("3_Sweep.py")
    n_models, clips, budgets, steps = sweep_plan(at)
    units = n_models * clips * budgets * steps
    said = next(c for c in captions(at) if "PGD steps of one row in all" in c)
    assert said.startswith(f"{clips} clip(s) x {budgets} budget(s) x {steps} step(s) per model: {units} PGD steps")
    assert re.search(r"about \d+ (s|min)", said) and "first guess" in said  # nothing measured in this cache yet
    assert units <= 60  # sized for seconds: the old default took 120 steps on 2 models
    full = at.button(key="sweep_full").label
    assert re.match(r"Full sweep: 8 test clips x 6 budgets x PGD-10, about \d+ (s|min)", full), full
    # the estimate grows with the settings as the units do
    at.number_input(key="sweep_steps").set_value(2 * steps).run()
    assert any(f"{2 * units} PGD steps" in c for c in captions(at))


@pytest.mark.slow
def test_sweep_default_run_counts_its_steps_and_the_full_sweep_is_one_click_away(data_dir):
    at = page("3_Sweep.py")
    n_models, clips, budgets, steps = sweep_plan(at)
    at.button(key="sweep_run").click().run()
    job = finish(at, "sweep")
    assert job.error is None and job.total == job.done == n_models * clips * budgets * steps  # per-step progress
    assert "about" not in job.text or "finishing" in job.text
    table = at.session_state["sweep_result"]["table"]
    grid = parse_float_list(at.text_input(key="sweep_grid_eps").value, "grid")
    assert len(table) == n_models * clips * (len(grid) + 1)  # every budget of the grid and the clean clip
    assert table.groupby("model")["budget"].nunique().eq(len(grid)).all()
    # this machine's cost per step is now known: the caption says so, the full sweep's estimate rests on it
    assert any("from this machine's earlier runs" in c for c in captions(at))
    at.button(key="sweep_full").click().run()
    job = at.session_state["job:sweep"]
    assert sweep_plan(at) == (n_models, 8, 5, 10)  # the widgets show what runs
    job.cancel_requested = True  # it would take minutes; its size is what matters here
    job.thread.join(300)
    assert job.total == n_models * 8 * 5 * 10


# -- Embeddings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["birdnet_protopnet", "protopnet"])
def test_embeddings_text_names_the_window_length_of_the_model(data_dir, model):
    if model not in list_checkpoints():
        pytest.skip(f"{model} not shipped")
    seconds = load_checkpoint(model).config.clip_seconds  # what the model really reads (BirdNET's heads: 3 s)
    at = AppTest.from_file(str(ROOT / "pages" / "4_Embeddings.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = model
    at.run()
    assert not at.exception
    text = " ".join(captions(at))
    assert f"Each point is a {float(seconds):g} s window (the input of {model})" in text
    assert "5 s clip" not in text or float(seconds) == 5
    assert at.number_input(key="emb_max_clips").value == 24
    assert re.search(r"24 clips: about \d+ (s|min)", text)
    assert re.match(r"Map 120 clips, about \d+ (s|min)", at.button(key="emb_full").label)


@pytest.mark.slow
def test_embeddings_default_map_reports_each_stage_and_then_knows_its_costs(data_dir):
    import threading

    at = AppTest.from_file(str(ROOT / "pages" / "4_Embeddings.py"), default_timeout=TIMEOUT)
    at.session_state["model_name"] = "protopnet"
    at.run()
    for t in threading.enumerate():  # costs measured while UMAP compiles are not kept: let it finish first
        if t.name == "birdshield-umap-warmup":
            t.join(300)
    at.button[0].click().run()  # Compute map
    job = finish(at, "embeddings")
    assert job.error is None
    res = at.session_state["emb_result"]
    assert len(res["clips"]) == 24
    import ui.jobs

    assert {"emb:decode", "emb:embed:protopnet", "emb:anchors:protopnet"} <= set(ui.jobs._COSTS)
    assert not any("first guess" in c for c in captions(at))  # the next estimate is this machine's


# -- Transfer -----------------------------------------------------------------------------------------------------


def test_transfer_default_is_small_and_states_its_size(data_dir):
    at = page("7_Transfer.py")
    n = int(at.number_input(key="tr_segments").value)
    seconds = float(at.number_input(key="tr_seconds").value)
    steps = int(at.number_input(key="tr_steps").value)
    models = at.multiselect(key="tr_models").value
    assert n * seconds * steps <= 30  # the old default: 6 x 15 s x PGD-10 = 900
    said = next(c for c in captions(at) if "recording(s) x" in c)
    assert said.startswith(f"{n} recording(s) x {seconds:g} s x PGD-{steps}, attacked on each of {len(models)} model(s): about ")
    assert re.match(r"Full table: 24 recordings x 15 s x PGD-10, about [\d.]+ (s|min|h)", at.button(key="tr_full").label)


# -- Compare models -----------------------------------------------------------------------------------------------


def test_compare_page_shows_a_stored_result_without_loading_any_model(monkeypatch):
    """Fingerprints come from the disk cache: a second visit with a cold server loads no model."""
    import ui.common

    first = page("5_Compare_models.py")  # fills the fingerprint cache (may load models once)
    loads = []
    real = ui.common.load_checkpoint
    monkeypatch.setattr(ui.common, "load_checkpoint", lambda name: loads.append(name) or real(name))
    ui.common.get_model.clear()
    ui.common._fingerprint.clear()
    again = page("5_Compare_models.py")
    assert loads == []
    assert [b.label for b in again.button] == [b.label for b in first.button]
