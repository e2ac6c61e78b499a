"""Ending a deployment: wipe, shred, destroy the key, summarise (safeguards 6, 14, 15).

Part of :mod:`edge.watchlist.deployment`. Owns every end of a deployment, whatever ends
it (the window, ``CLOCK_BOOTTIME``, a signed ``end_deployment``, a replacement bundle):
:meth:`~DeploymentEnding._finish` zeroes the decrypted watchlist matrix in place, then
overwrites and unlinks the bundle file, then destroys the deployment key it was wrapped
to (held only in RAM, :mod:`edge.watchlist.deployment_keys`), records the bundle as ended,
audits each step and publishes the end-of-deployment summary, in that order: the order is
the safeguard. :meth:`~DeploymentEnding._cancel_pending` ends a deployment whose window
has not opened (its pending bundle shredded, its key destroyed). With the key gone, no
copy of the bundle can be decrypted: the crypto-shred.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from edge.errors import BundleRefused
from edge.watchlist.bundle import BundleHeader, bundle_digest, format_time, read_header
from edge.watchlist.deployment_core import DeploymentCore
from edge.watchlist.deployment_files import discard
from edge.watchlist.deployment_keys import recipient_key_id
from edge.watchlist.deployment_status import DECISIONS, Counters, DeploymentStatus, iso
from edge.watchlist.signed_commands import SignedCommand

log = logging.getLogger("edge.watchlist.deployment")


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


class DeploymentEnding(DeploymentCore):
    """The end of a deployment (see the module docstring)."""

    def _finish(self, reason: str, now: float) -> dict[str, Any]:
        active = self._active
        assert active is not None
        h = active.opened.header
        summary = deployment_summary(h, self.device_id, active.armed_at, now, reason,
                                     active.counters, self.ledger.outcomes())  # fmt: skip
        # Wipe RAM first, then disk.
        active.watchlist.wipe()
        active.opened.wipe()
        self._active = None
        self.audit.append("watchlist_wiped", deployment_id=h.deployment_id,
                          bundle_id=h.bundle_id)
        # Shred the bundle file unless it has meanwhile been replaced by another bundle.
        shredded = False
        with contextlib.suppress(FileNotFoundError):
            if bundle_digest(active.path.read_bytes()) == active.digest:
                shredded = discard(active.path)
        self.audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                          bundle_id=h.bundle_id, path=str(active.path), file_removed=shredded)
        self._destroy_key(active.key_id, h.deployment_id, h.bundle_id)
        self._mark_ended(h.bundle_id)
        self.audit.append("disarmed", deployment_id=h.deployment_id, reason=reason)
        self.audit.append("deployment_summary", summary=summary)
        log.warning("disarmed: deployment %s ended (%s)", h.deployment_id, reason)
        self._set_status(
            DeploymentStatus(False, "ended", f"deployment {h.deployment_id} ended ({reason})",
                             h.deployment_id)
        )
        self._publish_summary(summary)
        return summary

    def _cancel_pending(self, cmd: SignedCommand, now: float) -> dict[str, Any] | None:
        """End a deployment whose window has not opened yet: shred its pending bundle."""
        assert self._pending is not None
        path = self._pending[0]
        try:
            h = read_header(path.read_bytes(), self.trusted_signers)
        except (BundleRefused, OSError):
            return None
        if h.deployment_id != cmd.deployment_id:
            return None
        self.audit.append(
            "command_accepted", command=cmd.command, deployment_id=cmd.deployment_id,
            nonce=cmd.nonce, issued_at=format_time(cmd.issued_at),
        )
        self._pending = None
        removed = discard(path)
        self.audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                          bundle_id=h.bundle_id, path=str(path), file_removed=removed)
        self._destroy_key(recipient_key_id(h, self.device_id), h.deployment_id, h.bundle_id)
        self._mark_ended(h.bundle_id)
        summary = deployment_summary(h, self.device_id, None, now, "cancelled_before_start",
                                     Counters(), dict.fromkeys(DECISIONS, 0))  # fmt: skip
        self.audit.append("deployment_summary", summary=summary)
        log.warning("deployment %s cancelled before its window opened", h.deployment_id)
        self._set_status(DeploymentStatus(
            False, "ended", f"deployment {h.deployment_id} cancelled before start",
            h.deployment_id,
        ))
        self._publish_summary(summary)
        return summary

    def _destroy_key(self, kid: str | None, deployment_id: str | None,
                     bundle_id: str | None) -> None:  # fmt: skip
        """Overwrite and remove the deployment key (the crypto-shred) and audit it. The
        manager keeps no copy of a deployment key in memory after arming."""
        if kid is None:
            return  # a bundle wrapped to the device key (allow_device_key_bundles)
        result = self.keys.destroy(kid)
        self.audit.append("deployment_key_destroyed", deployment_id=deployment_id,
                          bundle_id=bundle_id, key_id=kid, result=result)
        if result.startswith("failed"):
            log.error("deployment key %s not destroyed: %s", kid[:16], result)

    def close(self) -> None:
        """Drop the decrypted watchlist from RAM (daemon shutdown); the bundle stays."""
        with self._lock:
            if self._active is not None:
                self._active.watchlist.wipe()
                self._active.opened.wipe()
                self._active = None
