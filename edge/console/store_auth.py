"""Users, sessions and login failures in the console's database (mixed into the Store).

Sessions are stored by the SHA-256 of their token, never the token itself, so a copy of
the database does not let anyone log in.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from edge.console import tables as t


class AuthStore:
    engine: sa.Engine

    def add_user(self, name: str, role: str, password_hash: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.users).values(
                name=name, role=role, password_hash=password_hash, created_at=now,
                disabled=False))  # fmt: skip

    def set_password(self, name: str, role: str, password_hash: str) -> bool:
        with self.engine.begin() as conn:
            q = sa.update(t.users).where(t.users.c.name == name)
            return conn.execute(q.values(role=role, password_hash=password_hash)).rowcount > 0

    def user_by_name(self, name: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(t.users).where(t.users.c.name == name)).first()
            return None if row is None else dict(row._mapping)

    def users(self) -> list[dict[str, Any]]:
        cols = [c for c in t.users.c if c.name != "password_hash"]
        with self.engine.connect() as conn:
            q = sa.select(*cols).order_by(t.users.c.name)
            return [dict(r._mapping) for r in conn.execute(q)]

    def add_session(self, token_hash: str, user_id: int, csrf: str, now: float,
                    expires_at: float) -> None:  # fmt: skip
        with self.engine.begin() as conn:
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
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
            return None if row is None else dict(row._mapping)

    def drop_session(self, token_hash: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(t.sessions).where(t.sessions.c.token_hash == token_hash))

    def add_login_failure(self, key: str, now: float) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.login_failures).values(key=key[:200], at=now))

    def login_failures(self, key: str, since: float) -> int:
        f = t.login_failures
        q = sa.select(sa.func.count()).where(f.c.key == key[:200], f.c.at >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def clear_login_failures(self, key: str, before: float | None = None) -> None:
        f = t.login_failures
        cond = f.c.key == key[:200] if before is None else f.c.at < before
        with self.engine.begin() as conn:
            conn.execute(sa.delete(f).where(cond))
