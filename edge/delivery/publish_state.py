"""The publisher's shared state: what the drain loop and paho's callbacks agree on.

One :class:`PublisherState` is owned by the :class:`~edge.delivery.publish.Publisher` and
handed to the two parts that work on it: the client manager
(:class:`~edge.delivery.publish_client.ClientManager`: the client's lifecycle and paho's
callbacks) and the outbox drainer (:class:`~edge.delivery.publish_drain.OutboxDrainer`).
This module owns every field both threads touch, under one lock, and the steps that
settle them, so their invariants stay readable in one place:

- ``gen`` is the connection generation: a new CONNACK or a rebuild bumps it, and a
  publish whose generation changed while paho queued it records nothing (the new
  connection republishes from the outbox);
- ``inflight`` / ``held_inflight`` map paho's ``mid`` to an outbox row or a message
  held in RAM; only a PUBACK settles one (:meth:`PublisherState.settle`: success queues
  the row's deletion in ``acks``, which the drain loop deletes in one transaction,
  :meth:`PublisherState.flush_acks`; a refusal keeps it and marks it ``rejected`` for
  this connection); a PUBACK
  that beats ``publish()``'s return waits in ``early`` (:meth:`PublisherState.track`
  settles it); status and stats publishes are ``other_mids``
  (:meth:`PublisherState.publish_other`);
- ``cursor`` is the highest outbox seq handed to paho on this connection (reset to 0 on
  connect, so a new connection starts from the oldest pending row);
- ``status`` is the retained online status, ``status_due`` says it is to be
  (re)published, ``will_armed`` is the armed value of the current connection's will;
- ``client`` is the current paho client, which only the client manager replaces.

A rebuild (:meth:`~edge.delivery.publish_client.ClientManager.rebuild`) is the only
step that drops in-flight state, because the abandoned client's mids mean nothing to the
new one. The methods here are called from either thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.alert import DEVICE_ID_RE, rfc3339
from edge.delivery.alert_sign import outgoing
from edge.delivery.held import HeldQueue
from edge.delivery.inbound import Inbound, InboundGate
from edge.delivery.link import BrokerSettings, json_bytes, topic
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

    client: mqtt.Client  # set by the client manager, replaced only by it

    def __init__(
        self,
        device_id: str,
        broker: BrokerSettings,
        outbox: Outbox,
        *,
        inbox: InboxCallback | None = None,
        on_refused: RefusedCallback | None = None,
        inflight_max: int = 20,
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
        self.acked = 0  # messages delivered (PUBACK success), this process
        self.connect_count = 0  # successful CONNACKs, this process
        self.persist_error: str | None = None  # the outbox refused a write, not cleared yet

        self.lock = threading.Lock()
        self.inflight: dict[int, str] = {}  # paho mid -> outbox msg_id, awaiting PUBACK
        self.held_inflight: dict[int, str] = {}  # paho mid -> held msg_id
        self.early: dict[int, ReasonCode] = {}  # on_publish that beat publish()'s return
        self.other_mids: set[int] = set()  # status/stats publishes (not in the outbox)
        self.rejected: set[str] = set()  # refused by the broker on this connection
        self.acks: list[str] = []  # PUBACKed outbox rows not yet deleted (flush_acks)
        self.cursor = 0  # highest outbox seq handed to paho on this connection
        self.gen = 0  # connection generation
        self.connected = False
        self.outage_logged = False  # "not connected" said once this outage (publish_client)
        self.last_error: str | None = None
        self.status: dict[str, Any] = {"armed": False, "reason": "starting"}
        self.status_due = False
        self.will_armed = False  # the armed value in the current connection's will
        self.wake = threading.Event()
        self.stopping = threading.Event()

    def topic(self, kind: str) -> str:
        return topic(self.device_id, kind, self.topic_prefix)

    def error(self, message: str) -> None:
        with self.lock:
            self.last_error = message

    def room(self) -> int:
        """Publishes that may still be handed to paho (caller holds the lock)."""
        return self.inflight_max - len(self.inflight) - len(self.held_inflight)

    def settle(self, msg_id: str, rc: ReasonCode) -> None:
        """An outbox row's PUBACK: success deletes the row, a refusal keeps it."""
        if rc.is_failure:
            with self.lock:
                self.rejected.add(msg_id)
                self.last_error = f"broker refused message {msg_id}: {rc}"
            log.error("broker refused message %s on PUBACK: %s (kept in the outbox)", msg_id, rc)
            return
        with self.lock:
            self.acks.append(msg_id)  # deleted by the drain loop, with the others (flush_acks)
            self.acked += 1
        self.wake.set()

    def flush_acks(self) -> None:
        """Delete the acknowledged rows in one outbox transaction (one commit and one WAL
        scrub for a burst of PUBACKs, not one each, issue 20). A row acknowledged and not
        yet deleted is never published again (the drain treats it as busy); after a crash
        it is, and the control room deduplicates on ``alert_id``."""
        with self.lock:
            ids, self.acks = self.acks, []
        if not ids:
            return
        try:
            self.outbox.ack_many(ids)
        except OutboxError as exc:
            self.error(f"outbox ack failed: {exc}")
            log.error("outbox ack of %d message(s) failed: %s", len(ids), exc)

    def settle_held(self, msg_id: str, rc: ReasonCode) -> None:
        """A message held in RAM: its PUBACK's success removes it."""
        if rc.is_failure:
            self.error(f"broker refused message {msg_id}: {rc}")
            return
        if self.held.remove(msg_id):
            self.acked += 1
            log.info("held message %s delivered", msg_id)
        self.wake.set()

    def track(self, mid: int, msg_id: str, gen: int, held: bool) -> bool:
        """Record a publish paho took (outbox row, or ``held`` in RAM): in flight until its
        PUBACK, or settled now if the PUBACK beat ``publish()``'s return. False, recording
        nothing, if the connection changed meanwhile (the new one publishes it again)."""
        with self.lock:
            if self.gen != gen:
                return False
            early = self.early.pop(mid, None)
            if early is None:
                (self.held_inflight if held else self.inflight)[mid] = msg_id
        if early is not None:
            (self.settle_held if held else self.settle)(msg_id, early)
        return True

    def outgoing(self, topic_: str, payload: bytes, first: float) -> bytes:
        return outgoing(payload, first, self.signing_key if topic_ == self.topic("alerts")
                        else None)  # fmt: skip

    def publish_other(
        self, topic_: str, payload: bytes, qos: int, retain: bool
    ) -> mqtt.MQTTMessageInfo:
        """Publish a status or stats message (not from the outbox) on the current client."""
        info = self.client.publish(topic_, payload, qos=qos, retain=retain)
        with self.lock:
            if self.early.pop(info.mid, None) is None:
                self.other_mids.add(info.mid)
        return info

    def status_payload(self, state: str, will: bool = False) -> bytes:
        with self.lock:
            status = dict(self.status)
        body: dict[str, Any] = {**status, "state": state, "device_id": self.device_id}
        if will:
            body["reason"] = "connection lost"  # sent by the broker, at an unknown time
        else:
            body["at"] = rfc3339(time.time())
        return json_bytes(body)

    def send_status(self, state: str) -> bool:
        info = self.publish_other(
            self.topic("status"), self.status_payload(state), qos=1, retain=True
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS
