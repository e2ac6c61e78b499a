"""What every part of the console's store shares: the engine's rows as dicts, the one-statement
upsert, and the scrub after a deletion.

The :class:`~edge.console.store.Store` makes the engine and hands it to each of its parts
(:mod:`~edge.console.store_auth`, :mod:`~edge.console.store_fleet`,
:mod:`~edge.console.store_images`, :mod:`~edge.console.store_chains`); a part that deletes
calls :func:`scrub` on that engine itself, so no part needs the Store.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("edge.console.store")  # the store's messages, whichever part says them

Row = dict[str, Any]


def rows(result: sa.CursorResult[Any]) -> list[Row]:
    return [dict(r._mapping) for r in result]


def upsert(conn: sa.Connection, table: sa.Table, keys: Mapping[str, Any],
           values: Mapping[str, Any], create: Mapping[str, Any] | None = None) -> None:  # fmt: skip
    """Insert (with ``create`` too), or update ``values`` where ``keys`` exist: one statement
    (``ON CONFLICT DO UPDATE``, SQLite and PostgreSQL), so two console instances never
    collide."""
    ins: Any
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as ins
    else:
        from sqlalchemy.dialects.sqlite import insert as ins
    stmt = ins(table).values(**{**(create or {}), **keys, **values})
    conn.execute(stmt.on_conflict_do_update(index_elements=list(keys), set_=dict(values)))


def scrub(engine: sa.Engine) -> None:
    """After a deletion: checkpoint and truncate SQLite's WAL, so no earlier copy of a
    deleted row stays in it (``secure_delete`` zeroed it in the database file)."""
    if engine.dialect.name != "sqlite":
        return
    with engine.connect() as conn:
        busy, _, _ = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:  # a long reader held it: the next deletion's scrub truncates it
        log.warning("the database's WAL could not be truncated now (busy)")
