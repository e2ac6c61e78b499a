"""Signed adjudications (issue 13 item 5): the API the console and `edge alerts` call."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.watchlist.adjudication import (
    MAX_ADJUDICATION_BYTES,
    AdjudicationRefused,
    sign_adjudication,
    verify_adjudication,
)
from edge.watchlist.signed_commands import SIG_CONTEXT as COMMAND_CONTEXT

KEY = Ed25519PrivateKey.generate()
ALERT = "01937c3e-0000-7000-8000-000000000001"
NOW = 1_800_000_000.0


def signed(**over: object) -> bytes:
    kw: dict[str, object] = {"device_id": "van-1", "alert_id": ALERT, "decision": "confirmed",
                             "officer": "PC 1234", "at": NOW}  # fmt: skip
    kw.update(over)
    return sign_adjudication(KEY, **kw)  # type: ignore[arg-type]


def refusal(data: bytes, **kw: object) -> str:
    with pytest.raises(AdjudicationRefused) as info:
        verify_adjudication(data, KEY.public_key(), device_id=str(kw.get("device", "van-1")),
                            now=NOW)  # fmt: skip
    return info.value.reason


def test_a_signed_adjudication_verifies_and_keeps_its_fields() -> None:
    adj = verify_adjudication(signed(), KEY.public_key(), device_id="van-1", now=NOW)
    assert (adj.alert_id, adj.decision, adj.officer, adj.device_id) == (
        ALERT, "confirmed", "PC 1234", "van-1")
    assert adj.at == NOW and adj.at_text == "2027-01-15T08:00:00.000Z"


def test_unsigned_forged_foreign_and_garbled_are_refused_each_with_a_reason() -> None:
    doc = json.loads(signed())
    body = json.loads(doc["body"])
    assert refusal(json.dumps(body).encode()) == "unsigned"
    other = Ed25519PrivateKey.generate()
    assert refusal(sign_adjudication(other, device_id="van-1", alert_id=ALERT,
                                     decision="rejected", officer="x", at=NOW)) == "unknown_signer"
    forged = dict(doc, body=doc["body"].replace("confirmed", "rejected"))
    assert refusal(json.dumps(forged).encode()) == "bad_signature"
    assert refusal(signed(device_id="van-2")) == "not_for_device"
    assert refusal(signed(at=NOW + 3600)) == "future"
    assert refusal(b"[" * 30000) == "too_large"
    assert refusal(b"[" * 3000) == "garbled"
    assert refusal(b'{"a": NaN}') == "garbled"
    assert refusal(b"\xff\xfe") == "garbled"
    assert refusal(b"x" * (MAX_ADJUDICATION_BYTES + 1)) == "too_large"


def test_a_command_signature_never_verifies_as_an_adjudication() -> None:
    """Domain separation: the same body signed in the commands' context is refused."""
    doc = json.loads(signed())
    sig = KEY.sign(COMMAND_CONTEXT + doc["body"].encode())
    doc["signature"] = base64.b64encode(sig).decode()
    assert refusal(json.dumps(doc).encode()) == "bad_signature"


@pytest.mark.parametrize("bad", [{"decision": "shoot"}, {"alert_id": "not-a-uuid"},
                                 {"officer": ""}, {"officer": "a\nALERT"}, {"officer": "x" * 65},
                                 {"device_id": "../etc"}])  # fmt: skip
def test_signing_refuses_what_the_device_would_refuse(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        signed(**bad)
