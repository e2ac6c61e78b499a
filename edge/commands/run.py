"""``edge run [--config F]``: the daemon (see :mod:`edge.service.daemon`)."""

from __future__ import annotations

import argparse
from typing import Any

from edge.commands import add_config_option


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the appliance (the systemd service's ExecStart)",
        description="Capture, recognise and publish match alerts. Disarmed until a valid, "
        "signed watchlist bundle for this device is inside its deployment window.",
    )
    add_config_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edge.service.config import load_settings
    from edge.service.daemon import Daemon

    settings = load_settings(args.config)
    return Daemon(settings).run()
