"""``edge keys init``: make the control room's signing key pair or a device key pair."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("keys", help="create key pairs (control-room signing key, device keys)")
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    init = ksub.add_parser(
        "init",
        help="create a key pair",
        description=(
            "Without --device: the control room's Ed25519 signing key pair "
            "(signing.key, signing.pub). With --device ID: that device's X25519 key pair "
            "(ID.key, ID.pub), whose .pub is a watchlist bundle recipient. PEM files; the "
            "private key is created mode 0600 and never printed."
        ),
    )
    init.add_argument("--out", type=Path, required=True, help="directory for the key files")
    init.add_argument("--device", metavar="ID", help="make a device key pair for device ID")
    init.add_argument("--force", action="store_true", help="overwrite existing key files")
    init.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.watchlist.keys import init_device_key, init_signing_key

    if args.device is not None:
        files = init_device_key(args.out, args.device, force=args.force)
        kind = f"device {args.device} X25519"
    else:
        files = init_signing_key(args.out, force=args.force)
        kind = "control-room Ed25519 signing"
    print(f"created {kind} key pair: {files.private} (0600), {files.public}")
    print(f"key id {files.key_id}")
    return 0
