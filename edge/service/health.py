"""Loop check-ins, and a systemd watchdog pinged only while every loop is alive.

Each long-running loop (capture, inference, publisher) is registered with a
maximum age and calls :meth:`HealthMonitor.checkin` every time round. The
:class:`WatchdogPinger` thread pings systemd (``WATCHDOG=1``) every half
watchdog period, but only while no loop is stale: if one stalls, the pings
stop, the unit's ``WatchdogSec=`` expires and systemd restarts the service
(``Restart=on-failure``). A thread that is merely alive is not enough.

    monitor = HealthMonitor()
    monitor.register("capture", settings.health.max_age_s)
    pinger = WatchdogPinger(monitor, SystemdNotifier())
    pinger.start()        # does nothing without WatchdogSec=
    ...                   # in the capture loop: monitor.checkin("capture")
    pinger.stop()
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.delivery.outbox import OutboxError, OutboxFull
from edge.delivery.publish import Publisher
from edge.service.sdnotify import SystemdNotifier

__all__ = ["AuditDelivery", "HealthMonitor", "WatchdogPinger"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(slots=True)
class _Loop:
    max_age_s: float
    last: float


class HealthMonitor:
    """When each registered loop last checked in. Thread-safe.

    ``clock`` is monotonic seconds (tests pass a fake one). With no loop
    registered the monitor is healthy.
    """

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._loops: dict[str, _Loop] = {}
        self._lock = threading.Lock()

    def register(self, name: str, max_age_s: float) -> None:
        """Watch loop ``name``; registering counts as its first check-in."""
        if max_age_s <= 0:
            raise ValueError("max_age_s must be positive")
        with self._lock:
            self._loops[name] = _Loop(max_age_s, self._clock())

    def unregister(self, name: str) -> None:
        """Stop watching ``name`` (a loop that ended on purpose, e.g. at shutdown)."""
        with self._lock:
            self._loops.pop(name, None)

    def checkin(self, name: str) -> None:
        """Loop ``name`` is alive now. ``KeyError`` if it was never registered."""
        now = self._clock()
        with self._lock:
            self._loops[name].last = now

    def ages(self, now: float | None = None) -> dict[str, float]:
        """Seconds since each loop's last check-in."""
        t = self._clock() if now is None else now
        with self._lock:
            return {name: t - loop.last for name, loop in self._loops.items()}

    def stale(self, now: float | None = None) -> list[str]:
        """Names of the loops whose last check-in is older than their max age, sorted."""
        t = self._clock() if now is None else now
        with self._lock:
            return sorted(
                name for name, loop in self._loops.items() if t - loop.last > loop.max_age_s
            )

    def healthy(self, now: float | None = None) -> bool:
        """True when no loop is stale."""
        return not self.stale(now)


AUDIT_PENDING_ALARM_S = 3600.0
"""An audit entry the control room has not acknowledged after this long raises the alarm."""


class AuditDelivery:
    """The audit entries to the control room (issue 13, item 4): never dropped silently.

    :meth:`publish` is the audit log's ``publish`` callback: the entry goes to the
    publisher's outbox (audit entries may use its reserve, so a flood of alerts cannot
    crowd them out), else to its in-memory queue; one that neither takes is counted in
    :attr:`lost` (it stays in the local chain, and the control room sees the gap).
    :meth:`check` (every tick) looks at the undelivered audit rows and returns the alarm
    for ``status`` and ``STATUS=``, None while all is well. Lost entries keep the alarm
    on until the process restarts: the local log holds them, the control room does not.
    """

    def __init__(self, publisher: Publisher, max_pending_s: float = AUDIT_PENDING_ALARM_S) -> None:
        self.publisher = publisher
        self.max_pending_s = max_pending_s
        self.lost = 0

    def publish(self, entry: Mapping[str, Any]) -> None:
        payload = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
        msg_id = f"audit-{entry['seq']}-{str(entry['hash'])[:16]}"
        try:
            self.publisher.enqueue(msg_id, "audit", payload)
        except OutboxFull:
            self.lost += 1
            log.error("audit entry %s not queued for the control room (outbox and memory "
                      "full); on status", entry["seq"])  # fmt: skip

    def check(self, now: float) -> str | None:
        topic = self.publisher.topic("audit")
        try:
            pending, oldest = self.publisher.outbox.oldest_pending(topic)
        except OutboxError:  # a failing disk is on status already
            pending, oldest = 0, None
        held = sum(1 for item in self.publisher.held.items() if item.topic == topic)
        parts: list[str] = []
        if self.lost:
            parts.append(f"{self.lost} audit entries not queued for the control room "
                         "(kept in the local log)")  # fmt: skip
        if oldest is not None and now - oldest > self.max_pending_s:
            parts.append(f"{pending + held} audit entries undelivered, the oldest for "
                         f"{(now - oldest) / 60:.0f} min")  # fmt: skip
        return "; ".join(parts) or None


class WatchdogPinger(threading.Thread):
    """Pings the systemd watchdog every ``interval_s`` while ``monitor`` is healthy.

    ``interval_s`` defaults to half of :meth:`SystemdNotifier.watchdog_period`;
    with no watchdog configured (and no interval given) :attr:`enabled` is False
    and the thread ends at once. A stall is logged once, naming the stale loops;
    recovery is logged once too.
    """

    def __init__(
        self,
        monitor: HealthMonitor,
        notifier: SystemdNotifier,
        *,
        interval_s: float | None = None,
    ) -> None:
        super().__init__(name="watchdog", daemon=True)
        self._monitor = monitor
        self._notifier = notifier
        if interval_s is None:
            period = notifier.watchdog_period()
            interval_s = None if period is None else period / 2
        if interval_s is not None and interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self.interval_s = interval_s
        self._stop_event = threading.Event()
        self._cond = threading.Condition()
        self._ticks = 0
        self._pings = 0
        self._stalled: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.interval_s is not None

    @property
    def ticks(self) -> int:
        """How many times the pinger has decided whether to ping."""
        with self._cond:
            return self._ticks

    @property
    def pings(self) -> int:
        """How many pings were sent."""
        with self._cond:
            return self._pings

    @property
    def stalled(self) -> list[str]:
        """The stale loops at the last tick (empty while healthy)."""
        with self._cond:
            return list(self._stalled)

    def tick(self) -> bool:
        """One decision: ping if every loop is fresh. True when a ping was sent."""
        stale = self._monitor.stale()
        sent = False
        if not stale:
            sent = self._notifier.watchdog_ping()
        with self._cond:
            previous = self._stalled
            self._stalled = stale
            self._ticks += 1
            self._pings += int(sent)
            self._cond.notify_all()
        if stale and stale != previous:
            ages = self._monitor.ages()
            detail = ", ".join(f"{name} ({ages.get(name, 0.0):.1f} s)" for name in stale)
            log.error("watchdog: not pinging systemd; stalled since last check-in: %s", detail)
        elif previous and not stale:
            log.warning("watchdog: all loops checking in again; pinging systemd")
        return sent

    def wait_ticks(self, count: int, timeout: float) -> bool:
        """Block until :attr:`ticks` reaches ``count`` (or ``timeout`` seconds pass)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._ticks >= count, timeout)

    def run(self) -> None:
        interval = self.interval_s
        if interval is None:
            return
        while True:
            try:
                self.tick()
            except Exception:  # a failed tick must not end the thread silently
                log.exception("watchdog: tick failed")
            if self._stop_event.wait(interval):
                return

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop pinging and wait for the thread (if it was started)."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
