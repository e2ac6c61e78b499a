"""``edge audit verify FILE``: check the audit log's hash chain and that its times
never go backwards."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("audit", help="verify the tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True
    v = asub.add_parser(
        "verify",
        help="verify the hash chain of an audit log",
        description="Exit 0 and print the entry count if the chain is intact and its times "
        "never go backwards; otherwise print the first bad line and exit 6.",
    )
    v.add_argument("file", type=Path, help="audit log (JSON lines)")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.watchlist.audit import verify

    count = verify(args.file)
    print(f"{args.file}: {count} entries, hash chain intact, times non-decreasing")
    return 0
