"""Screenshots of the officer's view from the demo: ``edge demo`` (the real daemon on the
bundled clip, its real alerts and the demo subject's reference images, CC-BY 4.0, Intel),
Debian's chromium at a control-room desktop (1280 x 900) and a phone (390 x 844).

    nice .venv/bin/python benchmarks/officer_screenshots.py [--out docs]

writes ``console-officer-{alert,queue}-{desktop,phone}.png``. It lets the demo run until
its first alert is stale (``[console] alert_stale_s``, 120 s), decides one alert so the
queue shows the van's acknowledgement, and leaves the newest undecided at the top. Takes
about four minutes. No LFW image is involved.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


def _start_demo(work: Path) -> tuple[subprocess.Popen[str], str, str, str]:
    proc = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--workdir", str(work),
                             "--seconds", "900"], stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        print(line, end="", file=sys.stderr)
        m = re.search(r"console: (http://127\.0\.0\.1:\d+)/ +\(login: (\S+) / (\S+);", line)
        if m:
            return proc, m.group(1), m.group(2), m.group(3)
    proc.kill()
    raise SystemExit("the demo did not print its console's URL")


def _login(page: Any, url: str, user: str, password: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=name]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    page.locator("body[data-live='1']").wait_for()


def _settle(page: Any) -> None:
    page.locator("body[data-live='1']").wait_for()
    page.wait_for_function("""() => Array.from(document.querySelectorAll('img'))
        .every(i => i.complete || i.loading === 'lazy')""")
    page.wait_for_timeout(500)


def main() -> int:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="officer-shots-") as tmp:
        proc, url, user, password = _start_demo(Path(tmp) / "demo")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                desk = browser.new_page(viewport=DESKTOP)
                _login(desk, url, user, password)
                rows = desk.locator("tr.alert")
                rows.first.wait_for(timeout=300_000)
                # the oldest alert turns stale; decide the second oldest (the van answers)
                desk.locator("tr.alert.stale").first.wait_for(timeout=400_000)
                while rows.count() < 4:
                    time.sleep(1)
                second = rows.nth(rows.count() - 2)
                decided = second.get_attribute("data-alert-id")
                second.locator("button[data-decision=rejected]").click()
                desk.locator(f"#alert-{decided} .device-record").wait_for(timeout=60_000)
                newest = desk.locator("tr.alert[data-decided='0']").first.get_attribute(
                    "data-alert-id")
                for name, page in (("desktop", desk),
                                   ("phone", browser.new_page(viewport=PHONE,
                                                              device_scale_factor=2,
                                                              is_mobile=True))):  # fmt: skip
                    if name == "phone":
                        _login(page, url, user, password)
                    page.goto(url + "/alerts")
                    _settle(page)
                    if name == "phone":  # the queue's cards, below the alert at its top
                        page.evaluate("document.getElementById('alerts').scrollIntoView()")
                    page.screenshot(path=str(args.out / f"console-officer-queue-{name}.png"),
                                    full_page=name == "desktop")  # fmt: skip
                    page.goto(url + f"/alerts/{newest}")
                    _settle(page)
                    page.screenshot(path=str(args.out / f"console-officer-alert-{name}.png"))
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    for f in sorted(args.out.glob("console-officer-*.png")):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
