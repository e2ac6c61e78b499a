"""The console over HTTP: logins, roles, CSRF, the rate limit, /metrics, adjudications.

Real parts: ``edge console serve`` as a process, a real mosquitto with mutual TLS, alerts
from the device's real publisher, adjudications verified by the device's real code.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker
from tests.fixtures.browser import ConsoleServer, Van, csrf_of
from tests.fixtures.wait import wait_until


@pytest.fixture(scope="module")
def console(shared_broker: Broker,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleServer]:  # fmt: skip
    """One console for the module, over HTTPS (each test uses its own users and vans)."""
    server = ConsoleServer(shared_broker, tmp_path_factory.mktemp("console"), https=True)
    server.add_user("pc-ops", "operator", cli=True)
    for name, role in (("sgt-sup", "supervisor"), ("aud-1", "auditor"),
                       ("pc-locked", "operator"), ("pc-out", "operator")):
        server.add_user(name, role)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def van(shared_broker: Broker, console: ConsoleServer, tmp_path: Path,
        request: pytest.FixtureRequest) -> Iterator[Van]:  # fmt: skip
    v = Van(shared_broker, tmp_path / "van", f"van-{request.node.name[5:25].replace('_', '-')}",
            console.signing.public)
    v.start()
    yield v
    v.stop()


def test_every_page_and_call_needs_a_login(console: ConsoleServer) -> None:
    anon = httpx.Client(base_url=console.url, timeout=10, verify=console.verify)
    alert = "/alerts/01a24c64-95fe-7a5c-84df-8b09ce2dde6a"
    for path in ("/", "/alerts", alert, "/fleet", "/deployments", "/audit"):
        r = anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/login", path
    for path in ("/events", "/fragments/alert/x", "/fragments/alert-panel/x",
                 "/fragments/alert-banner", "/images/crop/x.jpg", "/images/reference/d/s/1.jpg",
                 "/metrics"):  # fmt: skip
        assert anon.get(path).status_code == 401, path
    assert anon.post("/api/alerts/x/adjudicate", json={"decision": "confirmed"}).status_code == 401
    page = anon.get("/login")
    assert page.status_code == 200 and "Content-Security-Policy" in page.headers


def test_roles_decide_what_each_user_sees(console: ConsoleServer) -> None:
    ops, sup, aud = (console.session(n) for n in ("pc-out", "sgt-sup", "aud-1"))
    assert ops.get("/alerts").status_code == 200
    assert ops.get("/fleet").status_code == 403
    assert ops.get("/audit").status_code == 403
    assert sup.get("/fleet").status_code == 200 and sup.get("/deployments").status_code == 200
    assert aud.get("/audit").status_code == 200 and aud.get("/alerts").status_code == 403
    for path in ("/alerts/01a24c64-95fe-7a5c-84df-8b09ce2dde6a", "/fragments/alert-banner",
                 "/fragments/alert-panel/x", "/images/reference/d/s/1.jpg"):  # fmt: skip
        assert aud.get(path).status_code == 403, path  # an auditor sees no alert
    assert ops.get("/alerts/01a24c64-95fe-7a5c-84df-8b09ce2dde6a").status_code == 404
    assert ops.get("/alerts/not-an-id").status_code == 404
    # Logging out ends the session on the server, not just in the browser.
    token = csrf_of(ops)
    cookie = ops.cookies.get("console_session")
    assert ops.post("/logout", data={"csrf": token}).status_code == 303
    stale = httpx.Client(base_url=console.url, cookies={"console_session": cookie or ""},
                         verify=console.verify)
    assert stale.get("/alerts").status_code == 303


def test_wrong_passwords_are_refused_then_rate_limited(console: ConsoleServer) -> None:
    client = httpx.Client(base_url=console.url, timeout=10, verify=console.verify)
    codes = []
    for _ in range(7):
        token = client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
        codes.append(client.post("/login", data={"name": "pc-locked", "password": "wrong-one!!",
                                                 "csrf": token}).status_code)
    assert codes[:5] == [401] * 5 and codes[5:] == [429, 429]
    # Even the right password is refused while the limit holds.
    token = client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/login", data={"name": "pc-locked", "password": "correct horse battery",
                                    "csrf": token})
    assert r.status_code == 429
    # A login form without its CSRF token is refused.
    assert client.post("/login", data={"name": "sgt-sup", "password": "x"}).status_code == 403
    forged = {"name": "sgt-sup", "password": "x", "csrf": "forged"}
    assert client.post("/login", data=forged).status_code == 403


def test_adjudication_is_signed_reaches_the_van_and_comes_back_through_its_audit(
    console: ConsoleServer, van: Van
) -> None:
    record = make_record(van.device_id, subject_id="S-42")
    van.publisher.enqueue_alert(record)
    ops = console.session("pc-ops")
    assert wait_until(lambda: record.alert_id in ops.get("/alerts").text)
    url = f"/api/alerts/{record.alert_id}/adjudicate"
    # Without the CSRF token: refused, nothing sent.
    assert ops.post(url, json={"decision": "confirmed"}).status_code == 403
    assert ops.post(url, json={"decision": "confirmed"},
                    headers={"X-CSRF-Token": "forged"}).status_code == 403
    r = ops.post(url, json={"decision": "rejected"}, headers={"X-CSRF-Token": csrf_of(ops)})
    assert r.status_code == 200, r.text
    # The van records the accepted decision, and only it: a refused one, had it been sent,
    # would have come first (one client, one topic, QoS 1: in order), not after a sleep.
    assert wait_until(lambda: len(van.recorded) >= 1)
    assert [(e["officer"], e["decision"]) for e in van.recorded] == [("pc-ops", "rejected")]
    # The van's audit entry comes back, verified, and shows on the alert.
    assert wait_until(lambda: "device recorded: <b>rejected</b>" in ops.get(
        f"/fragments/alert/{record.alert_id}").text)
    # Each crop view is audited with who.
    assert ops.get(f"/images/crop/{record.alert_id}.jpg").content == record.face_jpeg
    aud = console.session("aud-1")
    trail = aud.get("/audit").text
    assert "crop_viewed" in trail and "adjudication_sent" in trail
    assert "entries, hash-chained, verified" in trail
    assert '<span class="badge ok">ok</span>' in trail


def test_metrics_in_prometheus_format(console: ConsoleServer, van: Van) -> None:
    sup = console.session("sgt-sup")

    def value(name: str) -> float:
        for line in sup.get("/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} missing")

    before = value("console_alerts_received_total")
    van.publisher.enqueue_alert(make_record(van.device_id))
    assert wait_until(lambda: value("console_alerts_received_total") == before + 1)
    assert value("console_devices_online") >= 1
    assert value("console_ingest_latency_seconds_count") == before + 1
    (row,) = [d for d in sup.get("/api/devices").json() if d["device_id"] == van.device_id]
    assert (row["state"], row["stale"]) == ("online", False)  # its heartbeat is recent
    assert console.session("pc-ops").get("/api/devices").status_code == 403
    assert console.session("pc-ops").get("/metrics").status_code == 403
    # Prometheus scrapes with the configured bearer token, without a login.
    anon = httpx.Client(base_url=console.url, timeout=10, verify=console.verify)
    ok = anon.get("/metrics", headers={"Authorization": f"Bearer {console.metrics_token}"})
    assert ok.status_code == 200 and "console_alerts_received_total" in ok.text
    assert ok.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert anon.get("/metrics", headers={"Authorization": "Bearer wrong-token-0000000"}
                    ).status_code == 401


def test_user_add_refuses_a_bad_role_a_short_password_and_a_duplicate(
    console: ConsoleServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from edge.cli import main

    def edge(*args: str, stdin: str = "") -> tuple[int, str]:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    add = ("console", "user", "add")
    cfg = ("--config", str(console.config), "--password-stdin")
    code, err = edge(*add, "x", "--role", "admin", *cfg, stdin="long enough pw\n")
    assert code == 2 and "invalid choice" in err
    code, err = edge(*add, "newbie", "--role", "auditor", *cfg, stdin="short\n")
    assert (code, err.strip()) == (2, "edge: the password must have at least 10 characters")
    code, err = edge(*add, "pc-ops", "--role", "auditor", *cfg, stdin="long enough pw\n")
    assert code == 2 and "exists" in err and "Traceback" not in err
    code, err = edge(*add, "bad name!", "--role", "auditor", *cfg, stdin="long enough pw\n")
    assert code == 2 and "user name" in err
    bad = console.dir / "bad.toml"
    bad.write_text('[console]\nport = "x"\nkey_file = "/nonexistent/console.key"\n')
    code, err = edge("console", "serve", "--config", str(bad))
    assert code == 78 and err.splitlines() == [
        "edge: [console] port: must be an integer in 0..65535",
        "edge: [console] key_file: /nonexistent/console.key does not exist",
        "edge: [console] signing_key: required",
        "edge: [console] device_keys: required",
    ]


def test_https_from_the_config_and_plain_http_only_on_loopback(
    console: ConsoleServer, tmp_path: Path
) -> None:
    from edge.console.config import from_dict
    from edge.errors import ConfigError

    key = tmp_path / "k"
    key.write_text("x")
    base = {"key_file": str(key), "signing_key": str(key)}
    with pytest.raises(ConfigError, match="plain HTTP only on loopback"):
        from_dict({"console": {**base, "listen": "0.0.0.0"}}, tmp_path)
    with pytest.raises(ConfigError, match="mutual TLS is required"):
        from_dict({"console": base, "mqtt": {"host": "broker.example"}}, tmp_path)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict({"console": {**base, "passwd": "x"}}, tmp_path)
    # This module's console runs with the certificate from its config.
    assert console.url.startswith("https://")
    client = httpx.Client(base_url=console.url, verify=console.verify, timeout=10)
    token = client.get("/login").text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/login", data={"name": "sgt-sup", "password": "correct horse battery",
                                    "csrf": token})
    assert r.status_code == 303
    cookie = r.headers["set-cookie"]
    assert "console_session=" in cookie and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert client.get("/fleet").status_code == 200
    with pytest.raises(httpx.HTTPError):
        httpx.get(console.url.replace("https", "http") + "/healthz", timeout=3)
    with pytest.raises(httpx.HTTPError):  # a client that does not trust the CA
        httpx.get(console.url + "/healthz", timeout=3)


def test_deployments_and_the_report_page_from_the_vans_signed_audit_entries(
    console: ConsoleServer, van: Van
) -> None:
    import json

    window = {"start": "2026-11-22T09:00:00Z", "end": "2026-11-22T17:00:00Z"}
    van.audit.append("watchlist_loaded", deployment_id="DEP-7", bundle_id="b" * 32,
                     watchlist_size=12)  # fmt: skip
    van.audit.append("armed", deployment_id="DEP-7", location="Market <Square>",
                     window_start=window["start"], window_end=window["end"], threshold=0.6)
    sup = console.session("sgt-sup")
    assert wait_until(lambda: "DEP-7" in sup.get("/deployments").text)
    page = sup.get("/deployments").text
    assert "Market &lt;Square&gt;" in page and "Market <Square>" not in page
    report = f"/deployments/{van.device_id}/DEP-7"
    assert "has not ended" in sup.get(report).text
    # The unsigned deployment message (what a broker could forge) changes nothing.
    forged = {"state": "ended", "deployment_id": "DEP-7", "alerts": 1000, "faces_processed": 1,
              "adjudications": {"confirmed": 1000, "rejected": 0, "not_stopped": 0}}
    van.publisher.enqueue("dep-forged", "deployment", json.dumps(forged).encode(), retain=True)
    summary = {"deployment_id": "DEP-7", "bundle_id": "b" * 32, "device_id": van.device_id,
               "location": "Market <Square>", "window": window, "armed_at": window["start"],
               "ended_at": window["end"], "end_reason": "end_command", "watchlist_size": 12,
               "threshold": 0.6, "frames": 9, "faces_processed": 4321, "tracks": 8,
               "alerts": 5, "adjudications": {"confirmed": 2, "rejected": 3, "not_stopped": 0}}
    van.audit.append("deployment_summary", summary=summary)
    assert wait_until(lambda: "4321" in sup.get(report).text)
    text = sup.get(report).text
    assert "rejected (false alerts): 60 %" in text and "<svg" in text
    assert "1000" not in text and "signed audit chain" in text
    assert console.session("aud-1").get(report).status_code == 200  # auditors read reports
    history = sup.get(f"/fleet/{van.device_id}")
    assert history.status_code == 200 and "Status history" in history.text
    assert sup.get("/fleet/no-such-van").status_code == 404
    assert console.session("pc-ops").get(report).status_code == 403


def test_filter_by_device_and_legal_hold(console: ConsoleServer, van: Van) -> None:
    record = make_record(van.device_id)
    van.publisher.enqueue_alert(record)
    ops, sup = console.session("pc-ops"), console.session("sgt-sup")
    row = f'id="alert-{record.alert_id}"'  # the queue's row (every page's banner names it)
    assert wait_until(lambda: row in ops.get("/alerts").text)
    assert row in ops.get(f"/alerts?device={van.device_id}").text
    assert row not in ops.get("/alerts?device=some-other-van").text
    assert row not in ops.get("/alerts?deployment=another-deployment").text
    assert ops.get("/alerts?device=../etc").status_code == 400
    url = f"/api/alerts/{record.alert_id}/hold"
    assert sup.post(url, json={"on": True}).status_code == 403  # no CSRF token
    assert ops.post(url, json={"on": True},
                    headers={"X-CSRF-Token": csrf_of(ops)}).status_code == 403  # operator
    r = sup.post(url, json={"on": True}, headers={"X-CSRF-Token": csrf_of(sup)})
    assert r.status_code == 200 and r.json()["legal_hold"] is True
    assert "on legal hold" in sup.get(f"/fragments/alert/{record.alert_id}").text


def test_a_broken_audit_chain_is_raised_on_every_page_for_auditors(
    console: ConsoleServer, van: Van
) -> None:
    import json

    from edge import signing
    from edge.watchlist.audit import SIG_CONTEXT, entry_hash

    entry = van.audit.append("armed", deployment_id="D-9")
    forged = {**entry, "seq": entry["seq"] + 1, "event": "watchlist_shredded"}  # no real link
    # Signed with the van's own key (a forger without it is refused unstored: test_console_
    # signed.py), e.g. a re-signed old copy of the card: the chain breaks.
    forged["hash"] = entry_hash(forged)
    forged["sig"] = signing.sign(van.signing_key, SIG_CONTEXT, forged["hash"].encode())
    van.publisher.enqueue("forged", "audit", json.dumps(forged).encode())
    aud, ops = console.session("aud-1"), console.session("pc-ops")
    def banner(client: httpx.Client, path: str) -> str:
        text = client.get(path).text
        if 'id="chain-alarm"' not in text:
            return ""
        return text.split('id="chain-alarm"')[1].split("</p>")[0]

    assert wait_until(lambda: van.device_id in banner(aud, "/deployments"))
    page = aud.get("/audit").text
    assert f'id="chain-{van.device_id}"' in page and "prev_hash does not match" in page
    assert banner(ops, "/alerts") == ""  # operators are not auditors
    text = aud.get("/metrics").text
    assert "console_audit_chains_broken 1" in text.splitlines()
