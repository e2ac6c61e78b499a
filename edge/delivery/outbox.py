"""The durable outbox: every message that must reach the control room waits here until PUBACK.

SQLite in WAL mode, one table, payloads encrypted at rest with AES-256-GCM.

- **Durability.** ``journal_mode=WAL`` + ``synchronous=FULL``. In WAL mode
  ``NORMAL`` survives a crash of the process but may lose the last commits on
  power loss; a unit in a van loses power abruptly, an alert must survive that,
  and alerts are rare (matches only), so one fsync per put/ack costs nothing
  that matters.
- **Nothing deleted stays in the files (item 6 of issue 13).** ``secure_delete=ON``
  zeroes deleted cells and freed pages; every ack and purge that deleted something
  then checkpoints with ``wal_checkpoint(TRUNCATE)``, and ``journal_size_limit=0``
  truncates the WAL after automatic checkpoints too, so the WAL never keeps an old
  copy of a deleted row. Retention is also a crypto-shred: rows are encrypted with
  random data keys (a new one at least every period, a UTC day), wrapped under the
  outbox key (:mod:`edge.delivery.outbox_keys`), and a key is destroyed as soon as none
  of its rows is left, the current one too (the next row gets a fresh key).
  ``test_outbox.py::test_deleted_rows_are_unrecoverable`` scans the raw db, ``-wal``
  and ``-shm`` bytes; ``::test_a_key_dies_with_its_last_row_the_same_day`` opens a
  pending row's copy with every key left after its acknowledgement.
- **Encryption.** The caller passes a 32-byte outbox key (derived from a systemd
  credential, never the config); it wraps the data keys. Each row is ``nonce(12) ||
  AESGCM(data key of its period).encrypt(nonce, payload, aad)`` with a random
  nonce and ``aad = "lfr-outbox/1" | msg_id | topic | retain``: a row cannot be
  swapped to another id or topic. A key-check record makes a wrong key fail at open
  (:class:`OutboxKeyError`), a tampered row when read (:class:`OutboxTampered`).
- **Bounded.** ``put`` beyond ``max_items`` rows or ``max_bytes`` of ciphertext
  raises :class:`OutboxFull`: never a silent drop; the caller audits it. The last
  ``reserve_items`` rows and ``reserve_bytes`` are kept for ``put(..., reserved=True)``
  (the audit entries: a flood of alerts cannot crowd out the record of it).
- **Undelivered audit entries are never purged by retention** (topics ending in
  :data:`KEEP_UNDELIVERED`): they wait for the control room, and ``status`` raises an
  alarm while they wait too long (:class:`edge.service.health.AuditDelivery`).
- **Retention (safeguard 7).** :meth:`Outbox.purge` deletes rows older than the
  retention (31 days) unless on legal hold and returns what it deleted for the
  audit log. :meth:`Outbox.ack` deletes a delivered row, except that a row on
  legal hold is kept (marked delivered, no longer pending) until the hold is
  lifted; the next purge then removes it.
- **Threads.** One connection guarded by a lock: the inference loop puts, the
  publisher's network thread acks. Other processes may open the same file
  (``busy_timeout``).

Any message kind can go through it (alerts, retained deployment records, audit
entries): rows are ``(seq, msg_id, topic, retain, created_at, ciphertext,
attempts, legal_hold, published_at, delivered, bad, key_id)`` and come out in
``seq`` (insertion) order. Files of earlier formats are migrated at open
(:func:`~edge.delivery.outbox_keys.migrate`): format 1's rows (no data keys) stay under
the outbox key until they are acknowledged or purged.

Over 400 lines: one class around one connection and its lock; the data keys
(:mod:`~edge.delivery.outbox_keys`) and the errors and records
(:mod:`~edge.delivery.outbox_types`) are split out.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.delivery.outbox_keys import DEFAULT_KEY_PERIOD_S, DataKeyError, PeriodKeys, migrate
from edge.delivery.outbox_types import (
    OutboxError,
    OutboxFull,
    OutboxItem,
    OutboxKeyError,
    OutboxStats,
    OutboxTampered,
    PurgeResult,
    db_errors,
)

log = logging.getLogger(__name__)

__all__ = [
    "RETENTION_S",
    "Outbox",
    "OutboxError",
    "OutboxFull",
    "OutboxItem",
    "OutboxKeyError",
    "OutboxStats",
    "OutboxTampered",
    "PurgeResult",
]

RETENTION_S: Final = 31 * 24 * 3600
"""Default retention: 31 days (MPS APD), safeguard 7."""
DEFAULT_MAX_ITEMS: Final = 10_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
KEEP_UNDELIVERED: Final = ("/audit",)
"""Topic suffixes whose undelivered rows retention never purges."""
_FORMAT: Final = b"3"
_AAD_PREFIX: Final = b"lfr-outbox/1\x00"
_KEY_CHECK_AAD: Final = b"lfr-outbox/1 key-check"
_KEY_CHECK_PLAIN: Final = b"lfr-outbox key check"
_NONCE: Final = 12
_COLUMNS: Final = (
    "seq, msg_id, topic, retain, created_at, ciphertext, attempts, legal_hold, "
    "published_at, key_id"
)

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    msg_id       TEXT    NOT NULL UNIQUE,
    topic        TEXT    NOT NULL,
    retain       INTEGER NOT NULL DEFAULT 0,
    created_at   REAL    NOT NULL,
    ciphertext   BLOB    NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    legal_hold   INTEGER NOT NULL DEFAULT 0,
    published_at REAL,
    delivered    INTEGER NOT NULL DEFAULT 0,
    bad          INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at);
"""


def _aad(msg_id: str, topic: str, retain: bool) -> bytes:
    return b"%s%s\x00%s\x00%s" % (
        _AAD_PREFIX,
        msg_id.encode("utf-8"),
        topic.encode("utf-8"),
        b"1" if retain else b"0",
    )


class Outbox:
    """A durable, encrypted, bounded FIFO of messages waiting for PUBACK. Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        key: bytes,
        *,
        max_items: int = DEFAULT_MAX_ITEMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        key_period_s: float = DEFAULT_KEY_PERIOD_S,
        reserve_items: int = 0,
        reserve_bytes: int = 0,
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise OutboxKeyError("outbox key must be 32 bytes (AES-256)")
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")
        self.path = Path(path)
        self.max_items = max_items
        self.max_bytes = max_bytes
        if not (0 <= reserve_items < max_items and 0 <= reserve_bytes < max_bytes):
            raise ValueError("the reserve must be smaller than the outbox")
        self.reserve_items, self.reserve_bytes = reserve_items, reserve_bytes
        self._aes = AESGCM(bytes(key))
        self._lock = threading.Lock()
        try:
            if not self.path.exists():
                # Create it private before SQLite does (SQLite copies the mode to -wal/-shm).
                os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            self._db = sqlite3.connect(
                self.path, timeout=5.0, isolation_level=None, check_same_thread=False
            )
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise OutboxError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA journal_size_limit=0")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            migrate(self._db)
            self._keys = PeriodKeys(self._db, self._aes, key_period_s)
            self._check_key()
        except sqlite3.DatabaseError as exc:
            raise OutboxError(f"{self.path}: not a usable outbox database ({exc})") from None

    # -- setup ------------------------------------------------------------------------------

    def _check_key(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'key_check'").fetchone()
            if row is None:
                nonce = os.urandom(_NONCE)
                blob = nonce + self._aes.encrypt(nonce, _KEY_CHECK_PLAIN, _KEY_CHECK_AAD)
                self._db.execute(
                    "INSERT INTO meta (key, value) VALUES ('format', ?), ('key_check', ?)",
                    (_FORMAT, blob),
                )
            else:
                blob = bytes(row[0])
                try:
                    plain = self._aes.decrypt(blob[:_NONCE], blob[_NONCE:], _KEY_CHECK_AAD)
                except InvalidTag:
                    plain = b""
                if plain != _KEY_CHECK_PLAIN:
                    raise OutboxKeyError(
                        f"{self.path}: the outbox key does not open this file "
                        "(wrong key, or the file was written with another key)"
                    )
                self._db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (_FORMAT,))
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back if a transaction is still open: SQLite ends it by itself when a
        COMMIT fails on a full disk, and a second ROLLBACK would hide the real error."""
        self._keys.forget()  # a data key made in this transaction is not stored
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("outbox rollback failed: %s", exc)

    def _scrub(self) -> None:
        """After a delete (caller holds the lock): copy the WAL into the file and truncate
        it, so no frame keeps a deleted row. Not fatal if it fails (a full disk, another
        process reading): the delete is committed and the next ack or purge retries."""
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("outbox checkpoint failed (retried at the next delete): %s", exc)
            return
        if busy:
            log.info("outbox checkpoint blocked by a reader (retried at the next delete)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writing ----------------------------------------------------------------------------

    @db_errors
    def put(
        self,
        msg_id: str,
        topic: str,
        payload: bytes,
        retain: bool = False,
        *,
        now: float | None = None,
        reserved: bool = False,
    ) -> bool:
        """Store a message durably (committed and fsynced on return).

        Returns False, changing nothing, if ``msg_id`` is already stored (a
        re-put after a crash is harmless). Raises :class:`OutboxFull` if the
        row would exceed ``max_items`` or ``max_bytes`` (less the reserve unless
        ``reserved``).
        """
        if not msg_id or not topic:
            raise ValueError("msg_id and topic must be non-empty")
        created = time.time() if now is None else now
        period = self._keys.period_of(created)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM outbox WHERE msg_id = ?", (msg_id,)).fetchone():
                    self._db.execute("ROLLBACK")
                    return False
                nonce = os.urandom(_NONCE)
                key_id, aes = self._keys.current(period)
                blob = nonce + aes.encrypt(nonce, bytes(payload), _aad(msg_id, topic, retain))
                items, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0) FROM outbox"
                ).fetchone()
                max_items, max_bytes = self.max_items, self.max_bytes
                if not reserved:
                    max_items -= self.reserve_items
                    max_bytes -= self.reserve_bytes
                if items + 1 > max_items or size + len(blob) > max_bytes:
                    raise OutboxFull(
                        f"outbox full ({items} messages, {size} bytes; limits "
                        f"{max_items} messages, {max_bytes} bytes): "
                        f"message {msg_id} not stored"
                    )
                self._db.execute(
                    "INSERT INTO outbox (msg_id, topic, retain, created_at, ciphertext, "
                    "key_id) VALUES (?, ?, ?, ?, ?, ?)",
                    (msg_id, topic, int(retain), created, blob, key_id),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return True

    @db_errors
    def put_many(
        self, items: Sequence[tuple[str, str, bytes, bool]], *, now: float | None = None
    ) -> list[bool]:
        """Store ``(msg_id, topic, payload, retain)`` rows in order, in one transaction (one
        commit and fsync for the batch: the alert worker's batches, issue 20).

        All or nothing: returns one flag per item (False: ``msg_id`` already stored, that
        item skipped); raises :class:`OutboxFull` (nothing stored) if the batch would
        exceed the limits less the reserve. Durable on return, as :meth:`put`.
        """
        for msg_id, topic, _, _ in items:
            if not msg_id or not topic:
                raise ValueError("msg_id and topic must be non-empty")
        created = time.time() if now is None else now
        period = self._keys.period_of(created)
        max_items = self.max_items - self.reserve_items
        max_bytes = self.max_bytes - self.reserve_bytes
        added: list[bool] = []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0) FROM outbox"
                ).fetchone()
                seen: set[str] = set()
                for msg_id, topic, payload, retain in items:
                    if msg_id in seen or self._db.execute(
                        "SELECT 1 FROM outbox WHERE msg_id = ?", (msg_id,)
                    ).fetchone():
                        added.append(False)
                        continue
                    seen.add(msg_id)
                    nonce = os.urandom(_NONCE)
                    key_id, aes = self._keys.current(period)
                    blob = nonce + aes.encrypt(nonce, bytes(payload), _aad(msg_id, topic, retain))
                    count, size = count + 1, size + len(blob)
                    if count > max_items or size > max_bytes:
                        raise OutboxFull(
                            f"outbox full (limits {max_items} messages, {max_bytes} bytes): "
                            f"a batch of {len(items)} messages not stored"
                        )
                    self._db.execute(
                        "INSERT INTO outbox (msg_id, topic, retain, created_at, ciphertext, "
                        "key_id) VALUES (?, ?, ?, ?, ?, ?)",
                        (msg_id, topic, int(retain), created, blob, key_id),
                    )
                    added.append(True)
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return added

    @db_errors
    def mark_sent(self, msg_id: str, now: float | None = None) -> float | None:
        """Record an attempt to publish ``msg_id``; returns its first-publish time.

        The first call stores ``now`` as ``published_at``; later calls keep it,
        so a redelivered message carries the same ``published_at``. None if the
        row is gone.
        """
        return self.mark_sent_many([msg_id], now)[0]

    @db_errors
    def ack(self, msg_id: str) -> bool:
        """The broker acknowledged ``msg_id`` (PUBACK success): delete it.

        A row on legal hold is kept, marked delivered (no longer pending). Returns
        True if the row existed. A deletion destroys its data key if it was the key's
        last row (the current period's too: the next row gets a new key), then scrubs
        the WAL.
        """
        return self.ack_many([msg_id]) > 0

    @db_errors
    def mark_sent_many(
        self, msg_ids: Sequence[str], now: float | None = None
    ) -> list[float | None]:
        """:meth:`mark_sent` for several rows in one transaction (one commit, not one each);
        the first-publish time of each, None for a row that is gone."""
        at = time.time() if now is None else now
        firsts: list[float | None] = []
        if not msg_ids:
            return firsts
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for msg_id in msg_ids:
                    self._db.execute(
                        "UPDATE outbox SET attempts = attempts + 1, "
                        "published_at = COALESCE(published_at, ?) WHERE msg_id = ?",
                        (at, msg_id),
                    )
                    row = self._db.execute(
                        "SELECT published_at FROM outbox WHERE msg_id = ?", (msg_id,)
                    ).fetchone()
                    firsts.append(None if row is None else float(row[0]))
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return firsts

    @db_errors
    def ack_many(self, msg_ids: Sequence[str]) -> int:
        """:meth:`ack` for several rows: one transaction, one key shred, one WAL scrub (the
        publisher acknowledges a burst of PUBACKs at once). Returns how many rows existed."""
        found = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                deleted = 0
                for msg_id in msg_ids:
                    cur = self._db.execute(
                        "DELETE FROM outbox WHERE msg_id = ? AND legal_hold = 0", (msg_id,)
                    )
                    if cur.rowcount > 0:
                        deleted += 1
                        continue
                    cur = self._db.execute(
                        "UPDATE outbox SET delivered = 1 WHERE msg_id = ?", (msg_id,)
                    )
                    found += cur.rowcount > 0
                if deleted:
                    self._keys.shred_unused()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if deleted:
                self._scrub()
        return found + deleted

    @db_errors
    def mark_bad(self, msg_id: str) -> None:
        """Take a row that failed authentication out of the queue (kept until purged)."""
        with self._lock:
            self._db.execute("UPDATE outbox SET bad = 1 WHERE msg_id = ?", (msg_id,))

    @db_errors
    def set_legal_hold(self, msg_id: str, on: bool) -> bool:
        """Put ``msg_id`` on (or take it off) legal hold; False if no such row."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE outbox SET legal_hold = ? WHERE msg_id = ?", (int(on), msg_id)
            )
            return cur.rowcount > 0

    @db_errors
    def purge(self, older_than_s: float = RETENTION_S, now: float | None = None) -> PurgeResult:
        """Delete rows created more than ``older_than_s`` ago, and delivered rows whose
        legal hold was lifted; rows on legal hold are kept. Returns what was deleted."""
        at = time.time() if now is None else now
        cutoff = at - older_than_s
        keep = " AND ".join(f"topic NOT LIKE '%{s}'" for s in KEEP_UNDELIVERED)
        where = f"legal_hold = 0 AND ((created_at < ? AND (bad = 1 OR {keep})) OR delivered = 1)"
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = tuple(
                    r[0]
                    for r in self._db.execute(
                        f"SELECT msg_id FROM outbox WHERE {where} ORDER BY seq",  # noqa: S608
                        (cutoff,),
                    )
                )
                self._db.execute(f"DELETE FROM outbox WHERE {where}", (cutoff,))  # noqa: S608
                shredded = self._keys.shred_unused()
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if ids or shredded:
                self._scrub()
        if ids:
            log.info("outbox purge deleted %s messages", len(ids))
        return PurgeResult(len(ids), ids)

    # -- reading ----------------------------------------------------------------------------

    def _item(self, row: Any) -> OutboxItem:
        """Decrypt one row (caller holds the lock: a data key may be read)."""
        seq, msg_id, topic, retain, created, blob, attempts, hold, published, key_id = row
        mid, tpc, ret, raw = str(msg_id), str(topic), bool(retain), bytes(blob)
        try:
            aes = self._aes if key_id is None else self._keys.get(int(key_id))
        except DataKeyError:
            raise OutboxTampered(mid) from None
        if aes is None or len(raw) < _NONCE + 16:
            raise OutboxTampered(mid)
        try:
            payload = aes.decrypt(raw[:_NONCE], raw[_NONCE:], _aad(mid, tpc, ret))
        except InvalidTag:
            raise OutboxTampered(mid) from None
        published_at = None if published is None else float(published)
        return OutboxItem(
            int(seq), mid, tpc, ret, float(created), payload, int(attempts), bool(hold),
            published_at,
        )

    @db_errors
    def pending(self, limit: int = 100, after_seq: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` undelivered messages with ``seq > after_seq``, oldest first.

        Raises :class:`OutboxTampered` (with ``msg_id``) at the first row that
        fails authentication; :meth:`mark_bad` it and call again.
        """
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox "  # noqa: S608
                "WHERE delivered = 0 AND bad = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
            return [self._item(row) for row in rows]

    @db_errors
    def get(self, msg_id: str) -> OutboxItem | None:
        """One row (pending or delivered-and-held) by id, decrypted; None if absent."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE msg_id = ?", (msg_id,)  # noqa: S608
            ).fetchone()
            return None if row is None else self._item(row)

    @db_errors
    def oldest_pending(self, topic: str) -> tuple[int, float | None]:
        """(count, oldest ``created_at``) of the undelivered rows on ``topic``."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_at) FROM outbox "
                "WHERE delivered = 0 AND bad = 0 AND topic = ?", (topic,)
            ).fetchone()
        return int(n), None if oldest is None else float(oldest)

    @db_errors
    def count_pending(self) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE delivered = 0 AND bad = 0"
                ).fetchone()[0]
            )

    @db_errors
    def stats(self) -> OutboxStats:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0), "
                "COALESCE(SUM(delivered = 0 AND bad = 0), 0), COALESCE(SUM(legal_hold), 0), "
                "COALESCE(SUM(bad), 0) FROM outbox"
            ).fetchone()
        return OutboxStats(*(int(v) for v in row))
