"""Browser benchmark: how long each page's default action takes in a real browser (issue 25, "pages that finish").

Starts ``streamlit run app.py`` on a free loopback port with an empty cache (the state of a fresh
clone; ``--cache DIR`` to use another), drives Debian's chromium with Playwright as a user would,
and prints per page: the time to its first complete render and the time from the click on its
default button to the finished result, with the estimate the page showed beforehand, the CPU
seconds the server used meanwhile and the load average. It also samples the progress text of
each background job (to show that it moves and states done/total and the time left).

Default actions: Home (open), Clip (open: a dataset clip scored and explained), Sweep (Run sweep),
Embeddings (Compute map), Compare models (open: the stored comparison), Transfer (Run transfer
table), Published model (open). ``--big`` also runs the Sweep page's full sweep and the
Embeddings page's bigger map and prints measured / estimated.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (never downloads a browser). A script,
not a test: it prints figures and asserts nothing. Usage::

    python bench/pages.py [--big] [--pages Clip,Sweep] [--cache DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 900_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process [s] (from /proc; threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def settle(page, timeout=TIMEOUT_MS) -> None:
    """Until Streamlit's running indicator is gone (the script run finished)."""
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=stStatusWidget]')", timeout=timeout)


class Sampler:
    """Samples the text of the page's progress bars once a second while a job runs (in this thread's page)."""

    def __init__(self) -> None:
        self.seen: list[tuple[float, str]] = []

    def sample(self, page, t0: float) -> None:
        try:
            texts = page.locator("[data-testid=stProgress]").all_inner_texts()
        except Exception:  # noqa: BLE001 - the page is rerendering
            return
        for t in texts:
            t = " ".join(t.split())
            if t and (not self.seen or self.seen[-1][1] != t):
                self.seen.append((time.perf_counter() - t0, t))


def wait_for_text(page, text: str | re.Pattern, t0: float, sampler: Sampler | None = None, timeout_s: float = 900) -> None:
    """Wait for ``text`` on the page, sampling the progress bar meanwhile."""
    loc = page.get_by_text(text).first
    end = time.perf_counter() + timeout_s
    while time.perf_counter() < end:
        if sampler is not None:
            sampler.sample(page, t0)
        try:
            loc.wait_for(timeout=1000)
            return
        except Exception:  # noqa: BLE001 - not there yet
            continue
    raise TimeoutError(f"{text!r} did not appear within {timeout_s:.0f} s")


def caption_with(page, pattern: str) -> str:
    """The first text block matching ``pattern`` (the estimate a page shows beside its button)."""
    loc = page.get_by_text(re.compile(pattern)).first
    try:
        return " ".join(loc.inner_text(timeout=5000).split())
    except Exception:  # noqa: BLE001
        return "(no estimate shown)"


def estimate_seconds(text: str) -> float | None:
    """Seconds from "about N s" / "about N min" / "about N h" in ``text``."""
    m = re.search(r"about ([\d.]+) (s|min|h)\b", text)
    if not m:
        return None
    return float(m.group(1)) * {"s": 1, "min": 60, "h": 3600}[m.group(2)]


class Bench:
    def __init__(self, browser, url: str, pid: int) -> None:
        self.url, self.pid = url, pid
        self.page = browser.new_page(viewport={"width": 1400, "height": 1800})
        self.rows: list[dict] = []

    def open(self, path: str, ready: str | re.Pattern, *, plots: int = 0) -> tuple[float, float]:
        """Open a page; until ``ready`` shows, ``plots`` charts are drawn and the script run has finished.

        Returns (wall seconds, server CPU seconds)."""
        t0, c0 = time.perf_counter(), cpu_seconds(self.pid)
        self.page.goto(f"{self.url}/{path}")
        self.page.wait_for_selector("h1", timeout=TIMEOUT_MS)
        wait_for_text(self.page, ready, t0)
        if plots:
            self.page.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot').length >= {plots}",
                                        timeout=TIMEOUT_MS)
        settle(self.page)
        return time.perf_counter() - t0, cpu_seconds(self.pid) - c0

    def record(self, name: str, what: str, seconds: float, cpu: float, estimate: str = "", progress=()) -> None:
        row = {"page": name, "action": what, "seconds": seconds, "server_cpu_s": cpu, "load": load(), "estimate": estimate,
               "progress": list(progress)}
        self.rows.append(row)
        print(f"{name:16s} {what:34s} {seconds:7.1f} s  (server CPU {cpu:6.1f} s, load {row['load']})"
              + (f"  estimate shown: {estimate}" if estimate else ""), flush=True)
        for t, text in list(progress)[:: max(1, len(progress) // 8)]:
            print(f"{'':18s}  at {t:5.1f} s: {text}", flush=True)

    def click_and_wait(self, name: str, button: str, done_text, estimate_pattern: str | None, what: str) -> float:
        est = caption_with(self.page, estimate_pattern) if estimate_pattern else ""
        if estimate_pattern is None:
            est = button
        sampler = Sampler()
        t0, c0 = time.perf_counter(), cpu_seconds(self.pid)
        self.page.get_by_role("button", name=button).first.click()
        wait_for_text(self.page, done_text, t0, sampler)
        settle(self.page)
        seconds = time.perf_counter() - t0
        self.record(name, what, seconds, cpu_seconds(self.pid) - c0, est, sampler.seen)
        return seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", default="Home,Clip,Sweep,Embeddings,Compare_models,Transfer,Published_model")
    ap.add_argument("--big", action="store_true", help="also run the bigger runs and compare them with their estimates")
    ap.add_argument("--cache", help="BIRDSHIELD_CACHE_DIR for the server (default: a new empty one)")
    args = ap.parse_args(argv)
    from playwright.sync_api import sync_playwright

    todo = args.pages.split(",")
    cache = args.cache or tempfile.mkdtemp(prefix="birdshield-bench-")
    port = free_port()
    log = open(Path(cache) / "streamlit.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=dict(os.environ, BIRDSHIELD_CACHE_DIR=str(Path(cache) / "embeddings")), stdout=log,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    print(f"# bench/pages.py: {os.cpu_count()} CPU(s), load average {load()} at the start; cache {cache}", flush=True)
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            print("the dashboard did not start; see", log.name)
            return 1
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            b = Bench(browser, url, server.pid)
            if "Home" in todo:
                b.record("Home", "first visit (fresh server)", *b.open("", re.compile("birdshield", re.I)))
            if "Clip" in todo:
                b.record("Clip", "first visit: clip scored, explained", *b.open("Clip", "This looks like that", plots=4))
            if "Sweep" in todo:
                b.record("Sweep", "open", *b.open("Sweep", "Run sweep"))
                b.click_and_wait("Sweep", "Run sweep", re.compile("source: run"), "PGD steps of one row in all",
                                 "default: Run sweep -> curves")
                if args.big:
                    label = b.page.get_by_role("button", name=re.compile("^Full sweep")).first.inner_text()
                    secs = b.click_and_wait("Sweep", label.strip(), re.compile(r"Robustness curves \(8 clip"), None,
                                            "bigger: Full sweep")
                    est = estimate_seconds(label)
                    if est:
                        print(f"{'':18s}  measured / estimated = {secs / est:.2f}", flush=True)
            if "Embeddings" in todo:
                b.record("Embeddings", "open", *b.open("Embeddings", "Compute map"))
                b.click_and_wait("Embeddings", "Compute map", "Cluster and retrieval quality", r"^\d+ clips: about",
                                 "default: Compute map -> map")
                if args.big:
                    label = b.page.get_by_role("button", name=re.compile(r"^Map \d+ clips")).first.inner_text()
                    t_before, c_before = time.perf_counter(), cpu_seconds(b.pid)
                    b.page.get_by_role("button", name=label.strip()).first.click()
                    b.page.get_by_text("Map:", exact=False).first.wait_for(timeout=TIMEOUT_MS)  # its progress bar
                    wait_for_text(b.page, re.compile(r"Cluster and retrieval quality"), t_before)
                    # the old map stays on the page: wait for the job's bar to go
                    b.page.wait_for_function("() => !document.querySelector('[data-testid=stProgress]')", timeout=TIMEOUT_MS)
                    settle(b.page)
                    secs = time.perf_counter() - t_before
                    b.record("Embeddings", "bigger map", secs, cpu_seconds(b.pid) - c_before, label.strip())
                    est = estimate_seconds(label)
                    if est:
                        print(f"{'':18s}  measured / estimated = {secs / est:.2f}", flush=True)
            if "Compare_models" in todo:
                secs, cpu = b.open("Compare_models", re.compile(r"^Summary$|No stored result"))
                found = b.page.get_by_text("Summary", exact=True).count() > 0
                b.record("Compare models", "first visit: " + ("stored comparison shown" if found else
                                                              "NO stored result matched"), secs, cpu)
            if "Transfer" in todo:
                b.record("Transfer", "open", *b.open("Transfer", "Run transfer table"))
                b.click_and_wait("Transfer", "Run transfer table", "attack: top-1 changed", r"recording\(s\) x",
                                 "default: Run transfer table")
            if "Published_model" in todo:
                b.record("Published model", "first visit", *b.open("Published_model", re.compile("Published AudioProtoPNet")))
            browser.close()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    print(f"# load average at the end {load()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
