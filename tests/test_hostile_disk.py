"""A full disk and a cut-short write never stop the daemon's parts, and never brick it
(issue 15, issue 13 item 8), on a real small file system (tmpfs) filled and freed."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import pytest

from edge.delivery.held import HeldQueue
from edge.delivery.outbox import Outbox, OutboxError, OutboxFull
from edge.watchlist.audit import AuditLog, verify
from edge.watchlist.signed_commands import CommandRefused, CommandVerifier, make_command
from tests.bundle_kit import make_kit
from tests.fixtures import smalldisk
from tests.fixtures.smalldisk import SmallDisk

small_disk = smalldisk.small_disk
KEY = os.urandom(32)


def test_outbox_on_a_full_disk_fails_cleanly_and_works_again(small_disk: SmallDisk) -> None:
    ob = Outbox(small_disk.path / "outbox.db", KEY)
    ob.put("before", "lfr/v/alerts", b"x" * 1000)
    small_disk.fill()
    failures = []
    for i in range(50):  # a WAL page or two may still fit: fill it too
        try:
            ob.put(f"full-{i}", "lfr/v/alerts", os.urandom(20_000))
        except OutboxError as exc:
            failures.append(exc)
    assert failures, "the disk was never full"
    assert not any(isinstance(e, OutboxFull) for e in failures)
    assert all("cannot rollback" not in str(e) for e in failures), failures[0]
    small_disk.free()
    assert ob.put("after", "lfr/v/alerts", b"y" * 1000)
    assert {i.msg_id for i in ob.pending()} >= {"before", "after"}
    ob.close()


def test_audit_on_a_full_disk_keeps_entries_in_order_and_never_tears_a_line(
    small_disk: SmallDisk,
) -> None:
    path = small_disk.path / "audit.log"
    log = AuditLog(path)
    log.append("daemon_start")
    small_disk.fill()
    for i in range(20):
        log.append("outbox_full", alert_id=f"a-{i}", note="x" * 500)
    assert log.write_error is not None
    assert path.read_bytes().endswith(b"\n")  # cut back, not torn
    assert verify(path) < 21
    small_disk.free()
    assert log.flush() and log.write_error is None
    assert verify(path) == 21
    events = [json.loads(x)["alert_id"] for x in path.read_text().splitlines()[1:]]
    assert events == [f"a-{i}" for i in range(20)]


def test_a_torn_last_audit_line_is_kept_aside_audited_and_the_log_reopens(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(3):
        log.append("adjudication", n=i)
    with path.open("ab") as fh:
        fh.write(b'{"at":"202')  # what a power cut mid-write leaves
    again = AuditLog(path)  # today: AuditError "incomplete last line", forever
    assert verify(path) == 4
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["event"] == "audit_tail_torn" and last["torn_bytes"] == 10
    assert Path(last["evidence"]).read_bytes() == b'{"at":"202'
    again.append("daemon_start")
    assert verify(path) == 5
    # A complete line that does not verify is still tampering: refused.
    path.write_text(path.read_text().replace('"n":1', '"n":9'))
    with pytest.raises(Exception, match="hash does not match"):
        AuditLog(path)


def test_a_command_whose_nonce_cannot_be_written_is_refused(small_disk: SmallDisk) -> None:
    """Issue 13 item 8: replay protection fails closed, and the same command is accepted
    once the disk takes the write."""
    kit = make_kit()
    verifier = CommandVerifier(small_disk.path, "van-01", kit.trusted)
    now = dt.datetime.now(dt.UTC)
    cmd = make_command(kit.signer, "end_deployment", "van-01", "D-1", issued_at=now)
    small_disk.fill()
    with pytest.raises(CommandRefused) as info:
        verifier.verify(cmd, now.timestamp())
    assert info.value.reason == "replay_unrecorded"
    small_disk.free()
    assert verifier.verify(cmd, now.timestamp()).deployment_id == "D-1"
    with pytest.raises(CommandRefused, match="already used"):
        verifier.verify(cmd, now.timestamp())


def test_held_queue_is_bounded_and_says_so() -> None:
    held = HeldQueue(max_items=2)
    assert held.hold("a", "t", b"1", False) and held.hold("b", "t", b"2", False)
    assert not held.hold("a", "t", b"1", False)
    with pytest.raises(OutboxFull, match="neither stored nor held"):
        held.hold("c", "t", b"3", False)
    assert held.refused == 1 and len(held) == 2
