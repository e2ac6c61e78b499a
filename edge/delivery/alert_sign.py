"""Device-signed alerts (issue 13, item 9): a broker cannot inject an alert.

The alert JSON (:mod:`edge.delivery.alert`) gains one field, ``signature``: base64
Ed25519 by the device's signing key over ::

    b"lfr-edge alert v1\\0" + canonical JSON of the alert without "signature"

where canonical JSON is the form the device publishes: keys sorted, no whitespace, ASCII
(``json.dumps(obj, sort_keys=True, separators=(",", ":"))``). It covers every field,
``published_at`` and the face JPEG included. :func:`seal_alert` is called by the
publisher when it hands an alert to MQTT: it stamps ``published_at`` (the first-publish
time stored in the outbox) and signs *after* stamping; Ed25519 is deterministic, so every
redelivery is still byte-identical.

:func:`check_signature` refuses (:class:`AlertSignatureError`, a ``reason`` code) an alert
from a device whose key is not known (``unknown_device``), one without a signature
(``unsigned``), one whose bytes are not exactly the canonical form (``not_canonical``:
so a change of any byte fails, even one JSON would not notice; the signature too must be
in its one base64 spelling, :func:`edge.signing.b64decode_canonical`, so no two different
byte strings carry the same signed alert) and one whose signature does not verify
(``bad_signature``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge import signing
from edge.delivery.wire import AlertFormatError, rfc3339, stamp_published_at

SIG_CONTEXT: Final = b"lfr-edge alert v1\x00"
SIGNATURE_FIELD: Final = "signature"


class AlertSignatureError(AlertFormatError):
    """An alert whose device signature is missing or does not verify."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


def canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def _body(obj: Mapping[str, Any]) -> bytes:
    return canonical({k: v for k, v in obj.items() if k != SIGNATURE_FIELD})


def seal_alert(payload: bytes, published_at: float, key: Ed25519PrivateKey) -> bytes:
    """Stamp ``published_at`` (if still ``null``) and sign: the bytes to publish.

    ``payload`` is the device's own alert from its outbox (:func:`encode_alert`).
    Deterministic for the same payload, time and key.
    """
    obj = json.loads(payload)
    if not isinstance(obj, dict):
        raise AlertFormatError("alert to seal is not a JSON object")
    obj.pop(SIGNATURE_FIELD, None)
    if obj.get("published_at") is None:
        obj["published_at"] = rfc3339(published_at)
    obj[SIGNATURE_FIELD] = signing.sign(key, SIG_CONTEXT, canonical(obj))
    return canonical(obj)


def outgoing(payload: bytes, first: float, key: Ed25519PrivateKey | None) -> bytes:
    """What the publisher sends for an outbox payload first handed to MQTT at ``first``:
    an alert (``key`` given) stamped and sealed, anything else stamped if it has a null
    ``published_at`` (:func:`~edge.delivery.wire.stamp_published_at`) and otherwise as is."""
    if key is None:
        return stamp_published_at(payload, first)
    return seal_alert(payload, first, key)


def check_signature(
    payload: bytes, obj: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]
) -> None:
    """Verify a parsed alert ``obj`` (from ``payload``) against its device's key."""
    device = obj.get("device_id")
    public = keys.get(device) if isinstance(device, str) else None
    if public is None:
        raise AlertSignatureError(
            "unknown_device", f"no signing key for device {device!r}: alert not verified"
        )
    sig = obj.get(SIGNATURE_FIELD)
    if sig is None:
        raise AlertSignatureError("unsigned", "alert carries no device signature")
    if canonical(obj) != bytes(payload):
        raise AlertSignatureError("not_canonical", "alert is not in its signed, canonical form")
    if not signing.is_canonical_b64(sig):
        raise AlertSignatureError("not_canonical", "alert signature is not in its one canonical "
                                  "base64 spelling")  # fmt: skip
    if not signing.verify(public, SIG_CONTEXT, _body(obj), sig):
        raise AlertSignatureError("bad_signature", "alert signature does not verify")
