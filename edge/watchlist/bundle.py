"""Signed, encrypted, expiring watchlist bundles (safeguards 1, 2, 3, 9, 12, 13).

Three modules along the bundle's seams: :mod:`edge.watchlist.bundle_format` (the
layout, limits and typed parts), this module (building and wrapping the content key)
and :mod:`edge.watchlist.bundle_open` (verification and decryption). Every public name
of the other two is re-exported here, so ``from edge.watchlist.bundle import X`` works
for all of them.
"""

from __future__ import annotations

import datetime as dt
import secrets
import struct
import uuid
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.compat import UTC
from edge.errors import UsageError
from edge.recognition.match import DEFAULT_REFERENCE, MAX_REFERENCES, REFERENCES, Reference
from edge.types import CATEGORIES
from edge.watchlist.bundle_format import (
    _NONCE,
    BUNDLE_SUFFIX,
    F32,
    FORMAT_VERSION,
    ID_RE,
    MAGIC,
    MAX_BUNDLE,
    MAX_DIM,
    MAX_HEADER,
    MAX_PAYLOAD,
    MAX_SUBJECTS_HARD,
    MAX_TEXT,
    MAX_THUMB,
    SIG_CONTEXT,
    WRAP_INFO,
    BundleHeader,
    DeploymentSpec,
    EmbedderInfo,
    OpenedBundle,
    Recipient,
    Subject,
    _b64,
    _kek,
    _raw_pub,
    _wrap_aad,
    canonical_json,
    format_time,
    parse_time,
    strict_json,
)
from edge.watchlist.bundle_open import (
    Inspection,
    bundle_digest,
    inspect_bundle,
    open_bundle,
    read_header,
    read_header_unverified,
)
from edge.watchlist.bundle_open import _unwrap as _unwrap  # the console's reference file
from edge.watchlist.keys import key_id

__all__ = [
    "BUNDLE_SUFFIX",
    "CATEGORIES",
    "F32",
    "FORMAT_VERSION",
    "ID_RE",
    "MAGIC",
    "MAX_BUNDLE",
    "MAX_DIM",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "MAX_SUBJECTS_HARD",
    "MAX_TEXT",
    "MAX_THUMB",
    "SIG_CONTEXT",
    "WRAP_INFO",
    "BundleHeader",
    "DeploymentSpec",
    "EmbedderInfo",
    "Inspection",
    "OpenedBundle",
    "Recipient",
    "Subject",
    "build_bundle",
    "bundle_digest",
    "canonical_json",
    "format_time",
    "inspect_bundle",
    "open_bundle",
    "parse_time",
    "read_header",
    "read_header_unverified",
    "strict_json",
    "wrap_content_key",
]


# --- building ----------------------------------------------------------------------------


def wrap_content_key(
    content_key: bytes, bundle_id: str, device_id: str, device_public: X25519PublicKey
) -> Recipient:
    """Wrap ``content_key`` to ``device_public`` (a deployment key, normally; the recipient
    records the key's id so the device finds its private half)."""
    eph = X25519PrivateKey.generate()
    eph_pub = _raw_pub(eph.public_key())
    dev_pub = _raw_pub(device_public)
    kek = _kek(eph.exchange(device_public), eph_pub, dev_pub, bundle_id, device_id)
    nonce = secrets.token_bytes(_NONCE)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, content_key, _wrap_aad(bundle_id, device_id))
    return Recipient(device_id, eph_pub, wrapped, key_id(device_public).hex())


def build_bundle(
    spec: DeploymentSpec,
    subjects: Sequence[Subject],
    embeddings: F32,
    embedder: EmbedderInfo,
    signing_key: Ed25519PrivateKey,
    recipients: Sequence[tuple[str, X25519PublicKey]],
    thumbnails: Mapping[str, bytes] | None = None,
    bundle_id: str | None = None,
    created_at: dt.datetime | None = None,
    reference: Reference = DEFAULT_REFERENCE,
) -> bytes:
    """Encrypt, wrap and sign a watchlist. Raises :class:`UsageError` on bad input.

    ``embeddings`` holds each subject's ``references`` rows, consecutive, in subject
    order; ``reference`` is how the device scores several rows (see bundle_format).
    This does not refuse a spec the device would refuse (e.g. signage not confirmed);
    :func:`edge.watchlist.enrol.load_deployment` does that at build time.
    """
    thumbnails = thumbnails or {}
    if reference not in REFERENCES:
        raise UsageError(f"reference {reference!r} is not one of {', '.join(REFERENCES)}")
    for s in subjects:
        if type(s.references) is not int or not 1 <= s.references <= MAX_REFERENCES:
            raise UsageError(
                f"subject {s.subject_id} has {s.references} references; a subject has "
                f"1 to {MAX_REFERENCES}"
            )
    rows = sum(s.references for s in subjects)
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.ndim != 2 or emb.shape[0] != rows or emb.shape[1] != embedder.dim:
        raise UsageError(
            f"embeddings shape {emb.shape} does not match {len(subjects)} subjects with "
            f"{rows} references x {embedder.dim}"
        )
    if not np.isfinite(emb).all():
        raise UsageError("embeddings contain NaN or infinity")
    if not recipients:
        raise UsageError("a bundle needs at least one recipient device")
    ids = [s.subject_id for s in subjects]
    if len(set(ids)) != len(ids):
        raise UsageError("subject ids are not unique")
    for s in subjects:
        if s.category not in CATEGORIES:
            raise UsageError(f"subject {s.subject_id}: unknown category {s.category!r}")
    if len(subjects) > spec.max_watchlist_size:
        raise UsageError(
            f"{len(subjects)} subjects exceed the deployment's maximum watchlist size "
            f"{spec.max_watchlist_size}"
        )
    bundle_id = bundle_id or uuid.uuid4().hex
    created_at = created_at or dt.datetime.now(UTC)
    content_key = AESGCM.generate_key(bit_length=256)
    recips = tuple(
        wrap_content_key(content_key, bundle_id, check_id, pub) for check_id, pub in recipients
    )
    cats: dict[str, int] = {}
    for s in subjects:
        cats[s.category] = cats.get(s.category, 0) + 1
    header = BundleHeader(
        bundle_id=bundle_id,
        created_at=created_at,
        deployment_id=spec.deployment_id,
        location=spec.location,
        start=spec.start,
        end=spec.end,
        authorising_officer=spec.authorising_officer,
        approved_at=spec.approved_at,
        threshold=spec.threshold,
        signage_confirmed=spec.signage_confirmed,
        sequence=spec.sequence,
        max_watchlist_size=spec.max_watchlist_size,
        subject_count=len(subjects),
        categories=cats,
        embedder=embedder,
        recipients=recips,
    )
    header_json = header.to_json()
    try:
        BundleHeader.from_json(strict_json(canonical_json(header_json)))
    except ValueError as exc:
        raise UsageError(f"cannot build bundle: {exc}") from None
    header_bytes = canonical_json(header_json)
    subj_json = []
    for s in subjects:
        d = s.to_json()
        d["thumbnail"] = _b64(thumbnails.get(s.subject_id, b""))
        subj_json.append(d)
    meta = canonical_json({"subjects": subj_json, "reference": reference})
    plaintext = struct.pack(">I", len(meta)) + meta + emb.tobytes()
    signer_id = key_id(signing_key.public_key())
    prefix = MAGIC + struct.pack(">H", FORMAT_VERSION) + signer_id
    prefix += struct.pack(">I", len(header_bytes)) + header_bytes
    nonce = secrets.token_bytes(_NONCE)
    payload = nonce + AESGCM(content_key).encrypt(nonce, plaintext, prefix)
    if len(payload) > MAX_PAYLOAD or len(header_bytes) > MAX_HEADER:
        raise UsageError("watchlist is too large for one bundle")
    body = prefix + struct.pack(">I", len(payload)) + payload
    return body + signing_key.sign(SIG_CONTEXT + body)


