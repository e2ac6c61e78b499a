"""The outbox's data keys: one random AES-256 key per period (a UTC day by default).

Retention as a crypto-shred (issue 13 item 6). A row is encrypted with the data key of
the period it was created in; the data keys are random (``AESGCM.generate_key``, never
derived, so nothing can re-derive a destroyed one) and stored in the outbox file
wrapped (AES-256-GCM) under the caller's outbox key. When no row of a period is left
(all acknowledged or purged) and the period is not the current one, its key row is
deleted; with ``secure_delete`` and the WAL checkpointed and truncated
(:meth:`edge.delivery.outbox.Outbox._scrub`), the wrapped key is gone from the files,
and any copy of those rows' ciphertext (a stale flash block, a backup of the file) no
longer decrypts with anything the device holds.

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
CREATE TABLE IF NOT EXISTS data_keys (period INTEGER PRIMARY KEY, wrapped BLOB NOT NULL);
"""


class DataKeyError(Exception):
    """A wrapped data key fails authentication (tampered, or another outbox key)."""


def migrate(db: sqlite3.Connection) -> None:
    """Add ``outbox.key_period`` to a file written before data keys existed (its rows,
    ``key_period`` NULL, stay under the outbox key until they are acknowledged or purged)."""
    db.executescript(SCHEMA)
    cols = {str(r[1]) for r in db.execute("PRAGMA table_info(outbox)")}
    if "key_period" not in cols:
        db.execute("ALTER TABLE outbox ADD COLUMN key_period INTEGER")
    db.execute("CREATE INDEX IF NOT EXISTS outbox_key_period ON outbox (key_period)")


class PeriodKeys:
    """Create, unwrap and destroy the per-period data keys of one outbox connection."""

    def __init__(self, db: sqlite3.Connection, master: AESGCM, period_s: float) -> None:
        if not math.isfinite(period_s) or period_s < 60.0:
            raise ValueError("the data-key period must be at least 60 s")
        self._db = db
        self._master = master
        self.period_s = period_s
        self._cache: dict[int, AESGCM] = {}

    def period_of(self, t: float) -> int:
        return math.floor(t / self.period_s)

    def _aad(self, period: int) -> bytes:
        return _WRAP_AAD + str(period).encode("ascii")

    def get(self, period: int) -> AESGCM | None:
        """The data key of ``period``, or None if it does not exist (destroyed)."""
        aes = self._cache.get(period)
        if aes is not None:
            return aes
        row = self._db.execute(
            "SELECT wrapped FROM data_keys WHERE period = ?", (period,)
        ).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        try:
            key = self._master.decrypt(blob[:_NONCE], blob[_NONCE:], self._aad(period))
        except InvalidTag:
            raise DataKeyError(f"outbox data key of period {period} failed authentication") \
                from None
        aes = AESGCM(key)
        self._cache[period] = aes
        return aes

    def get_or_create(self, period: int) -> AESGCM:
        """The data key of ``period``, made and stored (in the caller's transaction) if new."""
        aes = self.get(period)
        if aes is not None:
            return aes
        key = AESGCM.generate_key(bit_length=256)
        nonce = os.urandom(_NONCE)
        wrapped = nonce + self._master.encrypt(nonce, key, self._aad(period))
        self._db.execute(
            "INSERT INTO data_keys (period, wrapped) VALUES (?, ?)", (period, wrapped)
        )
        aes = AESGCM(key)
        self._cache[period] = aes
        return aes

    def forget(self) -> None:
        """Drop the unwrapped keys held in memory (after a rolled-back transaction)."""
        self._cache.clear()

    def shred_unused(self, current: int) -> tuple[int, ...]:
        """Delete the key of every period but ``current`` that no row uses any more."""
        gone = tuple(
            int(r[0])
            for r in self._db.execute(
                "SELECT period FROM data_keys WHERE period != ? AND NOT EXISTS "
                "(SELECT 1 FROM outbox WHERE key_period = data_keys.period)",
                (current,),
            )
        )
        for period in gone:
            self._db.execute("DELETE FROM data_keys WHERE period = ?", (period,))
            self._cache.pop(period, None)
        if gone:
            log.info("outbox data keys destroyed for %s period(s)", len(gone))
        return gone
