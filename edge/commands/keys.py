"""``edge keys init`` / ``edge keys deployment-key``: the control room's signing key pair,
a device's key pairs (made on the device), a deployment's key pair (in RAM on the device)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_DEPLOYMENT_KEYS_DIR = Path("/run/edge/deployment-keys")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "keys", help="create key pairs (control-room signing key, device keys, deployment keys)"
    )
    ksub = p.add_subparsers(dest="keys_command", metavar="ACTION")
    ksub.required = True
    init = ksub.add_parser(
        "init",
        help="create a key pair",
        description=(
            "Without --device: the control room's Ed25519 signing key pair "
            "(signing.key, signing.pub). With --device ID: that device's X25519 key pair "
            "(ID.key, ID.pub), run on the device itself (the Ansible role does), and with "
            "--signing also its Ed25519 signing key pair (ID.signing.key, ID.signing.pub). "
            "PEM files; a private key is created mode 0600 and never printed."
        ),
    )
    init.add_argument("--out", type=Path, required=True, help="directory for the key files")
    init.add_argument("--device", metavar="ID", help="make a device key pair for device ID")
    init.add_argument("--signing", action="store_true",
                      help="with --device: also the device's Ed25519 signing key pair")
    init.add_argument("--force", action="store_true", help="overwrite existing key files")
    init.set_defaults(func=run)
    dep = ksub.add_parser(
        "deployment-key",
        help="create a deployment's key pair in RAM (on the device, as the service user)",
        description=(
            "Create an X25519 key pair for one deployment in DIR, which must be on a RAM "
            "file system (tmpfs): <key id>.key (0600) and <key id>.pub. Build the "
            "deployment's bundle for the .pub (edge watchlist build --recipients, renamed "
            "<device id>.pub); the daemon opens it only with this key and destroys the key "
            "when the deployment ends, so no copy of the bundle can be opened afterwards. "
            "A reboot or power loss loses the key: re-provision the bundle. Prints the "
            "public key file's path on the last line."
        ),
    )
    dep.add_argument("--dir", type=Path, default=DEFAULT_DEPLOYMENT_KEYS_DIR,
                     help=f"the daemon's [watchlist] deployment_keys_dir "
                     f"(default {DEFAULT_DEPLOYMENT_KEYS_DIR})")
    dep.add_argument("--allow-persistent", action="store_true",
                     help="tests and demos only: allow a directory that is not on tmpfs")
    dep.set_defaults(func=run_deployment_key)


def run(args: argparse.Namespace) -> int:
    from edge.errors import UsageError
    from edge.watchlist.keys import init_device_key, init_device_signing_key, init_signing_key

    if args.device is not None:
        files = init_device_key(args.out, args.device, force=args.force)
        kind = f"device {args.device} X25519"
    elif args.signing:
        raise UsageError("--signing needs --device ID")
    else:
        files = init_signing_key(args.out, force=args.force)
        kind = "control-room Ed25519 signing"
    print(f"created {kind} key pair: {files.private} (0600), {files.public}")
    print(f"key id {files.key_id}")
    if args.device is not None and args.signing:
        signing = init_device_signing_key(args.out, args.device, force=args.force)
        print(f"created device {args.device} Ed25519 signing key pair: {signing.private} "
              f"(0600), {signing.public}")
        print(f"signing key id {signing.key_id}")
    return 0


def run_deployment_key(args: argparse.Namespace) -> int:
    from edge.watchlist.keys import init_deployment_key

    files = init_deployment_key(args.dir, allow_persistent=args.allow_persistent)
    print(f"created deployment key {files.key_id}: {files.private} (0600, RAM only)")
    print(files.public)
    return 0
