"""The deployment's status and records (part of :mod:`edge.watchlist.deployment`).

Owns the types the arming state machine reads and reports, and nothing with a side
effect: :class:`DeploymentStatus` (armed or not, and why: ``STATUS=``, the ``status``
topic, the log), :class:`Counters` (only counts leave the pipeline), and the manager's
internal records: :class:`Active` (the armed deployment: the decrypted bundle, its
``Watchlist``, when and for how long it was armed, its deployment key id), and the two
outcomes of opening a bundle, :class:`Refusal` and :class:`Opened`; and what the parts
are configured with, :class:`DeploymentConfig`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.compat import UTC
from edge.errors import BundleRefused
from edge.recognition.match import Watchlist
from edge.watchlist.bundle import BundleHeader, OpenedBundle, format_time

DECISIONS = ("confirmed", "rejected", "not_stopped")


@dataclass(frozen=True, slots=True)
class DeploymentConfig:
    """What a bundle must satisfy on this device, and who may sign for it (fixed at start)."""

    device_id: str
    trusted_signers: tuple[Ed25519PublicKey, ...]  # the control room's signing keys
    threshold_floor: float  # the lowest threshold a bundle may carry for this embedder
    max_subjects: int
    expected_embedder_sha256: str  # the embedder this device runs


@dataclass(slots=True)
class Counters:
    """What the daemon counts during a deployment (only counts leave the pipeline)."""

    frames: int = 0
    faces_processed: int = 0
    tracks: int = 0
    alerts: int = 0


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    """Armed or not, and why (for ``STATUS=``, the ``status`` topic and the log)."""

    armed: bool
    code: str  # "armed", "no_bundle", "pending", "ended", or a BundleRefused reason
    reason: str  # one human line
    deployment_id: str | None = None
    window_end: str | None = None

    def line(self) -> str:
        """``armed: ...``, ``disarmed, pending: ...``, ``disarmed, refused (<code>): ...``
        or ``disarmed: ...`` (no bundle, ended)."""
        if self.armed:
            return f"armed: {self.reason}"
        if self.code == "pending":
            return f"disarmed, pending: {self.reason}"
        if self.code in ("no_bundle", "ended"):
            return f"disarmed: {self.reason}"
        return f"disarmed, refused ({self.code}): {self.reason}"


@dataclass(slots=True)
class Active:
    """The armed deployment: held only while armed, wiped when it ends."""

    opened: OpenedBundle
    watchlist: Watchlist
    path: Path
    digest: str
    armed_at: float
    armed_boot: float  # CLOCK_BOOTTIME at arming
    length_s: float  # the rest of the window at arming, measured on CLOCK_BOOTTIME
    key_id: str | None  # the deployment key in RAM (None: the device key, tests only)
    counters: Counters = field(default_factory=Counters)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A bundle that will not arm, and why."""

    exc: BundleRefused
    header: BundleHeader | None = None  # set when refused on the clock (tick retries)


@dataclass(frozen=True, slots=True)
class Opened:
    """A bundle verified, decrypted and checked, ready to arm."""

    opened: OpenedBundle
    watchlist: Watchlist
    key_id: str | None


def iso(t: float) -> str:
    """A POSIX time as the bundle's UTC time format."""
    return format_time(dt.datetime.fromtimestamp(t, UTC))
