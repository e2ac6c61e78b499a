"""The wire's primitives, under the alert format and its signature.

What :mod:`edge.delivery.alert` (the alert JSON) and :mod:`edge.delivery.alert_sign`
(the device's signature over it) both stand on: the format error, RFC 3339 UTC times,
the compact key-sorted JSON the device publishes, and the first-publish stamp. Split out
so that the signature does not import the format it signs while the format's parser
calls the signature check (an import circle before; ``tests/test_layout.py`` forbids
one). :mod:`edge.delivery.alert` re-exports every name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from edge.compat import UTC, fromisoformat

_RFC3339_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z$")


class AlertFormatError(ValueError):
    """A payload is not a valid alert / adjudication (the message says which field)."""


def rfc3339(ts: float) -> str:
    """Unix seconds -> RFC 3339 UTC with milliseconds, e.g. ``2026-11-22T11:28:13.123Z``."""
    dt = datetime.fromtimestamp(ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_rfc3339(text: str) -> float:
    """The inverse of :func:`rfc3339` (any fraction length, ``Z`` only) -> Unix seconds."""
    if not isinstance(text, str) or not _RFC3339_RE.fullmatch(text):
        raise AlertFormatError(f"not an RFC 3339 UTC time ending in Z: {text!r}")
    try:
        return fromisoformat(text).timestamp()
    except ValueError:  # month 13, day 32, hour 25...
        raise AlertFormatError(f"not a valid time: {text!r}") from None


def dumps(obj: Mapping[str, Any]) -> bytes:
    """Compact, key-sorted JSON: the bytes the device publishes (deterministic)."""
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


def stamp_published_at(payload: bytes, at: float) -> bytes:
    """Fill ``"published_at": null`` in a JSON object payload; anything else is returned as is.

    Deterministic: the same payload and ``at`` give the same bytes, so a
    redelivered alert is identical to the first delivery.
    """
    if b'"published_at":null' not in payload:
        return payload
    try:
        obj = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict) or obj.get("published_at", 0) is not None:
        return payload
    obj["published_at"] = rfc3339(at)
    return dumps(obj)
