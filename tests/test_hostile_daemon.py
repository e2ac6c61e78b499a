"""Issue 15 against the real daemon process and a real mosquitto with mutual TLS:
poison messages on ``commands`` and ``adjudications``, and a state directory on a small
tmpfs that fills up mid-run and is freed.

Each test counts every alert the daemon logs as queued and every alert the control room
receives (deduplicated by ``alert_id``), and checks the one daemon process never exited.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from edge.watchlist.adjudication import sign_adjudication
from tests import test_daemon as td
from tests.fixtures.smalldisk import mounted

keys = td.keys
device = td.device
DEVICE = td.DEVICE
COOLDOWN = "\n[recognition]\ncooldown_s = 0.0\n"


def _signer(keys: td.Keys) -> Any:
    data = (keys.directory / "signing.key").read_bytes()
    return serialization.load_pem_private_key(data, password=None)


def _audit(state: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (state / "audit.log").read_text().splitlines()]


def _runs(entries: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Audit entries split at each daemon_start."""
    runs: list[list[dict[str, Any]]] = []
    for e in entries:
        if e["event"] == "daemon_start":
            runs.append([])
        if runs:
            runs[-1].append(e)
    return runs


def _refusals(run: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for e in run:
        if e["event"] in ("command_refused", "adjudication_refused"):
            out[f"{e['event']}:{e['reason']}"] += 1
        elif e["event"] == "inbound_refused":
            out.update({f"gate:{k}": v for k, v in e["counts"].items()})
    return out


POISON = [
    b"[" * 30000,
    b"{" * 1000,
    b"\xff\xfe\x00 garbled \x80",
    b'{"format": NaN}',
    b'{"a": 1e999}',
    b"x" * 100_000,
    ('{"a":' * 500 + "1" + "}" * 500).encode(),
    b"y" * 300_000,  # over the device's MaximumPacketSize: the broker never sends it
]


def test_poison_messages_are_acknowledged_once_and_the_daemon_keeps_alerting(
    device: Callable[..., td.DaemonProc], broker: Any, keys: td.Keys, tmp_path: Path
) -> None:
    recorder = broker.recorder()
    source = td.blinking_folder(tmp_path / "frames")
    daemon = device(source, loop=True, fps=25.0, extra=COOLDOWN).start()
    assert recorder.wait_for(lambda ms: bool(td.alert_payloads(recorder)), 180), (
        daemon.text()[-3000:]
    )
    alert_id = td.alert_payloads(recorder)[0]["alert_id"]
    control = broker.client("control-room")
    key = _signer(keys)

    def send(kind: str, payload: bytes) -> None:
        control.publish(f"lfr/{DEVICE}/{kind}", payload, qos=1).wait_for_publish(10)

    for payload in POISON:
        send("commands", payload)
        send("adjudications", payload)
    real = sign_adjudication(key, device_id=DEVICE, alert_id=alert_id, decision="confirmed",
                             officer="PC 7", at=time.time())  # fmt: skip
    for _ in range(5):
        send("adjudications", real)
    send("adjudications", sign_adjudication(key, device_id=DEVICE, alert_id=str(uuid.uuid4()),
                                            decision="rejected", officer="PC 7", at=0.0))
    send("adjudications", json.dumps({"alert_id": alert_id, "decision": "rejected",
                                      "officer": "PC 7", "at": "2026-01-01T00:00:00Z"}).encode())
    # It keeps alerting after all that, and records the real decision once.
    seen = len(td.alert_payloads(recorder))
    assert recorder.wait_for(lambda ms: len(td.alert_payloads(recorder)) >= seen + 3, 120), (
        daemon.text()[-3000:]
    )
    assert recorder.wait_for(
        lambda ms: any(m.topic.endswith("/audit") and b'"event":"adjudication"' in m.payload
                       for m in ms), 30), [
        json.loads(m.payload)["event"] for m in recorder.messages if m.topic.endswith("/audit")]
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon exited"
    assert daemon.terminate() == 0
    # A second run: the persistent session redelivers nothing (each was acknowledged).
    daemon.start()
    first_run = set(daemon.alert_ids())
    assert daemon.wait_log(lambda t: len(set(td.ALERT_LOG.findall(t)) - first_run) >= 2, 180)
    assert daemon.terminate() == 0

    runs = _runs(_audit(tmp_path / "state"))
    assert len(runs) == 2
    assert _refusals(runs[1]) == Counter(), "a message was redelivered after the restart"
    got = _refusals(runs[0])
    assert got == Counter({
        "command_refused:garbled": 6, "gate:commands:too_large": 1,
        "adjudication_refused:garbled": 5, "gate:adjudications:too_large": 2,
        "adjudication_refused:replayed": 4, "adjudication_refused:unknown_alert": 1,
        "adjudication_refused:unsigned": 1,
    }), got  # fmt: skip
    recorded = [e for e in runs[0] if e["event"] == "adjudication"]
    assert [(e["alert_id"], e["decision"]) for e in recorded] == [(alert_id, "confirmed")]
    assert all(len(json.dumps(e)) < 2000 for r in runs for e in r), "a payload in the audit"
    assert "Traceback" not in daemon.text()
    delivered = {a["alert_id"] for a in td.alert_payloads(recorder)}
    assert recorder.wait_for(
        lambda ms: set(daemon.alert_ids()) <= {a["alert_id"] for a in td.alert_payloads(recorder)},
        30), set(daemon.alert_ids()) - delivered  # fmt: skip
    audit = subprocess.run(td.edge_cmd("audit", "verify", str(tmp_path / "state" / "audit.log")),
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert audit.returncode == 0, audit.stderr


def test_a_full_state_disk_degrades_and_recovers_without_losing_an_alert(
    device: Callable[..., td.DaemonProc], broker: Any, keys: td.Keys, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    notify = td.NotifySocket(tmp_path / "notify.sock")
    with mounted(state, "8m") as disk:
        shutil.copy(keys.bundle, state / "watchlist.bundle")
        recorder = broker.recorder()
        source = td.blinking_folder(tmp_path / "frames")
        daemon = device(source, loop=True, fps=25.0, extra=COOLDOWN,
                        env={"NOTIFY_SOCKET": str(notify.path),
                             "WATCHDOG_USEC": "2000000"}).start()  # fmt: skip
        try:
            assert daemon.wait_log(lambda t: len(td.ALERT_LOG.findall(t)) >= 2, 180), (
                daemon.text()[-3000:]
            )
            disk.fill()
            full_since = time.monotonic()
            filled_at = len(daemon.alert_ids())
            assert notify.wait("STATUS=", 5)
            assert daemon.wait_log(lambda t: len(td.ALERT_LOG.findall(t)) >= filled_at + 3, 120)
            assert daemon.wait_log(lambda t: "not writable" in t, 30), daemon.text()[-3000:]
            statuses = [m for _t, m in notify.messages if m.startswith("STATUS=")]
            assert any("not persisting" in m for m in statuses), statuses[-3:]
            assert recorder.wait_for(lambda ms: any(
                m.topic.endswith("/status") and b"not_persisting" in m.payload for m in ms), 30)
            assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon exited"
            # The loops are alive, so the watchdog is still fed while the disk is full.
            assert notify.wait("WATCHDOG=1", 10, after=full_since + 3.0)

            disk.free()
            assert daemon.wait_log(lambda t: "writable again" in t, 60), daemon.text()[-3000:]
            freed_at = len(daemon.alert_ids())
            assert daemon.wait_log(lambda t: len(td.ALERT_LOG.findall(t)) >= freed_at + 2, 120)
            assert daemon.terminate() == 0  # the same process throughout: no restart
            produced = set(daemon.alert_ids())
            assert recorder.wait_for(lambda ms: produced <= {
                a["alert_id"] for a in td.alert_payloads(recorder)}, 30), (
                produced - {a["alert_id"] for a in td.alert_payloads(recorder)})
            received = [a["alert_id"] for a in td.alert_payloads(recorder)]
            assert set(received) == produced, "an alert the daemon never produced"
            entries = _audit(state)
            assert any(e["event"] == "disk_writable_again" for e in entries)
            audit = subprocess.run(td.edge_cmd("audit", "verify", str(state / "audit.log")),
                                   capture_output=True, text=True, check=False)  # fmt: skip
            assert audit.returncode == 0, audit.stderr
            print(f"full disk: {len(produced)} alerts produced ({freed_at - filled_at} while "
                  "the disk was full), "
                  f"{len(produced - set(received))} lost, "
                  f"{len(received) - len(set(received))} duplicate deliveries")
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
            notify.close()


def test_after_a_sigkill_the_last_will_says_the_armed_state_the_device_had(
    device: Callable[..., td.DaemonProc], broker: Any, tmp_path: Path
) -> None:
    """The will is set at connect time, before the watchlist loads; the device reconnects
    with a new will when it arms, so a crash shows ``offline, armed=true``."""
    recorder = broker.recorder()
    daemon = device(td.blinking_folder(tmp_path / "frames"), loop=True, fps=25.0).start()
    assert recorder.wait_for(lambda ms: any(
        m.topic.endswith("/status") and json.loads(m.payload).get("armed") is True
        for m in ms), 120), daemon.text()[-3000:]  # fmt: skip
    assert daemon.wait_log(lambda t: "new last will" in t, 30)
    assert daemon.wait_log(lambda t: t.count("connected to") >= 2, 30)
    daemon.kill()
    assert recorder.wait_for(lambda ms: any(
        m.topic.endswith("/status") and json.loads(m.payload).get("state") == "offline"
        for m in ms), 60)  # fmt: skip
    will = next(json.loads(m.payload) for m in reversed(recorder.messages)
                if m.topic.endswith("/status") and b'"offline"' in m.payload)
    assert (will["state"], will["reason"], will["armed"]) == ("offline", "connection lost", True)


def test_a_restart_on_a_full_state_disk_comes_up_and_delivers(
    device: Callable[..., td.DaemonProc], broker: Any, keys: td.Keys, tmp_path: Path
) -> None:
    """What crash-looped before: SIGKILLed mid-run, restarted while the state disk is
    full (deployment state, audit and outbox cannot be written). It starts, arms, and its
    alerts reach the control room from RAM; once the disk is freed it persists again."""
    state = tmp_path / "state"
    with mounted(state, "8m") as disk:
        shutil.copy(keys.bundle, state / "watchlist.bundle")
        recorder = broker.recorder()
        daemon = device(td.blinking_folder(tmp_path / "frames"), loop=True, fps=25.0,
                        extra=COOLDOWN)  # fmt: skip
        daemon.start()
        try:
            assert daemon.wait_log(lambda t: len(td.ALERT_LOG.findall(t)) >= 1, 180)
            daemon.kill()
            disk.fill()
            before = set(daemon.alert_ids())
            daemon.start()
            assert daemon.wait_log(
                lambda t: len(set(td.ALERT_LOG.findall(t)) - before) >= 3, 180
            ), daemon.text()[-3000:]
            assert daemon.proc is not None and daemon.proc.poll() is None, "it exited"
            new = set(daemon.alert_ids()) - before
            assert recorder.wait_for(lambda ms: new <= {
                a["alert_id"] for a in td.alert_payloads(recorder)}, 60), daemon.text()[-3000:]
            disk.free()
            assert daemon.wait_log(lambda t: "writable again" in t, 60), daemon.text()[-3000:]
            assert daemon.terminate() == 0
            produced = set(daemon.alert_ids())
            assert recorder.wait_for(lambda ms: produced <= {
                a["alert_id"] for a in td.alert_payloads(recorder)}, 60)
            audit = subprocess.run(td.edge_cmd("audit", "verify", str(state / "audit.log")),
                                   capture_output=True, text=True, check=False)  # fmt: skip
            assert audit.returncode == 0, audit.stderr
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.kill()
