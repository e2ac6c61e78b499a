"""Key files: the control room's Ed25519 signing key and each device's X25519 key.

File format: PEM. Private keys are unencrypted PKCS#8 (``-----BEGIN PRIVATE KEY-----``),
public keys SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----``), so ``openssl pkey``
can read both. The files are:

- control room: ``signing.key`` (Ed25519, mode 0600) and ``signing.pub``;
- device: ``<device_id>.key`` (X25519, mode 0600) and ``<device_id>.pub``. The device id
  of a recipient public key is its file name without ``.pub``. Generated **on the device**
  (the Ansible role runs ``edge keys init --device ID --signing`` there); only the public
  halves leave it. With ``signing``, also ``<device_id>.signing.key`` (Ed25519, mode 0600:
  the device's signature on its alerts and audit entries) and ``<device_id>.signing.pub``;
- deployment: ``<key id>.key`` (X25519, mode 0600) and ``<key id>.pub`` in a directory on
  a RAM file system (``/run/edge/deployment-keys``): one key pair per deployment, made on
  the device by ``edge keys deployment-key``, the bundle's content key wrapped to its
  public half, the private half destroyed at the end of the deployment
  (:func:`destroy_deployment_key`). A reboot or power loss loses it too, and with it every
  copy of that deployment's bundle (the crypto-shred; docs/design.md, "Keys").

Private key files are written to a temporary file created with ``O_CREAT | O_EXCL`` and
mode 0600 (no umask window in which another user could open it), fsynced, then linked
into place: without ``force`` an existing file is never replaced. Nothing here prints
or logs key material.

A signer is named in a bundle by its *key id*: the SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge import signing
from edge.errors import UsageError
from edge.watchlist.statefile import shred_file

SIGNING_KEY_NAME = "signing.key"
SIGNING_PUB_NAME = "signing.pub"

DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Device ids: letters, digits, ``.``, ``_``, ``-``; at most 64 characters (MQTT-topic safe)."""

_MAX_KEY_FILE = 16 * 1024


def check_device_id(device_id: str) -> str:
    """Return ``device_id`` if it is a valid device id, else raise :class:`UsageError`."""
    if not DEVICE_ID_RE.fullmatch(device_id):
        raise UsageError(
            f"invalid device id {device_id!r}: use 1-64 letters, digits, '.', '_' or '-'"
        )
    return device_id


def key_id(public_key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    """The 32-byte id of a public key: SHA-256 of its raw encoding."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()


def derive_key(private_key_bytes: bytes, purpose: str, length: int = 32) -> bytes:
    """Derive a symmetric key for ``purpose`` from private key material (HKDF-SHA256).

    ``private_key_bytes`` is the raw private key (or any secret); ``purpose`` names the
    use (e.g. ``"outbox-at-rest"``) so that keys for different uses are independent.
    """
    if len(private_key_bytes) < 16:
        raise ValueError("key material too short")
    if not purpose:
        raise ValueError("purpose must not be empty")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=length,
        salt=b"lfr-edge derive-key v1",
        info=purpose.encode("utf-8"),
    )
    return hkdf.derive(private_key_bytes)


def raw_private_bytes(key: X25519PrivateKey | Ed25519PrivateKey) -> bytes:
    """The raw 32-byte private key (for :func:`derive_key`); never log it."""
    return key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )


# --- writing -------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to ``path`` atomically with ``mode``; refuse to replace unless ``force``.

    The file is created with ``mode`` from the start (``O_EXCL``), so a private key is
    never readable by others, not even briefly.
    """
    if path.exists() and not force:
        raise UsageError(f"{path} exists; use --force to overwrite it")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the creation mode was masked by umask; set it exactly
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if force:
            tmp.replace(path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile: never overwrite
            except FileExistsError:
                raise UsageError(f"{path} exists; use --force to overwrite it") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class KeyPairFiles:
    private: Path
    public: Path
    key_id: str  # hex


def _prepare_out(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not out_dir.is_dir():
        raise UsageError(f"{out_dir} is not a directory")


def _new_pair(
    out_dir: Path, priv_name: str, pub_name: str,
    key: Ed25519PrivateKey | X25519PrivateKey, force: bool,
) -> KeyPairFiles:
    """Write ``key`` and its public half as ``priv_name``/``pub_name`` in ``out_dir``;
    without ``force`` an existing file of either name is a usage error."""
    _prepare_out(out_dir)
    priv_path, pub_path = out_dir / priv_name, out_dir / pub_name
    if not force:
        for p in (priv_path, pub_path):
            if p.exists():
                raise UsageError(f"{p} exists; use --force to overwrite it")
    _write_private_and_public(key, priv_path, pub_path, force)
    return KeyPairFiles(priv_path, pub_path, key_id(key.public_key()).hex())


def init_signing_key(out_dir: Path, force: bool = False) -> KeyPairFiles:
    """Create the control room's Ed25519 signing key pair in ``out_dir``."""
    return _new_pair(out_dir, SIGNING_KEY_NAME, SIGNING_PUB_NAME,
                     Ed25519PrivateKey.generate(), force)


def init_device_key(out_dir: Path, device_id: str, force: bool = False) -> KeyPairFiles:
    """Create a device's X25519 key pair ``<device_id>.key`` / ``.pub`` in ``out_dir``."""
    check_device_id(device_id)
    return _new_pair(out_dir, f"{device_id}.key", f"{device_id}.pub",
                     X25519PrivateKey.generate(), force)


def init_device_signing_key(out_dir: Path, device_id: str, force: bool = False) -> KeyPairFiles:
    """Create a device's Ed25519 signing key pair ``<device_id>.signing.key`` / ``.pub``."""
    check_device_id(device_id)
    return _new_pair(out_dir, f"{device_id}.signing.key", f"{device_id}.signing.pub",
                     Ed25519PrivateKey.generate(), force)


# --- per-deployment keys (RAM only) --------------------------------------------------

RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
_KID_RE = re.compile(r"^[0-9a-f]{64}$")


def filesystem_type(path: Path, mountinfo: Path = Path("/proc/self/mountinfo")) -> str | None:
    """The type of the file system ``path`` is on (the longest mount point above it), or
    None when ``/proc/self/mountinfo`` cannot be read."""
    try:
        lines = mountinfo.read_text("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount = fields[4].replace("\\040", " ")
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, best_type = mount, right.split()[0]
    return best_type


def is_ram_backed(path: Path) -> bool:
    """True if ``path`` is on tmpfs or ramfs (gone at a reboot or power loss)."""
    return filesystem_type(path) in RAM_FILESYSTEMS


def deployment_key_path(keys_dir: Path, kid: str) -> Path:
    """Where the deployment key with id ``kid`` (hex) lives in ``keys_dir``."""
    if not _KID_RE.fullmatch(kid):
        raise ValueError("a deployment key id is 64 lower-case hex digits")
    return keys_dir / f"{kid}.key"


def init_deployment_key(keys_dir: Path, allow_persistent: bool = False) -> KeyPairFiles:
    """Create a deployment's X25519 key pair ``<key id>.key`` (0600) / ``.pub`` in
    ``keys_dir``, which must be on a RAM file system unless ``allow_persistent`` (tests,
    the demo where no tmpfs is at hand): the private half must never reach flash."""
    _prepare_out(keys_dir)
    if not allow_persistent and not is_ram_backed(keys_dir):
        raise UsageError(
            f"{keys_dir} is not on a RAM file system (tmpfs): a deployment key must never "
            "reach persistent storage (use a directory under /run)"
        )
    key = X25519PrivateKey.generate()
    kid = key_id(key.public_key()).hex()
    priv_path = deployment_key_path(keys_dir, kid)
    _write_private_and_public(key, priv_path, priv_path.with_suffix(".pub"), force=False)
    return KeyPairFiles(priv_path, priv_path.with_suffix(".pub"), kid)


def load_deployment_key(keys_dir: Path, kid: str) -> X25519PrivateKey | None:
    """The deployment private key with id ``kid``, or None if it is not in ``keys_dir``.

    The PEM is read into a buffer that is zeroed once the key is parsed; a file that is
    not the key it is named after raises :class:`UsageError`.
    """
    path = deployment_key_path(keys_dir, kid)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"cannot read deployment key {path}: {exc.strerror}") from None
    buf = bytearray(_MAX_KEY_FILE)
    try:
        with os.fdopen(fd, "rb") as fh:
            n = fh.readinto(buf)
        key = serialization.load_pem_private_key(memoryview(buf)[:n], password=None)
    except (ValueError, TypeError, OSError):
        raise UsageError(f"{path} is not an unencrypted PEM private key") from None
    finally:
        buf[:] = bytes(len(buf))
    if not isinstance(key, X25519PrivateKey) or key_id(key.public_key()).hex() != kid:
        raise UsageError(f"{path} is not the X25519 deployment key {kid[:16]}")
    return key


def destroy_deployment_key(keys_dir: Path, kid: str) -> bool:
    """Overwrite and remove the deployment key ``kid`` (and its public half).

    True if a private key file was removed, False if there was none.
    """
    path = deployment_key_path(keys_dir, kid)
    removed = shred_file(path)
    with contextlib.suppress(FileNotFoundError):
        path.with_suffix(".pub").unlink()
    return removed


def _write_private_and_public(
    key: Ed25519PrivateKey | X25519PrivateKey, priv_path: Path, pub_path: Path, force: bool
) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_atomic(priv_path, pem, 0o600, force)
    write_atomic(pub_path, pub, 0o644, force)


# --- reading -------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as fh:
            data = fh.read(_MAX_KEY_FILE + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > _MAX_KEY_FILE:
        raise UsageError(f"{what} {path} is too large to be a key file")
    return data


def _load_private(path: Path, what: str) -> object:
    data = _read(path, what)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not an unencrypted PEM private key ({what})") from None


def _load_public(path: Path, what: str) -> object:
    data = _read(path, what)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError(f"{path} is not a PEM public key ({what})") from None
    if not signing.is_canonical_public_pem(data, key):
        raise UsageError(f"{path} is not in its canonical PEM form, as `edge keys init` "
                         f"writes it ({what})")  # fmt: skip
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    key = _load_private(path, "signing key")
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 signing key")
    return key


def load_signer_public(path: Path) -> Ed25519PublicKey:
    key = _load_public(path, "signer public key")
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key")
    return key


def load_device_key(path: Path) -> X25519PrivateKey:
    key = _load_private(path, "device key")
    if not isinstance(key, X25519PrivateKey):
        raise UsageError(f"{path} is not an X25519 device key")
    return key


def load_deployment_public(path: Path) -> X25519PublicKey:
    """A deployment public key (``<key id>.pub``; the name is not checked)."""
    key = _load_public(path, "deployment public key")
    if not isinstance(key, X25519PublicKey):
        raise UsageError(f"{path} is not an X25519 public key")
    return key


def load_device_public(path: Path) -> tuple[str, X25519PublicKey]:
    """Load a recipient public key; its device id is the file name without ``.pub``."""
    key = _load_public(path, "device public key")
    if not isinstance(key, X25519PublicKey):
        raise UsageError(f"{path} is not an X25519 device public key")
    name = path.name[: -len(".pub")] if path.name.endswith(".pub") else path.stem
    return check_device_id(name), key


def signer_public_from_bytes(data: bytes) -> Ed25519PublicKey:
    """Parse the control room's public key given as PEM bytes (e.g. a systemd credential)."""
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise UsageError("signer credential is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError("signer credential is not an Ed25519 public key")
    if not signing.is_canonical_public_pem(data, key):
        raise UsageError("signer credential is not in its canonical PEM form")
    return key


def device_key_from_bytes(data: bytes) -> X25519PrivateKey:
    """Parse a device private key given as PEM bytes (e.g. a systemd credential)."""
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError("device key credential is not an unencrypted PEM private key") from None
    if not isinstance(key, X25519PrivateKey):
        raise UsageError("device key credential is not an X25519 key")
    return key
