"""The device's Ed25519 signatures, with a domain-separation context per kind of message.

The device signs two kinds of thing with one key (``device-signing.key``, generated on the
device): its alerts (:mod:`edge.delivery.alert_sign`) and its audit entries
(:mod:`edge.watchlist.audit`). Each signature is over ``context + message`` with a
context that names the kind and version (``b"lfr-edge alert v1\\0"``,
``b"lfr-edge audit v1\\0"``), and the control room's adjudications and commands use
contexts of their own: a signature made for one kind never verifies as another. It is
in the core because delivery and watchlist may not import each other.

Key files are PEM, as :mod:`edge.watchlist.keys` writes them: the private key unencrypted
PKCS#8, the public key SubjectPublicKeyInfo. The control room holds each device's public
half as ``<device_id>.signing.pub``; :func:`load_device_keys` reads a directory of them
(or one such file) into a mapping device id -> key.

What is signed has one spelling (issue 21, medium 1). Base64 has several for the same bytes
(the unused low bits of the last character; whitespace and padding a lenient decoder skips):
every Ed25519 signature has 15 other spellings that decode to it and verify. A broker that
re-spells a signature would make a resent message look different from the first copy.
:func:`b64decode_canonical` therefore takes only the one spelling ``base64.b64encode``
gives (decode, re-encode, compare), and :func:`verify` only such a signature; a public key
file must be exactly the PEM this project writes (:func:`public_from_pem`), and a key id in
hex is lower case (:func:`canonical_hex`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

SIGNATURE_B64_RE: Final = re.compile(r"^[A-Za-z0-9+/]{86}==$")
"""An Ed25519 signature (64 bytes) in standard base64."""
PUBLIC_SUFFIX: Final = ".signing.pub"
MAX_KEY_FILE: Final = 16 * 1024
MAX_KEYS: Final = 10_000
_ID_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyFileError(ValueError):
    """A key file or directory cannot be used (the message is one line)."""


def b64decode_canonical(value: object, what: str = "value") -> bytes:
    """The bytes of ``value`` if it is base64 in its one canonical spelling (standard
    alphabet, padded, no whitespace, unused bits zero: what ``base64.b64encode`` gives);
    :class:`ValueError` (one line) otherwise."""
    if not isinstance(value, str) or not value.isascii():
        raise ValueError(f"{what} is not base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != value:
        raise ValueError(f"{what} is not in its one canonical base64 spelling")
    return raw


def is_canonical_b64(value: object) -> bool:
    try:
        b64decode_canonical(value)
    except ValueError:
        return False
    return True


def canonical_hex(value: object, nbytes: int, what: str = "value") -> bytes:
    """The bytes of ``value`` if it is exactly ``2 * nbytes`` lower-case hex digits;
    :class:`ValueError` otherwise (``bytes.fromhex`` alone also takes upper case and
    spaces: other spellings of the same id)."""
    if not isinstance(value, str) or len(value) != 2 * nbytes:
        raise ValueError(f"{what} is not {2 * nbytes} hex digits")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ValueError(f"{what} is not hex") from None
    if raw.hex() != value:
        raise ValueError(f"{what} is not lower-case hex")
    return raw


def sign(key: Ed25519PrivateKey, context: bytes, message: bytes) -> str:
    """Base64 Ed25519 signature over ``context + message``."""
    return base64.b64encode(key.sign(context + message)).decode("ascii")


def verify(public: Ed25519PublicKey, context: bytes, message: bytes, signature: object) -> bool:
    """True only for a signature in its one canonical base64 spelling that verifies;
    never raises."""
    if not isinstance(signature, str) or not SIGNATURE_B64_RE.fullmatch(signature):
        return False
    try:
        public.verify(b64decode_canonical(signature), context + message)
    except (InvalidSignature, ValueError):
        return False
    return True


def private_from_pem(data: bytes, what: str = "device signing key") -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise KeyFileError(f"{what} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{what} is not an Ed25519 key")
    return key


def is_canonical_public_pem(data: bytes, key: PublicKeyTypes) -> bool:
    """Whether ``data`` is exactly the PEM (SubjectPublicKeyInfo) of ``key`` as this
    project writes it: no other line breaks, spaces, headers or text around it."""
    pem = key.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)  # fmt: skip
    return bytes(data) == pem


def public_from_pem(data: bytes, what: str = "device signing public key") -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{what} is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{what} is not an Ed25519 public key")
    if not is_canonical_public_pem(data, key):
        raise KeyFileError(f"{what} is not in its canonical PEM form (as `edge keys init` "
                           "writes it)")  # fmt: skip
    return key


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )  # fmt: skip


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _read(path: Path) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"{path} is too large for a key file")
    return data


def load_public(path: Path) -> Ed25519PublicKey:
    return public_from_pem(_read(path), str(path))


def load_device_keys(path: Path, allow_empty: bool = False) -> dict[str, Ed25519PublicKey]:
    """Device id -> signing public key, from a directory of ``<id>.signing.pub`` files or
    from one such file. :class:`KeyFileError` (one line) if there is none or one is bad."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.name.endswith(PUBLIC_SUFFIX))
        if not files and not allow_empty:
            raise KeyFileError(f"{path} holds no <device_id>{PUBLIC_SUFFIX} file")
        if len(files) > MAX_KEYS:
            raise KeyFileError(f"{path} holds more than {MAX_KEYS} device keys")
    elif path.is_file():
        files = [path]
    else:
        raise KeyFileError(f"{path}: no such file or directory")
    keys: dict[str, Ed25519PublicKey] = {}
    for f in files:
        device = f.name[: -len(PUBLIC_SUFFIX)] if f.name.endswith(PUBLIC_SUFFIX) else ""
        if not _ID_RE.fullmatch(device):
            raise KeyFileError(f"{f}: name it <device_id>{PUBLIC_SUFFIX}")
        keys[device] = load_public(f)
    return keys


class DeviceKeyring(Mapping[str, Ed25519PublicKey]):
    """The devices' signing keys from ``path`` (:func:`load_device_keys`), read again when
    a device is not found and the directory (or file) changed since: a van added to the
    fleet is verified without a restart. A directory may start empty. Thread-safe enough
    for one reader thread (the console's ingest worker)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp = self._mtime()
        self._keys = load_device_keys(path, allow_empty=True)

    def _mtime(self) -> int | None:
        try:
            return self.path.stat().st_mtime_ns
        except OSError:
            return None

    def __getitem__(self, device_id: str) -> Ed25519PublicKey:
        key = self._keys.get(device_id)
        if key is None:
            stamp = self._mtime()
            if stamp != self._stamp:
                self._stamp = stamp
                try:
                    self._keys = load_device_keys(self.path, allow_empty=True)
                except KeyFileError as exc:  # keep the keys we had; say why once
                    logging.getLogger(__name__).error("device keys not reloaded: %s", exc)
                key = self._keys.get(device_id)
        if key is None:
            raise KeyError(device_id)
        return key

    def __iter__(self) -> Iterator[str]:
        return iter(dict(self._keys))

    def __len__(self) -> int:
        return len(self._keys)


def generate(directory: Path, device_id: str) -> tuple[Path, Path]:
    """A new key pair as ``<id>.signing.key`` (0600) and ``<id>.signing.pub`` in
    ``directory``, unless both exist already; returns (private, public) paths. For the
    demo and the tests: a real device generates its key itself (the Ansible role)."""
    import os

    if not _ID_RE.fullmatch(device_id):
        raise KeyFileError(f"device id {device_id!r} is malformed")
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{device_id}.signing.key", directory / f"{device_id}{PUBLIC_SUFFIX}"
    if priv.is_file() and pub.is_file():
        return priv, pub
    key = Ed25519PrivateKey.generate()
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem(key))
    pub.write_bytes(public_pem(key.public_key()))
    return priv, pub
