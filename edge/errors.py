"""The exceptions a user can cause, each turned by the CLI into one line and an exit code.

Anything derived from :class:`EdgeError` is an expected failure (bad input, bad
config, a refused bundle, a missing model): the CLI prints ``edge: <message>``
on stderr and exits with :attr:`EdgeError.exit_code`. Anything else is a bug
and is allowed to show its traceback.
"""

from __future__ import annotations

import os


class EdgeError(Exception):
    """Base of every user-facing error."""

    exit_code: int = 1


class UsageError(EdgeError):
    """Bad command-line arguments or input files (a missing image, a malformed line)."""

    exit_code = 2


class ConfigError(EdgeError):
    """Invalid configuration; ``problems`` holds one line per offending key."""

    exit_code = os.EX_CONFIG  # 78

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ModelError(EdgeError):
    """A model file is missing, corrupt or does not match the manifest."""

    exit_code = 3


class BundleRefused(EdgeError):  # noqa: N818 (a refusal, not an error of ours)
    """A watchlist bundle was refused; ``reason`` is a short machine-readable code."""

    exit_code = 4

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class BrokerError(EdgeError):
    """The MQTT broker cannot be reached or refused us."""

    exit_code = 5


class AuditError(EdgeError):
    """The audit log failed verification."""

    exit_code = 6
