"""The explorer in a real browser: `streamlit run` on 127.0.0.1 and headless Chromium, one screenshot
per page in runs/screenshots/, and no page may show an exception box. The Training page trains a
short run (into a temporary runs folder) by a click on its button.

Needs Debian's ``chromium`` (``make install`` puts it there with apt-get when it can) and the
``playwright`` package; skips when either is missing. Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
sync_api = pytest.importorskip("playwright.sync_api")

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "apps" / "explorer.py"
SHOTS = ROOT / "runs" / "screenshots"
PAGES = {"world": "World", "decoding": "Decoding", "advantages": "Advantages", "training": "Training"}
# pages that need a click before they draw: the Training page trains a run (the tiny preset's default
# knobs, a few steps) and then shows its curves, one figure
CLICK = {"training": ("Train", "Trained:")}
MIN_FIGURES = {"training": 1}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(model_cache, tmp_path_factory):
    """The explorer on the tiny preset, served on a free port; yields its URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    env = {**os.environ, "VSTAR_TOY_APP_PRESET": "tiny", "VSTAR_TOY_CACHE": str(model_cache),
           "VSTAR_TOY_APP_RUNS": str(tmp_path_factory.mktemp("runs"))}
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
           "--server.fileWatcherType", "none"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not come up on {url}:\n{log.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make install adds it)")
def test_every_page_renders_in_chromium(server):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 2000})
            for slug, title in PAGES.items():
                page.goto(f"{server}/?page={slug}", wait_until="domcontentloaded")
                # the page's header, then the script run finished, then every figure loaded
                page.locator('[data-testid="stHeading"]', has_text=title).first.wait_for(timeout=60_000)
                page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=60_000)
                if slug in CLICK:
                    button, done = CLICK[slug]
                    page.get_by_role("button", name=button, exact=True).click()
                    page.get_by_text(done).first.wait_for(timeout=120_000)
                    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                                           timeout=60_000)
                page.wait_for_function("[...document.images].every(i => i.complete)", timeout=30_000)
                page.screenshot(path=str(SHOTS / f"{slug}.png"), full_page=True)
                errors = page.locator('[data-testid="stException"]')
                assert errors.count() == 0, f"{slug}: {errors.first.inner_text()}"
                figures = page.locator('[data-testid="stImage"] img').count()
                assert figures >= MIN_FIGURES.get(slug, 2), f"{slug}: figures missing"
        finally:
            browser.close()
