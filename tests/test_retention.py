"""Retention (safeguard 7): old alerts are purged unless on legal hold; each purge is audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.delivery.outbox import Outbox
from edge.watchlist.audit import AuditLog, verify
from edge.watchlist.keys import derive_key
from edge.watchlist.retention import DAY_S, RetentionPolicy, retention_seconds

T0 = 1_800_000_000.0


def test_retention_is_capped_at_31_days() -> None:
    assert retention_seconds(31) == 31 * DAY_S
    for bad in (0, 32, 365):
        with pytest.raises(ValueError, match=r"1\.\.31"):
            retention_seconds(bad)


def test_purge_keeps_legal_holds_and_is_audited(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.jsonl")
    box = Outbox(tmp_path / "outbox.sqlite", derive_key(b"k" * 32, "outbox-at-rest"))
    box.put("old-1", "lfr/van-01/alerts", b"{}", now=T0)
    box.put("old-held", "lfr/van-01/alerts", b"{}", now=T0)
    box.put("new-1", "lfr/van-01/alerts", b"{}", now=T0 + 30 * DAY_S)
    assert box.set_legal_hold("old-held", True)
    policy = RetentionPolicy(audit, days=31, interval_s=3600)
    now = T0 + 32 * DAY_S
    assert policy.due(now)
    assert policy.run(box, "outbox", now) == 1
    assert box.get("old-1") is None
    assert box.get("old-held") is not None and box.get("new-1") is not None
    assert not policy.due(now + 60) and policy.run_if_due(box, "outbox", now + 60) is None
    assert policy.run_if_due(box, "outbox", now + 3600) == 0  # nothing more, still audited
    entries = [json.loads(x) for x in audit.path.read_text().splitlines()]
    assert [(e["event"], e["count"]) for e in entries] == [("purge", 1), ("purge", 0)]
    assert entries[0]["msg_ids"] == ["old-1"] and entries[0]["retention_days"] == 31
    assert verify(audit.path) == 2
    box.close()
