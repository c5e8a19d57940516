"""A real browser walks every page: Playwright drives Debian's chromium against a live dashboard.

Starts ``streamlit run app.py`` on a free loopback port, then on every page: chooses a clip, uploads a
file, runs an attack, plays audio, runs a small sweep, computes an embedding map; asserts that no
exception box or traceback text appears, and saves a screenshot of each page to
``$BIRDSHIELD_ARTIFACTS`` (default ``test-artifacts/browser/``). A second browser session must load
while the first one is busy with a sweep.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` Python package; never downloads a browser.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from core.models.registry import list_checkpoints
from tests.conftest import ROOT, tone

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (apt-get install chromium)"),
    pytest.mark.skipif("protopnet" not in list_checkpoints(), reason="shipped checkpoints missing"),
]
ARTIFACTS = Path(os.environ.get("BIRDSHIELD_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
RUN_TIMEOUT_MS = 240_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    env = dict(os.environ, BIRDSHIELD_CACHE_DIR=str(tmp_path_factory.mktemp("cache")))
    log = open(tmp_path_factory.mktemp("log") / "streamlit.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the dashboard did not start")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
        ])
        yield b
        b.close()


def settle(page, timeout=RUN_TIMEOUT_MS):
    """Wait until the script run finished (Streamlit's running indicator gone) and the page is idle."""
    page.wait_for_timeout(800)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout)
    page.wait_for_timeout(500)


def check(page, name: str):
    """No exception box, no traceback text; save a screenshot."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert page.locator("[data-testid=stException]").count() == 0, f"exception box on {name}"
    text = page.inner_text("body")
    assert "Traceback" not in text, f"traceback on {name}"


def visit(page, url):
    page.goto(url)
    page.wait_for_selector("h1", timeout=RUN_TIMEOUT_MS)
    settle(page)


def enter(page, label: str, value: str):
    """Type into the (first) input with this label and confirm, as a user does."""
    box = page.get_by_label(label, exact=True).first
    box.fill(value)
    box.press("Enter")
    settle(page)



def run_and_wait_for_plot(page, button: str, text: str, *, exact: bool = False, plot: int = 0) -> None:
    """Click ``button``, wait for ``text`` (the background job's result) and then for the page's ``plot``-th chart."""
    page.get_by_role("button", name=button).click()
    settle(page)
    page.get_by_text(text, exact=exact).first.wait_for(timeout=RUN_TIMEOUT_MS)
    settle(page)
    page.locator(".js-plotly-plot").nth(plot).wait_for(timeout=RUN_TIMEOUT_MS)


#: Tables and metrics whose content is wider than their box (a number cut off or scrolled out of view), and metric
#: text cut with an ellipsis. Glide data grids draw on a canvas: their scroller's scrollWidth is the width of every column.
OVERFLOW_JS = """() => {
  const shown = el => el.getClientRects().length > 0 && el.clientWidth > 0;
  const boxes = '[data-testid=stDataFrame] .dvn-scroller, [data-testid=stTable], [data-testid=stTable] table, '
              + '[data-testid=stMetric], [data-testid=stMetric] *';
  const out = [];
  for (const el of document.querySelectorAll(boxes)) {
    if (!shown(el)) continue;
    const cut = getComputedStyle(el).textOverflow === 'ellipsis' && el.scrollWidth > el.clientWidth + 1;
    if (el.scrollWidth > el.clientWidth + 1 || cut)
      out.push(`${el.closest('[data-testid]').getAttribute('data-testid')}: ${el.scrollWidth} px of content in ${el.clientWidth} px `
               + `(${(el.innerText || '').replace(/\\s+/g, ' ').slice(0, 60)})`);
  }
  return out;
}"""


def assert_nothing_cut_off(page, name: str) -> None:
    """No table or metric of the page is wider than its box (so no number is cut off or scrolled out of view)."""
    cut = page.evaluate(OVERFLOW_JS)
    assert not cut, f"cut off on {name} at {page.viewport_size}: {cut}"


def open_page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(url)
    page.wait_for_selector("h1", timeout=RUN_TIMEOUT_MS)
    settle(page)
    return page


@pytest.mark.slow
def test_walk_every_page(server, browser, tmp_path, data_dir):
    upload = tmp_path / "tone.wav"
    sf.write(upload, tone(2500, 6.0, 44_100, amp=0.2) + np.float32(0), 44_100)

    page = open_page(browser, server)
    assert "birdshield" in page.inner_text("h1")
    check(page, "0_home")
    nav = [t.strip() for t in page.locator("[data-testid=stSidebarNav] a").all_inner_texts()]
    assert nav[0] == "Home" and "app" not in nav, nav  # the home page is named, not "app"
    assert {"Field recording", "Clip", "Attack", "Compare models", "Guided demo", "Glossary"} <= set(nav), nav

    # Clip: a dataset clip is shown by default; audio plays; then upload a file
    visit(page, f"{server}/Clip")
    page.get_by_text("Scores", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
    audio = page.locator("audio").first
    audio.wait_for(state="attached")
    page.wait_for_function("() => document.querySelector('audio') && document.querySelector('audio').readyState >= 1",
                           timeout=60_000)
    playing = audio.evaluate("a => a.play().then(() => !a.paused).catch(() => 'blocked')")
    assert playing is True or playing == "blocked"
    assert audio.evaluate("a => a.duration") > 1.0
    check(page, "1_clip_dataset")
    page.get_by_text("Upload", exact=True).first.click()
    settle(page)
    page.locator("input[type=file]").first.set_input_files(str(upload))
    settle(page)
    page.get_by_text("tone.wav", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
    check(page, "2_clip_upload")

    # Attack: the uploaded clip is shared across pages; run a 3-step attack
    visit(page, f"{server}/Attack")
    enter(page, "steps (1 = FGSM)", "3")
    page.get_by_role("button", name="Run attack").click()
    settle(page)
    page.get_by_text("SNR of perturbation").wait_for(timeout=RUN_TIMEOUT_MS)
    assert page.locator("audio").count() >= 3
    check(page, "3_attack")

    # Sweep: two models, a 3-value grid, 1 step
    visit(page, f"{server}/Sweep")
    enter(page, "Grid (comma-separated)", "0, 1e-3, 1e-2")
    enter(page, "steps", "1")
    page.get_by_role("button", name="Run sweep").click()
    settle(page)
    page.get_by_text("Hear where it breaks").wait_for(timeout=RUN_TIMEOUT_MS)  # the background job's result is in
    settle(page)
    page.get_by_text("source: run", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
    page.locator(".js-plotly-plot").nth(1).wait_for(timeout=RUN_TIMEOUT_MS)
    check(page, "4_sweep")

    # Embeddings: a small map
    visit(page, f"{server}/Embeddings")
    enter(page, "at most N clips", "12")
    run_and_wait_for_plot(page, "Compute map", "Cluster and retrieval quality", plot=0)
    check(page, "5_embeddings")

    # Compare models: the shipped comparison of the six models is shown without computing; switch tabs
    visit(page, f"{server}/Compare_models")
    page.get_by_text("Summary", exact=True).wait_for(timeout=RUN_TIMEOUT_MS)
    page.get_by_role("tab", name="Robustness curves").click()
    settle(page)
    page.get_by_role("tab", name="Prototype stability").click()
    settle(page)
    assert page.locator(".js-plotly-plot").count() >= 2
    check(page, "6_compare_models")

    # Paper check: one row per claim with a verdict
    visit(page, f"{server}/Paper_check")
    page.get_by_text("Per claim", exact=True).wait_for(timeout=RUN_TIMEOUT_MS)
    text = page.inner_text("body")
    assert "reproduced" in text and "paper: +10.5 %" in text  # verdicts and the paper's numbers in the per-claim list
    check(page, "7_paper_check")

    # Transfer: BirdNET and AudioProtoPNet, one recording, a 1-step attack; both heat maps drawn
    visit(page, f"{server}/Transfer")
    enter(page, "recordings", "1")
    enter(page, "PGD steps", "1")
    enter(page, "segment length (s)", "6")
    run_and_wait_for_plot(page, "Run transfer table", "attack: top-1 changed", plot=1)
    assert "CC BY-NC-SA 4.0" in page.inner_text("body")
    check(page, "8_transfer")

    # Field recording: a file on this computer, analysed whole; the timeline drawn; one window opened on the Clip page
    field = tmp_path / "field.wav"
    sf.write(field, np.concatenate([tone(3000, 9.0, 44_100, amp=0.2), np.zeros(44_100 * 8, np.float32)]), 44_100)
    visit(page, f"{server}/Field_recording")
    page.get_by_text("File on this computer", exact=True).first.click()
    settle(page)
    enter(page, "Path of an audio file on this computer", str(field))
    run_and_wait_for_plot(page, "Analyse field.wav", "Detections", exact=True, plot=0)
    assert "Raven selection table" in page.inner_text("body")
    check(page, "9_field_recording")
    page.get_by_role("button", name="Explain or attack this window on the Clip page").first.click()
    settle(page)
    page.get_by_text("into the recording", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
    check(page, "10_clip_from_field")

    # Guided demonstration: five steps, one click each, as an audience would see them (default: the interpretable model)
    visit(page, f"{server}/Guided_demo")
    page.get_by_text("1. This is a Sedge Warbler").wait_for(timeout=RUN_TIMEOUT_MS)
    for label in ("Next: what does the model look at?", "Next: add a quiet change", "Next: hear it",
                  "Next: what does the model say now?"):
        page.get_by_role("button", name=label).click()
        settle(page)
    page.get_by_text("5. The model now says", exact=False).wait_for(timeout=RUN_TIMEOUT_MS)
    assert page.locator("audio").count() >= 4
    check(page, "11_guided_demo")
    page.close()


@pytest.mark.slow
def test_second_session_loads_while_first_is_busy_and_a_run_survives_leaving_its_page(server, browser, data_dir):
    busy = open_page(browser, f"{server}/Sweep")
    busy.get_by_text("Split subset", exact=True).click()
    settle(busy)
    enter(busy, "steps", "15")
    busy.get_by_role("button", name="Run sweep").click()  # 8 clips x 2 models x 6 budgets x PGD-15: minutes
    busy.get_by_text("Sweep: ", exact=False).first.wait_for(timeout=30_000)  # its progress bar: the job runs
    start = time.perf_counter()
    other = browser.new_page(viewport={"width": 1400, "height": 1600})
    other.goto(server)
    other.wait_for_selector("h1", timeout=60_000)
    other.get_by_role("button", name="Hear an attack").wait_for(timeout=60_000)
    loaded_in = time.perf_counter() - start
    still_busy = busy.get_by_text("Sweep: ", exact=False).count() > 0
    check(other, "6_second_session")
    assert still_busy, "the first session finished before the second loaded: the check proves nothing"
    assert loaded_in < 60
    # the first session leaves the page while its sweep runs (the sidebar, as a user does) and comes back to the result
    busy.locator("[data-testid=stSidebarNav] a", has_text="Glossary").click()
    busy.get_by_role("heading", name="Glossary", exact=False).first.wait_for(timeout=30_000)
    assert "Running: Sweep on the Sweep page" in busy.inner_text("[data-testid=stSidebar]")
    busy.locator("[data-testid=stSidebarNav] a", has_text="Sweep").click()
    busy.get_by_text("source: run", exact=False).first.wait_for(timeout=600_000)
    settle(busy)
    busy.locator(".js-plotly-plot").first.wait_for(timeout=RUN_TIMEOUT_MS)
    check(busy, "6_run_survived_leaving")
    busy.close()
    # the second session does not see the first one's results
    visit(other, f"{server}/Sweep")
    assert other.get_by_text("Set up a sweep and run it").count() == 1
    other.close()


FIRST_SCREEN_JARGON = ("L-inf", "eps", "PRS", "DRS", "TARS")


@pytest.mark.slow
def test_home_and_attack_pages_fit_1280x800(server, browser, data_dir):
    """At 1280x800 the home page opens with its picture and three first actions, in plain words, and no table or
    metric of the home page (every section opened) or of the Attack page (after an attack) is cut off."""
    from core.studies.demo import demo_sentence, read_demo_record

    page = browser.new_page(viewport={"width": 1280, "height": 800})
    visit(page, server)
    first_screen = page.evaluate("""() => [...document.querySelectorAll('[data-testid=stMain] p, [data-testid=stMain] h1, '
        + '[data-testid=stMain] button, [data-testid=stMain] img')]
        .filter(el => { const r = el.getBoundingClientRect(); return r.height > 0 && r.top < innerHeight && r.bottom > 0; })
        .map(el => el.tagName === 'IMG' ? '[img] ' + el.alt : el.innerText)""")
    text = "\n".join(first_screen)
    assert any(t.startswith("[img] ") for t in first_screen), first_screen  # the picture is on the first screen
    for label in ("Analyse my recording", "See one clip explained", "Hear an attack"):
        assert label in text, f"{label!r} not on the first screen: {first_screen}"
    assert demo_sentence(read_demo_record()).replace("**", "") in text  # what the picture shows, as recorded
    for word in FIRST_SCREEN_JARGON:
        assert not re.search(rf"\b{word}\b", text), f"{word!r} on the home page's first screen"
    check(page, "12_home_1280x800")
    for summary in page.locator("[data-testid=stExpander] summary").all():
        summary.click()
        page.wait_for_timeout(300)
    settle(page)
    page.get_by_text("cmAP (windows)").first.wait_for(timeout=RUN_TIMEOUT_MS)  # the model table is open
    assert_nothing_cut_off(page, "the home page")

    visit(page, f"{server}/Attack")
    enter(page, "steps (1 = FGSM)", "3")
    page.get_by_role("button", name="Run attack").click()
    settle(page)
    page.get_by_text("SNR of perturbation").wait_for(timeout=RUN_TIMEOUT_MS)
    page.get_by_text("Top species (attacked)").wait_for(timeout=RUN_TIMEOUT_MS)
    check(page, "13_attack_1280x800")
    assert_nothing_cut_off(page, "the Attack page")
    page.close()
