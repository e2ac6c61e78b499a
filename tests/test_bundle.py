"""Watchlist bundles: a valid one round-trips; every refusal has its own reason and line."""

from __future__ import annotations

import datetime as dt
import json
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused, UsageError
from edge.watchlist import bundle as B
from edge.watchlist.keys import key_id
from tests.bundle_kit import (
    EMBEDDER,
    NOW,
    embeddings,
    make_bundle,
    make_kit,
    open_args,
    subjects,
)


def _resign(kit, header: dict | bytes, payload: bytes, version: int = 1) -> bytes:
    """A frame with an arbitrary header, correctly signed by the trusted key."""
    hb = header if isinstance(header, bytes) else B.canonical_json(header)
    body = B.MAGIC + struct.pack(">H", version) + key_id(kit.signer.public_key())
    body += struct.pack(">I", len(hb)) + hb + struct.pack(">I", len(payload)) + payload
    return body + kit.signer.sign(B.SIG_CONTEXT + body)


def _parts(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from(">I", data, 42)
    header = json.loads(data[46 : 46 + hlen])
    (plen,) = struct.unpack_from(">I", data, 46 + hlen)
    return header, data[50 + hlen : 50 + hlen + plen]


def test_valid_bundle_round_trips() -> None:
    kit = make_kit()
    subj = subjects(5)
    emb = embeddings(5)
    data = make_bundle(kit, subj=subj, emb=emb)
    opened = B.open_bundle(data, **open_args(kit))
    h = opened.header
    assert h.deployment_id == "D-2026-0042"
    assert h.location == "Example Street, Example Town"
    assert h.start == NOW - dt.timedelta(hours=1)
    assert h.threshold == pytest.approx(0.45)
    assert h.signage_confirmed is True
    assert h.sequence == 7
    assert h.embedder == EMBEDDER
    assert set(h.device_ids) == {"van-01", "van-02"}
    assert dict(h.categories) == {"wanted_court": 3, "missing_person": 2}
    assert opened.subjects == tuple(subj)
    assert opened.embeddings.dtype == np.float32
    np.testing.assert_array_equal(opened.embeddings, emb)
    assert opened.thumbnails["S-0003"] == b"\xff\xd8thumbS-0003"
    # the second recipient opens the same bundle with its own key
    other = B.open_bundle(
        data, **open_args(kit, device_id="van-02", device_private_key=kit.other_device)
    )
    np.testing.assert_array_equal(other.embeddings, emb)
    opened.wipe()
    assert not opened.embeddings.any()
    assert opened.thumbnails == {}


def test_payload_is_secret_and_header_is_readable() -> None:
    kit = make_kit()
    emb = embeddings(5)
    data = make_bundle(kit, emb=emb)
    assert emb.tobytes()[:64] not in data
    assert b"S-0000" not in data  # subject ids only inside the encrypted payload
    assert b"PNC" not in data
    header, _ = _parts(data)
    assert header["deployment_id"] == "D-2026-0042"
    signer, h = B.read_header_unverified(data)
    assert signer == key_id(kit.signer.public_key()).hex()
    assert B.read_header(data, kit.trusted) == h


def _refusal(data: bytes, kit, **changes) -> BundleRefused:
    with pytest.raises(BundleRefused) as info:
        B.open_bundle(data, **open_args(kit, **changes))
    return info.value


def test_each_refusal_has_its_own_reason_and_line(monkeypatch: pytest.MonkeyPatch) -> None:
    kit = make_kit()
    data = make_bundle(kit)
    start = (NOW - dt.timedelta(hours=1)).timestamp()
    end = (NOW + dt.timedelta(hours=4)).timestamp()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    header, payload = _parts(data)

    with monkeypatch.context() as m:  # a validly signed bundle with a non-permitted category
        m.setattr(B, "CATEGORIES", (*B.CATEGORIES, "gang_member"))
        bad_cat = make_bundle(kit, subj=subjects(3, category="gang_member"))

    garbled_header = _resign(kit, dict(header, threshold="high"), payload)

    cases = {
        "bad_signature": _refusal(bytes(flipped), kit),
        "unknown_signer": _refusal(
            data, kit, trusted_signers=[Ed25519PrivateKey.generate().public_key()]
        ),
        "not_for_device": _refusal(data, kit, device_id="van-99"),
        "window_not_started": _refusal(data, kit, now=start - 1),
        "window_ended": _refusal(data, kit, now=end),
        "old_sequence": _refusal(data, kit, last_sequence=8),
        "threshold_below_floor": _refusal(data, kit, threshold_floor=0.5),
        "signage_not_confirmed": _refusal(
            make_bundle(kit, spec_changes={"signage_confirmed": False}), kit
        ),
        "unknown_category": _refusal(bad_cat, kit),
        "too_many_subjects": _refusal(data, kit, max_subjects=4),
        "truncated": _refusal(data[:-10], kit),
        "garbled": _refusal(garbled_header, kit),
        "embedder_mismatch": _refusal(data, kit, expected_embedder_sha256="cd" * 32),
        "wrong_key": _refusal(data, kit, device_private_key=X25519PrivateKey.generate()),
        "unsupported_version": _refusal(_resign(kit, header, payload, version=2), kit),
    }
    for reason, exc in cases.items():
        assert exc.reason == reason, (reason, exc.reason, str(exc))
        line = str(exc)
        assert line and "\n" not in line
    messages = [str(e) for e in cases.values()]
    assert len(set(messages)) == len(messages)
    # a few of the lines say what matters
    assert "van-99" in str(cases["not_for_device"])
    floor_line = str(cases["threshold_below_floor"])
    assert "0.450" in floor_line and "0.500" in floor_line
    assert "gang_member" in str(cases["unknown_category"])
    assert "dlib_resnet_v1_int8" in str(cases["embedder_mismatch"])


def test_window_edges_and_sequence_rules() -> None:
    kit = make_kit()
    data = make_bundle(kit)
    start = (NOW - dt.timedelta(hours=1)).timestamp()
    end = (NOW + dt.timedelta(hours=4)).timestamp()
    B.open_bundle(data, **open_args(kit, now=start))  # start is inside
    B.open_bundle(data, **open_args(kit, now=end - 1))
    # the same bundle again (restart / SIGHUP) is accepted ...
    bid = B.read_header(data, kit.trusted).bundle_id
    B.open_bundle(data, **open_args(kit, last_sequence=7, last_bundle_id=bid))
    # ... another bundle reusing the sequence number is not
    again = make_bundle(kit)
    assert _refusal(again, kit, last_sequence=7, last_bundle_id=bid).reason == "old_sequence"
    # a newer one is
    B.open_bundle(make_bundle(kit, spec_changes={"sequence": 8}),
                  **open_args(kit, last_sequence=7, last_bundle_id=bid))


def test_the_tightest_size_limit_applies() -> None:
    kit = make_kit()
    data = make_bundle(kit, n=5, spec_changes={"max_watchlist_size": 5})
    B.open_bundle(data, **open_args(kit, max_subjects=5))
    assert _refusal(data, kit, max_subjects=4).reason == "too_many_subjects"


def test_garbled_frames() -> None:
    kit = make_kit()
    data = make_bundle(kit)
    assert _refusal(b"", kit).reason == "truncated"
    assert _refusal(data[:30], kit).reason == "truncated"
    assert _refusal(b"GIF89a" + data[6:], kit).reason == "garbled"
    assert _refusal(data + b"\x00", kit).reason == "garbled"
    header, payload = _parts(data)
    # validly signed but wrong inside: each still refused as garbled, never a crash
    for bad in (
        b"{not json",
        b"[" * 100_000,
        B.canonical_json(dict(header, extra=1)),
        B.canonical_json({k: v for k, v in header.items() if k != "window"}),
        B.canonical_json(dict(header, window={"start": "2026-11-22T13:00:00Z",
                                              "end": "2026-11-22T12:00:00Z"})),
        B.canonical_json(dict(header, subject_count=6)),
        b'{"format":1,"format":1}',
    ):
        assert _refusal(_resign(kit, bad, payload), kit).reason == "garbled"
    # header says 5 subjects but payload has been swapped for another bundle's
    _, other_payload = _parts(make_bundle(kit))
    assert _refusal(_resign(kit, header, other_payload), kit).reason == "garbled"


def test_build_refuses_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    kit = make_kit()
    with pytest.raises(UsageError, match="unknown category"):
        make_bundle(kit, subj=subjects(2, category="gang_member"))
    with pytest.raises(UsageError, match="maximum watchlist size"):
        make_bundle(kit, n=6, spec_changes={"max_watchlist_size": 5})
    with pytest.raises(UsageError, match="shape"):
        make_bundle(kit, subj=subjects(3), emb=embeddings(2))
    with pytest.raises(UsageError, match="not unique"):
        make_bundle(kit, subj=subjects(2) + subjects(1))
    with pytest.raises(UsageError, match="NaN"):
        bad = embeddings(2)
        bad[0, 0] = np.nan
        make_bundle(kit, subj=subjects(2), emb=bad)


def test_inspect_without_and_with_device_key() -> None:
    kit = make_kit()
    data = make_bundle(kit)
    plain = B.inspect_bundle(data, None)
    assert plain.signature.startswith("not verified") and plain.subjects is None
    full = B.inspect_bundle(data, kit.trusted, ("van-01", kit.deployment))
    assert full.signature == "valid"
    assert [s.subject_id for s in full.subjects or ()] == [f"S-{i:04d}" for i in range(5)]
    with pytest.raises(BundleRefused) as info:
        B.inspect_bundle(data, [Ed25519PrivateKey.generate().public_key()])
    assert info.value.reason == "unknown_signer"

