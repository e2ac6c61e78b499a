"""The daemon's housekeeping: retention purges judged on the device's time guard, and the
guard's clock events audited (issue 13 item 2).

:class:`Housekeeping` is what :class:`~edge.service.daemon.Daemon` builds once and calls
between frames: :meth:`~Housekeeping.purge` (at start, then every purge interval, on
``CLOCK_BOOTTIME``), :meth:`~Housekeeping.note_bundle` before each bundle load (a signed
``created_at`` is a floor under the real time: no purge below it), and
:meth:`~Housekeeping.note` for ``status``. It wires the deployment manager's
:class:`~edge.watchlist.timeguard.TimeGuard`: a forward jump, its confirmation by time
sync or its correction is audited (``clock_jump``, ``clock_jump_confirmed``,
``clock_jump_corrected``) and logged, and ``sync_probe`` confirms jumps.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.errors import BundleRefused
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import read_header
from edge.watchlist.deployment_keys import staged_path
from edge.watchlist.retention import Purgeable, RetentionPolicy
from edge.watchlist.timeguard import TimeGuard, sync_token

log = logging.getLogger(__name__)

MAX_HEADER_READ = 300 << 20


class Housekeeping:
    """Purges of one store, judged on ``guard``; audits the guard's clock events."""

    def __init__(
        self,
        audit: AuditLog,
        store: Purgeable,
        guard: TimeGuard,
        signers: Sequence[Ed25519PublicKey],
        *,
        days: int,
        interval_s: float,
        store_name: str = "outbox",
        sync_probe: Callable[[], str | None] | None = sync_token,
    ) -> None:
        self.audit = audit
        self.store = store
        self.store_name = store_name
        self.guard = guard
        self.signers = list(signers)
        guard.on_event = self._clock_event
        guard.sync_probe = sync_probe
        self.retention = RetentionPolicy(audit, days, interval_s, clock=guard)
        reset = guard.take_reset()
        if reset is not None:  # ``edge clock reset`` ran while the daemon was stopped
            self._clock_event("clock_mark_reset", reset)

    def _clock_event(self, event: str, fields: dict[str, Any]) -> None:
        log.warning("%s: %s", event.replace("_", " "), fields)
        self.audit.append(event, **fields)

    def note_bundle(self, path: Path) -> None:
        """Take a verified bundle's ``created_at`` (the installed one, and one delivered
        beside it to ``<bundle>.new``) as a floor under the real time."""
        for candidate in (path, staged_path(path)):
            with contextlib.suppress(BundleRefused, OSError, ValueError):
                with candidate.open("rb") as fh:
                    data = fh.read(MAX_HEADER_READ + 1)
                if len(data) <= MAX_HEADER_READ:
                    header = read_header(data, self.signers)
                    self.guard.note_signed_time(header.created_at.timestamp())

    def purge(self, now: float, *, force: bool = False) -> int | None:
        """Purge if due (or ``force``); the count, or None if not run or held."""
        if force:
            return self.retention.run(self.store, self.store_name, now)
        return self.retention.run_if_due(self.store, self.store_name, now)

    def note(self) -> str | None:
        """One line for ``status`` while purges are held or a jump is unconfirmed."""
        if self.retention.held is not None:
            return f"purges held: {self.retention.held}"
        return self.guard.jump_note()
