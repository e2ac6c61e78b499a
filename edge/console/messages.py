"""Every message from a device is untrusted: bounded, validated, then handed on.

Each ``parse_*`` takes the topic's device id and the raw payload and returns a plain,
checked dict, or raises :class:`BadMessage` with one line saying why. Nothing here
raises anything else for any input (the ingest loop relies on it):

- a payload larger than its kind's limit is refused before it is parsed, and the JSON is
  read by :func:`edge.boundedjson.loads` (nesting deeper than :data:`MAX_DEPTH`,
  NaN/Infinity, duplicate keys refused); the top level must be an object;
- strings shown on a page are bounded and must not carry control characters (HTML in
  them is harmless: Jinja2 escapes it and the page's JavaScript writes text, never
  markup), and ids must match the topic-safe id pattern;
- a message whose ``device_id`` differs from its topic's device is refused (the broker's
  ACL confines a device to its own prefix; this keeps it so in the store too);
- status and stats are not signed: they only show state (online, armed, fps...) and
  never change or delete a record; deployments and their reports come from the van's
  signed audit entries (:func:`deployment_record`), and the van's answer to an officer's
  decision too (:func:`device_adjudication`);
- alerts and audit entries must carry the device's signature (issue 13, items 4 and 9),
  checked against the device's key from ``[console] device_keys`` before anything is
  stored: one without, from a device whose key is not known, or whose signature fails
  raises :class:`Unverified` (a :class:`BadMessage` with a ``reason``), so a broker or a
  holder of the control room's certificate can neither plant an alert nor break a
  device's audit chain with a forged entry.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import boundedjson, signing
from edge.compat import fromisoformat
from edge.delivery.alert import (
    DECISIONS,
    DEVICE_ID_RE,
    AlertFormatError,
    parse_alert,
    parse_rfc3339,
)
from edge.delivery.alert_sign import AlertSignatureError
from edge.types import CATEGORIES
from edge.watchlist.audit import SIG_CONTEXT as AUDIT_SIG_CONTEXT
from edge.watchlist.audit import entry_hash

DeviceKeys = Mapping[str, Ed25519PublicKey]

MAX_ALERT_BYTES: Final = 512 * 1024
MAX_OTHER_BYTES: Final = 64 * 1024
MAX_DEPTH: Final = 8
MAX_TEXT: Final = 500
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEX64: Final = re.compile(r"^[0-9a-f]{64}$")
_EVENT: Final = re.compile(r"^[A-Za-z0-9_]{1,64}$")


class BadMessage(ValueError):  # noqa: N818 (a refusal, not an error of ours)
    """A device message that is refused (the text says why, in one line)."""


class Unverified(BadMessage):
    """A message without a valid device signature; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class Stale(BadMessage):
    """A genuine (signed) message that is refused because of when it comes: an alert older
    than the retention, one whose id was purged, or one captured after its deployment's
    signed end (issue 21, medium 3). ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def load_json(payload: bytes, limit: int, what: str) -> dict[str, Any]:
    """A JSON object from at most ``limit`` bytes (:func:`edge.boundedjson.loads`: UTF-8,
    no duplicate keys, no NaN, nested at most :data:`MAX_DEPTH`)."""
    try:
        obj = boundedjson.loads(payload, max_bytes=limit, max_depth=MAX_DEPTH)
    except boundedjson.JSONRefused as exc:
        raise BadMessage(f"{what} refused: {exc}") from None
    if not isinstance(obj, dict):
        raise BadMessage(f"{what} is not a JSON object")
    return obj


def text(value: Any, name: str, limit: int = MAX_TEXT, *, required: bool = True) -> str:
    """A bounded printable string (no control characters), or BadMessage."""
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise BadMessage(f"{name} is not a string")
    if len(value) > limit:
        raise BadMessage(f"{name} is longer than {limit} characters")
    if _CONTROL.search(value):
        raise BadMessage(f"{name} contains control characters")
    return value


def ident(value: Any, name: str) -> str:
    if not isinstance(value, str) or not DEVICE_ID_RE.match(value):
        raise BadMessage(f"{name} is not a valid id")
    return value


def number(value: Any, name: str, lo: float, hi: float, *, required: bool = True) -> float | None:
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadMessage(f"{name} is not a number")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise BadMessage(f"{name} is outside {lo:g}..{hi:g}")
    return float(value)


def when(value: Any, name: str, *, required: bool = True) -> float | None:
    if value is None and not required:
        return None
    try:
        return parse_rfc3339(value)
    except AlertFormatError:
        raise BadMessage(f"{name} is not an RFC 3339 UTC time") from None


def _same_device(obj: dict[str, Any], device_id: str, what: str) -> None:
    claimed = obj.get("device_id", device_id)
    if claimed != device_id:
        raise BadMessage(f"{what} on the topic of {device_id} claims another device")


# --- one parser per topic --------------------------------------------------------------------


def parse_alert_message(device_id: str, payload: bytes, keys: DeviceKeys) -> dict[str, Any]:
    """The alert schema's checks (:func:`edge.delivery.alert.parse_alert`) and the device's
    signature (``keys``: device id -> signing public key), plus the console's checks."""
    load_json(payload, MAX_ALERT_BYTES, "alert")  # size and depth first
    try:
        alert = parse_alert(payload, keys)
    except AlertSignatureError as exc:
        raise Unverified(exc.reason, f"alert refused: {exc}") from None
    except AlertFormatError as exc:
        raise BadMessage(f"alert refused: {exc}") from None
    _same_device(alert, device_id, "alert")
    text(alert["subject_id"], "subject_id", 128)
    if not alert["subject_id"]:
        raise BadMessage("subject_id is empty")
    number(alert["score"], "score", -1.0, 1.0)
    number(alert["threshold"], "threshold", -1.0, 1.0)
    if alert["track_id"] < 0 or alert["track_id"] > 2**53:
        raise BadMessage("track_id is out of range")
    for key, value in alert["model"].items():
        text(key, "model key", 64)
        if isinstance(value, dict):
            text(value["name"], f"model {key} name", 200)
            text(value["sha256"], f"model {key} sha256", 64)
        else:
            text(value, f"model {key}", 200)
    return alert


def parse_status(device_id: str, payload: bytes) -> dict[str, Any]:
    obj = load_json(payload, MAX_OTHER_BYTES, "status")
    _same_device(obj, device_id, "status")
    state = obj.get("state")
    if state not in ("online", "offline"):
        raise BadMessage("status state is neither online nor offline")
    armed = obj.get("armed", False)
    if not isinstance(armed, bool):
        raise BadMessage("status armed is not a boolean")
    dep = obj.get("deployment_id")
    return {
        "state": state,
        "armed": armed,
        "reason": text(obj.get("reason", ""), "status reason"),
        "deployment_id": None if dep is None else ident(dep, "deployment_id"),
        "window_end": text(obj.get("window_end"), "window_end", 40, required=False) or None,
        "status_at": when(obj.get("at"), "status at", required=False),
    }


def parse_stats(device_id: str, payload: bytes) -> dict[str, Any]:
    obj = load_json(payload, MAX_OTHER_BYTES, "stats")
    _same_device(obj, device_id, "stats")
    return {
        "fps": number(obj.get("fps"), "fps", 0, 10_000, required=False),
        "camera": text(obj.get("camera"), "camera", 32, required=False) or None,
        "outbox_pending": _int(obj.get("outbox_pending"), "outbox_pending"),
        "faces_seen": _int(obj.get("faces_seen"), "faces_seen"),
        "stats_at": when(obj.get("at"), "stats at", required=False),
    }


def _int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise BadMessage(f"{name} is not a count")
    return value


def _window(obj: Mapping[str, Any]) -> tuple[str | None, str | None, float | None]:
    start, end = obj.get("window_start"), obj.get("window_end")
    win = obj.get("window")
    if win is not None:
        if not isinstance(win, dict):
            raise BadMessage("window is not an object")
        start, end = win.get("start"), win.get("end")
    if start is None and end is None:
        return None, None, None
    start = text(start, "window start", 40)
    end = text(end, "window end", 40)
    return start, end, _time(end, "window end")


def _time(value: str, name: str) -> float:
    """A time as the device writes it (RFC 3339 with ``Z``, milliseconds or not)."""
    try:
        return parse_rfc3339(value)
    except AlertFormatError:
        pass
    try:
        t = fromisoformat(value)
    except (ValueError, TypeError, AttributeError):
        raise BadMessage(f"{name} is not a time") from None
    if t.tzinfo is None:
        raise BadMessage(f"{name} has no time zone")
    return t.timestamp()


def deployment_record(device_id: str, entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """What a van's *signed, verified* audit entry says about a deployment, or None.

    ``armed`` (location, window, threshold), ``watchlist_loaded`` (bundle, watchlist size)
    and ``deployment_summary`` (the end-of-deployment record, safeguard 14) are the only
    sources of the console's deployment records and reports (issue 21, medium 4): the
    unsigned ``deployment`` message never changes a record. A summary must name the van
    whose key signed it. :class:`BadMessage` for a malformed one.
    """
    event = entry.get("event")
    if event not in ("armed", "watchlist_loaded", "deployment_summary"):
        return None
    src: Mapping[str, Any] = entry
    if event == "deployment_summary":
        summary = entry.get("summary")
        if not isinstance(summary, dict):
            raise BadMessage("deployment_summary carries no summary")
        if summary.get("device_id") != device_id:
            raise BadMessage("deployment_summary names another device")
        src = summary
    out: dict[str, Any] = {"deployment_id": ident(src.get("deployment_id"), "deployment_id")}
    if event == "armed":
        start, end, end_ts = _window(src)
        out.update(state="armed", location=text(src.get("location", ""), "location", 300),
                   window_start=start, window_end=end, window_end_ts=end_ts,
                   threshold=number(src.get("threshold"), "threshold", -1, 1, required=False))
    elif event == "watchlist_loaded":
        out.update(bundle_id=text(src.get("bundle_id"), "bundle_id", 64),
                   watchlist_size=_int(src.get("watchlist_size"), "watchlist_size"))
    else:
        start, end, end_ts = _window(src)
        adj = src.get("adjudications", {})
        if not isinstance(adj, dict):
            raise BadMessage("summary adjudications is not an object")
        ended_at = text(src.get("ended_at"), "ended_at", 40)
        out.update(
            state="ended", location=text(src.get("location", ""), "location", 300),
            bundle_id=text(src.get("bundle_id"), "bundle_id", 64),
            window_start=start, window_end=end, window_end_ts=end_ts,
            watchlist_size=_int(src.get("watchlist_size"), "watchlist_size"),
            threshold=number(src.get("threshold"), "threshold", -1, 1, required=False),
            ended_at_ts=_time(ended_at, "ended_at"),
            summary={
                "faces_processed": _int(src.get("faces_processed"), "faces_processed") or 0,
                "frames": _int(src.get("frames"), "frames") or 0,
                "tracks": _int(src.get("tracks"), "tracks") or 0,
                "alerts": _int(src.get("alerts"), "alerts") or 0,
                "adjudications": {d: _int(adj.get(d), d) or 0 for d in DECISIONS},
                "armed_at": text(src.get("armed_at"), "armed_at", 40, required=False) or None,
                "ended_at": ended_at,
                "end_reason": text(src.get("end_reason", ""), "end_reason", 100),
            },
        )  # fmt: skip
    return out


def parse_audit_entry(device_id: str, payload: bytes) -> dict[str, Any]:
    """One audit-chain entry, shape-checked (its signature is checked by
    :func:`verify_audit_entry`, the chain itself by :mod:`chain`).

    Returns ``{"entry": <the object as sent>, "seq", "at", "event", "prev_hash", "hash"}``.
    """
    obj = load_json(payload, MAX_OTHER_BYTES, "audit entry")
    seq = obj.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**53:
        raise BadMessage("audit seq is not a positive integer")
    event = obj.get("event")
    if not isinstance(event, str) or not _EVENT.match(event):
        raise BadMessage("audit event is not a plain name")
    for key in ("prev_hash", "hash"):
        if not isinstance(obj.get(key), str) or not _HEX64.match(obj[key]):
            raise BadMessage(f"audit {key} is not 64 hex digits")
    at = when(obj.get("at"), "audit at")
    _check_strings(obj)
    return {"entry": obj, "seq": seq, "at": at, "event": event,
            "prev_hash": obj["prev_hash"], "hash": obj["hash"]}  # fmt: skip


def verify_audit_entry(device_id: str, parsed: Mapping[str, Any], keys: DeviceKeys) -> None:
    """The entry's hash recomputed and its signature verified with the device's key;
    :class:`Unverified` otherwise (before anything is stored: a forged entry must not
    break the device's chain)."""
    obj = parsed["entry"]
    public = keys.get(device_id)
    if public is None:
        raise Unverified("unknown_device", f"no signing key for device {device_id}: "
                         "audit entry not verified")  # fmt: skip
    if "sig" not in obj:
        raise Unverified("unsigned", "audit entry carries no device signature")
    try:
        digest = entry_hash(obj)
    except (ValueError, TypeError):
        raise BadMessage("audit entry is not canonical JSON") from None
    if digest != obj["hash"]:
        raise Unverified("bad_hash", "audit entry's hash does not match its content")
    if not signing.is_canonical_b64(obj["sig"]):
        raise Unverified("not_canonical", "audit entry signature is not in its one canonical "
                         "base64 spelling")  # fmt: skip
    if not signing.verify(public, AUDIT_SIG_CONTEXT, digest.encode("ascii"), obj["sig"]):
        raise Unverified("bad_signature", "audit entry signature does not verify")


def _check_strings(value: Any) -> None:
    """Every key and string anywhere in ``value`` bounded and free of control characters."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                text(k, "audit field name", 64)
                stack.append(x)
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            text(v, "audit field", 4000)


def device_adjudication(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    """The van's answer to an officer's decision, from its signed ``adjudication`` or
    ``adjudication_refused`` entry: ``{alert_id, decision, decided_at, answer, officer}``
    (``answer``: ``recorded`` or ``refused: <reason>``), or None (a refusal of something
    that did not verify names no alert)."""
    event = entry.get("event")
    if event not in ("adjudication", "adjudication_refused"):
        return None
    alert_id, decision, officer = (entry.get(k) for k in ("alert_id", "decision", "officer"))
    if not (isinstance(alert_id, str) and len(alert_id) <= 36 and decision in DECISIONS):
        return None
    try:
        decided_at = _time(str(entry.get("decided_at")), "decided_at")
    except BadMessage:
        decided_at = None
    if event == "adjudication":
        if not (isinstance(officer, str) and 0 < len(officer) <= 100):
            return None
        answer = "recorded"
    else:
        reason = entry.get("reason")
        if not (isinstance(reason, str) and _EVENT.match(reason)):
            return None
        officer, answer = None, f"refused: {reason}"
    return {"alert_id": alert_id, "decision": str(decision), "officer": officer,
            "decided_at": decided_at, "answer": answer}  # fmt: skip


__all__ = ["CATEGORIES", "BadMessage", "DeviceKeys", "Stale", "Unverified"]
