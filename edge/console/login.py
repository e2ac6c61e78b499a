"""The login, hardened against bursts and floods (issue 21).

For each ``POST /login`` (after its CSRF check), :meth:`Logins.login`:

1. records the attempt under the user name and the client address *first*, atomically
   with counting the attempts in the window (:meth:`edge.console.store_auth.AuthStore.
   begin_login_attempt`, in the database: it holds across workers and instances, on
   SQLite and PostgreSQL); over a limit, it is refused with 429 and ``Retry-After``
   before any password is checked, and nothing is recorded;
2. checks the password with argon2id in a pool of ``login_concurrency`` threads (its
   own, not the server's): at most that many checks run at once, so the memory they take
   (argon2's 64 MiB each) is bounded; at most :data:`WAITING_PER_CHECK` x that many wait
   for a thread, and any further login is refused at once with 429 and
   ``Retry-After: 1`` (its attempt forgotten: it was never checked);
3. an unknown user name is checked against a dummy hash made with the same parameters
   (the same cost, no timing oracle) and counts against both limits like any other;
4. a wrong password keeps the attempt as a failure; a right one forgets it (and the
   user's earlier failures) and opens a session.

The console's trail gets each checked, refused login (bounded by the limits) and, for
refusals without a check (limited, busy), at most one line per minute per reason and
address with the count, :data:`TRAIL_LINES_PER_MINUTE` in all: a flood cannot turn
into a flood of trail rows.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from argon2.exceptions import InvalidHashError, VerificationError

from edge.console.auth import (
    MAX_FAILURES,
    MAX_FAILURES_PER_ADDRESS,
    WINDOW_S,
    User,
    hasher,
    token_hash,
)
from edge.console.store_auth import AuthStore

WAITING_PER_CHECK: Final = 2
TRAIL_LINES_PER_MINUTE: Final = 30
MESSAGES: Final = {
    "wrong": "wrong user name or password",
    "limited": "too many attempts for this name or from this address; try again later",
    "busy": "the console is busy; try again in a moment",
}
"""The only texts the login page shows, by code (never text from a request)."""
_DUMMY_HASH: Final = hasher.hash(secrets.token_urlsafe(16))


class LoginRefused(Exception):  # noqa: N818 (a refusal)
    """``code`` is a key of :data:`MESSAGES`; ``retry_after_s`` is set for a 429."""

    def __init__(self, code: str, retry_after_s: int | None = None) -> None:
        self.code = code
        self.retry_after_s = retry_after_s
        super().__init__(MESSAGES[code])


def _verify(password_hash: str, password: str) -> bool:
    try:
        return bool(hasher.verify(password_hash, password))
    except (VerificationError, InvalidHashError):
        return False


class Logins:
    def __init__(self, users: AuthStore, session_ttl_s: int, concurrency: int = 2) -> None:
        self.users = users
        self.session_ttl_s = session_ttl_s
        self.concurrency = concurrency
        self.max_pending = concurrency * (1 + WAITING_PER_CHECK)
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="argon2")
        self._pending = 0  # checks running or waiting (touched only on the event loop)
        self._trail: dict[tuple[str, str], tuple[float, int]] = {}
        self._minute = (0.0, 0)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def login(self, name: str, password: str, client: str) -> tuple[str, User]:
        """Check and open a session; returns (cookie token, user) or raises LoginRefused."""
        now = time.time()
        user_key = f"user:{name[:64]}"
        limits = ((user_key, MAX_FAILURES), (f"addr:{client}", MAX_FAILURES_PER_ADDRESS))
        attempt = await asyncio.to_thread(self.users.begin_login_attempt, limits, now,
                                          now - WINDOW_S)  # fmt: skip
        if attempt.limited_by is not None:
            raise LoginRefused("limited", int(attempt.retry_after_s + 0.999))
        if self._pending >= self.max_pending:
            await asyncio.to_thread(self.users.end_login_attempt, attempt.ids)
            raise LoginRefused("busy", 1)
        self._pending += 1
        try:
            user = await asyncio.to_thread(self.users.user_by_name, name) \
                if len(name) <= 64 else None  # fmt: skip
            stored = str(user["password_hash"]) if user else _DUMMY_HASH
            ok = await asyncio.get_running_loop().run_in_executor(self._pool, _verify, stored,
                                                                  password)  # fmt: skip
        finally:
            self._pending -= 1
        if not ok or user is None or user["disabled"]:
            raise LoginRefused("wrong")
        await asyncio.to_thread(self.users.end_login_attempt, attempt.ids, user_key)
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        th = token_hash(token)
        await asyncio.to_thread(self.users.add_session, th, int(user["id"]), csrf, now,
                                now + self.session_ttl_s)  # fmt: skip
        return token, User(int(user["id"]), str(user["name"]), str(user["role"]), csrf, th)

    def trail_line(self, code: str, client: str, now: float) -> int | None:
        """Whether a refusal goes on the trail now: the count to write, or None (later)."""
        if code == "wrong":
            return 1
        start, written = self._minute
        if now - start >= 60.0:
            start, written = now, 0
        if len(self._trail) > 10_000:
            self._trail.clear()
        last, count = self._trail.get((code, client), (float("-inf"), 0))
        count += 1
        if now - last >= 60.0 and written < TRAIL_LINES_PER_MINUTE:
            self._minute = (start, written + 1)
            self._trail[(code, client)] = (now, 0)
            return count
        self._minute = (start, written)
        self._trail[(code, client)] = (last, count)
        return None
