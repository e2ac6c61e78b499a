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

Why one module of ~700 lines: the connection generation, the in-flight maps (outbox and
held), the cursor and the status/will state are shared by the drain loop and paho's
callbacks on two threads under one lock; their invariants (what a PUBACK settles, what a
new connection republishes, when a rebuild may drop in-flight state) are only readable
in one place. What does not touch that state lives beside it: the client and topics
(:mod:`~edge.delivery.link`), the inbound gate (:mod:`~edge.delivery.inbound`) and the
RAM queue (:mod:`~edge.delivery.held`).
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
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.alert import DEVICE_ID_RE, encode_alert, rfc3339
from edge.delivery.alert_sign import outgoing
from edge.delivery.held import HeldQueue
from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.link import (
    IN_KINDS,
    MAX_PACKET_BYTES,
    OUT_KINDS,
    BrokerSettings,
    json_bytes,
    new_client,
    tls_context,
    topic,
)
from edge.delivery.outbox import Outbox, OutboxError, OutboxTampered
from edge.errors import BrokerError
from edge.types import AlertRecord

__all__ = [
    "IN_KINDS", "OUT_KINDS", "BrokerSettings", "Inbound", "Publisher", "new_client",
    "tls_context", "topic",
]  # fmt: skip

log = logging.getLogger(__name__)

InboxCallback = Callable[[Inbound], bool]
"""Takes a message let through by the gate; False if the (bounded) inbox is full."""
RefusedCallback = Callable[[str, str, int], None]
"""Told ``(kind, reason, size)`` for each inbound message refused by the gate."""
STALL_KEEPALIVES = 2.5
WILL_WAIT_S = 5.0


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
        if not DEVICE_ID_RE.match(device_id):
            raise BrokerError(f"device id {device_id!r} is not a valid MQTT topic level")
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        topic(device_id, "status", topic_prefix)  # ValueError now, not in a callback
        self.broker = broker
        self.outbox = outbox
        self.held = held if held is not None else HeldQueue()  # (an empty queue is falsy)
        self.signing_key = signing_key  # signs each alert as it is published (alert_sign)
        self.gate = InboundGate(inbox or (lambda _m: True), on_refused=on_refused)
        self.inflight_max = max(1, inflight_max)
        self.drain_interval_s = drain_interval_s
        self.stats_provider = stats_provider
        self.stats_interval_s = stats_interval_s
        self.last_checkin = time.monotonic()
        self.acked = 0  # messages delivered (PUBACK success), this process
        self.connect_count = 0  # successful CONNACKs, this process
        self.rebuilds = 0  # clients rebuilt after a dead/stalled thread or a will change
        self.persist_error: str | None = None  # the outbox refused a write, not cleared yet

        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}  # paho mid -> outbox msg_id, awaiting PUBACK
        self._held_inflight: dict[int, str] = {}  # paho mid -> held msg_id
        self._early: dict[int, ReasonCode] = {}  # on_publish that beat publish()'s return
        self._other_mids: set[int] = set()  # status/stats publishes (not in the outbox)
        self._rejected: set[str] = set()  # refused by the broker on this connection
        self._cursor = 0  # highest outbox seq handed to paho on this connection
        self._gen = 0  # connection generation
        self._connected = False
        self._last_error: str | None = None
        self._status: dict[str, Any] = {"armed": False, "reason": "starting"}
        self._will_armed = False  # the armed value in the current connection's will
        self._will_stale_since: float | None = None
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_stats = 0.0
        self._status_due = False
        self._client_id = client_id or device_id
        self._reconnect = (max(1, reconnect_min_s), max(1, reconnect_max_s))
        self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_props.SessionExpiryInterval = session_expiry_s
        self._connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        self._client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        client = new_client(self._client_id, self.broker)
        client.max_inflight_messages_set(self.inflight_max)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(*self._reconnect)
        client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._set_will(client)
        return client

    # -- public -----------------------------------------------------------------------------

    def topic(self, kind: str) -> str:
        return topic(self.device_id, kind, self.topic_prefix)

    @property
    def connected(self) -> bool:
        """True only between a successful CONNACK and the next disconnect."""
        with self._lock:
            return self._connected

    @property
    def last_error(self) -> str | None:
        """The latest problem (connect failure, refused PUBACK, outbox error); None once
        a connection succeeds after it."""
        with self._lock:
            return self._last_error

    @property
    def pending_count(self) -> int:
        """Messages not yet acknowledged by the broker (outbox and held in RAM)."""
        try:
            return self.outbox.count_pending() + len(self.held)
        except OutboxError:
            return len(self.held)

    @property
    def inflight_count(self) -> int:
        with self._lock:
            return len(self._inflight) + len(self._held_inflight)

    def start(self) -> None:
        """Connect in the background (paho's loop thread) and start the drain loop."""
        if self._thread is not None:
            return
        self._connect(self._client)
        self._thread = threading.Thread(
            target=self._run, name=f"publisher-{self.device_id}", daemon=True
        )
        self._thread.start()

    def _connect(self, client: mqtt.Client) -> None:
        client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive,
            clean_start=False,
            properties=self._connect_props,
        )
        client.loop_start()

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
            self.persist_error = str(exc)
            log.error("outbox cannot store %s (%s); held in memory", msg_id, exc)
            added = self.held.hold(msg_id, target, payload, retain)
        self._wake.set()
        return added

    def enqueue_alert(self, record: AlertRecord) -> bool:
        """Queue an alert (JSON per ``edge/schemas/alert.v1.json``) under its ``alert_id``."""
        return self.enqueue(record.alert_id, "alerts", encode_alert(record))

    def wake(self) -> None:
        """Ask the drain loop to look at the outbox now (after an external ``put``)."""
        self._wake.set()

    def publish_status(self, armed: bool, reason: str, **extra: Any) -> bool:
        """Set the retained online status; the drain loop publishes it at once if connected.

        The status is remembered and republished on every reconnect; a change of
        ``armed`` makes the drain loop reconnect so the last will says the same. Returns
        whether the publisher is connected now (else it goes out on connect).
        """
        with self._lock:
            self._status = {"armed": bool(armed), "reason": str(reason), **extra}
            self._status_due = True
            connected = self._connected
        self._wake.set()
        return connected

    def publish_stats(self, stats: Mapping[str, Any]) -> bool:
        """Publish ``stats`` (QoS 0, not retained, not durable); False if offline."""
        if not self.connected:
            return False
        body = {**stats, "device_id": self.device_id, "at": rfc3339(time.time())}
        info = self._publish_other(self.topic("stats"), json_bytes(body), qos=0, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stop(self, flush_timeout: float = 5.0) -> bool:
        """Flush (bounded), publish the offline status, disconnect, stop the threads.

        Returns True if nothing was left pending. Undelivered outbox rows stay for the
        next start (what is held in RAM only is lost, and logged).
        """
        deadline = time.monotonic() + max(0.0, flush_timeout)
        self._wake.set()
        while self._thread is not None and time.monotonic() < deadline:
            pending = self.pending_count
            with self._lock:
                stuck = self._connected and not self._inflight and pending <= len(self._rejected)
            if pending == 0 or stuck:
                break
            time.sleep(0.05)
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        client = self._client
        if self.connected:
            with self._lock:
                self._status = {**self._status, "reason": "stopped"}
            info = self._publish_other(
                self.topic("status"), self._status_payload("offline"), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
        client.disconnect()
        client.loop_stop()
        with self._lock:
            self._connected = False
        if len(self.held):
            log.error("%d message(s) held in memory were never stored or delivered",
                      len(self.held))  # fmt: skip
        return self.pending_count == 0

    # -- drain loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                hold = self._watch_client()
                self.last_checkin = time.monotonic()
                if not hold:
                    self._maybe_status()
                    self._drain_held()
                    self._drain_once()
                    self._maybe_stats()
            except Exception as exc:
                log.exception("publisher drain failed")
                self._error(f"drain failed: {exc}")
            self._wake.wait(self.drain_interval_s)
            self._wake.clear()

    def _watch_client(self) -> bool:
        """Rebuild the client if paho's thread died or stalled, or the will is stale.

        Returns True to hold publishing this turn: a stale will waits (up to
        :data:`WILL_WAIT_S`) for the messages in flight to be acknowledged, so the
        reconnect repeats none of them.
        """
        client = self._client
        thread = client._thread
        if thread is None or not thread.is_alive():
            self._rebuild("the MQTT network thread is not running", graceful=False)
            return False
        now = time.monotonic()
        with self._lock:
            connected = self._connected
            will_stale = connected and bool(self._status.get("armed")) != self._will_armed
            inflight = len(self._inflight) + len(self._held_inflight)
        if connected:
            last_read = float(getattr(client, "_last_bytes_received", now))
            limit = STALL_KEEPALIVES * max(1, self.broker.keepalive)
            if now - last_read > limit:
                self._rebuild(f"the MQTT network thread read nothing for {limit:g} s",
                              graceful=False)  # fmt: skip
                return False
        if not will_stale:
            self._will_stale_since = None
            return False
        if self._will_stale_since is None:
            self._will_stale_since = now
        if inflight and now - self._will_stale_since < WILL_WAIT_S:
            return True
        self._will_stale_since = None
        self._rebuild("armed state changed: reconnecting with a new last will", graceful=True)
        return False

    def _rebuild(self, why: str, graceful: bool) -> None:
        old = self._client
        log.warning("MQTT client rebuilt: %s", why)
        with self._lock:
            self._connected = False
            self._gen += 1
            self._inflight.clear()
            self._held_inflight.clear()
            self._early.clear()
            self._other_mids.clear()
            self._status_due = True
        self._client = self._make_client()
        self.rebuilds += 1
        if not graceful:
            self._error(why)
        # The old thread may be stuck in a callback: never wait for it.
        old._thread_terminate = True
        if graceful:
            with contextlib.suppress(Exception):
                old.disconnect()  # a clean DISCONNECT: the broker drops the old will
            if old._thread is not None:
                old._thread.join(timeout=2.0)
        with contextlib.suppress(Exception):
            sock = old.socket()
            if sock is not None:
                sock.close()
        self._connect(self._client)

    def _drain_held(self) -> None:
        """Move held messages into the outbox when it takes them; else publish directly."""
        items = self.held.items()
        if not items:
            if self.persist_error is not None and self._outbox_writable():
                self.persist_error = None
            return
        with self._lock:
            busy = set(self._held_inflight.values())
        for item in items:
            if item.msg_id in busy:
                continue
            try:
                self.outbox.put(item.msg_id, item.topic, item.payload, item.retain,
                                reserved=item.topic == self.topic("audit"))  # fmt: skip
            except OutboxError as exc:
                self.persist_error = str(exc)
                break
            self.held.remove(item.msg_id)
            log.info("held message %s stored in the outbox", item.msg_id)
        else:
            self.persist_error = None
        with self._lock:
            if not self._connected:
                return
            gen = self._gen
            room = self.inflight_max - len(self._inflight) - len(self._held_inflight)
            busy = set(self._held_inflight.values())
        for item in self.held.items():
            if room <= 0 or item.msg_id in busy:
                continue
            if item.first_published is None:
                item.first_published = time.time()
            payload = self._outgoing(item.topic, item.payload, item.first_published)
            info = self._client.publish(item.topic, payload, qos=1, retain=item.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            with self._lock:
                if self._gen != gen:
                    return
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._held_inflight[info.mid] = item.msg_id
            if early is not None:
                self._settle_held(item.msg_id, early)
            room -= 1

    def _outgoing(self, topic_: str, payload: bytes, first: float) -> bytes:
        return outgoing(payload, first, self.signing_key if topic_ == self.topic("alerts")
                        else None)  # fmt: skip

    def _outbox_writable(self) -> bool:
        probe = f"probe-{time.monotonic_ns()}"
        try:
            self.outbox.put(probe, self.topic("stats"), b"", False)
            self.outbox.ack(probe)
        except OutboxError:
            return False
        return True

    def _drain_once(self) -> None:
        with self._lock:
            if not self._connected:
                return
            gen = self._gen
            cursor = self._cursor
            room = self.inflight_max - len(self._inflight) - len(self._held_inflight)
            busy = set(self._inflight.values()) | self._rejected
        if room <= 0:
            return
        try:
            items = self.outbox.pending(limit=room + len(busy), after_seq=cursor)
        except OutboxTampered as exc:
            self.outbox.mark_bad(exc.msg_id)
            self._error(str(exc))
            log.error("%s; taken out of the queue", exc)
            self._wake.set()
            return
        for item in items:
            if room <= 0 or self._stopping.is_set():
                break
            if item.msg_id in busy:
                cursor = max(cursor, item.seq)
                continue
            try:
                first = self.outbox.mark_sent(item.msg_id, time.time())
            except OutboxError as exc:  # a full disk: publish anyway, stamp not stored
                self.persist_error = str(exc)
                first = item.published_at or time.time()
            if first is None:  # acked or purged meanwhile
                cursor = max(cursor, item.seq)
                continue
            payload = self._outgoing(item.topic, item.payload, first)
            info = self._client.publish(item.topic, payload, qos=1, retain=item.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._error(f"paho refused to queue {item.msg_id}: {mqtt.error_string(info.rc)}")
                break
            with self._lock:
                if self._gen != gen:
                    return
                early = self._early.pop(info.mid, None)
                if early is None:
                    self._inflight[info.mid] = item.msg_id
            if early is not None:
                self._settle(item.msg_id, early)
            cursor = max(cursor, item.seq)
            room -= 1
        with self._lock:
            if self._gen == gen:
                self._cursor = max(self._cursor, cursor)

    def _maybe_status(self) -> None:
        with self._lock:
            due = self._status_due and self._connected
            self._status_due = False if due else self._status_due
        if due:
            self._send_status("online")

    def _maybe_stats(self) -> None:
        if self.stats_provider is None:
            return
        now = time.monotonic()
        if now < self._next_stats:
            return
        self._next_stats = now + self.stats_interval_s
        self.publish_stats(self.stats_provider())

    def _publish_other(
        self, topic_: str, payload: bytes, qos: int, retain: bool
    ) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(topic_, payload, qos=qos, retain=retain)
        with self._lock:
            if self._early.pop(info.mid, None) is None:
                self._other_mids.add(info.mid)
        return info

    def _status_payload(self, state: str, will: bool = False) -> bytes:
        with self._lock:
            status = dict(self._status)
        body: dict[str, Any] = {**status, "state": state, "device_id": self.device_id}
        if will:
            body["reason"] = "connection lost"  # sent by the broker, at an unknown time
        else:
            body["at"] = rfc3339(time.time())
        return json_bytes(body)

    def _send_status(self, state: str) -> bool:
        info = self._publish_other(
            self.topic("status"), self._status_payload(state), qos=1, retain=True
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _set_will(self, client: mqtt.Client) -> None:
        with self._lock:
            armed = bool(self._status.get("armed"))
        client.will_set(
            self.topic("status"), self._status_payload("offline", will=True), qos=1, retain=True
        )
        self._will_armed = armed

    def _error(self, message: str) -> None:
        with self._lock:
            self._last_error = message

    def _settle(self, msg_id: str, rc: ReasonCode) -> None:
        if rc.is_failure:
            with self._lock:
                self._rejected.add(msg_id)
                self._last_error = f"broker refused message {msg_id}: {rc}"
            log.error("broker refused message %s on PUBACK: %s (kept in the outbox)", msg_id, rc)
            return
        try:
            self.outbox.ack(msg_id)
            self.acked += 1
        except OutboxError as exc:
            self._error(f"outbox ack failed: {exc}")
            log.error("outbox ack of %s failed: %s", msg_id, exc)
        self._wake.set()

    def _settle_held(self, msg_id: str, rc: ReasonCode) -> None:
        if rc.is_failure:
            self._error(f"broker refused message {msg_id}: {rc}")
            return
        if self.held.remove(msg_id):
            self.acked += 1
            log.info("held message %s delivered", msg_id)
        self._wake.set()

    # -- paho callbacks (network thread): never raise ----------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        try:
            self._set_will(client)  # the will carries the latest armed state
        except Exception:
            log.exception("on_pre_connect failed")

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        try:
            self._on_connect_inner(client, flags, reason_code)
        except Exception as exc:
            log.exception("on_connect failed")
            self._error(f"on_connect failed: {exc}")

    def _on_connect_inner(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, reason_code: ReasonCode
    ) -> None:
        if reason_code.is_failure:
            with self._lock:
                self._connected = False
                self._last_error = f"broker refused the connection: {reason_code}"
            log.warning("broker refused the connection: %s", reason_code)
            return
        with self._lock:
            self._connected = True
            self._last_error = None
            self.connect_count += 1
            self._gen += 1
            self._cursor = 0
            self._rejected.clear()
            self._status_due = True  # sent by the drain loop, after paho's resends
        log.info(
            "connected to %s:%s (session present: %s)",
            self.broker.host, self.broker.port, flags.session_present,
        )  # fmt: skip
        client.subscribe([(self.topic(kind), 1) for kind in IN_KINDS])
        self._wake.set()

    def _on_connect_fail(self, client: mqtt.Client, _userdata: Any) -> None:
        if client is self._client:
            self._error(f"cannot connect to the broker at {self.broker.host}:{self.broker.port}")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if client is not self._client:
            return
        with self._lock:
            was = self._connected
            self._connected = False
            # Keep a CONNACK refusal's reason: the disconnect that follows says less.
            if was and not self._stopping.is_set():
                self._last_error = f"disconnected from the broker: {reason_code}"
            elif self._last_error is None and not self._stopping.is_set():
                self._last_error = f"connection closed by the broker: {reason_code}"
        if was and not self._stopping.is_set():
            log.warning("disconnected from the broker: %s (will reconnect)", reason_code)

    def _on_publish(
        self,
        client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        # Called with paho's message lock held: only touch our own state here.
        if client is not self._client:
            return
        try:
            self._on_publish_inner(mid, reason_code)
        except Exception:
            log.exception("on_publish failed")

    def _on_publish_inner(self, mid: int, reason_code: ReasonCode) -> None:
        with self._lock:
            msg_id = self._inflight.pop(mid, None)
            held_id = self._held_inflight.pop(mid, None) if msg_id is None else None
            if msg_id is None and held_id is None:
                if mid in self._other_mids:
                    self._other_mids.discard(mid)
                else:
                    self._early[mid] = reason_code
                return
        if msg_id is not None:
            self._settle(msg_id, reason_code)
        elif held_id is not None:
            self._settle_held(held_id, reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Hand a control-room message to the gate; catches everything (the message is
        PUBACKed by paho when this returns, whatever it held)."""
        try:
            kind = next((k for k in IN_KINDS if msg.topic == self.topic(k)), None)
            payload = bytes(msg.payload)
            if kind is None:
                log.warning("ignoring a message on an unexpected topic (%d bytes)", len(payload))
                return
            self.gate.offer(kind, payload, bool(msg.retain))  # refusals counted, logged there
        except Exception:
            log.exception("on_message failed (message dropped)")
