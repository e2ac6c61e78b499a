"""The arming state machine (safeguards 1, 3, 6, 8, 9, 12, 13, 14, 15).

The daemon is **disarmed** unless a valid bundle for this device is loaded and the
current time is inside its window. :class:`DeploymentManager` owns that decision:

- :meth:`~DeploymentManager.load` verifies and decrypts a bundle
  (:func:`edge.watchlist.bundle.open_bundle`) and arms; every refusal leaves it disarmed
  with one log line, a status reason and an
  audit entry. A bundle whose window has not opened yet is kept pending and armed by
  :meth:`~DeploymentManager.tick` when it opens; one whose window has already ended is
  shredded.
- :meth:`~DeploymentManager.tick` disarms at the end of the window;
  :meth:`~DeploymentManager.handle_command` takes signed ``end_deployment`` and
  ``legal_hold`` commands (:mod:`edge.watchlist.signed_commands`).
- Ending a deployment zeroes the decrypted watchlist matrix in place, overwrites and
  unlinks the bundle file and destroys the deployment key it was wrapped to (held only in
  RAM, :mod:`edge.watchlist.deployment_keys`), audits each step and returns the
  end-of-deployment summary. With the key gone, no copy of the bundle (its blocks left on
  flash, a replaced bundle, the controller's copy) can be decrypted: the crypto-shred.
- A bundle delivered to ``<bundle>.new`` replaces the current one only once it is accepted,
  and only after the old deployment has ended (old file shredded, old key destroyed,
  audited ``bundle_replaced``).

Limits, stated plainly: Python cannot promise that no other copy of a decrypted byte
remains in freed memory, and on flash storage an overwrite may not reach the original
blocks; the bundle is only ever stored encrypted, under a key that lived only in RAM and
is destroyed at the end.

The last accepted sequence number and the ids of ended bundles are kept in
``<state_dir>/deployment-state.json``, replaced atomically. A disk that refuses the write
never stops the daemon: the state stays in memory, :attr:`DeploymentManager.state_error`
says so (``status``), and :meth:`~DeploymentManager.tick` writes it once the disk takes it.

Adjudications (:meth:`~DeploymentManager.handle_adjudication`) must be signed by a trusted
control-room key (:mod:`edge.watchlist.adjudication`), name an alert this deployment
issued (:meth:`~DeploymentManager.note_alert`), and are recorded once per alert id and
decision; every refusal is audited with its reason, never with the payload.

Why one module of ~870 lines: arming, the window, commands, adjudications, replacement
and the end of a deployment are one state machine under one lock, and the order of its
side effects (wipe RAM, shred, destroy the key, persist, audit, summarise) is the
safeguard; the parts without that state are beside it (:mod:`~edge.watchlist.adjudication`,
:mod:`~edge.watchlist.statefile`, :mod:`~edge.watchlist.signed_commands`,
:mod:`~edge.watchlist.deployment_keys`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edge.errors import BundleRefused, UsageError
from edge.recognition.match import Watchlist, WatchlistError
from edge.watchlist.adjudication import (
    Adjudication,
    AdjudicationLedger,
    AdjudicationRefused,
    verify_adjudication,
)
from edge.watchlist.audit import AuditLog
from edge.watchlist.bundle import (
    BundleHeader,
    OpenedBundle,
    bundle_digest,
    format_time,
    open_bundle,
    read_header,
    read_header_unverified,
)
from edge.watchlist.deployment_keys import BundleKeys, key_id_in, recipient_key_id, staged_path
from edge.watchlist.signed_commands import CommandRefused, CommandVerifier, SignedCommand
from edge.watchlist.statefile import shred_file, write_atomic
from edge.watchlist.timeguard import TOLERANCE_S, TimeGuard, boottime

log = logging.getLogger(__name__)

DECISIONS = ("confirmed", "rejected", "not_stopped")
STATE_FILE = "deployment-state.json"
LEDGER_FILE = "adjudications.json"
MAX_BUNDLE_READ = 300 << 20
MAX_COMMAND_FILE = 64 * 1024
COMMANDS_DIR = "commands"
"""``<state_dir>/commands/``: where signed command files are dropped for the daemon."""


@dataclass(slots=True)
class Counters:
    """What the daemon counts during a deployment (only counts leave the pipeline)."""

    frames: int = 0
    faces_processed: int = 0
    tracks: int = 0
    alerts: int = 0


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    """Armed or not, and why (for ``STATUS=``, the ``status`` topic and the log)."""

    armed: bool
    code: str  # "armed", "no_bundle", "pending", "ended", or a BundleRefused reason
    reason: str  # one human line
    deployment_id: str | None = None
    window_end: str | None = None

    def line(self) -> str:
        """``armed: ...``, ``disarmed, pending: ...``, ``disarmed, refused (<code>): ...``
        or ``disarmed: ...`` (no bundle, ended)."""
        if self.armed:
            return f"armed: {self.reason}"
        if self.code == "pending":
            return f"disarmed, pending: {self.reason}"
        if self.code in ("no_bundle", "ended"):
            return f"disarmed: {self.reason}"
        return f"disarmed, refused ({self.code}): {self.reason}"


@dataclass(slots=True)
class _Active:
    opened: OpenedBundle
    watchlist: Watchlist
    path: Path
    digest: str
    armed_at: float
    armed_boot: float  # CLOCK_BOOTTIME at arming
    length_s: float  # the rest of the window at arming, measured on CLOCK_BOOTTIME
    key_id: str | None  # the deployment key in RAM (None: the device key, tests only)
    counters: Counters = field(default_factory=Counters)
    adjudications: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))


@dataclass(frozen=True, slots=True)
class _Refusal:
    exc: BundleRefused
    header: BundleHeader | None = None  # set when refused on the clock (tick retries)


@dataclass(frozen=True, slots=True)
class _Opened:
    opened: OpenedBundle
    watchlist: Watchlist
    key_id: str | None


class DeploymentManager:
    """Decides whether the device is armed, and ends deployments cleanly.

    The daemon increments :attr:`counters` (frames, faces processed, tracks, alerts)
    while armed; they are reset at each arming and reported in the summary.
    """

    def __init__(
        self,
        state_dir: Path,
        device_id: str,
        device_key: X25519PrivateKey,
        trusted_signers: Sequence[Ed25519PublicKey],
        threshold_floor: float,
        max_subjects: int,
        expected_embedder_sha256: str,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
        *,
        on_status: Callable[[DeploymentStatus], None] | None = None,
        on_summary: Callable[[dict[str, Any]], None] | None = None,
        set_legal_hold: Callable[[str, bool], object] | None = None,
        boottime_clock: Callable[[], float] = boottime,
        clock_synced: Callable[[], bool] | None = None,
        deployment_keys_dir: Path | None = None,
        allow_device_key_bundles: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.device_id = device_id
        self.keys = BundleKeys(device_id, device_key, deployment_keys_dir,
                               allow_device_key_bundles)
        self.trusted_signers = list(trusted_signers)
        self.threshold_floor = threshold_floor
        self.max_subjects = max_subjects
        self.expected_embedder_sha256 = expected_embedder_sha256
        self.audit = audit
        self.clock = clock
        self.on_status = on_status
        self.on_summary = on_summary
        self.set_legal_hold = set_legal_hold
        self._lock = threading.RLock()
        state_dir.mkdir(parents=True, exist_ok=True)
        self._commands = CommandVerifier(state_dir, device_id, self.trusted_signers)
        self.time = TimeGuard(state_dir, boottime_clock)
        self.clock_synced = clock_synced  # None: not required ([device] require_clock_sync)
        # A bundle refused on the clock, and the time before which retrying is pointless.
        self._clock_wait: tuple[Path, float] | None = None
        self._active: _Active | None = None
        self._pending: tuple[Path, float] | None = None
        self._idle_counters = Counters()
        self._status = DeploymentStatus(False, "no_bundle", "no watchlist bundle loaded")
        self._state = self._read_state()
        self.state_error: str | None = None
        self._state_dirty = False
        self.ledger = AdjudicationLedger(state_dir / LEDGER_FILE)

    # --- state --------------------------------------------------------------------------

    @property
    def _state_path(self) -> Path:
        return self.state_dir / STATE_FILE

    def _read_state(self) -> dict[str, Any]:
        try:
            raw = json.loads(self._state_path.read_text("utf-8"))
        except FileNotFoundError:
            return {"last_sequence": None, "last_bundle_id": None, "ended": []}
        except (OSError, ValueError) as exc:
            raise UsageError(f"deployment state {self._state_path} is unreadable: {exc}") from None
        ok = (
            isinstance(raw, dict)
            and (raw.get("last_sequence") is None or type(raw.get("last_sequence")) is int)
            and (raw.get("last_bundle_id") is None or isinstance(raw.get("last_bundle_id"), str))
            and isinstance(raw.get("ended"), list)
        )
        if not ok:
            raise UsageError(f"deployment state {self._state_path} is malformed")
        state: dict[str, Any] = raw
        return state

    def _write_state(self) -> None:
        """Persist the state atomically; on a disk error keep it dirty for :meth:`tick`."""
        try:
            write_atomic(self._state_path, json.dumps(self._state).encode("utf-8"))
        except OSError as exc:
            if self.state_error is None:
                log.error("deployment state %s not written (%s); kept in memory, retried",
                          self._state_path, exc.strerror)  # fmt: skip
            self.state_error = f"deployment state not written: {exc.strerror}"
            self._state_dirty = True
            return
        if self.state_error is not None:
            log.warning("deployment state %s written again", self._state_path)
        self.state_error = None
        self._state_dirty = False

    def flush(self) -> None:
        """Retry what a failing disk refused (state, ledger, clock); called by :meth:`tick`."""
        if self._state_dirty:
            self._write_state()
        self.ledger.flush()
        if self.time.error is not None:
            self.time.flush()

    @property
    def persist_error(self) -> str | None:
        """Why some state is only in memory right now, or None."""
        return self.state_error or self.ledger.write_error or self.time.error

    # --- what the daemon reads ----------------------------------------------------------

    @property
    def status(self) -> DeploymentStatus:
        return self._status

    @property
    def armed(self) -> bool:
        return self._active is not None

    @property
    def watchlist(self) -> Watchlist | None:
        active = self._active
        return active.watchlist if active is not None else None

    @property
    def header(self) -> BundleHeader | None:
        active = self._active
        return active.opened.header if active is not None else None

    @property
    def threshold(self) -> float | None:
        active = self._active
        return active.opened.header.threshold if active is not None else None

    @property
    def counters(self) -> Counters:
        active = self._active
        return active.counters if active is not None else self._idle_counters

    def _set_status(self, status: DeploymentStatus) -> None:
        self._status = status
        if self.on_status is not None:
            try:
                self.on_status(status)
            except Exception:
                log.exception("status callback failed")

    # --- loading ------------------------------------------------------------------------

    def load(self, bundle_path: Path, now: float | None = None) -> DeploymentStatus:
        """Verify, decrypt and arm from ``bundle_path``; on refusal stay disarmed.

        Loading while armed replaces the deployment only if the new bundle is accepted
        (SIGHUP re-loads the same bundle without resetting the counters). A bundle
        delivered to ``<bundle>.new`` (:func:`~edge.watchlist.deployment_keys.staged_path`)
        is checked first; once accepted, the old deployment ends, its bundle is shredded
        and its deployment key destroyed, and only then is the new file moved into place.
        """
        now = self.clock() if now is None else now
        with self._lock:
            self.time.observe(now)
            staged = staged_path(bundle_path)
            if staged.is_file() or staged.is_symlink():
                installed = self._install_staged(bundle_path, staged, now)
                if installed is not None:
                    return installed
            try:
                data = self._read_bundle(bundle_path)
            except BundleRefused as exc:
                return self._refused(bundle_path, exc, now)
            if self._active is not None and bundle_digest(data) == self._active.digest:
                return self._status  # same bundle: nothing changes
            result = self._try_open(data, now)
            if isinstance(result, _Refusal):
                if result.header is not None:
                    return self._wait_for_clock(bundle_path, result.exc, now, result.header)
                return self._refused(bundle_path, result.exc, now)
            if self._active is not None:
                self._finish("replaced", now)
            return self._arm(bundle_path, data, result, now)

    def _try_open(self, data: bytes, now: float) -> _Refusal | _Opened:
        """Find the key, verify, decrypt and check a bundle; no side effect but the audit
        a caller writes for a refusal."""
        # The window's end is judged on max(now, high-water mark): a unit that was
        # off past its window shreds its bundle even on a clock that is behind.
        judged = self.time.effective(now)
        try:
            key, kid = self._key_for(data)
            opened = open_bundle(
                data,
                device_id=self.device_id,
                device_private_key=key,
                trusted_signers=self.trusted_signers,
                expected_embedder_sha256=self.expected_embedder_sha256,
                threshold_floor=self.threshold_floor,
                max_subjects=self.max_subjects,
                last_sequence=self._state["last_sequence"],
                now=judged,
                last_bundle_id=self._state["last_bundle_id"],
            )
        except BundleRefused as exc:
            return _Refusal(exc)
        h = opened.header
        if self.clock_synced is not None and not self.clock_synced():
            opened.wipe()
            return _Refusal(BundleRefused(
                "clock_not_synchronised",
                "the system clock is not synchronised (NTP); not arming until it is",
            ), h)
        if self.time.behind(now) or now < h.created_at.timestamp() - TOLERANCE_S:
            opened.wipe()
            what = (self.time.behind_message(now) if self.time.behind(now) else
                    f"the clock ({_iso(now)}) is before the bundle was created "
                    f"({format_time(h.created_at)})")  # fmt: skip
            return _Refusal(BundleRefused("clock_behind", f"{what}; not arming"), h)
        if h.bundle_id in self._state["ended"]:
            opened.wipe()
            return _Refusal(BundleRefused(
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
            return _Refusal(BundleRefused("garbled", f"bundle is garbled: {wl_exc}"))
        return _Opened(opened, watchlist, kid)

    def _key_for(self, data: bytes) -> tuple[X25519PrivateKey, str | None]:
        """The private key the bundle is wrapped to (a deployment key in RAM, normally)."""
        try:
            return self.keys.key_for(read_header_unverified(data)[1])
        except BundleRefused:
            read_header(data, self.trusted_signers)  # a forged bundle is refused as such
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
            data = self._read_bundle(staged)
        except BundleRefused as exc:
            self.audit.append("bundle_refused", reason=exc.reason, message=str(exc),
                              path=str(staged), kept_armed=self._active is not None)
            _discard(staged)
            return None if self._active is None else self._status
        active = self._active
        if active is None:
            self._replace_file(bundle_path, staged, data, None)
            return None
        if bundle_digest(data) == active.digest:
            _discard(staged)  # the running bundle again: nothing changes
            return self._status
        result = self._try_open(data, now)
        if isinstance(result, _Refusal):
            refused = result.exc
            log.warning("new bundle %s refused, staying armed: %s", staged, refused)
            self.audit.append("bundle_refused", reason=refused.reason, message=str(refused),
                              path=str(staged), kept_armed=True)
            if _discard(staged):
                self.audit.append("watchlist_shredded", path=str(staged), reason=refused.reason)
            return self._status
        old = active.opened.header.bundle_id
        self._finish("replaced", now)  # wipes RAM, shreds the old file, destroys its key
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
            prev_header = _header_or_none(previous)
            fields["old_bundle_id"] = old or (prev_header.bundle_id if prev_header else None)
            kid = key_id_in(previous, self.device_id)
            fields["old_file_shredded"] = _discard(bundle_path)
            fields["old_key"] = self.keys.destroy(kid)
        new_header = _header_or_none(data)
        fields["new_bundle_id"] = new_header.bundle_id if new_header else None
        fields["new_bundle_sha256"] = bundle_digest(data)
        try:
            staged.replace(bundle_path)
        except OSError as exc:  # never a crash: the load that follows reports no bundle
            log.error("cannot move %s into place: %s", staged, exc.strerror)
            _discard(staged)
        _fsync_dir(bundle_path.parent)
        self._pending = None
        self._clock_wait = None
        if previous is not None or old is not None:
            self.audit.append("bundle_replaced", **fields)
            log.warning("bundle replaced: the old one shredded and its key destroyed")

    def _read_bundle(self, path: Path) -> bytes:
        try:
            with path.open("rb") as fh:
                data = fh.read(MAX_BUNDLE_READ + 1)
        except FileNotFoundError:
            raise BundleRefused("no_bundle", f"no watchlist bundle at {path}") from None
        except OSError as exc:
            msg = f"cannot read bundle {path}: {exc.strerror}"
            raise BundleRefused("unreadable", msg) from None
        if len(data) > MAX_BUNDLE_READ:
            raise BundleRefused("garbled", f"bundle {path} is too large")
        return data

    def _refused(self, path: Path, exc: BundleRefused, now: float) -> DeploymentStatus:
        if self._active is not None:
            # A bad new bundle never disarms a valid running deployment.
            log.warning("new bundle %s refused, staying armed: %s", path, exc)
            self.audit.append("bundle_refused", reason=exc.reason, message=str(exc),
                              path=str(path), kept_armed=True)
            return self._status
        log.warning("disarmed: %s", exc)
        fields: dict[str, Any] = {"reason": exc.reason, "message": str(exc), "path": str(path)}
        status = DeploymentStatus(False, exc.reason, str(exc))
        self._pending = None
        self._clock_wait = None
        if exc.reason == "window_not_started":
            with contextlib.suppress(BundleRefused, OSError):
                h = read_header(path.read_bytes(), self.trusted_signers)
                self._pending = (path, h.start.timestamp())
                status = DeploymentStatus(False, "pending", str(exc), h.deployment_id)
        self.audit.append("bundle_refused", **fields)
        # A deployment that is over, or a bundle whose key is gone for good: its
        # watchlist must not stay on the device, nor the key it was wrapped to.
        if exc.reason in ("window_ended", "deployment_ended", "no_deployment_key"):
            kid = _key_id_of_file(path, self.device_id)
            if _discard(path):
                self.audit.append("watchlist_shredded", path=str(path), reason=exc.reason)
                log.warning("shredded bundle %s (%s)", path, exc.reason)
            if exc.reason != "no_deployment_key":
                self._destroy_key(kid, None, None)
        self._set_status(status)
        return status

    def _wait_for_clock(
        self, path: Path, exc: BundleRefused, now: float, h: BundleHeader
    ) -> DeploymentStatus:
        """Refuse on the clock; :meth:`tick` loads again once the clock is fine."""
        status = self._refused(path, exc, now)
        if self._active is None:
            not_before = max(self.time.hwm, h.created_at.timestamp()) - TOLERANCE_S
            self._clock_wait = (path, not_before)
        return status

    def _arm(self, path: Path, data: bytes, result: _Opened, now: float) -> DeploymentStatus:
        opened, watchlist = result.opened, result.watchlist
        h = opened.header
        self._active = _Active(
            opened, watchlist, path, bundle_digest(data), now, self.time.boottime(),
            h.end.timestamp() - now, result.key_id,
        )
        self._clock_wait = None
        self.time.observe(now, persist=True)
        self._pending = None
        self._state["last_sequence"] = h.sequence
        self._state["last_bundle_id"] = h.bundle_id
        self._write_state()
        self.ledger.reset(h.deployment_id)
        self.ledger.flush()
        self.audit.append(
            "watchlist_loaded",
            deployment_id=h.deployment_id,
            bundle_id=h.bundle_id,
            bundle_sha256=self._active.digest,
            sequence=h.sequence,
            watchlist_size=h.subject_count,
            categories=dict(h.categories),
            embedder=h.embedder.name,
            embedder_sha256=h.embedder.sha256,
            references=int(watchlist.references.shape[0]),  # rows: a count, never a value
            reference=watchlist.reference,
        )
        self.audit.append(
            "armed",
            deployment_id=h.deployment_id,
            location=h.location,
            window_start=format_time(h.start),
            window_end=format_time(h.end),
            authorising_officer=h.authorising_officer,
            approved_at=format_time(h.approved_at),
            signage_confirmed=h.signage_confirmed,
            threshold=h.threshold,
            threshold_floor=self.threshold_floor,
            deployment_key=result.key_id,  # None: the device's long-lived key (tests only)
        )
        msg = (
            f"deployment {h.deployment_id} at {h.location} until {format_time(h.end)}, "
            f"{h.subject_count} subjects, threshold {h.threshold:.3f}"
        )
        log.warning("armed: %s", msg)
        status = DeploymentStatus(True, "armed", msg, h.deployment_id, format_time(h.end))
        self._set_status(status)
        return status

    # --- time ---------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> dict[str, Any] | None:
        """Disarm at the end of the window (returns the summary); arm a pending bundle."""
        now = self.clock() if now is None else now
        with self._lock:
            self.time.observe(now)
            self.flush()
            active = self._active
            judged = self.time.effective(now)
            if active is not None and judged >= active.opened.header.end.timestamp():
                return self._finish("window_ended", now)
            if active is not None and self.time.boottime() - active.armed_boot >= active.length_s:
                # The wall clock was set back while armed: the monotonic clock ends it.
                return self._finish("window_elapsed_on_boottime", now)
            pending = self._pending
            if active is None and pending is not None and now >= pending[1]:
                self.load(pending[0], now)
            elif active is None and self._clock_wait is not None and self._clock_fine(now):
                self.load(self._clock_wait[0], now)  # the clock that stopped arming is right
        return None

    def _clock_fine(self, now: float) -> bool:
        assert self._clock_wait is not None
        synced = self.clock_synced is None or self.clock_synced()
        return synced and now >= self._clock_wait[1]

    # --- commands -----------------------------------------------------------------------

    def handle_command(self, data: bytes, now: float | None = None) -> dict[str, Any]:
        """Verify a signed command and act on it. Raises :class:`CommandRefused`.

        Returns ``{"command": ..., ...}``: for ``end_deployment`` the summary, for
        ``legal_hold`` the alert ids and the flag.
        """
        now = self.clock() if now is None else now
        try:
            if self.time.behind(now):
                raise CommandRefused("clock_behind", self.time.behind_message(now))
            cmd = self._commands.verify(data, now, self.time.hwm - TOLERANCE_S)
            self.time.observe(now, persist=True)
        except CommandRefused as exc:
            log.warning("command refused: %s", exc)
            self.audit.append("command_refused", reason=exc.reason, message=str(exc))
            raise
        if cmd.command == "end_deployment":
            return {"command": cmd.command, "summary": self._end(cmd, now)}
        return {"command": cmd.command, **self._legal_hold(cmd)}

    def process_command_files(self, directory: Path, now: float | None = None) -> list[str]:
        """Handle signed command files dropped in ``directory`` (``*.json``, e.g. by
        Ansible's end-deployment play before ``systemctl reload edge``); each file is
        removed once handled, accepted or refused. Returns one line per file."""
        results: list[str] = []
        try:
            files = sorted(p for p in directory.glob("*.json") if p.is_file())
        except OSError:
            return results
        for path in files[:100]:
            try:
                with path.open("rb") as fh:
                    data = fh.read(MAX_COMMAND_FILE + 1)
                result = self.handle_command(data, now)
                results.append(f"{path.name}: {result['command']} accepted")
            except (CommandRefused, OSError) as exc:
                results.append(f"{path.name}: refused: {exc}")
            finally:
                with contextlib.suppress(OSError):
                    path.unlink()
        return results

    def end(self, signed_command: bytes, now: float | None = None) -> dict[str, Any]:
        """End the deployment on a signed ``end_deployment`` command; returns the summary."""
        result = self.handle_command(signed_command, now)
        if result["command"] != "end_deployment":
            raise CommandRefused("wrong_command", "not an end_deployment command")
        summary: dict[str, Any] = result["summary"]
        return summary

    def _end(self, cmd: SignedCommand, now: float) -> dict[str, Any]:
        with self._lock:
            active = self._active
            if active is None and self._pending is not None:
                cancelled = self._cancel_pending(cmd, now)
                if cancelled is not None:
                    return cancelled
            if active is None or active.opened.header.deployment_id != cmd.deployment_id:
                current = active.opened.header.deployment_id if active else "none"
                exc = CommandRefused(
                    "not_current",
                    f"end_deployment for {cmd.deployment_id}, but the current deployment is "
                    f"{current}",
                )
                self.audit.append("command_refused", reason=exc.reason, message=str(exc))
                raise exc
            self.audit.append(
                "command_accepted", command=cmd.command, deployment_id=cmd.deployment_id,
                nonce=cmd.nonce, issued_at=format_time(cmd.issued_at),
            )
            return self._finish("end_command", now)

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
        removed = _discard(path)
        self.audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                          bundle_id=h.bundle_id, path=str(path), file_removed=removed)
        self._destroy_key(recipient_key_id(h, self.device_id), h.deployment_id, h.bundle_id)
        self._state["ended"] = [*self._state["ended"], h.bundle_id][-200:]
        self._write_state()
        summary: dict[str, Any] = {
            "deployment_id": h.deployment_id,
            "bundle_id": h.bundle_id,
            "device_id": self.device_id,
            "location": h.location,
            "window": {"start": format_time(h.start), "end": format_time(h.end)},
            "armed_at": None,
            "ended_at": _iso(now),
            "end_reason": "cancelled_before_start",
            "watchlist_size": h.subject_count,
            "threshold": h.threshold,
            "frames": 0,
            "faces_processed": 0,
            "tracks": 0,
            "alerts": 0,
            "adjudications": dict.fromkeys(DECISIONS, 0),
        }
        self.audit.append("deployment_summary", summary=summary)
        log.warning("deployment %s cancelled before its window opened", h.deployment_id)
        self._set_status(DeploymentStatus(
            False, "ended", f"deployment {h.deployment_id} cancelled before start",
            h.deployment_id,
        ))
        if self.on_summary is not None:
            try:
                self.on_summary(summary)
            except Exception:
                log.exception("summary callback failed")
        return summary

    def _legal_hold(self, cmd: SignedCommand) -> dict[str, Any]:
        ids: list[str] = list(cmd.args["alert_ids"])
        on: bool = cmd.args["on"]
        if self.set_legal_hold is None:
            exc = CommandRefused("unsupported", "legal hold is not available (no outbox)")
            self.audit.append("command_refused", reason=exc.reason, message=str(exc))
            raise exc
        missing = [a for a in ids if self.set_legal_hold(a, on) is False]
        self.audit.append(
            "legal_hold", alert_ids=ids, on=on, not_found=missing,
            deployment_id=cmd.deployment_id, nonce=cmd.nonce,
        )
        return {"alert_ids": ids, "on": on, "not_found": missing}

    # --- adjudications ------------------------------------------------------------------

    def note_alert(self, alert_id: str) -> None:
        """An alert this deployment issued: the only kind that may be adjudicated."""
        with self._lock:
            if self._active is not None:
                self.ledger.issue(alert_id)

    def handle_adjudication(self, data: bytes, now: float | None = None) -> Adjudication:
        """Verify, check and record a signed adjudication (safeguard 8). Nothing acts on it.

        Raises :class:`AdjudicationRefused`; each refusal is audited (reason only).
        """
        now = self.clock() if now is None else now
        try:
            adj = self._verify_adjudication(data, now)
            with self._lock:
                active = self._active
                if active is None:
                    raise AdjudicationRefused("not_armed", "no deployment is armed")
                self.ledger.check(adj)
                self.ledger.record(adj)
                active.adjudications[adj.decision] += 1
                self.audit.append(
                    "adjudication", alert_id=adj.alert_id, decision=adj.decision,
                    officer=adj.officer, decided_at=adj.at_text, signer=adj.signer,
                    deployment_id=active.opened.header.deployment_id,
                )
        except AdjudicationRefused as exc:
            self.audit.append("adjudication_refused", reason=exc.reason, size=len(data))
            raise
        return adj

    def _verify_adjudication(self, data: bytes, now: float) -> Adjudication:
        refusal = AdjudicationRefused("unknown_signer", "no trusted signing key")
        for signer in self.trusted_signers:
            try:
                return verify_adjudication(data, signer, device_id=self.device_id, now=now)
            except AdjudicationRefused as exc:
                refusal = exc
                if exc.reason != "unknown_signer":
                    break
        raise refusal

    # --- ending -------------------------------------------------------------------------

    def _finish(self, reason: str, now: float) -> dict[str, Any]:
        active = self._active
        assert active is not None
        h = active.opened.header
        c = active.counters
        summary: dict[str, Any] = {
            "deployment_id": h.deployment_id,
            "bundle_id": h.bundle_id,
            "device_id": self.device_id,
            "location": h.location,
            "window": {"start": format_time(h.start), "end": format_time(h.end)},
            "armed_at": _iso(active.armed_at),
            "ended_at": _iso(now),
            "end_reason": reason,
            "watchlist_size": h.subject_count,
            "threshold": h.threshold,
            "frames": c.frames,
            "faces_processed": c.faces_processed,
            "tracks": c.tracks,
            "alerts": c.alerts,
            "adjudications": dict(active.adjudications),
        }
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
                shredded = _discard(active.path)
        self.audit.append("watchlist_shredded", deployment_id=h.deployment_id,
                          bundle_id=h.bundle_id, path=str(active.path), file_removed=shredded)
        self._destroy_key(active.key_id, h.deployment_id, h.bundle_id)
        self._state["ended"] = [*self._state["ended"], h.bundle_id][-200:]
        self._write_state()
        self.audit.append("disarmed", deployment_id=h.deployment_id, reason=reason)
        self.audit.append("deployment_summary", summary=summary)
        log.warning("disarmed: deployment %s ended (%s)", h.deployment_id, reason)
        self._set_status(
            DeploymentStatus(False, "ended", f"deployment {h.deployment_id} ended ({reason})",
                             h.deployment_id)
        )
        if self.on_summary is not None:
            try:
                self.on_summary(summary)
            except Exception:
                log.exception("summary callback failed")
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


def _header_or_none(data: bytes) -> BundleHeader | None:
    try:
        return read_header_unverified(data)[1]
    except BundleRefused:
        return None


def _key_id_of_file(path: Path, device_id: str) -> str | None:
    try:
        with path.open("rb") as fh:
            return key_id_in(fh.read(MAX_BUNDLE_READ + 1), device_id)
    except OSError:
        return None


def _discard(path: Path) -> bool:
    """Shred ``path`` (True if a file was removed); a symlink or an unwritable file is
    unlinked instead. Never raises."""
    try:
        return shred_file(path)
    except OSError:
        try:
            path.unlink()
        except OSError:
            return False
        return True


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _iso(t: float) -> str:
    return format_time(dt.datetime.fromtimestamp(t, dt.UTC))
