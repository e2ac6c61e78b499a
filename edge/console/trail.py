"""The console's own audit trail, hash-chained like a device's (tamper-evident).

Each row of ``console_audit`` carries ``prev_hash`` (the previous row's ``hash``, 64 zeros
for the first) and ``hash``: SHA-256 over the canonical JSON of ``at``, ``actor``,
``event``, ``detail`` and ``prev_hash``. ``prev_hash`` is unique, so two writers (threads
or console instances on one database) can never both extend the same row: the loser's
insert fails and it retries on the new head. :func:`verify` walks the whole trail and
names the first row that does not link or whose hash does not recompute.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any, Final

import sqlalchemy as sa

from edge.console import tables as t

GENESIS: Final = "0" * 64
ATTEMPTS: Final = 20


def row_hash(at: float, actor: str, event: str, detail: str, prev_hash: str) -> str:
    body = {"at": at, "actor": actor, "event": event, "detail": detail, "prev_hash": prev_hash}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode("ascii")).hexdigest()


def append(engine: sa.Engine, actor: str, event: str, detail: dict[str, Any]) -> None:
    c = t.console_audit
    text = json.dumps(detail, sort_keys=True, default=str)
    actor, event = actor[:64], event[:64]
    for _ in range(ATTEMPTS):
        try:
            with engine.begin() as conn:
                last = conn.execute(sa.select(c.c.hash).order_by(c.c.id.desc()).limit(1))
                prev = last.scalar() or GENESIS
                at = time.time()
                conn.execute(sa.insert(c).values(
                    at=at, actor=actor, event=event, detail=text, prev_hash=prev,
                    hash=row_hash(at, actor, event, text, prev)))  # fmt: skip
            return
        except sa.exc.IntegrityError:
            continue  # another writer extended the trail first: link to the new head
    raise RuntimeError("could not append to the console's audit trail (contention)")


def verify(engine: sa.Engine) -> tuple[int, str | None]:
    """(rows verified, the first problem or None)."""
    c = t.console_audit
    prev, n = GENESIS, 0
    with engine.connect() as conn:
        q = sa.select(c.c.id, c.c.at, c.c.actor, c.c.event, c.c.detail, c.c.prev_hash,
                      c.c.hash).order_by(c.c.id)  # fmt: skip
        for row_id, at, actor, event, detail, prev_hash, digest in conn.execute(q):
            where = f"console trail broken at row {row_id}"
            if prev_hash != prev:
                return n, f"{where}: it does not link to the previous row"
            if row_hash(float(at), actor, event, detail, prev_hash) != digest:
                return n, f"{where}: its hash does not match (modified)"
            prev, n = digest, n + 1
    return n, None
