"""Who may do what: users, argon2 passwords, sessions, CSRF and the login rate limit.

- Users are made with ``edge console user add NAME --role operator|supervisor|auditor``;
  passwords are hashed with argon2id (``argon2-cffi``).
- Logging in makes a session: a random token in an ``HttpOnly``, ``SameSite=Strict``
  cookie (``Secure`` under HTTPS); the database keeps only its SHA-256. Sessions expire
  after ``session_ttl_s``; logging out deletes the row.
- Every state change (every POST) must carry the session's CSRF token (a form field
  ``csrf`` or the ``X-CSRF-Token`` header); the login form carries a double-submit token.
- Failed logins are counted per user name and per client address in the database (so
  all instances share them): :data:`MAX_FAILURES` within :data:`WINDOW_S` refuses further
  attempts until the window passes (:data:`MAX_FAILURES_PER_ADDRESS` per address).
- Roles: operators see the alert queue and adjudicate; supervisors also see the fleet
  and the deployments; auditors read the audit trail and the deployment reports.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

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
_hasher = PasswordHasher()
_DUMMY_HASH: Final = _hasher.hash("not a password anyone has")


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


def add_user(store: Store, name: str, role: str, password: str, *, replace: bool = False) -> str:
    """Create (or with ``replace``, re-set) a user; returns ``created`` or ``updated``."""
    check_name(name)
    if role not in ROLES:
        raise UsageError(f"role must be one of {', '.join(ROLES)}")
    if len(password) < 10:
        raise UsageError("the password must have at least 10 characters")
    hashed = _hasher.hash(password)
    if store.user_by_name(name) is not None:
        if not replace:
            raise UsageError(f"user {name} exists (use --replace to set a new password)")
        store.set_password(name, role, hashed)
        return "updated"
    store.add_user(name, role, hashed, time.time())
    return "created"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class LoginRefused(Exception):  # noqa: N818 (a refusal)
    """Wrong name or password, or too many attempts (the message is safe to show)."""

    def __init__(self, message: str, limited: bool = False) -> None:
        self.limited = limited
        super().__init__(message)


def login(store: Store, name: str, password: str, client: str, ttl_s: int) -> tuple[str, User]:
    """Check the password (rate-limited) and open a session; returns (cookie token, user)."""
    now = time.time()
    keys = (f"user:{name[:64]}", f"addr:{client}")
    limits = (MAX_FAILURES, MAX_FAILURES_PER_ADDRESS)
    if any(store.login_failures(k, now - WINDOW_S) >= n for k, n in zip(keys, limits, strict=True)):
        raise LoginRefused("too many failed attempts; wait 15 minutes", limited=True)
    user = store.user_by_name(name) if len(name) <= 64 else None
    ok = False
    try:  # verify against a dummy hash for unknown users too: no timing oracle
        ok = _hasher.verify(user["password_hash"] if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        ok = False
    if not ok or user is None or user["disabled"]:
        for k in keys:
            store.add_login_failure(k, now)
        raise LoginRefused("wrong user name or password")
    store.clear_login_failures(keys[0])
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    th = token_hash(token)
    store.add_session(th, int(user["id"]), csrf, now, now + ttl_s)
    return token, User(int(user["id"]), str(user["name"]), str(user["role"]), csrf, th)


def session_user(store: Store, token: str | None) -> User | None:
    if not token or len(token) > 200:
        return None
    row = store.session(token_hash(token), time.time())
    if row is None:
        return None
    return User(int(row["user_id"]), str(row["name"]), str(row["role"]), str(row["csrf"]),
                str(row["token_hash"]))  # fmt: skip


def csrf_ok(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), str(given).encode())
