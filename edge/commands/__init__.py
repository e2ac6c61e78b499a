"""One module per ``edge`` sub-command (see :mod:`edge.cli`).

May import: any part of edge; heavy imports stay inside the command functions.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The shared ``--config F`` option (``edge run``, ``edge check-config``).

    Defined here rather than in :mod:`edge.service.config` so that ``edge --help`` does not
    import pydantic.
    """
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="F",
        help="config file (default: $EDGE_CONFIG, else /etc/edge/edge.toml)",
    )
