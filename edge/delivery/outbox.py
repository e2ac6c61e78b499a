"""The durable outbox: every message that must reach the control room waits here until PUBACK.

SQLite in WAL mode, one table, payloads encrypted at rest with AES-256-GCM.

- **Durability.** ``journal_mode=WAL`` + ``synchronous=FULL``. In WAL mode
  ``NORMAL`` survives a crash of the process but may lose the last commits on
  power loss; a unit in a van loses power abruptly, an alert must survive that,
  and alerts are rare (matches only), so one fsync per put/ack costs nothing
  that matters. ``secure_delete=ON`` overwrites deleted rows, and a purge
  checkpoints and truncates the WAL.
- **Encryption.** The caller passes a 32-byte key (from a systemd credential,
  never the config). Each row is ``nonce(12) || AESGCM(key).encrypt(nonce,
  payload, aad)`` with a random nonce and ``aad = "lfr-outbox/1" | msg_id |
  topic | retain``: a row cannot be swapped to another id or topic. The file
  holds a key-check record, so a wrong key fails at open (:class:`OutboxKeyError`);
  a tampered row fails when read (:class:`OutboxTampered`); neither ever yields
  garbage plaintext.
- **Bounded.** ``put`` beyond ``max_items`` rows or ``max_bytes`` of ciphertext
  raises :class:`OutboxFull`: never a silent drop; the caller audits it.
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
attempts, legal_hold, published_at, delivered, bad)`` and come out in ``seq``
(insertion) order.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Concatenate, Final, ParamSpec, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import EdgeError

log = logging.getLogger(__name__)

RETENTION_S: Final = 31 * 24 * 3600
"""Default retention: 31 days (MPS APD), safeguard 7."""
DEFAULT_MAX_ITEMS: Final = 10_000
DEFAULT_MAX_BYTES: Final = 256 * 1024 * 1024
_FORMAT: Final = b"1"
_AAD_PREFIX: Final = b"lfr-outbox/1\x00"
_KEY_CHECK_AAD: Final = b"lfr-outbox/1 key-check"
_KEY_CHECK_PLAIN: Final = b"lfr-outbox key check"
_NONCE: Final = 12

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


class OutboxError(EdgeError):
    """The outbox cannot be used (corrupt file, I/O error)."""


class OutboxKeyError(OutboxError):
    """The key does not open this outbox (wrong key, or written with another key)."""


class OutboxTampered(OutboxError):  # noqa: N818 (the name the daemon uses)
    """A row failed authentication: it was modified, truncated or moved."""

    def __init__(self, msg_id: str) -> None:
        self.msg_id = msg_id
        super().__init__(f"outbox row {msg_id} failed authentication (tampered or corrupt)")


class OutboxFull(OutboxError):  # noqa: N818 (the name the daemon uses)
    """``put`` would exceed ``max_items`` or ``max_bytes``; the message was NOT stored."""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One decrypted pending message."""

    seq: int
    msg_id: str
    topic: str
    retain: bool
    created_at: float
    payload: bytes
    attempts: int
    legal_hold: bool
    published_at: float | None  # first time it was handed to MQTT, None if never


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What :meth:`Outbox.purge` deleted, for the audit log."""

    count: int
    msg_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OutboxStats:
    items: int  # rows of any state
    bytes: int  # ciphertext bytes of all rows
    pending: int  # waiting for delivery
    held: int  # on legal hold (pending or delivered)
    bad: int  # failed authentication, kept for inspection, never sent


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _db_errors(fn: Callable[Concatenate[Outbox, _P], _R]) -> Callable[Concatenate[Outbox, _P], _R]:
    """Turn SQLite failures (disk full, I/O error, locked) into :class:`OutboxError`."""

    @functools.wraps(fn)
    def wrapper(self: Outbox, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: {exc}") from exc

    return wrapper


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
    ) -> None:
        if not isinstance(key, bytes | bytearray) or len(key) != 32:
            raise OutboxKeyError("outbox key must be 32 bytes (AES-256)")
        if max_items < 1 or max_bytes < 1:
            raise ValueError("max_items and max_bytes must be positive")
        self.path = Path(path)
        self.max_items = max_items
        self.max_bytes = max_bytes
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
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
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
            self._db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _rollback(self) -> None:
        """Roll back if a transaction is still open: SQLite ends it by itself when a
        COMMIT fails on a full disk, and a second ROLLBACK would hide the real error."""
        if self._db.in_transaction:
            try:
                self._db.execute("ROLLBACK")
            except sqlite3.Error as exc:
                log.error("outbox rollback failed: %s", exc)

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

    @_db_errors
    def put(
        self,
        msg_id: str,
        topic: str,
        payload: bytes,
        retain: bool = False,
        *,
        now: float | None = None,
    ) -> bool:
        """Store a message durably (committed and fsynced on return).

        Returns False, changing nothing, if ``msg_id`` is already stored (a
        re-put after a crash is harmless). Raises :class:`OutboxFull` if the
        row would exceed ``max_items`` or ``max_bytes``.
        """
        if not msg_id or not topic:
            raise ValueError("msg_id and topic must be non-empty")
        nonce = os.urandom(_NONCE)
        blob = nonce + self._aes.encrypt(nonce, bytes(payload), _aad(msg_id, topic, retain))
        created = time.time() if now is None else now
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if self._db.execute("SELECT 1 FROM outbox WHERE msg_id = ?", (msg_id,)).fetchone():
                    self._db.execute("ROLLBACK")
                    return False
                items, size = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0) FROM outbox"
                ).fetchone()
                if items + 1 > self.max_items or size + len(blob) > self.max_bytes:
                    raise OutboxFull(
                        f"outbox full ({items} messages, {size} bytes; limits "
                        f"{self.max_items} messages, {self.max_bytes} bytes): "
                        f"message {msg_id} not stored"
                    )
                self._db.execute(
                    "INSERT INTO outbox (msg_id, topic, retain, created_at, ciphertext) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (msg_id, topic, int(retain), created, blob),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
        return True

    @_db_errors
    def mark_sent(self, msg_id: str, now: float | None = None) -> float | None:
        """Record an attempt to publish ``msg_id``; returns its first-publish time.

        The first call stores ``now`` as ``published_at``; later calls keep it,
        so a redelivered message carries the same ``published_at``. None if the
        row is gone.
        """
        at = time.time() if now is None else now
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, "
                "published_at = COALESCE(published_at, ?) WHERE msg_id = ?",
                (at, msg_id),
            )
            row = self._db.execute(
                "SELECT published_at FROM outbox WHERE msg_id = ?", (msg_id,)
            ).fetchone()
        return None if row is None else float(row[0])

    @_db_errors
    def ack(self, msg_id: str) -> bool:
        """The broker acknowledged ``msg_id`` (PUBACK success): delete it.

        A row on legal hold is kept, marked delivered (no longer pending). Returns
        True if the row existed.
        """
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM outbox WHERE msg_id = ? AND legal_hold = 0", (msg_id,)
            )
            if cur.rowcount:
                return True
            cur = self._db.execute("UPDATE outbox SET delivered = 1 WHERE msg_id = ?", (msg_id,))
            return cur.rowcount > 0

    @_db_errors
    def mark_bad(self, msg_id: str) -> None:
        """Take a row that failed authentication out of the queue (kept until purged)."""
        with self._lock:
            self._db.execute("UPDATE outbox SET bad = 1 WHERE msg_id = ?", (msg_id,))

    @_db_errors
    def set_legal_hold(self, msg_id: str, on: bool) -> bool:
        """Put ``msg_id`` on (or take it off) legal hold; False if no such row."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE outbox SET legal_hold = ? WHERE msg_id = ?", (int(on), msg_id)
            )
            return cur.rowcount > 0

    @_db_errors
    def purge(self, older_than_s: float = RETENTION_S, now: float | None = None) -> PurgeResult:
        """Delete rows created more than ``older_than_s`` ago, and delivered rows whose
        legal hold was lifted; rows on legal hold are kept. Returns what was deleted."""
        cutoff = (time.time() if now is None else now) - older_than_s
        where = "legal_hold = 0 AND (created_at < ? OR delivered = 1)"
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
                self._db.execute("COMMIT")
            except BaseException:
                self._rollback()
                raise
            if ids:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if ids:
            log.info("outbox purge deleted %s messages", len(ids))
        return PurgeResult(len(ids), ids)

    # -- reading ----------------------------------------------------------------------------

    def _decrypt(self, msg_id: str, topic: str, retain: bool, blob: bytes) -> bytes:
        if len(blob) < _NONCE + 16:
            raise OutboxTampered(msg_id)
        try:
            return self._aes.decrypt(blob[:_NONCE], blob[_NONCE:], _aad(msg_id, topic, retain))
        except InvalidTag:
            raise OutboxTampered(msg_id) from None

    @_db_errors
    def pending(self, limit: int = 100, after_seq: int = 0) -> list[OutboxItem]:
        """Up to ``limit`` undelivered messages with ``seq > after_seq``, oldest first.

        Raises :class:`OutboxTampered` (with ``msg_id``) at the first row that
        fails authentication; :meth:`mark_bad` it and call again.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, msg_id, topic, retain, created_at, ciphertext, attempts, "
                "legal_hold, published_at FROM outbox "
                "WHERE delivered = 0 AND bad = 0 AND seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        out = []
        for seq, msg_id, topic, retain, created, blob, attempts, hold, published in rows:
            out.append(
                OutboxItem(
                    seq=int(seq),
                    msg_id=str(msg_id),
                    topic=str(topic),
                    retain=bool(retain),
                    created_at=float(created),
                    payload=self._decrypt(msg_id, topic, bool(retain), bytes(blob)),
                    attempts=int(attempts),
                    legal_hold=bool(hold),
                    published_at=None if published is None else float(published),
                )
            )
        return out

    @_db_errors
    def get(self, msg_id: str) -> OutboxItem | None:
        """One row (pending or delivered-and-held) by id, decrypted; None if absent."""
        with self._lock:
            row = self._db.execute(
                "SELECT seq, msg_id, topic, retain, created_at, ciphertext, attempts, "
                "legal_hold, published_at FROM outbox WHERE msg_id = ?",
                (msg_id,),
            ).fetchone()
        if row is None:
            return None
        seq, mid, topic, retain, created, blob, attempts, hold, published = row
        return OutboxItem(
            seq=int(seq),
            msg_id=str(mid),
            topic=str(topic),
            retain=bool(retain),
            created_at=float(created),
            payload=self._decrypt(mid, topic, bool(retain), bytes(blob)),
            attempts=int(attempts),
            legal_hold=bool(hold),
            published_at=None if published is None else float(published),
        )

    @_db_errors
    def count_pending(self) -> int:
        with self._lock:
            return int(
                self._db.execute(
                    "SELECT COUNT(*) FROM outbox WHERE delivered = 0 AND bad = 0"
                ).fetchone()[0]
            )

    @_db_errors
    def stats(self) -> OutboxStats:
        with self._lock:
            row = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(ciphertext)), 0), "
                "COALESCE(SUM(delivered = 0 AND bad = 0), 0), COALESCE(SUM(legal_hold), 0), "
                "COALESCE(SUM(bad), 0) FROM outbox"
            ).fetchone()
        return OutboxStats(*(int(v) for v in row))
