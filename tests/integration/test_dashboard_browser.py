"""The live dashboard in a real browser: Debian's headless Chromium, driven by Selenium
through the system chromedriver (nothing downloaded), watches a running `dkt run` until
an agent's accuracy appears on the page, and reads a guarded relay's status with the
token of the URL fragment."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from dkt.server.relay.status_http import StatusHttpServer

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
DASHBOARD_URL = re.compile(r"live dashboard: (http://127\.0\.0\.1:\d+/)")
# Agent 0's accuracy cell, its first point on the accuracy chart, and its state.
READ_AGENT_0 = """
const text = (css) => { const e = document.querySelector(css); return e ? e.textContent : ""; };
const point = document.querySelector('svg circle[data-agent="0"][data-metric="acc_all_cl"]');
return [text('tr[data-agent="0"] td[data-metric="acc_all_cl"]'),
        point ? point.getAttribute("data-value") : null,
        text('tr[data-agent="0"] td.state')];
"""


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless Chromium; --no-sandbox because CI runs tests as root in a container. The
    driver and browser are named, and Selenium Manager, if asked, stays offline."""
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output lines as they come (None at its end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _dashboard_url(lines: queue.Queue[str | None], seen: list[str]) -> str:
    while (line := lines.get(timeout=180)) is not None:
        seen.append(line)
        if found := DASHBOARD_URL.search(line):
            return found.group(1)
    raise AssertionError("dkt run ended without printing its dashboard URL:\n" + "".join(seen))


@pytest.mark.slow
def test_the_dashboard_shows_an_agents_accuracy_while_dkt_run_goes(
    tmp_path: Path, browser: WebDriver
) -> None:
    # Enough experiences that the run is still going when the first accuracy arrives.
    command = [sys.executable, "-m", "dkt", "run", "--out", str(tmp_path / "run"), "--quiet"]
    flags = ["--agents", "2", "--experiences", "5", "--epochs", "2"]
    proc = subprocess.Popen(
        command + flags, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seen: list[str] = []
    try:
        url = _dashboard_url(_lines(proc), seen)
        browser.get(url)
        # Read in one script: the page redraws every poll, so held elements go stale.
        WebDriverWait(browser, 240, poll_frequency=0.5).until(
            lambda b: b.execute_script(READ_AGENT_0)[0]
        )
        accuracy, point, state = browser.execute_script(READ_AGENT_0)
        title = browser.title
    finally:
        proc.terminate()
        proc.wait(timeout=120)

    assert title == "DKT relay"
    assert re.fullmatch(r"\d{1,3}\.\d%", accuracy), accuracy
    assert 0.0 < float(point) <= 1.0
    assert state in {"training", "publishing", "trained", "done"}


@pytest.mark.slow
def test_the_page_uses_the_fragments_token_and_drops_it_from_the_address(
    browser: WebDriver,
) -> None:
    token = "admin-token-of-a-relay-beyond-loopback"
    asked: list[str] = []

    def authorize(given: str) -> bool:
        asked.append(given)
        return given == token

    status = {
        "version": "9.9.9",
        "uptime_seconds": 1.0,
        "totals": {"runs": 0, "prediction_sets": 0, "payload_bytes": 0},
        "runs_not_shown": 0,
        "runs": [],
    }
    server = StatusHttpServer(
        "127.0.0.1", 0, lambda: status, lambda: True, lambda: b"", authorize=authorize
    )
    server.start()
    try:
        browser.get(f"http://127.0.0.1:{server.port}/#token={token}")
        WebDriverWait(browser, 30, poll_frequency=0.25).until(
            lambda b: (
                "relay 9.9.9"
                in b.execute_script("return document.getElementById('summary').textContent")
            )
        )
        address = browser.current_url
        browser.get(f"http://127.0.0.1:{server.port}/")  # no token: the page asks for one
        WebDriverWait(browser, 30, poll_frequency=0.25).until(
            lambda b: b.execute_script("return !document.getElementById('auth').hidden")
        )
    finally:
        server.stop()

    assert address == f"http://127.0.0.1:{server.port}/"
    assert asked[0] == token and set(asked) <= {token, ""}
