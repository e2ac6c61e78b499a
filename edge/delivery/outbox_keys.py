"""The outbox's data keys: random AES-256 keys, each for one period (a UTC day by
default) and destroyed with its last row.

Retention as a crypto-shred (issue 13 item 6, issue 21). A row is encrypted with the
current data key of the period it was created in; the data keys are random
(``AESGCM.generate_key``, never derived, so nothing can re-derive a destroyed one) and
stored in the outbox file wrapped (AES-256-GCM, the key's id in the associated data)
under the caller's outbox key. As soon as no row uses a key (its rows all acknowledged
or purged), the key is deleted, **also in the current period**: the next row gets a
fresh key. With ``secure_delete`` and the WAL checkpointed and truncated
(:meth:`edge.delivery.outbox.Outbox._scrub`), the wrapped key is gone from the files,
and any copy of those rows' ciphertext taken while they were pending (a stale flash
block, a backup of the file) no longer decrypts with anything the device holds, even
minutes later on the same day. A key lives at most a period for new rows; a period's
rows still pending keep theirs until they go.

What this does not cover: the outbox key itself is derived from the device key, which
is on the same card (issue 13 item 1), so a copy of the *whole* card taken before the
shred still opens that copy.

The caller holds the outbox's lock and, where it writes, an open transaction.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

log = logging.getLogger(__name__)

DEFAULT_KEY_PERIOD_S: Final = 86400.0
"""A data key per UTC day."""
_WRAP_AAD: Final = b"lfr-outbox/2 data-key\x00"
_NONCE: Final = 12

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS data_keys (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    period  INTEGER NOT NULL,
    wrapped BLOB    NOT NULL
);
CREATE INDEX IF NOT EXISTS data_keys_period ON data_keys (period);
"""


class DataKeyError(Exception):
    """A wrapped data key fails authentication (tampered, or another outbox key)."""


def _columns(db: sqlite3.Connection, table: str) -> set[str]:
    return {str(r[1]) for r in db.execute(f"PRAGMA table_info({table})")}


def migrate(db: sqlite3.Connection) -> None:
    """Bring a file written by an earlier version to this schema, in one transaction.

    Format 1 (no data keys): ``outbox.key_id`` is added, NULL for its rows, which stay
    under the outbox key until they are acknowledged or purged. Format 2 (one key per
    period, keyed by the period): each key keeps its wrapping, its id becomes its period
    (the associated data was the period, so it is the id), ``outbox.key_period`` becomes
    ``key_id``.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        keys = _columns(db, "data_keys")
        if keys and "id" not in keys:  # format 2
            db.execute("ALTER TABLE data_keys RENAME TO data_keys_v2")
            for statement in filter(None, (x.strip() for x in SCHEMA.split(";"))):
                db.execute(statement)
            db.execute("INSERT INTO data_keys (id, period, wrapped) "
                       "SELECT period, period, wrapped FROM data_keys_v2")  # fmt: skip
            db.execute("DROP TABLE data_keys_v2")
        else:
            for statement in filter(None, (x.strip() for x in SCHEMA.split(";"))):
                db.execute(statement)
        cols = _columns(db, "outbox")
        if "key_period" in cols:
            db.execute("DROP INDEX IF EXISTS outbox_key_period")
            db.execute("ALTER TABLE outbox RENAME COLUMN key_period TO key_id")
        elif "key_id" not in cols:
            db.execute("ALTER TABLE outbox ADD COLUMN key_id INTEGER")
        db.execute("CREATE INDEX IF NOT EXISTS outbox_key_id ON outbox (key_id)")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class PeriodKeys:
    """Create, unwrap and destroy the data keys of one outbox connection."""

    def __init__(self, db: sqlite3.Connection, master: AESGCM, period_s: float) -> None:
        if not math.isfinite(period_s) or period_s < 60.0:
            raise ValueError("the data-key period must be at least 60 s")
        self._db = db
        self._master = master
        self.period_s = period_s
        self._cache: dict[int, AESGCM] = {}

    def period_of(self, t: float) -> int:
        return math.floor(t / self.period_s)

    def _aad(self, key_id: int) -> bytes:
        return _WRAP_AAD + str(key_id).encode("ascii")

    def get(self, key_id: int) -> AESGCM | None:
        """The data key ``key_id``, or None if it does not exist (destroyed)."""
        aes = self._cache.get(key_id)
        if aes is not None:
            return aes
        row = self._db.execute("SELECT wrapped FROM data_keys WHERE id = ?", (key_id,)).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        try:
            key = self._master.decrypt(blob[:_NONCE], blob[_NONCE:], self._aad(key_id))
        except InvalidTag:
            raise DataKeyError(f"outbox data key {key_id} failed authentication") from None
        aes = AESGCM(key)
        self._cache[key_id] = aes
        return aes

    def current(self, period: int) -> tuple[int, AESGCM]:
        """``(id, key)`` for a new row of ``period``: the period's live key, else a new one
        made and stored in the caller's transaction (after the last one was destroyed)."""
        row = self._db.execute(
            "SELECT MAX(id) FROM data_keys WHERE period = ?", (period,)
        ).fetchone()
        if row is not None and row[0] is not None:
            key_id = int(row[0])
            aes = self.get(key_id)
            if aes is not None:
                return key_id, aes
        key = AESGCM.generate_key(bit_length=256)
        cur = self._db.execute(
            "INSERT INTO data_keys (period, wrapped) VALUES (?, x'')", (period,)
        )
        key_id = int(cur.lastrowid or 0)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + self._master.encrypt(nonce, key, self._aad(key_id))
        self._db.execute("UPDATE data_keys SET wrapped = ? WHERE id = ?", (wrapped, key_id))
        aes = AESGCM(key)
        self._cache[key_id] = aes
        return key_id, aes

    def forget(self) -> None:
        """Drop the unwrapped keys held in memory (after a rolled-back transaction)."""
        self._cache.clear()

    def shred_unused(self) -> tuple[int, ...]:
        """Delete every key no row uses any more (the current period's too); their ids."""
        gone = tuple(
            int(r[0])
            for r in self._db.execute(
                "SELECT id FROM data_keys WHERE NOT EXISTS "
                "(SELECT 1 FROM outbox WHERE key_id = data_keys.id)"
            )
        )
        for key_id in gone:
            self._db.execute("DELETE FROM data_keys WHERE id = ?", (key_id,))
            self._cache.pop(key_id, None)
        if gone:
            log.debug("outbox data keys destroyed: %s", len(gone))
        return gone
