"""Audit entries reach the control room or raise an alarm: never dropped silently (issue 13,
item 4). Real parts: the encrypted SQLite outbox, the publisher's queues, the audit log and
:class:`edge.service.health.AuditDelivery` (the daemon's audit ``publish`` callback and its
``status`` alarm). Before the fix, an audit entry was dropped without a word when the
outbox was full, and retention purged undelivered audit rows after 31 days."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.delivery.held import HeldQueue
from edge.delivery.outbox import Outbox, OutboxFull
from edge.delivery.publish import BrokerSettings, Publisher
from edge.service.health import AuditDelivery
from edge.watchlist.audit import AuditLog

NOWHERE = BrokerSettings("127.0.0.1", 1, None, None, None)  # never started: offline


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    ob = Outbox(tmp_path / "ob.db", os.urandom(32), max_items=10, reserve_items=3)
    yield ob
    ob.close()


def _publisher(outbox: Outbox, held: int = 2) -> Publisher:
    return Publisher("van-1", NOWHERE, outbox, held=HeldQueue(max_items=held))


def test_audit_publishes_with_a_full_outbox_are_kept_then_alarmed(
    outbox: Outbox, tmp_path: Path
) -> None:
    pub = _publisher(outbox)
    delivery = AuditDelivery(pub)
    audit = AuditLog(tmp_path / "audit.log", publish=delivery.publish)
    for i in range(9):  # a flood of alerts: 7 fill the outbox up to its reserve, 2 go to RAM
        pub.enqueue(f"alert-{i}", "alerts", b'{"alert":%d}' % i)
    with pytest.raises(OutboxFull):
        pub.enqueue("alert-9", "alerts", b"{}")  # the in-memory queue is full too
    for i in range(3):
        audit.append("outbox_full", alert_id=f"alert-{i}")
    pending, _ = outbox.oldest_pending(pub.topic("audit"))
    assert pending == 3  # in the reserve, waiting for the broker: not lost
    assert delivery.lost == 0 and delivery.check(time.time()) is None
    entry = audit.append("outbox_full", alert_id="alert-9")  # reserve and RAM both full
    assert delivery.lost == 1
    alarm = delivery.check(time.time())
    assert alarm == "1 audit entries not queued for the control room (kept in the local log)"
    lines = [json.loads(x) for x in audit.path.read_text().splitlines()]
    assert lines[-1]["seq"] == entry["seq"] == 4  # in the local chain all the same


def test_undelivered_audit_rows_survive_retention_and_raise_the_alarm(outbox: Outbox) -> None:
    pub = _publisher(outbox)
    delivery = AuditDelivery(pub, max_pending_s=3600)
    now = time.time()
    old = now - 40 * 86400
    outbox.put("alert-old", pub.topic("alerts"), b"{}", now=old)
    outbox.put("audit-1-aa", pub.topic("audit"), b'{"seq":1}', now=old, reserved=True)
    outbox.put("audit-2-bb", pub.topic("audit"), b'{"seq":2}', now=now - 7200, reserved=True)
    outbox.put("audit-3-cc", pub.topic("audit"), b'{"seq":3}', now=now, reserved=True)
    purged = outbox.purge(31 * 86400, now=now)
    assert purged.msg_ids == ("alert-old",)  # the alert goes (safeguard 7), the audit stays
    assert delivery.check(now) == "3 audit entries undelivered, the oldest for 57600 min"
    for msg_id in ("audit-1-aa", "audit-2-bb"):
        outbox.ack(msg_id)
    assert delivery.check(now) is None  # the newest is younger than an hour
    outbox.ack("audit-3-cc")
    assert outbox.purge(31 * 86400, now=now + 40 * 86400).count == 0
    assert outbox.oldest_pending(pub.topic("audit")) == (0, None)


def test_the_reserve_is_only_for_reserved_puts(outbox: Outbox) -> None:
    for i in range(7):
        outbox.put(f"m{i}", "lfr/van-1/alerts", b"x")
    with pytest.raises(OutboxFull, match="limits 7 messages"):
        outbox.put("m7", "lfr/van-1/alerts", b"x")
    for i in range(3):
        outbox.put(f"a{i}", "lfr/van-1/audit", b"x", reserved=True)
    with pytest.raises(OutboxFull, match="limits 10 messages"):
        outbox.put("a3", "lfr/van-1/audit", b"x", reserved=True)
    with pytest.raises(ValueError, match="reserve"):
        Outbox(outbox.path.with_name("other.db"), os.urandom(32), max_items=3, reserve_items=3)
