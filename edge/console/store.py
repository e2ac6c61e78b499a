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

The Store itself keeps the alerts (with their adjudications and tombstones) and the
console's own trail; it makes the engine and hands it to its four parts, each a plain class
over that engine: ``store.auth`` (users, sessions, login attempts:
:mod:`edge.console.store_auth`), ``store.fleet`` (devices, deployments, alarms, the console's
MQTT sessions: :mod:`edge.console.store_fleet`), ``store.images`` (reference images, the
wrapped data keys: :mod:`edge.console.store_images`) and ``store.audit`` (the vans' audit
chains: :mod:`edge.console.store_chains`). What they share (rows, upsert, scrub) is in
:mod:`edge.console.db`; no part knows the Store.
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
from edge.console.db import Row, rows, scrub
from edge.console.store_auth import AuthStore
from edge.console.store_chains import AuditChains
from edge.console.store_fleet import FleetStore
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


class Store:
    """The engine, its four parts (``auth``, ``fleet``, ``images``, ``audit``: see the module),
    the alerts and the console's trail."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.auth = AuthStore(engine)
        self.fleet = FleetStore(engine)
        self.images = ImageStore(engine)
        self.audit = AuditChains(engine)

    @classmethod
    def open(cls, url: str) -> Store:
        engine = make_engine(url)
        migrate.upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def scrub(self) -> None:
        """After a deletion: truncate SQLite's WAL (:func:`edge.console.db.scrub`)."""
        scrub(self.engine)

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
            return rows(conn.execute(q))

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
            return rows(conn.execute(q))

    def alert(self, alert_id: str) -> Row | None:
        found = self._alert_where(t.alerts.c.alert_id == alert_id)
        return found[0] if found else None

    def _alert_where(self, cond: Any) -> list[Row]:
        q = sa.select(*self._ALERT_COLS, (t.alerts.c.crop.is_not(None)).label("has_crop"))
        with self.engine.connect() as conn:
            return rows(conn.execute(q.where(cond)))

    def undecided(self, limit: int = 1) -> tuple[int, list[Row]]:
        """How many alerts no officer has decided yet, and the newest ``limit`` of them."""
        cond = t.alerts.c.decision.is_(None)
        q = (sa.select(*self._ALERT_COLS, (t.alerts.c.crop.is_not(None)).label("has_crop"))
             .where(cond).order_by(t.alerts.c.received_at.desc(), t.alerts.c.alert_id.desc())
             .limit(limit))  # fmt: skip
        with self.engine.connect() as conn:
            n = conn.execute(sa.select(sa.func.count()).select_from(t.alerts).where(cond))
            return int(n.scalar_one()), rows(conn.execute(q))

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
            return rows(conn.execute(q))

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
            return rows(conn.execute(sa.select(t.alert_tombstones)))

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
