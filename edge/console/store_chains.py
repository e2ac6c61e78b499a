"""The vans' audit chains in the console's database: the Store's ``audit`` part.

Each van's signed audit entries are stored as they come and its chain advanced from the
verified state (:mod:`edge.console.chain`): a gap is recorded until it closes, a second entry
of a seq breaks the chain for good. A verified ``adjudication`` entry is the van's answer to a
decision (:meth:`AuditChains.record_device_answer`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from edge.console import tables as t
from edge.console.chain import ChainState, Received, advance, conflict
from edge.console.db import Row, rows


class AuditChains:
    """The vans' audit entries and chains over ``engine`` (``store.audit``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def add_entry(self, device_id: str, parsed: Mapping[str, Any],
                  received_at: float) -> tuple[str, ChainState, list[int]]:  # fmt: skip
        """Store one entry and advance the device's chain.

        Returns ``(outcome, state, verified seqs)``: outcome ``new``, ``duplicate`` or
        ``conflict``. Each device's chain is locked first (its row: ``SELECT ... FOR
        UPDATE`` on PostgreSQL, the write lock on SQLite), so console instances taking the
        same entries at once store each once and never advance a chain from a stale state.
        """
        for attempt in range(3):
            try:
                with self._engine.begin() as conn:
                    return self._add_entry(conn, device_id, parsed, received_at)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add_entry(self, conn: sa.Connection, device_id: str, parsed: Mapping[str, Any],
                   received_at: float) -> tuple[str, ChainState, list[int]]:  # fmt: skip
        a, c = t.audit_entries, t.chains
        state = self._lock_chain(conn, device_id)
        seq = int(parsed["seq"])
        q = sa.select(a.c.hash).where(a.c.device_id == device_id, a.c.seq == seq)
        known = conn.execute(q).first()
        outcome = "new"
        if known is not None:
            # A duplicate is judged by the signed content (the hash the signature covers),
            # never by the bytes: a re-spelt resend is not a second history.
            outcome = "duplicate" if known[0] == parsed["hash"] else "conflict"
        else:
            conn.execute(sa.insert(a).values(
                device_id=device_id, seq=seq, at=parsed["at"], event=parsed["event"],
                prev_hash=parsed["prev_hash"], hash=parsed["hash"],
                body=json.dumps(parsed["entry"], sort_keys=True),
                received_at=received_at))  # fmt: skip
        verified: list[int] = []
        if state.broken:
            new = state
        elif outcome == "conflict":
            new = conflict(state, seq)
        elif outcome == "new" and seq > state.verified_seq + 1:
            # Only the next entry can extend the chain: record the gap cheaply.
            first = conn.execute(sa.select(sa.func.min(a.c.seq)).where(
                a.c.device_id == device_id, a.c.seq > state.verified_seq)).scalar_one()
            new, _ = advance(state, {int(first): Received({}, 0.0)})
        elif seq == state.verified_seq + 1:  # new, or stored by an instance that stopped
            q2 = (sa.select(a.c.seq, a.c.body, a.c.at)
                  .where(a.c.device_id == device_id, a.c.seq > state.verified_seq)
                  .order_by(a.c.seq).limit(5000))  # fmt: skip
            later = {int(s): Received(json.loads(b), float(at))
                     for s, b, at in conn.execute(q2)}  # fmt: skip
            new, verified = advance(state, later)
        else:
            new = state
        if new != state:
            conn.execute(sa.update(c).where(c.c.device_id == device_id).values(
                verified_seq=new.verified_seq, last_hash=new.last_hash, last_at=new.last_at,
                state=new.state, problem=new.problem,
                problem_at=received_at if new.problem else None))  # fmt: skip
        return outcome, new, verified

    def _lock_chain(self, conn: sa.Connection, device_id: str) -> ChainState:
        """The device's chain, its row created if need be and locked for this transaction.
        The first statement is a write, so SQLite takes its write lock before reading."""
        c = t.chains
        ins: Any
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as ins
        else:
            from sqlalchemy.dialects.sqlite import insert as ins
        fresh = ChainState()
        conn.execute(ins(c).values(
            device_id=device_id, verified_seq=fresh.verified_seq, last_hash=fresh.last_hash,
            last_at=fresh.last_at, state=fresh.state,
        ).on_conflict_do_nothing(index_elements=["device_id"]))  # fmt: skip
        q = sa.select(c).where(c.c.device_id == device_id)
        if conn.dialect.name == "postgresql":
            q = q.with_for_update()
        m = conn.execute(q).one()._mapping
        return ChainState(int(m["verified_seq"]), str(m["last_hash"]), float(m["last_at"]),
                          str(m["state"]), m["problem"])  # fmt: skip

    def chains(self) -> list[Row]:
        with self._engine.connect() as conn:
            out = rows(conn.execute(sa.select(t.chains).order_by(t.chains.c.device_id)))
            a = t.audit_entries
            q = sa.select(a.c.device_id, sa.func.count()).group_by(a.c.device_id)
            counts: dict[str, int] = {str(d): int(n) for d, n in conn.execute(q)}
        for r in out:
            r["received"] = int(counts.get(r["device_id"], 0))
        return out

    def entries(self, device_id: str, limit: int = 500,
                seqs: list[int] | None = None) -> list[Row]:  # fmt: skip
        a = t.audit_entries
        q = (sa.select(a).where(a.c.device_id == device_id).order_by(a.c.seq.desc())
             .limit(limit))  # fmt: skip
        if seqs is not None:
            q = q.where(a.c.seq.in_(seqs))
        with self._engine.connect() as conn:
            out = rows(conn.execute(q))
        for r in out:
            r["body"] = json.loads(r["body"])
        return out

    def record_device_answer(self, device_id: str, answer: Mapping[str, Any], seq: int) -> bool:
        """The van's answer (:func:`~edge.console.messages.device_adjudication`) from its
        verified audit entry ``seq``, on the alert it names if that alert is this van's own
        (another van's signed entry never marks it), and on the console's decision it
        answers (the same decision, signed at the same millisecond). True if recorded."""
        a, j = t.alerts, t.adjudications
        alert_id = answer["alert_id"]
        with self._engine.begin() as conn:
            owner = conn.execute(sa.select(a.c.device_id).where(a.c.alert_id == alert_id)).first()
            if owner is None or owner[0] != device_id:
                return False
            if answer["answer"] == "recorded":
                conn.execute(sa.update(a).where(a.c.alert_id == alert_id).values(
                    device_decision=answer["decision"], device_officer=answer["officer"],
                    device_seq=seq))  # fmt: skip
            if answer["decided_at"] is not None:
                at = float(answer["decided_at"])  # milliseconds: the console's time truncated
                conn.execute(sa.update(j).where(
                    j.c.alert_id == alert_id, j.c.device_id == device_id,
                    j.c.decision == answer["decision"], j.c.at > at - 1e-6,
                    j.c.at < at + 0.001 + 1e-6,
                ).values(answer=answer["answer"][:48], answer_seq=seq))  # fmt: skip
            return True
