"""``edge audit verify FILE``: check the audit log's hash chain, that its times never go
backwards, with ``--device-key`` the device's signature on every entry, and with
``--last-seq N [--last-hash H]`` (or ``--control-room FILE``) that the log still holds
what the control room received: truncation below it fails, a rewritten history fails.

``--control-room FILE`` is a JSON object ``{"verified_seq": N, "last_hash": H}`` (what the
console's audit page shows for the device as "verified up to").
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from edge.errors import UsageError

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify the tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    v = asub.add_parser(
        "verify",
        help="verify the hash chain (and signatures) of an audit log",
        description="Exit 0 and print the entry count if the chain is intact, its times "
        "never go backwards, every entry is signed by the device (--device-key; entries "
        "from before signing are named) and the log reaches what the control room saw "
        "(--last-seq/--last-hash); otherwise print the first bad line and exit 6.",
    )
    v.add_argument("file", type=Path, help="audit log (JSON lines)")
    v.add_argument("--device-key", type=Path, metavar="PUB",
                   help="the device's signing public key (<device_id>.signing.pub), or a "
                   "directory of them (with --device)")  # fmt: skip
    v.add_argument("--device", help="which device's key to take from a --device-key directory")
    v.add_argument("--last-seq", type=int, metavar="N",
                   help="the last entry the control room received")  # fmt: skip
    v.add_argument("--last-hash", metavar="H", help="that entry's hash (64 hex digits)")
    v.add_argument("--control-room", type=Path, metavar="FILE",
                   help='JSON {"verified_seq": N, "last_hash": H} from the control room')
    v.set_defaults(func=run)


def _public_key(args: argparse.Namespace) -> Any:
    from edge import signing

    if args.device_key is None:
        return None
    try:
        keys = signing.load_device_keys(args.device_key)
    except signing.KeyFileError as exc:
        raise UsageError(str(exc)) from None
    if args.device is not None:
        if args.device not in keys:
            raise UsageError(f"no signing key for device {args.device!r} in {args.device_key}")
        return keys[args.device]
    if len(keys) != 1:
        raise UsageError(f"{args.device_key} holds {len(keys)} keys: name one with --device")
    return next(iter(keys.values()))


def _control_room(args: argparse.Namespace) -> tuple[int | None, str | None]:
    last_seq, last_hash = args.last_seq, args.last_hash
    if args.control_room is not None:
        from edge import boundedjson

        try:
            doc = boundedjson.loads(args.control_room.read_bytes(), max_bytes=64 * 1024)
        except (OSError, boundedjson.JSONRefused) as exc:
            raise UsageError(f"--control-room {args.control_room}: {exc}") from None
        seq, h = (doc.get("verified_seq"), doc.get("last_hash")) if isinstance(doc, dict) \
            else (None, None)  # fmt: skip
        if isinstance(seq, bool) or not isinstance(seq, int) or not isinstance(h, str):
            raise UsageError(f"--control-room {args.control_room}: needs verified_seq and "
                             "last_hash")  # fmt: skip
        last_seq, last_hash = seq, h
    if last_seq is not None and last_seq < 0:
        raise UsageError("--last-seq must not be negative")
    if last_hash is not None:
        if last_seq is None:
            raise UsageError("--last-hash needs --last-seq")
        if not _HEX64.fullmatch(last_hash):
            raise UsageError("--last-hash must be 64 lower-case hex digits")
    return last_seq, last_hash


def run(args: argparse.Namespace) -> int:
    from edge.watchlist.audit import verify_report

    public = _public_key(args)
    last_seq, last_hash = _control_room(args)
    r = verify_report(args.file, public, last_seq=last_seq, last_hash=last_hash)
    parts = [f"{args.file}: {r.entries} entries, hash chain intact, times non-decreasing"]
    if r.signatures_checked:
        parts.append(f"{r.signed} signed by the device key")
        if r.unsigned_through:
            parts.append(f"entries 1..{r.unsigned_through} unsigned (written before signing)")
    else:
        parts.append("signatures not checked (no --device-key)")
    if last_seq is not None:
        parts.append(f"holds entry {last_seq} the control room received"
                     + (" (same hash)" if last_hash else ""))  # fmt: skip
    print(", ".join(parts))
    return 0
