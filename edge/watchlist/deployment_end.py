"""Ending a deployment: wipe, shred, destroy the key, summarise (safeguards 6, 14, 15).

Part of :mod:`edge.watchlist.deployment`. :class:`DeploymentEnder` owns every end of a
deployment, whatever ends it (the window, ``CLOCK_BOOTTIME``, a signed ``end_deployment``,
a replacement bundle): :meth:`~DeploymentEnder.finish` zeroes the decrypted watchlist
matrix in place, then overwrites and unlinks the bundle file, then destroys the deployment
key it was wrapped to (held only in RAM, :mod:`edge.watchlist.deployment_keys`), records
the bundle as ended, audits each step and publishes the end-of-deployment summary, in that
order: the order is the safeguard. :meth:`~DeploymentEnder.cancel_pending` ends a
deployment whose window has not opened (its pending bundle shredded, its key destroyed).
With the key gone, no copy of the bundle can be decrypted: the crypto-shred.

It works on the manager's :class:`~edge.watchlist.deployment_state.DeploymentState` and is
handed what else it needs: the configuration, the deployment keys, the adjudication ledger
(for the summary's counts), the audit log and the summary callback. The loader and the
command handler call it; it calls neither.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from edge.errors import BundleRefused
from edge.watchlist.adjudication import AdjudicationLedger
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import BundleHeader, bundle_digest, format_time, read_header
from edge.watchlist.deployment_files import discard
from edge.watchlist.deployment_keys import BundleKeys, recipient_key_id
from edge.watchlist.deployment_state import DeploymentState
from edge.watchlist.deployment_status import (
    DECISIONS,
    Counters,
    DeploymentConfig,
    DeploymentStatus,
    iso,
)
from edge.watchlist.signed_commands import SignedCommand

log = logging.getLogger("edge.watchlist.deployment")

SummaryCallback = Callable[[dict[str, Any]], None]
"""Told each end-of-deployment summary (the daemon publishes it, retained)."""


def deployment_summary(
    h: BundleHeader, device_id: str, armed_at: float | None, now: float, reason: str,
    counters: Counters, adjudications: dict[str, int],
) -> dict[str, Any]:  # fmt: skip
    """The end-of-deployment record for publication (safeguard 14): counts only.

    ``adjudications``: how many alerts ended with each decision (the last one recorded for
    each alert, :meth:`~edge.watchlist.adjudication.AdjudicationLedger.outcomes`). The
    same record is in the signed audit chain (``deployment_summary``): the control room's
    report is built from that entry, never from the unsigned ``deployment`` message."""
    return {
        "deployment_id": h.deployment_id,
        "bundle_id": h.bundle_id,
        "device_id": device_id,
        "location": h.location,
        "window": {"start": format_time(h.start), "end": format_time(h.end)},
        "armed_at": iso(armed_at) if armed_at is not None else None,
        "ended_at": iso(now),
        "end_reason": reason,
        "watchlist_size": h.subject_count,
        "threshold": h.threshold,
        "frames": counters.frames,
        "faces_processed": counters.faces_processed,
        "tracks": counters.tracks,
        "alerts": counters.alerts,
        "adjudications": dict(adjudications),
    }


class DeploymentEnder:
    """The end of a deployment (see the module docstring)."""

    def __init__(
        self,
        state: DeploymentState,
        config: DeploymentConfig,
        keys: BundleKeys,
        ledger: AdjudicationLedger,
        audit: AuditLog,
        on_summary: SummaryCallback | None = None,
    ) -> None:
        self._state = state
        self._config = config
        self._keys = keys
        self._ledger = ledger
        self._audit = audit
        self._on_summary = on_summary

    def finish(self, reason: str, now: float) -> dict[str, Any]:
        """End the armed deployment (wipe, shred, destroy the key, persist, audit,
        summarise, in that order) and return its summary. The caller holds the lock."""
        active = self._state.active
        assert active is not None
        h = active.opened.header
        summary = deployment_summary(h, self._config.device_id, active.armed_at, now, reason,
                                     active.counters, self._ledger.outcomes())  # fmt: skip
        # Wipe RAM first, then disk.
        active.watchlist.wipe()
        active.opened.wipe()
        self._state.active = None
        self._audit.append("watchlist_wiped", deployment_id=h.deployment_id,
                           bundle_id=h.bundle_id)
        # Shred the bundle file unless it has meanwhile been replaced by another bundle.
        shredded = False
        with contextlib.suppress(FileNotFoundError):
            if bundle_digest(active.path.read_bytes()) == active.digest:
                shredded = discard(active.path)
        self._audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                           bundle_id=h.bundle_id, path=str(active.path), file_removed=shredded)
        self.destroy_key(active.key_id, h.deployment_id, h.bundle_id)
        self._state.mark_ended(h.bundle_id)
        self._audit.append("disarmed", deployment_id=h.deployment_id, reason=reason)
        self._audit.append("deployment_summary", summary=summary)
        log.warning("disarmed: deployment %s ended (%s)", h.deployment_id, reason)
        self._state.set_status(
            DeploymentStatus(False, "ended", f"deployment {h.deployment_id} ended ({reason})",
                             h.deployment_id)
        )
        self._publish_summary(summary)
        return summary

    def cancel_pending(self, cmd: SignedCommand, now: float) -> dict[str, Any] | None:
        """End a deployment whose window has not opened yet: shred its pending bundle.

        None if the pending bundle is not ``cmd``'s deployment (or cannot be read)."""
        assert self._state.pending is not None
        path = self._state.pending[0]
        try:
            h = read_header(path.read_bytes(), self._config.trusted_signers)
        except (BundleRefused, OSError):
            return None
        if h.deployment_id != cmd.deployment_id:
            return None
        self._audit.append(
            "command_accepted", command=cmd.command, deployment_id=cmd.deployment_id,
            nonce=cmd.nonce, issued_at=format_time(cmd.issued_at),
        )
        self._state.pending = None
        removed = discard(path)
        self._audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                           bundle_id=h.bundle_id, path=str(path), file_removed=removed)
        device_id = self._config.device_id
        self.destroy_key(recipient_key_id(h, device_id), h.deployment_id, h.bundle_id)
        self._state.mark_ended(h.bundle_id)
        summary = deployment_summary(h, device_id, None, now, "cancelled_before_start",
                                     Counters(), dict.fromkeys(DECISIONS, 0))  # fmt: skip
        self._audit.append("deployment_summary", summary=summary)
        log.warning("deployment %s cancelled before its window opened", h.deployment_id)
        self._state.set_status(DeploymentStatus(
            False, "ended", f"deployment {h.deployment_id} cancelled before start",
            h.deployment_id,
        ))
        self._publish_summary(summary)
        return summary

    def destroy_key(self, kid: str | None, deployment_id: str | None,
                    bundle_id: str | None) -> None:  # fmt: skip
        """Overwrite and remove the deployment key (the crypto-shred) and audit it. The
        manager keeps no copy of a deployment key in memory after arming."""
        if kid is None:
            return  # a bundle wrapped to the device key (allow_device_key_bundles)
        result = self._keys.destroy(kid)
        self._audit.append("deployment_key_destroyed", deployment_id=deployment_id,
                           bundle_id=bundle_id, key_id=kid, result=result)
        if result.startswith("failed"):
            log.error("deployment key %s not destroyed: %s", kid[:16], result)

    def close(self) -> None:
        """Drop the decrypted watchlist from RAM (daemon shutdown); the bundle stays."""
        with self._state.lock:
            active = self._state.active
            if active is not None:
                active.watchlist.wipe()
                active.opened.wipe()
                self._state.active = None

    def _publish_summary(self, summary: dict[str, Any]) -> None:
        if self._on_summary is not None:
            try:
                self._on_summary(summary)
            except Exception:
                log.exception("summary callback failed")
