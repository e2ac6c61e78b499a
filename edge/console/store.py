"""The console's store: SQLAlchemy Core over SQLite (WAL) or PostgreSQL.

``Store.open(url)`` makes the engine (``sqlite:///path`` gets WAL, a busy timeout,
foreign keys and ``secure_delete``, its files are made mode 0600 - a wider mode is
repaired, with a warning; ``postgresql+psycopg://...`` is used as it is) and brings the
schema to the newest migration. After every deletion of images, keys or a user,
:meth:`Store.scrub` truncates SQLite's WAL, so a deleted row stays in none of the files
(PostgreSQL keeps dead rows until VACUUM; what they held no longer decrypts:
:mod:`edge.console.crypto`). Every method is one short transaction, so the ingest thread and
the web server's threads can share one store; several console instances can share one
PostgreSQL database (inserts are idempotent on their natural keys).

Users, sessions and login attempts: :mod:`edge.console.store_auth`; devices,
deployments, alarms and the console's MQTT sessions: :mod:`edge.console.store_fleet`;
reference images and the wrapped data keys: :mod:`edge.console.store_images` (all three
mixed in).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import sqlalchemy as sa

from edge.console import migrate, trail
from edge.console import tables as t
from edge.console.chain import ChainState, Received, advance, conflict
from edge.console.store_auth import AuthStore
from edge.console.store_fleet import FleetStore, Row, rows
from edge.console.store_images import ImageStore
from edge.delivery.alert import parse_rfc3339

log = logging.getLogger(__name__)


def private_files(path: str) -> None:
    """Create the database file mode 0600 before SQLite does (SQLite gives ``-wal`` and
    ``-shm`` the database's mode); repair a wider mode of any of the three, saying so."""
    if not Path(path).exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    for p in (Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = p.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if mode & 0o077:
            p.chmod(0o600)
            log.warning("%s was mode %04o (password and session hashes, sealed images): "
                        "set to 0600", p, mode)  # fmt: skip


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:" and not database.startswith("file:"):
            private_files(database)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_pre_ping=True
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL: consistent; fsync at checkpoints
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA secure_delete=ON")  # deleted rows are zeroed in the file
            cur.execute("PRAGMA journal_size_limit=0")  # and the WAL truncated
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


_rows = rows


class Store(AuthStore, FleetStore, ImageStore):
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        engine = make_engine(url)
        migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def scrub(self) -> None:
        """After a deletion: checkpoint and truncate SQLite's WAL, so no earlier copy of a
        deleted row stays in it (``secure_delete`` zeroed it in the database file)."""
        if self.engine.dialect.name != "sqlite":
            return
        with self.engine.connect() as conn:
            busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
        if busy:  # a long reader held it: the next deletion's scrub truncates it
            log.warning("the database's WAL could not be truncated now (busy)")

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    # -- the console's own audit trail ----------------------------------------------------

    def log(self, actor: str, event: str, **detail: Any) -> None:
        """Append to the console's hash-chained trail (:mod:`edge.console.trail`)."""
        trail.append(self.engine, actor, event, detail)

    def verify_log(self) -> tuple[int, str | None]:
        return trail.verify(self.engine)

    def console_log(self, limit: int = 200) -> list[Row]:
        with self.engine.connect() as conn:
            q = sa.select(t.console_audit).order_by(t.console_audit.c.id.desc()).limit(limit)
            return _rows(conn.execute(q))

    # -- alerts -----------------------------------------------------------------------------

    def add_alert(self, alert: Mapping[str, Any], crop: bytes, received_at: float,
                  crop_key: str | None = None) -> str:  # fmt: skip
        """Store a checked alert (crop already sealed under the data key ``crop_key``):
        ``new``, or ``duplicate`` if its ``alert_id`` is known, or ``purged`` if that id
        was purged (its tombstone: a replay after the retention never brings a face back)."""
        values = {
            "alert_id": alert["alert_id"], "device_id": alert["device_id"],
            "deployment_id": alert["deployment_id"], "subject_id": alert["subject_id"],
            "category": alert["category"], "score": float(alert["score"]),
            "threshold": float(alert["threshold"]), "track_id": int(alert["track_id"]),
            "captured_at": parse_rfc3339(alert["captured_at"]),
            "published_at": parse_rfc3339(alert["published_at"]),
            "received_at": received_at, "bbox": json.dumps(alert["bbox"], sort_keys=True),
            "model": json.dumps(alert["model"], sort_keys=True), "crop": crop,
            "crop_key": crop_key, "legal_hold": False,
        }  # fmt: skip
        a, tomb = t.alerts, t.alert_tombstones
        with self.engine.connect() as conn:
            if conn.execute(sa.select(a.c.alert_id).where(
                    a.c.alert_id == alert["alert_id"])).first() is not None:  # fmt: skip
                return "duplicate"
            if conn.execute(sa.select(tomb.c.alert_id).where(
                    tomb.c.alert_id == alert["alert_id"])).first() is not None:  # fmt: skip
                return "purged"
        try:
            with self.tx() as conn:
                conn.execute(sa.insert(a).values(**values))
        except sa.exc.IntegrityError:
            return "duplicate"  # another instance stored it meanwhile
        return "new"

    _ALERT_COLS: ClassVar[list[sa.Column[Any]]] = [c for c in t.alerts.c
                                                   if c.name not in ("crop", "crop_key")]

    def alerts(self, *, device_id: str | None = None, deployment_id: str | None = None,
               limit: int = 100, before: float | None = None) -> list[Row]:  # fmt: skip
        q = sa.select(*self._ALERT_COLS, (t.alerts.c.crop.is_not(None)).label("has_crop"))
        if device_id:
            q = q.where(t.alerts.c.device_id == device_id)
        if deployment_id:
            q = q.where(t.alerts.c.deployment_id == deployment_id)
        if before is not None:
            q = q.where(t.alerts.c.received_at < before)
        q = q.order_by(t.alerts.c.received_at.desc(), t.alerts.c.alert_id.desc()).limit(limit)
        with self.engine.connect() as conn:
            return _rows(conn.execute(q))

    def alert(self, alert_id: str) -> Row | None:
        rows = self._alert_where(t.alerts.c.alert_id == alert_id)
        return rows[0] if rows else None

    def _alert_where(self, cond: Any) -> list[Row]:
        q = sa.select(*self._ALERT_COLS, (t.alerts.c.crop.is_not(None)).label("has_crop"))
        with self.engine.connect() as conn:
            return _rows(conn.execute(q.where(cond)))

    def undecided(self, limit: int = 1) -> tuple[int, list[Row]]:
        """How many alerts no officer has decided yet, and the newest ``limit`` of them."""
        cond = t.alerts.c.decision.is_(None)
        q = (sa.select(*self._ALERT_COLS, (t.alerts.c.crop.is_not(None)).label("has_crop"))
             .where(cond).order_by(t.alerts.c.received_at.desc(), t.alerts.c.alert_id.desc())
             .limit(limit))  # fmt: skip
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(t.alerts).where(cond))
            return int(n.scalar_one()), _rows(conn.execute(q))

    def crop(self, alert_id: str) -> bytes | None:
        sealed = self.crop_sealed(alert_id)
        return None if sealed is None else sealed[0]

    def crop_sealed(self, alert_id: str) -> tuple[bytes, str | None] | None:
        """(the sealed crop, the name of its data key), or None (unknown or purged)."""
        with self.engine.connect() as conn:
            q = sa.select(t.alerts.c.crop, t.alerts.c.crop_key).where(
                t.alerts.c.alert_id == alert_id)
            row = conn.execute(q).first()
            return None if row is None or row[0] is None else (bytes(row[0]), row[1])

    def set_decision(self, alert_id: str, decision: str, officer: str, at: float) -> None:
        with self.tx() as conn:
            conn.execute(sa.update(t.alerts).where(t.alerts.c.alert_id == alert_id).values(
                decision=decision, decided_by=officer, decided_at=at))  # fmt: skip
            conn.execute(sa.insert(t.adjudications).values(
                alert_id=alert_id, device_id=self._device_of(conn, alert_id) or "",
                decision=decision, officer=officer, at=at, state="sent"))  # fmt: skip

    def _device_of(self, conn: sa.Connection, alert_id: str) -> str | None:
        q = sa.select(t.alerts.c.device_id).where(t.alerts.c.alert_id == alert_id)
        row = conn.execute(q).first()
        return None if row is None else str(row[0])

    def set_adjudication_state(self, alert_id: str, at: float, state: str) -> None:
        with self.tx() as conn:
            conn.execute(sa.update(t.adjudications).where(
                t.adjudications.c.alert_id == alert_id, t.adjudications.c.at == at
            ).values(state=state))  # fmt: skip

    def adjudications(self, alert_id: str | None = None,
                      alert_ids: list[str] | None = None) -> list[Row]:  # fmt: skip
        """Decisions sent, oldest first, each with the van's ``answer`` once it came."""
        q = sa.select(t.adjudications).order_by(t.adjudications.c.id)
        if alert_id is not None:
            q = q.where(t.adjudications.c.alert_id == alert_id)
        if alert_ids is not None:
            q = q.where(t.adjudications.c.alert_id.in_(alert_ids))
        with self.engine.connect() as conn:
            return _rows(conn.execute(q))

    def set_legal_hold(self, alert_id: str, on: bool) -> bool:
        with self.tx() as conn:
            q = sa.update(t.alerts).where(t.alerts.c.alert_id == alert_id)
            return conn.execute(q.values(legal_hold=on)).rowcount > 0

    def purge_alerts(self, older_than: float, now: float | None = None) -> list[str]:
        """Delete alerts (and crops) received or captured before ``older_than`` unless on
        legal hold, each leaving a tombstone (its id and capture time: nothing personal);
        tombstones of captures before ``older_than`` go (such an alert is refused anyway)."""
        a, tomb = t.alerts, t.alert_tombstones
        cond = sa.and_(sa.or_(a.c.received_at < older_than, a.c.captured_at < older_than),
                       a.c.legal_hold.is_(False))  # fmt: skip
        now = time.time() if now is None else now
        with self.tx() as conn:
            found = conn.execute(sa.select(a.c.alert_id, a.c.captured_at).where(cond)).all()
            ids = [str(r[0]) for r in found]
            if ids:
                conn.execute(sa.delete(a).where(a.c.alert_id.in_(ids)))
                conn.execute(sa.delete(t.adjudications)
                             .where(t.adjudications.c.alert_id.in_(ids)))  # fmt: skip
                conn.execute(sa.insert(tomb), [{"alert_id": i, "captured_at": float(c),
                                                "purged_at": now} for i, c in found])
            conn.execute(sa.delete(tomb).where(tomb.c.captured_at < older_than))
        if ids:
            self.scrub()
        return ids

    def tombstones(self) -> list[Row]:
        with self.engine.connect() as conn:
            return _rows(conn.execute(sa.select(t.alert_tombstones)))

    _OUTCOME = sa.func.coalesce(t.alerts.c.device_decision, t.alerts.c.decision)
    """An alert's outcome: the last decision its van recorded (its signed audit chain),
    else the last one sent. Each alert counts once, however often its decision changed."""

    def outcome_counts(self) -> dict[str, int]:
        """Alerts by outcome (:attr:`_OUTCOME`), those with none left out."""
        q = (sa.select(self._OUTCOME, sa.func.count()).where(self._OUTCOME.is_not(None))
             .group_by(self._OUTCOME))  # fmt: skip
        with self.engine.connect() as conn:
            return {str(d): int(n) for d, n in conn.execute(q)}

    def alert_outcomes(self, device_id: str, deployment_id: str) -> dict[str, int]:
        """One van's alerts of a deployment by outcome (``open``: none yet)."""
        a = t.alerts
        q = (sa.select(self._OUTCOME, sa.func.count())
             .where(a.c.device_id == device_id, a.c.deployment_id == deployment_id)
             .group_by(self._OUTCOME))  # fmt: skip
        with self.engine.connect() as conn:
            return {str(d or "open"): int(n) for d, n in conn.execute(q)}

    # -- audit chains -----------------------------------------------------------------------

    def add_audit_entry(self, device_id: str, parsed: Mapping[str, Any],
                        received_at: float) -> tuple[str, ChainState, list[int]]:  # fmt: skip
        """Store one entry and advance the device's chain.

        Returns ``(outcome, state, verified seqs)``: outcome ``new``, ``duplicate`` or
        ``conflict``. Each device's chain is locked first (its row: ``SELECT ... FOR
        UPDATE`` on PostgreSQL, the write lock on SQLite), so console instances taking the
        same entries at once store each once and never advance a chain from a stale state.
        """
        for attempt in range(3):
            try:
                with self.tx() as conn:
                    return self._add_audit_entry(conn, device_id, parsed, received_at)
            except sa.exc.IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _add_audit_entry(self, conn: sa.Connection, device_id: str, parsed: Mapping[str, Any],
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
        with self.engine.connect() as conn:
            rows = _rows(conn.execute(sa.select(t.chains).order_by(t.chains.c.device_id)))
            a = t.audit_entries
            q = sa.select(a.c.device_id, sa.func.count()).group_by(a.c.device_id)
            counts: dict[str, int] = {str(d): int(n) for d, n in conn.execute(q)}
        for r in rows:
            r["received"] = int(counts.get(r["device_id"], 0))
        return rows

    def audit_entries(self, device_id: str, limit: int = 500,
                      seqs: list[int] | None = None) -> list[Row]:  # fmt: skip
        a = t.audit_entries
        q = (sa.select(a).where(a.c.device_id == device_id).order_by(a.c.seq.desc())
             .limit(limit))  # fmt: skip
        if seqs is not None:
            q = q.where(a.c.seq.in_(seqs))
        with self.engine.connect() as conn:
            rows = _rows(conn.execute(q))
        for r in rows:
            r["body"] = json.loads(r["body"])
        return rows

    def record_device_answer(self, device_id: str, answer: Mapping[str, Any], seq: int) -> bool:
        """The van's answer (:func:`~edge.console.messages.device_adjudication`) from its
        verified audit entry ``seq``, on the alert it names if that alert is this van's own
        (another van's signed entry never marks it), and on the console's decision it
        answers (the same decision, signed at the same millisecond). True if recorded."""
        a, j = t.alerts, t.adjudications
        alert_id = answer["alert_id"]
        with self.tx() as conn:
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
