"""What the web routes may ask of the console: the only way from a page to MQTT.

- :meth:`Console.adjudicate`: sign the officer's decision with the control room's key
  (:func:`edge.watchlist.adjudication.sign_adjudication`, the logged-in user as the
  officer), publish it QoS 1 through the ingest client, record it and announce it;
- :meth:`Console.crop` / :meth:`Console.reference`: decrypt an image for one user, each
  view written to the console's audit trail with who and when (a subject's reference
  images are one sealed set, :mod:`edge.console.refimages`; :meth:`Console.reference_info`
  gives their provenance and pixel sizes, no image);
- :meth:`Console.housekeeping` (every minute, and at start): purge alerts and crops older
  than the retention period unless on legal hold (each purged id kept as a tombstone, so a
  replay is refused) and destroy the data key of each day none of whose crops is left,
  delete reference images (and their deployment's key) of deployments whose window has
  closed, import new reference files, forget login attempts older than the limits'
  window; each purge and deletion audited;
- :meth:`Console.watch_fleet` (every quarter of ``stale_after_s``): a van whose heartbeat is
  overdue turns stale on every open fleet page.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.console import refimages
from edge.console.auth import WINDOW_S
from edge.console.crypto import AtRest, DataKeys, SealError, reference_key_name
from edge.console.events import Hub
from edge.console.metrics import Metrics
from edge.console.store import Store
from edge.console.store_images import CROP_KEY_PERIOD_S
from edge.delivery.alert import DECISIONS, AlertFormatError, jpeg_size
from edge.delivery.publish import topic
from edge.watchlist.adjudication import sign_adjudication
from edge.watchlist.references import ReferencesRefused, open_references

log = logging.getLogger(__name__)


class PublishFailed(Exception):  # noqa: N818 (a refusal, like BundleRefused)
    """The broker did not take a message (offline, refused, or no PUBACK in time)."""


class Publisher(Protocol):
    """What sends the console's messages (the ingest's MQTT client): publish at QoS 1 and
    wait for the broker's PUBACK, else raise :class:`PublishFailed`."""

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None: ...


class ActionRefused(Exception):  # noqa: N818 (a refusal, shown to the user)
    def __init__(self, message: str, status: int = 400) -> None:
        self.status = status
        super().__init__(message)


class Console:
    def __init__(self, store: Store, at_rest: AtRest, hub: Hub, metrics: Metrics,
                 publisher: Publisher, signing_key: Ed25519PrivateKey, *,
                 retention_days: int = 31, references_dir: Path | None = None,
                 clock: Callable[[], float] = time.time,
                 stale_after_s: float | None = None) -> None:  # fmt: skip
        self.store = store
        self.at_rest = at_rest
        self.keys = DataKeys(store.images, at_rest)
        self.hub = hub
        self.metrics = metrics
        self.publisher = publisher
        self.signing_key = signing_key
        self.signer: Ed25519PublicKey = signing_key.public_key()
        self.retention_s = retention_days * 86400.0
        self.references_dir = references_dir
        self.clock = clock
        self.stale_after_s = stale_after_s
        self._stale: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- adjudication ---------------------------------------------------------------------

    def adjudicate(self, officer: str, alert_id: str, decision: str) -> dict[str, object]:
        if decision not in DECISIONS:
            raise ActionRefused(f"decision must be one of {', '.join(DECISIONS)}")
        alert = self.store.alert(alert_id)
        if alert is None:
            raise ActionRefused("no such alert", 404)
        device = str(alert["device_id"])
        at = self.clock()
        try:
            payload = sign_adjudication(self.signing_key, device_id=device, alert_id=alert_id,
                                        decision=decision, officer=officer, at=at)  # fmt: skip
        except ValueError as exc:
            raise ActionRefused(str(exc)) from None
        self.store.set_decision(alert_id, decision, officer, at)
        try:
            self.publisher.publish(topic(device, "adjudications"), payload)
        except PublishFailed as exc:
            self.store.set_adjudication_state(alert_id, at, "not_sent")
            self.store.log(officer, "adjudication_not_sent", alert_id=alert_id,
                           decision=decision, error=str(exc))  # fmt: skip
            self.hub.publish("alert_update", alert_id=alert_id)
            raise ActionRefused(f"not sent: {exc}", 503) from None
        self.store.set_adjudication_state(alert_id, at, "acked")
        self.store.log(officer, "adjudication_sent", alert_id=alert_id, decision=decision,
                       device_id=device)  # fmt: skip
        self.metrics.inc("console_adjudications_sent_total", decision=decision)
        self.hub.publish("alert_update", alert_id=alert_id)
        return {"alert_id": alert_id, "decision": decision, "officer": officer, "at": at}

    # -- images (every view audited) --------------------------------------------------------

    def _open(self, sealed: tuple[bytes, str | None], aad: str) -> bytes:
        blob, key_name = sealed
        try:
            key = None if key_name is None else self.keys.get(key_name)
            if key_name is not None and key is None:
                raise ActionRefused("this image's key has been destroyed", 404)
            return self.at_rest.open(blob, aad, key)
        except SealError as exc:
            raise ActionRefused(str(exc), 500) from None

    def crop(self, viewer: str, alert_id: str) -> bytes:
        sealed = self.store.crop_sealed(alert_id)
        if sealed is None:
            raise ActionRefused("no crop for this alert (unknown or purged)", 404)
        jpeg = self._open(sealed, f"crop:{alert_id}")
        self.store.log(viewer, "crop_viewed", alert_id=alert_id)
        return jpeg

    def crop_size(self, alert_id: str) -> tuple[int, int] | None:
        """The crop's (width, height) in pixels, read from its JPEG header (not a view)."""
        sealed = self.store.crop_sealed(alert_id)
        if sealed is None:
            return None
        try:
            return jpeg_size(self._open(sealed, f"crop:{alert_id}"))
        except (ActionRefused, AlertFormatError):
            return None

    def _reference_set(self, deployment_id: str, subject_id: str) -> refimages.ReferenceSet:
        sealed = self.store.images.reference_sealed(deployment_id, subject_id)
        if sealed is None:
            raise ActionRefused("no reference image (not imported, or deleted)", 404)
        blob = self._open(sealed, f"ref:{deployment_id}:{subject_id}")
        try:
            return refimages.unpack(blob)
        except refimages.ReferenceBlobError as exc:
            raise ActionRefused(str(exc), 500) from None

    def reference(self, viewer: str, deployment_id: str, subject_id: str,
                  index: int = 0) -> bytes:  # fmt: skip
        """Reference image ``index`` (0: the best) of a subject, for ``viewer`` (audited)."""
        images = self._reference_set(deployment_id, subject_id).images
        if not 0 <= index < len(images):
            raise ActionRefused("no such reference image", 404)
        self.store.log(viewer, "reference_viewed", deployment_id=deployment_id,
                       subject_id=subject_id, image=index)  # fmt: skip
        return images[index]

    def reference_info(self, deployment_id: str, subject_id: str) -> dict[str, object] | None:
        """Provenance and pixel sizes of a subject's reference images (no image: not a view)."""
        try:
            refs = self._reference_set(deployment_id, subject_id)
        except ActionRefused:
            return None
        return {"source": refs.source, "capture_date": refs.capture_date,
                "sizes": refs.sizes()}  # fmt: skip

    # -- housekeeping -----------------------------------------------------------------------

    def import_references(self, path: Path) -> int:
        """Import one reference file (then remove it); returns the number of images."""
        refs = open_references(path.read_bytes(), self.at_rest.private_key, self.signer)
        if refs.window_end <= self.clock():
            path.unlink(missing_ok=True)
            self.store.log("console", "references_refused", file=path.name,
                           deployment_id=refs.deployment_id, reason="window closed")  # fmt: skip
            return 0
        key_name = reference_key_name(refs.deployment_id)  # destroyed with the images
        key = self.keys.get_or_create(key_name)
        for r in refs.subjects:
            sealed = self.at_rest.seal(refimages.pack(r),
                                       f"ref:{refs.deployment_id}:{r.subject_id}", key)
            self.store.images.put_reference(refs.deployment_id, r.subject_id, r.category, sealed,
                                     refs.window_end, image_key=key_name,
                                     bundle_id=refs.bundle_id)  # fmt: skip
        path.unlink(missing_ok=True)
        self.store.log("console", "references_imported", deployment_id=refs.deployment_id,
                       bundle_id=refs.bundle_id, count=len(refs.subjects))  # fmt: skip
        return len(refs.subjects)

    def housekeeping(self, now: float | None = None) -> dict[str, int]:
        now = self.clock() if now is None else now
        done = {"purged": 0, "references_deleted": 0, "references_imported": 0}
        self.store.auth.purge_login_attempts(now - WINDOW_S)
        ids = self.store.purge_alerts(now - self.retention_s, now)
        if ids:
            done["purged"] = len(ids)
            self.store.log("console", "alerts_purged", count=len(ids), alert_ids=ids[:1000],
                           retention_days=round(self.retention_s / 86400))  # fmt: skip
        # A day's crop key goes with its last crop, once the day (and the next) is over.
        days = self.store.images.shred_crop_keys(int(now // CROP_KEY_PERIOD_S) - 1)
        if days:
            self.store.log("console", "crop_keys_destroyed", keys=days)
        for dep, (n, end) in self.store.images.reference_deployments().items():
            if end <= now:
                deleted = self.store.images.delete_references(dep)
                done["references_deleted"] += deleted
                self.store.log("console", "references_deleted", deployment_id=dep,
                               count=deleted or n, reason="window closed")  # fmt: skip
        if self.references_dir is not None and self.references_dir.is_dir():
            for path in sorted(self.references_dir.glob("*.refs")):
                try:
                    done["references_imported"] += self.import_references(path)
                except (ReferencesRefused, OSError) as exc:
                    log.error("reference file %s refused: %s", path.name, exc)
                    self.store.log("console", "references_refused", file=path.name,
                                   reason=str(exc))  # fmt: skip
                    path.rename(path.with_suffix(".refused"))
        return done

    def watch_fleet(self) -> list[str]:
        """Announce each van that went stale or fresh since the last look (its row on every
        open fleet page changes); returns the vans now stale."""
        if self.stale_after_s is None:
            return []
        stale = {d["device_id"] for d in self.store.fleet.devices(self.stale_after_s) if d["stale"]}
        for device in sorted(stale ^ self._stale):
            self.hub.publish("device", device_id=device)
        self._stale = stale
        return sorted(stale)

    def start(self, interval_s: float = 60.0) -> None:
        tick = 60.0 if self.stale_after_s is None else min(interval_s, self.stale_after_s / 4)

        def loop() -> None:
            due = 0.0
            while not self._stop.is_set():
                try:
                    if time.monotonic() >= due:
                        due = time.monotonic() + interval_s
                        self.housekeeping()
                    self.watch_fleet()
                except Exception:
                    log.exception("housekeeping failed")
                self._stop.wait(tick)

        self._thread = threading.Thread(target=loop, name="console-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
