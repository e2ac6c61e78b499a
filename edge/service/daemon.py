"""``edge run``: the appliance as one process.

Threads (architecture.md, "Process model"):

- **capture** (:class:`~edge.service.capture.CaptureThread`): the camera or file into a
  bounded queue that drops the oldest frame;
- **inference** (this module's main loop, on the main thread): frames through
  :class:`~edge.recognition.pipeline.Recognizer`, alerts into the durable outbox, and
  every control decision (arming, commands, adjudications, purges) taken
  *between* frames, so no other thread ever touches the watchlist;
- **publisher** (:class:`~edge.delivery.publish.Publisher`): paho's network loop and the
  outbox drain; its callbacks only queue inbound messages (size-, retain- and
  rate-checked bytes) in a bounded inbox for the main loop, which verifies and applies
  them; the publisher rebuilds its own client if paho's thread dies or stalls;
- **watchdog** (:class:`~edge.service.health.WatchdogPinger`): pings systemd only while
  capture, inference and publisher have all checked in recently.

SIGTERM/SIGINT stop (flushing the outbox for a bounded time), SIGHUP reloads
the watchlist bundle. When disarmed, frames are discarded unread: no
detection runs without a valid deployment (safeguard 1).

Nothing from the network and no full disk ends the loop: a control-room message that
cannot be used is refused, audited (its reason, never its bytes) and acknowledged; an
alert the outbox cannot store is held in RAM by the publisher and delivered directly;
the audit log, the deployment state and the adjudication ledger keep what they cannot
write and retry each tick. While anything is only in memory, ``STATUS=`` and the
``status`` topic say ``not persisting: ...``; when the disk takes writes again a
``disk_writable_again`` entry is audited.

Why one module of ~500 lines: it is the composition root (every component is built
here, once, from the settings) and the one main loop that orders control decisions
between frames; the parts with logic of their own live in their packages.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge import signing
from edge.delivery.inbound import Inbound
from edge.delivery.outbox import Outbox, OutboxFull
from edge.delivery.publish import BrokerSettings, Publisher
from edge.errors import ConfigError, EdgeError
from edge.recognition.decide import TrackDecider
from edge.recognition.pipeline import Recognizer
from edge.recognition.track import IoUTracker
from edge.service.capture import CaptureStatus, CaptureThread, EndOfStream
from edge.service.config import Settings, check_files
from edge.service.hardening import forbid_core_dumps
from edge.service.health import AuditDelivery, HealthMonitor, WatchdogPinger
from edge.service.housekeeping import Housekeeping
from edge.service.sdnotify import SystemdNotifier
from edge.service.signals import Request, SignalRequests
from edge.service.sources import SourceError, make_source
from edge.types import AlertRecord
from edge.vision.faces import FaceEngine
from edge.vision.quality import QualityGate
from edge.watchlist.audit import AuditLog
from edge.watchlist.deployment import DeploymentManager, DeploymentStatus
from edge.watchlist.deployment_keys import staged_path
from edge.watchlist.keys import (
    derive_key,
    device_key_from_bytes,
    load_signer_public,
    raw_private_bytes,
)
from edge.watchlist.timeguard import clock_synchronised, lock_state, unlock_state

log = logging.getLogger(__name__)

LOOPS = ("capture", "inference", "publisher")
TICK_S = 1.0
STATUS_EVERY_S = 5.0
AUDIT_FILE = "audit.log"
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


def read_temperature() -> float | None:
    """The SoC temperature in °C where the kernel exposes it (Raspberry Pi, Jetson)."""
    try:
        return int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000.0
    except (OSError, ValueError):
        return None


class Daemon:
    """Builds every component from :class:`~edge.service.config.Settings` once, then runs
    the loops."""

    def __init__(
        self,
        settings: Settings,
        *,
        notifier: SystemdNotifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        forbid_core_dumps()  # before any key, frame or face is in memory (issue 13, item 3)
        problems = check_files(settings)
        if problems:
            raise ConfigError(problems)
        self.settings = settings
        self.clock = clock
        self.notifier = notifier or SystemdNotifier()
        self.started = time.monotonic()
        self.inbox: queue.Queue[Inbound] = queue.Queue(maxsize=INBOX_MAX)
        self._refusals: collections.Counter[str] = collections.Counter()
        self._refusals_lock = threading.Lock()
        self._persist_since: float | None = None
        self._persist_problem: str | None = None
        self._fps = 0.0
        self._frames_window: collections.deque[float] = collections.deque()
        self._capture_status: CaptureStatus | None = None
        self._last_status_line = ""
        self._published_status: tuple[DeploymentStatus, str | None, str | None,
                                      str | None] | None = None  # fmt: skip
        state_dir = settings.device.state_dir
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        # One daemon per state directory; ``edge clock reset`` refuses while it runs.
        self._state_lock = lock_state(state_dir)
        device_id = settings.device.id

        # Keys: the device key arrives as a systemd credential, never from the config.
        device_key = device_key_from_bytes(
            settings.read_credential("device_key").get_secret_value()
        )
        signer = load_signer_public(settings.credential_path("signer_public_key"))
        # The device's own Ed25519 key signs every alert and audit entry (issue 13, 4 and 9).
        try:
            signing_key = signing.private_from_pem(
                settings.read_credential("device_signing_key").get_secret_value()
            )
        except signing.KeyFileError as exc:
            raise ConfigError([f"device.signing_key_credential: {exc}"]) from None
        self._audit_alarm: str | None = None

        # Models are loaded once, here.
        self.engine = FaceEngine.from_models(
            settings.device.models_dir,
            embedder=settings.recognition.embedder,
            precision=settings.recognition.precision,
            detector=settings.detector.model,
            detector_input=settings.detector.input_size,
        )
        family = self.engine.family
        embedder_sha256 = self.engine.model_info["embedder_sha256"]

        # Durable, encrypted outbox, then the publisher that drains it.
        self.outbox = Outbox(
            settings.outbox_path,
            derive_key(raw_private_bytes(device_key), "outbox"),
            max_items=settings.outbox.max_items,
            max_bytes=settings.outbox.max_bytes,
            reserve_items=max(1, settings.outbox.max_items // 10),  # for audit entries
            reserve_bytes=settings.outbox.max_bytes // 10,
        )
        mqtt = settings.mqtt
        broker = BrokerSettings(
            host=mqtt.host,
            port=mqtt.port,
            ca=mqtt.ca if mqtt.tls else None,
            cert=mqtt.client_cert if mqtt.tls else None,
            key=settings.credential_path("mqtt_client_key") if mqtt.tls else None,
            keepalive=mqtt.keepalive_s,
        )
        self.publisher = Publisher(
            device_id,
            broker,
            self.outbox,
            inbox=self._offer,
            on_refused=self._count_refused,
            client_id=settings.mqtt_client_id,
            stats_provider=self.stats,
            stats_interval_s=mqtt.stats_interval_s,
            topic_prefix=mqtt.topic_prefix,
            signing_key=signing_key,
        )

        self.audit_delivery = AuditDelivery(  # never dropped silently
            self.publisher, settings.outbox.audit_alarm_s
        )
        self.audit = AuditLog(state_dir / AUDIT_FILE, publish=self.audit_delivery.publish,
                              signing_key=signing_key)  # fmt: skip
        self.deployment = DeploymentManager(
            state_dir,
            device_id,
            device_key,
            [signer],
            threshold_floor=settings.recognition.floor_for(family.name),
            max_subjects=settings.watchlist.max_subjects,
            expected_embedder_sha256=embedder_sha256,
            audit=self.audit,
            clock=clock,
            on_summary=self._publish_summary,
            set_legal_hold=self.outbox.set_legal_hold,
            clock_synced=clock_synchronised if settings.device.require_clock_sync else None,
            deployment_keys_dir=settings.watchlist.deployment_keys_dir,
            allow_device_key_bundles=settings.watchlist.allow_device_key_bundles,
        )

        # Purges judged on the time guard (never below its mark, never on time a forward
        # jump gained); the guard's clock jumps are audited (issue 13 item 2).
        self.housekeeping = Housekeeping(
            self.audit, self.outbox, self.deployment.time, [signer],
            days=settings.retention.days, interval_s=settings.retention.purge_interval_s,
        )  # fmt: skip
        # Signed command files (Ansible's end-deployment play) are read on SIGHUP.
        self.commands_dir = state_dir / "commands"
        self.commands_dir.mkdir(exist_ok=True, mode=0o700)

        q = settings.quality
        self.recognizer = Recognizer(
            self.engine,
            IoUTracker(),
            QualityGate(q.min_face_px, q.min_sharpness, q.max_yaw),
            TrackDecider(
                threshold=1.0,  # replaced by the bundle's threshold when armed
                max_embeds_per_track=settings.recognition.embeds_per_track,
                cooldown_s=settings.recognition.cooldown_s,
                decision=settings.recognition.decision,
                weight=settings.recognition.template_weight,
            ),
            device_id=device_id,
            min_score=settings.detector.score_threshold,
            min_face_px=settings.detector.min_face_px,
            tiles=settings.detector.grid,
        )

        src = settings.source
        self.capture = CaptureThread(
            make_source(
                src.factory_kind,
                src.uri,
                loop=src.loop,
                pace=src.paced,
                size=src.size,
                fps=src.fps,
                detect_size=src.lores_size,
                camera=src.camera_options(),
            ),
            maxsize=src.queue_frames,
            on_checkin=lambda: self.health.checkin("capture"),
            on_status=self._on_capture_status,
        )
        self.health = HealthMonitor()
        for name in LOOPS:
            self.health.register(name, settings.health.max_age_s)
        self.pinger = WatchdogPinger(self.health, self.notifier)

    # -- callbacks (other threads) --------------------------------------------------------

    def _on_capture_status(self, status: CaptureStatus) -> None:
        self._capture_status = status
        if status.state == "reopening":
            log.warning(
                "camera lost (%s); reopening, attempt %s", status.last_error, status.attempts
            )

    def _offer(self, msg: Inbound) -> bool:
        try:
            self.inbox.put_nowait(msg)
        except queue.Full:
            return False
        return True

    def _count_refused(self, kind: str, reason: str, _size: int) -> None:
        with self._refusals_lock:
            self._refusals[f"{kind}:{reason}"] += 1

    def _audit_refusals(self) -> None:
        """One audit entry per tick at most for what the gate refused (counts only)."""
        with self._refusals_lock:
            counts, self._refusals = dict(self._refusals), collections.Counter()
        if counts:
            self.audit.append("inbound_refused", counts=counts)

    def _publish_summary(self, summary: dict[str, Any]) -> None:
        payload = json.dumps({"state": "ended", **summary}, sort_keys=True).encode()
        msg_id = f"deployment-end-{summary.get('bundle_id', summary.get('deployment_id'))}"
        self._enqueue_audited(msg_id, "deployment", payload, retain=True)

    def _enqueue_audited(self, msg_id: str, kind: str, payload: bytes, retain: bool) -> None:
        try:
            self.publisher.enqueue(msg_id, kind, payload, retain)
        except OutboxFull as exc:
            log.error("outbox full: %s not queued (%s)", kind, exc)
            self.audit.append("outbox_full", kind=kind, msg_id=msg_id)

    # -- status ---------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counts only, for the ``stats`` topic: never a face, an id or a vector."""
        c = self.deployment.counters
        cap = self._capture_status
        return {
            "armed": self.deployment.armed,
            "fps": round(self._fps, 1),
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

    def _status_line(self, status: DeploymentStatus) -> str:
        cap = self._capture_status
        link = "broker connected" if self.publisher.connected else "broker offline"
        camera = cap.state if cap else "starting"
        line = f"{status.line()} | {self._fps:.1f} fps | camera {camera} | {link}"
        if self._persist_problem is not None:
            line += f" | not persisting: {self._persist_problem}"
        clock_note = self.housekeeping.note()
        if clock_note is not None:
            line += f" | {clock_note}"
        if self._audit_alarm is not None:
            line += f" | audit: {self._audit_alarm}"
        return line

    def _check_persistence(self) -> None:
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
                last_problem=self._persist_problem or "", audit_entries_lost=self.audit.dropped,
                messages_refused=self.publisher.held.refused,
            )  # fmt: skip
            self._persist_since = None
        self._persist_problem = problem
        self._audit_alarm = self.audit_delivery.check(self.clock())

    def _sync(self) -> None:
        """Make the recognizer follow the deployment state; publish the state on change."""
        status = self.deployment.status
        watchlist = self.deployment.watchlist
        header = self.deployment.header
        if status.armed and watchlist is not None and header is not None:
            if not self.recognizer.armed or self.recognizer.deployment_id != header.deployment_id:
                self.recognizer.arm(watchlist, header.deployment_id)
                public = {k: v for k, v in header.to_json().items() if k != "recipients"}
                payload = json.dumps({"state": "armed", **public}, sort_keys=True).encode()
                self._enqueue_audited(
                    f"deployment-armed-{header.bundle_id}", "deployment", payload, retain=True
                )
        elif self.recognizer.armed:
            self.recognizer.disarm()
        line = self._status_line(status)
        if line != self._last_status_line:
            self._last_status_line = line
            self.notifier.status(line)
        clock_note = self.housekeeping.note()
        published = (status, self._persist_problem, clock_note, self._audit_alarm)
        if published != self._published_status:
            # The retained MQTT status changes with the deployment state, not with the fps.
            self._published_status = published
            extra: dict[str, Any] = {"code": status.code}
            if self._persist_problem:
                extra["not_persisting"] = self._persist_problem
            if clock_note:
                extra["clock"] = clock_note
            if self._audit_alarm:
                extra["audit_alarm"] = self._audit_alarm
            if status.deployment_id:
                extra["deployment_id"] = status.deployment_id
            if status.window_end:
                extra["window_end"] = status.window_end
            self.publisher.publish_status(status.armed, status.reason, **extra)

    # -- inbound --------------------------------------------------------------------------

    def _handle_inbound(self) -> bool:
        """Apply queued control-room messages; True if there were any. Never raises."""
        handled = False
        for _ in range(INBOX_MAX):
            try:
                msg = self.inbox.get_nowait()
            except queue.Empty:
                break
            handled = True
            apply_inbound(self.deployment, self.audit, msg, self.clock())
        return handled

    def _queue_alerts(self, alerts: list[AlertRecord], errors: list[str]) -> None:
        """Alerts to the outbox (or RAM); a failure is audited with the id, never fatal."""
        for error in errors:
            log.error("an alert could not be built: %s", error)
            self.audit.append("alert_failed", stage="build", error=error)
        for alert in alerts:
            self.deployment.counters.alerts += 1
            self.deployment.note_alert(alert.alert_id)
            try:
                self.publisher.enqueue_alert(alert)
                log.info("alert %s queued (track %s)", alert.alert_id, alert.track_id)
            except OutboxFull as exc:
                log.error("alert %s refused: %s", alert.alert_id, exc)
                self.audit.append("outbox_full", alert_id=alert.alert_id)
            except Exception as exc:
                log.exception("alert %s could not be queued", alert.alert_id)
                self.audit.append("alert_failed", stage="queue", alert_id=alert.alert_id,
                                  error=f"{type(exc).__name__}: {exc}"[:200])  # fmt: skip

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or the end of a non-looping file); 0 on a clean stop."""
        s = self.settings
        with SignalRequests() as signals:
            self.publisher.start()
            self.audit.append("daemon_start", device_id=s.device.id)
            bundle = s.bundle_path
            if bundle.exists() or staged_path(bundle).exists():
                self.housekeeping.note_bundle(bundle)
                self.deployment.load(bundle)
            self.housekeeping.purge(self.clock(), force=True)
            self.capture.start()
            self.pinger.start()
            self._sync()
            self.notifier.ready(self._last_status_line)
            log.info("edge run: %s", self._last_status_line)
            next_tick = next_status = 0.0
            reason = "stopped"
            failed = False
            try:
                while True:
                    request = signals.poll()
                    if request is Request.STOP:
                        break
                    if request is Request.RELOAD:
                        self.notifier.reloading()
                        for line in self.deployment.process_command_files(self.commands_dir):
                            log.warning("command file %s", line)
                        if bundle.exists() or staged_path(bundle).exists():
                            self.housekeeping.note_bundle(bundle)
                            self.deployment.load(bundle)
                        else:
                            log.warning("SIGHUP: no bundle at %s", bundle)
                        self._sync()
                        self.notifier.ready(self._last_status_line)
                    if self._handle_inbound():
                        self._sync()  # an end command disarms now, not at the next tick
                    mono = time.monotonic()
                    if mono >= next_tick:
                        self.deployment.tick(self.clock())
                        self._audit_refusals()
                        self._check_persistence()
                        self._sync()
                        next_tick = mono + TICK_S
                    if mono >= next_status:
                        self._last_status_line = ""  # refresh STATUS= with the fps
                        self._sync()
                        next_status = mono + STATUS_EVERY_S
                    self.housekeeping.purge(self.clock())
                    if mono - self.publisher.last_checkin < s.health.max_age_s:
                        self.health.checkin("publisher")
                    self.health.checkin("inference")

                    item = self.capture.get(timeout=0.2)
                    if item is None:
                        continue
                    if isinstance(item, EndOfStream):
                        reason = "end of stream"
                        if self.capture.status.state == "failed":
                            # A source retrying cannot fix: exit non-zero so that systemd
                            # (Restart=on-failure) restarts or reports the unit.
                            reason = "camera failed"
                            failed = True
                        break
                    self._count_fps(time.monotonic())
                    if not self.recognizer.armed:
                        continue  # disarmed: the frame is dropped unread
                    outcome = self.recognizer.process(item)
                    counters = self.deployment.counters
                    counters.frames += 1
                    counters.faces_processed += outcome.faces
                    counters.tracks += outcome.new_tracks
                    self._queue_alerts(outcome.alerts, outcome.alert_errors)
                    del outcome, item
            finally:
                self._shutdown(reason)
        return SourceError.exit_code if failed else 0

    def _count_fps(self, now: float) -> None:
        window = self._frames_window
        window.append(now)
        while window and now - window[0] > 2.0:
            window.popleft()
        if len(window) > 1:
            self._fps = (len(window) - 1) / max(window[-1] - window[0], 1e-6)

    def _shutdown(self, reason: str) -> None:
        log.info("edge run stopping: %s", reason)
        self.notifier.stopping()
        self.capture.stop()
        self.pinger.stop()
        self.recognizer.disarm()
        self.audit.append("daemon_stop", reason=reason)
        flushed = self.publisher.stop(flush_timeout=5.0)
        if not flushed:
            log.warning("%d message(s) stay in the outbox for the next start",
                        self.outbox.count_pending())
        self.deployment.close()
        self.outbox.close()
        unlock_state(self._state_lock)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
