"""The arming state machine (safeguards 1, 3, 6, 8, 9, 12, 13, 14, 15).

The daemon is **disarmed** unless a valid bundle for this device is loaded and the
current time is inside its window. :class:`DeploymentManager` owns that decision:

- :meth:`~DeploymentManager.load` verifies and decrypts a bundle
  (:func:`edge.watchlist.bundle.open_bundle`) and arms; every refusal leaves it disarmed
  with one log line, a status reason and an
  audit entry. A bundle whose window has not opened yet is kept pending and armed by
  :meth:`~DeploymentManager.tick` when it opens; one whose window has already ended is
  shredded.
- :meth:`~DeploymentManager.tick` disarms at the end of the window;
  :meth:`~DeploymentManager.handle_command` takes signed ``end_deployment`` and
  ``legal_hold`` commands (:mod:`edge.watchlist.signed_commands`).
- Ending a deployment zeroes the decrypted watchlist matrix in place, overwrites and
  unlinks the bundle file and destroys the deployment key it was wrapped to (held only in
  RAM, :mod:`edge.watchlist.deployment_keys`), audits each step and returns the
  end-of-deployment summary. With the key gone, no copy of the bundle (its blocks left on
  flash, a replaced bundle, the controller's copy) can be decrypted: the crypto-shred.
- A bundle delivered to ``<bundle>.new`` replaces the current one only once it is accepted,
  and only after the old deployment has ended (old file shredded, old key destroyed,
  audited ``bundle_replaced``).

Limits, stated plainly: Python cannot promise that no other copy of a decrypted byte
remains in freed memory, and on flash storage an overwrite may not reach the original
blocks; the bundle is only ever stored encrypted, under a key that lived only in RAM and
is destroyed at the end.

The last accepted sequence number and the ids of ended bundles are kept in
``<state_dir>/deployment-state.json``, replaced atomically. A disk that refuses the write
never stops the daemon: the state stays in memory, :attr:`DeploymentManager.state_error`
says so (``status``), and :meth:`~DeploymentManager.tick` writes it once the disk takes it.

Adjudications (:meth:`~DeploymentManager.handle_adjudication`) must be signed by a trusted
control-room key (:mod:`edge.watchlist.adjudication`), name an alert this deployment
issued (:meth:`~DeploymentManager.note_alert`), and are recorded once per alert id and
decision; every refusal is audited with its reason, never with the payload.

The manager is a composition under one lock: it owns one
:class:`~edge.watchlist.deployment_state.DeploymentState` (the armed deployment, the
pending and clock-waiting bundles, the status, the persisted state, the lock) and hands it,
with what else each needs and nothing more, to three parts, one module per stage:

- :class:`~edge.watchlist.deployment_end.DeploymentEnder`: every end of a deployment
  (wipe, shred, destroy the key, persist, audit, summarise, in that order) and the summary;
- :class:`~edge.watchlist.deployment_load.BundleLoader`: loading, arming, staged
  replacement, the window; it calls the ender;
- :class:`~edge.watchlist.deployment_commands.CommandHandler`: signed commands and
  adjudications; it calls the ender.

Beside them: :mod:`~edge.watchlist.deployment_status` (the status, the records, the
configuration the parts share), :mod:`~edge.watchlist.deployment_files` (the state file,
bounded bundle reads, shredding). This module builds the parts and keeps the manager's
public API, and every name callers import, here. The parts without the manager's state are
beside it (:mod:`~edge.watchlist.adjudication`, :mod:`~edge.watchlist.statefile`,
:mod:`~edge.watchlist.signed_commands`, :mod:`~edge.watchlist.deployment_keys`,
:mod:`~edge.watchlist.timeguard`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused
from edge.recognition.match import Watchlist
from edge.watchlist.adjudication import Adjudication, AdjudicationLedger, AdjudicationRefused
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import BundleHeader
from edge.watchlist.deployment_commands import (
    COMMANDS_DIR,
    MAX_COMMAND_FILE,
    CommandHandler,
    LegalHold,
)
from edge.watchlist.deployment_end import DeploymentEnder, SummaryCallback
from edge.watchlist.deployment_files import MAX_BUNDLE_READ, STATE_FILE
from edge.watchlist.deployment_keys import BundleKeys
from edge.watchlist.deployment_load import BundleLoader
from edge.watchlist.deployment_state import LEDGER_FILE, DeploymentState, StatusCallback, log
from edge.watchlist.deployment_status import (
    DECISIONS,
    Counters,
    DeploymentConfig,
    DeploymentStatus,
)
from edge.watchlist.signed_commands import CommandRefused, CommandVerifier
from edge.watchlist.statefile import shred_file, write_atomic
from edge.watchlist.timeguard import TimeGuard, boottime

# What callers import from here: the manager, its constants and types, and what its
# methods raise and return.
__all__ = [
    "COMMANDS_DIR",
    "DECISIONS",
    "LEDGER_FILE",
    "MAX_BUNDLE_READ",
    "MAX_COMMAND_FILE",
    "STATE_FILE",
    "Adjudication",
    "AdjudicationRefused",
    "BundleHeader",
    "BundleRefused",
    "CommandRefused",
    "Counters",
    "DeploymentConfig",
    "DeploymentManager",
    "DeploymentStatus",
    "Watchlist",
    "log",
    "shred_file",
    "write_atomic",
]


class DeploymentManager:
    """Decides whether the device is armed, and ends deployments cleanly.

    The daemon increments :attr:`counters` (frames, faces processed, tracks, alerts)
    while armed; they are reset at each arming and reported in the summary.
    """

    def __init__(
        self,
        state_dir: Path,
        device_id: str,
        device_key: X25519PrivateKey,
        trusted_signers: Sequence[Ed25519PublicKey],
        threshold_floor: float,
        max_subjects: int,
        expected_embedder_sha256: str,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        *,
        on_status: StatusCallback | None = None,
        on_summary: SummaryCallback | None = None,
        set_legal_hold: LegalHold | None = None,
        boottime_clock: Callable[[], float] = boottime,
        clock_synced: Callable[[], bool] | None = None,
        deployment_keys_dir: Path | None = None,
        allow_device_key_bundles: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.audit = audit
        self.clock = clock
        self.config = DeploymentConfig(
            device_id, tuple(trusted_signers), threshold_floor, max_subjects,
            expected_embedder_sha256,
        )  # fmt: skip
        keys = BundleKeys(device_id, device_key, deployment_keys_dir, allow_device_key_bundles)
        state_dir.mkdir(parents=True, exist_ok=True)
        verifier = CommandVerifier(state_dir, device_id, self.config.trusted_signers)
        self.time = TimeGuard(state_dir, boottime_clock)
        self._state = DeploymentState(state_dir / STATE_FILE, on_status)
        self.ledger = AdjudicationLedger(state_dir / LEDGER_FILE)
        self._ender = DeploymentEnder(self._state, self.config, keys, self.ledger, audit,
                                      on_summary)  # fmt: skip
        self._loader = BundleLoader(self._state, self._ender, self.config, keys, self.time,
                                    self.ledger, audit, clock, clock_synced)  # fmt: skip
        self._commands = CommandHandler(self._state, self._ender, self.config, verifier,
                                        self.time, self.ledger, audit, clock,
                                        set_legal_hold)  # fmt: skip

    # --- configuration ------------------------------------------------------------------

    @property
    def device_id(self) -> str:
        return self.config.device_id

    @property
    def clock_synced(self) -> Callable[[], bool] | None:
        """Whether the clock is synchronised (None: not required, [device] require_clock_sync)."""
        return self._loader.clock_synced

    @clock_synced.setter
    def clock_synced(self, value: Callable[[], bool] | None) -> None:
        self._loader.clock_synced = value

    # --- loading, the window ------------------------------------------------------------

    def load(self, bundle_path: Path, now: float | None = None) -> DeploymentStatus:
        """Verify, decrypt and arm from ``bundle_path``; on refusal stay disarmed
        (:meth:`edge.watchlist.deployment_load.BundleLoader.load`)."""
        return self._loader.load(bundle_path, now)

    def tick(self, now: float | None = None) -> dict[str, Any] | None:
        """Retry what a failing disk refused; disarm at the end of the window (returns the
        summary); arm a pending bundle when its window opens, or one that waited for the
        clock once it is right (:meth:`edge.watchlist.deployment_load.BundleLoader.tick`)."""
        now = self.clock() if now is None else now
        with self._state.lock:
            self.time.observe(now)
            self.flush()
            return self._loader.tick(now)

    def close(self) -> None:
        """Drop the decrypted watchlist from RAM (daemon shutdown); the bundle stays."""
        self._ender.close()

    # --- signed commands, adjudications -------------------------------------------------

    def handle_command(self, data: bytes, now: float | None = None) -> dict[str, Any]:
        """Verify a signed command and act on it. Raises :class:`CommandRefused`
        (:meth:`edge.watchlist.deployment_commands.CommandHandler.handle_command`)."""
        return self._commands.handle_command(data, now)

    def process_command_files(self, directory: Path, now: float | None = None) -> list[str]:
        """Handle signed command files dropped in ``directory``; one line per file."""
        return self._commands.process_command_files(directory, now)

    def end(self, signed_command: bytes, now: float | None = None) -> dict[str, Any]:
        """End the deployment on a signed ``end_deployment`` command; returns the summary."""
        return self._commands.end(signed_command, now)

    def note_alert(self, alert_id: str) -> None:
        """An alert this deployment issued: the only kind that may be adjudicated."""
        self._commands.note_alert(alert_id)

    def handle_adjudication(self, data: bytes, now: float | None = None) -> Adjudication:
        """Verify, check and record a signed adjudication (safeguard 8). Raises
        :class:`AdjudicationRefused`, each refusal audited (reason only)."""
        return self._commands.handle_adjudication(data, now)

    # --- persistence --------------------------------------------------------------------

    def flush(self) -> None:
        """Retry what a failing disk refused (state, ledger, clock); called by :meth:`tick`."""
        self._state.flush()
        self.ledger.flush()
        if self.time.error is not None:
            self.time.flush()

    @property
    def state_error(self) -> str | None:
        """Why ``deployment-state.json`` is only in memory right now, or None."""
        return self._state.error

    @property
    def persist_error(self) -> str | None:
        """Why some state is only in memory right now, or None."""
        return self._state.error or self.ledger.write_error or self.time.error

    # --- what the daemon reads ----------------------------------------------------------

    @property
    def status(self) -> DeploymentStatus:
        return self._state.status

    @property
    def armed(self) -> bool:
        return self._state.active is not None

    @property
    def watchlist(self) -> Watchlist | None:
        active = self._state.active
        return active.watchlist if active is not None else None

    @property
    def header(self) -> BundleHeader | None:
        active = self._state.active
        return active.opened.header if active is not None else None

    @property
    def threshold(self) -> float | None:
        active = self._state.active
        return active.opened.header.threshold if active is not None else None

    @property
    def counters(self) -> Counters:
        return self._state.counters
