"""The officer's view in a real browser (Debian's chromium driven by Playwright).

An alert nobody misses (a banner on every page, a tone generated in the page, the count in
the tab title), judged at a glance (both faces at 256 px or more, the score against the
threshold, the references' provenance), decided with one key that reaches the van, marked
stale when old, usable on a phone (390 x 844) and checked with axe-core.

One console process, one real mosquitto with mutual TLS, one van of the device's real
parts and one browser for the module; the reference images come in a real signed,
encrypted reference file (``edge.watchlist.references``) imported when the console starts.
A failing test leaves ``failure.png`` in its tmp_path.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from edge.delivery.alert import rfc3339
from edge.types import AlertRecord
from edge.watchlist.keys import load_device_public, load_signing_key
from edge.watchlist.references import Reference, build_references
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
# page.wait_for_function takes functions ("() => ..."), never expressions: an expression
# is evaluated with eval in the page, which the console's Content-Security-Policy refuses.

DEP = "dep-2026-11-22"  # make_record's deployment
LARGE_BOX = (500.0, 150.0, 760.0, 470.0)  # a 260 x 320 face: the device sends 260 x 320
SOURCE = "custody images (synthetic test faces)"
CAPTURED = "2024-05-01"
LOCATION = "Example Street, Example Town"
PHONE = {"width": 390, "height": 844}


def _face_jpeg(side: int, seed: int) -> bytes:
    """A synthetic face image ``side`` pixels square (an ellipse on noise, nobody's face)."""
    import cv2

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(side, side, 3), dtype=np.uint8)
    cv2.ellipse(img, (side // 2, side // 2), (side // 3, side * 2 // 5), 0, 0, 360,
                (120, 150, 200), -1)  # fmt: skip
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return bytes(buf.tobytes())


@pytest.fixture(scope="module")
def broker(shared_broker: Broker) -> Broker:
    """This module's tests share one broker (module scope, unlike the suite's ``broker``)."""
    return shared_broker


@pytest.fixture(scope="module")
def console(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:
    server = ConsoleServer(broker, tmp_path_factory.mktemp("officer-console"), "console-officer")
    server.references.mkdir(parents=True, exist_ok=True)
    refs = build_references(
        load_signing_key(server.signing.private), load_device_public(server.console_key.public)[1],
        deployment_id=DEP, bundle_id="c" * 32, window_end=time.time() + 3600,
        subjects=[Reference("S-LARGE", "wanted_court", _face_jpeg(320, 1), (_face_jpeg(300, 2),),
                            SOURCE, CAPTURED),
                  Reference("S-SMALL", "missing_person", _face_jpeg(120, 3), (), SOURCE,
                            CAPTURED)])  # fmt: skip
    (server.references / "officer.refs").write_bytes(refs)  # imported when it starts
    server.add_user("pc-ops", "operator")
    server.add_user("sgt-sup", "supervisor")
    server.add_user("aud-1", "auditor")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def van(broker: Broker, console: ConsoleServer,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Van]:  # fmt: skip
    v = Van(broker, tmp_path_factory.mktemp("officer-van"), "van-officer", console.signing.public)
    v.start()
    now = time.time()
    # The deployment as the console learns it: the van's signed audit entries (an unsigned
    # `deployment` message changes no record)
    v.audit.append("watchlist_loaded", deployment_id=DEP, bundle_id="b" * 32, watchlist_size=2)
    v.audit.append("armed", deployment_id=DEP, location=LOCATION,
                   window_start=rfc3339(now - 3600), window_end=rfc3339(now + 3600),
                   threshold=0.6)  # fmt: skip
    yield v
    v.stop()


@pytest.fixture(scope="module")
def ops(console: ConsoleServer) -> Iterator[httpx.Client]:
    client = console.session("pc-ops")
    yield client
    client.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def pages(browser: Any) -> Iterator[Any]:
    """A fresh browser context for one test (its own storage), closed after it."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    yield ctx
    ctx.close()


def _login(page: Any, console: ConsoleServer, name: str, then: str = "") -> None:
    page.goto(console.url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if then:
        page.goto(console.url + then)
    page.locator("body[data-live='1']").wait_for()


def _publish(van: Van, ops: httpx.Client, subject: str = "S-LARGE", **kw: Any) -> AlertRecord:
    """Publish an alert from the van and wait until the console has stored it."""
    record = make_record(van.device_id, subject_id=subject, category=kw.pop("category",
                         "wanted_court"), **kw)  # fmt: skip
    van.publisher.enqueue_alert(record)
    assert wait_until(lambda: ops.get(f"/fragments/alert/{record.alert_id}").status_code == 200)
    return record


FACES_JS = """() => Array.from(document.querySelectorAll('#focus .panel img.face-large'), i => {
    const r = i.getBoundingClientRect();
    return {alt: i.alt, w: r.width, h: r.height, nw: i.naturalWidth, nh: i.naturalHeight,
            caption: i.closest('figure').querySelector('figcaption').textContent};
})"""
LOADED_JS = """() => Array.from(document.querySelectorAll('#focus .panel img.face-large'))
    .every(i => i.complete && i.naturalWidth > 0)"""


def test_a_new_alert_raises_the_banner_the_title_count_and_the_tone_muted_per_user(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, pages: Any,
    tmp_path: Path
) -> None:
    page = pages.new_page()
    with screenshot_on_failure(page, tmp_path):
        _login(page, console, "sgt-sup", then="/deployments")  # not the alert queue
        page.mouse.click(5, 400)  # a gesture on the page: the browser lets it start audio
        page.wait_for_function("() => document.body.dataset.audio === 'running'")
        before = int(page.evaluate("document.body.dataset.undecided"))
        page.evaluate("window.__noReload = true")
        record = make_record(van.device_id, subject_id="S-LARGE", category="wanted_court")
        van.publisher.enqueue_alert(record)
        banner = page.locator("#alert-banner.raised")
        banner.wait_for(timeout=15_000)
        assert banner.get_attribute("role") == "alert"  # announced by a screen reader
        text = banner.inner_text()
        assert "NEW ALERT" in text.upper() and f"{before + 1} undecided" in text
        assert "S-LARGE" in text and "wanted court" in text
        assert banner.locator("a.banner-open").get_attribute("href") == \
            f"/alerts/{record.alert_id}"  # fmt: skip
        page.wait_for_function(f"() => document.title.startsWith('({before + 1}) Deployments')")
        # The tone: an oscillator in the page's own AudioContext, started and played out.
        page.wait_for_function("() => Number(document.body.dataset.tonesEnded) >= 1")
        assert page.evaluate("document.body.dataset.tones") == "1"
        assert page.evaluate("document.body.dataset.audio") == "running"
        assert page.evaluate("window.__noReload") is True
        # Muted, remembered for this user across a reload: the banner still comes, silently.
        page.click("#sound")
        assert page.locator("#sound").inner_text() == "Sound off"
        page.reload()
        page.locator("body[data-live='1']").wait_for()
        assert page.locator("#sound").get_attribute("aria-pressed") == "false"
        page.mouse.click(5, 400)
        assert page.title().startswith(f"({before + 1}) ")  # the server renders the count too
        second = make_record(van.device_id, subject_id="S-SMALL", category="missing_person")
        van.publisher.enqueue_alert(second)
        page.locator("#alert-banner.raised").wait_for(timeout=15_000)
        page.wait_for_function(f"() => document.title.startsWith('({before + 2}) ')")
        assert page.evaluate("document.body.dataset.tones") == "0"
        # An auditor may not see alerts: no banner, no count.
        other = browser.new_page()  # its own context: its own session cookie
        _login(other, console, "aud-1", then="/audit")
        assert other.locator("#alert-banner").count() == 0
        assert not other.title().startswith("(")
        other.close()


def test_the_alert_page_shows_both_faces_large_and_says_when_one_is_enlarged(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, pages: Any,
    tmp_path: Path
) -> None:
    from edge.console.store import Store

    def views() -> list[tuple[str, str, dict[str, Any]]]:
        store = Store.open(f"sqlite:///{console.db}")
        try:
            return [(e["actor"], e["event"], json.loads(e["detail"]))
                    for e in store.console_log(500)]  # fmt: skip
        finally:
            store.close()

    big = _publish(van, ops, face_box=LARGE_BOX, score=0.74, threshold=0.6)
    small = _publish(van, ops, subject="S-SMALL", category="missing_person")
    page = pages.new_page()
    with screenshot_on_failure(page, tmp_path):
        _login(page, console, "pc-ops")  # the queue: its thumbnails are views too
        viewed = ("pc-ops", "crop_viewed", {"alert_id": big.alert_id})
        before = views().count(viewed)
        page.goto(console.url + f"/alerts/{big.alert_id}")
        page.locator("body[data-live='1']").wait_for()
        page.locator("#focus details.more-refs[open]").wait_for()  # few images: shown open
        page.wait_for_function(LOADED_JS)
        faces = page.evaluate(FACES_JS)
        # the crop and both reference images of the subject, each measured on the page
        assert [f["alt"] for f in faces] == [
            "Matched face: the crop from the van's camera",
            "Watchlist reference image 1 of 2 of the subject",
            "Watchlist reference image 2 of 2 of the subject"]
        for f in faces:
            assert min(f["w"], f["h"]) >= 256 and min(f["nw"], f["nh"]) >= 256, f
            assert "enlarged" not in f["caption"], f
        assert (faces[0]["nw"], faces[0]["nh"]) == (260, 320)  # the device's crop, as sent
        assert faces[0]["caption"] == "Matched face: 260 × 320 px"
        panel = page.locator(f"#panel-{big.alert_id}")
        text = panel.inner_text()
        assert "wanted court" in text and van.device_id in text
        assert f"{DEP}: {LOCATION}" in text
        assert f"source: {SOURCE}; captured {CAPTURED}" in text
        assert "0.740, 0.140 above the threshold 0.600" in text
        assert re.search(r"UTC, \d+ s ago", text)
        assert panel.locator("svg.scorebar").get_attribute("aria-label") == \
            "Score 0.740 against the threshold 0.600"  # fmt: skip
        assert panel.locator(".state-word").inner_text() == "Undecided"
        # A face smaller than 256 px is enlarged to be compared, and the page says so.
        page.goto(console.url + f"/alerts/{small.alert_id}")
        page.wait_for_function(LOADED_JS)
        faces = page.evaluate(FACES_JS)
        assert len(faces) == 2
        for f in faces:
            assert min(f["w"], f["h"]) >= 256 and max(f["nw"], f["nh"]) < 256, f
            assert re.search(r"\d+ × \d+ px, shown enlarged ×\d\.\d$", f["caption"]), f
    # Every view audited, as before: the crops and each reference image, with who; the
    # alert page's view once (a live update of the page does not fetch its images again).
    seen = views()
    assert seen.count(viewed) == before + 1
    for i in (0, 1):
        assert ("pc-ops", "reference_viewed",
                {"deployment_id": DEP, "subject_id": "S-LARGE", "image": i}) in seen


def test_keyboard_shortcuts_record_decisions_that_reach_the_van(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, pages: Any,
    tmp_path: Path
) -> None:
    def recorded(alert_id: str) -> dict[str, Any] | None:
        return next((e for e in van.recorded if e["alert_id"] == alert_id), None)

    first = _publish(van, ops)
    page = pages.new_page()
    with screenshot_on_failure(page, tmp_path):
        # On the alert's own page: C is "confirmed".
        _login(page, console, "pc-ops", then=f"/alerts/{first.alert_id}")
        page.keyboard.press("c")
        assert wait_until(lambda: recorded(first.alert_id) is not None)
        entry = recorded(first.alert_id)
        assert entry is not None
        assert (entry["decision"], entry["officer"]) == ("confirmed", "pc-ops")
        ack = page.locator(f"#panel-{first.alert_id} .device-record")
        ack.wait_for(timeout=15_000)  # the van's audit entry came back: its acknowledgement
        assert re.fullmatch(r"The van recorded: confirmed by pc-ops \(its audit entry #\d+\)\.",
                            ack.inner_text())  # fmt: skip
        assert page.locator(f"#panel-{first.alert_id}").get_attribute("data-decided") == "1"
        # At the top of the queue: the newest undecided alert; N is "not stopped".
        second = _publish(van, ops)
        page.clock.install()  # the page's timers: paused below, to see the keys' guard
        page.goto(console.url + "/alerts")
        page.locator("body[data-live='1']").wait_for()
        page.locator(f"#focus #panel-{second.alert_id}").wait_for()
        page.keyboard.press("n")
        assert wait_until(lambda: recorded(second.alert_id) is not None)
        page.locator(f"#focus #panel-{second.alert_id} .device-record").wait_for(timeout=15_000)
        # A new alert takes the top, live (the one there is decided). For a second the keys
        # do nothing: a key meant for the alert before never lands on the new one.
        page.clock.pause_at(time.time() * 1000 + 2000)
        third = make_record(van.device_id, subject_id="S-LARGE", category="wanted_court")
        van.publisher.enqueue_alert(third)
        page.locator(f"#focus #panel-{third.alert_id}[data-keys=off]").wait_for(timeout=15_000)
        page.keyboard.press("c")  # ignored
        page.clock.run_for(1100)
        page.locator(f"#focus #panel-{third.alert_id}[data-keys=on]").wait_for()
        page.keyboard.press("r")
        assert wait_until(lambda: recorded(third.alert_id) is not None)
        assert [(e["decision"], e["officer"]) for e in van.recorded
                if e["alert_id"] == third.alert_id] == [("rejected", "pc-ops")]  # fmt: skip
        entry = recorded(second.alert_id)
        assert entry is not None and entry["decision"] == "not_stopped"


def test_an_old_alert_is_marked_stale_on_render_and_live(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, pages: Any,
    tmp_path: Path
) -> None:
    old = _publish(van, ops, captured_at=time.time() - 600)  # default alert_stale_s: 120
    page = pages.new_page()
    with screenshot_on_failure(page, tmp_path):
        _login(page, console, "pc-ops", then=f"/alerts/{old.alert_id}")
        flag = page.locator(f"#panel-{old.alert_id} .stale-flag")
        assert flag.is_visible() and flag.inner_text() == "Stale: undecided and older than 2 min"
        page.goto(console.url + "/alerts")
        assert page.locator(f"#alert-{old.alert_id} .stale-flag").is_visible()
        # A fresh alert turns stale in front of the officer, without a reload: the page's
        # clock is moved on (Playwright's clock), the server's is not.
        fresh = _publish(van, ops)
        live = pages.new_page()
        live.clock.install()
        _login(live, console, "pc-ops", then=f"/alerts/{fresh.alert_id}")
        flag = live.locator(f"#panel-{fresh.alert_id} .stale-flag")
        assert not flag.is_visible()
        live.clock.fast_forward(121_000)
        flag.wait_for(state="visible", timeout=10_000)
        assert live.locator(f"#panel-{fresh.alert_id}").get_attribute("class") == "panel stale"
        assert live.locator(f"#panel-{fresh.alert_id} time.age").inner_text() == "2 min ago"


def _no_overflow(page: Any) -> None:
    w = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert w[0] <= w[1], f"{page.url}: {w[0]} px wide content in a {w[1]} px window"


def test_every_page_fits_a_phone_without_horizontal_scrolling(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, tmp_path: Path
) -> None:
    record = _publish(van, ops, face_box=LARGE_BOX)
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=3, is_mobile=True,
                              has_touch=True)  # fmt: skip
    page = ctx.new_page()
    with screenshot_on_failure(page, tmp_path):
        page.goto(console.url + "/login")
        _no_overflow(page)
        _login(page, console, "sgt-sup")
        pages = ["/alerts", f"/alerts/{record.alert_id}", "/fleet", f"/fleet/{van.device_id}",
                 "/deployments", f"/deployments/{van.device_id}/{DEP}"]
        for path in pages:
            page.goto(console.url + path)
            page.locator("body[data-live='1']").wait_for()
            _no_overflow(page)
            if path == "/alerts":  # the queue as cards
                row = page.locator(f"#alert-{record.alert_id}")
                assert row.evaluate("r => getComputedStyle(r).display") == "grid"
            if path.startswith("/alerts/"):
                page.wait_for_function(LOADED_JS)
                for f in page.evaluate(FACES_JS):
                    assert min(f["w"], f["h"]) >= 256 and f["w"] <= PHONE["width"], f
                # The decisions under the thumb: in the lower part of the screen, big.
                boxes = page.evaluate("""() => Array.from(
                    document.querySelectorAll('#focus .decide-buttons button'), b => {
                        const r = b.getBoundingClientRect();
                        return {y: r.y, height: r.height, width: r.width}; })""")
                assert len(boxes) == 3
                for box in boxes:
                    assert box["y"] >= PHONE["height"] * 0.6, box
                    assert box["y"] + box["height"] <= PHONE["height"], box
                    assert box["height"] >= 44 and box["width"] >= 88, box
        auditor = ctx.new_page()
        _login(auditor, console, "aud-1", then="/audit")
        for path in ("/audit", f"/audit/{van.device_id}"):
            auditor.goto(console.url + path)
            auditor.locator("body[data-live='1']").wait_for()
            _no_overflow(auditor)
    ctx.close()


def test_the_main_pages_have_no_serious_accessibility_violations(
    console: ConsoleServer, van: Van, ops: httpx.Client, browser: Any, tmp_path: Path
) -> None:
    axe_sync = pytest.importorskip("axe_playwright_python.sync_playwright")
    axe = axe_sync.Axe()  # axe-core bundled in the package: nothing fetched at run time
    record = _publish(van, ops, face_box=LARGE_BOX)
    problems: list[str] = []

    def check(page: Any, label: str) -> None:
        result = axe.run(page)
        for v in result.response["violations"]:
            if v["impact"] in ("serious", "critical"):
                nodes = "; ".join(" ".join(n["target"]) for n in v["nodes"][:3])
                problems.append(f"{label}: {v['id']} ({v['impact']}): {v['help']} at {nodes}")

    alert = f"/alerts/{record.alert_id}"
    every = ("/alerts", alert, "/fleet", "/deployments", f"/deployments/{van.device_id}/{DEP}",
             "/audit")  # fmt: skip
    for viewport, paths in (({"width": 1280, "height": 900}, every), (PHONE, ("/alerts", alert))):
        page = browser.new_page(viewport=viewport)
        with screenshot_on_failure(page, tmp_path):
            page.goto(console.url + "/login")
            check(page, f"/login {viewport['width']}")
            _login(page, console, "sgt-sup")
            for path in paths:
                page.goto(console.url + path)
                page.locator("body[data-live='1']").wait_for()
                check(page, f"{path} {viewport['width']}")
        page.close()
    assert not problems, "\n".join(problems)
