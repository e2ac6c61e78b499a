"""The console's store: SQLAlchemy Core over SQLite (WAL) or PostgreSQL.

``Store.open(url)`` makes the engine (``sqlite:///path`` gets WAL, a busy timeout and
foreign keys; ``postgresql+psycopg://...`` is used as it is) and brings the schema to
the newest migration. Every method is one short transaction, so the ingest thread and
the web server's threads can share one store; several console instances can share one
PostgreSQL database (inserts are idempotent on their natural keys).

Users, sessions and login failures: :mod:`edge.console.store_auth` (mixed in here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import sqlalchemy as sa

from edge.console import migrate, trail
from edge.console import tables as t
from edge.console.chain import ChainState, Received, advance, conflict
from edge.console.store_auth import AuthStore

Row = dict[str, Any]


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
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
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def _rows(result: sa.CursorResult[Any]) -> list[Row]:
    return [dict(r._mapping) for r in result]


class Store(AuthStore):
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> Store:
        engine = make_engine(url)
        migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def tx(self) -> Iterator[sa.Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _upsert(self, conn: sa.Connection, table: sa.Table, keys: Mapping[str, Any],
                values: Mapping[str, Any]) -> None:  # fmt: skip
        where = sa.and_(*(table.c[k] == v for k, v in keys.items()))
        if conn.execute(sa.update(table).where(where).values(**values)).rowcount == 0:
            conn.execute(sa.insert(table).values(**keys, **values))

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

    # -- devices ----------------------------------------------------------------------------

    def record_status(self, device_id: str, status: Mapping[str, Any], received_at: float,
                      retained: bool) -> None:  # fmt: skip
        with self.tx() as conn:
            values = {k: status[k] for k in ("state", "armed", "reason", "deployment_id",
                                             "window_end", "status_at")}  # fmt: skip
            if status["state"] == "online" or not retained:
                values["last_seen"] = received_at
            self._upsert(conn, t.devices, {"device_id": device_id}, values)
            conn.execute(sa.insert(t.status_history).values(
                device_id=device_id, received_at=received_at, state=status["state"],
                armed=status["armed"], reason=status["reason"], retained=retained))  # fmt: skip

    def record_stats(self, device_id: str, stats: Mapping[str, Any], received_at: float) -> None:
        with self.tx() as conn:
            values = {k: v for k, v in stats.items() if v is not None}
            self._upsert(conn, t.devices, {"device_id": device_id},
                         {**values, "last_seen": received_at})  # fmt: skip

    def devices(self) -> list[Row]:
        with self.engine.connect() as conn:
            return _rows(conn.execute(sa.select(t.devices).order_by(t.devices.c.device_id)))

    def status_history(self, device_id: str, limit: int = 50) -> list[Row]:
        with self.engine.connect() as conn:
            q = (sa.select(t.status_history).where(t.status_history.c.device_id == device_id)
                 .order_by(t.status_history.c.id.desc()).limit(limit))  # fmt: skip
            return _rows(conn.execute(q))

    # -- alerts -----------------------------------------------------------------------------

    def add_alert(self, alert: Mapping[str, Any], crop: bytes, received_at: float) -> bool:
        """Store a checked alert (crop already sealed); False if ``alert_id`` was known."""
        from edge.delivery.alert import parse_rfc3339

        values = {
            "alert_id": alert["alert_id"], "device_id": alert["device_id"],
            "deployment_id": alert["deployment_id"], "subject_id": alert["subject_id"],
            "category": alert["category"], "score": float(alert["score"]),
            "threshold": float(alert["threshold"]), "track_id": int(alert["track_id"]),
            "captured_at": parse_rfc3339(alert["captured_at"]),
            "published_at": parse_rfc3339(alert["published_at"]),
            "received_at": received_at, "bbox": json.dumps(alert["bbox"], sort_keys=True),
            "model": json.dumps(alert["model"], sort_keys=True), "crop": crop,
            "legal_hold": False,
        }  # fmt: skip
        with self.engine.connect() as conn:
            q = sa.select(t.alerts.c.alert_id).where(t.alerts.c.alert_id == alert["alert_id"])
            if conn.execute(q).first() is not None:
                return False
        try:
            with self.tx() as conn:
                conn.execute(sa.insert(t.alerts).values(**values))
        except sa.exc.IntegrityError:
            return False  # another instance stored it meanwhile
        return True

    _ALERT_COLS: ClassVar[list[sa.Column[Any]]] = [c for c in t.alerts.c if c.name != "crop"]

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
        with self.engine.connect() as conn:
            q = sa.select(t.alerts.c.crop).where(t.alerts.c.alert_id == alert_id)
            row = conn.execute(q).first()
            return None if row is None else row[0]

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

    def adjudications(self, alert_id: str | None = None) -> list[Row]:
        q = sa.select(t.adjudications).order_by(t.adjudications.c.id)
        if alert_id is not None:
            q = q.where(t.adjudications.c.alert_id == alert_id)
        with self.engine.connect() as conn:
            return _rows(conn.execute(q))

    def set_legal_hold(self, alert_id: str, on: bool) -> bool:
        with self.tx() as conn:
            q = sa.update(t.alerts).where(t.alerts.c.alert_id == alert_id)
            return conn.execute(q.values(legal_hold=on)).rowcount > 0

    def purge_alerts(self, older_than: float) -> list[str]:
        """Delete alerts (and crops) received before ``older_than`` unless on legal hold."""
        cond = sa.and_(t.alerts.c.received_at < older_than, t.alerts.c.legal_hold.is_(False))
        with self.tx() as conn:
            ids = [str(r[0]) for r in conn.execute(sa.select(t.alerts.c.alert_id).where(cond))]
            if ids:
                conn.execute(sa.delete(t.alerts).where(t.alerts.c.alert_id.in_(ids)))
                conn.execute(sa.delete(t.adjudications)
                             .where(t.adjudications.c.alert_id.in_(ids)))  # fmt: skip
            return ids

    def outcome_counts(self) -> dict[str, int]:
        q = sa.select(t.adjudications.c.decision, sa.func.count()).group_by(
            t.adjudications.c.decision)  # fmt: skip
        with self.engine.connect() as conn:
            return {str(d): int(n) for d, n in conn.execute(q)}

    # -- deployments ------------------------------------------------------------------------

    def record_deployment(self, device_id: str, dep: Mapping[str, Any], now: float) -> None:
        values = {k: dep[k] for k in ("bundle_id", "location", "window_start", "window_end",
                                      "window_end_ts", "watchlist_size", "threshold", "state")}
        values = {k: v for k, v in values.items() if v is not None}
        if dep.get("summary") is not None:
            values["summary"] = json.dumps(dep["summary"], sort_keys=True)
        with self.tx() as conn:
            key = {"deployment_id": dep["deployment_id"], "device_id": device_id}
            self._upsert(conn, t.deployments, key, {**values, "updated_at": now})

    def deployments(self) -> list[Row]:
        q = sa.select(t.deployments).order_by(t.deployments.c.updated_at.desc())
        with self.engine.connect() as conn:
            rows = _rows(conn.execute(q))
        for r in rows:
            r["summary"] = json.loads(r["summary"]) if r["summary"] else None
        return rows

    def alert_outcomes(self, deployment_id: str) -> dict[str, int]:
        q = (sa.select(t.alerts.c.decision, sa.func.count())
             .where(t.alerts.c.deployment_id == deployment_id).group_by(t.alerts.c.decision))
        with self.engine.connect() as conn:
            return {str(d or "open"): int(n) for d, n in conn.execute(q)}

    # -- reference images -------------------------------------------------------------------

    def put_reference(self, deployment_id: str, subject_id: str, category: str,
                      image: bytes, window_end_ts: float) -> None:  # fmt: skip
        with self.tx() as conn:
            self._upsert(conn, t.reference_images,
                         {"deployment_id": deployment_id, "subject_id": subject_id},
                         {"category": category, "image": image,
                          "window_end_ts": window_end_ts})  # fmt: skip

    def reference(self, deployment_id: str, subject_id: str) -> bytes | None:
        r = t.reference_images
        q = sa.select(r.c.image).where(r.c.deployment_id == deployment_id,
                                       r.c.subject_id == subject_id)  # fmt: skip
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
            return None if row is None else bytes(row[0])

    def reference_keys(self, deployment_ids: set[str]) -> set[tuple[str, str]]:
        """Which (deployment, subject) pairs have a reference image (no image read)."""
        r = t.reference_images
        if not deployment_ids:
            return set()
        q = sa.select(r.c.deployment_id, r.c.subject_id).where(
            r.c.deployment_id.in_(sorted(deployment_ids)))
        with self.engine.connect() as conn:
            return {(str(d), str(sid)) for d, sid in conn.execute(q)}

    def reference_deployments(self) -> dict[str, tuple[int, float]]:
        r = t.reference_images
        q = sa.select(r.c.deployment_id, sa.func.count(), sa.func.max(r.c.window_end_ts)
                      ).group_by(r.c.deployment_id)  # fmt: skip
        with self.engine.connect() as conn:
            return {str(d): (int(n), float(e)) for d, n, e in conn.execute(q)}

    def delete_references(self, deployment_id: str) -> int:
        r = t.reference_images
        with self.tx() as conn:
            return conn.execute(sa.delete(r).where(r.c.deployment_id == deployment_id)).rowcount

    # -- audit chains -----------------------------------------------------------------------

    def add_audit_entry(self, device_id: str, parsed: Mapping[str, Any],
                        received_at: float) -> tuple[str, ChainState, list[int]]:  # fmt: skip
        """Store one entry and advance the device's chain.

        Returns ``(outcome, state, verified seqs)``: outcome ``new``, ``duplicate`` or
        ``conflict``.
        """
        a, c = t.audit_entries, t.chains
        body = json.dumps(parsed["entry"], sort_keys=True)
        with self.tx() as conn:
            state = self._chain(conn, device_id)
            q = sa.select(a.c.body).where(a.c.device_id == device_id, a.c.seq == parsed["seq"])
            known = conn.execute(q).first()
            outcome = "new"
            if known is not None:  # a redelivery is byte-identical; anything else conflicts
                outcome = "duplicate" if known[0] == body else "conflict"
            else:
                conn.execute(sa.insert(a).values(
                    device_id=device_id, seq=parsed["seq"], at=parsed["at"],
                    event=parsed["event"], prev_hash=parsed["prev_hash"], hash=parsed["hash"],
                    body=body, received_at=received_at))  # fmt: skip
            verified: list[int] = []
            if outcome == "conflict" and not state.broken:
                new = conflict(state, parsed["seq"])
            elif outcome == "new" and not state.broken and parsed["seq"] > state.verified_seq + 1:
                # Only the next entry can extend the chain: record the gap cheaply.
                first = conn.execute(sa.select(sa.func.min(a.c.seq)).where(
                    a.c.device_id == device_id, a.c.seq > state.verified_seq)).scalar_one()
                new, _ = advance(state, {int(first): Received({}, 0.0)})
            elif outcome == "new":
                q2 = (sa.select(a.c.seq, a.c.body, a.c.at)
                      .where(a.c.device_id == device_id, a.c.seq > state.verified_seq)
                      .order_by(a.c.seq).limit(5000))  # fmt: skip
                later = {int(s): Received(json.loads(b), float(at))
                         for s, b, at in conn.execute(q2)}  # fmt: skip
                new, verified = advance(state, later)
            else:
                new = state
            if new != state:
                values = {"verified_seq": new.verified_seq, "last_hash": new.last_hash,
                          "last_at": new.last_at, "state": new.state, "problem": new.problem,
                          "problem_at": received_at if new.problem else None}  # fmt: skip
                self._upsert(conn, c, {"device_id": device_id}, values)
            return outcome, new, verified

    def _chain(self, conn: sa.Connection, device_id: str) -> ChainState:
        c = t.chains
        row = conn.execute(sa.select(c).where(c.c.device_id == device_id)).first()
        if row is None:
            return ChainState()
        m = row._mapping
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

    def record_device_adjudication(self, alert_id: str, decision: str, officer: str,
                                   seq: int) -> bool:  # fmt: skip
        with self.tx() as conn:
            q = sa.update(t.alerts).where(t.alerts.c.alert_id == alert_id).values(
                device_decision=decision, device_officer=officer, device_seq=seq)
            return conn.execute(q).rowcount > 0
