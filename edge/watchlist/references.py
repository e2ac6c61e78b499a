"""Reference images for the control room's console: an encrypted, signed file per bundle.

``edge watchlist build --console-pub console.pub --references-out FILE`` writes, beside
the bundle, every enrolled face image of every subject (the face of each usable reference
image, up to :data:`edge.watchlist.enrol.REFERENCE_PX` pixels, never upscaled; the best
first) with its provenance (source, capture date), encrypted to the console's X25519 key
and signed with the control room's Ed25519 key, so the console can show the matched crop
beside the subject's enrolled images, large enough to compare. The device never
gets this file; the console imports it, keeps the images encrypted at rest, and deletes
them (audited) when the deployment's summary arrives or its window has closed.

Each subject in the payload is ``{"subject_id", "category", "jpeg"`` (the best image),
``"more"`` (the other images, at most ``MAX_REFERENCES - 1``), ``"source"``,
``"capture_date"}``; the last three are optional, so a file written before they existed
still opens.

File (UTF-8 JSON)::

    {"format": "lfr-edge-references/1",
     "header": "<canonical JSON: deployment_id, bundle_id, window_end, count>",
     "recipient": {"device_id": "console", "ephemeral_public", "wrapped_key"},
     "payload": "<base64 nonce | AES-256-GCM(subjects JSON) | tag, AAD = header>",
     "signature": "<base64 Ed25519 over b'lfr-edge references v1\\0' + header + payload>"}

The content key is wrapped exactly as a bundle's (:func:`edge.watchlist.bundle.
wrap_content_key`: ephemeral X25519, HKDF-SHA256, AES-256-GCM), bound to the bundle id.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.errors import BundleRefused, UsageError
from edge.recognition.match import MAX_REFERENCES
from edge.signing import b64decode_canonical
from edge.watchlist.bundle import CATEGORIES, Recipient, _unwrap, wrap_content_key

FORMAT: Final = "lfr-edge-references/1"
SIG_CONTEXT: Final = b"lfr-edge references v1\x00"
RECIPIENT: Final = "console"
MAX_FILE: Final = 128 * 1024 * 1024
"""Largest reference file (the console reads it whole); :func:`build_references` refuses
to write a larger one, so the builder learns it, not the console."""
MAX_IMAGE: Final = 256 * 1024
MAX_TEXT: Final = 200


@dataclass(frozen=True)
class Reference:
    """One subject's reference images: ``jpeg`` the best, ``more`` the others."""

    subject_id: str
    category: str
    jpeg: bytes
    more: tuple[bytes, ...] = ()
    source: str = ""
    capture_date: str = ""

    @property
    def images(self) -> tuple[bytes, ...]:
        return (self.jpeg, *self.more)


@dataclass(frozen=True)
class References:
    deployment_id: str
    bundle_id: str
    window_end: float
    subjects: tuple[Reference, ...]


class ReferencesRefused(UsageError):  # noqa: N818 (a refusal)
    """A reference file does not verify or decrypt (one line)."""


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def build_references(signing_key: Ed25519PrivateKey, console_public: X25519PublicKey, *,
                     deployment_id: str, bundle_id: str, window_end: float,
                     subjects: list[Reference]) -> bytes:  # fmt: skip
    header = _canon({"deployment_id": deployment_id, "bundle_id": bundle_id,
                     "window_end": float(window_end), "count": len(subjects)})  # fmt: skip
    key = AESGCM.generate_key(bit_length=256)
    recipient = wrap_content_key(key, bundle_id, RECIPIENT, console_public)
    for s in subjects:
        if len(s.more) >= MAX_REFERENCES or any(len(j) > MAX_IMAGE for j in s.images):
            raise UsageError(f"reference images of {s.subject_id}: at most {MAX_REFERENCES} "
                             f"images of at most {MAX_IMAGE // 1024} KiB each")  # fmt: skip
    plain = _canon([{"subject_id": s.subject_id, "category": s.category,
                     "jpeg": base64.b64encode(s.jpeg).decode(),
                     "more": [base64.b64encode(j).decode() for j in s.more],
                     "source": s.source[:MAX_TEXT], "capture_date": s.capture_date[:MAX_TEXT]}
                    for s in subjects])  # fmt: skip
    nonce = secrets.token_bytes(12)
    payload = base64.b64encode(nonce + AESGCM(key).encrypt(nonce, plain.encode(),
                                                            header.encode())).decode()
    sig = signing_key.sign(SIG_CONTEXT + header.encode() + payload.encode())
    doc = {"format": FORMAT, "header": header, "recipient": recipient.to_json(),
           "payload": payload, "signature": base64.b64encode(sig).decode()}  # fmt: skip
    out = _canon(doc).encode()
    if len(out) > MAX_FILE:
        raise UsageError(f"the reference file would be {len(out) // 2**20} MiB, more than the "
                         f"console reads ({MAX_FILE // 2**20} MiB): fewer reference images per "
                         "subject or a smaller watchlist")  # fmt: skip
    return out


def open_references(data: bytes, console_key: X25519PrivateKey,
                    signer: Ed25519PublicKey) -> References:  # fmt: skip
    """Verify, decrypt and check a reference file; :class:`ReferencesRefused` otherwise."""
    if len(data) > MAX_FILE:
        raise ReferencesRefused("reference file is too large")
    try:
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ReferencesRefused("not a reference file")
        header_s, payload_s = str(doc["header"]), str(doc["payload"])
        try:
            signer.verify(b64decode_canonical(doc["signature"], "signature"),
                          SIG_CONTEXT + header_s.encode() + payload_s.encode())  # fmt: skip
        except InvalidSignature:
            raise ReferencesRefused("reference file signature does not verify") from None
        header = json.loads(header_s)
        recipient = Recipient.from_json(doc["recipient"], 0)
        key = _unwrap(recipient, str(header["bundle_id"]), RECIPIENT, console_key)
        blob = b64decode_canonical(payload_s, "payload")
        try:
            plain = AESGCM(key).decrypt(blob[:12], blob[12:], header_s.encode())
        except InvalidTag:
            raise ReferencesRefused("reference file does not decrypt") from None
        subjects = []
        for item in json.loads(plain):
            if item["category"] not in CATEGORIES:
                raise ReferencesRefused("reference file has an unknown category")
            jpeg = b64decode_canonical(item["jpeg"], "image")
            more_b64 = item.get("more", [])
            source, date = item.get("source", ""), item.get("capture_date", "")
            if not isinstance(more_b64, list) or len(more_b64) >= MAX_REFERENCES:
                raise ReferencesRefused("reference file has too many images for a subject")
            more = tuple(b64decode_canonical(m, "image") for m in more_b64)
            if (any(len(j) > MAX_IMAGE for j in (jpeg, *more))
                    or not 1 <= len(item["subject_id"]) <= 128
                    or not all(isinstance(t, str) and len(t) <= MAX_TEXT and t.isprintable()
                               for t in (source, date))):  # fmt: skip
                raise ReferencesRefused("reference file has an oversized entry")
            subjects.append(Reference(str(item["subject_id"]), str(item["category"]), jpeg,
                                      more, source, date))  # fmt: skip
        return References(str(header["deployment_id"]), str(header["bundle_id"]),
                          float(header["window_end"]), tuple(subjects))  # fmt: skip
    except ReferencesRefused:
        raise
    except BundleRefused as exc:  # "wrong_key" from the unwrap
        raise ReferencesRefused(f"reference file: {exc}") from None
    except (ValueError, KeyError, TypeError):
        raise ReferencesRefused("reference file is garbled") from None
