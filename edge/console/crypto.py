"""At-rest encryption of face crops and reference images (AES-256-GCM, ``cryptography``).

The console's key is an X25519 private key file (``edge keys init --out DIR --device
console`` makes ``console.key``/``console.pub``): its public half is what ``edge
watchlist build --console-pub`` encrypts reference images to, and an AES key derived from
it (HKDF, :func:`edge.watchlist.keys.derive_key`) wraps the data keys.

Retention as a crypto-shred, as the van's outbox does (:mod:`edge.delivery.outbox_keys`;
issue 21, medium 5): each image is sealed under a *random* data key
(``AESGCM.generate_key``, never derived, so nothing re-derives a destroyed one) - one
per UTC day of arrival for crops (``crop:<day>``), one per deployment for reference
images (``ref:<deployment_id>``) - stored wrapped in the ``data_keys`` table
(:class:`DataKeys`). A deployment's key is deleted with its reference images; a day's
crop key once none of its crops is left (and the day is over). With SQLite's
``secure_delete`` and the WAL truncated after each deletion
(:meth:`edge.console.store.Store.scrub`) neither the rows nor the wrapped key stay in
``console.db``, ``-wal`` or ``-shm``, and a copy of a deleted image's ciphertext (a
backup, a dead PostgreSQL tuple) no longer decrypts with anything the host holds, the
console's key included.

Each blob is ``nonce (12) | ciphertext | tag (16)`` with the row's identity as AAD, so a
blob copied onto another row does not decrypt; a wrapped key's AAD is its name. Rows
written before these keys existed (their key column NULL) stay sealed under the
console's key until they are purged or deleted.
"""

from __future__ import annotations

import secrets
import time
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.console.store_images import ImageStore, crop_key_name, reference_key_name
from edge.watchlist.keys import derive_key, raw_private_bytes

__all__ = ["AtRest", "DataKeys", "SealError", "crop_key_name", "reference_key_name"]
_NONCE: Final = 12
_WRAP_AAD: Final = b"lfr-console/1 data-key\x00"


class SealError(ValueError):
    """A blob does not decrypt under this key for this row."""


class AtRest:
    """Seals and opens the console's stored images; wraps their data keys."""

    def __init__(self, key: X25519PrivateKey) -> None:
        self.private_key = key
        self._aead = AESGCM(derive_key(raw_private_bytes(key), "console-at-rest"))

    def seal(self, data: bytes, aad: str, key: AESGCM | None = None) -> bytes:
        """Seal under a data key (``None``: the console's key, only for wrapping/tests)."""
        nonce = secrets.token_bytes(_NONCE)
        return nonce + (key or self._aead).encrypt(nonce, data, aad.encode("utf-8"))

    def open(self, blob: bytes, aad: str, key: AESGCM | None = None) -> bytes:
        if len(blob) < _NONCE + 16:
            raise SealError("stored image is truncated")
        try:
            return (key or self._aead).decrypt(blob[:_NONCE], blob[_NONCE:],
                                               aad.encode("utf-8"))  # fmt: skip
        except InvalidTag:
            raise SealError("stored image does not decrypt (wrong key or row)") from None

    def wrap(self, data_key: bytes, name: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data_key, _WRAP_AAD + name.encode("utf-8"))

    def unwrap(self, wrapped: bytes, name: str) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:_NONCE], wrapped[_NONCE:],
                                      _WRAP_AAD + name.encode("utf-8"))  # fmt: skip
        except InvalidTag:
            raise SealError(f"the data key {name} does not unwrap (another console key?)") \
                from None


class DataKeys:
    """The random data keys in the store, wrapped by the console's key (see the module).

    Nothing is cached: every instance sharing a database sees a key's destruction at once.
    """

    def __init__(self, images: ImageStore, at_rest: AtRest) -> None:
        self.images = images
        self.at_rest = at_rest

    def get(self, name: str) -> AESGCM | None:
        """The key called ``name``, or None if it does not exist (destroyed)."""
        wrapped = self.images.wrapped_key(name)
        return None if wrapped is None else AESGCM(self.at_rest.unwrap(wrapped, name))

    def get_or_create(self, name: str) -> AESGCM:
        for _ in range(3):
            key = self.get(name)
            if key is not None:
                return key
            raw = AESGCM.generate_key(bit_length=256)
            if self.images.add_wrapped_key(name, self.at_rest.wrap(raw, name), time.time()):
                return AESGCM(raw)
        raise SealError(f"the data key {name} could not be created")  # pragma: no cover
