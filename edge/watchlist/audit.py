"""A tamper-evident audit log: append-only, hash-chained JSON lines (safeguard 15).

Each line is one entry::

    {"seq": 1, "at": "2026-11-22T11:00:00.123Z", "event": "armed", ...fields...,
     "prev_hash": "<64 hex>", "hash": "<64 hex>"}

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII) of the entry
without ``hash``; ``prev_hash`` is the previous entry's ``hash`` (64 zeros for the first).
``seq`` counts from 1 with no gaps. Changing, removing, reordering or inserting a line
breaks the chain at that line, which :func:`verify` names.

Every append is written with one ``write`` on an ``O_APPEND`` descriptor and fsynced
before :meth:`AuditLog.append` returns. An optional ``publish`` callback receives each
entry afterwards (the daemon sends it to ``lfr/<id>/audit`` through the outbox); a
failing callback is logged and never loses the local entry.

What is recorded: events and counts. Never an embedding, a face, a frame or a key:
:meth:`AuditLog.append` refuses bytes, arrays and fields named like them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from edge.errors import AuditError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "at", "event", "prev_hash", "hash"})
FORBIDDEN_FIELDS = frozenset(
    {"embedding", "embeddings", "face", "face_jpeg", "face_jpeg_b64", "image", "frame",
     "crop", "thumbnail", "key", "private_key", "content_key"}
)
MAX_LINE = 64 * 1024

Entry = dict[str, Any]
Publish = Callable[[Entry], None]


def canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(
        entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash`` field."""
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def _check_value(name: str, v: Any, depth: int = 0) -> None:
    if depth > 4:
        raise ValueError(f"audit field {name} is nested too deeply")
    if v is None or isinstance(v, bool | int | str):
        return
    if isinstance(v, float):
        return
    if isinstance(v, list | tuple):
        if len(v) > 1000:
            raise ValueError(f"audit field {name} is too long")
        for x in v:
            _check_value(name, x, depth + 1)
        return
    if isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise ValueError(f"audit field {name} has a non-string key")
            if k.lower() in FORBIDDEN_FIELDS:
                raise ValueError(f"audit field {name}.{k} is not allowed in the audit log")
            _check_value(f"{name}.{k}", x, depth + 1)
        return
    raise ValueError(f"audit field {name} has type {type(v).__name__}, not plain JSON")


def _utc(t: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z"


class AuditLog:
    """The device's audit log at ``path`` (created 0640 if absent).

    Opening verifies the existing chain and raises :class:`AuditError` if it is broken,
    so that a tampered log is noticed at start-up rather than silently extended.
    """

    def __init__(
        self,
        path: Path,
        publish: Publish | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.publish = publish
        self._clock = clock
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._seq, self._last_hash = _scan(path) if path.exists() else (0, GENESIS)

    @property
    def last_seq(self) -> int:
        return self._seq

    def append(self, event: str, **fields: Any) -> Entry:
        """Append one entry, fsync it, then publish it. Returns the entry."""
        if not event or not event.replace("_", "").isalnum():
            raise ValueError(f"bad audit event name {event!r}")
        for k, v in fields.items():
            if k in RESERVED:
                raise ValueError(f"audit field {k} is reserved")
            if k.lower() in FORBIDDEN_FIELDS:
                raise ValueError(f"audit field {k} is not allowed in the audit log")
            _check_value(k, v)
        with self._lock:
            entry: Entry = {
                "seq": self._seq + 1,
                "at": _utc(self._clock()),
                "event": event,
                **fields,
                "prev_hash": self._last_hash,
            }
            entry["hash"] = entry_hash(entry)
            line = canonical(entry) + b"\n"
            if len(line) > MAX_LINE:
                raise ValueError("audit entry is too large")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                written = os.write(fd, line)
                if written != len(line):
                    raise OSError(f"short write to audit log {self.path}")
                os.fsync(fd)
            finally:
                os.close(fd)
            self._seq = entry["seq"]
            self._last_hash = entry["hash"]
        if self.publish is not None:
            try:
                self.publish(dict(entry))
            except Exception:
                log.exception("publishing audit entry %s failed (kept locally)", entry["seq"])
        return entry


def _parse_line(raw: bytes, lineno: int, path: Path) -> Entry:
    where = f"{path}:{lineno}"
    if len(raw) > MAX_LINE:
        raise AuditError(f"audit log {where}: line too long")
    try:
        entry = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):
        raise AuditError(f"audit log {where}: not valid JSON") from None
    if not isinstance(entry, dict):
        raise AuditError(f"audit log {where}: not a JSON object")
    for k in ("seq", "at", "event", "prev_hash", "hash"):
        if k not in entry:
            raise AuditError(f"audit log {where}: missing {k}")
    return entry


def _scan(path: Path) -> tuple[int, str]:
    """Verify ``path``; return (last seq, last hash)."""
    seq, prev = 0, GENESIS
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AuditError(f"cannot read audit log {path}: {exc.strerror}") from None
    with fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                raise AuditError(f"audit log {path}:{lineno}: incomplete last line")
            entry = _parse_line(raw.rstrip(b"\n"), lineno, path)
            where = f"{path}:{lineno}"
            if entry["seq"] != seq + 1 or type(entry["seq"]) is not int:
                raise AuditError(
                    f"audit log {where}: sequence {entry['seq']!r}, expected {seq + 1}"
                )
            if entry["prev_hash"] != prev:
                raise AuditError(f"audit log {where}: chain broken (prev_hash does not match)")
            try:
                digest = entry_hash(entry)
            except ValueError:
                raise AuditError(f"audit log {where}: not canonical JSON") from None
            if entry["hash"] != digest:
                raise AuditError(f"audit log {where}: hash does not match (entry modified)")
            seq, prev = entry["seq"], digest
    return seq, prev


def verify(path: Path) -> int:
    """Verify the whole chain; return the number of entries or raise :class:`AuditError`."""
    if not path.exists():
        raise AuditError(f"audit log {path} does not exist")
    return _scan(path)[0]
