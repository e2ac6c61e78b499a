"""Device-signed alerts (issue 13, item 9): every field is covered, any byte change fails."""

from __future__ import annotations

import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.delivery.alert import AlertFormatError, encode_alert, parse_alert
from edge.delivery.alert_sign import AlertSignatureError, seal_alert
from tests.fixtures.alerts import make_record
from tests.fixtures.forgery import forgeries

KEY = Ed25519PrivateKey.generate()
KEYS = {"dev-a": KEY.public_key()}


def genuine(**kw: object) -> bytes:
    return seal_alert(encode_alert(make_record("dev-a", **kw)), time.time(), KEY)  # type: ignore[arg-type]


def test_a_sealed_alert_verifies_and_redelivery_is_byte_identical() -> None:
    record = make_record("dev-a")
    queued = encode_alert(record)
    at = time.time()
    first = seal_alert(queued, at, KEY)
    assert seal_alert(queued, at, KEY) == first  # Ed25519 is deterministic
    assert seal_alert(first, at + 60, KEY) == first  # published_at is never re-stamped
    alert = parse_alert(first, KEYS)
    assert alert["alert_id"] == record.alert_id and alert["published_at"] is not None


def test_a_one_byte_change_anywhere_is_refused() -> None:
    payload = genuine()
    assert parse_alert(payload, KEYS)
    refused: set[str] = set()
    # Every byte outside the face, and every 97th byte of the face's base64 with its ends
    # (each position costs a full parse and verification).
    start = payload.index(b'"face_jpeg_b64":"') + 17
    end = payload.index(b'"', start)
    face = set(range(start, end, 97)) | set(range(start, start + 8)) | set(range(end - 8, end))
    positions = [i for i in range(len(payload)) if not start <= i < end or i in face]
    assert len(positions) > 800
    for i in positions:
        changed = bytearray(payload)
        changed[i] = payload[i] ^ 0x01 if payload[i] != 0x7E else 0x7D
        with pytest.raises(AlertFormatError) as exc:
            parse_alert(bytes(changed), KEYS)
        refused.add(getattr(exc.value, "reason", "format"))
    assert "bad_signature" in refused  # the signed fields, published_at and the face included


@pytest.mark.parametrize("name", sorted(forgeries(genuine())))
def test_forged_alerts_are_refused(name: str) -> None:
    payload = forgeries(genuine())[name]
    parse_alert(payload)  # each looks like a valid alert to the schema's rules
    with pytest.raises(AlertSignatureError) as exc:
        parse_alert(payload, KEYS)
    assert exc.value.reason in ("unsigned", "bad_signature", "not_canonical")


def test_an_alert_of_another_or_unknown_device_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    payload = seal_alert(encode_alert(make_record("dev-b")), time.time(), other)
    with pytest.raises(AlertSignatureError, match="no signing key for device 'dev-b'"):
        parse_alert(payload, KEYS)
    with pytest.raises(AlertSignatureError) as exc:  # dev-a's key does not sign dev-b's alerts
        parse_alert(payload, {"dev-b": KEY.public_key()})
    assert exc.value.reason == "bad_signature"


def test_a_garbled_signature_is_a_format_error() -> None:
    obj = json.loads(genuine())
    obj["signature"] = "not base64!"
    with pytest.raises(AlertFormatError, match="signature is not a base64"):
        parse_alert(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode(), KEYS)
