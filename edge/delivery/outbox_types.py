"""The outbox's errors and records (split from :mod:`edge.delivery.outbox`, which
re-exports them)."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from edge.errors import EdgeError


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


def db_errors(fn: Callable[Concatenate[Any, _P], _R]) -> Callable[Concatenate[Any, _P], _R]:
    """Turn SQLite failures (disk full, I/O error, locked) into :class:`OutboxError`."""

    @functools.wraps(fn)
    def wrapper(self: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise OutboxError(f"{self.path}: {exc}") from exc

    return wrapper
