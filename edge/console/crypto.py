"""At-rest encryption of face crops and reference images (AES-256-GCM, ``cryptography``).

The console's key is an X25519 private key file (``edge keys init --out DIR --device
console`` makes ``console.key``/``console.pub``): its public half is what ``edge
watchlist build --console-pub`` encrypts reference images to, and an AES key derived from
it (HKDF, :func:`edge.watchlist.keys.derive_key`) encrypts what the console stores.
Each blob is ``nonce (12) | ciphertext | tag (16)`` with the row's identity as AAD, so a
blob copied onto another row does not decrypt.
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edge.watchlist.keys import derive_key, raw_private_bytes

_NONCE = 12


class SealError(ValueError):
    """A blob does not decrypt under this key for this row."""


class AtRest:
    """Encrypts and decrypts the console's stored images."""

    def __init__(self, key: X25519PrivateKey) -> None:
        self.private_key = key
        self._aead = AESGCM(derive_key(raw_private_bytes(key), "console-at-rest"))

    def seal(self, data: bytes, aad: str) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad.encode("utf-8"))

    def open(self, blob: bytes, aad: str) -> bytes:
        if len(blob) < _NONCE + 16:
            raise SealError("stored image is truncated")
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad.encode("utf-8"))
        except InvalidTag:
            raise SealError("stored image does not decrypt (wrong key or row)") from None
