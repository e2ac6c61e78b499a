"""The deployment manager's state (part of :mod:`edge.watchlist.deployment`).

Owns what every stage of the arming state machine shares: the configuration, the one
lock, the armed deployment, the pending and clock-waiting bundles, the status and its
callback, the summary callback, and the persisted state (``deployment-state.json``,
written atomically; a disk that refuses the write never stops the daemon: the state stays
in memory, :attr:`~DeploymentCore.state_error` says so and :meth:`~DeploymentCore.flush`
writes it once the disk takes it). Also what the daemon reads: ``status``, ``armed``,
``watchlist``, ``header``, ``threshold``, ``counters``.

The stages build on it: :mod:`~edge.watchlist.deployment_end` (ending, shredding, the
summary), :mod:`~edge.watchlist.deployment_load` (loading, arming, staged replacement,
the window) and :mod:`~edge.watchlist.deployment_commands` (signed commands and
adjudications); :class:`edge.watchlist.deployment.DeploymentManager` is all of them.
Every module logs as ``edge.watchlist.deployment``, the manager's one logger.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.recognition.match import Watchlist
from edge.watchlist.adjudication import AdjudicationLedger
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import BundleHeader
from edge.watchlist.deployment_files import STATE_FILE, read_state
from edge.watchlist.deployment_keys import BundleKeys
from edge.watchlist.deployment_status import Active, Counters, DeploymentStatus
from edge.watchlist.signed_commands import CommandVerifier
from edge.watchlist.statefile import write_atomic
from edge.watchlist.timeguard import TimeGuard, boottime

log = logging.getLogger("edge.watchlist.deployment")

LEDGER_FILE = "adjudications.json"


class DeploymentCore:
    """The state the stages of :class:`~edge.watchlist.deployment.DeploymentManager`
    share, its persistence, and what the daemon reads."""

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
        on_status: Callable[[DeploymentStatus], None] | None = None,
        on_summary: Callable[[dict[str, Any]], None] | None = None,
        set_legal_hold: Callable[[str, bool], object] | None = None,
        boottime_clock: Callable[[], float] = boottime,
        clock_synced: Callable[[], bool] | None = None,
        deployment_keys_dir: Path | None = None,
        allow_device_key_bundles: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.device_id = device_id
        self.keys = BundleKeys(device_id, device_key, deployment_keys_dir,
                               allow_device_key_bundles)
        self.trusted_signers = list(trusted_signers)
        self.threshold_floor = threshold_floor
        self.max_subjects = max_subjects
        self.expected_embedder_sha256 = expected_embedder_sha256
        self.audit = audit
        self.clock = clock
        self.on_status = on_status
        self.on_summary = on_summary
        self.set_legal_hold = set_legal_hold
        self._lock = threading.RLock()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._commands = CommandVerifier(state_dir, device_id, self.trusted_signers)
        self.time = TimeGuard(state_dir, boottime_clock)
        self.clock_synced = clock_synced  # None: not required ([device] require_clock_sync)
        # A bundle refused on the clock, and the time before which retrying is pointless.
        self._clock_wait: tuple[Path, float] | None = None
        self._active: Active | None = None
        self._pending: tuple[Path, float] | None = None
        self._idle_counters = Counters()
        self._status = DeploymentStatus(False, "no_bundle", "no watchlist bundle loaded")
        self._state = read_state(self._state_path)
        self.state_error: str | None = None
        self._state_dirty = False
        self.ledger = AdjudicationLedger(state_dir / LEDGER_FILE)

    # --- state --------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _write_state(self) -> None:
        """Persist the state atomically; on a disk error keep it dirty for :meth:`tick`."""
        try:
            write_atomic(self._state_path, json.dumps(self._state).encode("utf-8"))
        except OSError as exc:
            if self.state_error is None:
                log.error("deployment state %s not written (%s); kept in memory, retried",
                          self._state_path, exc.strerror)  # fmt: skip
            self.state_error = f"deployment state not written: {exc.strerror}"
            self._state_dirty = True
            return
        if self.state_error is not None:
            log.warning("deployment state %s written again", self._state_path)
        self.state_error = None
        self._state_dirty = False

    def _mark_ended(self, bundle_id: str) -> None:
        """Remember an ended bundle (the last 200) so it never arms again; persisted."""
        self._state["ended"] = [*self._state["ended"], bundle_id][-200:]
        self._write_state()

    def flush(self) -> None:
        """Retry what a failing disk refused (state, ledger, clock); called by :meth:`tick`."""
        if self._state_dirty:
            self._write_state()
        self.ledger.flush()
        if self.time.error is not None:
            self.time.flush()

    @property
    def persist_error(self) -> str | None:
        """Why some state is only in memory right now, or None."""
        return self.state_error or self.ledger.write_error or self.time.error

    # --- what the daemon reads ----------------------------------------------------------

    @property
    def status(self) -> DeploymentStatus:
        return self._status

    @property
    def armed(self) -> bool:
        return self._active is not None

    @property
    def watchlist(self) -> Watchlist | None:
        active = self._active
        return active.watchlist if active is not None else None

    @property
    def header(self) -> BundleHeader | None:
        active = self._active
        return active.opened.header if active is not None else None

    @property
    def threshold(self) -> float | None:
        active = self._active
        return active.opened.header.threshold if active is not None else None

    @property
    def counters(self) -> Counters:
        active = self._active
        return active.counters if active is not None else self._idle_counters

    # --- callbacks ----------------------------------------------------------------------

    def _set_status(self, status: DeploymentStatus) -> None:
        self._status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("status callback failed")

    def _publish_summary(self, summary: dict[str, Any]) -> None:
        if self.on_summary is not None:
            try:
                self.on_summary(summary)
            except Exception:
                log.exception("summary callback failed")
