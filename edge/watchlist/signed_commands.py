"""Signed control-room commands: end a deployment, put alerts on legal hold.

A command travels as a JSON document (a file for Ansible, or an MQTT message on
``lfr/<id>/commands``)::

    {"format": "lfr-edge-command/1",
     "signer": "<hex key id of the control room's Ed25519 key>",
     "body": "<canonical JSON string of the body>",
     "signature": "<base64 Ed25519 signature over b'lfr-edge command v1\\0' + body>"}

The body is signed as the exact string carried, so nothing depends on re-serialising::

    {"command": "end_deployment" | "legal_hold", "device_id": ..., "deployment_id": ...,
     "issued_at": "...Z", "expires_at": "...Z", "nonce": "<32 hex>", "args": {...}}

``legal_hold`` args: ``{"alert_ids": [...], "on": true|false}``; ``end_deployment``
args: ``{}`` (optionally ``{"reason": "..."}``).

Replay protection (:class:`CommandVerifier`): a command is accepted only between
``issued_at`` (less a small clock skew) and ``expires_at``, its validity may not exceed
:data:`MAX_VALIDITY_S`, and each nonce is accepted once; seen nonces are kept on disk
until the device's time high-water mark (:mod:`edge.watchlist.timeguard`) has passed
their command's expiry, so setting the clock back never makes a used command new again
(the deployment manager also refuses commands on a clock behind that mark). Replay
protection **fails closed**: a command whose nonce cannot be written to disk (a full
disk, an I/O error) is refused (``replay_unrecorded``) and the caller audits it; the
same command is accepted once the disk takes the write.
The nonce file is replaced atomically (:func:`edge.watchlist.statefile.write_atomic`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from edge import boundedjson, signing
from edge.compat import UTC
from edge.errors import EdgeError
from edge.watchlist.bundle import ID_RE, canonical_json, format_time, parse_time
from edge.watchlist.keys import DEVICE_ID_RE, check_device_id, key_id
from edge.watchlist.statefile import write_atomic

log = logging.getLogger(__name__)

FORMAT = "lfr-edge-command/1"
SIG_CONTEXT = b"lfr-edge command v1\x00"
COMMANDS = ("end_deployment", "legal_hold")
MAX_VALIDITY_S = 24 * 3600
CLOCK_SKEW_S = 300
MAX_COMMAND_BYTES = 64 * 1024
_NONCE_RE = re.compile(r"^[0-9a-f]{32}$")
_ALERT_ID_RE = re.compile(r"^[0-9A-Za-z-]{1,64}$")


class CommandRefused(EdgeError):  # noqa: N818 (parallels errors.BundleRefused)
    """A signed command was refused; ``reason`` is a short machine-readable code."""

    exit_code = 4

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class SignedCommand:
    command: str
    device_id: str
    deployment_id: str
    issued_at: dt.datetime
    expires_at: dt.datetime
    nonce: str
    args: dict[str, Any]


def make_command(
    signing_key: Ed25519PrivateKey,
    command: str,
    device_id: str,
    deployment_id: str,
    args: dict[str, Any] | None = None,
    issued_at: dt.datetime | None = None,
    valid_for_s: int = 3600,
) -> bytes:
    """Build and sign a command document (JSON bytes)."""
    if command not in COMMANDS:
        raise ValueError(f"unknown command {command!r}")
    check_device_id(device_id)
    if not ID_RE.fullmatch(deployment_id):
        raise ValueError(f"invalid deployment id {deployment_id!r}")
    if not 1 <= valid_for_s <= MAX_VALIDITY_S:
        raise ValueError(f"validity must be 1..{MAX_VALIDITY_S} s")
    issued = (issued_at or dt.datetime.now(UTC)).replace(microsecond=0)
    body = {
        "command": command,
        "device_id": device_id,
        "deployment_id": deployment_id,
        "issued_at": format_time(issued),
        "expires_at": format_time(issued + dt.timedelta(seconds=valid_for_s)),
        "nonce": secrets.token_hex(16),
        "args": args or {},
    }
    _check_args(command, body["args"])
    body_str = canonical_json(body).decode("ascii")
    doc = {
        "format": FORMAT,
        "signer": key_id(signing_key.public_key()).hex(),
        "body": body_str,
        "signature": signing.sign(signing_key, SIG_CONTEXT, body_str.encode("ascii")),
    }
    return json.dumps(doc, indent=1).encode("ascii") + b"\n"


def _check_args(command: str, args: Any) -> dict[str, Any]:
    if not isinstance(args, dict):
        raise ValueError("args is not an object")
    if command == "legal_hold":
        if set(args) != {"alert_ids", "on"}:
            raise ValueError("legal_hold args must be exactly alert_ids and on")
        ids = args["alert_ids"]
        if (
            not isinstance(ids, list)
            or not 1 <= len(ids) <= 10_000
            or not all(isinstance(a, str) and _ALERT_ID_RE.fullmatch(a) for a in ids)
        ):
            raise ValueError("legal_hold alert_ids must be a non-empty list of alert ids")
        if type(args["on"]) is not bool:
            raise ValueError("legal_hold on must be true or false")
    elif command == "end_deployment":
        if set(args) - {"reason"}:
            raise ValueError("end_deployment takes only an optional reason")
        reason = args.get("reason", "")
        if not isinstance(reason, str) or len(reason) > 200 or not reason.isprintable():
            raise ValueError("end_deployment reason must be a short printable string")
    return args


def parse_command(
    data: bytes, trusted_signers: Sequence[Ed25519PublicKey]
) -> SignedCommand:
    """Check the signature and shape of a command (no replay or time checks)."""
    if len(data) > MAX_COMMAND_BYTES:
        raise CommandRefused("garbled", "command is too large")
    try:
        doc = boundedjson.loads(data, max_bytes=MAX_COMMAND_BYTES, max_depth=2)
        if not isinstance(doc, dict) or set(doc) != {"format", "signer", "body", "signature"}:
            raise ValueError("not a command document")
        if doc["format"] != FORMAT:
            raise ValueError(f"unknown command format {doc['format']!r}")
        signer_hex, body_str, sig_b64 = doc["signer"], doc["body"], doc["signature"]
        if not all(isinstance(x, str) for x in (signer_hex, body_str, sig_b64)):
            raise ValueError("signer, body and signature must be strings")
        signer_id = signing.canonical_hex(signer_hex, 32, "signer")  # one spelling
        signing.b64decode_canonical(sig_b64, "signature")  # garbled (or re-spelt), not forged
        body_bytes = body_str.encode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise CommandRefused("garbled", f"command is garbled: {exc}") from None
    signer = next((k for k in trusted_signers if key_id(k) == signer_id), None)
    if signer is None:
        raise CommandRefused("unknown_signer", "command is signed by an unknown key")
    if not signing.verify(signer, SIG_CONTEXT, body_bytes, sig_b64):
        raise CommandRefused("bad_signature", "command signature is invalid")
    try:
        body = boundedjson.loads(body_bytes, max_bytes=MAX_COMMAND_BYTES, max_depth=4)
        keys = {"command", "device_id", "deployment_id", "issued_at", "expires_at", "nonce",
                "args"}
        if not isinstance(body, dict) or set(body) != keys:
            raise ValueError("body fields are wrong")
        if body["command"] not in COMMANDS:
            raise ValueError(f"unknown command {body['command']!r}")
        for k in ("device_id", "deployment_id", "issued_at", "expires_at", "nonce"):
            if not isinstance(body[k], str):
                raise ValueError(f"{k} is not a string")
        if not DEVICE_ID_RE.fullmatch(body["device_id"]):
            raise ValueError("device_id is malformed")
        if not ID_RE.fullmatch(body["deployment_id"]):
            raise ValueError("deployment_id is malformed")
        if not _NONCE_RE.fullmatch(body["nonce"]):
            raise ValueError("nonce is malformed")
        cmd = SignedCommand(
            command=body["command"],
            device_id=body["device_id"],
            deployment_id=body["deployment_id"],
            issued_at=parse_time(body["issued_at"]),
            expires_at=parse_time(body["expires_at"]),
            nonce=body["nonce"],
            args=_check_args(body["command"], body["args"]),
        )
    except ValueError as exc:
        raise CommandRefused("garbled", f"command is garbled: {exc}") from None
    return cmd


class CommandVerifier:
    """Verifies commands for one device with replay protection (nonces kept in ``state_dir``)."""

    def __init__(
        self, state_dir: Path, device_id: str, trusted_signers: Sequence[Ed25519PublicKey]
    ) -> None:
        self.device_id = device_id
        self.trusted_signers = list(trusted_signers)
        self._path = state_dir / "command-nonces.json"
        self._lock = threading.Lock()
        self._seen: dict[str, float] = self._load()

    def _load(self) -> dict[str, float]:
        try:
            raw = json.loads(self._path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            # A damaged nonce file must not reopen replays: refuse everything until
            # an operator looks (commands are rare; the deployment still ends by time).
            return {"*": float("inf")}
        if not isinstance(raw, dict):
            return {"*": float("inf")}
        return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)}

    def _save(self) -> None:
        write_atomic(self._path, json.dumps(self._seen).encode("utf-8"))

    def verify(
        self, data: bytes, now: float, forget_before: float | None = None
    ) -> SignedCommand:
        """Check a command at ``now``. A seen nonce is forgotten only when its expiry is
        before ``forget_before`` (``now`` if None; the deployment manager passes its
        high-water mark less the tolerance), so a clock set back cannot make an old
        command new again."""
        cmd = parse_command(data, self.trusted_signers)
        if cmd.device_id != self.device_id:
            raise CommandRefused(
                "not_for_device", f"command is for device {cmd.device_id}, not {self.device_id}"
            )
        issued, expires = cmd.issued_at.timestamp(), cmd.expires_at.timestamp()
        if expires <= issued or expires - issued > MAX_VALIDITY_S:
            raise CommandRefused("bad_validity", "command validity period is not allowed")
        if now < issued - CLOCK_SKEW_S:
            raise CommandRefused(
                "not_yet_valid", f"command issued in the future ({format_time(cmd.issued_at)})"
            )
        if now >= expires:
            raise CommandRefused(
                "expired", f"command expired at {format_time(cmd.expires_at)}"
            )
        with self._lock:
            if "*" in self._seen:
                raise CommandRefused(
                    "replay_state", f"replay record {self._path} is damaged; refusing commands"
                )
            horizon = now if forget_before is None else forget_before
            self._seen = {n: t for n, t in self._seen.items() if t > horizon}
            if cmd.nonce in self._seen:
                raise CommandRefused("replayed", "command was already used (same nonce)")
            self._seen[cmd.nonce] = expires
            try:
                self._save()
            except OSError as exc:
                # Fail closed: a nonce that is not on disk could be replayed after a
                # restart, so the command is refused (and may be sent again later).
                del self._seen[cmd.nonce]
                log.warning("cannot record command nonce in %s: %s", self._path, exc.strerror)
                raise CommandRefused(
                    "replay_unrecorded",
                    f"command refused: its nonce cannot be recorded ({exc.strerror})",
                ) from None
        return cmd
