"""Retention policy (safeguard 7): alert data kept at most 31 days unless on legal hold.

The stores do the deleting (:meth:`edge.delivery.outbox.Outbox.purge`, which keeps rows on legal
hold); this module decides when, with what cut-off, and audits every purge, including
those that delete nothing, so the audit log shows the policy running.

With the device's :class:`~edge.watchlist.timeguard.TimeGuard` (issue 13 item 2) a purge
never runs on a clock below the time high-water mark or below a signed bundle's
``created_at`` (held: audited once per episode as ``purge_held``, and :attr:`held` says
why on ``status``), and never on time gained by an unconfirmed forward clock jump: ages
are then judged on the mark, which advances on ``CLOCK_BOOTTIME`` only
(:meth:`~edge.watchlist.timeguard.TimeGuard.purge_time`). The interval between purges is
measured on ``CLOCK_BOOTTIME`` too, so a clock set back does not stop them for as long.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from edge.watchlist.audit import AuditLog
from edge.watchlist.timeguard import TimeGuard, iso

log = logging.getLogger(__name__)

MAX_RETENTION_DAYS = 31
DAY_S = 24 * 3600
_MAX_IDS_IN_AUDIT = 500


class PurgeOutcome(Protocol):
    @property
    def count(self) -> int: ...

    @property
    def msg_ids(self) -> Sequence[str]: ...


class Purgeable(Protocol):
    """A store that can delete what is older than a cut-off (legal holds excepted)."""

    def purge(self, older_than_s: float, now: float | None = None) -> PurgeOutcome: ...


def retention_seconds(days: int) -> float:
    """Seconds for ``days`` of retention; refuses anything outside 1..31 days."""
    if type(days) is not int or not 1 <= days <= MAX_RETENTION_DAYS:
        raise ValueError(f"retention must be 1..{MAX_RETENTION_DAYS} days, not {days!r}")
    return float(days * DAY_S)


@dataclass(slots=True)
class RetentionPolicy:
    """Runs purges every ``interval_s`` and audits each one."""

    audit: AuditLog
    days: int = MAX_RETENTION_DAYS
    interval_s: float = 3600.0
    last_run: float | None = None
    clock: TimeGuard | None = None
    held: str | None = None
    """Why purges are held right now (for ``status``), or None."""
    _last_boot: float | None = None

    def __post_init__(self) -> None:
        retention_seconds(self.days)
        if not 60.0 <= self.interval_s <= DAY_S:
            raise ValueError("purge interval must be between 60 s and one day")

    @property
    def retention_s(self) -> float:
        return retention_seconds(self.days)

    def due(self, now: float) -> bool:
        if self.last_run is None:
            return True
        if self.clock is not None and self._last_boot is not None:
            return self.clock.boottime() - self._last_boot >= self.interval_s
        return now - self.last_run >= self.interval_s

    def run(self, store: Purgeable, name: str, now: float) -> int | None:
        """Purge ``store`` now; audit it; return how many items were deleted, or None if
        the clock holds purges (audited once until they run again)."""
        at = now
        if self.clock is not None:
            self.clock.observe(now)
            hold = self.clock.purge_hold(now)
            if hold is not None:
                code, why = hold
                if self.held is None:
                    log.warning("purges held: %s", why)
                    self.audit.append("purge_held", store=name, reason=code, message=why)
                self.held = why
                return None
            at = self.clock.purge_time(now)
        result = store.purge(self.retention_s, at)
        self.last_run = now
        self.held = None
        if self.clock is not None:
            self._last_boot = self.clock.boottime()
        ids = list(result.msg_ids)
        fields: dict[str, object] = {}
        if at != now:
            fields["judged_at"] = iso(at)  # a forward jump is not confirmed: the mark
        self.audit.append(
            "purge",
            store=name,
            retention_days=self.days,
            count=result.count,
            msg_ids=ids[:_MAX_IDS_IN_AUDIT],
            msg_ids_truncated=len(ids) > _MAX_IDS_IN_AUDIT,
            **fields,
        )
        if result.count:
            log.info("purged %s items older than %s days from %s", result.count, self.days, name)
        return result.count

    def run_if_due(self, store: Purgeable, name: str, now: float) -> int | None:
        return self.run(store, name, now) if self.due(now) else None
