"""The console verifies the devices' signatures on alerts and audit entries (issue 13, items
4 and 9): a forgery is refused, counted and written to the console's trail; a forged audit
entry never breaks the genuine chain; the real ingest client against a real mosquitto whose
ACL lets a control-room certificate write alerts (a compromised broker) stores only the
van's genuine alert."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import signing
from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.ingest import Ingest
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import seal_alert
from edge.delivery.outbox import Outbox
from edge.delivery.publish import BrokerSettings, Publisher
from edge.watchlist.audit import AuditLog, canonical, entry_hash
from tests.fixtures.alerts import make_record
from tests.fixtures.forgery import compromised_broker, forgeries

KEY = Ed25519PrivateKey.generate()
PUBLIC = {"van-1": KEY.public_key()}


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[Handler]:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    yield Handler(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(),
                  device_keys=PUBLIC)  # fmt: skip
    store.close()


def _genuine(**kw: Any) -> bytes:
    return seal_alert(encode_alert(make_record("van-1", **kw)), time.time(), KEY)


def test_forged_alerts_are_refused_counted_and_on_the_trail(handler: Handler) -> None:
    genuine = _genuine()
    forged = forgeries(genuine)
    for name, payload in forged.items():
        assert handler.handle("lfr/van-1/alerts", payload) == "refused", name
    assert handler.handle("lfr/van-1/alerts", genuine) == "stored"
    assert [r["alert_id"] for r in handler.store.alerts()] == [json.loads(genuine)["alert_id"]]
    m = handler.metrics
    assert m.get("console_messages_unverified_total", kind="alerts", reason="unsigned") == 1
    assert m.get("console_messages_unverified_total", kind="alerts", reason="bad_signature") == 4
    assert m.get("console_messages_unverified_total", kind="alerts", reason="not_canonical") == 1
    trail = [r for r in handler.store.console_log() if r["event"] == "unverified_refused"]
    assert {json.loads(r["detail"])["reason"] for r in trail} == {
        "unsigned", "bad_signature", "not_canonical"}  # at most one line a minute per reason
    assert handler.store.verify_log()[1] is None
    # A van the console has no key for is refused too, never stored unverified.
    other = seal_alert(encode_alert(make_record("van-2")), time.time(), KEY)
    assert handler.handle("lfr/van-2/alerts", other) == "refused"
    assert m.get("console_messages_unverified_total", kind="alerts",
                 reason="unknown_device") == 1  # fmt: skip


def _entries(path: Path, key: Ed25519PrivateKey | None, n: int) -> list[bytes]:
    sent: list[bytes] = []
    log = AuditLog(path, publish=lambda e: sent.append(json.dumps(e, sort_keys=True).encode()),
                   signing_key=key)  # fmt: skip
    for i in range(n):
        log.append("purge", store="outbox", count=i, msg_ids=[])
    return sent


def test_a_forged_audit_entry_is_refused_and_never_breaks_the_chain(
    handler: Handler, tmp_path: Path
) -> None:
    entries = _entries(tmp_path / "audit.log", KEY, 4)
    for e in entries[:2]:
        assert handler.handle("lfr/van-1/audit", e) == "stored"
    third = json.loads(entries[2])
    forged = dict(third, count=999)
    forged["hash"] = entry_hash(forged)  # recomputed, but the signature is over the old hash
    stripped = {k: v for k, v in forged.items() if k != "sig"}
    other_key = dict(forged, sig=signing.sign(Ed25519PrivateKey.generate(),
                                              b"lfr-edge audit v1\x00", forged["hash"].encode()))
    for bad in (forged, stripped, other_key, dict(third, count=999)):
        assert handler.handle("lfr/van-1/audit", canonical(bad)) == "refused"
    (chain,) = handler.store.audit.chains()
    assert (chain["state"], chain["verified_seq"]) == ("ok", 2)  # not broken by the forger
    for e in entries[2:]:
        assert handler.handle("lfr/van-1/audit", e) == "stored"
    (chain,) = handler.store.audit.chains()
    assert (chain["state"], chain["verified_seq"]) == ("ok", 4)
    m = handler.metrics
    assert m.get("console_messages_unverified_total", kind="audit", reason="bad_signature") == 2
    assert m.get("console_messages_unverified_total", kind="audit", reason="unsigned") == 1
    assert m.get("console_messages_unverified_total", kind="audit", reason="bad_hash") == 1


def test_an_unsigned_audit_entry_is_refused(handler: Handler, tmp_path: Path) -> None:
    (entry,) = _entries(tmp_path / "old.log", None, 1)
    assert handler.handle("lfr/van-1/audit", entry) == "refused"
    assert handler.store.audit.chains() == []


def test_the_real_ingest_stores_only_the_genuine_alert_from_a_compromised_broker(
    handler: Handler, broker_factory: Any, tmp_path: Path
) -> None:
    broker = compromised_broker(broker_factory)
    cr = broker.console()
    ingest = Ingest(BrokerSettings(broker.host, broker.port, cr.ca, cr.cert, cr.key), handler,
                    handler.metrics, client_id="console-forgery")  # fmt: skip
    ingest.start()
    c = broker.creds("van-1")
    ob = Outbox(tmp_path / "ob.db", os.urandom(32))
    van = Publisher("van-1", BrokerSettings(broker.host, broker.port, c.ca, c.cert, c.key), ob,
                    drain_interval_s=0.05, signing_key=KEY)  # fmt: skip
    try:
        assert ingest.wait_ready(10), ingest.last_error
        record = make_record("van-1", subject_id="S-GENUINE")
        attacker = broker.client("control-room-tools")
        forged = forgeries(_genuine())
        for payload in forged.values():
            attacker.publish("lfr/van-1/alerts", payload, qos=1).wait_for_publish(5)
        van.enqueue_alert(record)
        van.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (
            not handler.store.alerts()
            or handler.metrics.get("console_messages_refused_total", kind="alerts") < len(forged)
        ):
            time.sleep(0.05)
        assert [r["alert_id"] for r in handler.store.alerts()] == [record.alert_id]
        assert handler.metrics.get("console_messages_refused_total",
                                   kind="alerts") == len(forged)  # fmt: skip
    finally:
        van.stop(flush_timeout=0)
        ob.close()
        ingest.stop()


def test_the_audit_page_gives_the_command_that_checks_the_devices_copy(
    handler: Handler, tmp_path: Path
) -> None:
    import re

    from edge.cli import main
    from edge.console.app import templates

    path = tmp_path / "audit.log"
    for e in _entries(path, KEY, 5):
        assert handler.handle("lfr/van-1/audit", e) == "stored"
    (chain,) = handler.store.audit.chains()
    html = templates().get_template("audit_device.html").render(
        chain=chain, entries=handler.store.audit.entries("van-1"), user=None, broken_chains=[])
    command = re.search(r'id="verify-command">edge audit verify audit.log --device-key '
                        r"van-1.signing.pub --last-seq (\d+) --last-hash ([0-9a-f]{64})<", html)
    assert command is not None
    pub = tmp_path / "van-1.signing.pub"
    pub.write_bytes(signing.public_pem(KEY.public_key()))
    args = ["audit", "verify", str(path), "--device-key", str(pub), "--last-seq",
            command[1], "--last-hash", command[2]]  # fmt: skip
    assert command[1] == "5" and main(args) == 0
    path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:4]))
    assert main(args) == 6  # the device's copy lost its last line


def test_a_flood_under_invented_device_ids_writes_a_bounded_trail(handler: Handler) -> None:
    payload = forgeries(_genuine())["unsigned, the attacker's face"]
    for i in range(200):
        assert handler.handle(f"lfr/fake-{i}/alerts", payload, received_at=1000.0) == "refused"
    trail = [r for r in handler.store.console_log(500) if r["event"] == "unverified_refused"]
    assert len(trail) == 30  # UNVERIFIED_TRAIL_PER_MINUTE; the rest are counted only
    assert handler.metrics.get("console_messages_refused_total", kind="alerts") == 200
