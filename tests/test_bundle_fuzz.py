"""Fuzzing open_bundle: mutated, truncated or extended bundles never crash and never open."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.errors import BundleRefused
from edge.watchlist.bundle import open_bundle
from tests.bundle_kit import make_bundle, make_kit, open_args

KIT = make_kit()
VALID = make_bundle(KIT, n=3)
ARGS = open_args(KIT)
FUZZ = settings(
    max_examples=300,
    deadline=None,  # no timed assertions; the run is bounded by max_examples
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


def _must_refuse(data: bytes) -> str:
    with pytest.raises(BundleRefused) as info:
        open_bundle(data, **ARGS)
    return info.value.reason


def test_the_unmodified_bundle_opens() -> None:
    assert open_bundle(VALID, **ARGS).header.subject_count == 3


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(VALID) - 1), st.integers(1, 255)), min_size=1, max_size=8
    )
)
def test_byte_mutations_are_refused(edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID)
    for pos, xor in edits:
        data[pos] ^= xor
    if bytes(data) == VALID:  # two edits may cancel out
        return
    _must_refuse(bytes(data))


@FUZZ
@given(cut=st.integers(0, len(VALID) - 1))
def test_truncations_are_refused(cut: int) -> None:
    assert _must_refuse(VALID[:cut]) in {"truncated", "garbled"}


@FUZZ
@given(tail=st.binary(min_size=1, max_size=256))
def test_extensions_are_refused(tail: bytes) -> None:
    _must_refuse(VALID + tail)


@FUZZ
@given(
    pos=st.integers(0, len(VALID)),
    cut=st.integers(0, 64),
    insert=st.binary(max_size=64),
)
def test_splices_are_refused(pos: int, cut: int, insert: bytes) -> None:
    data = VALID[:pos] + insert + VALID[pos + cut :]
    if data == VALID:
        return
    _must_refuse(data)


@FUZZ
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_are_refused(data: bytes) -> None:
    _must_refuse(data)


@FUZZ
@given(hlen=st.integers(0, 2**32 - 1), plen=st.integers(0, 2**32 - 1))
def test_hostile_length_fields_are_refused(hlen: int, plen: int) -> None:
    (real_hlen,) = struct.unpack_from(">I", VALID, 42)
    data = bytearray(VALID)
    struct.pack_into(">I", data, 42, hlen)
    if hlen == real_hlen:
        struct.pack_into(">I", data, 46 + real_hlen, plen)
    if bytes(data) == VALID:
        return
    _must_refuse(bytes(data))


def _resign(header: bytes, payload: bytes) -> bytes:
    from edge.watchlist.bundle import MAGIC, SIG_CONTEXT
    from edge.watchlist.keys import key_id

    body = MAGIC + struct.pack(">H", 1) + key_id(KIT.signer.public_key())
    body += struct.pack(">I", len(header)) + header + struct.pack(">I", len(payload)) + payload
    return body + KIT.signer.sign(SIG_CONTEXT + body)


(_HLEN,) = struct.unpack_from(">I", VALID, 42)
_HEADER = VALID[46 : 46 + _HLEN]
_PAYLOAD = VALID[50 + _HLEN : -64]


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.integers(0, len(_HEADER) - 1), st.integers(0, 255)), min_size=1, max_size=6
    )
)
def test_signed_garbage_headers_never_crash(edits: list[tuple[int, int]]) -> None:
    """Even a trusted signer's malformed header is parsed totally: refused, or (if still a
    valid header) opened; never an exception other than BundleRefused."""
    header = bytearray(_HEADER)
    for pos, value in edits:
        header[pos] = value
    with contextlib.suppress(BundleRefused):
        open_bundle(_resign(bytes(header), _PAYLOAD), **ARGS)
