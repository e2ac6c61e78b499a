"""A tamper-evident audit log: append-only, hash-chained JSON lines (safeguard 15).

Each line is one entry::

    {"seq": 1, "at": "2026-11-22T11:00:00.123Z", "event": "armed", ...fields...,
     "prev_hash": "<64 hex>", "hash": "<64 hex>"}

``hash`` is SHA-256 over the canonical JSON (sorted keys, no spaces, ASCII) of the entry
without ``hash`` and ``sig``; ``prev_hash`` is the previous entry's ``hash`` (64 zeros for
the first). ``sig`` (issue 13, item 4) is the device's Ed25519 signature (base64) over
``b"lfr-edge audit v1\0" + hash`` (the hex digest as ASCII) by its signing key
(``device-signing.key``, generated on the device, never on disk in the clear beside the
log on a unit with a TPM): rewriting history and recomputing every hash no longer
verifies without that key. :func:`verify_report` (``edge audit verify --device-key``)
checks the signatures, and the chain against the last ``seq`` (and ``hash``) the control
room saw, so dropping the last lines fails too. Entries written before signing (no
``sig``) still open and verify as an unsigned *prefix*, named by the report; an unsigned
entry after a signed one is tampering.
``seq`` counts from 1 with no gaps and ``at`` never decreases: an entry is stamped
``max(clock, previous at)`` (a clock set back never makes history run backwards; the
deployment manager's high-water mark, :mod:`edge.watchlist.timeguard`, refuses to act on
it), and :func:`verify` (``edge audit verify``) rejects a log whose times go back
(opening does not: a log from before this rule may step back and must still open).
Changing, removing, reordering or inserting a line
breaks the chain at that line, which :func:`verify` names.

Every append is written with one ``write`` on an ``O_APPEND`` descriptor and fsynced
before :meth:`AuditLog.append` returns.

A full or failing disk never stops the daemon and never leaves a torn line behind: a
failed write is cut back (``ftruncate`` to the length before it), the entry (already
chained) is kept in memory in order, and the next append writes the backlog first
(bounded: :data:`MAX_BACKLOG`; beyond it entries are counted in
:attr:`AuditLog.dropped` and an ``audit_entries_lost`` entry records how many once the
disk takes writes again). :attr:`AuditLog.write_error` says so for ``status``.

A torn last line that is nevertheless on disk (power cut mid-write, an older version) is
recovered at open: the incomplete tail is moved aside to ``<log>.torn-<n>`` as
evidence, cut from the log, and an ``audit_tail_torn`` entry records its length and the
evidence file; everything before it must still verify. A damaged line that *is*
complete is tampering, and opening fails as before. An optional ``publish`` callback receives each
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
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge import signing
from edge.compat import UTC, fromisoformat
from edge.errors import AuditError
from edge.watchlist.audit_file import append_line, recover_torn_tail

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

log = logging.getLogger(__name__)

GENESIS = "0" * 64
RESERVED = frozenset({"seq", "at", "event", "prev_hash", "hash", "sig"})
SIG_CONTEXT = b"lfr-edge audit v1\x00"
FORBIDDEN_FIELDS = frozenset(
    {"embedding", "embeddings", "face", "face_jpeg", "face_jpeg_b64", "image", "frame",
     "crop", "thumbnail", "key", "private_key", "content_key"}
)
MAX_LINE = 64 * 1024
MAX_BACKLOG = 10_000

Entry = dict[str, Any]
Publish = Callable[[Entry], None]


def canonical(entry: Mapping[str, Any]) -> bytes:
    return json.dumps(
        entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def entry_hash(entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``entry`` without its ``hash`` and ``sig``."""
    body = {k: v for k, v in entry.items() if k not in ("hash", "sig")}
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
    d = dt.datetime.fromtimestamp(t, UTC)
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
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.path = path
        self.publish = publish
        self._clock = clock
        self._key = signing_key
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._backlog: list[bytes] = []
        self.dropped = 0
        self._dropped_reported = 0
        self.write_error: str | None = None
        torn = recover_torn_tail(path) if path.exists() else None
        public = None if signing_key is None else signing_key.public_key()
        self._seq, self._last_hash, self._last_at = (
            _scan(path, public=public, last_only=True).tail if path.exists()
            else (0, GENESIS, 0.0)
        )
        if torn is not None:
            self.append("audit_tail_torn", torn_bytes=torn[0], evidence=str(torn[1]))

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
            if self._backlog:
                self._flush()
            if len(self._backlog) >= MAX_BACKLOG:
                self.dropped += 1  # not chained: the chain stays verifiable
                return {"event": event, "dropped": True}
            entry: Entry = {
                "seq": self._seq + 1,
                "at": self._stamp(),
                "event": event,
                **fields,
                "prev_hash": self._last_hash,
            }
            self._seal(entry)
            line = canonical(entry) + b"\n"
            if len(line) > MAX_LINE:
                raise ValueError("audit entry is too large")
            self._seq = entry["seq"]
            self._last_hash = entry["hash"]
            self._backlog.append(line)
            self._flush()
        if self.publish is not None:
            try:
                self.publish(dict(entry))
            except Exception:
                log.exception("publishing audit entry %s failed (kept locally)", entry["seq"])
        return entry

    def _seal(self, entry: Entry) -> None:
        """Set ``hash`` and, with a signing key, ``sig`` over it."""
        entry["hash"] = entry_hash(entry)
        if self._key is not None:
            entry["sig"] = signing.sign(self._key, SIG_CONTEXT, entry["hash"].encode("ascii"))

    def _stamp(self) -> str:
        """The time of a new entry: never before the previous one (caller holds the lock)."""
        t = self._clock()
        if not t >= self._last_at:  # also NaN
            t = self._last_at
        self._last_at = t
        return _utc(t)

    def flush(self) -> bool:
        """Write what a failing disk held back; True when nothing is left in memory."""
        with self._lock:
            self._flush()
            return not self._backlog

    def _flush(self) -> None:
        while self._backlog:
            try:
                append_line(self.path, self._backlog[0])
            except OSError as exc:
                if self.write_error is None:
                    log.error("audit log %s cannot be written (%s); %d entries held in memory",
                              self.path, exc.strerror, len(self._backlog))  # fmt: skip
                self.write_error = f"audit log not written: {exc.strerror}"
                return
            self._backlog.pop(0)
        if self.write_error is not None:
            log.warning("audit log %s writable again", self.path)
        self.write_error = None
        lost = self.dropped - self._dropped_reported
        if lost:
            self._dropped_reported = self.dropped
            entry: Entry = {"seq": self._seq + 1, "at": self._stamp(),
                            "event": "audit_entries_lost", "count": lost,
                            "prev_hash": self._last_hash}  # fmt: skip
            self._seal(entry)
            self._seq, self._last_hash = entry["seq"], entry["hash"]
            self._backlog.append(canonical(entry) + b"\n")
            self._flush()


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


def _parse_at(value: Any, where: str) -> float:
    try:
        if not isinstance(value, str) or not value.endswith("Z"):
            raise ValueError(value)
        return fromisoformat(value).timestamp()
    except ValueError:
        raise AuditError(f"audit log {where}: bad time {value!r}") from None


@dataclass(slots=True)
class AuditReport:
    """What :func:`verify_report` found (the chain is intact, or it raised)."""

    entries: int = 0
    last_hash: str = GENESIS
    latest_at: float = 0.0
    signed: int = 0
    unsigned_through: int = 0
    """Entries 1..unsigned_through carry no signature (written before signing)."""
    signatures_checked: bool = False

    @property
    def tail(self) -> tuple[int, str, float]:
        return self.entries, self.last_hash, self.latest_at


def _scan(
    path: Path,
    check_times: bool = False,
    public: Ed25519PublicKey | None = None,
    control_room: tuple[int, str | None] | None = None,
    require_signed: bool = False,
    last_only: bool = False,
) -> AuditReport:
    """Verify ``path``. Times are checked only when asked (:func:`verify`): a log written
    before times were kept non-decreasing may step back where a clock was set back, and
    must still open. With ``public`` every ``sig`` must verify and unsigned entries may
    only precede the first signed one. ``control_room`` is the (seq, hash or None) the
    control room last saw: the log must reach that seq, with that hash there. With
    ``last_only`` (the daemon at open) only the last entry's signature is checked: its hash
    commits to every entry before it, so it proves the same at one verification's cost."""
    r = AuditReport(signatures_checked=public is not None)
    seq, prev, last_at = 0, GENESIS, 0.0
    last_signed, last_sig = False, None
    seen_seq, seen_hash = control_room if control_room is not None else (0, None)
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
            at = _parse_at(entry["at"], where)
            if check_times and at < last_at:
                raise AuditError(
                    f"audit log {where}: time goes backwards ({entry['at']} after "
                    f"{_utc(last_at)})"
                )
            last_signed = "sig" in entry
            if last_signed:
                if public is not None and not last_only and not signing.verify(
                    public, SIG_CONTEXT, digest.encode("ascii"), entry["sig"]
                ):
                    raise AuditError(f"audit log {where}: signature does not verify with the "
                                     "device key (entry rewritten)")  # fmt: skip
                r.signed += 1
            elif r.signed:
                if public is not None:
                    raise AuditError(f"audit log {where}: entry {seq + 1} is not signed, "
                                     "after signed entries (rewritten)")  # fmt: skip
            else:
                r.unsigned_through = seq + 1
            if seen_hash is not None and seq + 1 == seen_seq and digest != seen_hash:
                raise AuditError(f"audit log {where}: entry {seen_seq} is not the one the "
                                 "control room received (history rewritten)")  # fmt: skip
            seq, prev, last_at = entry["seq"], digest, max(last_at, at)
            last_sig = entry.get("sig")
    if public is not None and last_only and seq and last_signed and not signing.verify(
        public, SIG_CONTEXT, prev.encode("ascii"), last_sig
    ):
        raise AuditError(f"audit log {path}:{seq}: signature does not verify with the device "
                         "key (history rewritten)")  # fmt: skip
    if seq < seen_seq:
        raise AuditError(f"audit log {path} ends at entry {seq}, but the control room "
                         f"received up to entry {seen_seq} (truncated)")  # fmt: skip
    if require_signed and seq and not r.signed:
        raise AuditError(f"audit log {path}: none of its {seq} entries is signed by the device")
    r.entries, r.last_hash, r.latest_at = seq, prev, last_at
    return r


def verify(path: Path) -> int:
    """Verify the whole chain; return the number of entries or raise :class:`AuditError`."""
    return verify_report(path).entries


def verify_report(
    path: Path,
    public: Ed25519PublicKey | None = None,
    *,
    last_seq: int | None = None,
    last_hash: str | None = None,
) -> AuditReport:
    """Verify the chain, its times, and with ``public`` its signatures; with ``last_seq``
    (and ``last_hash``) against what the control room saw. Raises :class:`AuditError`."""
    if not path.exists():
        raise AuditError(f"audit log {path} does not exist")
    if last_hash is not None and last_seq is None:
        raise AuditError("a last hash needs the last seq it belongs to")
    seen = None if last_seq is None else (last_seq, last_hash)
    return _scan(path, check_times=True, public=public, control_room=seen,
                 require_signed=public is not None)  # fmt: skip
