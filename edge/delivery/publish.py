"""The MQTT publisher: drains the outbox to the control-room broker and receives its replies.

paho-mqtt 2 (``CallbackAPIVersion.VERSION2``), MQTT 5, mutual TLS (TLS 1.2+),
QoS 1. Topics are ``lfr/<device_id>/<kind>`` (see :func:`topic`, in
:mod:`edge.delivery.link` with the client set-up).

Delivery contract (what the tests prove against a real mosquitto):

- A message is written to the :class:`~edge.delivery.outbox.Outbox` first (durable,
  encrypted); the publisher deletes it **only** in ``on_publish`` with a
  successful PUBACK reason code. A refused PUBACK (e.g. "Not authorized") keeps
  the row, records ``last_error`` and retries it on the next connection.
- When the outbox cannot store a message (a full disk, an I/O error, its limits) the
  message is held in RAM (:mod:`edge.delivery.held`, bounded), retried into the outbox
  each turn and, while the disk refuses, published directly (QoS 1, deleted on PUBACK);
  :attr:`Publisher.persist_error` says so for ``status``. Only when that queue is full is
  a message refused (:class:`~edge.delivery.held.HeldFull`, which the caller audits).
- "Connected" means a CONNACK with a success reason code, never just an open
  socket. paho's own loop reconnects with exponential backoff.
- While disconnected nothing is dropped. Rows handed to paho and not yet acknowledged
  are published again from the outbox on the next connection (a new connection starts
  from the oldest pending row). The payload is byte-identical (same ``alert_id`` and
  ``published_at``: the first-publish time is stored in the outbox row), so the control
  room deduplicates on ``alert_id``.
- **The network thread is watched**: each drain turn checks that paho's thread is alive
  and, while connected, that it has read from the socket within 2.5 keepalives (a live
  connection answers PINGREQs); a dead or stalled thread is abandoned and the client
  rebuilt from scratch inside the process (:attr:`Publisher.rebuilds`), before the
  systemd watchdog would have to kill everything.
- ``lfr/<id>/status`` is retained JSON ``{"state": "online"|"offline",
  "armed": bool, "reason": str, "device_id": str, "at": RFC 3339, ...}``; the last
  will (retained, QoS 1) is the offline form without ``at``, reason ``"connection
  lost"``. A will cannot change during a connection, so **when ``armed`` changes the
  publisher reconnects** (a clean DISCONNECT, which publishes no will, then a new
  connection carrying the new will): after a crash the control room sees the armed
  state the device really had. :meth:`Publisher.stop` publishes ``offline`` with reason
  ``"stopped"``. The status is republished on every (re)connect.
- **Alerts are signed by the device as they are handed to MQTT** (``signing_key``,
  :func:`~edge.delivery.alert_sign.seal_alert`: stamped, then signed, deterministic); the
  daemon always passes its key, a publisher without one sends alerts the control room
  refuses.
- ``stats`` are QoS 0 and not durable: dropped while offline.
- ``adjudications`` and ``commands`` are subscribed at QoS 1 in a persistent session
  (client id = device id, clean start off). The CONNECT carries ``MaximumPacketSize``
  (:data:`~edge.delivery.link.MAX_PACKET_BYTES`), so the broker drops anything larger
  instead of sending it. Each message goes through :class:`~edge.delivery.inbound.InboundGate`
  (size, retained, rate) into the caller's bounded inbox as bytes; the callback catches
  everything, so the message is always PUBACKed once and never redelivered, and paho's
  ``suppress_exceptions`` is a second net.

Health: :attr:`Publisher.last_checkin` (``time.monotonic()``) is updated by the drain
loop each turn (at least every ``drain_interval_s``) once it has checked paho's thread
(and rebuilt the client if needed), for the watchdog.

Built by composition along its seams, with the invariants kept in one place: the shared
state (the connection generation, the in-flight maps of outbox and held messages, the
cursor, the status and will, the current client) and the steps that settle it are one
:class:`~edge.delivery.publish_state.PublisherState`, owned by the Publisher and handed
to its two parts: the :class:`~edge.delivery.publish_client.ClientManager` (the client's
build, watch, rebuild and paho's callbacks) and the
:class:`~edge.delivery.publish_drain.OutboxDrainer` (the outbox drain). This module is
the public face: the constructor's contract, enqueueing, status and stats, start and
stop, and the drain loop's turn. What touches none of that state lives beside them: the
client and topics (:mod:`~edge.delivery.link`), the inbound gate
(:mod:`~edge.delivery.inbound`) and the RAM queue (:mod:`~edge.delivery.held`). Every
name this module exported is still importable from it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import MQTTErrorCode

from edge.delivery.alert import encode_alert, rfc3339
from edge.delivery.held import HeldQueue
from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.link import (
    IN_KINDS,
    OUT_KINDS,
    BrokerSettings,
    json_bytes,
    new_client,
    tls_context,
    topic,
)
from edge.delivery.outbox import Outbox, OutboxError
from edge.delivery.publish_client import STALL_KEEPALIVES, WILL_WAIT_S, ClientManager
from edge.delivery.publish_drain import OutboxDrainer
from edge.delivery.publish_state import LOGGER, InboxCallback, PublisherState, RefusedCallback
from edge.types import AlertRecord

__all__ = [
    "IN_KINDS", "OUT_KINDS", "STALL_KEEPALIVES", "WILL_WAIT_S", "BrokerSettings", "Inbound",
    "InboxCallback", "Publisher", "RefusedCallback", "new_client", "tls_context", "topic",
]  # fmt: skip

log = logging.getLogger(LOGGER)


class Publisher:
    """Publishes the outbox to the broker and hands incoming replies to the inbox.

    ``start()`` connects in the background and returns at once; ``stop()``
    flushes (bounded), publishes the offline status and disconnects.
    """

    def __init__(
        self,
        device_id: str,
        broker: BrokerSettings,
        outbox: Outbox,
        *,
        inbox: InboxCallback | None = None,
        on_refused: RefusedCallback | None = None,
        client_id: str | None = None,
        inflight_max: int = 20,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        drain_interval_s: float = 0.5,
        session_expiry_s: int = 7 * 24 * 3600,
        stats_provider: Callable[[], Mapping[str, Any]] | None = None,
        stats_interval_s: float = 30.0,
        topic_prefix: str = "lfr",
        held: HeldQueue | None = None,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.state = PublisherState(
            device_id, broker, outbox, inbox=inbox, on_refused=on_refused,
            inflight_max=inflight_max, topic_prefix=topic_prefix, held=held,
            signing_key=signing_key,
        )  # fmt: skip
        self.clients = ClientManager(self.state, client_id=client_id or device_id,
                                     reconnect=(reconnect_min_s, reconnect_max_s),
                                     session_expiry_s=session_expiry_s)  # fmt: skip
        self.drainer = OutboxDrainer(self.state)
        self.drain_interval_s = drain_interval_s
        self.stats_provider = stats_provider
        self.stats_interval_s = stats_interval_s
        self.last_checkin = time.monotonic()
        self._thread: threading.Thread | None = None
        self._next_stats = 0.0

    # -- the shared state, read (and the broker settings set) from outside -------------------

    @property
    def device_id(self) -> str:
        return self.state.device_id

    @property
    def outbox(self) -> Outbox:
        return self.state.outbox

    @property
    def held(self) -> HeldQueue:
        return self.state.held

    @property
    def gate(self) -> InboundGate:
        return self.state.gate

    @property
    def broker(self) -> BrokerSettings:
        return self.state.broker

    @broker.setter
    def broker(self, value: BrokerSettings) -> None:
        self.state.broker = value  # used from the next connection (or rebuild) on

    @property
    def client(self) -> mqtt.Client:
        """The current paho client (a rebuild replaces it)."""
        return self.state.client

    @property
    def acked(self) -> int:
        """Messages delivered (PUBACK success), this process."""
        return self.state.acked

    @property
    def connect_count(self) -> int:
        """Successful CONNACKs, this process."""
        return self.state.connect_count

    @property
    def rebuilds(self) -> int:
        """Clients rebuilt after a dead or stalled thread or a will change."""
        return self.clients.rebuilds

    @property
    def persist_error(self) -> str | None:
        """The outbox refused a write and has not taken one since (for ``status``)."""
        return self.state.persist_error

    def topic(self, kind: str) -> str:
        return self.state.topic(kind)

    # -- public -----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        with self.state.lock:
            return self.state.connected

    @property
    def last_error(self) -> str | None:
        """The latest problem (connect failure, refused PUBACK, outbox error); None once
        a connection succeeds after it."""
        with self.state.lock:
            return self.state.last_error

    @property
    def pending_count(self) -> int:
        """Messages not yet acknowledged by the broker (outbox and held in RAM)."""
        try:
            return self.outbox.count_pending() + len(self.held)
        except OutboxError:
            return len(self.held)

    @property
    def inflight_count(self) -> int:
        with self.state.lock:
            return len(self.state.inflight) + len(self.state.held_inflight)

    def start(self) -> None:
        """Connect in the background (paho's loop thread) and start the drain loop."""
        if self._thread is not None:
            return
        self.clients.connect(self.state.client)
        self._thread = threading.Thread(
            target=self._run, name=f"publisher-{self.device_id}", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        """Wait (bounded) for a successful CONNACK; returns :attr:`connected`."""
        deadline = time.monotonic() + timeout
        while not self.connected and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.connected

    def enqueue(self, msg_id: str, kind: str, payload: bytes, retain: bool = False) -> bool:
        """Store a message for ``lfr/<id>/<kind>`` (outbox, else RAM) and wake the drain loop.

        Audit entries may use the outbox's reserve. Returns False if ``msg_id`` was
        already queued. Raises
        :class:`~edge.delivery.held.HeldFull` (an ``OutboxFull``; the caller audits it)
        when neither the outbox nor the in-memory queue can take it.
        """
        target = self.topic(kind)
        try:
            added = self.outbox.put(msg_id, target, payload, retain, reserved=kind == "audit")
        except OutboxError as exc:
            self.state.persist_error = str(exc)
            log.error("outbox cannot store %s (%s); held in memory", msg_id, exc)
            added = self.held.hold(msg_id, target, payload, retain)
        self.state.wake.set()
        return added

    def enqueue_many(self, items: list[tuple[str, str, bytes]]) -> list[bool]:
        """Store ``(msg_id, kind, payload)`` messages (not retained) in the outbox in one
        transaction and wake the drain loop; one flag per item (False: already queued).

        All or nothing: raises :class:`~edge.delivery.outbox.OutboxError` (including
        ``OutboxFull``) with nothing stored, and the caller falls back to :meth:`enqueue`
        one by one (the alert worker does), which holds in RAM what the outbox refuses.
        """
        rows = [(msg_id, self.topic(kind), payload, False) for msg_id, kind, payload in items]
        added = self.outbox.put_many(rows)
        self.state.wake.set()
        return added

    def enqueue_alert(self, record: AlertRecord) -> bool:
        """Queue an alert (JSON per ``edge/schemas/alert.v1.json``) under its ``alert_id``."""
        return self.enqueue(record.alert_id, "alerts", encode_alert(record))

    def wake(self) -> None:
        """Ask the drain loop to look at the outbox now (after an external ``put``)."""
        self.state.wake.set()

    def publish_status(self, armed: bool, reason: str, **extra: Any) -> bool:
        """Set the retained online status; the drain loop publishes it at once if connected.

        The status is remembered and republished on every reconnect; a change of
        ``armed`` makes the drain loop reconnect so the last will says the same. Returns
        whether the publisher is connected now (else it goes out on connect).
        """
        s = self.state
        with s.lock:
            s.status = {"armed": bool(armed), "reason": str(reason), **extra}
            s.status_due = True
            connected = s.connected
        s.wake.set()
        return connected

    def publish_stats(self, stats: Mapping[str, Any]) -> bool:
        """Publish ``stats`` (QoS 0, not retained, not durable); False if offline."""
        if not self.connected:
            return False
        body = {**stats, "device_id": self.device_id, "at": rfc3339(time.time())}
        info = self.state.publish_other(self.topic("stats"), json_bytes(body), qos=0,
                                        retain=False)  # fmt: skip
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stop(self, flush_timeout: float = 5.0) -> bool:
        """Flush (bounded), publish the offline status, disconnect, stop the threads.

        Returns True if nothing was left pending. Undelivered outbox rows stay for the
        next start (what is held in RAM only is lost, and logged).
        """
        s = self.state
        deadline = time.monotonic() + max(0.0, flush_timeout)
        s.wake.set()
        while self._thread is not None and time.monotonic() < deadline:
            pending = self.pending_count
            with s.lock:
                stuck = s.connected and not s.inflight and pending <= len(s.rejected)
            if pending == 0 or stuck:
                break
            time.sleep(0.05)
        s.stopping.set()
        s.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        s.flush_acks()
        client = s.client
        if self.connected:
            with s.lock:
                s.status = {**s.status, "reason": "stopped"}
            info = s.publish_other(
                self.topic("status"), s.status_payload("offline"), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
        client.disconnect()
        client.loop_stop()
        with s.lock:
            s.connected = False
        if len(self.held):
            log.error("%d message(s) held in memory were never stored or delivered",
                      len(self.held))  # fmt: skip
        return self.pending_count == 0

    # -- drain loop -------------------------------------------------------------------------

    def _run(self) -> None:
        s = self.state
        while not s.stopping.is_set():
            try:
                hold = self.clients.watch()
                self.last_checkin = time.monotonic()
                s.flush_acks()
                if not hold:
                    self._maybe_status()
                    self.drainer.drain_held()
                    self.drainer.drain_once()
                    self._maybe_stats()
            except Exception as exc:
                log.exception("publisher drain failed")
                s.error(f"drain failed: {exc}")
            s.wake.wait(self.drain_interval_s)
            s.wake.clear()

    def _maybe_status(self) -> None:
        s = self.state
        with s.lock:
            due = s.status_due and s.connected
            s.status_due = False if due else s.status_due
        if due:
            s.send_status("online")

    def _maybe_stats(self) -> None:
        if self.stats_provider is None:
            return
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.stats_interval_s
        self.publish_stats(self.stats_provider())
