"""Users, sessions and login attempts in the console's database: the Store's ``auth`` part.

Sessions are stored by the SHA-256 of their token, never the token itself, so a copy of
the database does not let anyone log in. Changing a user's password or role, disabling
or removing them deletes their sessions in the same transaction.

Login attempts (table ``login_failures``): :meth:`AuthStore.begin_login_attempt`
records an attempt for each of its keys (the user name, the client address) *before*
the password is checked, atomically with counting the attempts already in the window,
so a burst of concurrent guesses cannot all pass the check before any is recorded
(issue 21: 42 of 60 were checked). On SQLite the insert takes the database's write lock
first; on PostgreSQL a transaction-scoped advisory lock per key serialises the
attempts on that key across every console instance. A row stays as a failure unless
the login succeeds (:meth:`AuthStore.end_login_attempt`); rows older than the window
are purged by housekeeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from edge.console import tables as t
from edge.console.db import scrub


@dataclass(frozen=True)
class Attempt:
    """A recorded login attempt (``ids``), or a refused one (``limited_by`` set)."""

    ids: tuple[int, ...] = ()
    limited_by: str | None = None
    retry_after_s: float = 0.0


class _Limited(Exception):  # noqa: N818 (control flow: roll the attempt back)
    def __init__(self, key: str, oldest: float) -> None:
        self.key, self.oldest = key, oldest


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big", signed=True)


class AuthStore:
    """Users, sessions and login attempts over ``engine`` (``store.auth``)."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def add_user(self, name: str, role: str, password_hash: str, now: float) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.insert(t.users).values(
                name=name, role=role, password_hash=password_hash, created_at=now,
                disabled=False))  # fmt: skip

    def _end_sessions(self, conn: sa.Connection, name: str) -> int:
        ids = sa.select(t.users.c.id).where(t.users.c.name == name).scalar_subquery()
        return int(conn.execute(sa.delete(t.sessions).where(t.sessions.c.user_id == ids))
                   .rowcount)  # fmt: skip

    def set_password(self, name: str, role: str, password_hash: str) -> int | None:
        """Set a user's password and role and end their sessions; returns how many were
        ended, or None if there is no such user."""
        with self._engine.begin() as conn:
            q = sa.update(t.users).where(t.users.c.name == name)
            if conn.execute(q.values(role=role, password_hash=password_hash)).rowcount == 0:
                return None
            return self._end_sessions(conn, name)

    def set_disabled(self, name: str, disabled: bool) -> int | None:
        """Disable (ending their sessions) or enable a user; None if there is no such user."""
        with self._engine.begin() as conn:
            q = sa.update(t.users).where(t.users.c.name == name).values(disabled=disabled)
            if conn.execute(q).rowcount == 0:
                return None
            return self._end_sessions(conn, name) if disabled else 0

    def remove_user(self, name: str) -> int | None:
        """Delete a user and their sessions; returns the sessions ended, None if unknown."""
        with self._engine.begin() as conn:
            ended = self._end_sessions(conn, name)
            if conn.execute(sa.delete(t.users).where(t.users.c.name == name)).rowcount == 0:
                return None
        scrub(self._engine)  # the password hash leaves the files too
        return ended

    def user_by_name(self, name: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(sa.select(t.users).where(t.users.c.name == name)).first()
            return None if row is None else dict(row._mapping)

    def users(self) -> list[dict[str, Any]]:
        cols = [c for c in t.users.c if c.name != "password_hash"]
        with self._engine.connect() as conn:
            q = sa.select(*cols).order_by(t.users.c.name)
            return [dict(r._mapping) for r in conn.execute(q)]

    def add_session(self, token_hash: str, user_id: int, csrf: str, now: float,
                    expires_at: float) -> None:  # fmt: skip
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t.sessions).where(t.sessions.c.expires_at < now))
            conn.execute(sa.insert(t.sessions).values(
                token_hash=token_hash, user_id=user_id, csrf=csrf, created_at=now,
                expires_at=expires_at))  # fmt: skip

    def session(self, token_hash: str, now: float) -> dict[str, Any] | None:
        """The live session with its user (name, role), or None (expired, unknown, disabled)."""
        s, u = t.sessions, t.users
        q = (sa.select(s.c.token_hash, s.c.csrf, s.c.expires_at, u.c.id.label("user_id"),
                       u.c.name, u.c.role)
             .join(u, u.c.id == s.c.user_id)
             .where(s.c.token_hash == token_hash, s.c.expires_at > now,
                    u.c.disabled.is_(False)))  # fmt: skip
        with self._engine.connect() as conn:
            row = conn.execute(q).first()
            return None if row is None else dict(row._mapping)

    def drop_session(self, token_hash: str) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.delete(t.sessions).where(t.sessions.c.token_hash == token_hash))

    # -- login attempts -------------------------------------------------------------------

    def begin_login_attempt(self, limits: Sequence[tuple[str, int]], now: float,
                            since: float) -> Attempt:  # fmt: skip
        """Record one attempt under each key unless a key already has its limit of
        attempts since ``since`` (then nothing is recorded). Atomic (see the module)."""
        f = t.login_failures
        try:
            with self._engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    for key in sorted({k[:200] for k, _ in limits}):
                        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_lock_id(key))))
                ids = tuple(self._insert_attempt(conn, k, now) for k, _ in limits)
                for key, limit in limits:
                    q = sa.select(sa.func.count(), sa.func.min(f.c.at)).where(
                        f.c.key == key[:200], f.c.at >= since)
                    n, oldest = conn.execute(q).one()
                    if int(n) > limit:  # this attempt included
                        raise _Limited(key, float(oldest))
                return Attempt(ids)
        except _Limited as lim:
            return Attempt((), lim.key, max(1.0, lim.oldest - since))

    @staticmethod
    def _insert_attempt(conn: sa.Connection, key: str, now: float) -> int:
        pk = conn.execute(sa.insert(t.login_failures).values(key=key[:200], at=now))
        return int(pk.inserted_primary_key[0])  # type: ignore[index]

    def end_login_attempt(self, ids: Sequence[int], clear_key: str | None = None) -> None:
        """Forget an attempt (it succeeded, or was never checked); with ``clear_key``,
        every attempt under that key too (a user's failures after their login)."""
        f = t.login_failures
        cond: sa.ColumnElement[bool] = f.c.id.in_(list(ids))
        if clear_key is not None:
            cond = sa.or_(cond, f.c.key == clear_key[:200])
        with self._engine.begin() as conn:
            conn.execute(sa.delete(f).where(cond))

    def login_failures(self, key: str, since: float) -> int:
        f = t.login_failures
        q = sa.select(sa.func.count()).where(f.c.key == key[:200], f.c.at >= since)
        with self._engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def purge_login_attempts(self, before: float) -> int:
        with self._engine.begin() as conn:
            f = t.login_failures
            return int(conn.execute(sa.delete(f).where(f.c.at < before)).rowcount)
