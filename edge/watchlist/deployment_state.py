"""The deployment's shared state (part of :mod:`edge.watchlist.deployment`).

One :class:`DeploymentState` is owned by the
:class:`~edge.watchlist.deployment.DeploymentManager` and handed to the parts that work
on it: the ender (:class:`~edge.watchlist.deployment_end.DeploymentEnder`), the loader
(:class:`~edge.watchlist.deployment_load.BundleLoader`) and the command handler
(:class:`~edge.watchlist.deployment_commands.CommandHandler`). This module owns every
field they share, under one lock, so the state machine's invariants read in one place:

- ``lock``: one re-entrant lock; every step that reads and changes ``active``,
  ``pending`` or ``clock_wait`` holds it (the daemon's thread, SIGHUP, the control inbox);
- ``active``: the armed deployment (:class:`~edge.watchlist.deployment_status.Active`),
  or None: disarmed. Only the loader sets it, only the ender clears it;
- ``pending``: a bundle whose window has not opened, and when it opens;
  ``clock_wait``: a bundle refused on the clock, and the time before which retrying is
  pointless (both retried by :meth:`~edge.watchlist.deployment_load.BundleLoader.tick`);
- ``status``: armed or not and why; :meth:`DeploymentState.set_status` tells the
  ``on_status`` callback;
- the persisted part (``deployment-state.json``: the last accepted sequence number and
  bundle id, the ids of ended bundles), replaced atomically. A disk that refuses the write
  never stops the daemon: the state stays in memory, :attr:`DeploymentState.error` says
  so and :meth:`DeploymentState.flush` writes it once the disk takes it.

Every part logs as ``edge.watchlist.deployment``, the manager's one logger.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.watchlist.deployment_files import read_state
from edge.watchlist.deployment_status import Active, Counters, DeploymentStatus
from edge.watchlist.statefile import write_atomic

log = logging.getLogger("edge.watchlist.deployment")

LEDGER_FILE = "adjudications.json"

StatusCallback = Callable[[DeploymentStatus], None]
"""Told each new :class:`~edge.watchlist.deployment_status.DeploymentStatus`."""

ENDED_KEPT = 200
"""How many ended bundle ids are remembered (so that none of them ever arms again)."""


class DeploymentState:
    """The fields the parts of the deployment manager share, and their persistence;
    :class:`~edge.watchlist.deployment.DeploymentManager` is the class to use."""

    def __init__(self, path: Path, on_status: StatusCallback | None = None) -> None:
        self.path = path
        self.on_status = on_status
        self.lock = threading.RLock()
        self.active: Active | None = None
        self.pending: tuple[Path, float] | None = None
        self.clock_wait: tuple[Path, float] | None = None
        self.idle_counters = Counters()
        self.status = DeploymentStatus(False, "no_bundle", "no watchlist bundle loaded")
        self._saved: dict[str, Any] = read_state(path)
        self.error: str | None = None
        self._dirty = False

    # --- the persisted part -------------------------------------------------------------

    @property
    def last_sequence(self) -> int | None:
        """The sequence number of the last bundle accepted (a lower one is a replay)."""
        seq: int | None = self._saved["last_sequence"]
        return seq

    @property
    def last_bundle_id(self) -> str | None:
        bundle_id: str | None = self._saved["last_bundle_id"]
        return bundle_id

    def was_ended(self, bundle_id: str) -> bool:
        """Whether a bundle's deployment was ended (such a bundle never arms again)."""
        return bundle_id in self._saved["ended"]

    def record_armed(self, sequence: int, bundle_id: str) -> None:
        """Remember the bundle just armed (no older one is accepted after it); persisted."""
        self._saved["last_sequence"] = sequence
        self._saved["last_bundle_id"] = bundle_id
        self.write()

    def mark_ended(self, bundle_id: str) -> None:
        """Remember an ended bundle (the last :data:`ENDED_KEPT`); persisted."""
        self._saved["ended"] = [*self._saved["ended"], bundle_id][-ENDED_KEPT:]
        self.write()

    def write(self) -> None:
        """Persist atomically; on a disk error keep it dirty for :meth:`flush`."""
        try:
            write_atomic(self.path, json.dumps(self._saved).encode("utf-8"))
        except OSError as exc:
            if self.error is None:
                log.error("deployment state %s not written (%s); kept in memory, retried",
                          self.path, exc.strerror)  # fmt: skip
            self.error = f"deployment state not written: {exc.strerror}"
            self._dirty = True
            return
        if self.error is not None:
            log.warning("deployment state %s written again", self.path)
        self.error = None
        self._dirty = False

    def flush(self) -> None:
        """Write what a failing disk refused, if anything."""
        if self._dirty:
            self.write()

    # --- what the daemon reads ----------------------------------------------------------

    @property
    def counters(self) -> Counters:
        """The armed deployment's counters, or idle ones (counted, never reported)."""
        active = self.active
        return active.counters if active is not None else self.idle_counters

    def set_status(self, status: DeploymentStatus) -> None:
        """Take a new status and tell the callback (whose failure is logged, not raised)."""
        self.status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("status callback failed")
