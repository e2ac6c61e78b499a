"""The ``edge`` command line.

Each command lives in ``edge/commands/<name>.py`` and exposes
``register(subparsers) -> None``, which adds its parser and sets
``func=<callable(argparse.Namespace) -> int>``. Command modules keep heavy
imports (numpy, OpenCV, the TFLite runtime) inside their functions so that
``edge --help`` stays fast.

Errors a user can cause are :class:`edge.errors.EdgeError`: they become one
line on stderr and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

from edge import __version__
from edge.errors import ConfigError, EdgeError

# Order is the order shown in --help.
COMMANDS: tuple[str, ...] = (
    "run",
    "check_config",
    "keys",
    "watchlist",
    "eval",
    "simulate",
    "bench",
    "alerts",
    "console",
    "audit",
    "clock",
    "models",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description="Live facial recognition edge appliance."
    )
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"edge.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"edge.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from edge.service.logs import setup_logging

    setup_logging(logging.WARNING - 10 * min(args.verbose, 2))
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(f"edge: {line}", file=sys.stderr)
        return exc.exit_code
    except EdgeError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
