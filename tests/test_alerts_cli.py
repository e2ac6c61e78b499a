"""`edge alerts` (control-room subscriber) and `edge alerts adjudicate` on a real broker."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge import signing
from edge.delivery.alert import encode_alert, rfc3339
from edge.delivery.alert_sign import seal_alert
from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.outbox import Outbox
from edge.delivery.publish import BrokerSettings, Publisher
from edge.dev.devbroker import ALERTS_CN  # edge alerts' own identity: reads alerts, status
from tests.fixtures.alerts import make_record
from tests.fixtures.broker import Broker, ClientCreds

ROOT = Path(__file__).resolve().parents[1]
KEYS = Path(tempfile.mkdtemp(prefix="lfr-device-keys-"))  # <id>.signing.key/.pub, per run
DEV_A_KEY = signing.private_from_pem(signing.generate(KEYS, "dev-a")[0].read_bytes())
DEV_B_KEY = signing.private_from_pem(signing.generate(KEYS, "dev-b")[0].read_bytes())


def conn_args(broker: Broker, creds: ClientCreds) -> list[str]:
    return ["--host", broker.host, "--port", str(broker.port), "--ca", str(creds.ca),
            "--cert", str(creds.cert), "--key", str(creds.key)]  # fmt: skip


def listen_args(broker: Broker, creds: ClientCreds) -> list[str]:
    """Connection options and the devices' signing keys (``--device-keys``)."""
    return [*conn_args(broker, creds), "--device-keys", str(KEYS)]


def sealed(record: object, key: object = DEV_A_KEY, at: float | None = None) -> bytes:
    """An alert as the device publishes it: stamped and signed."""
    return seal_alert(encode_alert(record), time.time() if at is None else at, key)  # type: ignore[arg-type]


def edge(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def wait_for_subscriber(broker: Broker, client_id: str, timeout: float = 10.0) -> None:
    """Bounded wait until mosquitto logs the subscriber's SUBSCRIBE (log_type subscribe)."""
    deadline = time.monotonic() + timeout
    while f"{client_id} 1 lfr/" not in broker.log_text():
        assert time.monotonic() < deadline, broker.log_text()[-2000:]
        time.sleep(0.05)


@pytest.fixture
def publisher(broker: Broker, tmp_path: Path) -> Iterator[Publisher]:
    c = broker.creds("dev-a")
    ob = Outbox(tmp_path / "ob.db", os.urandom(32))
    pub = Publisher("dev-a", BrokerSettings(broker.host, broker.port, c.ca, c.cert, c.key), ob,
                    drain_interval_s=0.05, signing_key=DEV_A_KEY)  # fmt: skip
    yield pub
    pub.stop(flush_timeout=0)
    ob.close()


def test_listen_prints_dedups_and_saves_crops(
    broker: Broker, publisher: Publisher, tmp_path: Path
) -> None:
    crops = tmp_path / "crops"
    proc = edge("alerts", *listen_args(broker, broker.creds(ALERTS_CN)), "--client-id", "cr-listen",
                "--device", "dev-a", "--save-crops", str(crops), "--count", "3",
                "--timeout", "30", "--json")  # fmt: skip
    wait_for_subscriber(broker, ALERTS_CN)  # CN = client id
    records = [make_record("dev-a", track_id=i, subject_id=f"S-{i}") for i in range(3)]
    publisher.start()
    assert publisher.wait_connected(10)
    publisher.enqueue_alert(records[0])
    # A redelivery of the first alert (same bytes, as after a lost PUBACK) must be dropped.
    dev = broker.client("dev-a")
    dup = sealed(records[0])
    dev.publish("lfr/dev-a/alerts", dup, qos=1).wait_for_publish(5)
    for r in records[1:]:
        publisher.enqueue_alert(r)
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    alerts = [x for x in lines if x["type"] == "alert"]
    assert [a["alert_id"] for a in alerts] == [r.alert_id for r in records]
    assert all("face_jpeg_b64" not in a for a in alerts)  # never printed
    assert [a["subject_id"] for a in alerts] == ["S-0", "S-1", "S-2"]
    assert "3 alerts, 1 duplicate deliveries ignored, 0 refused" in err
    assert any(x["type"] == "status" and x["payload"]["state"] == "online" for x in lines)
    for r in records:
        path = crops / f"{r.alert_id}.jpg"
        assert path.read_bytes() == r.face_jpeg
        img = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[:2] != (720, 1280)
    assert sorted(p.name for p in crops.glob("*.jpg")) == sorted(
        f"{r.alert_id}.jpg" for r in records)  # fmt: skip
    # Issue 21: a private directory, each crop 0600, each save audited (never the face).
    assert stat.S_IMODE(crops.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in crops.glob("*.jpg")} == {0o600}
    saved = [json.loads(x) for x in (crops / "crops-audit.log").read_text().splitlines()]
    assert [(e["event"], e["alert_id"], e["device_id"]) for e in saved] == [
        ("crop_saved", r.alert_id, "dev-a") for r in records]  # fmt: skip
    assert set(os.listdir(crops)) == {f"{r.alert_id}.jpg" for r in records} | {"crops-audit.log"}


def test_listen_human_line_and_invalid_alert(broker: Broker, publisher: Publisher) -> None:
    proc = edge("alerts", *listen_args(broker, broker.creds(ALERTS_CN)), "--client-id", "cr-human",
                "--count", "1", "--timeout", "30")  # fmt: skip
    wait_for_subscriber(broker, ALERTS_CN)
    dev = broker.client("dev-a")
    dev.publish("lfr/dev-a/alerts", b'{"schema": "lfr.alert/1"}', qos=1).wait_for_publish(5)
    spoof = sealed(make_record("dev-b"), DEV_B_KEY)  # dev-b's genuine alert on dev-a's topic
    dev.publish("lfr/dev-a/alerts", spoof, qos=1).wait_for_publish(5)
    record = make_record("dev-a", subject_id="S-77", category="missing_person", score=0.8123)
    publisher.enqueue_alert(record)
    publisher.start()
    out, err = proc.communicate(timeout=40)
    assert proc.returncode == 0, err
    [line] = [x for x in out.splitlines() if " ALERT " in x]
    assert line.startswith(rfc3339(record.captured_at))
    for part in ("device=dev-a", "subject=S-77", "category=missing_person", "score=0.8123",
                 "threshold=0.6000", f"alert_id={record.alert_id}"):  # fmt: skip
        assert part in line
    assert "ignoring an invalid alert from dev-a: missing field 'alert_id'" in err
    assert "claims device dev-b" in err


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cr-keys")
    subprocess.run([sys.executable, "-m", "edge", "keys", "init", "--out", str(d)], check=True,
                   cwd=ROOT, capture_output=True)  # fmt: skip
    return d / "signing.key"


def test_adjudicate_signs_and_reaches_the_device(
    broker: Broker, publisher: Publisher, signing_key: Path
) -> None:
    from edge.watchlist.adjudication import verify_adjudication
    from edge.watchlist.keys import load_signing_key

    got: list[Inbound] = []
    arrived = threading.Event()

    def deliver(msg: Inbound) -> bool:
        got.append(msg)
        arrived.set()
        return True

    publisher.state.gate = InboundGate(deliver)
    publisher.start()
    assert publisher.wait_connected(10)
    wait_for_subscriber(broker, "dev-a")  # the device's SUBSCRIBE to its adjudications
    aid = make_record().alert_id
    proc = edge("alerts", "adjudicate", *conn_args(broker, broker.creds(ALERTS_CN)),
                "--alert-id", aid, "--device", "dev-a", "--decision", "not_stopped",
                "--officer", "PC 4411", "--signing-key", str(signing_key), "--json")  # fmt: skip
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    sent = json.loads(out)
    assert arrived.wait(10)
    assert got[0].kind == "adjudications"
    public = load_signing_key(signing_key).public_key()
    adj = verify_adjudication(got[0].payload, public, device_id="dev-a", now=time.time())
    assert (adj.alert_id, adj.decision, adj.officer, adj.at_text) == (
        aid, "not_stopped", "PC 4411", sent["at"])  # fmt: skip


def test_adjudicate_needs_a_signing_key_and_is_refused_by_acl(
    broker: Broker, signing_key: Path
) -> None:
    dev = broker.creds("dev-a")  # a device may not write adjudications
    base = [*conn_args(broker, dev), "--alert-id", make_record().alert_id, "--device", "dev-b",
            "--decision", "confirmed", "--officer", "PC1"]  # fmt: skip
    proc = edge("alerts", "adjudicate", *base)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--signing-key" in err
    proc = edge("alerts", "adjudicate", *base, "--signing-key", str(signing_key))
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5
    assert err.strip().count("\n") == 0 and "refused the adjudication" in err
    assert "Not authorized" in err


def test_listener_survives_hostile_alerts_and_escapes_what_it_prints(
    broker: Broker, publisher: Publisher
) -> None:
    """Nested JSON, a huge message, NaN, a ``captured_at`` ending in a newline, a retained
    alert and a subject id with control characters: the listener goes on, prints one
    escaped line for the good alert, and never a forged line."""
    dev = broker.client("dev-a")
    good_bytes = sealed(make_record(subject_id="S-1\nX ALERT device=forged"))
    good = json.loads(good_bytes)
    newline = dict(good, alert_id=make_record().alert_id, captured_at=good["captured_at"] + "\n")
    hostile = [b"[" * 30000, b"{" * 5000, b'{"score": NaN}', b"x" * 400_000,
               json.dumps(newline).encode(), b"\xff\xfe"]  # fmt: skip
    retained = dict(good, alert_id=make_record().alert_id)
    dev.publish("lfr/dev-a/alerts", json.dumps(retained), qos=1, retain=True).wait_for_publish(5)
    proc = edge("alerts", *listen_args(broker, broker.creds(ALERTS_CN)), "--count", "1",
                "--timeout", "30", "--client-id", "cr-hostile")  # fmt: skip
    wait_for_subscriber(broker, ALERTS_CN)
    for payload in hostile:
        dev.publish("lfr/dev-a/alerts", payload, qos=1).wait_for_publish(5)
    dev.publish("lfr/dev-a/alerts", good_bytes, qos=1).wait_for_publish(5)
    out, err = proc.communicate(timeout=60)
    dev.publish("lfr/dev-a/alerts", b"", qos=1, retain=True).wait_for_publish(5)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    alert_lines = [x for x in out.splitlines() if " ALERT " in x]
    assert len(alert_lines) == 1 and "subject=S-1\\nX" in alert_lines[0], out
    assert retained["alert_id"] not in out


@pytest.mark.parametrize("case", ["closed port", "rogue certificate", "missing key"])
def test_connection_failures_are_one_line(broker: Broker, tmp_path: Path, case: str) -> None:
    creds = broker.creds(ALERTS_CN)
    args = conn_args(broker, creds)
    if case == "closed port":
        args[3] = "1"
    elif case == "rogue certificate":
        args = conn_args(broker, broker.pki.rogue(ALERTS_CN))
    else:
        args[-1] = str(tmp_path / "nope.key")
    proc = edge("alerts", *args, "--device-keys", str(KEYS), "--timeout", "5")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, (out, err)
    assert err.startswith("edge: ") and err.strip().count("\n") == 0, err
    assert "Traceback" not in err


def test_count_not_reached_before_timeout_fails(broker: Broker) -> None:
    proc = edge("alerts", *listen_args(broker, broker.creds(ALERTS_CN)), "--count", "2",
                "--timeout", "1")  # fmt: skip
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "timed out after 1 s with 0 of 2 alerts" in err


# --- device signatures (issue 13, item 9) ----------------------------------------------------


def test_a_broker_side_forgery_is_refused_and_the_genuine_alert_accepted(
    broker_factory: Any, tmp_path: Path
) -> None:
    from tests.fixtures.forgery import ATTACKER_FACE, compromised_broker, forgeries

    broker = compromised_broker(broker_factory)
    crops = tmp_path / "crops"
    proc = edge("alerts", *listen_args(broker, broker.creds(ALERTS_CN)), "--client-id", "cr-forge",
                "--device", "dev-a", "--save-crops", str(crops), "--count", "1",
                "--timeout", "30", "--json")  # fmt: skip
    wait_for_subscriber(broker, ALERTS_CN)
    record = make_record("dev-a", subject_id="S-GENUINE")
    genuine = sealed(record)
    attacker = broker.client("control-room-tools")  # holds a control-room certificate
    forged = forgeries(genuine)
    for payload in forged.values():
        info = attacker.publish("lfr/dev-a/alerts", payload, qos=1)
        info.wait_for_publish(5)
    c = broker.creds("dev-a")
    ob = Outbox(tmp_path / "ob.db", os.urandom(32))
    pub = Publisher("dev-a", BrokerSettings(broker.host, broker.port, c.ca, c.cert, c.key), ob,
                    drain_interval_s=0.05, signing_key=DEV_A_KEY)  # fmt: skip
    try:
        pub.enqueue_alert(record)
        pub.start()
        out, err = proc.communicate(timeout=40)
    finally:
        pub.stop(flush_timeout=0)
        ob.close()
    assert proc.returncode == 0, err
    alerts = [json.loads(x) for x in out.splitlines() if json.loads(x)["type"] == "alert"]
    assert [a["alert_id"] for a in alerts] == [record.alert_id]
    assert alerts[0]["subject_id"] == "S-GENUINE"
    assert err.count("edge: REFUSED an alert on lfr/dev-a/alerts") == len(forged), err
    for reason in ("unsigned", "bad_signature", "not_canonical"):
        assert f"({reason})" in err
    assert f"1 alerts, 0 duplicate deliveries ignored, {len(forged)} refused" in err
    assert [p.name for p in crops.glob("*.jpg")] == [f"{record.alert_id}.jpg"]
    assert all(p.read_bytes() != ATTACKER_FACE for p in crops.glob("*.jpg"))


def test_listen_needs_the_device_keys(broker: Broker, tmp_path: Path) -> None:
    proc = edge("alerts", *conn_args(broker, broker.creds(ALERTS_CN)), "--timeout", "1")
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and err.strip() == (
        "edge: --device-keys is required: alerts are verified against the devices' signing keys")
    (tmp_path / "x.signing.pub").write_text("not a key")
    proc = edge("alerts", *conn_args(broker, broker.creds(ALERTS_CN)), "--device-keys",
                str(tmp_path), "--timeout", "1")  # fmt: skip
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "is not a PEM public key" in err
    assert "Traceback" not in err


def test_saved_crops_are_purged_after_the_retention_and_audited(tmp_path: Path) -> None:
    """Issue 21: ``--save-crops`` keeps faces as the console does: 31 days, audited; an
    existing directory others can read is refused with one line."""
    from edge.commands.alerts_crops import CropStore
    from edge.errors import UsageError
    from edge.watchlist.audit import verify

    now = [1_800_000_000.0]
    crops = tmp_path / "crops"
    store = CropStore(crops, clock=lambda: now[0])
    old, new = make_record("dev-a"), make_record("dev-a")
    for r, age_s in ((old, 32 * 86400), (new, 31 * 86400 - 600)):
        path = store.save(r.alert_id, "dev-a", r.face_jpeg)
        os.utime(path, (now[0] - age_s, now[0] - age_s))
    assert store.purge() == [old.alert_id]  # the first purge runs at once
    assert sorted(p.stem for p in crops.glob("*.jpg")) == [new.alert_id]
    now[0] += 1200  # the newer crop is now past the retention, but purges run hourly
    assert store.purge() == []
    now[0] += 3600
    assert store.purge() == [new.alert_id]
    events = [json.loads(x) for x in (crops / "crops-audit.log").read_text().splitlines()]
    assert [e["event"] for e in events] == ["crop_saved", "crop_saved", "crops_purged",
                                            "crops_purged"]  # fmt: skip
    assert events[2]["alert_ids"] == [old.alert_id] and events[2]["retention_days"] == 31
    assert verify(crops / "crops-audit.log") == 4
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    with pytest.raises(UsageError, match="open to others"):
        CropStore(shared)
