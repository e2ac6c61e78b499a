"""What the console does with each device message: validate, store, announce.

:meth:`Handler.handle` takes a topic and a payload exactly as the broker delivered them
and never raises: a bad message is counted (``console_messages_refused_total{kind}``),
logged as one line (without its content) and dropped; one without a valid device
signature (:class:`~edge.console.messages.Unverified`) is also counted as
``console_messages_unverified_total{kind,reason}``, and a genuine alert that comes too late
(:class:`~edge.console.messages.Stale`: older than the retention, purged already, captured
after its deployment's signed end) as ``console_messages_stale_total{kind,reason}``; both
are written to the console's trail (``unverified_refused``, ``stale_refused``: at most once
a minute per device, kind and reason, with the count). The MQTT client
(:mod:`edge.console.ingest`) calls it from its worker thread; tests call it directly too.

Every console instance sees every message (:mod:`edge.console.ingest`): what is stored is
idempotent, and a duplicate is still announced to this instance's pages.

What the vans say unsigned (``status``, ``stats``) only shows state; what changes or
deletes a record comes from a van's verified audit entries (:meth:`Handler._apply_verified`):
its answer to an officer's decision, its deployments and their signed summary (which also
deletes the reference images imported with the bundle it names), each tied to that van.
"""

from __future__ import annotations

import base64
import logging
import time
from typing import Any, Final

from edge.console import messages as m
from edge.console.crypto import AtRest, DataKeys, crop_key_name
from edge.console.events import Hub
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.delivery.alert import DEVICE_ID_RE, parse_rfc3339

log = logging.getLogger(__name__)

KINDS: Final = ("alerts", "status", "stats", "audit")
END_TOLERANCE_S: Final = 2.0
"""An alert captured after its deployment's signed end (the summary's time has whole
seconds) is refused: the watchlist is wiped before the summary is written."""


def split_topic(topic: str, prefix: str = "lfr") -> tuple[str, str] | None:
    """``lfr/<device>/<kind>`` -> (device, kind), or None for anything else."""
    parts = topic.split("/")
    if len(parts) != 3 or parts[0] != prefix or parts[2] not in KINDS:
        return None
    if not DEVICE_ID_RE.match(parts[1]):
        return None
    return parts[1], parts[2]


UNVERIFIED_LOG_S: Final = 60.0
UNVERIFIED_TRAIL_PER_MINUTE: Final = 30
"""Trail lines for refused unverified messages, all vans together (a forger inventing
device ids must not turn each message into a database write)."""


class Handler:
    def __init__(self, store: Store, at_rest: AtRest, hub: Hub, metrics: Metrics,
                 prefix: str = "lfr", *, device_keys: m.DeviceKeys,
                 retention_days: int = 31) -> None:  # fmt: skip
        self.device_keys = device_keys
        self.retention_s = retention_days * 86400.0
        self._unverified: dict[tuple[str, str, str], tuple[float, int]] = {}
        self._trail_window = (float("-inf"), 0)  # (minute start, lines written in it)
        self.store = store
        self.at_rest = at_rest
        self.keys = DataKeys(store.images, at_rest)
        self.hub = hub
        self.metrics = metrics
        self.prefix = prefix

    def handle(self, topic: str, payload: bytes, retained: bool = False,
               received_at: float | None = None) -> str:  # fmt: skip
        """Process one message; returns ``stored``, ``duplicate``, ``refused``, ``failed``..."""
        now = time.time() if received_at is None else received_at
        where = split_topic(topic, self.prefix)
        if where is None:
            self.metrics.inc("console_messages_refused_total", kind="topic")
            log.warning("ignoring a message on an unexpected topic (%d bytes)", len(payload))
            return "refused"
        device, kind = where
        try:
            result: str = getattr(self, f"_{kind}")(device, payload, retained, now)
            return result
        except m.Unverified as exc:
            self._refuse_on_trail(device, kind, "unverified", exc.reason, exc, now)
            return "refused"
        except m.Stale as exc:
            self._refuse_on_trail(device, kind, "stale", exc.reason, exc, now)
            return "refused"
        except m.BadMessage as exc:
            self.metrics.inc("console_messages_refused_total", kind=kind)
            log.warning("refused a %s message from %s: %s", kind, device, exc)
            return "refused"
        except Exception:  # a bug or the database: never stop the loop
            self.metrics.inc("console_messages_failed_total", kind=kind)
            log.exception("handling a %s message from %s failed", kind, device)
            return "failed"

    def _refuse_on_trail(self, device: str, kind: str, why: str, reason: str, exc: Exception,
                         now: float) -> None:  # fmt: skip
        """Count a refusal (``why``: unverified or stale) and write it to the trail, at most
        once a minute per device, kind and reason, and a bounded number a minute in all."""
        self.metrics.inc("console_messages_refused_total", kind=kind)
        self.metrics.inc(f"console_messages_{why}_total", kind=kind, reason=reason)
        log.warning("refused a %s %s message on the topic of %s: %s", why, kind, device, exc)
        key = (device, kind, f"{why}:{reason}")
        if len(self._unverified) > 10_000:
            self._unverified.clear()
        last, count = self._unverified.get(key, (float("-inf"), 0))
        count += 1
        start, written = self._trail_window
        if now - start >= 60.0:
            start, written = now, 0
        self._trail_window = (start, written)
        if now - last >= UNVERIFIED_LOG_S and written < UNVERIFIED_TRAIL_PER_MINUTE:
            self._trail_window = (start, written + 1)
            self.store.log("console", f"{why}_refused", device_id=device, kind=kind,
                           reason=reason, count=count)  # fmt: skip
            last, count = now, 0
        self._unverified[key] = (last, count)

    def _alerts(self, device: str, payload: bytes, _retained: bool, now: float) -> str:
        alert = m.parse_alert_message(device, payload, self.device_keys)
        alert_id, deployment = alert["alert_id"], alert["deployment_id"]
        captured = parse_rfc3339(alert["captured_at"])
        if captured < now - self.retention_s:
            raise m.Stale("expired", f"alert {alert_id} was captured more than the retention "
                          "ago")  # fmt: skip
        ended = self.store.fleet.deployment_ended_at(device, deployment)
        if ended is not None and captured > ended + END_TOLERANCE_S:
            raise m.Stale("deployment_ended", f"alert {alert_id} was captured after "
                          f"deployment {deployment} ended (the van's signed summary)")
        crop = base64.b64decode(alert["face_jpeg_b64"])
        key_name = crop_key_name(now)  # the day's random key: destroyed with its last crop
        sealed = self.at_rest.seal(crop, f"crop:{alert_id}", self.keys.get_or_create(key_name))
        outcome = self.store.add_alert(alert, sealed, now, crop_key=key_name)
        if outcome == "purged":
            raise m.Stale("purged", f"alert {alert_id} was purged (retention) and is not "
                          "taken again")  # fmt: skip
        self.hub.publish("alert", alert_id=alert_id, device_id=device,
                         deployment_id=deployment)  # another instance may have stored it
        if outcome == "duplicate":
            self.metrics.inc("console_alerts_duplicate_total")
            return "duplicate"
        self.metrics.inc("console_alerts_received_total")
        self.metrics.observe_latency(time.time() - parse_rfc3339(alert["published_at"]))
        return "stored"

    def _status(self, device: str, payload: bytes, retained: bool, now: float) -> str:
        if not payload:  # a cleared retained message
            return "ignored"
        status = m.parse_status(device, payload)
        self.store.fleet.record_status(device, status, now, retained)
        self.hub.publish("device", device_id=device, state=status["state"])
        return "stored"

    def _stats(self, device: str, payload: bytes, _retained: bool, now: float) -> str:
        self.store.fleet.record_stats(device, m.parse_stats(device, payload), now)
        self.hub.publish("device", device_id=device)
        return "stored"

    def _audit(self, device: str, payload: bytes, _retained: bool, now: float) -> str:
        parsed = m.parse_audit_entry(device, payload)
        m.verify_audit_entry(device, parsed, self.device_keys)
        outcome, state, verified = self.store.audit.add_entry(device, parsed, now)
        if outcome == "duplicate":
            answer = m.device_adjudication(parsed["entry"])
            if answer is not None:  # another instance recorded it: this one's pages hear it
                self.hub.publish("alert_update", alert_id=answer["alert_id"])
            self._apply_verified(device, verified, now)  # stored by an instance that stopped
            return "duplicate"
        if state.state == "broken" or outcome == "conflict":
            self.metrics.inc("console_audit_breaks_total")
            log.error("audit chain of %s: %s", device, state.problem)
        self._apply_verified(device, verified, now)
        self.hub.publish("audit", device_id=device, state=state.state)
        return "stored" if outcome == "new" else outcome

    def _apply_verified(self, device: str, seqs: list[int], now: float) -> None:
        """What the van's verified entries record: its answer to an officer's decision, and
        its deployments with their signed summary, each tied to this van and its key."""
        if not seqs:
            return
        for row in sorted(self.store.audit.entries(device, limit=len(seqs), seqs=seqs),
                          key=lambda r: int(r["seq"])):  # fmt: skip
            body, seq = row["body"], int(row["seq"])
            answer = m.device_adjudication(body)
            if answer is not None:
                if self.store.audit.record_device_answer(device, answer, seq):
                    self.hub.publish("alert_update", alert_id=answer["alert_id"])
                continue
            try:
                rec = m.deployment_record(device, body)
            except m.BadMessage as exc:
                self.metrics.inc("console_records_refused_total", event=str(row["event"]))
                log.warning("audit entry %s of %s not recorded: %s", seq, device, exc)
                continue
            if rec is not None:
                self._record_deployment(device, rec, now, seq)

    def _record_deployment(self, device: str, rec: dict[str, Any], now: float, seq: int) -> None:
        self.store.fleet.record_deployment(device, rec, now, seq)
        if rec.get("state") == "ended":
            dep, bundle = rec["deployment_id"], rec["bundle_id"]
            n = self.store.images.delete_references(dep, bundle)
            if n:
                self.store.log("console", "references_deleted", deployment_id=dep,
                               bundle_id=bundle, count=n, device_id=device, audit_seq=seq,
                               reason="the van's signed summary")  # fmt: skip
        self.hub.publish("deployment", device_id=device, deployment_id=rec["deployment_id"])
