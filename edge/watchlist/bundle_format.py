"""The watchlist bundle's format: layout, limits, strict parsing and its typed parts.

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
(AAD binds bundle id and device id again). Each recipient also names the id of the key
it is wrapped to (``key_id``: SHA-256 of the raw X25519 public key), so the device finds
the right private key: a per-deployment key held only in RAM (``edge keys
deployment-key``), destroyed at the end of the deployment, which makes every copy of the
bundle undecryptable (the crypto-shred; docs/design.md, "Keys").

Decrypted plaintext::

    4  M = meta length | M  meta JSON {"subjects": [...], "reference": "best"|"fused"}
    | R*D*4  float32 little-endian: R = the sum of the subjects' ``references`` (at most
    MAX_REFERENCES each), each subject's rows consecutive, in subject order

A bundle from before several references has neither ``references`` (one row each) nor
``reference`` (then :data:`edge.recognition.match.DEFAULT_REFERENCE`, which one row makes
moot). ``reference`` says how the device scores a subject with several rows (its best
row or their fusion); it is signed with the threshold calibrated for it.

Built by :mod:`edge.watchlist.bundle`, opened and verified by
:mod:`edge.watchlist.bundle_open`. About 520 lines, kept as one unit: the layout, the
limits and each part's strict parser are one specification, read together when the
format changes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.compat import UTC
from edge.recognition.match import DEFAULT_REFERENCE, MAX_REFERENCES, Reference
from edge.signing import b64decode_canonical
from edge.types import Metric
from edge.watchlist.keys import DEVICE_ID_RE

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
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> dt.datetime:
    """Parse :func:`format_time` output strictly; raises ValueError."""
    if not _TIME_RE.fullmatch(s):
        raise ValueError(f"not a UTC time YYYY-MM-DDTHH:MM:SSZ: {s!r}")
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


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
        out = b64decode_canonical(v, name)  # one spelling only
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
    """One device's wrapped copy of the content key, and the id of the key it is wrapped to."""

    device_id: str
    ephemeral_public: bytes  # 32 raw bytes
    wrapped_key: bytes  # 12-byte nonce | 32-byte key encrypted | 16-byte tag
    key_id: str  # hex SHA-256 of the recipient's raw X25519 public key

    def to_json(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "ephemeral_public": _b64(self.ephemeral_public),
            "wrapped_key": _b64(self.wrapped_key),
            "key_id": self.key_id,
        }

    @classmethod
    def from_json(cls, v: Any, i: int) -> Recipient:
        n = f"recipients[{i}]"
        o = _Shape.obj(v, n, ("device_id", "ephemeral_public", "wrapped_key", "key_id"))
        eph = _Shape.b64(o["ephemeral_public"], f"{n}.ephemeral_public", 32)
        wrapped = _Shape.b64(o["wrapped_key"], f"{n}.wrapped_key", 60)
        if len(eph) != 32 or len(wrapped) != 60:
            raise ValueError(f"{n} has a key of the wrong length")
        return cls(
            _Shape.text(o["device_id"], f"{n}.device_id", 64, DEVICE_ID_RE), eph, wrapped,
            _Shape.text(o["key_id"], f"{n}.key_id", 64, _SHA_RE),
        )


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
    references: int = 1  # embedding rows in the payload (one per usable image)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.subject_id,
            "category": self.category,
            "reference": self.reference,
            "source": self.source,
            "capture_date": self.capture_date,
            "legal_basis": self.legal_basis,
            "images_used": self.images_used,
            "references": self.references,
        }

    @classmethod
    def from_json(cls, v: Any, i: int) -> Subject:
        n = f"subjects[{i}]"
        o = _Shape.obj(
            v,
            n,
            ("id", "category", "reference", "source", "capture_date", "legal_basis",
             "images_used", "thumbnail"),
            ("references",),
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
            references=_Shape.integer(
                o.get("references", 1), f"{n}.references", 1, MAX_REFERENCES
            ),
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
    embeddings: F32  # (R, D), the only decrypted copy; zeroed by wipe()
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    reference: Reference = DEFAULT_REFERENCE  # how a subject's rows are scored

    @property
    def reference_counts(self) -> list[int]:
        """Rows of ``embeddings`` per subject, in subject order."""
        return [s.references for s in self.subjects]

    def wipe(self) -> None:
        """Zero the embedding matrix in place and drop the thumbnails."""
        self.embeddings.fill(0.0)
        self.thumbnails.clear()


# --- key wrapping (shared by building and opening) ---------------------------------


def _kek(shared: bytes, eph_pub: bytes, dev_pub: bytes, bundle_id: str, device_id: str) -> bytes:
    info = WRAP_INFO + bundle_id.encode("ascii") + b"\x00" + device_id.encode("ascii")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + dev_pub, info=info).derive(
        shared
    )


def _wrap_aad(bundle_id: str, device_id: str) -> bytes:
    return b"lfr-edge wrap\x00" + bundle_id.encode("ascii") + b"\x00" + device_id.encode("ascii")


def _raw_pub(key: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


