"""What the device may believe about the time (issue 13 item 2).

A Raspberry Pi has no RTC: it boots with the last time fake-hwclock saved, or with
whatever an attacker sets. So the wall clock alone never decides:

- **A persisted high-water mark.** :meth:`TimeGuard.observe` keeps the latest time this
  device has reason to believe, in ``<state_dir>/clock.json`` (replaced atomically,
  written at least every :data:`PERSIST_STEP_S` while it advances and at every
  decision). The deployment manager never arms or accepts a command at a time more than
  :data:`TOLERANCE_S` below it (:meth:`TimeGuard.behind`), and decides "has the window
  ended" on ``max(now, high-water mark)``, so a unit switched off past its window
  shreds its bundle at start even when it boots with a clock that is behind. Retention
  (:mod:`edge.watchlist.retention`) never purges on a time below it either, nor below
  the ``created_at`` of a signed bundle seen (:meth:`TimeGuard.note_signed_time`).
- **A monotonic bound.** :meth:`TimeGuard.boottime` reads ``CLOCK_BOOTTIME`` (it
  counts suspend and cannot be set): a deployment also ends when the rest of its window
  at arming has elapsed on it, whatever the wall clock says afterwards.
- **Forward jumps.** Between two observations the wall clock should advance as far as
  ``CLOCK_BOOTTIME`` does (NTP's slewing moves both). When it gains more than
  :data:`TOLERANCE_S`, that is a jump: :attr:`TimeGuard.on_event` gets ``clock_jump``
  with its size (the deployment manager audits it), and the time gained is *not*
  believed until a time synchronisation after the jump confirms it
  (:func:`sync_token` changes) or the wall clock comes back to the mark (the jump was
  corrected). Meanwhile the mark advances on ``CLOCK_BOOTTIME`` only, so purges are
  judged on the time the device had plus the time that really elapsed: nothing
  undelivered is purged on time a jump gained. A jump still ends an armed deployment
  (its window end is judged on ``max(now, mark)``: the safe side), and since the mark
  never took the jumped time, a device whose clock is set right again is not refused
  until real time catches up. A pending jump survives a restart (persisted).
- **Synchronised before arming (optional).** With ``[device] require_clock_sync``, the
  deployment manager arms only while :func:`clock_synchronised` says the kernel clock is
  disciplined by NTP (chrony or systemd-timesyncd clear the kernel's ``STA_UNSYNC``;
  it is what ``timedatectl show -p NTPSynchronized`` reports), and says why on
  ``status`` while it waits.

What is believed at start: a clock *ahead* of the mark at the first observation of a
process is the time the unit was off (an RTC, or NTP before the unit started) and is
taken, unless a jump was still unconfirmed at the last stop. A mark that is wrong
anyway (a clock set ahead while the unit was off, a bad NTP answer that a second one
confirmed) makes the device refuse to arm on the right time; the technician fixes the
clock and runs ``edge clock reset`` (the daemon stopped; audited): one command, no file
edited by hand. Only a trusted time source (authenticated NTP, an RTC) closes that.

A high-water mark that cannot be written (a full disk) stays in memory and
:attr:`TimeGuard.error` says so; a damaged file is a clear error at start (an operator
looks), never a silently reset mark. Injected ``boottime`` and ``sync_probe`` callables
make this testable without waiting.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import fcntl
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from edge.compat import UTC
from edge.errors import UsageError
from edge.watchlist.statefile import write_atomic

CLOCK_FILE: Final = "clock.json"
LOCK_FILE: Final = "daemon.lock"
TOLERANCE_S: Final = 120.0
"""How far below the high-water mark a time may be (small NTP steps, slew), and how much
the wall clock may gain on ``CLOCK_BOOTTIME`` between two observations before it is a
jump."""
PERSIST_STEP_S: Final = 60.0


def boottime() -> float:
    """Seconds on ``CLOCK_BOOTTIME`` (monotonic across suspend, not settable)."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


_TIME_ERROR: Final = 5  # adjtimex(2): the clock is not synchronised (STA_UNSYNC)
TIMESYNCD_FLAG: Final = Path("/run/systemd/timesync/synchronized")


def _kernel_state() -> int:
    """``adjtimex(2)`` with no change (modes 0): the clock state, or -1 if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex (208 bytes), all zero
        return int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return -1


def sync_token() -> str | None:
    """None unless the clock is synchronised now; else a token that changes with each new
    synchronisation where the system shows one (systemd-timesyncd touches
    :data:`TIMESYNCD_FLAG` at each; a clock set by hand sets ``STA_UNSYNC`` until NTP
    synchronises it again). Where ``adjtimex`` is refused (the unit's
    ``ProtectClock=yes`` filters it with EPERM), the flag alone answers."""
    state = _kernel_state()
    try:
        flag: int | None = TIMESYNCD_FLAG.stat().st_mtime_ns
    except OSError:
        flag = None
    if state >= 0:
        return None if state == _TIME_ERROR else f"kernel:{flag or 0}"
    return None if flag is None else f"timesyncd:{flag}"


def clock_synchronised() -> bool:
    """True if the kernel clock is synchronised (:func:`sync_token`); unknown is False."""
    return sync_token() is not None


def lock_state(state_dir: Path) -> int:
    """Hold ``<state_dir>/daemon.lock`` (``flock``) for this process's life: one daemon
    per state directory, and ``edge clock reset`` only while none runs. Returns the
    descriptor; raises :class:`UsageError` if another process holds it."""
    path = state_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise UsageError(f"cannot open {path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise UsageError(
            f"an edge daemon is running on {state_dir} (stop it first: systemctl stop edge)"
        ) from None
    return fd


def unlock_state(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


EventSink = Callable[[str, dict[str, Any]], None]


class TimeGuard:
    """The time high-water mark of one device, its monotonic clock, and forward jumps."""

    def __init__(
        self,
        state_dir: Path,
        boottime_clock: Callable[[], float] = boottime,
        *,
        sync_probe: Callable[[], str | None] | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.path = state_dir / CLOCK_FILE
        self.boottime = boottime_clock
        self.sync_probe = sync_probe  # None: no time source to confirm a jump with
        self.on_event = on_event
        self.error: str | None = None
        self.signed_floor = 0.0
        self.reset_from: float | None = None  # set by ``edge clock reset``, audited at start
        self.hwm, self.jump = self._read()
        self._saved: tuple[float, dict[str, Any] | None] = (self.hwm, self.jump)
        self._last: tuple[float, float] | None = None  # (wall, boottime) last observed
        self._token: str | None = None  # the sync token at the last observation

    def _read(self) -> tuple[float, dict[str, Any] | None]:
        try:
            raw = json.loads(self.path.read_text("utf-8"))
        except FileNotFoundError:
            return 0.0, None
        except (OSError, ValueError) as exc:
            raise UsageError(f"clock record {self.path} is unreadable: {exc}") from None
        hwm = raw.get("high_water_mark") if isinstance(raw, dict) else None
        if not isinstance(hwm, int | float) or not _finite(hwm) or hwm < 0:
            raise UsageError(f"clock record {self.path} is malformed")
        jump = raw.get("jump")
        ok = jump is None or (
            isinstance(jump, dict) and _finite(jump.get("size_s"))
            and _finite(jump.get("wall")) and (jump.get("token") is None
                                               or isinstance(jump.get("token"), str))
        )  # fmt: skip
        if not ok:
            raise UsageError(f"clock record {self.path} is malformed (jump)")
        reset = raw.get("reset_from")
        if reset is not None and not (isinstance(reset, int | float) and _finite(reset)):
            raise UsageError(f"clock record {self.path} is malformed (reset)")
        self.reset_from = None if reset is None else float(reset)
        return float(hwm), jump

    # -- observing --------------------------------------------------------------------

    def observe(self, now: float, *, persist: bool = False) -> None:
        """Take the wall time ``now``: raise the mark, detect and settle forward jumps;
        write the record if it moved far enough (or ``persist``)."""
        if not math.isfinite(now):
            return
        boot = self.boottime()
        token = self.sync_probe() if self.sync_probe is not None else None
        last, self._last = self._last, (now, boot)
        token_before, self._token = self._token, token
        if last is None:  # the first observation of this process (a start)
            if self.jump is None:
                self.hwm = max(self.hwm, now)  # the time the unit was off
            else:
                self._settle(now, token)
        else:
            elapsed = max(0.0, boot - last[1])
            gained = now - (last[0] + elapsed)
            if self.jump is not None:
                self.hwm = max(self.hwm, min(now, self.hwm + elapsed))
                self._settle(now, token)
            elif gained > TOLERANCE_S and now > self.hwm + elapsed + TOLERANCE_S:
                self.hwm = max(self.hwm, min(now, last[0] + elapsed))
                # A synchronisation in the same interval made the step (NTP setting a clock
                # that was behind, e.g. after a boot on fake-hwclock's time): believed.
                by_sync = token is not None and token != token_before
                self._jumped(now, gained, token, by_sync)
            else:
                self.hwm = max(self.hwm, now)
        hwm, jump = self._saved
        if jump != self.jump or (self.hwm > hwm and (persist or self.hwm - hwm >= PERSIST_STEP_S)):
            self.flush()

    def _jumped(self, now: float, gained: float, token: str | None, by_sync: bool) -> None:
        self._event("clock_jump", direction="forward", size_s=round(gained, 1),
                    clock=iso(now), believed=iso(self.hwm), synchronised=token is not None,
                    confirmed_by_sync=by_sync)  # fmt: skip
        if by_sync:
            self.hwm = max(self.hwm, now)
        else:
            self.jump = {"wall": now, "size_s": round(gained, 3), "token": token}

    def _settle(self, now: float, token: str | None) -> None:
        """End a pending jump: the clock came back to the mark, or a sync confirms it."""
        assert self.jump is not None
        size = self.jump["size_s"]
        if now <= self.hwm + max(TOLERANCE_S, size / 2):
            # Nearer the mark than the jumped clock: set right again (by hand, or by NTP).
            self.jump = None
            self.hwm = max(self.hwm, now)
            self._event("clock_jump_corrected", size_s=round(size, 1), clock=iso(now))
            return
        if token is not None and token != self.jump["token"]:
            self.jump = None
            before, self.hwm = self.hwm, max(self.hwm, now)
            self._event("clock_jump_confirmed", size_s=round(size, 1), clock=iso(now),
                        mark_raised_s=round(self.hwm - before, 1))  # fmt: skip

    def _event(self, event: str, **fields: Any) -> None:
        if self.on_event is not None:
            self.on_event(event, fields)

    def flush(self) -> None:
        record: dict[str, Any] = {"high_water_mark": self.hwm, "at": iso(self.hwm)}
        if self.jump is not None:
            record["jump"] = self.jump
        if self.reset_from is not None:
            record["reset_from"] = self.reset_from
        try:
            write_atomic(self.path, json.dumps(record).encode("ascii"))
        except OSError as exc:
            self.error = f"clock record not written: {exc.strerror}"
            return
        self._saved = (self.hwm, None if self.jump is None else dict(self.jump))
        self.error = None

    def note_signed_time(self, t: float) -> None:
        """A signed time (a verified bundle's ``created_at``): the real time is not before
        it, so no purge runs on a clock below it (kept in memory)."""
        if math.isfinite(t):
            self.signed_floor = max(self.signed_floor, t)

    def reset(self, now: float) -> float:
        """Set the mark to ``now`` and drop a pending jump (``edge clock reset``, the
        daemon stopped); the record keeps the old mark until the daemon has audited it
        (:meth:`take_reset`). Returns the old mark."""
        old, self.hwm, self.jump = self.hwm, now, None
        if self.reset_from is None:
            self.reset_from = old
        self.flush()
        if self.error is not None:
            raise UsageError(self.error)
        return old

    def take_reset(self) -> dict[str, Any] | None:
        """The fields of a ``clock_mark_reset`` audit entry if ``edge clock reset`` ran
        since the last start (then forgotten), else None."""
        if self.reset_from is None:
            return None
        fields = {"previous_mark": iso(self.reset_from), "mark": iso(self.hwm)}
        self.reset_from = None
        self.flush()
        return fields

    # -- deciding ---------------------------------------------------------------------

    def behind(self, now: float) -> bool:
        """True if ``now`` is below the mark by more than the tolerance."""
        return now < self.hwm - TOLERANCE_S

    def effective(self, now: float) -> float:
        """The time to judge a window's end by: never earlier than the mark."""
        return max(now, self.hwm)

    def purge_hold(self, now: float) -> tuple[str, str] | None:
        """Why no purge may run at ``now`` (code, one line), or None."""
        if self.behind(now):
            return "clock_behind", self.behind_message(now)
        if now < self.signed_floor - TOLERANCE_S:
            return "clock_before_bundle", (
                f"the clock ({iso(now)}) is before a signed bundle was created "
                f"({iso(self.signed_floor)})"
            )
        return None

    def purge_time(self, now: float) -> float:
        """The time a purge judges ages by: ``now``, but never beyond the mark (time
        gained by an unconfirmed forward jump does not count)."""
        return min(now, self.hwm) if self.jump is not None else now

    def jump_note(self) -> str | None:
        """One line for ``status`` while a forward jump is unconfirmed, else None."""
        if self.jump is None:
            return None
        return (f"clock jumped {self.jump['size_s']:.0f} s forward, not confirmed by time "
                "sync: purges judged on the high-water mark")  # fmt: skip

    def behind_message(self, now: float) -> str:
        return (
            f"the clock ({iso(now)}) is behind the latest time this device has seen "
            f"({iso(self.hwm)})"
        )


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
