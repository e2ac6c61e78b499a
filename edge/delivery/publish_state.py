"""The publisher's shared state: what the drain loop and paho's callbacks agree on.

Split from :mod:`edge.delivery.publish` (the :class:`~edge.delivery.publish.Publisher`
is built from this base and two parts that work on it: the client's lifecycle and
callbacks, :mod:`~edge.delivery.publish_client`, and the outbox drain,
:mod:`~edge.delivery.publish_drain`). This module owns every field both threads touch,
under one lock, and the steps that settle them, so their invariants stay readable in
one place:

- ``_gen`` is the connection generation: a new CONNACK or a rebuild bumps it, and a
  publish whose generation changed while paho queued it records nothing (the new
  connection republishes from the outbox);
- ``_inflight`` / ``_held_inflight`` map paho's ``mid`` to an outbox row or a message
  held in RAM; only a PUBACK settles one (:meth:`PublisherState._settle`: success deletes
  the row, a refusal keeps it and marks it ``_rejected`` for this connection); a PUBACK
  that beats ``publish()``'s return waits in ``_early``; status and stats publishes are
  ``_other_mids`` (:meth:`PublisherState._publish_other`);
- ``_cursor`` is the highest outbox seq handed to paho on this connection (reset to 0 on
  connect, so a new connection starts from the oldest pending row);
- ``_status`` is the retained online status, ``_status_due`` says it is to be
  (re)published, ``_will_armed`` is the armed value of the current connection's will.

A rebuild (:meth:`~edge.delivery.publish_client.ClientLifecycle._rebuild`) is the only
step that drops in-flight state, because the abandoned client's mids mean nothing to the
new one. The methods here are called from either thread.
"""

from __future__ import annotations

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

from edge.delivery.alert import DEVICE_ID_RE, rfc3339
from edge.delivery.alert_sign import outgoing
from edge.delivery.held import HeldQueue
from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.link import MAX_PACKET_BYTES, BrokerSettings, json_bytes, topic
from edge.delivery.outbox import Outbox, OutboxError
from edge.errors import BrokerError

LOGGER = "edge.delivery.publish"
"""The publisher's parts log under one name (as before the split; the journal filters on it)."""
log = logging.getLogger(LOGGER)

InboxCallback = Callable[[Inbound], bool]
"""Takes a message let through by the gate; False if the (bounded) inbox is full."""
RefusedCallback = Callable[[str, str, int], None]
"""Told ``(kind, reason, size)`` for each inbound message refused by the gate."""


class PublisherState:
    """The fields shared by the drain loop and paho's callbacks, and the steps that settle
    them; :class:`~edge.delivery.publish.Publisher` is the class to use."""

    _client: mqtt.Client

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
        self._outage_logged = False  # "not connected" said once this outage (publish_client)
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
        """A new paho client wired to this publisher (:mod:`~edge.delivery.publish_client`)."""
        raise NotImplementedError

    def topic(self, kind: str) -> str:
        return topic(self.device_id, kind, self.topic_prefix)

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

    def _outgoing(self, topic_: str, payload: bytes, first: float) -> bytes:
        return outgoing(payload, first, self.signing_key if topic_ == self.topic("alerts")
                        else None)  # fmt: skip

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
