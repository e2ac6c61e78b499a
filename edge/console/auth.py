"""Who may do what: users, argon2 passwords, sessions, CSRF and the login rate limit.

- Users are made with ``edge console user add NAME --role operator|supervisor|auditor``;
  passwords are hashed with argon2id (``argon2-cffi``).
- Logging in makes a session: a random token in an ``HttpOnly``, ``SameSite=Strict``
  cookie (``Secure`` under HTTPS); the database keeps only its SHA-256. Sessions expire
  after ``session_ttl_s``; logging out deletes the row.
- Every state change (every POST) must carry the session's CSRF token (a form field
  ``csrf`` or the ``X-CSRF-Token`` header); the login form carries a double-submit token.
- Login attempts are recorded per user name and per client address in the database
  before the password is checked, atomically (so all instances share them and a
  concurrent burst cannot pass the count): :data:`MAX_FAILURES` within :data:`WINDOW_S`
  refuses further attempts until the window passes (:data:`MAX_FAILURES_PER_ADDRESS` per
  address); the login itself is :mod:`edge.console.login`.
- Resetting a password, changing a role, disabling or removing a user ends the user's
  sessions at once (:func:`set_user`, :func:`disable_user`, :func:`remove_user`).
- Roles: operators see the alert queue and adjudicate; supervisors also see the fleet
  and the deployments; auditors read the audit trail and the deployment reports.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Final

from argon2 import PasswordHasher

from edge.console.store import Store
from edge.errors import UsageError

ROLES: Final = ("operator", "supervisor", "auditor")
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "alerts": frozenset({"operator", "supervisor"}),
    "adjudicate": frozenset({"operator", "supervisor"}),
    "fleet": frozenset({"supervisor"}),
    "deployments": frozenset({"supervisor", "auditor"}),
    "audit": frozenset({"auditor", "supervisor"}),
}
MAX_FAILURES: Final = 5
"""Failed logins per user name within :data:`WINDOW_S` before further attempts are refused."""
MAX_FAILURES_PER_ADDRESS: Final = 20
"""Per client address: higher, since a control room's officers may share one address."""
WINDOW_S: Final = 15 * 60
COOKIE: Final = "console_session"
LOGIN_COOKIE: Final = "console_login"
_NAME_OK: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
hasher: Final = PasswordHasher()
"""argon2id with argon2-cffi's defaults (RFC 9106 low-memory: 64 MiB, 3 passes, 4 lanes)."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    csrf: str
    token_hash: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS.get(permission, frozenset())


def check_name(name: str) -> str:
    if not 1 <= len(name) <= 64 or set(name) - _NAME_OK:
        raise UsageError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def add_user(store: Store, name: str, role: str, password: str, *, replace: bool = False,
             actor: str = "console") -> str:  # fmt: skip
    """Create (or with ``replace``, re-set: new password and role, the user's sessions
    ended) a user, on the console's trail; returns ``created`` or ``updated``."""
    check_name(name)
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise UsageError("the password must have at least 10 characters")
    hashed = hasher.hash(password)
    if store.auth.user_by_name(name) is not None:
        if not replace:
            raise UsageError(f"user {name} exists (use --replace to set a new password)")
        ended = store.auth.set_password(name, role, hashed)
        store.log(actor, "user_updated", user=name, role=role, sessions_ended=ended or 0)
        return "updated"
    store.auth.add_user(name, role, hashed, time.time())
    store.log(actor, "user_added", user=name, role=role)
    return "created"


def disable_user(store: Store, name: str, actor: str = "console") -> int:
    """Refuse the user's logins and end their sessions at once; returns the sessions ended."""
    ended = store.auth.set_disabled(check_name(name), True)
    if ended is None:
        raise UsageError(f"no user {name}")
    store.log(actor, "user_disabled", user=name, sessions_ended=ended)
    return ended


def enable_user(store: Store, name: str, actor: str = "console") -> None:
    if store.auth.set_disabled(check_name(name), False) is None:
        raise UsageError(f"no user {name}")
    store.log(actor, "user_enabled", user=name)


def remove_user(store: Store, name: str, actor: str = "console") -> int:
    """Delete the user (their password hash) and their sessions; returns the sessions ended."""
    ended = store.auth.remove_user(check_name(name))
    if ended is None:
        raise UsageError(f"no user {name}")
    store.log(actor, "user_removed", user=name, sessions_ended=ended)
    return ended


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def session_user(store: Store, token: str | None) -> User | None:
    if not token or len(token) > 200:
        return None
    row = store.auth.session(token_hash(token), time.time())
    if row is None:
        return None
    return User(int(row["user_id"]), str(row["name"]), str(row["role"]), str(row["csrf"]),
                str(row["token_hash"]))  # fmt: skip


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
