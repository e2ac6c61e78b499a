"""Alerts: an :class:`~edge.types.AlertRecord` becomes versioned alert JSON.

The wire format is ``edge/schemas/alert.v1.json`` (JSON Schema 2020-12), published
for integrators. One alert is one JSON object::

    schema          "lfr.alert/1"
    alert_id        UUIDv7, the control room's dedup key (redelivery keeps it)
    device_id, deployment_id
    captured_at     RFC 3339 UTC ("2026-11-22T11:28:13.123Z")
    published_at    RFC 3339 UTC, stamped when the alert is first handed to MQTT
    subject_id, category, score, threshold, track_id
    bbox            {"x", "y", "w", "h"}: the face box in the full frame, pixels
    face_jpeg_b64   base64 JPEG of the matched face only (safeguard 11)
    model           {"detector": {"name", "sha256"}, "embedder": {"name", "sha256"}}, plus
                    any other string entries of ``AlertRecord.model`` (e.g. "landmarks")
    signature       base64 Ed25519 by the device over all of the above
                    (:mod:`edge.delivery.alert_sign`, added when published)

``AlertRecord.model`` is flat: it must hold ``detector``, ``detector_sha256``,
``embedder`` and ``embedder_sha256`` (names and manifest hashes); other keys
are copied as strings.

``published_at`` is unknown when the alert is queued, so :func:`encode_alert`
writes ``null`` and the publisher calls :func:`stamp_published_at` with the
first-publish time it stored durably in the outbox: every redelivery of one alert
is byte-identical.

Safeguard 11 is enforced here, not just by convention: :func:`build_alert`
refuses a JPEG whose pixel size is larger than the face box plus the maximum
margin, so a whole frame can never leave as an "alert crop".
"""

from __future__ import annotations

import base64
import math
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from edge import boundedjson
from edge.delivery.alert_sign import check_signature
from edge.delivery.wire import AlertFormatError as AlertFormatError  # re-exported, as
from edge.delivery.wire import dumps  # the wire's other primitives (edge.delivery.wire)
from edge.delivery.wire import parse_rfc3339 as parse_rfc3339
from edge.delivery.wire import rfc3339 as rfc3339
from edge.delivery.wire import stamp_published_at as stamp_published_at
from edge.signing import b64decode_canonical
from edge.types import CATEGORIES, AlertRecord, ImageU8
from edge.uuid7 import uuid7_str

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

SCHEMA_ID: Final = "lfr.alert/1"
DECISIONS: Final = ("confirmed", "rejected", "not_stopped")
MODEL_KEYS: Final = ("detector", "detector_sha256", "embedder", "embedder_sha256")
DEVICE_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Device and deployment ids: safe as one MQTT topic level and as a file name."""

MAX_ALERT_BYTES: Final = 256 * 1024
"""Largest alert a subscriber parses (a 320 px crop in base64 is well under 100 KiB)."""
MAX_MARGIN: Final = 0.5
"""Largest margin (fraction of the face box, per side) a crop may add around a face."""
DEFAULT_MARGIN: Final = 0.2
DEFAULT_MAX_SIDE: Final = 320
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_UUID7_RE: Final = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
)
_SIG_RE: Final = re.compile(r"^[A-Za-z0-9+/]{86}==$")


def new_alert_id() -> str:
    """A fresh alert id: a UUIDv7 string (time-ordered; the control room's dedup key)."""
    return uuid7_str()


# --- the face crop ---------------------------------------------------------------------------


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from a JPEG's SOF marker; AlertFormatError if not a JPEG."""
    if len(data) < 4 or data[:2] != b"\xff\xd8":
        raise AlertFormatError("face crop is not a JPEG (no SOI marker)")
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            raise AlertFormatError("face crop is not a well-formed JPEG")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC)
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            h = int.from_bytes(data[i + 5 : i + 7], "big")
            w = int.from_bytes(data[i + 7 : i + 9], "big")
            return w, h
        i += 2 + length
    raise AlertFormatError("face crop is a truncated JPEG (no frame header)")


def crop_region(
    box: tuple[float, float, float, float], frame_size: tuple[int, int], margin: float
) -> tuple[int, int, int, int]:
    """The (x, y, w, h) pixel region cut for a face ``box`` (x1, y1, x2, y2), clipped.

    ``margin`` is a fraction of the box's width/height added on each side.
    """
    if not 0.0 <= margin <= MAX_MARGIN:
        raise ValueError(f"margin must be within 0..{MAX_MARGIN}, got {margin}")
    fw, fh = frame_size
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    if not (bw > 0 and bh > 0):
        raise ValueError(f"empty face box {box}")
    left = max(0, math.floor(x1 - margin * bw))
    top = max(0, math.floor(y1 - margin * bh))
    right = min(fw, math.ceil(x2 + margin * bw))
    bottom = min(fh, math.ceil(y2 + margin * bh))
    if right <= left or bottom <= top:
        raise ValueError(f"face box {box} lies outside the {fw}x{fh} frame")
    return left, top, right - left, bottom - top


def face_bbox(
    box: tuple[float, float, float, float], frame_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A detector box (x1, y1, x2, y2) as the alert's integer (x, y, w, h), clipped to the frame."""
    return crop_region(box, frame_size, 0.0)


def face_crop_jpeg(
    image_bgr: ImageU8,
    box: tuple[float, float, float, float],
    *,
    margin: float = DEFAULT_MARGIN,
    max_side: int = DEFAULT_MAX_SIDE,
    quality: int = 90,
) -> bytes:
    """JPEG bytes of the face ``box`` (x1, y1, x2, y2) plus ``margin``, never the frame.

    The crop is downscaled so its longer side is at most ``max_side`` pixels
    (MQTT messages stay small); it is never upscaled.
    """
    import cv2

    h, w = image_bgr.shape[:2]
    x, y, cw, ch = crop_region(box, (w, h), margin)
    crop: Any = image_bgr[y : y + ch, x : x + cw]
    longest = max(cw, ch)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding of the face crop failed")
    return bytes(buf.tobytes())


def check_face_only(face_jpeg: bytes, bbox: tuple[int, int, int, int]) -> None:
    """Refuse (AlertFormatError) a crop larger than the face box plus :data:`MAX_MARGIN`."""
    cw, ch = jpeg_size(face_jpeg)
    _, _, bw, bh = bbox
    limit_w = math.ceil(bw * (1 + 2 * MAX_MARGIN)) + 2
    limit_h = math.ceil(bh * (1 + 2 * MAX_MARGIN)) + 2
    if cw > limit_w or ch > limit_h:
        raise AlertFormatError(
            f"face crop {cw}x{ch} is larger than the face box {bw}x{bh} allows "
            "(an alert carries the matched face only)"
        )


# --- alert JSON ------------------------------------------------------------------------------


def _model_block(model: Mapping[str, str]) -> dict[str, Any]:
    """``{"detector": {name, sha256}, "embedder": {name, sha256}, <other>: str ...}``."""
    missing = [k for k in MODEL_KEYS if not model.get(k)]
    if missing:
        raise AlertFormatError(f"alert model info lacks {', '.join(missing)}")
    for role in ("detector", "embedder"):
        if not _SHA256_RE.fullmatch(model[f"{role}_sha256"]):
            raise AlertFormatError(f"model {role}_sha256 is not 64 lower-case hex digits")
    block: dict[str, Any] = {k: str(v) for k, v in model.items() if k not in MODEL_KEYS}
    for role in ("detector", "embedder"):
        block[role] = {"name": model[role], "sha256": model[f"{role}_sha256"]}
    return block


def build_alert(record: AlertRecord, published_at: float | None = None) -> dict[str, Any]:
    """The alert JSON object for ``record``; ``published_at`` None leaves it ``null``.

    Raises AlertFormatError on anything the schema would refuse (and on a crop
    that is not the face only, or a score below the threshold in force).
    """
    if not _UUID7_RE.fullmatch(record.alert_id):
        raise AlertFormatError(f"alert_id is not a lower-case UUIDv7: {record.alert_id!r}")
    for name in ("device_id", "deployment_id"):
        if not DEVICE_ID_RE.fullmatch(getattr(record, name)):
            raise AlertFormatError(f"{name} {getattr(record, name)!r} is not a valid id")
    if not record.subject_id or len(record.subject_id) > 128:
        raise AlertFormatError("subject_id must be 1..128 characters")
    if record.category not in CATEGORIES:
        raise AlertFormatError(f"category {record.category!r} is not a permitted category")
    for name in ("score", "threshold"):
        v = getattr(record, name)
        if not (isinstance(v, int | float) and math.isfinite(v) and -1.0 <= v <= 1.0):
            raise AlertFormatError(f"{name} must be a finite similarity in -1..1, got {v!r}")
    if record.score < record.threshold:
        raise AlertFormatError(
            f"score {record.score:.4f} is below the threshold {record.threshold:.4f}"
        )
    x, y, w, h = (int(v) for v in record.bbox)
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise AlertFormatError(f"bbox {record.bbox} is not a non-empty box in the frame")
    check_face_only(record.face_jpeg, (x, y, w, h))
    return {
        "schema": SCHEMA_ID,
        "alert_id": record.alert_id,
        "device_id": record.device_id,
        "deployment_id": record.deployment_id,
        "captured_at": rfc3339(record.captured_at),
        "published_at": None if published_at is None else rfc3339(published_at),
        "subject_id": record.subject_id,
        "category": record.category,
        "score": round(float(record.score), 6),
        "threshold": round(float(record.threshold), 6),
        "track_id": int(record.track_id),
        "bbox": {"x": x, "y": y, "w": w, "h": h},
        "face_jpeg_b64": base64.b64encode(record.face_jpeg).decode("ascii"),
        "model": _model_block(record.model),
    }


def encode_alert(record: AlertRecord, published_at: float | None = None) -> bytes:
    """Alert JSON bytes (compact, keys sorted: deterministic for a given record)."""
    return dumps(build_alert(record, published_at))


def _need(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise AlertFormatError(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise AlertFormatError(f"field {key!r} has the wrong type")
    return value


def parse_alert(
    payload: bytes, keys: Mapping[str, Ed25519PublicKey] | None = None
) -> dict[str, Any]:
    """Parse and check an alert message (the schema's rules, without a jsonschema dependency).

    With ``keys`` (device id -> signing public key) the device's signature is checked too
    (:func:`edge.delivery.alert_sign.check_signature`; :class:`AlertSignatureError`, an
    :class:`AlertFormatError`, says why it is refused).
    """
    try:
        obj = boundedjson.loads(payload, max_bytes=MAX_ALERT_BYTES, max_depth=4)
    except boundedjson.JSONRefused as exc:
        raise AlertFormatError(f"alert refused: {exc}") from None
    if not isinstance(obj, dict):
        raise AlertFormatError("alert is not a JSON object")
    if obj.get("schema") != SCHEMA_ID:
        raise AlertFormatError(f"unknown alert schema {obj.get('schema')!r}")
    if not _UUID7_RE.fullmatch(_need(obj, "alert_id", str)):
        raise AlertFormatError("alert_id is not a UUIDv7")
    for key in ("device_id", "deployment_id"):
        if not DEVICE_ID_RE.fullmatch(_need(obj, key, str)):
            raise AlertFormatError(f"{key} is not a valid id")
    parse_rfc3339(_need(obj, "captured_at", str))
    parse_rfc3339(_need(obj, "published_at", str))
    _need(obj, "subject_id", str)
    if _need(obj, "category", str) not in CATEGORIES:
        raise AlertFormatError("category is not a permitted category")
    _need(obj, "score", (int, float))
    _need(obj, "threshold", (int, float))
    _need(obj, "track_id", int)
    bbox = _need(obj, "bbox", dict)
    box = tuple(_need(bbox, k, int) for k in ("x", "y", "w", "h"))
    try:
        face = b64decode_canonical(_need(obj, "face_jpeg_b64", str), "face_jpeg_b64")
    except ValueError as exc:
        raise AlertFormatError(str(exc)) from None
    check_face_only(face, (box[0], box[1], box[2], box[3]))
    model = _need(obj, "model", dict)
    for key, value in model.items():
        if key in ("detector", "embedder"):
            _need(value if isinstance(value, dict) else {}, "name", str)
            _need(value, "sha256", str)
        elif not isinstance(value, str):
            raise AlertFormatError(f"model entry {key!r} is not a string")
    for role in ("detector", "embedder"):
        _need(model, role, dict)
    extra = set(obj) - {
        "schema", "alert_id", "device_id", "deployment_id", "captured_at", "published_at",
        "subject_id", "category", "score", "threshold", "track_id", "bbox", "face_jpeg_b64",
        "model", "signature",
    }  # fmt: skip
    if extra:
        raise AlertFormatError(f"unexpected fields {sorted(extra)}")
    if "signature" in obj and not _SIG_RE.fullmatch(_need(obj, "signature", str)):
        raise AlertFormatError("signature is not a base64 Ed25519 signature")
    if keys is not None:
        check_signature(payload, obj, keys)
    return obj


# --- adjudications ---------------------------------------------------------------------------


def make_adjudication(alert_id: str, decision: str, officer: str, at: float) -> dict[str, str]:
    """The ``{alert_id, decision, officer, at}`` object the control room sends back."""
    adj = {"alert_id": alert_id, "decision": decision, "officer": officer, "at": rfc3339(at)}
    return parse_adjudication(dumps(adj))


def parse_adjudication(payload: bytes) -> dict[str, str]:
    """Parse and check an adjudication message (AlertFormatError says what is wrong)."""
    try:
        obj = boundedjson.loads(payload, max_bytes=4096, max_depth=2)
    except boundedjson.JSONRefused as exc:
        raise AlertFormatError(f"adjudication refused: {exc}") from None
    if not isinstance(obj, dict):
        raise AlertFormatError("adjudication is not a JSON object")
    alert_id = _need(obj, "alert_id", str)
    try:
        uuid.UUID(alert_id)
    except ValueError:
        raise AlertFormatError(f"alert_id {alert_id!r} is not a UUID") from None
    if _need(obj, "decision", str) not in DECISIONS:
        raise AlertFormatError(f"decision must be one of {', '.join(DECISIONS)}")
    officer = _need(obj, "officer", str)
    if not officer.strip() or len(officer) > 64:
        raise AlertFormatError("officer must be 1..64 characters")
    parse_rfc3339(_need(obj, "at", str))
    extra = set(obj) - {"alert_id", "decision", "officer", "at"}
    if extra:
        raise AlertFormatError(f"unexpected fields {sorted(extra)}")
    return {k: str(obj[k]) for k in ("alert_id", "decision", "officer", "at")}
