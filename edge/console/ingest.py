"""The console's MQTT client: takes the fleet's messages and sends adjudications.

paho-mqtt 2 (VERSION2 callbacks), MQTT 5, mutual TLS with this console instance's own
certificate (:func:`edge.delivery.publish.new_client`), a persistent session (fixed
client id, clean start off, a session expiry long enough for maintenance), QoS 1.

Nothing lost, even when a session is (issue 21). Every instance holds its **own durable
subscription to the whole fleet**: ``lfr/+/alerts``, ``lfr/+/audit``, ``lfr/+/stats`` and
``lfr/+/status``, ordinary (not ``$share``) subscriptions in its own persistent session. A
broker keeps a QoS 1 message for every session subscribed, so with two instances each
message waits in two sessions: one instance restarted, stopped for maintenance or its
session lost, the other still has every alert and audit entry, and the store takes each
once (alerts by id, audit entries by device and seq under a lock on the device's chain;
both on one database). A shared subscription would hand each message to one session only,
and a lost session would take its share with it. ``lfr/+/status`` is retained (a broker
never sends retained messages to a shared subscription, MQTT 5.0 4.8.2, so it never was
one). ``lfr/+/deployment`` is not taken: unsigned, it may not change a record.

A lost session is an alarm (:class:`~edge.console.mqtt_session.SessionWatch`): on each
connection the broker's ``session present`` is checked against what this instance expected.

paho's callback only puts the message on a bounded queue; one worker thread hands them to
:class:`~edge.console.handlers.Handler` (which never raises), and the connection events to
the session watch in order with them. **A message is acknowledged to the broker only after
the handler has finished with it** (stored, a duplicate or refused; paho's manual
acknowledgement): paho's default PUBACK on receipt meant a console stopped or killed with
messages on its queue lost them, acknowledged, for ever. A message the handler failed on
(the database) is tried again (bounded) before it is acknowledged and counted, so a message
that always fails cannot stall the flow; one that finds the queue full is not acknowledged,
and the broker sends it again on the next connection (the broker's in-flight window, not
this queue, bounds what waits unacknowledged). :meth:`Ingest.publish` sends one QoS 1 message and
waits (bounded) for the broker's PUBACK.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.console.handlers import Handler
from edge.console.metrics import Metrics
from edge.console.mqtt_session import ALIVE_EVERY_S, SessionWatch
from edge.console.service import PublishFailed
from edge.delivery.publish import BrokerSettings, new_client

log = logging.getLogger(__name__)

KINDS: Final = ("alerts", "audit", "stats", "status")
MAX_QUEUE: Final = 20_000
RETRIES_S: Final = (0.5, 2.0)  # waits before trying a failed message again


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retained: bool
    received_at: float
    mid: int = 0  # to acknowledge once handled (0: nothing to acknowledge)
    qos: int = 0


@dataclass(frozen=True)
class Connection:
    """A connection event for the worker: ``connected`` with what the CONNACK said."""

    connected: bool
    session_present: bool = False
    expiry_s: int | None = None


def subscriptions(prefix: str = "lfr") -> list[tuple[str, int]]:
    """Every instance's own subscriptions to the whole fleet (see the module docstring)."""
    return [(f"{prefix}/+/{k}", 1) for k in KINDS]


class Ingest:
    def __init__(self, broker: BrokerSettings, handler: Handler, metrics: Metrics, *,
                 client_id: str, session_expiry_s: int = 7 * 86400, prefix: str = "lfr",
                 watch: SessionWatch | None = None) -> None:  # fmt: skip
        self.handler = handler
        self.metrics = metrics
        self.broker = broker
        self.subs = subscriptions(prefix)
        self.watch = watch or SessionWatch(handler.store, metrics, handler.hub, client_id,
                                           session_expiry_s)  # fmt: skip
        self._queue: queue.Queue[Inbound | Connection | None] = queue.Queue(MAX_QUEUE)
        self._lock = threading.Lock()
        self._connected = False
        self._subscribed = threading.Event()
        self._acks: dict[int, tuple[threading.Event, list[ReasonCode]]] = {}
        self._early: dict[int, ReasonCode] = {}
        self._worker: threading.Thread | None = None
        self.last_error: str | None = None
        self._client = new_client(client_id, broker)
        self._client.manual_ack_set(True)  # PUBACK once handled (module docstring)
        self._client.reconnect_delay_set(1, 15)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.on_subscribe = self._on_subscribe
        self._props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._props.SessionExpiryInterval = session_expiry_s

    @property
    def connected(self) -> bool:
        with self._lock:
            return self._connected

    @property
    def ready(self) -> bool:
        """Connected and the broker has granted every subscription."""
        return self.connected and self._subscribed.is_set()

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="console-ingest", daemon=True)
        self._worker.start()
        self._client.connect_async(self.broker.host, self.broker.port, keepalive=30,
                                   clean_start=False, properties=self._props)  # fmt: skip
        self._client.loop_start()

    def wait_ready(self, timeout: float) -> bool:
        """Wait (bounded) until connected and subscribed."""
        return self._subscribed.wait(timeout)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._client.disconnect()
        self._client.loop_stop()
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join(timeout=10)
            self._worker = None

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def publish(self, topic: str, payload: bytes, timeout: float = 5.0) -> None:
        """Publish at QoS 1 and wait for the PUBACK; :class:`PublishFailed` otherwise."""
        if not self.connected:
            raise PublishFailed("the console is not connected to the broker")
        done = threading.Event()
        codes: list[ReasonCode] = []
        # paho may call on_publish (with its own lock held) before publish() returns; never
        # hold our lock across publish(), and keep acks that beat the registration.
        info = self._client.publish(topic, payload, qos=1)
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishFailed(f"the message was not sent ({mqtt.error_string(info.rc)})")
        with self._lock:
            early = self._early.pop(info.mid, None)
            if early is None:
                self._acks[info.mid] = (done, codes)
        if early is not None:
            codes.append(early)
            done.set()
        try:
            if not done.wait(timeout):
                raise PublishFailed(f"no PUBACK from the broker within {timeout:g} s")
        finally:
            with self._lock:
                self._acks.pop(info.mid, None)
        if codes and codes[0].is_failure:
            raise PublishFailed(f"the broker refused the message: {codes[0]}")

    # -- worker -----------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=ALIVE_EVERY_S)
            except queue.Empty:
                item = Inbound("", b"", False, 0.0)  # nothing came: only note the session
            if item is None:
                return
            try:
                if isinstance(item, Connection):
                    self._connection(item)
                    continue
                if item.topic:
                    self._handle(item)
                if self.connected:
                    self.watch.alive()
            except Exception:  # the database: never stop the loop
                log.exception("console ingest worker")

    def _handle(self, item: Inbound) -> None:
        """Hand one message to the handler, then acknowledge it (module docstring)."""
        result = self.handler.handle(item.topic, item.payload, item.retained, item.received_at)
        for wait in RETRIES_S:
            if result != "failed":
                break
            time.sleep(wait)
            result = self.handler.handle(item.topic, item.payload, item.retained,
                                         item.received_at)  # fmt: skip
        if item.qos:
            # Not connected: nothing is sent, and the broker sends the message again on the
            # next connection of this session (the store takes it once).
            self._client.ack(item.mid, item.qos)

    def _connection(self, event: Connection) -> None:
        if event.connected:
            self.watch.connected(event.session_present, event.expiry_s)
        else:
            self.watch.disconnected()

    # -- paho callbacks (network thread; never raise) ---------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    rc: ReasonCode, props: Properties | None) -> None:  # fmt: skip
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.warning("%s", self.last_error)
            return
        with self._lock:
            self._connected = True
        self.last_error = None
        log.info("console connected to %s:%s (session present: %s)", self.broker.host,
                 self.broker.port, flags.session_present)  # fmt: skip
        expiry = getattr(props, "SessionExpiryInterval", None)  # as granted, if lowered
        self._control(Connection(True, bool(flags.session_present),
                                 int(expiry) if isinstance(expiry, int) else None))
        try:
            client.subscribe(self.subs)
        except Exception:
            log.exception("subscribe failed")

    def _control(self, event: Connection) -> None:
        """A connection event for the worker, in order with the messages (never dropped:
        the worker drains the queue, and an alarm must not be lost to a full one)."""
        try:
            self._queue.put(event, timeout=5)
        except queue.Full:
            log.error("console ingest queue full: connection event not handled")

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, rcs: list[ReasonCode],
                      _p: Properties | None) -> None:  # fmt: skip
        bad = [f"{t}: {rc}" for (t, _), rc in zip(self.subs, rcs, strict=False) if rc.is_failure]
        if bad:
            self.last_error = "the broker refused " + "; ".join(bad)
            log.error("%s", self.last_error)
            return
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: mqtt.DisconnectFlags,
                       rc: ReasonCode, _p: Properties | None) -> None:  # fmt: skip
        with self._lock:
            was, self._connected = self._connected, False
        self._subscribed.clear()
        self.last_error = f"disconnected from the broker: {rc}"
        if was:
            self._control(Connection(False))

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put_nowait(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain),
                                           time.time(), msg.mid, msg.qos))  # fmt: skip
        except queue.Full:  # not acknowledged: the broker sends it again on reconnecting
            self.metrics.inc("console_messages_deferred_total")
        except Exception:
            log.exception("on_message failed")

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, rc: ReasonCode,
                    _p: Properties) -> None:  # fmt: skip
        with self._lock:
            waiter = self._acks.get(mid)
            if waiter is None:
                self._early[mid] = rc
                if len(self._early) > 1000:  # acks of messages nobody waits for any more
                    self._early.clear()
        if waiter is not None:
            waiter[1].append(rc)
            waiter[0].set()
