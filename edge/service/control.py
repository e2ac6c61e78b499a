"""Control-room messages on the daemon's side: the bounded inbox and how each is applied.

Split from :mod:`edge.service.daemon` (which re-exports :func:`apply_inbound` and
:data:`INBOX_MAX`). The publisher's callbacks, on paho's network thread, only put what
the :class:`~edge.delivery.inbound.InboundGate` let through into :class:`ControlInbox`
(bounded: a full inbox is a refusal, counted) and count the gate's refusals; the main
loop, between frames, takes at most :data:`INBOX_MAX` messages a turn and applies each
with :func:`apply_inbound` (the deployment verifies the signature and applies it), and
audits the refusal counts at most once a tick. Nothing a message holds stops the loop:
a refusal is audited by the deployment with its reason, a bug as ``inbound_failed``
with the kind and size, never the bytes.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
from collections.abc import Callable

from edge.delivery.inbound import Inbound
from edge.errors import EdgeError
from edge.watchlist.audit import AuditLog
from edge.watchlist.deployment import DeploymentManager

log = logging.getLogger("edge.service.daemon")  # the daemon's log name, as before the split

INBOX_MAX = 64
"""Control-room messages waiting for the main loop; more are refused (and counted)."""


def apply_inbound(deployment: DeploymentManager, audit: AuditLog, msg: Inbound,
                  now: float) -> str:  # fmt: skip
    """Apply one control-room message (the main loop's handler; the fuzz test's target).

    Returns ``"accepted"``, ``"refused"`` (a reason was audited by the deployment) or
    ``"failed"`` (a bug, audited as ``inbound_failed``); never raises.
    """
    try:
        if msg.kind == "adjudications":
            deployment.handle_adjudication(msg.payload, now)
        else:
            deployment.handle_command(msg.payload, now)
    except EdgeError as exc:
        log.warning("control-room %s refused: %s", msg.kind, str(exc)[:200])
        return "refused"
    except Exception:
        log.exception("control-room %s could not be handled", msg.kind)
        with contextlib.suppress(Exception):
            audit.append("inbound_failed", kind=msg.kind, size=len(msg.payload))
        return "failed"
    return "accepted"


class ControlInbox:
    """The bounded queue between paho's thread and the main loop, and the refusal counts."""

    def __init__(self, maxsize: int = INBOX_MAX) -> None:
        self.maxsize = maxsize
        self.queue: queue.Queue[Inbound] = queue.Queue(maxsize=maxsize)
        self._refusals: collections.Counter[str] = collections.Counter()
        self._refusals_lock = threading.Lock()

    # -- paho's thread (through the publisher's gate) -----------------------------------

    def offer(self, msg: Inbound) -> bool:
        try:
            self.queue.put_nowait(msg)
        except queue.Full:
            return False
        return True

    def count_refused(self, kind: str, reason: str, _size: int) -> None:
        with self._refusals_lock:
            self._refusals[f"{kind}:{reason}"] += 1

    # -- the main loop ------------------------------------------------------------------

    def audit_refusals(self, audit: AuditLog) -> None:
        """One audit entry per tick at most for what the gate refused (counts only)."""
        with self._refusals_lock:
            counts, self._refusals = dict(self._refusals), collections.Counter()
        if counts:
            audit.append("inbound_refused", counts=counts)

    def handle(self, deployment: DeploymentManager, audit: AuditLog,
               clock: Callable[[], float]) -> bool:  # fmt: skip
        """Apply queued control-room messages; True if there were any. Never raises."""
        handled = False
        for _ in range(self.maxsize):
            try:
                msg = self.queue.get_nowait()
            except queue.Empty:
                break
            handled = True
            apply_inbound(deployment, audit, msg, clock())
        return handled
