"""Signed adjudications: an officer's decision on an alert, signed by the control room.

The control room (the console, on behalf of the logged-in officer, or ``edge alerts
adjudicate --signing-key``) signs each decision with its Ed25519 signing key, the key
whose public half the device already holds as ``signer.pub`` for signed commands. The
payload published (QoS 1) on ``lfr/<device_id>/adjudications``::

    {"format": "lfr-edge-adjudication/1",
     "signer": "<hex key id of the control room's Ed25519 key>",
     "body": "<canonical JSON string of the body>",
     "signature": "<base64 Ed25519 over b'lfr-edge adjudication v1\\0' + body>"}

with the body ``{"alert_id", "decision", "device_id", "officer", "at"}`` (``at``: RFC 3339
UTC with milliseconds). The signature context differs from the commands' context
(``lfr-edge command v1``) and the format string differs, so a signature made for one
kind of message never verifies as the other (domain separation); the device's own alerts
and audit entries use the same helper (:mod:`edge.signing`) with their own contexts.

:func:`verify_adjudication` checks size (:data:`MAX_ADJUDICATION_BYTES`), strict bounded
JSON, the signer, the signature, the shape and the device; it raises
:class:`AdjudicationRefused` with a short ``reason`` code. Whether the alert id was issued
by this device in this deployment, and whether the same decision was already recorded,
is the deployment's business (``DeploymentManager.handle_adjudication``).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge import boundedjson, signing
from edge.compat import UTC, fromisoformat
from edge.errors import EdgeError
from edge.watchlist.bundle_format import canonical_json
from edge.watchlist.keys import DEVICE_ID_RE, key_id
from edge.watchlist.statefile import write_atomic

log = logging.getLogger(__name__)

FORMAT: Final = "lfr-edge-adjudication/1"
SIG_CONTEXT: Final = b"lfr-edge adjudication v1\x00"
DECISIONS: Final = ("confirmed", "rejected", "not_stopped")
MAX_ADJUDICATION_BYTES: Final = 4 * 1024
"""A signed adjudication is ~400 bytes; anything above 4 KiB is refused unread."""
MAX_OFFICER_CHARS: Final = 64
CLOCK_SKEW_S: Final = 300.0
MAX_TRACKED: Final = 20_000
"""Alert ids (and recorded decisions) the ledger remembers per deployment."""
_UUID_RE: Final = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_AT_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_BODY_KEYS: Final = frozenset({"alert_id", "decision", "device_id", "officer", "at"})


class AdjudicationRefused(EdgeError):  # noqa: N818 (parallels CommandRefused)
    """An adjudication was refused; ``reason`` is a short machine-readable code."""

    exit_code = 4

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class Adjudication:
    """A verified adjudication (the signature checked, the shape strict)."""

    alert_id: str
    decision: str
    officer: str
    at: float  # Unix seconds, millisecond precision
    device_id: str
    signer: str  # hex key id

    @property
    def at_text(self) -> str:
        return _format_at(self.at)


def _format_at(at: float) -> str:
    t = dt.datetime.fromtimestamp(at, UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _parse_at(text: str) -> float:
    if not _AT_RE.fullmatch(text):
        raise ValueError("at is not an RFC 3339 UTC time with milliseconds")
    return fromisoformat(text).timestamp()


def _check_officer(officer: str) -> None:
    if not 1 <= len(officer) <= MAX_OFFICER_CHARS or not officer.isprintable() \
            or not officer.strip():
        raise ValueError(f"officer must be 1..{MAX_OFFICER_CHARS} printable characters")


def sign_adjudication(
    key: Ed25519PrivateKey,
    *,
    device_id: str,
    alert_id: str,
    decision: str,
    officer: str,
    at: float,
) -> bytes:
    """The MQTT payload to publish (QoS 1) on lfr/<device_id>/adjudications.

    ValueError (one line) for a bad device id, alert id, decision, officer or time.
    """
    if not isinstance(device_id, str) or not DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError(f"device id {device_id!r} is malformed")
    if not isinstance(alert_id, str) or not _UUID_RE.fullmatch(alert_id):
        raise ValueError(f"alert id {alert_id!r} is not a lower-case UUID")
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}")
    if not isinstance(officer, str):
        raise ValueError("officer must be a string")
    _check_officer(officer)
    at_text = _format_at(float(at))
    body = {
        "alert_id": alert_id,
        "decision": decision,
        "device_id": device_id,
        "officer": officer,
        "at": at_text,
    }
    body_str = canonical_json(body).decode("ascii")
    doc = {
        "format": FORMAT,
        "signer": key_id(key.public_key()).hex(),
        "body": body_str,
        "signature": signing.sign(key, SIG_CONTEXT, body_str.encode("ascii")),
    }
    return canonical_json(doc)


def verify_adjudication(
    data: bytes, signer: Ed25519PublicKey, *, device_id: str, now: float
) -> Adjudication:
    """Verify a signed adjudication for ``device_id``; raises :class:`AdjudicationRefused`.

    Reasons: ``too_large``, ``garbled``, ``unsigned``, ``unknown_signer``,
    ``bad_signature``, ``not_for_device``, ``future``.
    """
    if not isinstance(data, bytes | bytearray) or len(data) > MAX_ADJUDICATION_BYTES:
        raise AdjudicationRefused(
            "too_large", f"adjudication larger than {MAX_ADJUDICATION_BYTES} bytes"
        )
    try:
        doc = boundedjson.loads(bytes(data), max_bytes=MAX_ADJUDICATION_BYTES, max_depth=2)
    except boundedjson.JSONRefused as exc:
        raise AdjudicationRefused("garbled", f"adjudication is garbled: {exc}") from None
    if not isinstance(doc, dict):
        raise AdjudicationRefused("garbled", "adjudication is not a JSON object")
    if "signature" not in doc or "signer" not in doc:
        raise AdjudicationRefused("unsigned", "adjudication is not signed")
    try:
        if set(doc) != {"format", "signer", "body", "signature"}:
            raise ValueError("not an adjudication document")
        if doc["format"] != FORMAT:
            raise ValueError("unknown adjudication format")
        signer_hex, body_str, sig_b64 = doc["signer"], doc["body"], doc["signature"]
        if not all(isinstance(x, str) for x in (signer_hex, body_str, sig_b64)):
            raise ValueError("signer, body and signature must be strings")
        signer_id = signing.canonical_hex(signer_hex, 32, "signer")  # one spelling
        signing.b64decode_canonical(sig_b64, "signature")  # garbled (or re-spelt), not forged
        body_bytes = body_str.encode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise AdjudicationRefused("garbled", f"adjudication is garbled: {exc}") from None
    if signer_id != key_id(signer):
        raise AdjudicationRefused("unknown_signer", "adjudication is signed by an unknown key")
    if not signing.verify(signer, SIG_CONTEXT, body_bytes, sig_b64):
        raise AdjudicationRefused("bad_signature", "adjudication signature is invalid")
    try:
        body: Any = boundedjson.loads(body_bytes, max_bytes=MAX_ADJUDICATION_BYTES, max_depth=1)
        if not isinstance(body, dict) or set(body) != _BODY_KEYS:
            raise ValueError("body fields are wrong")
        if not all(isinstance(body[k], str) for k in _BODY_KEYS):
            raise ValueError("body fields must be strings")
        if not _UUID_RE.fullmatch(body["alert_id"]):
            raise ValueError("alert_id is not a UUID")
        if body["decision"] not in DECISIONS:
            raise ValueError("decision is not known")
        if not DEVICE_ID_RE.fullmatch(body["device_id"]):
            raise ValueError("device_id is malformed")
        _check_officer(body["officer"])
        at = _parse_at(body["at"])
    except ValueError as exc:
        raise AdjudicationRefused("garbled", f"adjudication is garbled: {exc}") from None
    if body["device_id"] != device_id:
        raise AdjudicationRefused("not_for_device", "adjudication is for another device")
    if at > now + CLOCK_SKEW_S:
        raise AdjudicationRefused("future", "adjudication is dated in the future")
    return Adjudication(
        alert_id=body["alert_id"],
        decision=body["decision"],
        officer=body["officer"],
        at=at,
        device_id=body["device_id"],
        signer=signer_hex,
    )


class AdjudicationLedger:
    """The alert ids this device issued in the current deployment, and the decisions
    already recorded for them (idempotency), kept in ``path`` (atomic writes).

    Bounded: the newest :data:`MAX_TRACKED` alert ids and recorded decisions. Writes are
    batched (:meth:`flush`, called once per daemon tick); a failing disk leaves the ledger
    in memory, marked dirty, and the next flush tries again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.deployment_id: str | None = None
        self._issued: OrderedDict[str, None] = OrderedDict()
        self._recorded: OrderedDict[str, None] = OrderedDict()
        self._dirty = False
        self.write_error: str | None = None
        self._load()

    def _load(self) -> None:
        try:
            raw = boundedjson.loads(self.path.read_bytes(), max_bytes=8 << 20, max_depth=2)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("adjudication ledger %s unreadable (%s); starting empty", self.path, exc)
            return
        if not isinstance(raw, dict):
            return
        dep, issued, recorded = raw.get("deployment_id"), raw.get("issued"), raw.get("recorded")
        if isinstance(dep, str) and isinstance(issued, list) and isinstance(recorded, list):
            self.deployment_id = dep
            self._issued = OrderedDict.fromkeys(a for a in issued if isinstance(a, str))
            self._recorded = OrderedDict.fromkeys(a for a in recorded if isinstance(a, str))

    def reset(self, deployment_id: str) -> None:
        """A new deployment: no alert of the old one can be adjudicated here any more."""
        if deployment_id != self.deployment_id:
            self.deployment_id = deployment_id
            self._issued.clear()
            self._recorded.clear()
            self._dirty = True

    def issue(self, alert_id: str) -> None:
        self._issued[alert_id] = None
        while len(self._issued) > MAX_TRACKED:
            self._issued.popitem(last=False)
        self._dirty = True

    def issued(self, alert_id: str) -> bool:
        return alert_id in self._issued

    def check(self, adj: Adjudication) -> None:
        """Refuse an adjudication for an alert not issued here, or a decision already made."""
        if adj.alert_id not in self._issued:
            raise AdjudicationRefused(
                "unknown_alert", "adjudication for an alert this deployment did not issue"
            )
        if f"{adj.alert_id}:{adj.decision}" in self._recorded:
            raise AdjudicationRefused("replayed", "this decision on this alert is recorded")

    def outcomes(self) -> dict[str, int]:
        """How many alerts have each decision as their last one recorded (a changed
        decision counts once, under what it was changed to: the deployment summary)."""
        last: dict[str, str] = {}
        for key in self._recorded:
            alert_id, _, decision = key.rpartition(":")
            last[alert_id] = decision
        counts = dict.fromkeys(DECISIONS, 0)
        for decision in last.values():
            if decision in counts:
                counts[decision] += 1
        return counts

    def record(self, adj: Adjudication) -> None:
        self._recorded[f"{adj.alert_id}:{adj.decision}"] = None
        while len(self._recorded) > MAX_TRACKED:
            self._recorded.popitem(last=False)
        self._dirty = True

    def flush(self) -> bool:
        """Write the ledger if it changed; False (and :attr:`write_error`) if it cannot."""
        if not self._dirty:
            return True
        doc = {"deployment_id": self.deployment_id, "issued": list(self._issued),
               "recorded": list(self._recorded)}  # fmt: skip
        try:
            write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode("ascii"))
        except OSError as exc:
            self.write_error = f"adjudication ledger not written: {exc.strerror}"
            return False
        self._dirty = False
        self.write_error = None
        return True
