"""What the device may believe about the time (issue 13 item 2).

A Raspberry Pi has no RTC: it boots with the last time fake-hwclock saved, or with
whatever an attacker sets. So the wall clock alone never decides:

- **A persisted high-water mark.** :meth:`TimeGuard.observe` keeps the latest wall time
  this device has seen, in ``<state_dir>/clock.json`` (replaced atomically, written at
  least every :data:`PERSIST_STEP_S` while it advances and at every decision). The
  deployment manager never arms or accepts a command at a time more than
  :data:`TOLERANCE_S` below it (:meth:`TimeGuard.behind`), and decides "has the window
  ended" on ``max(now, high-water mark)``, so a unit switched off past its window
  shreds its bundle at start even when it boots with a clock that is behind.
- **A monotonic bound.** :meth:`TimeGuard.boottime` reads ``CLOCK_BOOTTIME`` (it
  counts suspend and cannot be set): a deployment also ends when the rest of its window
  at arming has elapsed on it, whatever the wall clock says afterwards.

- **Synchronised before arming (optional).** With ``[device] require_clock_sync``, the
  deployment manager arms only while :func:`clock_synchronised` says the kernel clock is
  disciplined by NTP (chrony or systemd-timesyncd clear the kernel's ``STA_UNSYNC``;
  it is what ``timedatectl show -p NTPSynchronized`` reports), and says why on
  ``status`` while it waits.

Not handled: a clock that jumps *forward* (set ahead by hand, or a bad NTP answer)
raises the mark with it; that ends a deployment early (the safe side) and makes the
device refuse to arm until the real time catches up. An operator who knows the mark is
wrong removes ``clock.json`` with the daemon stopped. Only a trusted time source
(``require_clock_sync`` with authenticated NTP, or an RTC) closes that.

A high-water mark that cannot be written (a full disk) stays in memory and
:attr:`TimeGuard.error` says so; a damaged file is a clear error at start (an operator
looks), never a silently reset mark. Injected ``boottime`` callables make this testable
without waiting.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from edge.errors import UsageError
from edge.watchlist.statefile import write_atomic

CLOCK_FILE: Final = "clock.json"
TOLERANCE_S: Final = 120.0
"""How far below the high-water mark a time may be (small NTP steps, slew)."""
PERSIST_STEP_S: Final = 60.0


def boottime() -> float:
    """Seconds on ``CLOCK_BOOTTIME`` (monotonic across suspend, not settable)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised (STA_UNSYNC)
TIMESYNCD_FLAG: Final = Path("/run/systemd/timesync/synchronized")


def clock_synchronised() -> bool:
    """True if the kernel clock is synchronised: ``adjtimex(2)`` with no change (modes 0)
    returns a state other than ``TIME_ERROR``. Where the call is refused (the unit's
    ``ProtectClock=yes`` filters it with EPERM), the file systemd-timesyncd touches once
    it has synchronised (:data:`TIMESYNCD_FLAG`) is the answer. Unknown means False."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex (208 bytes), all zero
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        state = -1
    if state >= 0:
        return state != _TIME_ERROR
    return TIMESYNCD_FLAG.exists()


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TimeGuard:
    """The time high-water mark of one device, and its monotonic clock."""

    def __init__(
        self, state_dir: Path, boottime_clock: Callable[[], float] = boottime
    ) -> None:
        self.path = state_dir / CLOCK_FILE
        self.boottime = boottime_clock
        self.error: str | None = None
        self.hwm = self._read()
        self._saved = self.hwm

    def _read(self) -> float:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return 0.0
        except (OSError, ValueError) as exc:
            raise UsageError(f"clock record {self.path} is unreadable: {exc}") from None
        hwm = raw.get("high_water_mark") if isinstance(raw, dict) else None
        if not isinstance(hwm, int | float) or isinstance(hwm, bool) or not math.isfinite(hwm) \
                or hwm < 0:
            raise UsageError(f"clock record {self.path} is malformed")
        return float(hwm)

    def observe(self, now: float, *, persist: bool = False) -> None:
        """Raise the mark to ``now`` if later; write it if it moved far enough (or
        ``persist``)."""
        if math.isfinite(now) and now > self.hwm:
            self.hwm = now
        if self.hwm > self._saved and (persist or self.hwm - self._saved >= PERSIST_STEP_S):
            self.flush()

    def flush(self) -> None:
        data = json.dumps({"high_water_mark": self.hwm, "at": iso(self.hwm)}).encode("ascii")
        try:
            write_atomic(self.path, data)
        except OSError as exc:
            self.error = f"clock record not written: {exc.strerror}"
            return
        self._saved = self.hwm
        self.error = None

    def behind(self, now: float) -> bool:
        """True if ``now`` is below the mark by more than the tolerance."""
        return now < self.hwm - TOLERANCE_S

    def effective(self, now: float) -> float:
        """The time to judge a window's end by: never earlier than the mark."""
        return max(now, self.hwm)

    def behind_message(self, now: float) -> str:
        return (
            f"the clock ({iso(now)}) is behind the latest time this device has seen "
            f"({iso(self.hwm)})"
        )
