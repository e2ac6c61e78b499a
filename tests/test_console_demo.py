"""``edge demo`` end to end with the console: the real daemon on the bundled clip, a real
mosquitto, the console's page in Debian's chromium. The alert appears on the page live,
an officer confirms it, and the daemon's own audit log records the decision with the
officer, which comes back to the page through the audit chain."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge.commands.demo import ROOT
from tests.fixtures.browser import launch_chromium, screenshot_on_failure
from tests.fixtures.procs import descendants, wait_gone

sync_api = pytest.importorskip("playwright.sync_api")


def _adjudications(audit: Path) -> list[dict[str, object]]:
    if not audit.exists():
        return []
    entries = [json.loads(line) for line in audit.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("event") == "adjudication"]


def test_the_demo_shows_the_alert_and_the_van_records_the_officers_decision(
    tmp_path: Path,
) -> None:
    if not (ROOT / "demo" / "clip.gif").exists():
        pytest.skip("the demo clip is absent")
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--workdir", str(work),
                             "--seconds", "240"], stderr=subprocess.PIPE, text=True)
    try:
        url = login = None
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and url is None:
            line = proc.stderr.readline()
            if not line:
                break
            m = re.search(r"console: (http://127\.0\.0\.1:\d+)/ +\(login: (\S+) / (\S+);", line)
            if m:
                url, login = m.group(1), (m.group(2), m.group(3))
        assert url and login, "the demo did not print the console's URL and login"
        with sync_api.sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page()
            with screenshot_on_failure(page, tmp_path):
                page.goto(url + "/login")
                page.fill("input[name=name]", login[0])
                page.fill("input[name=password]", login[1])
                page.click("button[type=submit]")
                page.locator("body[data-live='1']").wait_for()
                row = page.locator("tr.alert").first
                row.wait_for(timeout=120_000)  # the daemon's first alert, live
                assert row.locator(".subject").inner_text() == "DEMO-0001"
                row.locator("button[data-decision=confirmed]").click()
                row.locator(".device-record").wait_for(timeout=60_000)
                assert row.locator(".device-officer").inner_text() == "demo"
            browser.close()
        (adj,) = _adjudications(work / "state" / "audit.log")
        assert (adj["officer"], adj["decision"]) == ("demo", "confirmed")
        # Issue 21: stopped by SIGTERM (timeout, a CI runner, a service manager), the demo
        # stops its broker, subscriber, console and daemon as on Ctrl-C: none is left.
        children = descendants(proc.pid)
        names = " ".join(c[2] for c in children)
        assert len(children) >= 4 and "mosquitto" in names, children
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert wait_gone(children, 30) == []
        assert "stopped (SIGTERM)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0
