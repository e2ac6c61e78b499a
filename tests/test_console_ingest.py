"""Hostile device messages: refused or escaped, never a crash, never markup on a page.

The handler is the one the console's MQTT worker calls; here it is called directly with
what a broker would deliver, against a real SQLite store. The last test runs the real
ingest client against a real mosquitto with a shared subscription.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.console.app import templates
from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.ingest import Ingest, subscriptions
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import seal_alert
from edge.delivery.publish import BrokerSettings
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker
from tests.fixtures.wait import wait_until

DEVICE_KEYS = {d: Ed25519PrivateKey.generate() for d in ("van-1", "van-2")}
"""Each van's signing key; the console holds the public halves (``[console] device_keys``)."""
PUBLIC = {d: k.public_key() for d, k in DEVICE_KEYS.items()}


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[Handler]:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    yield Handler(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(),
                  device_keys=PUBLIC)  # fmt: skip
    store.close()


def _alert_bytes(device: str = "van-1", **kw: object) -> bytes:
    """An alert as the van publishes it: stamped and signed with its key."""
    return seal_alert(encode_alert(make_record(device, **kw)), time.time(), DEVICE_KEYS[device])  # type: ignore[arg-type]


def _with(payload: bytes, **changes: object) -> bytes:
    obj = json.loads(payload)
    obj.update(changes)
    return json.dumps(obj).encode()


STATUS = json.dumps({"state": "online", "armed": False, "reason": "ok",
                     "device_id": "van-1"}).encode()  # fmt: skip
HOSTILE = [
    ("alerts", b"not json"),
    ("alerts", b"[" * 200_000),
    ("alerts", b'{"a":' * 50 + b"1" + b"}" * 50),
    ("alerts", b'{"score": NaN}'),
    ("alerts", b"\xff\xfe\x00garbage"),
    ("alerts", b"{" + b'"x":"' + b"A" * 600_000 + b'"}'),
    ("alerts", _with(_alert_bytes(), subject_id="S-1\x1b[2J")),  # terminal escape
    ("alerts", _with(_alert_bytes(), subject_id="x" * 129)),
    ("alerts", _with(_alert_bytes(), device_id="van-2")),  # claims another van
    ("alerts", _with(_alert_bytes(), score=1e308)),
    ("alerts", _with(_alert_bytes(), face_jpeg_b64="/9j/" + "A" * 100)),
    ("alerts", _with(_alert_bytes(), extra={"deep": [[[[[[[[[[1]]]]]]]]]]})),
    ("status", b'{"state": "online", "armed": "yes"}'),
    ("status", json.dumps({"state": "online", "armed": True, "reason": "a\x00b"}).encode()),
    ("status", json.dumps({"state": "online", "device_id": "van-9"}).encode()),
    ("status", b'{"state": "online", "state": "offline"}'),  # duplicate key
    ("stats", b'{"fps": "fast"}'),
    ("stats", b'{"outbox_pending": -1}'),
    ("audit", b'{"seq": 0}'),
    ("audit", b'{"seq": 1, "event": "<script>", "at": "x", "prev_hash": "0", "hash": "0"}'),
]


@pytest.mark.parametrize(("kind", "payload"), HOSTILE, ids=range(len(HOSTILE)))
def test_each_hostile_message_is_refused_and_the_next_good_one_is_stored(
    handler: Handler, kind: str, payload: bytes
) -> None:
    assert handler.handle(f"lfr/van-1/{kind}", payload) == "refused"
    assert handler.metrics.get("console_messages_refused_total", kind=kind) == 1
    assert handler.store.alerts() == [] and handler.store.fleet.devices() == []
    assert handler.handle("lfr/van-1/alerts", _alert_bytes()) == "stored"
    assert handler.handle("lfr/van-1/status", STATUS) == "stored"


def test_odd_topics_are_refused(handler: Handler) -> None:
    for topic in ("lfr/van-1/alerts/x", "lfr/+/alerts", "other/van-1/alerts", "lfr/van 1/alerts",
                  "lfr/van-1/commands", "lfr//alerts", "lfr/van-1/deployment"):
        assert handler.handle(topic, _alert_bytes()) == "refused", topic


def test_html_in_a_valid_alert_is_stored_as_is_and_rendered_as_text(handler: Handler) -> None:
    evil = '<script>alert(1)</script>"><img src=x>'
    assert handler.handle("lfr/van-1/alerts", _alert_bytes(subject_id=evil)) == "stored"
    (row,) = handler.store.alerts()
    assert row["subject_id"] == evil
    html = templates().get_template("_alert_row.html").render(
        a={**row, "has_reference": False}, user=None)
    assert "<script>" not in html and "<img src=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&#34;&gt;&lt;img src=x&gt;" in html


def test_a_redelivered_alert_is_stored_once(handler: Handler) -> None:
    payload = _alert_bytes()
    assert handler.handle("lfr/van-1/alerts", payload) == "stored"
    assert handler.handle("lfr/van-1/alerts", payload) == "duplicate"
    assert len(handler.store.alerts()) == 1


_JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.text(max_size=50) | st.integers(),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=30,
).map(lambda v: json.dumps(v).encode())


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["alerts", "status", "stats", "deployment", "audit"]),
       payload=st.one_of(st.binary(max_size=2000), _JSON))
def test_no_payload_raises(handler: Handler, kind: str, payload: bytes) -> None:
    assert handler.handle(f"lfr/van-1/{kind}", payload) in ("refused", "stored", "ignored",
                                                            "duplicate")


def test_the_ingest_client_takes_the_whole_fleet_in_its_own_subscription(
    handler: Handler, broker: Broker
) -> None:
    assert subscriptions() == [("lfr/+/alerts", 1), ("lfr/+/audit", 1), ("lfr/+/stats", 1),
                               ("lfr/+/status", 1)]  # no $share: see the next test
    cr = broker.console()
    ingest = Ingest(BrokerSettings(broker.host, broker.port, cr.ca, cr.cert, cr.key), handler,
                    handler.metrics, client_id="console-ingest-test")
    ingest.start()
    try:
        assert ingest.wait_ready(10), ingest.last_error
        van = broker.client("van-1")
        van.publish("lfr/van-1/status", STATUS, qos=1, retain=True)
        for garbage in (b"[" * 100_000, b"\x00\x01", b"{}"):
            van.publish("lfr/van-1/alerts", garbage, qos=1)
        good = _alert_bytes()
        van.publish("lfr/van-1/alerts", good, qos=1).wait_for_publish(5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not handler.store.alerts():
            time.sleep(0.05)
        assert [r["alert_id"] for r in handler.store.alerts()] == [json.loads(good)["alert_id"]]
        assert handler.metrics.get("console_messages_refused_total", kind="alerts") == 3
        assert handler.store.fleet.devices()[0]["state"] == "online"
    finally:
        ingest.stop()


def _ingest(handler: Handler, broker: Broker, client_id: str, n: int = 1) -> Ingest:
    cr = broker.console(n)  # each console instance its own certificate (CN = client id)
    ingest = Ingest(BrokerSettings(broker.host, broker.port, cr.ca, cr.cert, cr.key), handler,
                    handler.metrics, client_id=client_id)
    ingest.start()
    assert ingest.wait_ready(10), ingest.last_error
    return ingest


def test_two_consoles_each_hold_the_whole_fleet_and_store_each_alert_once(
    tmp_path: Path, broker: Broker
) -> None:
    """Each instance (its own certificate, client id and session) takes every message, so
    either alone has them all; the shared store keeps each alert once."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    stores = [Store.open(url), Store.open(url)]
    key = X25519PrivateKey.generate()
    handlers = [Handler(s, AtRest(key), Hub(), Metrics(), device_keys=PUBLIC) for s in stores]
    ingests = [_ingest(h, broker, f"console-{i}", n=i + 1) for i, h in enumerate(handlers)]
    try:
        van = broker.client("van-1")
        sent = []
        for _ in range(30):
            payload = _alert_bytes()
            sent.append(json.loads(payload)["alert_id"])
            van.publish("lfr/van-1/alerts", payload, qos=1).wait_for_publish(5)

        def seen(h: Handler) -> float:
            m = h.metrics
            return m.get("console_alerts_received_total") + m.get("console_alerts_duplicate_total")

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and min(seen(h) for h in handlers) < 30:
            time.sleep(0.05)
        assert [seen(h) for h in handlers] == [30, 30]  # each has the whole fleet
        assert sorted(r["alert_id"] for r in stores[0].alerts(limit=100)) == sorted(sent)
        taken = [h.metrics.get("console_alerts_received_total") for h in handlers]
        assert sum(taken) == 30, taken  # stored once
    finally:
        for i in ingests:
            i.stop()
        for s in stores:
            s.close()


def test_a_van_that_dies_goes_offline_through_its_last_will(
    handler: Handler, broker: Broker
) -> None:
    import subprocess
    import sys

    ingest = _ingest(handler, broker, "console-will")
    creds = broker.creds("van-9")
    script = f"""
import json, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="van-9", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs={str(creds.ca)!r}, certfile={str(creds.cert)!r}, keyfile={str(creds.key)!r})
c.will_set("lfr/van-9/status", json.dumps({{"state": "offline", "armed": True,
           "reason": "connection lost", "device_id": "van-9"}}), qos=1, retain=True)
c.connect({broker.host!r}, {broker.port}, keepalive=2)
c.loop_start()
c.publish("lfr/van-9/status", json.dumps({{"state": "online", "armed": True,
          "reason": "armed", "device_id": "van-9"}}), qos=1, retain=True).wait_for_publish(5)
print("up", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"

        def state() -> str | None:
            devs = [d for d in handler.store.fleet.devices() if d["device_id"] == "van-9"]
            return devs[0]["state"] if devs else None

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and state() != "online":
            time.sleep(0.05)
        assert state() == "online"
        proc.kill()  # no DISCONNECT: the broker publishes the will after the keepalive
        proc.wait(5)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and state() != "offline":
            time.sleep(0.05)
        (dev,) = [d for d in handler.store.fleet.devices() if d["device_id"] == "van-9"]
        assert (dev["state"], dev["reason"]) == ("offline", "connection lost")
    finally:
        if proc.poll() is None:
            proc.kill()
        ingest.stop()


def test_alerts_sent_while_the_console_is_away_arrive_when_it_returns(
    handler: Handler, broker: Broker
) -> None:
    """The persistent session (fixed client id, clean start off) keeps the shared
    subscription and its queued QoS 1 messages while the console is down."""
    _ingest(handler, broker, "console-away").stop()
    van = broker.client("van-1")
    payload = _alert_bytes()
    van.publish("lfr/van-1/alerts", payload, qos=1).wait_for_publish(5)
    ingest = _ingest(handler, broker, "console-away")
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not handler.store.alerts():
            time.sleep(0.05)
        assert [r["alert_id"] for r in handler.store.alerts()] == [json.loads(payload)["alert_id"]]
    finally:
        ingest.stop()


def test_a_van_cut_off_for_less_than_its_keepalive_turns_stale_then_fresh(
    handler: Handler, broker: Broker
) -> None:
    """Issue 21: a van whose link stalls for less than its MQTT keepalive leaves no will
    and would show online; its overdue heartbeat (status, stats) marks it stale."""
    import os
    import signal
    import subprocess
    import sys

    from edge.console.service import Console

    ingest = _ingest(handler, broker, "console-stale")
    creds = broker.creds("van-8")
    script = f"""
import json, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="van-8", protocol=mqtt.MQTTv5)
c.tls_set(ca_certs={str(creds.ca)!r}, certfile={str(creds.cert)!r}, keyfile={str(creds.key)!r})
c.will_set("lfr/van-8/status", json.dumps({{"state": "offline", "device_id": "van-8"}}),
           qos=1, retain=True)
c.connect({broker.host!r}, {broker.port}, keepalive=120)
c.loop_start()
c.publish("lfr/van-8/status", json.dumps({{"state": "online", "armed": True,
          "reason": "armed", "device_id": "van-8"}}), qos=1, retain=True).wait_for_publish(5)
print("up", flush=True)
for _ in range(600):
    c.publish("lfr/van-8/stats", json.dumps({{"fps": 9.5, "device_id": "van-8"}}), qos=0)
    time.sleep(0.2)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    stale_after = 1.5
    console = Console(handler.store, handler.at_rest, handler.hub, handler.metrics,
                      ingest, Ed25519PrivateKey.generate(), stale_after_s=stale_after)

    def van() -> dict[str, object] | None:
        rows = [d for d in handler.store.fleet.devices(stale_after) if d["device_id"] == "van-8"]
        return rows[0] if rows else None

    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        assert wait_until(lambda: (v := van()) is not None and v["fps"] == 9.5 and not v["stale"])
        os.kill(proc.pid, signal.SIGSTOP)  # the link stalls: no packet, the socket stays open
        assert wait_until(lambda: (v := van()) is not None and v["stale"])
        row = van()
        assert row is not None and row["state"] == "online"  # no will: the broker waits
        assert console.watch_fleet() == ["van-8"]
        html = templates().get_template("_device_row.html").render(d=row, user=None)
        assert 'data-stale="1"' in html and ">stale</span>" in html
        os.kill(proc.pid, signal.SIGCONT)  # the link comes back: its stats flow again
        assert wait_until(lambda: (v := van()) is not None and not v["stale"])
        assert console.watch_fleet() == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(5)
        ingest.stop()


CRASHING_CONSOLE = """
import sys, time
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.ingest import Ingest
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.publish import BrokerSettings

url, host, port, ca, cert, key, van_key = sys.argv[1:8]
store = Store.open(url)


class Telling(Handler):  # says when the worker has a message in hand, then handles it
    def handle(self, topic, payload, retained=False, received_at=None):
        print("handling", flush=True)
        return super().handle(topic, payload, retained, received_at)


keys = {"van-1": Ed25519PublicKey.from_public_bytes(bytes.fromhex(van_key))}
handler = Telling(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(), device_keys=keys)
ingest = Ingest(BrokerSettings(host, int(port), ca, cert, key), handler, handler.metrics,
                client_id="console-crash")
ingest.start()
assert ingest.wait_ready(20), ingest.last_error
print("ready", flush=True)
time.sleep(120)
"""


def test_a_console_killed_with_a_message_in_hand_gets_it_again(
    tmp_path: Path, broker: Broker
) -> None:
    """A message is acknowledged to the broker only once handled: a console killed while its
    worker holds one (its database busy) gets it again from its session and stores it.
    With paho's acknowledgement on receipt the broker had forgotten it: lost for ever."""
    import sqlite3
    import subprocess
    import sys

    from cryptography.hazmat.primitives import serialization

    db = tmp_path / "console.db"
    url = f"sqlite:///{db}"
    store = Store.open(url)
    cr = broker.console(1)
    raw = PUBLIC["van-1"].public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    holder = sqlite3.connect(db, timeout=30)
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_CONSOLE, url, broker.host, str(broker.port),
         str(cr.ca), str(cr.cert), str(cr.key), raw.hex()],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        deadline = time.monotonic() + 20  # its worker has recorded the connection
        while time.monotonic() < deadline and store.fleet.mqtt_session("console-crash") is None:
            time.sleep(0.05)
        store.close()
        holder.execute("BEGIN EXCLUSIVE")  # the console's database is busy: its writes wait
        payload = _alert_bytes()
        van = broker.client("van-1")
        van.publish("lfr/van-1/alerts", payload, qos=1).wait_for_publish(5)
        assert proc.stdout.readline() == b"handling\n"  # in the worker's hands, not stored
        proc.kill()
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        holder.rollback()
        holder.close()
    store = Store.open(url)
    handler = Handler(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(),
                      device_keys=PUBLIC)  # fmt: skip
    assert not store.alerts()
    ingest = _ingest(handler, broker, "console-crash")  # the same session, back
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not store.alerts():
            time.sleep(0.05)
        assert [r["alert_id"] for r in store.alerts()] == [json.loads(payload)["alert_id"]]
    finally:
        ingest.stop()
        store.close()
