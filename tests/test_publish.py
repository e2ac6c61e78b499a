"""The publisher against a real mosquitto with mutual TLS (tests/fixtures/broker.py).

Every wait is bounded; nothing asserts on speed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from edge.delivery.alert import parse_alert, parse_rfc3339, rfc3339
from edge.delivery.outbox import Outbox
from edge.delivery.publish import BrokerSettings, Inbound, Publisher
from edge.errors import BrokerError
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker, Received
from tests.fixtures.publishers import OUTBOX_KEY, publisher_settings
from tests.fixtures.wait import wait_until

ROOT = Path(__file__).resolve().parents[1]


def alert_ids(messages: list[Received], device: str) -> list[str]:
    return [
        json.loads(m.payload)["alert_id"] for m in messages if m.topic == f"lfr/{device}/alerts"
    ]


def test_delivers_valid_alerts_and_deletes_only_on_puback(
    broker: Broker, make_publisher: Callable[..., Publisher]
) -> None:
    rec = broker.recorder(topics=["lfr/dev-a/#"])
    pub = make_publisher(broker, "dev-a")
    records = [make_record("dev-a", track_id=i) for i in range(5)]
    for r in records:  # queued before the connection exists
        pub.enqueue_alert(r)
    assert pub.pending_count == 5
    pub.start()
    assert pub.wait_connected(10), pub.last_error
    pub.publish_status(True, "armed", deployment_id="dep-2026-11-22")
    assert rec.wait_for(lambda m: len(alert_ids(m, "dev-a")) == 5, 10)
    assert wait_until(lambda: pub.pending_count == 0, 5)
    got = [parse_alert(m.payload) for m in rec.on("lfr/dev-a/alerts")]
    assert [a["alert_id"] for a in got] == [r.alert_id for r in records]  # in order
    for a, r in zip(got, records, strict=True):
        assert a["track_id"] == r.track_id
        assert parse_rfc3339(a["published_at"]) >= parse_rfc3339(a["captured_at"]) - 0.001
    assert wait_until(lambda: pub.acked == 5, 5) and pub.last_error is None
    assert rec.wait_for(
        lambda m: any(b'"armed":true' in x.payload for x in m if x.topic.endswith("/status")), 5
    )
    status = json.loads(rec.on("lfr/dev-a/status")[-1].payload)
    assert status["state"] == "online" and status["deployment_id"] == "dep-2026-11-22"
    checkin = pub.last_checkin
    assert wait_until(lambda: pub.last_checkin > checkin, 5)


def test_refused_client_is_never_connected_and_keeps_messages(
    broker: Broker, tmp_path: Path
) -> None:
    rogue = broker.pki.rogue("dev-x")
    ob = Outbox(tmp_path / "ob.db", OUTBOX_KEY)
    pub = Publisher(
        "dev-x", BrokerSettings(broker.host, broker.port, rogue.ca, rogue.cert, rogue.key), ob
    )
    pub.enqueue_alert(make_record("dev-x"))
    pub.start()
    try:
        assert wait_until(lambda: pub.last_error is not None, 10)
        assert not pub.connected
        assert pub.pending_count == 1
    finally:
        pub.stop(flush_timeout=0)
        ob.close()
    with pytest.raises(BrokerError, match="does not exist"):
        Publisher("dev-x", BrokerSettings("127.0.0.1", 1, tmp_path / "no-ca", rogue.cert,
                                          rogue.key), ob)  # fmt: skip


def test_connack_refusal_is_not_a_connection(
    broker_factory: Callable[..., Broker], make_publisher: Callable[..., Publisher]
) -> None:
    broker = broker_factory(extra_config=("clientid_prefixes edge-",))
    pub = make_publisher(broker, "dev-q")  # client id "dev-q": CONNACK "Not authorized"
    pub.enqueue_alert(make_record("dev-q"))
    pub.start()
    assert wait_until(lambda: "refused the connection" in (pub.last_error or ""), 10), (
        pub.last_error
    )
    assert not pub.connected and pub.connect_count == 0
    assert pub.pending_count == 1
    ok = make_publisher(broker, "dev-q", client_id="edge-dev-q")
    ok.start()
    assert ok.wait_connected(10) and ok.connect_count == 1
    assert wait_until(lambda: ok.pending_count == 0, 10)


def test_broker_restart_mid_stream_loses_nothing(
    broker: Broker, make_publisher: Callable[..., Publisher]
) -> None:
    rec = broker.recorder(topics=["lfr/dev-r/alerts"], client_id="cr-restart")
    pub = make_publisher(broker, "dev-r")
    pub.start()
    assert pub.wait_connected(10)
    ids: list[str] = []
    n = 45
    for i in range(n):
        if i == 15:
            broker.stop()  # SIGTERM: mosquitto saves its persistence file
            assert wait_until(lambda: not pub.connected, 10)
        if i == 30:
            # Nothing can have been acknowledged while the broker was down.
            assert pub.pending_count >= 15
            broker.start()
        r = make_record("dev-r", track_id=i)
        pub.enqueue_alert(r)
        ids.append(r.alert_id)
        time.sleep(0.02)
    assert rec.wait_for(lambda m: set(ids) <= set(alert_ids(m, "dev-r")), 30), (
        f"missing {len(set(ids) - set(alert_ids(rec.messages, 'dev-r')))} of {n}"
    )
    received = alert_ids(rec.messages, "dev-r")
    dups = Counter(received)
    assert set(received) == set(ids)  # nothing foreign, nothing lost
    # Redelivery may duplicate; every duplicate is byte-identical (same published_at).
    by_id: dict[str, bytes] = {}
    for m in rec.on("lfr/dev-r/alerts"):
        aid = json.loads(m.payload)["alert_id"]
        assert by_id.setdefault(aid, m.payload) == m.payload
    print(f"restart: {n} alerts, {len(received) - n} duplicate deliveries "
          f"({sum(1 for c in dups.values() if c > 1)} ids)")  # fmt: skip
    assert wait_until(lambda: pub.pending_count == 0, 10)


def test_sigkilled_producer_alerts_are_delivered_after_restart(
    broker_factory: Callable[..., Broker], make_publisher: Callable[..., Publisher],
    tmp_path: Path,
) -> None:  # fmt: skip
    broker = broker_factory(start=False)  # down while the first process runs
    c = broker.creds("dev-k")
    db = tmp_path / "outbox.db"
    script = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from edge.delivery.outbox import Outbox
        from edge.delivery.publish import BrokerSettings, Inbound, Publisher
        from tests.fixtures.alerts import make_record
        ob = Outbox({str(db)!r}, bytes.fromhex({OUTBOX_KEY.hex()!r}))
        s = BrokerSettings({broker.host!r}, {broker.port}, Path({str(c.ca)!r}),
                           Path({str(c.cert)!r}), Path({str(c.key)!r}))
        pub = Publisher("dev-k", s, ob, reconnect_min_s=1, reconnect_max_s=1)
        pub.start()
        ids = []
        for i in range(12):
            r = make_record("dev-k", track_id=i)
            pub.enqueue_alert(r)
            ids.append(r.alert_id)
        print(json.dumps(ids), flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else b""
        assert line, proc.stderr.read().decode() if proc.stderr else ""
        ids = json.loads(line)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    broker.start()
    rec = broker.recorder(topics=["lfr/dev-k/alerts"])
    pub = make_publisher(broker, "dev-k", outbox_path=db)
    assert pub.pending_count == 12
    pub.start()
    assert rec.wait_for(lambda m: alert_ids(m, "dev-k") == ids, 15), alert_ids(
        rec.messages, "dev-k"
    )
    assert wait_until(lambda: pub.pending_count == 0, 5)


def test_redelivery_keeps_the_first_published_at(
    broker: Broker, make_publisher: Callable[..., Publisher], tmp_path: Path
) -> None:
    db = tmp_path / "ob.db"
    record = make_record("dev-p")
    first = time.time() - 120.0  # "published" by an earlier process that then crashed
    with Outbox(db, OUTBOX_KEY) as ob:
        pub0 = Publisher("dev-p", publisher_settings(broker, "dev-p"), ob)
        pub0.enqueue_alert(record)
        assert ob.mark_sent(record.alert_id, first) == first
    rec = broker.recorder(topics=["lfr/dev-p/alerts"])
    pub = make_publisher(broker, "dev-p", outbox_path=db)
    pub.start()
    assert rec.wait_for(lambda m: len(m) == 1, 10)
    alert = parse_alert(rec.messages[0].payload)
    assert alert["alert_id"] == record.alert_id
    assert alert["published_at"] == rfc3339(first)


def test_acl_a_device_cannot_publish_as_another(
    broker: Broker, make_publisher: Callable[..., Publisher]
) -> None:
    rec = broker.recorder(topics=["lfr/#"])
    pub = make_publisher(broker, "dev-a")
    forged = make_record("dev-b")
    # Put a row for another device's topic straight into dev-a's outbox.
    pub.outbox.put(forged.alert_id, "lfr/dev-b/alerts", b'{"forged": true}')
    good = make_record("dev-a")
    pub.enqueue_alert(good)
    pub.start()
    assert rec.wait_for(lambda m: alert_ids(m, "dev-a") == [good.alert_id], 10)
    # The forged row was refused by PUBACK (not authorised): kept, never delivered.
    assert wait_until(lambda: pub.last_error is not None, 5)
    assert "refused" in (pub.last_error or "") and forged.alert_id in (pub.last_error or "")
    assert pub.outbox.get(forged.alert_id) is not None
    # (the good alert's PUBACK may land just after the control room got it)
    assert wait_until(lambda: pub.pending_count == 1, 5)
    assert pub.outbox.pending(10)[0].msg_id == forged.alert_id
    assert rec.on("lfr/dev-b/alerts") == []
    # Reading: a device only receives its own adjudications.
    dev = broker.client("dev-a")
    got: list[str] = []
    subacked = threading.Event()
    dev.on_message = lambda _c, _u, msg: got.append(msg.topic)
    dev.on_subscribe = lambda *_a: subacked.set()
    dev.subscribe("lfr/+/adjudications", qos=1)
    assert subacked.wait(5)
    cr = broker.client("control-room")
    cr.publish("lfr/dev-b/adjudications", b"{}", qos=1).wait_for_publish(5)
    cr.publish("lfr/dev-a/adjudications", b"{}", qos=1).wait_for_publish(5)
    assert wait_until(lambda: "lfr/dev-a/adjudications" in got, 5)
    assert got == ["lfr/dev-a/adjudications"]


def test_last_will_marks_a_killed_device_offline(broker: Broker) -> None:
    c = broker.creds("dev-w")
    rec = broker.recorder(topics=["lfr/dev-w/status"])
    script = textwrap.dedent(
        f"""
        import time, tempfile, os
        from pathlib import Path
        from edge.delivery.outbox import Outbox
        from edge.delivery.publish import BrokerSettings, Inbound, Publisher
        ob = Outbox(Path(tempfile.mkdtemp()) / "ob.db", os.urandom(32))
        s = BrokerSettings({broker.host!r}, {broker.port}, Path({str(c.ca)!r}),
                           Path({str(c.cert)!r}), Path({str(c.key)!r}))
        pub = Publisher("dev-w", s, ob)
        pub.publish_status(True, "armed")
        pub.start()
        print("connected" if pub.wait_connected(10) else "failed", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == b"connected"
        assert rec.wait_for(lambda m: any(b'"online"' in x.payload for x in m), 10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def offline(m: list[Received]) -> bool:
        return any(json.loads(x.payload).get("state") == "offline" for x in m)

    assert rec.wait_for(offline, 10)
    will = json.loads(next(x for x in rec.messages if b'"offline"' in x.payload).payload)
    assert will["reason"] == "connection lost" and will["device_id"] == "dev-w"
    assert will["armed"] is True
    late = broker.recorder(topics=["lfr/dev-w/status"], session_expiry=0)  # a newcomer
    assert late.wait_for(lambda m: len(m) >= 1, 5)
    assert late.messages[0].retain and json.loads(late.messages[0].payload)["state"] == "offline"


def test_graceful_stop_flushes_and_says_offline(
    broker: Broker, make_publisher: Callable[..., Publisher]
) -> None:
    rec = broker.recorder(topics=["lfr/dev-s/#"])
    pub = make_publisher(broker, "dev-s")
    pub.start()
    assert pub.wait_connected(10)
    for i in range(3):
        pub.enqueue_alert(make_record("dev-s", track_id=i))
    assert pub.stop(flush_timeout=10) is True
    assert pub.pending_count == 0
    assert rec.wait_for(lambda m: len(alert_ids(m, "dev-s")) == 3, 5)
    late = broker.recorder(topics=["lfr/dev-s/status"], session_expiry=0)
    assert late.wait_for(lambda m: len(m) >= 1, 5)
    status = json.loads(late.messages[0].payload)
    assert (status["state"], status["reason"]) == ("offline", "stopped")


def test_inbound_messages_reach_the_inbox_as_bytes_through_the_gate(
    broker: Broker, make_publisher: Callable[..., Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    """Size, retain and the bounded inbox are checked before anything is parsed; the
    payload reaches the inbox as bytes (the receiver verifies it), and a refusal is one
    line naming the reason, never the payload."""
    got: list[Inbound] = []
    refused: list[tuple[str, str, int]] = []
    room = [3]

    def inbox(msg: Inbound) -> bool:
        if room[0] <= 0:
            return False
        room[0] -= 1
        got.append(msg)
        return True

    cr = broker.client("control-room")
    # A retained message reaches a subscriber as retained when it subscribes.
    cr.publish("lfr/dev-c/commands", b"retained", qos=1, retain=True).wait_for_publish(5)
    pub = make_publisher(broker, "dev-c", inbox=inbox,
                         on_refused=lambda *a: refused.append(a))  # fmt: skip
    pub.start()
    assert pub.wait_connected(10)
    with caplog.at_level("WARNING", logger="edge.delivery.publish"):
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # until the SUBACK is in place
            cr.publish("lfr/dev-c/commands", b"[1, 2]", qos=1).wait_for_publish(5)
            wait_until(lambda: bool(got), 1)
        assert got and got[0] == Inbound("commands", b"[1, 2]")
        cr.publish("lfr/dev-c/adjudications", b"x" * 5000, qos=1).wait_for_publish(5)
        assert wait_until(lambda: len(refused) >= 2, 5)
        while room[0] > 0:
            cr.publish("lfr/dev-c/adjudications", b"{}", qos=1).wait_for_publish(5)
            wait_until(lambda: room[0] == 0, 0.5)
        cr.publish("lfr/dev-c/adjudications", b"{}", qos=1).wait_for_publish(5)
        assert wait_until(lambda: any(r[1] == "inbox_full" for r in refused), 5)
    cr.publish("lfr/dev-c/commands", b"", qos=1, retain=True).wait_for_publish(5)  # clear it
    reasons = {(k, r) for k, r, _n in refused}
    assert {("adjudications", "too_large"), ("commands", "retained"),
            ("adjudications", "inbox_full")} <= reasons  # fmt: skip
    lines = [r.getMessage() for r in caplog.records if "refused a message" in r.getMessage()]
    assert lines and all("\n" not in line and "xxxx" not in line for line in lines)
    assert pub.connected, "refusals never disturb the connection"


def test_stats_are_best_effort(broker: Broker, make_publisher: Callable[..., Publisher]) -> None:
    rec = broker.recorder(topics=["lfr/dev-t/stats"])
    pub = make_publisher(broker, "dev-t", stats_provider=lambda: {"fps": 9.5, "faces": 3},
                         stats_interval_s=0.2)  # fmt: skip
    assert pub.publish_stats({"fps": 1.0}) is False  # not connected yet: dropped
    pub.start()
    assert pub.wait_connected(10)
    assert rec.wait_for(lambda m: len(m) >= 2, 10)  # periodic, from the drain loop
    body = json.loads(rec.messages[0].payload)
    assert body["fps"] == 9.5 and body["device_id"] == "dev-t" and "at" in body
    broker.stop()
    assert wait_until(lambda: not pub.connected, 10)
    assert pub.publish_stats({"fps": 1.0}) is False


def test_concurrent_producers_while_connected(
    broker: Broker, make_publisher: Callable[..., Publisher]
) -> None:
    rec = broker.recorder(topics=["lfr/dev-m/alerts"])
    pub = make_publisher(broker, "dev-m", inflight_max=5)
    pub.start()
    assert pub.wait_connected(10)
    ids: list[str] = []
    lock = threading.Lock()

    def produce(k: int) -> None:
        for i in range(15):
            r = make_record("dev-m", track_id=k * 100 + i)
            pub.enqueue_alert(r)
            with lock:
                ids.append(r.alert_id)

    threads = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert rec.wait_for(lambda m: set(alert_ids(m, "dev-m")) == set(ids), 20)
    assert wait_until(lambda: pub.pending_count == 0 and pub.inflight_count == 0, 5)


def test_a_certificate_cannot_take_over_another_devices_session(
    broker: Broker, make_publisher: Callable[..., Publisher], tmp_path: Path
) -> None:
    """Issue 15: device B connects with device A's client id and a clean start (which
    would take over and purge A's persistent session); A's queued command still arrives,
    because the broker makes the certificate's CN the client id."""
    got: list[Inbound] = []

    def deliver(msg: Inbound) -> bool:
        got.append(msg)
        return True

    a = make_publisher(broker, "dev-k", client_id="edge-dev-k", inbox=deliver)
    a.start()
    assert a.wait_connected(10)
    cr = broker.client("control-room")
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:  # A's subscription is in place
        cr.publish("lfr/dev-k/commands", b"probe", qos=1).wait_for_publish(5)
        wait_until(lambda: bool(got), 0.5)
    assert got
    a.stop(flush_timeout=0)
    got.clear()
    cr.publish("lfr/dev-k/commands", b"queued end command", qos=1).wait_for_publish(5)

    thief = broker.make_client("dev-evil", client_id="edge-dev-k")
    connected = threading.Event()
    thief.on_connect = lambda *_a: connected.set()
    thief.connect(broker.host, broker.port, keepalive=10, clean_start=True)
    thief.loop_start()
    assert connected.wait(10)
    thief.disconnect()
    thief.loop_stop()

    again = make_publisher(broker, "dev-k", outbox_path=tmp_path / "k2.db",
                           client_id="edge-dev-k", inbox=deliver)  # fmt: skip
    again.start()
    assert wait_until(lambda: Inbound("commands", b"queued end command") in got, 10), (
        broker.log_text()[-1500:]
    )


@pytest.mark.parametrize("fault", ["dead", "stalled"])
def test_a_dead_or_stalled_network_thread_is_rebuilt_in_process(
    broker: Broker, make_publisher: Callable[..., Publisher], fault: str
) -> None:
    """Issue 15: paho's thread dies (it was killed by an exception in a callback before
    the gate caught everything) or hangs in a callback; the publisher notices, builds a
    new client and keeps delivering, while its own check-in (the watchdog's view) goes on."""
    rec = broker.recorder(topics=["lfr/dev-z/alerts"])
    release = threading.Event()
    calls = []

    def inbox(_msg: Inbound) -> bool:  # the first message hangs paho's thread
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)
        return True

    pub = make_publisher(broker, "dev-z", inbox=inbox)
    pub.broker = dataclasses.replace(pub.broker, keepalive=2)  # stalled after 5 s
    pub.start()
    assert pub.wait_connected(10)
    first = make_record("dev-z", track_id=1)
    pub.enqueue_alert(first)
    assert rec.wait_for(lambda m: alert_ids(m, "dev-z") == [first.alert_id], 10)
    old = pub.client
    if fault == "dead":
        old.loop_stop()  # the network thread ends, as an escaped exception would end it
    else:
        cr = broker.client("control-room")
        cr.publish("lfr/dev-z/commands", b"{}", qos=1).wait_for_publish(5)  # blocks the thread
    assert wait_until(lambda: pub.rebuilds >= 1 and pub.client is not old, 60), pub.last_error
    checkin = pub.last_checkin
    second = make_record("dev-z", track_id=2)
    pub.enqueue_alert(second)
    assert rec.wait_for(lambda m: second.alert_id in alert_ids(m, "dev-z"), 30)
    assert pub.last_checkin > checkin
    release.set()


def test_a_broker_outage_is_logged_once_at_warning(
    broker: Broker, make_publisher: Callable[..., Publisher], caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 21: paho logs "Client is not connected" at ERROR after every failed
    reconnect while the broker is down (17 lines in one run); the publisher says it once
    per outage, at WARNING, and nothing of an outage is an ERROR."""

    def failed_reconnects() -> int:  # paho's own DEBUG line for each failed attempt
        return sum("Connection failed, retrying" in r.getMessage() for r in caplog.records)

    pub = make_publisher(broker, "dev-o")
    with caplog.at_level("DEBUG", logger="edge.delivery.publish"):
        pub.start()
        assert pub.wait_connected(10)
        for _outage in (1, 2):
            connects, failed = pub.connect_count, failed_reconnects()
            broker.stop()
            assert wait_until(lambda f=failed: failed_reconnects() >= f + 3, 60)  # 3 attempts
            broker.start()
            assert wait_until(lambda c=connects: pub.connect_count > c, 30), pub.last_error
    lines = [r for r in caplog.records if "not connected" in r.getMessage()]
    assert [r.levelname for r in lines] == ["WARNING", "WARNING"], [
        (r.levelname, r.getMessage()) for r in lines]  # fmt: skip
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
