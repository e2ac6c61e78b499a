"""Loading, arming, staged replacement and the window (safeguards 1, 3, 9, 12, 13).

Part of :mod:`edge.watchlist.deployment`. Owns the way into the armed state and the
clock that bounds it:

- :meth:`~BundleLoader.load` verifies and decrypts a bundle
  (:func:`edge.watchlist.bundle.open_bundle`) and arms; every refusal leaves it disarmed
  with one log line, a status reason and an audit entry. A bundle whose window has not
  opened yet is kept pending; one refused on the clock (behind the time high-water mark,
  before its ``created_at``, not synchronised) waits for the clock; one whose window has
  already ended, that was already ended, or whose deployment key is gone, is shredded.
- A bundle delivered to ``<bundle>.new`` replaces the current one only once it is
  accepted, and only after the old deployment has ended (old file shredded, old key
  destroyed, audited ``bundle_replaced``); a bad one never disarms a running deployment.
- :meth:`~BundleLoader.tick` disarms at the end of the window (judged on
  max(now, high-water mark), and on ``CLOCK_BOOTTIME`` from arming), arms a pending
  bundle when its window opens and retries one that waited for the clock.

:class:`BundleLoader` works on the manager's
:class:`~edge.watchlist.deployment_state.DeploymentState` and is handed what else it
needs: the configuration, the deployment keys, the time guard, the adjudication ledger
(reset at each arming), the audit log, the clock and whether the clock is synchronised.
Ending itself is the :class:`~edge.watchlist.deployment_end.DeploymentEnder`'s, which it
calls (a replacement, the window's end, a shredded bundle's key).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused
from edge.recognition.match import Watchlist, WatchlistError
from edge.watchlist.adjudication import AdjudicationLedger
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import (
    BundleHeader,
    bundle_digest,
    format_time,
    open_bundle,
    read_header,
    read_header_unverified,
)
from edge.watchlist.deployment_end import DeploymentEnder
from edge.watchlist.deployment_files import (
    MAX_BUNDLE_READ,
    discard,
    fsync_dir,
    header_or_none,
    key_id_of_file,
    read_bundle,
)
from edge.watchlist.deployment_keys import BundleKeys, key_id_in, staged_path
from edge.watchlist.deployment_state import DeploymentState
from edge.watchlist.deployment_status import (
    Active,
    DeploymentConfig,
    DeploymentStatus,
    Opened,
    Refusal,
    iso,
)
from edge.watchlist.timeguard import TOLERANCE_S, TimeGuard

log = logging.getLogger("edge.watchlist.deployment")


class BundleLoader:
    """Loading and arming, and the window (see the module docstring)."""

    def __init__(
        self,
        state: DeploymentState,
        ender: DeploymentEnder,
        config: DeploymentConfig,
        keys: BundleKeys,
        time: TimeGuard,
        ledger: AdjudicationLedger,
        audit: AuditLog,
        clock: Callable[[], float],
        clock_synced: Callable[[], bool] | None = None,
    ) -> None:
        self._state = state
        self._ender = ender
        self._config = config
        self._keys = keys
        self._time = time
        self._ledger = ledger
        self._audit = audit
        self._clock = clock
        self.clock_synced = clock_synced  # None: not required ([device] require_clock_sync)

    def load(self, bundle_path: Path, now: float | None = None) -> DeploymentStatus:
        """Verify, decrypt and arm from ``bundle_path``; on refusal stay disarmed.

        Loading while armed replaces the deployment only if the new bundle is accepted
        (SIGHUP re-loads the same bundle without resetting the counters). A bundle
        delivered to ``<bundle>.new`` (:func:`~edge.watchlist.deployment_keys.staged_path`)
        is checked first; once accepted, the old deployment ends, its bundle is shredded
        and its deployment key destroyed, and only then is the new file moved into place.
        """
        now = self._clock() if now is None else now
        with self._state.lock:
            self._time.observe(now)
            staged = staged_path(bundle_path)
            if staged.is_file() or staged.is_symlink():
                installed = self._install_staged(bundle_path, staged, now)
                if installed is not None:
                    return installed
            try:
                data = read_bundle(bundle_path)
            except BundleRefused as exc:
                return self._refused(bundle_path, exc, now)
            if self._state.active is not None and bundle_digest(data) == self._state.active.digest:
                return self._state.status  # same bundle: nothing changes
            result = self._try_open(data, now)
            if isinstance(result, Refusal):
                if result.header is not None:
                    return self._wait_for_clock(bundle_path, result.exc, now, result.header)
                return self._refused(bundle_path, result.exc, now)
            if self._state.active is not None:
                self._ender.finish("replaced", now)
            return self._arm(bundle_path, data, result, now)

    def _try_open(self, data: bytes, now: float) -> Refusal | Opened:
        """Find the key, verify, decrypt and check a bundle; no side effect but the audit
        a caller writes for a refusal."""
        # The window's end is judged on max(now, high-water mark): a unit that was
        # off past its window shreds its bundle even on a clock that is behind.
        judged = self._time.effective(now)
        try:
            key, kid = self._key_for(data)
            opened = open_bundle(
                data,
                device_id=self._config.device_id,
                device_private_key=key,
                trusted_signers=self._config.trusted_signers,
                expected_embedder_sha256=self._config.expected_embedder_sha256,
                threshold_floor=self._config.threshold_floor,
                max_subjects=self._config.max_subjects,
                last_sequence=self._state.last_sequence,
                now=judged,
                last_bundle_id=self._state.last_bundle_id,
            )
        except BundleRefused as exc:
            return Refusal(exc)
        h = opened.header
        if self.clock_synced is not None and not self.clock_synced():
            opened.wipe()
            return Refusal(BundleRefused(
                "clock_not_synchronised",
                "the system clock is not synchronised (NTP); not arming until it is",
            ), h)
        if self._time.behind(now) or now < h.created_at.timestamp() - TOLERANCE_S:
            opened.wipe()
            what = (self._time.behind_message(now) if self._time.behind(now) else
                    f"the clock ({iso(now)}) is before the bundle was created "
                    f"({format_time(h.created_at)})")  # fmt: skip
            return Refusal(BundleRefused("clock_behind", f"{what}; not arming"), h)
        if self._state.was_ended(h.bundle_id):
            opened.wipe()
            return Refusal(BundleRefused(
                "deployment_ended",
                f"deployment {h.deployment_id} (bundle {h.bundle_id[:8]}) was already ended",
            ))
        try:
            watchlist = Watchlist(
                subject_ids=[s.subject_id for s in opened.subjects],
                categories=[s.category for s in opened.subjects],
                embeddings=opened.embeddings,
                metric=h.embedder.metric,
                threshold=h.threshold,
                embedder_sha256=h.embedder.sha256,
                reference_counts=opened.reference_counts,
                reference=opened.reference,
            )
        except WatchlistError as wl_exc:
            opened.wipe()
            return Refusal(BundleRefused("garbled", f"bundle is garbled: {wl_exc}"))
        return Opened(opened, watchlist, kid)

    def _key_for(self, data: bytes) -> tuple[X25519PrivateKey, str | None]:
        """The private key the bundle is wrapped to (a deployment key in RAM, normally)."""
        try:
            return self._keys.key_for(read_header_unverified(data)[1])
        except BundleRefused:
            read_header(data, self._config.trusted_signers)  # a forged bundle is refused as such
            raise

    def _install_staged(
        self, bundle_path: Path, staged: Path, now: float
    ) -> DeploymentStatus | None:
        """Take a bundle delivered to ``<bundle>.new``. Disarmed: shred the old bundle and
        destroy its key, move the new one into place and return None (:meth:`load` goes
        on). Armed: the new bundle must be accepted first (a bad one never disarms), then
        the old deployment ends (wipe, shred, key destroyed) before the new file moves."""
        try:
            if staged.is_symlink():
                raise BundleRefused("garbled", f"{staged} is a symbolic link, not a bundle")
            data = read_bundle(staged)
        except BundleRefused as exc:
            self._audit.append("bundle_refused", reason=exc.reason, message=str(exc),
                               path=str(staged), kept_armed=self._state.active is not None)
            discard(staged)
            return None if self._state.active is None else self._state.status
        active = self._state.active
        if active is None:
            self._replace_file(bundle_path, staged, data, None)
            return None
        if bundle_digest(data) == active.digest:
            discard(staged)  # the running bundle again: nothing changes
            return self._state.status
        result = self._try_open(data, now)
        if isinstance(result, Refusal):
            refused = result.exc
            log.warning("new bundle %s refused, staying armed: %s", staged, refused)
            self._audit.append("bundle_refused", reason=refused.reason, message=str(refused),
                               path=str(staged), kept_armed=True)
            if discard(staged):
                self._audit.append("watchlist_shredded", path=str(staged), reason=refused.reason)
            return self._state.status
        old = active.opened.header.bundle_id
        self._ender.finish("replaced", now)  # wipes RAM, shreds the old file, destroys its key
        self._replace_file(bundle_path, staged, data, old)
        return self._arm(bundle_path, data, result, now)

    def _replace_file(self, bundle_path: Path, staged: Path, data: bytes, old: str | None) -> None:
        """Shred whatever bundle is at ``bundle_path`` (and destroy its deployment key),
        then rename ``staged`` over it; audited as ``bundle_replaced``."""
        fields: dict[str, Any] = {"old_bundle_id": old, "path": str(bundle_path)}
        try:
            with bundle_path.open("rb") as fh:
                previous = fh.read(MAX_BUNDLE_READ + 1)
        except OSError:
            previous = None
        if previous is not None:
            prev_header = header_or_none(previous)
            fields["old_bundle_id"] = old or (prev_header.bundle_id if prev_header else None)
            kid = key_id_in(previous, self._config.device_id)
            fields["old_file_shredded"] = discard(bundle_path)
            fields["old_key"] = self._keys.destroy(kid)
        new_header = header_or_none(data)
        fields["new_bundle_id"] = new_header.bundle_id if new_header else None
        fields["new_bundle_sha256"] = bundle_digest(data)
        try:
            staged.replace(bundle_path)
        except OSError as exc:  # never a crash: the load that follows reports no bundle
            log.error("cannot move %s into place: %s", staged, exc.strerror)
            discard(staged)
        fsync_dir(bundle_path.parent)
        self._state.pending = None
        self._state.clock_wait = None
        if previous is not None or old is not None:
            self._audit.append("bundle_replaced", **fields)
            log.warning("bundle replaced: the old one shredded and its key destroyed")

    def _refused(self, path: Path, exc: BundleRefused, now: float) -> DeploymentStatus:
        if self._state.active is not None:
            # A bad new bundle never disarms a valid running deployment.
            log.warning("new bundle %s refused, staying armed: %s", path, exc)
            self._audit.append("bundle_refused", reason=exc.reason, message=str(exc),
                               path=str(path), kept_armed=True)
            return self._state.status
        log.warning("disarmed: %s", exc)
        fields: dict[str, Any] = {"reason": exc.reason, "message": str(exc), "path": str(path)}
        status = DeploymentStatus(False, exc.reason, str(exc))
        self._state.pending = None
        self._state.clock_wait = None
        if exc.reason == "window_not_started":
            with contextlib.suppress(BundleRefused, OSError):
                h = read_header(path.read_bytes(), self._config.trusted_signers)
                self._state.pending = (path, h.start.timestamp())
                status = DeploymentStatus(False, "pending", str(exc), h.deployment_id)
        self._audit.append("bundle_refused", **fields)
        # A deployment that is over, or a bundle whose key is gone for good: its
        # watchlist must not stay on the device, nor the key it was wrapped to.
        if exc.reason in ("window_ended", "deployment_ended", "no_deployment_key"):
            kid = key_id_of_file(path, self._config.device_id)
            if discard(path):
                self._audit.append("watchlist_shredded", path=str(path), reason=exc.reason)
                log.warning("shredded bundle %s (%s)", path, exc.reason)
            if exc.reason != "no_deployment_key":
                self._ender.destroy_key(kid, None, None)
        self._state.set_status(status)
        return status

    def _wait_for_clock(
        self, path: Path, exc: BundleRefused, now: float, h: BundleHeader
    ) -> DeploymentStatus:
        """Refuse on the clock; :meth:`tick` loads again once the clock is fine."""
        status = self._refused(path, exc, now)
        if self._state.active is None:
            not_before = max(self._time.hwm, h.created_at.timestamp()) - TOLERANCE_S
            self._state.clock_wait = (path, not_before)
        return status

    def _arm(self, path: Path, data: bytes, result: Opened, now: float) -> DeploymentStatus:
        opened, watchlist = result.opened, result.watchlist
        h = opened.header
        self._state.active = Active(
            opened, watchlist, path, bundle_digest(data), now, self._time.boottime(),
            h.end.timestamp() - now, result.key_id,
        )
        self._state.clock_wait = None
        self._time.observe(now, persist=True)
        self._state.pending = None
        self._state.record_armed(h.sequence, h.bundle_id)
        self._ledger.reset(h.deployment_id)
        self._ledger.flush()
        self._audit.append(
            "watchlist_loaded",
            deployment_id=h.deployment_id,
            bundle_id=h.bundle_id,
            bundle_sha256=self._state.active.digest,
            sequence=h.sequence,
            watchlist_size=h.subject_count,
            categories=dict(h.categories),
            embedder=h.embedder.name,
            embedder_sha256=h.embedder.sha256,
            references=int(watchlist.references.shape[0]),  # rows: a count, never a value
            reference=watchlist.reference,
        )
        self._audit.append(
            "armed",
            deployment_id=h.deployment_id,
            location=h.location,
            window_start=format_time(h.start),
            window_end=format_time(h.end),
            authorising_officer=h.authorising_officer,
            approved_at=format_time(h.approved_at),
            signage_confirmed=h.signage_confirmed,
            threshold=h.threshold,
            threshold_floor=self._config.threshold_floor,
            deployment_key=result.key_id,  # None: the device's long-lived key (tests only)
        )
        msg = (
            f"deployment {h.deployment_id} at {h.location} until {format_time(h.end)}, "
            f"{h.subject_count} subjects, threshold {h.threshold:.3f}"
        )
        log.warning("armed: %s", msg)
        status = DeploymentStatus(True, "armed", msg, h.deployment_id, format_time(h.end))
        self._state.set_status(status)
        return status

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float) -> dict[str, Any] | None:
        """Disarm at the end of the window (returns the summary); arm a pending bundle, or
        one that waited for the clock. The manager's ``tick`` holds the lock, has observed
        ``now`` and flushed what a failing disk refused."""
        active = self._state.active
        judged = self._time.effective(now)
        if active is not None and judged >= active.opened.header.end.timestamp():
            return self._ender.finish("window_ended", now)
        if active is not None and self._time.boottime() - active.armed_boot >= active.length_s:
            # The wall clock was set back while armed: the monotonic clock ends it.
            return self._ender.finish("window_elapsed_on_boottime", now)
        pending = self._state.pending
        clock_wait = self._state.clock_wait
        if active is None and pending is not None and now >= pending[1]:
            self.load(pending[0], now)
        elif active is None and clock_wait is not None and self._clock_fine(now):
            self.load(clock_wait[0], now)  # the clock that stopped arming is right
        return None

    def _clock_fine(self, now: float) -> bool:
        assert self._state.clock_wait is not None
        synced = self.clock_synced is None or self.clock_synced()
        return synced and now >= self._state.clock_wait[1]
