"""The console's MQTT client: takes the fleet's messages and sends adjudications.

paho-mqtt 2 (VERSION2 callbacks), MQTT 5, mutual TLS with the control room's
certificate (:func:`edge.delivery.publish.new_client`), a persistent session (fixed
client id, clean start off, a session expiry), QoS 1.

Subscriptions:

- ``$share/<group>/lfr/+/alerts``, ``.../audit`` and ``.../stats`` are **shared**: several
  console instances in one group (one database) each get a share of the fleet's
  messages, and each message is handled once;
- ``lfr/+/status`` is an ordinary subscription, because a broker never sends retained
  messages to a shared subscription (MQTT 5.0, 4.8.2) and it is retained (the fleet page
  must know a van that is offline since before the console started). Its handling is an
  idempotent upsert, so every instance may take it. (``lfr/+/deployment`` is not taken:
  unsigned, it may not change a record; deployments come from the signed audit chain.)

paho's callback only puts the message on a bounded queue; one worker thread hands them to
:class:`~edge.console.handlers.Handler` (which never raises). :meth:`Ingest.publish`
sends one QoS 1 message and waits (bounded) for the broker's PUBACK.
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
from edge.delivery.publish import BrokerSettings, new_client

log = logging.getLogger(__name__)

SHARED_KINDS: Final = ("alerts", "audit", "stats")
RETAINED_KINDS: Final = ("status",)
MAX_QUEUE: Final = 20_000


@dataclass(frozen=True)
class Inbound:
    topic: str
    payload: bytes
    retained: bool
    received_at: float


class PublishFailed(Exception):  # noqa: N818 (a refusal, like BundleRefused)
    """The broker did not take a message (offline, refused, or no PUBACK in time)."""


def subscriptions(group: str, prefix: str = "lfr") -> list[tuple[str, int]]:
    shared = [(f"$share/{group}/{prefix}/+/{k}", 1) for k in SHARED_KINDS]
    return shared + [(f"{prefix}/+/{k}", 1) for k in RETAINED_KINDS]


class Ingest:
    def __init__(self, broker: BrokerSettings, handler: Handler, metrics: Metrics, *,
                 client_id: str, group: str = "console", session_expiry_s: int = 7 * 86400,
                 prefix: str = "lfr") -> None:  # fmt: skip
        self.handler = handler
        self.metrics = metrics
        self.broker = broker
        self.subs = subscriptions(group, prefix)
        self._queue: queue.Queue[Inbound | None] = queue.Queue(MAX_QUEUE)
        self._lock = threading.Lock()
        self._connected = False
        self._subscribed = threading.Event()
        self._acks: dict[int, tuple[threading.Event, list[ReasonCode]]] = {}
        self._early: dict[int, ReasonCode] = {}
        self._worker: threading.Thread | None = None
        self.last_error: str | None = None
        self._client = new_client(client_id, broker)
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
            item = self._queue.get()
            if item is None:
                return
            self.handler.handle(item.topic, item.payload, item.retained, item.received_at)

    # -- paho callbacks (network thread; never raise) ---------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: mqtt.ConnectFlags,
                    rc: ReasonCode, _p: Properties | None) -> None:  # fmt: skip
        if rc.is_failure:
            self.last_error = f"broker refused the connection: {rc}"
            log.warning("%s", self.last_error)
            return
        with self._lock:
            self._connected = True
        self.last_error = None
        log.info("console connected to %s:%s (session present: %s)", self.broker.host,
                 self.broker.port, flags.session_present)  # fmt: skip
        try:
            client.subscribe(self.subs)
        except Exception:
            log.exception("subscribe failed")

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
            self._connected = False
        self._subscribed.clear()
        self.last_error = f"disconnected from the broker: {rc}"

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self._queue.put_nowait(Inbound(msg.topic, bytes(msg.payload), bool(msg.retain),
                                           time.time()))  # fmt: skip
        except queue.Full:
            self.metrics.inc("console_messages_dropped_total")
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
