"""Console ingest benchmark: simulated devices -> real mosquitto -> ``edge console serve`` -> a
real browser page; alerts stored, broker-to-page latency, the console's memory.

Every part is real but the devices: ``--devices`` paho clients (each with its own
certificate from the dev CA, so the broker's ACL applies) publish the real alert JSON
(:func:`edge.delivery.alert.encode_alert`, stamped with ``published_at`` and signed with the
device's key at publish time, :func:`edge.delivery.alert_sign.seal_alert`),
retained status, stats every 10 s and a real hash-chained audit log. The console runs as
its own process on SQLite (WAL); chromium (Debian's, headless) holds the alert queue open
and a MutationObserver stamps the moment each alert's row appears. Latency per alert is
row-on-the-page time minus publish time (one host, one clock).

    nice .venv/bin/python benchmarks/console_ingest.py --devices 50 --per-minute 1000 \\
        --seconds 60 [--postgres] [--screenshots docs/] [--json]

``--screenshots DIR`` also adjudicates a few alerts, ends two deployments (signed summaries),
imports reference images and breaks one device's audit chain, then saves the four pages
as ``DIR/console-{alerts,fleet,deployments,audit}.png`` and the report page.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge import signing  # noqa: E402
from edge.delivery.alert import encode_alert, rfc3339  # noqa: E402
from edge.delivery.alert_sign import seal_alert  # noqa: E402
from edge.dev.devbroker import CONSOLE_CN, DevBroker, free_port  # noqa: E402
from edge.watchlist.audit import AuditLog  # noqa: E402
from edge.watchlist.keys import init_device_key, init_signing_key  # noqa: E402
from tests.fixtures.alerts import make_record  # noqa: E402
from tests.fixtures.browser import CHROMIUM_ARGS  # noqa: E402

PASSWORD = "benchmark password"
OBSERVER = """
window.__seen = {};
new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes)
  if (n.dataset && n.dataset.alertId && !(n.dataset.alertId in window.__seen))
    window.__seen[n.dataset.alertId] = Date.now(); })
  .observe(document.querySelector('#alerts tbody'), {childList: true});
"""


def _device(broker: DevBroker, device_id: str) -> mqtt.Client:
    creds = broker.client(device_id)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(broker.ca), certfile=str(creds.cert), keyfile=str(creds.key))
    c.will_set(f"lfr/{device_id}/status", json.dumps(
        {"state": "offline", "armed": True, "reason": "connection lost",
         "device_id": device_id}), qos=1, retain=True)  # fmt: skip
    c.connect(broker.host, broker.port, keepalive=30)
    c.loop_start()
    return c


def _console(work: Path, broker: DevBroker, references: bool,
             database: str) -> tuple[subprocess.Popen[bytes], str, Path]:  # fmt: skip
    keys = work / "keys"
    signing = init_signing_key(keys)
    key = init_device_key(keys, "console")
    if references:  # imported when the console starts
        _references(work, signing.private)
    cr = broker.client(CONSOLE_CN)
    port = free_port()
    cfg = work / "console.toml"
    (work / "device-keys").mkdir(exist_ok=True)  # each van's .signing.pub, read as they come
    cfg.write_text(f"""[console]
database = "{database}"
port = {port}
key_file = "{key.private}"
signing_key = "{signing.private}"
device_keys = "{work / 'device-keys'}"
references_dir = "{work / 'references'}"
[mqtt]
host = "{broker.host}"
port = {broker.port}
ca = "{broker.ca}"
client_cert = "{cr.cert}"
client_key_file = "{cr.key}"
client_id = "bench-console"
""")
    edge = [sys.executable, "-m", "edge"]
    for name, role in (("sgt-bench", "supervisor"), ("aud-bench", "auditor")):
        subprocess.run([*edge, "console", "user", "add", name, "--role", role, "--config",
                        str(cfg), "--password-stdin"], input=(PASSWORD + "\n").encode(),
                       check=True, capture_output=True)  # fmt: skip
    log = (work / "console.log").open("ab")
    proc = subprocess.Popen([*edge, "console", "serve", "--config", str(cfg)], stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).text == "ok":
                return proc, url, signing.private
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("the console did not start; see " + str(work / "console.log"))


def _rss(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


def _login(page: Any, url: str, name: str) -> None:
    page.goto(url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=50)
    ap.add_argument("--per-minute", type=int, default=1000, help="alerts per minute in total")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--screenshots", type=Path, default=None, metavar="DIR")
    ap.add_argument("--postgres", action="store_true",
                    help="store in a PostgreSQL server started for the run (default SQLite)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.postgres:
        from tests.fixtures.postgres import running_postgres

        with running_postgres() as pg:
            pg.admin("CREATE DATABASE bench")
            return _bench(args, pg.url("bench"))
    return _bench(args, None)


def _bench(args: argparse.Namespace, database: str | None) -> int:

    work = Path(tempfile.mkdtemp(prefix="console-bench-"))
    broker = DevBroker(work / "broker")
    broker.start()
    try:
        proc, url, _signing = _console(work, broker, args.screenshots is not None,
                                       database or f"sqlite:///{work / 'console.db'}")
    except BaseException:
        broker.stop()
        raise
    try:
        return _run(args, work, broker, proc, url)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(15)
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: Path, broker: DevBroker, proc: subprocess.Popen[bytes],
         url: str) -> int:  # fmt: skip
    from playwright.sync_api import sync_playwright

    ids = [f"van-{i:02d}" for i in range(args.devices)]
    devices = {d: _device(broker, d) for d in ids}
    audits: dict[str, AuditLog] = {}
    keys = {d: signing.private_from_pem(signing.generate(work / "device-keys", d)[0].read_bytes())
            for d in ids}  # fmt: skip
    for d, c in devices.items():
        c.publish(f"lfr/{d}/status", json.dumps({"state": "online", "armed": True,
                  "reason": "armed", "device_id": d, "deployment_id": "dep-2026-11-22",
                  "at": rfc3339(time.time())}), qos=1, retain=True)  # fmt: skip

        def send(entry: dict[str, Any], d: str = d, c: mqtt.Client = c) -> None:
            c.publish(f"lfr/{d}/audit", json.dumps(entry, sort_keys=True), qos=1)

        audits[d] = AuditLog(work / "audit" / f"{d}.log", publish=send, signing_key=keys[d])
        audits[d].append("daemon_start", device_id=d)
    published: dict[str, float] = {}
    lock = threading.Lock()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        # The observer is injected by Playwright: allow it past the page's CSP (only here).
        page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
        _login(page, url, "sgt-bench")
        page.locator("body[data-live='1']").wait_for()
        page.evaluate(OBSERVER)
        interval = 60.0 / args.per_minute
        start = time.monotonic()
        n = 0
        next_stats = 0.0
        while time.monotonic() - start < args.seconds:
            d = ids[n % len(ids)]
            record = make_record(d, subject_id=f"S-{n % 40:04d}", track_id=n)
            payload = encode_alert(record)
            now = time.time()
            with lock:
                published[record.alert_id] = now
            devices[d].publish(f"lfr/{d}/alerts", seal_alert(payload, now, keys[d]), qos=1)
            if n % 25 == 0:
                audits[d].append("alert_queued", alert_id=record.alert_id)
            if time.monotonic() >= next_stats:
                next_stats = time.monotonic() + 10
                for dd, c in devices.items():
                    c.publish(f"lfr/{dd}/stats", json.dumps(
                        {"fps": 12.0, "camera": "ok", "outbox_pending": 0, "faces_seen": n,
                         "device_id": dd, "at": rfc3339(time.time())}), qos=0)  # fmt: skip
            n += 1
            target = start + n * interval
            time.sleep(max(0.0, target - time.monotonic()))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen = page.evaluate("Object.keys(window.__seen).length")
            if seen >= len(published):
                break
            time.sleep(0.5)
        seen_at: dict[str, float] = page.evaluate("window.__seen")
        mem = _rss(proc.pid)
        metrics = page.evaluate("fetch('/metrics').then(r => r.text())")
        lat = sorted(seen_at[a] / 1000.0 - t for a, t in published.items() if a in seen_at)
        received = next((float(line.split()[1]) for line in metrics.splitlines()
                         if line.startswith("console_alerts_received_total ")), 0.0)
        buckets = {line.split('le="')[1].split('"')[0]: float(line.split()[-1])
                   for line in metrics.splitlines()
                   if line.startswith("console_ingest_latency_seconds_bucket")}
        total = buckets.get("+Inf", 0.0) or 1.0
        result = {
            "database": "postgresql" if args.postgres else "sqlite",
            "devices": args.devices, "alerts_published": len(published),
            "alerts_stored": int(received), "alerts_on_page": len(lat),
            "seconds": args.seconds, "per_minute": args.per_minute,
            "latency_p50_s": round(lat[len(lat) // 2], 3) if lat else None,
            "latency_p95_s": round(lat[int(len(lat) * 0.95)], 3) if lat else None,
            "latency_max_s": round(lat[-1], 3) if lat else None,
            "console_rss_mb": mem.get("VmRSS"), "console_peak_rss_mb": mem.get("VmHWM"),
            "stored_within_s": {le: round(buckets.get(le, 0.0) / total, 3)
                                for le in ("0.1", "0.25", "0.5", "1")},
        }  # fmt: skip
        if args.screenshots is not None:
            _scenes(args.screenshots, page, browser, url, devices, audits)
        browser.close()
    for c in devices.values():
        c.loop_stop()
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


def _references(work: Path, signing_key: Path) -> None:
    from edge.delivery.alert import face_crop_jpeg
    from edge.watchlist.keys import load_device_public, load_signing_key
    from edge.watchlist.references import Reference, build_references
    from tests.fixtures.alerts import FACE_BOX, synthetic_frame

    face = face_crop_jpeg(synthetic_frame(seed=7), FACE_BOX)
    refs = build_references(load_signing_key(signing_key),
                            load_device_public(work / "keys" / "console.pub")[1],
                            deployment_id="dep-2026-11-22", bundle_id=secrets.token_hex(16),
                            window_end=time.time() + 3600,
                            subjects=[Reference(f"S-{i:04d}", "wanted_police", face)
                                      for i in range(40)])  # fmt: skip
    (work / "references").mkdir(exist_ok=True)
    (work / "references" / "bench.refs").write_bytes(refs)


def _scenes(out: Path, page: Any, browser: Any, url: str, devices: dict[str, mqtt.Client],
            audits: dict[str, AuditLog]) -> None:  # fmt: skip
    """Make the pages worth looking at, then photograph them."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(devices)
    for i, d in enumerate(names[:2]):  # deployments come from the vans' signed audit chain
        window = {"start": "2026-11-22T09:00:00Z", "end": "2026-11-22T15:00:00Z"}
        summary = {"deployment_id": f"dep-end-{i}", "device_id": d, "bundle_id": "b" * 32,
                   "location": f"High Street, site {i + 1}", "window": window,
                   "armed_at": window["start"], "ended_at": window["end"],
                   "watchlist_size": 412, "threshold": 0.6, "faces_processed": 18_342 + i,
                   "frames": 250_000, "tracks": 9_000, "alerts": 7 + i,
                   "adjudications": {"confirmed": 4, "rejected": 2 + i, "not_stopped": 1},
                   "end_reason": "window_ended"}  # fmt: skip
        audits[d].append("armed", deployment_id=f"dep-end-{i}", location=summary["location"],
                         window_start=window["start"], window_end=window["end"],
                         threshold=0.6)  # fmt: skip
        audits[d].append("deployment_summary", summary=summary)
    devices[names[-1]].publish(f"lfr/{names[-1]}/status", json.dumps(
        {"state": "offline", "armed": False, "reason": "stopped", "device_id": names[-1]}),
        qos=1, retain=True)  # fmt: skip
    bad = audits[names[3]]
    entry = bad.append("armed", deployment_id="dep-2026-11-22")
    forged = {**entry, "seq": entry["seq"] + 1, "event": "watchlist_shredded"}
    bad._seal(forged)  # signed by the van's own key (unsigned, the console refuses it unstored)
    devices[names[3]].publish(f"lfr/{names[3]}/audit", json.dumps(forged), qos=1)
    time.sleep(2)
    page.goto(url + "/alerts")
    for row in page.locator("tr.alert").all()[:3]:
        row.locator("button[data-decision=rejected]").click()
        time.sleep(0.3)
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(url + "/alerts")
    page.screenshot(path=str(out / "console-alerts.png"))
    for name in ("fleet", "deployments"):
        page.goto(url + "/" + name)
        page.screenshot(path=str(out / f"console-{name}.png"))
    page.goto(url + f"/deployments/{names[0]}/dep-end-0")
    page.screenshot(path=str(out / "console-report.png"), full_page=True)
    aud = browser.new_page(viewport={"width": 1400, "height": 900})
    _login(aud, url, "aud-bench")
    aud.goto(url + "/audit")
    aud.screenshot(path=str(out / "console-audit.png"))


if __name__ == "__main__":
    sys.exit(main())
