"""Signed, encrypted, expiring watchlist bundles (safeguards 1, 2, 3, 9, 12, 13).

Binary layout (integers big-endian)::

    offset  size  field
    0       8     magic  b"\\x89LFRWL\\r\\n"
    8       2     format version (1)
    10      32    signer key id: SHA-256 of the control room's raw Ed25519 public key
    42      4     H = header length (1 .. 1 MiB)
    46      H     header: canonical UTF-8 JSON (authenticated, not secret)
    46+H    4     P = payload length (28 .. 256 MiB)
    50+H    P     payload: 12-byte nonce | AES-256-GCM ciphertext | 16-byte tag
    50+H+P  64    Ed25519 signature over b"lfr-edge bundle v1\\0" + bytes [0, 50+H+P)
                  the file ends here; trailing bytes are refused

The payload is encrypted under a random 256-bit content key with AAD = bytes [0, 46+H)
(magic, version, signer id and the header). The content key is wrapped for each
recipient device in the header: an ephemeral X25519 key agreement with the device's
public key, HKDF-SHA256 (salt = ephemeral public | device public, info binding the
bundle id and the device id) to a key-encryption key, AES-256-GCM over the content key
(AAD binds bundle id and device id again). The only copy of the wrapped content key is
the bundle file, so deleting the file and dropping the decrypted watchlist from RAM is
a crypto-shred.

Decrypted plaintext::

    4  M = meta length | M  meta JSON {"subjects": [...]} | N*D*4  float32 little-endian

:func:`open_bundle` checks, in this order, and raises :class:`BundleRefused` with one
line for the first failure: framing (``truncated``, ``garbled``, ``unsupported_version``),
``unknown_signer``, ``bad_signature``, header (``garbled``), ``not_for_device``,
``embedder_mismatch``, ``window_not_started``, ``window_ended``, ``old_sequence``,
``threshold_below_floor``, ``signage_not_confirmed``, ``unknown_category``,
``too_many_subjects``, ``wrong_key``, payload (``garbled``). No other exception escapes
it for any input.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import math
import re
import secrets
import struct
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.errors import BundleRefused, UsageError
from edge.types import Metric
from edge.watchlist.keys import DEVICE_ID_RE, key_id

CATEGORIES: tuple[str, ...] = (
    "wanted_court",
    "wanted_police",
    "suspect",
    "missing_person",
    "vulnerable_person",
    "risk_to_others",
)
"""The only permitted watchlist categories (safeguard 2)."""

MAGIC = b"\x89LFRWL\r\n"
FORMAT_VERSION = 1
SIG_CONTEXT = b"lfr-edge bundle v1\x00"
WRAP_INFO = b"lfr-edge bundle key-wrap v1\x00"
BUNDLE_SUFFIX = ".lfrb"

MAX_HEADER = 1 << 20
MAX_PAYLOAD = 256 << 20
MAX_BUNDLE = 8 + 2 + 32 + 4 + MAX_HEADER + 4 + MAX_PAYLOAD + 64
MAX_SUBJECTS_HARD = 100_000
MAX_DIM = 4096
MAX_THUMB = 64 * 1024
MAX_TEXT = 500
_NONCE = 12
_TAG = 16
_FIXED = 8 + 2 + 32 + 4

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

F32 = npt.NDArray[np.float32]


# --- small helpers ---------------------------------------------------------------------


def canonical_json(obj: object) -> bytes:
    """Deterministic JSON bytes (sorted keys, no spaces, ASCII, no NaN)."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def format_time(t: dt.datetime) -> str:
    """A UTC time as ``YYYY-MM-DDTHH:MM:SSZ`` (whole seconds)."""
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return t.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> dt.datetime:
    """Parse :func:`format_time` output strictly; raises ValueError."""
    if not _TIME_RE.fullmatch(s):
        raise ValueError(f"not a UTC time YYYY-MM-DDTHH:MM:SSZ: {s!r}")
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _strict_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _bad_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def strict_json(data: bytes) -> Any:
    """Parse JSON strictly: UTF-8, no duplicate keys, no NaN/Infinity. Raises ValueError."""
    text = data.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text, object_pairs_hook=_strict_pairs, parse_constant=_bad_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _printable(s: str) -> bool:
    return all(ch.isprintable() for ch in s)


class _Shape:
    """Strict checks for decoded JSON; every failure raises ValueError naming the field."""

    @staticmethod
    def obj(v: Any, name: str, keys: Sequence[str], optional: Sequence[str] = ()) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise ValueError(f"{name} is not an object")
        missing = [k for k in keys if k not in v]
        if missing:
            raise ValueError(f"{name} lacks {', '.join(missing)}")
        extra = sorted(set(v) - set(keys) - set(optional))
        if extra:
            raise ValueError(f"{name} has unknown field(s) {', '.join(extra)}")
        return v

    @staticmethod
    def text(
        v: Any, name: str, max_len: int = MAX_TEXT, pattern: re.Pattern[str] | None = None
    ) -> str:
        if not isinstance(v, str):
            raise ValueError(f"{name} is not a string")
        if not v or len(v) > max_len or not _printable(v):
            raise ValueError(f"{name} is empty, too long or has control characters")
        if pattern is not None and not pattern.fullmatch(v):
            raise ValueError(f"{name} is malformed")
        return v

    @staticmethod
    def integer(v: Any, name: str, lo: int, hi: int) -> int:
        if type(v) is not int or not lo <= v <= hi:
            raise ValueError(f"{name} is not an integer in [{lo}, {hi}]")
        return v

    @staticmethod
    def number(v: Any, name: str, lo: float, hi: float) -> float:
        if type(v) is int and lo <= v <= hi:
            return float(v)
        if type(v) is not float or not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"{name} is not a number in [{lo}, {hi}]")
        return v

    @staticmethod
    def boolean(v: Any, name: str) -> bool:
        if type(v) is not bool:
            raise ValueError(f"{name} is not true/false")
        return v

    @staticmethod
    def time(v: Any, name: str) -> dt.datetime:
        if not isinstance(v, str):
            raise ValueError(f"{name} is not a time string")
        try:
            return parse_time(v)
        except ValueError:
            raise ValueError(f"{name} is not a UTC time YYYY-MM-DDTHH:MM:SSZ") from None

    @staticmethod
    def b64(v: Any, name: str, max_len: int) -> bytes:
        if not isinstance(v, str) or len(v) > 4 * (max_len // 3 + 2):
            raise ValueError(f"{name} is not base64 of at most {max_len} bytes")
        try:
            out = base64.b64decode(v.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError(f"{name} is not base64") from None
        if len(out) > max_len:
            raise ValueError(f"{name} is too long")
        return out


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the parts ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmbedderInfo:
    """Which embedder made the watchlist's embeddings; the device must run the same one."""

    name: str
    sha256: str
    family: str
    metric: Metric
    dim: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "family": self.family,
            "metric": self.metric,
            "dim": self.dim,
        }

    @classmethod
    def from_json(cls, v: Any) -> EmbedderInfo:
        o = _Shape.obj(v, "embedder", ("name", "sha256", "family", "metric", "dim"))
        metric = _Shape.text(o["metric"], "embedder.metric")
        if metric not in ("euclidean", "cosine"):
            raise ValueError("embedder.metric is neither euclidean nor cosine")
        return cls(
            name=_Shape.text(o["name"], "embedder.name", 200),
            sha256=_Shape.text(o["sha256"], "embedder.sha256", 64, _SHA_RE),
            family=_Shape.text(o["family"], "embedder.family", 100),
            metric=cast(Metric, metric),
            dim=_Shape.integer(o["dim"], "embedder.dim", 1, MAX_DIM),
        )


@dataclass(frozen=True, slots=True)
class Recipient:
    """One device's wrapped copy of the content key."""

    device_id: str
    ephemeral_public: bytes  # 32 raw bytes
    wrapped_key: bytes  # 12-byte nonce | 32-byte key encrypted | 16-byte tag

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "ephemeral_public": _b64(self.ephemeral_public),
            "wrapped_key": _b64(self.wrapped_key),
        }

    @classmethod
    def from_json(cls, v: Any, i: int) -> Recipient:
        n = f"recipients[{i}]"
        o = _Shape.obj(v, n, ("device_id", "ephemeral_public", "wrapped_key"))
        eph = _Shape.b64(o["ephemeral_public"], f"{n}.ephemeral_public", 32)
        wrapped = _Shape.b64(o["wrapped_key"], f"{n}.wrapped_key", 60)
        if len(eph) != 32 or len(wrapped) != 60:
            raise ValueError(f"{n} has a key of the wrong length")
        return cls(_Shape.text(o["device_id"], f"{n}.device_id", 64, DEVICE_ID_RE), eph, wrapped)


_HEADER_KEYS = (
    "format",
    "bundle_id",
    "created_at",
    "deployment_id",
    "location",
    "window",
    "authorising_officer",
    "approved_at",
    "threshold",
    "signage_confirmed",
    "sequence",
    "max_watchlist_size",
    "subject_count",
    "categories",
    "embedder",
    "recipients",
)


@dataclass(frozen=True, slots=True)
class BundleHeader:
    """The authenticated, not secret, part of a bundle."""

    bundle_id: str
    created_at: dt.datetime
    deployment_id: str
    location: str
    start: dt.datetime
    end: dt.datetime
    authorising_officer: str
    approved_at: dt.datetime
    threshold: float  # a similarity (higher = more alike)
    signage_confirmed: bool
    sequence: int
    max_watchlist_size: int
    subject_count: int
    categories: Mapping[str, int]
    embedder: EmbedderInfo
    recipients: tuple[Recipient, ...]
    format: int = FORMAT_VERSION

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(r.device_id for r in self.recipients)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "bundle_id": self.bundle_id,
            "created_at": format_time(self.created_at),
            "deployment_id": self.deployment_id,
            "location": self.location,
            "window": {"start": format_time(self.start), "end": format_time(self.end)},
            "authorising_officer": self.authorising_officer,
            "approved_at": format_time(self.approved_at),
            "threshold": self.threshold,
            "signage_confirmed": self.signage_confirmed,
            "sequence": self.sequence,
            "max_watchlist_size": self.max_watchlist_size,
            "subject_count": self.subject_count,
            "categories": dict(self.categories),
            "embedder": self.embedder.to_json(),
            "recipients": [r.to_json() for r in self.recipients],
        }

    def public_summary(self) -> dict[str, Any]:
        """The header without the wrapped keys (for logs, MQTT ``deployment``, inspect)."""
        d = self.to_json()
        d.pop("recipients")
        d["devices"] = list(self.device_ids)
        return d

    @classmethod
    def from_json(cls, v: Any) -> BundleHeader:
        o = _Shape.obj(v, "header", _HEADER_KEYS)
        fmt = _Shape.integer(o["format"], "format", 0, 2**31)
        win = _Shape.obj(o["window"], "window", ("start", "end"))
        start = _Shape.time(win["start"], "window.start")
        end = _Shape.time(win["end"], "window.end")
        if end <= start:
            raise ValueError("window ends before it starts")
        cats_raw = o["categories"]
        if not isinstance(cats_raw, dict):
            raise ValueError("categories is not an object")
        cats: dict[str, int] = {}
        for k, n in cats_raw.items():
            if not isinstance(k, str) or len(k) > 64 or not _printable(k):
                raise ValueError("categories has a malformed name")
            cats[k] = _Shape.integer(n, f"categories.{k}", 1, MAX_SUBJECTS_HARD)
        count = _Shape.integer(o["subject_count"], "subject_count", 0, MAX_SUBJECTS_HARD)
        if sum(cats.values()) != count:
            raise ValueError("categories do not add up to subject_count")
        recs_raw = o["recipients"]
        if not isinstance(recs_raw, list) or not 1 <= len(recs_raw) <= 10_000:
            raise ValueError("recipients is not a non-empty list")
        recs = tuple(Recipient.from_json(r, i) for i, r in enumerate(recs_raw))
        if len({r.device_id for r in recs}) != len(recs):
            raise ValueError("recipients names a device twice")
        bundle_id = _Shape.text(o["bundle_id"], "bundle_id", 64, ID_RE)
        return cls(
            format=fmt,
            bundle_id=bundle_id,
            created_at=_Shape.time(o["created_at"], "created_at"),
            deployment_id=_Shape.text(o["deployment_id"], "deployment_id", 64, ID_RE),
            location=_Shape.text(o["location"], "location"),
            start=start,
            end=end,
            authorising_officer=_Shape.text(o["authorising_officer"], "authorising_officer"),
            approved_at=_Shape.time(o["approved_at"], "approved_at"),
            threshold=_Shape.number(o["threshold"], "threshold", -1.0, 1.0),
            signage_confirmed=_Shape.boolean(o["signage_confirmed"], "signage_confirmed"),
            sequence=_Shape.integer(o["sequence"], "sequence", 0, 2**53),
            max_watchlist_size=_Shape.integer(
                o["max_watchlist_size"], "max_watchlist_size", 1, MAX_SUBJECTS_HARD
            ),
            subject_count=count,
            categories=cats,
            embedder=EmbedderInfo.from_json(o["embedder"]),
            recipients=recs,
        )


@dataclass(frozen=True, slots=True)
class Subject:
    """One watchlist subject's record (never an embedding)."""

    subject_id: str
    category: str
    reference: str
    source: str
    capture_date: str  # YYYY-MM-DD
    legal_basis: str
    images_used: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.subject_id,
            "category": self.category,
            "reference": self.reference,
            "source": self.source,
            "capture_date": self.capture_date,
            "legal_basis": self.legal_basis,
            "images_used": self.images_used,
        }

    @classmethod
    def from_json(cls, v: Any, i: int) -> Subject:
        n = f"subjects[{i}]"
        o = _Shape.obj(
            v,
            n,
            ("id", "category", "reference", "source", "capture_date", "legal_basis",
             "images_used", "thumbnail"),
        )
        cap = _Shape.text(o["capture_date"], f"{n}.capture_date", 10, _DATE_RE)
        return cls(
            subject_id=_Shape.text(o["id"], f"{n}.id", 64, ID_RE),
            category=_Shape.text(o["category"], f"{n}.category", 64),
            reference=_Shape.text(o["reference"], f"{n}.reference"),
            source=_Shape.text(o["source"], f"{n}.source"),
            capture_date=cap,
            legal_basis=_Shape.text(o["legal_basis"], f"{n}.legal_basis"),
            images_used=_Shape.integer(o["images_used"], f"{n}.images_used", 1, 10_000),
        )


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """What ``deployment.toml`` says (see :func:`edge.watchlist.enrol.load_deployment`)."""

    deployment_id: str
    location: str
    start: dt.datetime
    end: dt.datetime
    authorising_officer: str
    approved_at: dt.datetime
    threshold: float
    signage_confirmed: bool
    max_watchlist_size: int
    sequence: int


@dataclass(slots=True)
class OpenedBundle:
    """A verified, decrypted bundle. Call :meth:`wipe` when done with it."""

    header: BundleHeader
    subjects: tuple[Subject, ...]
    embeddings: F32  # (N, D), the only decrypted copy; zeroed by wipe()
    thumbnails: dict[str, bytes] = field(default_factory=dict)

    def wipe(self) -> None:
        """Zero the embedding matrix in place and drop the thumbnails."""
        self.embeddings.fill(0.0)
        self.thumbnails.clear()


# --- building ----------------------------------------------------------------------------


def _kek(shared: bytes, eph_pub: bytes, dev_pub: bytes, bundle_id: str, device_id: str) -> bytes:
    info = WRAP_INFO + bundle_id.encode("ascii") + b"\x00" + device_id.encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + dev_pub, info=info).derive(
        shared
    )


def _wrap_aad(bundle_id: str, device_id: str) -> bytes:
    return b"lfr-edge wrap\x00" + bundle_id.encode("ascii") + b"\x00" + device_id.encode("ascii")


def _raw_pub(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def wrap_content_key(
    content_key: bytes, bundle_id: str, device_id: str, device_public: X25519PublicKey
) -> Recipient:
    eph = X25519PrivateKey.generate()
    eph_pub = _raw_pub(eph.public_key())
    dev_pub = _raw_pub(device_public)
    kek = _kek(eph.exchange(device_public), eph_pub, dev_pub, bundle_id, device_id)
    nonce = secrets.token_bytes(_NONCE)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, content_key, _wrap_aad(bundle_id, device_id))
    return Recipient(device_id, eph_pub, wrapped)


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
) -> bytes:
    """Encrypt, wrap and sign a watchlist. Raises :class:`UsageError` on bad input.

    This does not refuse a spec the device would refuse (e.g. signage not confirmed);
    :func:`edge.watchlist.enrol.load_deployment` does that at build time.
    """
    thumbnails = thumbnails or {}
    emb = np.ascontiguousarray(embeddings, dtype="<f4")
    if emb.ndim != 2 or emb.shape[0] != len(subjects) or emb.shape[1] != embedder.dim:
        raise UsageError(
            f"embeddings shape {emb.shape} does not match {len(subjects)} subjects x {embedder.dim}"
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
    created_at = created_at or dt.datetime.now(dt.UTC)
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
    meta = canonical_json({"subjects": subj_json})
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
            f"bundle was made with embedder {h.embedder.name} (sha256 {h.embedder.sha256[:12]}), "
            f"this device runs sha256 {expected_embedder_sha256[:12]}",
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
        subjects = None
        if device is not None:
            device_id, key = device
            recipient = next((r for r in h.recipients if r.device_id == device_id), None)
            if recipient is None:
                raise _refuse("not_for_device", f"bundle is not for device {device_id}")
            opened = _decrypt(frame, h, recipient, device_id, key)
            subjects = opened.subjects
            opened.wipe()
    except BundleRefused:
        raise
    except (ValueError, TypeError, OverflowError, struct.error, MemoryError) as exc:
        raise _refuse("garbled", f"bundle is garbled: {type(exc).__name__}") from None
    return Inspection(frame.signer_id.hex(), sig, h, subjects)


def _unwrap(
    r: Recipient, bundle_id: str, device_id: str, key: X25519PrivateKey
) -> bytes:
    dev_pub = _raw_pub(key.public_key())
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
    if 4 + mlen + count * dim * 4 != len(plain):
        raise garbled("lengths do not match the header")
    try:
        meta = _Shape.obj(strict_json(bytes(plain[4 : 4 + mlen])), "payload", ("subjects",))
        raw = meta["subjects"]
        if not isinstance(raw, list) or len(raw) != count:
            raise ValueError("subjects do not match subject_count")
        subjects = tuple(Subject.from_json(s, i) for i, s in enumerate(raw))
        thumbs = {
            s.subject_id: _Shape.b64(r["thumbnail"], f"subjects[{i}].thumbnail", MAX_THUMB)
            for i, (s, r) in enumerate(zip(subjects, raw, strict=True))
        }
    except ValueError as exc:
        raise garbled(str(exc)) from None
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
    emb = np.empty((count, dim), dtype=np.float32)
    view = np.frombuffer(plain, dtype="<f4", count=count * dim, offset=4 + mlen)
    emb.reshape(-1)[:] = view
    del view
    if not np.isfinite(emb).all():
        emb.fill(0.0)
        raise garbled("has non-finite embeddings")
    return OpenedBundle(header=h, subjects=subjects, embeddings=emb, thumbnails=thumbs)


def bundle_digest(data: bytes) -> str:
    """SHA-256 of the bundle file (for the audit log; identifies it without content)."""
    return hashlib.sha256(data).hexdigest()
