"""Opening a watchlist bundle: framing, signature, header, policy checks and decryption.

:func:`open_bundle` checks, in this order, and raises :class:`BundleRefused` with one
line for the first failure: framing (``truncated``, ``garbled``, ``unsupported_version``),
``unknown_signer``, ``bad_signature``, header (``garbled``), ``not_for_device``,
``embedder_mismatch``, ``window_not_started``, ``window_ended``, ``old_sequence``,
``threshold_below_floor``, ``signage_not_confirmed``, ``unknown_category``,
``too_many_subjects``, ``wrong_key``, payload (``garbled``). No other exception escapes
it for any input.

The format is :mod:`edge.watchlist.bundle_format`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import BundleRefused
from edge.recognition.match import DEFAULT_REFERENCE, REFERENCES
from edge.types import CATEGORIES
from edge.watchlist.bundle_format import (
    _FIXED,
    _NONCE,
    _TAG,
    FORMAT_VERSION,
    MAGIC,
    MAX_BUNDLE,
    MAX_HEADER,
    MAX_PAYLOAD,
    MAX_THUMB,
    SIG_CONTEXT,
    BundleHeader,
    OpenedBundle,
    Recipient,
    Subject,
    _kek,
    _raw_pub,
    _Shape,
    _wrap_aad,
    format_time,
    strict_json,
)
from edge.watchlist.keys import key_id

# --- opening -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    signer_id: bytes
    header_bytes: bytes
    aad: bytes
    payload: bytes
    signed: bytes
    signature: bytes


def _refuse(reason: str, message: str) -> BundleRefused:
    return BundleRefused(reason, message)


def _split(data: bytes) -> _Frame:
    n = len(data)
    if n < len(MAGIC):
        raise _refuse("truncated", f"bundle is truncated ({n} bytes)")
    if data[: len(MAGIC)] != MAGIC:
        raise _refuse("garbled", "bundle is garbled: not a watchlist bundle (bad magic)")
    if n > MAX_BUNDLE:
        raise _refuse("garbled", f"bundle is garbled: {n} bytes is larger than any bundle")
    if n < _FIXED:
        raise _refuse("truncated", f"bundle is truncated ({n} bytes)")
    (version,) = struct.unpack_from(">H", data, 8)
    if version != FORMAT_VERSION:
        raise _refuse(
            "unsupported_version",
            f"bundle format version {version} is not supported (this device reads "
            f"{FORMAT_VERSION})",
        )
    signer_id = data[10:42]
    (hlen,) = struct.unpack_from(">I", data, 42)
    if not 1 <= hlen <= MAX_HEADER:
        raise _refuse("garbled", f"bundle is garbled: header length {hlen} is out of range")
    hend = _FIXED + hlen
    if n < hend + 4:
        raise _refuse("truncated", f"bundle is truncated ({n} bytes, header needs {hend + 4})")
    (plen,) = struct.unpack_from(">I", data, hend)
    if not _NONCE + _TAG <= plen <= MAX_PAYLOAD:
        raise _refuse("garbled", f"bundle is garbled: payload length {plen} is out of range")
    pend = hend + 4 + plen
    if n < pend + 64:
        raise _refuse("truncated", f"bundle is truncated ({n} bytes, expected {pend + 64})")
    if n > pend + 64:
        raise _refuse("garbled", f"bundle is garbled: {n - pend - 64} unexpected trailing bytes")
    return _Frame(
        signer_id=signer_id,
        header_bytes=data[_FIXED:hend],
        aad=data[:hend],
        payload=data[hend + 4 : pend],
        signed=data[:pend],
        signature=data[pend:],
    )


def _verified(
    data: bytes, trusted_signers: Sequence[Ed25519PublicKey]
) -> tuple[_Frame, BundleHeader]:
    frame = _split(data)
    signer = next((k for k in trusted_signers if key_id(k) == frame.signer_id), None)
    if signer is None:
        raise _refuse(
            "unknown_signer",
            f"bundle is signed by an unknown key (id {frame.signer_id.hex()[:16]}), "
            "not a trusted control-room key",
        )
    try:
        signer.verify(frame.signature, SIG_CONTEXT + frame.signed)
    except InvalidSignature:
        raise _refuse(
            "bad_signature", "bundle signature is invalid: it was modified after signing"
        ) from None
    return frame, _parse_header(frame.header_bytes)


def _parse_header(header_bytes: bytes) -> BundleHeader:
    try:
        header = BundleHeader.from_json(strict_json(header_bytes))
    except (ValueError, TypeError, OverflowError) as exc:
        raise _refuse("garbled", f"bundle is garbled: header {exc}") from None
    if header.format != FORMAT_VERSION:
        raise _refuse(
            "unsupported_version", f"bundle header format {header.format} is not supported"
        )
    return header


def read_header(data: bytes, trusted_signers: Sequence[Ed25519PublicKey]) -> BundleHeader:
    """Verify the signature and return the header, without any device key."""
    return _verified(data, trusted_signers)[1]


def read_header_unverified(data: bytes) -> tuple[str, BundleHeader]:
    """The signer key id (hex) and header, WITHOUT checking the signature (inspect only)."""
    frame = _split(data)
    return frame.signer_id.hex(), _parse_header(frame.header_bytes)


def _gcm_decrypt_into(key: bytes, blob: bytes, aad: bytes) -> bytearray:
    """Decrypt into a bytearray the caller can zero; raises InvalidTag."""
    nonce, ct, tag = blob[:_NONCE], blob[_NONCE:-_TAG], blob[-_TAG:]
    dec = Cipher(algorithms.AES(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    buf = bytearray(len(ct) + 15)
    try:
        n = dec.update_into(ct, buf)
        dec.finalize()
    except InvalidTag:
        buf[:] = bytes(len(buf))
        raise
    del buf[n:]
    return buf


def open_bundle(
    data: bytes,
    device_id: str,
    device_private_key: X25519PrivateKey,
    trusted_signers: Sequence[Ed25519PublicKey],
    expected_embedder_sha256: str,
    threshold_floor: float,
    max_subjects: int,
    last_sequence: int | None,
    now: float,
    last_bundle_id: str | None = None,
) -> OpenedBundle:
    """Verify and decrypt a bundle for this device, or raise :class:`BundleRefused`.

    ``now`` is Unix time. ``last_sequence`` is the sequence number of the last accepted
    bundle (``None``: none yet); an older one is refused, and so is the same number on
    a different bundle (when ``last_bundle_id`` is given). Re-loading the same bundle
    (restart, SIGHUP) is allowed.
    """
    try:
        return _open(
            bytes(data), device_id, device_private_key, trusted_signers,
            expected_embedder_sha256, threshold_floor, max_subjects, last_sequence, now,
            last_bundle_id,
        )
    except BundleRefused:
        raise
    except (ValueError, TypeError, OverflowError, struct.error, MemoryError) as exc:
        # Defence in depth: the checks above are meant to be total; if one is not,
        # the bundle is still refused rather than crashing the daemon.
        raise _refuse("garbled", f"bundle is garbled: {type(exc).__name__}") from None


def _open(
    data: bytes,
    device_id: str,
    device_private_key: X25519PrivateKey,
    trusted_signers: Sequence[Ed25519PublicKey],
    expected_embedder_sha256: str,
    threshold_floor: float,
    max_subjects: int,
    last_sequence: int | None,
    now: float,
    last_bundle_id: str | None,
) -> OpenedBundle:
    frame, h = _verified(data, trusted_signers)
    recipient = next((r for r in h.recipients if r.device_id == device_id), None)
    if recipient is None:
        shown = ", ".join(h.device_ids[:5]) + (" ..." if len(h.device_ids) > 5 else "")
        raise _refuse(
            "not_for_device", f"bundle is not for this device ({device_id}); it is for {shown}"
        )
    if h.embedder.sha256 != expected_embedder_sha256:
        raise _refuse(
            "embedder_mismatch",
            f"bundle was made with embedder {h.embedder.name} (family {h.embedder.family}, "
            f"sha256 {h.embedder.sha256[:12]}), this device runs another "
            f"(sha256 {expected_embedder_sha256[:12]}): rebuild the watchlist with the "
            "device's embedder (edge watchlist build, the device's models and [recognition] "
            "embedder); an embedding from one model means nothing to another",
        )
    if now < h.start.timestamp():
        raise _refuse(
            "window_not_started",
            f"deployment {h.deployment_id} has not started: window opens "
            f"{format_time(h.start)}",
        )
    if now >= h.end.timestamp():
        raise _refuse(
            "window_ended",
            f"deployment {h.deployment_id} is over: window ended {format_time(h.end)}",
        )
    if last_sequence is not None:
        if h.sequence < last_sequence:
            raise _refuse(
                "old_sequence",
                f"bundle sequence {h.sequence} is older than the last accepted ({last_sequence})",
            )
        if h.sequence == last_sequence and last_bundle_id not in (None, h.bundle_id):
            raise _refuse(
                "old_sequence",
                f"bundle sequence {h.sequence} was already used by another bundle",
            )
    if h.threshold < threshold_floor:
        raise _refuse(
            "threshold_below_floor",
            f"bundle threshold {h.threshold:.3f} is below the configured floor "
            f"{threshold_floor:.3f}",
        )
    if not h.signage_confirmed:
        raise _refuse(
            "signage_not_confirmed",
            f"deployment {h.deployment_id} has no signage confirmation; refusing to arm",
        )
    unknown = sorted(c for c in h.categories if c not in CATEGORIES)
    if unknown:
        raise _refuse(
            "unknown_category",
            f"bundle has subjects in unknown category {unknown[0]!r}",
        )
    limit = min(max_subjects, h.max_watchlist_size)
    if h.subject_count > limit:
        raise _refuse(
            "too_many_subjects",
            f"bundle has {h.subject_count} subjects, more than the maximum {limit}",
        )
    return _decrypt(frame, h, recipient, device_id, device_private_key)


def _decrypt(
    frame: _Frame, h: BundleHeader, recipient: Recipient, device_id: str, key: X25519PrivateKey
) -> OpenedBundle:
    if h.embedder.dim * h.subject_count * 4 > MAX_PAYLOAD:
        raise _refuse("garbled", "bundle is garbled: declared watchlist is larger than any bundle")
    content_key = _unwrap(recipient, h.bundle_id, device_id, key)
    try:
        plain = _gcm_decrypt_into(content_key, frame.payload, frame.aad)
    except InvalidTag:
        raise _refuse("garbled", "bundle is garbled: payload does not decrypt") from None
    try:
        return _parse_payload(plain, h)
    finally:
        plain[:] = bytes(len(plain))


@dataclass(slots=True)
class Inspection:
    """What ``edge watchlist inspect`` shows: never an embedding or a thumbnail."""

    signer_key_id: str
    signature: str  # "valid" or "not verified (no signer key given)"
    header: BundleHeader
    subjects: tuple[Subject, ...] | None  # only with the device key
    reference: str | None = None  # how several references are scored (with the device key)


def inspect_bundle(
    data: bytes,
    trusted_signers: Sequence[Ed25519PublicKey] | None,
    device: tuple[str, X25519PrivateKey] | None = None,
) -> Inspection:
    """Verify (when signer keys are given) and summarise a bundle; ignores window,
    sequence, floor and embedder checks, which belong to the device. Raises
    :class:`BundleRefused`."""
    try:
        if trusted_signers is not None:
            frame, h = _verified(bytes(data), trusted_signers)
            sig = "valid"
        else:
            frame = _split(bytes(data))
            h = _parse_header(frame.header_bytes)
            sig = "not verified (no signer key given)"
        subjects, reference = None, None
        if device is not None:
            device_id, key = device
            recipient = next((r for r in h.recipients if r.device_id == device_id), None)
            if recipient is None:
                raise _refuse("not_for_device", f"bundle is not for device {device_id}")
            opened = _decrypt(frame, h, recipient, device_id, key)
            subjects, reference = opened.subjects, opened.reference
            opened.wipe()
    except BundleRefused:
        raise
    except (ValueError, TypeError, OverflowError, struct.error, MemoryError) as exc:
        raise _refuse("garbled", f"bundle is garbled: {type(exc).__name__}") from None
    return Inspection(frame.signer_id.hex(), sig, h, subjects, reference)


def _unwrap(
    r: Recipient, bundle_id: str, device_id: str, key: X25519PrivateKey
) -> bytes:
    dev_pub = _raw_pub(key.public_key())
    if key_id(key.public_key()).hex() != r.key_id:
        raise _refuse(
            "wrong_key",
            f"bundle key for {device_id} does not unwrap with this key: it is wrapped to "
            f"key {r.key_id[:16]}, not {key_id(key.public_key()).hex()[:16]}",
        )
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(r.ephemeral_public))
        kek = _kek(shared, r.ephemeral_public, dev_pub, bundle_id, device_id)
        nonce, wrapped = r.wrapped_key[:_NONCE], r.wrapped_key[_NONCE:]
        return AESGCM(kek).decrypt(nonce, wrapped, _wrap_aad(bundle_id, device_id))
    except (InvalidTag, ValueError):
        raise _refuse(
            "wrong_key",
            f"bundle key for {device_id} does not unwrap with this device's key "
            "(wrong device key?)",
        ) from None


def _parse_payload(plain: bytearray, h: BundleHeader) -> OpenedBundle:
    def garbled(what: str) -> BundleRefused:
        return _refuse("garbled", f"bundle is garbled: payload {what}")

    if len(plain) < 4:
        raise garbled("is too short")
    (mlen,) = struct.unpack_from(">I", plain, 0)
    dim, count = h.embedder.dim, h.subject_count
    if 4 + mlen + count * dim * 4 > len(plain):
        raise garbled("lengths do not match the header")
    try:
        meta = _Shape.obj(strict_json(bytes(plain[4 : 4 + mlen])), "payload", ("subjects",),
                          ("reference",))
        raw = meta["subjects"]
        if not isinstance(raw, list) or len(raw) != count:
            raise ValueError("subjects do not match subject_count")
        reference = meta.get("reference", DEFAULT_REFERENCE)
        if reference not in REFERENCES:
            raise ValueError("reference is neither " + " nor ".join(REFERENCES))
        subjects = tuple(Subject.from_json(s, i) for i, s in enumerate(raw))
        thumbs = {
            s.subject_id: _Shape.b64(r["thumbnail"], f"subjects[{i}].thumbnail", MAX_THUMB)
            for i, (s, r) in enumerate(zip(subjects, raw, strict=True))
        }
    except ValueError as exc:
        raise garbled(str(exc)) from None
    rows = sum(s.references for s in subjects)
    if 4 + mlen + rows * dim * 4 != len(plain):
        raise garbled("lengths do not match the subjects' references")
    if len({s.subject_id for s in subjects}) != count:
        raise garbled("repeats a subject id")
    for s in subjects:
        if s.category not in CATEGORIES:
            raise _refuse(
                "unknown_category",
                f"bundle subject {s.subject_id} has unknown category {s.category!r}",
            )
    cats: dict[str, int] = {}
    for s in subjects:
        cats[s.category] = cats.get(s.category, 0) + 1
    if cats != dict(h.categories):
        raise garbled("categories do not match the header")
    emb = np.empty((rows, dim), dtype=np.float32)
    view = np.frombuffer(plain, dtype="<f4", count=rows * dim, offset=4 + mlen)
    emb.reshape(-1)[:] = view
    del view
    if not np.isfinite(emb).all():
        emb.fill(0.0)
        raise garbled("has non-finite embeddings")
    return OpenedBundle(header=h, subjects=subjects, embeddings=emb, thumbnails=thumbs,
                        reference=reference)


def bundle_digest(data: bytes) -> str:
    """SHA-256 of the bundle file (for the audit log; identifies it without content)."""
    return hashlib.sha256(data).hexdigest()
