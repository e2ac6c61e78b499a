"""The console in a real browser (Debian's chromium driven by Playwright).

One console process, one real mosquitto with mutual TLS, one van of the device's real
parts (:class:`tests.fixtures.browser.Van`): alerts are the real publisher's alert JSON.
A failing test leaves ``failure.png`` in its tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker
from tests.fixtures.browser import (
    PASSWORD,
    ConsoleServer,
    Van,
    launch_chromium,
    screenshot_on_failure,
)
from tests.fixtures.wait import wait_until

sync_api = pytest.importorskip("playwright.sync_api")
HOSTILE = '<img src=x onerror="document.title=1">S-<b>99</b>'


@pytest.fixture(scope="module")
def console(shared_broker: Broker,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:  # fmt: skip
    server = ConsoleServer(shared_broker, tmp_path_factory.mktemp("console"), "console-ui")
    server.add_user("pc-ops", "operator")
    server.add_user("sgt-sup", "supervisor")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def world(shared_broker: Broker, console: ConsoleServer, tmp_path: Path,
          request: pytest.FixtureRequest) -> Iterator[tuple[ConsoleServer, Van]]:  # fmt: skip
    """The module's console and a fresh van for this test."""
    van = Van(shared_broker, tmp_path / "van", f"van-{len(request.node.name)}",
              console.signing.public)
    van.start()
    yield console, van
    van.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


def _login(page: Any, console: ConsoleServer, name: str) -> None:
    page.goto(console.url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def test_an_alert_appears_live_is_adjudicated_and_the_van_records_the_officer(
    world: tuple[ConsoleServer, Van], browser: Any, tmp_path: Path
) -> None:
    console, van = world
    page = browser.new_page()
    with screenshot_on_failure(page, tmp_path):
        page.goto(console.url + "/alerts")
        assert page.url.endswith("/login")  # refused without login
        _login(page, console, "pc-ops")
        assert page.url.endswith("/alerts")
        page.locator("body[data-live='1']").wait_for()
        page.evaluate("window.__noReload = true")
        record = make_record(van.device_id, subject_id=HOSTILE, category="missing_person")
        van.publisher.enqueue_alert(record)
        row = page.locator(f"#alert-{record.alert_id}")
        row.wait_for(timeout=15_000)
        assert page.evaluate("window.__noReload") is True  # no reload happened
        # The device's HTML is shown as text, never as markup.
        assert row.locator(".subject").inner_text() == HOSTILE
        assert row.locator("img[src=x]").count() == 0 and row.locator("b").count() == 0
        assert page.title() != "1"
        assert row.locator(".category").inner_text() == "missing_person"
        assert row.locator("img.face").first.evaluate("i => i.naturalWidth") > 0  # the crop
        # A state change without the page's CSRF token is refused, and nothing is sent.
        status = page.evaluate(
            """id => fetch('/api/alerts/' + id + '/adjudicate', {method: 'POST',
                 headers: {'Content-Type': 'application/json'},
                 body: JSON.stringify({decision: 'rejected'})}).then(r => r.status)""",
            record.alert_id)
        assert status == 403
        row.locator("button[data-decision=confirmed]").click()
        assert wait_until(lambda: len(van.recorded) == 1)
        assert van.recorded[0]["officer"] == "pc-ops"
        assert van.recorded[0]["decision"] == "confirmed"
        row.locator(".device-record").wait_for(timeout=15_000)
        assert row.locator(".device-officer").inner_text() == "pc-ops"
        assert page.evaluate("window.__noReload") is True


def test_a_van_going_offline_shows_on_the_fleet_page(
    world: tuple[ConsoleServer, Van], browser: Any, tmp_path: Path
) -> None:
    console, van = world
    van.publisher.publish_status(True, "armed: deployment D-1", deployment_id="D-1")
    page = browser.new_page()
    with screenshot_on_failure(page, tmp_path):
        _login(page, console, "sgt-sup")
        page.goto(console.url + "/fleet")
        page.locator("body[data-live='1']").wait_for()
        row = page.locator(f"#device-{van.device_id}")
        row.locator(".badge.online").wait_for(timeout=15_000)
        page.evaluate("window.__noReload = true")
        van.stop()
        row.locator(".badge.offline").wait_for(timeout=15_000)
        assert page.evaluate("window.__noReload") is True
        # An operator is not shown the fleet.
        other = browser.new_page()
        _login(other, console, "pc-ops")
        assert other.goto(console.url + "/fleet").status == 403
