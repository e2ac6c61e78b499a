"""What is signed has one spelling (issue 21, medium 1).

Base64 has other spellings for the same bytes: the unused low bits of the last character
(every Ed25519 signature has 15 more spellings that decode to it and verify), whitespace,
missing or extra padding. A broker that re-spells a signature must not get a resent
message treated as a different one: the console refuses the spelling (counted, on its
trail), keeps the van's audit chain intact, and still takes the genuine resend as a
duplicate. The same rule holds wherever a signature or key is parsed: alerts, audit
entries, adjudications, signed commands, reference files, key files.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge import signing
from edge.console.crypto import AtRest
from edge.console.events import Hub
from edge.console.handlers import Handler
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.alert import encode_alert
from edge.delivery.alert_sign import canonical as alert_canonical
from edge.delivery.alert_sign import seal_alert
from edge.errors import UsageError
from edge.watchlist.adjudication import AdjudicationRefused, sign_adjudication, verify_adjudication
from edge.watchlist.audit import AuditLog, canonical
from edge.watchlist.keys import load_signer_public, signer_public_from_bytes
from edge.watchlist.references import (
    Reference,
    ReferencesRefused,
    build_references,
    open_references,
)
from edge.watchlist.signed_commands import CommandRefused, make_command, parse_command
from tests.fixtures.alerts import make_record

KEY = Ed25519PrivateKey.generate()
PUBLIC = {"van-1": KEY.public_key()}
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ALERT_ID = "01937c3e-0000-7000-8000-000000000001"


def respellings(b64: str) -> list[str]:
    """The other spellings of a base64 string ending in ``==`` that decode to the same
    bytes: its last character's four unused bits set to each other value."""
    assert b64.endswith("==")
    last = ALPHABET.index(b64[-3])
    variants = [b64[:-3] + ALPHABET[(last & 0b110000) | low] + "==" for low in range(16)]
    return [v for v in variants if v != b64]


def test_each_of_the_15_other_spellings_decodes_alike_and_is_refused() -> None:
    sig = signing.sign(KEY, b"ctx\x00", b"message")
    raw = base64.b64decode(sig)
    others = respellings(sig)
    assert len(others) == 15
    for other in others:
        assert base64.b64decode(other, validate=True) == raw  # the attack is real
        assert not signing.verify(KEY.public_key(), b"ctx\x00", b"message", other)
        with pytest.raises(ValueError, match="canonical"):
            signing.b64decode_canonical(other)
    assert signing.verify(KEY.public_key(), b"ctx\x00", b"message", sig)
    for other in (sig[:-2], sig + "=", sig[:40] + "\n" + sig[40:], " " + sig):
        assert not signing.is_canonical_b64(other)
    assert signing.is_canonical_b64("+/8=") and not signing.is_canonical_b64("-_8=")  # urlsafe
    assert signing.canonical_hex("ab" * 32, 32) == b"\xab" * 32
    for other in ("AB" * 32, "ab" * 31 + " ab", "ab" * 31):
        with pytest.raises(ValueError):
            signing.canonical_hex(other, 32)


def _respelt_doc(data: bytes, **changes: str) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_adjudications_and_commands_take_one_spelling_of_signature_and_signer() -> None:
    now = 1_800_000_000.0
    adj = sign_adjudication(KEY, device_id="van-1", alert_id=ALERT_ID, decision="confirmed",
                            officer="PC 1", at=now)  # fmt: skip
    assert verify_adjudication(adj, KEY.public_key(), device_id="van-1", now=now)
    doc = json.loads(adj)
    for bad in ({"signature": respellings(doc["signature"])[0]},
                {"signer": doc["signer"].upper()}):  # fmt: skip
        with pytest.raises(AdjudicationRefused) as info:
            verify_adjudication(_respelt_doc(adj, **bad), KEY.public_key(), device_id="van-1",
                                now=now)  # fmt: skip
        assert info.value.reason == "garbled"
    cmd = make_command(KEY, "end_deployment", device_id="van-1", deployment_id="D-1")
    assert parse_command(cmd, [KEY.public_key()])
    doc = json.loads(cmd)
    for bad in ({"signature": respellings(doc["signature"])[0]},
                {"signer": doc["signer"].upper()}):  # fmt: skip
        with pytest.raises(CommandRefused) as cinfo:
            parse_command(_respelt_doc(cmd, **bad), [KEY.public_key()])
        assert cinfo.value.reason == "garbled"


def test_a_reference_file_takes_one_spelling_of_its_signature() -> None:
    console = X25519PrivateKey.generate()
    data = build_references(KEY, console.public_key(), deployment_id="D-1", bundle_id="b" * 32,
                            window_end=time.time() + 60,
                            subjects=[Reference("S-1", "suspect", b"\xff\xd8jpeg\xff\xd9")])
    assert open_references(data, console, KEY.public_key()).deployment_id == "D-1"
    doc = json.loads(data)
    with pytest.raises(ReferencesRefused):
        open_references(_respelt_doc(data, signature=respellings(doc["signature"])[0]),
                        console, KEY.public_key())  # fmt: skip


def test_a_public_key_file_takes_one_spelling(tmp_path: Path) -> None:
    pem = signing.public_pem(KEY.public_key())
    good = tmp_path / "van-1.signing.pub"
    good.write_bytes(pem)
    assert signing.load_device_keys(good)["van-1"] is not None
    assert load_signer_public(good) is not None
    lines = pem.decode().splitlines()
    variants = {
        "CRLF": pem.replace(b"\n", b"\r\n"),
        "split line": "\n".join([lines[0], lines[1][:30], lines[1][30:], *lines[2:]]).encode()
        + b"\n",
        "text before": b"van-1's key\n" + pem,
        "blank line after": pem + b"\n",
    }
    for name, data in variants.items():
        bad = tmp_path / "bad" / "van-1.signing.pub"
        bad.parent.mkdir(exist_ok=True)
        bad.write_bytes(data)
        with pytest.raises(signing.KeyFileError, match="canonical"):
            signing.load_device_keys(bad)
        with pytest.raises(UsageError, match="canonical"):
            load_signer_public(bad)
        with pytest.raises(UsageError, match="canonical"):
            signer_public_from_bytes(data)
        assert name


# --- the console: a re-spelt resend is refused, and never breaks a chain ----------------------


@pytest.fixture
def handler(tmp_path: Path) -> Iterator[Handler]:
    store = Store.open(f"sqlite:///{tmp_path / 'c.db'}")
    yield Handler(store, AtRest(X25519PrivateKey.generate()), Hub(), Metrics(),
                  device_keys=PUBLIC)  # fmt: skip
    store.close()


def _entries(path: Path, n: int) -> list[dict[str, object]]:
    sent: list[dict[str, object]] = []
    log = AuditLog(path, publish=sent.append, signing_key=KEY)
    for i in range(n):
        log.append("purge", store="outbox", count=i, msg_ids=[])
    return sent


def test_a_re_spelt_audit_entry_is_refused_and_the_chain_stays_intact(
    handler: Handler, tmp_path: Path
) -> None:
    entries = _entries(tmp_path / "audit.log", 3)
    for e in entries:
        assert handler.handle("lfr/van-1/audit", canonical(e)) == "stored"
    for other in respellings(str(entries[1]["sig"]))[:3]:
        assert handler.handle("lfr/van-1/audit", canonical({**entries[1], "sig": other})) \
            == "refused"
    (chain,) = handler.store.audit.chains()
    assert (chain["state"], chain["verified_seq"], chain["problem"]) == ("ok", 3, None)
    assert handler.handle("lfr/van-1/audit", canonical(entries[1])) == "duplicate"
    m = handler.metrics
    assert m.get("console_messages_unverified_total", kind="audit", reason="not_canonical") == 3
    trail = [json.loads(r["detail"]) for r in handler.store.console_log()
             if r["event"] == "unverified_refused"]  # fmt: skip
    assert trail == [{"count": 1, "device_id": "van-1", "kind": "audit",
                      "reason": "not_canonical"}]  # fmt: skip
    assert handler.store.verify_log()[1] is None


def test_a_re_spelt_alert_is_refused_and_the_genuine_one_is_stored_once(
    handler: Handler,
) -> None:
    genuine = seal_alert(encode_alert(make_record("van-1")), time.time(), KEY)
    obj = json.loads(genuine)
    for other in respellings(obj["signature"])[:2]:
        assert handler.handle("lfr/van-1/alerts", alert_canonical({**obj, "signature": other})) \
            == "refused"
    assert handler.store.alerts() == []
    assert handler.handle("lfr/van-1/alerts", genuine) == "stored"
    assert handler.handle("lfr/van-1/alerts", genuine) == "duplicate"
    assert handler.metrics.get("console_messages_unverified_total", kind="alerts",
                               reason="not_canonical") == 2  # fmt: skip
    assert [json.loads(r["detail"])["reason"] for r in handler.store.console_log()
            if r["event"] == "unverified_refused"] == ["not_canonical"]  # fmt: skip
