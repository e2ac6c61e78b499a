"""One subject's reference images as the console keeps them: one sealed blob per subject.

The plaintext (sealed by :class:`edge.console.crypto.AtRest`, never stored as it is) is::

    b"LFR-REFS/1\\n" + canonical JSON {"source", "capture_date", "lengths": [n, ...]}
    + b"\\n" + the JPEGs, one after the other (the best first)

so the store keeps its one row per (deployment, subject) and its functions unchanged. A
blob sealed before this format existed holds one bare JPEG; :func:`unpack` reads both.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Final

from edge.delivery.alert import AlertFormatError, jpeg_size
from edge.watchlist.references import MAX_IMAGE, Reference

MAGIC: Final = b"LFR-REFS/1\n"
MAX_IMAGES: Final = 16
MAX_HEADER: Final = 4096


class ReferenceBlobError(ValueError):
    """A decrypted blob is neither a bare JPEG nor a well-formed reference set."""


@dataclass(frozen=True)
class ReferenceSet:
    images: tuple[bytes, ...]
    source: str = ""
    capture_date: str = ""

    def sizes(self) -> list[tuple[int, int] | None]:
        """Each image's (width, height) in pixels from its JPEG header (None if unreadable)."""
        out: list[tuple[int, int] | None] = []
        for jpeg in self.images:
            try:
                out.append(jpeg_size(jpeg))
            except AlertFormatError:
                out.append(None)
        return out


def pack(ref: Reference) -> bytes:
    images = [j for j in ref.images if j]
    header = {"source": ref.source, "capture_date": ref.capture_date,
              "lengths": [len(j) for j in images]}  # fmt: skip
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return MAGIC + text.encode() + b"\n" + b"".join(images)


def unpack(plain: bytes) -> ReferenceSet:
    if plain[:2] == b"\xff\xd8":  # sealed before reference sets: one JPEG
        return ReferenceSet((plain,))
    if not plain.startswith(MAGIC):
        raise ReferenceBlobError("not a reference set")
    end = plain.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER)
    if end < 0:
        raise ReferenceBlobError("reference set header too long")
    try:
        header = json.loads(plain[len(MAGIC):end])
        lengths = [int(n) for n in header["lengths"]]
        source, date = str(header.get("source", "")), str(header.get("capture_date", ""))
    except (ValueError, KeyError, TypeError):
        raise ReferenceBlobError("reference set header is garbled") from None
    body = plain[end + 1:]
    if (len(lengths) > MAX_IMAGES or any(not 0 < n <= MAX_IMAGE for n in lengths)
            or sum(lengths) != len(body)):  # fmt: skip
        raise ReferenceBlobError("reference set lengths do not add up")
    images, at = [], 0
    for n in lengths:
        images.append(body[at:at + n])
        at += n
    return ReferenceSet(tuple(images), source, date)
