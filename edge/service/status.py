"""What the daemon says about itself: ``stats``, the ``STATUS=`` line and the retained
``status`` topic's fields.

Split from :mod:`edge.service.daemon` (which re-exports :func:`read_temperature`; its
main loop decides *when* to say it). :class:`StatusReport` owns the figures and notes
the main loop and the capture thread feed it and composes them, counts only (never a
face, an id or a vector):

- ``stats`` (QoS 0, every ``stats_interval_s``): counters, frame rate, capture queue and
  drops, camera state, outbox pending, SoC temperature, uptime;
- the ``STATUS=`` line: the deployment's line, frame rate, camera, broker link, and
  whatever needs a person: ``not persisting: ...`` while the disk refuses writes, the
  clock's note (held purges, a pending jump), the audit alarm;
- the retained status's extra fields, returned only when the deployment state or one of
  those notes changed (so the retained message changes with the state, not the fps);
- following the disk (:meth:`StatusReport.check_persistence`): the problem is logged
  once when writes start failing and ``disk_writable_again`` audited when they work.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.delivery.publish import Publisher
from edge.service.capture import CaptureStatus
from edge.service.health import AuditDelivery
from edge.service.housekeeping import Housekeeping
from edge.watchlist.audit import AuditLog
from edge.watchlist.deployment import DeploymentManager, DeploymentStatus

log = logging.getLogger("edge.service.daemon")  # the daemon's log name, as before the split


def read_temperature() -> float | None:
    """The SoC temperature in °C where the kernel exposes it (Raspberry Pi, Jetson)."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000.0
    except (OSError, ValueError):
        return None


class StatusReport:
    """The daemon's figures and notes, and what ``stats``, ``STATUS=`` and ``status`` say."""

    def __init__(
        self,
        deployment: DeploymentManager,
        publisher: Publisher,
        audit: AuditLog,
        audit_delivery: AuditDelivery,
        housekeeping: Housekeeping,
        *,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self.deployment = deployment
        self.publisher = publisher
        self.audit = audit
        self.audit_delivery = audit_delivery
        self.housekeeping = housekeeping
        self.clock = clock
        self.started = started
        self.fps = 0.0
        self.capture: CaptureStatus | None = None
        self.persist_problem: str | None = None
        self.audit_alarm: str | None = None
        self._frames_window: collections.deque[float] = collections.deque()
        self._persist_since: float | None = None
        self._published: tuple[DeploymentStatus, str | None, str | None,
                               str | None] | None = None  # fmt: skip

    def on_capture_status(self, status: CaptureStatus) -> None:
        """The capture thread's callback."""
        self.capture = status
        if status.state == "reopening":
            log.warning(
                "camera lost (%s); reopening, attempt %s", status.last_error, status.attempts
            )

    def count_fps(self, now: float) -> None:
        window = self._frames_window
        window.append(now)
        while window and now - window[0] > 2.0:
            window.popleft()
        if len(window) > 1:
            self.fps = (len(window) - 1) / max(window[-1] - window[0], 1e-6)

    def stats(self) -> dict[str, Any]:
        """Counts only, for the ``stats`` topic: never a face, an id or a vector."""
        c = self.deployment.counters
        cap = self.capture
        return {
            "armed": self.deployment.armed,
            "fps": round(self.fps, 1),
            "frames": c.frames,
            "faces_seen": c.faces_processed,
            "tracks": c.tracks,
            "alerts": c.alerts,
            "queue": cap.queued if cap else 0,
            "dropped_frames": cap.drops if cap else 0,
            "camera": cap.state if cap else "starting",
            "outbox_pending": self.publisher.pending_count,
            "temperature_c": read_temperature(),
            "uptime_s": round(time.monotonic() - self.started),
        }

    def line(self, status: DeploymentStatus) -> str:
        """The ``STATUS=`` line."""
        cap = self.capture
        link = "broker connected" if self.publisher.connected else "broker offline"
        camera = cap.state if cap else "starting"
        line = f"{status.line()} | {self.fps:.1f} fps | camera {camera} | {link}"
        if self.persist_problem is not None:
            line += f" | not persisting: {self.persist_problem}"
        clock_note = self.housekeeping.note()
        if clock_note is not None:
            line += f" | {clock_note}"
        if self.audit_alarm is not None:
            line += f" | audit: {self.audit_alarm}"
        return line

    def check_persistence(self) -> None:
        """Follow the disk: say it on status while writes fail; audit when they work again."""
        self.audit.flush()
        problems = [p for p in (self.publisher.persist_error, self.audit.write_error,
                                self.deployment.persist_error) if p]  # fmt: skip
        held = len(self.publisher.held)
        if held:
            problems.append(f"{held} message(s) held in memory")
        problem = "; ".join(problems)[:300] or None
        if problem is not None and self._persist_since is None:
            self._persist_since = self.clock()
            log.error("state directory not writable: %s", problem)
        elif problem is None and self._persist_since is not None:
            log.warning("state directory writable again")
            self.audit.append(
                "disk_writable_again", since=_iso(self._persist_since),
                last_problem=self.persist_problem or "", audit_entries_lost=self.audit.dropped,
                messages_refused=self.publisher.held.refused,
            )  # fmt: skip
            self._persist_since = None
        self.persist_problem = problem
        self.audit_alarm = self.audit_delivery.check(self.clock())

    def retained_change(self, status: DeploymentStatus) -> dict[str, Any] | None:
        """The retained status's extra fields if the state or a note changed, else None."""
        clock_note = self.housekeeping.note()
        published = (status, self.persist_problem, clock_note, self.audit_alarm)
        if published == self._published:
            return None
        self._published = published
        extra: dict[str, Any] = {"code": status.code}
        if self.persist_problem:
            extra["not_persisting"] = self.persist_problem
        if clock_note:
            extra["clock"] = clock_note
        if self.audit_alarm:
            extra["audit_alarm"] = self.audit_alarm
        if status.deployment_id:
            extra["deployment_id"] = status.deployment_id
        if status.window_end:
            extra["window_end"] = status.window_end
        return extra


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
