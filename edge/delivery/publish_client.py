"""The publisher's MQTT client: built, connected, watched, rebuilt, and its callbacks.

A part of the :class:`~edge.delivery.publish.Publisher`, working on its shared
:class:`~edge.delivery.publish_state.PublisherState`. Owns the client's lifecycle: a
client is built (in-flight limit, no paho queue, reconnect backoff, the last will) and
connected in the background; each drain turn (:meth:`ClientManager.watch`) checks that
paho's thread is alive and, while connected, has read from the socket within
:data:`STALL_KEEPALIVES` keepalives, and that the will still says the armed state the
device has; a dead or stalled thread or a stale will rebuilds the client
(:meth:`ClientManager.rebuild`, the one step that drops in-flight state, and the only
one that replaces ``state.client``). And paho's callbacks, on the network thread, which
never raise: the
connection's (CONNACK, connect failure, disconnect), the PUBACK's (what it settles,
:mod:`~edge.delivery.publish_state`) and the inbound messages' routing from topic to
kind into the :class:`~edge.delivery.inbound.InboundGate`. The connection's and the
PUBACK's callbacks from an abandoned client are ignored.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import LOGGING_LEVEL
from paho.mqtt.enums import LogLevel
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.link import IN_KINDS, MAX_PACKET_BYTES, new_client
from edge.delivery.publish_state import LOGGER, PublisherState

log = logging.getLogger(LOGGER)
paho_log = logging.getLogger(f"{LOGGER}.paho")

STALL_KEEPALIVES = 2.5
WILL_WAIT_S = 5.0


class ClientManager:
    """The client's build, connect, watch and rebuild, and paho's callbacks, on the
    publisher's shared ``state`` (whose ``client`` it sets and alone replaces)."""

    def __init__(self, state: PublisherState, *, client_id: str, reconnect: tuple[int, int],
                 session_expiry_s: int) -> None:  # fmt: skip
        self.s = state
        self.rebuilds = 0  # clients rebuilt after a dead/stalled thread or a will change
        self._client_id = client_id
        self._reconnect = (max(1, reconnect[0]), max(1, reconnect[1]))
        self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_props.SessionExpiryInterval = session_expiry_s
        self._connect_props.MaximumPacketSize = MAX_PACKET_BYTES
        self._will_stale_since: float | None = None
        state.client = self._make_client()

    @property
    def client(self) -> mqtt.Client:
        return self.s.client

    def _make_client(self) -> mqtt.Client:
        client = new_client(self._client_id, self.s.broker)
        client.max_inflight_messages_set(self.s.inflight_max)
        client.max_queued_messages_set(0)
        client.reconnect_delay_set(*self._reconnect)
        client.on_log = self._on_log  # paho's own log, an outage said once (_on_log)
        client.on_pre_connect = self._on_pre_connect
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self.on_message
        self._set_will(client)
        return client

    def connect(self, client: mqtt.Client) -> None:
        client.connect_async(
            self.s.broker.host,
            self.s.broker.port,
            keepalive=self.s.broker.keepalive,
            clean_start=False,
            properties=self._connect_props,
        )
        client.loop_start()

    def watch(self) -> bool:
        """Rebuild the client if paho's thread died or stalled, or the will is stale.

        Returns True to hold publishing this turn: a stale will waits (up to
        :data:`WILL_WAIT_S`) for the messages in flight to be acknowledged, so the
        reconnect repeats none of them.
        """
        client = self.s.client
        thread = client._thread
        if thread is None or not thread.is_alive():
            self.rebuild("the MQTT network thread is not running", graceful=False)
            return False
        now = time.monotonic()
        with self.s.lock:
            connected = self.s.connected
            will_stale = connected and bool(self.s.status.get("armed")) != self.s.will_armed
            inflight = len(self.s.inflight) + len(self.s.held_inflight)
        if connected:
            last_read = float(getattr(client, "_last_bytes_received", now))
            limit = STALL_KEEPALIVES * max(1, self.s.broker.keepalive)
            if now - last_read > limit:
                self.rebuild(f"the MQTT network thread read nothing for {limit:g} s",
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
        self.rebuild("armed state changed: reconnecting with a new last will", graceful=True)
        return False

    def rebuild(self, why: str, graceful: bool) -> None:
        old = self.s.client
        log.warning("MQTT client rebuilt: %s", why)
        with self.s.lock:
            self.s.connected = False
            self.s.gen += 1
            self.s.inflight.clear()
            self.s.held_inflight.clear()
            self.s.early.clear()
            self.s.other_mids.clear()
            self.s.status_due = True
        self.s.client = self._make_client()
        self.rebuilds += 1
        if not graceful:
            self.s.error(why)
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
        self.connect(self.s.client)

    def _set_will(self, client: mqtt.Client) -> None:
        with self.s.lock:
            armed = bool(self.s.status.get("armed"))
        client.will_set(
            self.s.topic("status"), self.s.status_payload("offline", will=True), qos=1, retain=True
        )
        self.s.will_armed = armed

    # -- paho callbacks (network thread): never raise ----------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        try:
            self._set_will(client)  # the will carries the latest armed state
        except Exception:
            log.exception("on_pre_connect failed")

    def _on_log(self, client: mqtt.Client, _userdata: Any, level: int, buf: str) -> None:
        """paho's log lines into ``edge.delivery.publish.paho`` at paho's level, except
        "Client is not connected", which paho logs at ERROR after every failed reconnect
        while the broker is unreachable: once per outage (until the next CONNACK), at
        WARNING, with how the publisher copes."""
        if client is not self.s.client:
            return
        with contextlib.suppress(Exception):  # a log line never ends the network thread
            if buf.startswith("Client is not connected"):
                with self.s.lock:
                    first, self.s.outage_logged = not self.s.outage_logged, True
                if first:
                    log.warning("the broker is not reachable (%s); retrying, messages kept in "
                                "the outbox; said once until connected", buf)  # fmt: skip
                return
            paho_log.log(LOGGING_LEVEL.get(LogLevel(level), logging.DEBUG), "%s", buf)

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if client is not self.s.client:
            return
        try:
            self._on_connect_inner(client, flags, reason_code)
        except Exception as exc:
            log.exception("on_connect failed")
            self.s.error(f"on_connect failed: {exc}")

    def _on_connect_inner(
        self, client: mqtt.Client, flags: mqtt.ConnectFlags, reason_code: ReasonCode
    ) -> None:
        if reason_code.is_failure:
            with self.s.lock:
                self.s.connected = False
                self.s.last_error = f"broker refused the connection: {reason_code}"
            log.warning("broker refused the connection: %s", reason_code)
            return
        with self.s.lock:
            self.s.connected = True
            self.s.outage_logged = False
            self.s.last_error = None
            self.s.connect_count += 1
            self.s.gen += 1
            self.s.cursor = 0
            self.s.rejected.clear()
            self.s.status_due = True  # sent by the drain loop, after paho's resends
        log.info(
            "connected to %s:%s (session present: %s)",
            self.s.broker.host, self.s.broker.port, flags.session_present,
        )  # fmt: skip
        client.subscribe([(self.s.topic(kind), 1) for kind in IN_KINDS])
        self.s.wake.set()

    def _on_connect_fail(self, client: mqtt.Client, _userdata: Any) -> None:
        if client is self.s.client:
            where = f"{self.s.broker.host}:{self.s.broker.port}"
            self.s.error(f"cannot connect to the broker at {where}")

    def _on_disconnect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if client is not self.s.client:
            return
        with self.s.lock:
            was = self.s.connected
            self.s.connected = False
            # Keep a CONNACK refusal's reason: the disconnect that follows says less.
            if was and not self.s.stopping.is_set():
                self.s.last_error = f"disconnected from the broker: {reason_code}"
            elif self.s.last_error is None and not self.s.stopping.is_set():
                self.s.last_error = f"connection closed by the broker: {reason_code}"
        if was and not self.s.stopping.is_set():
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
        if client is not self.s.client:
            return
        try:
            self._on_publish_inner(mid, reason_code)
        except Exception:
            log.exception("on_publish failed")

    def _on_publish_inner(self, mid: int, reason_code: ReasonCode) -> None:
        with self.s.lock:
            msg_id = self.s.inflight.pop(mid, None)
            held_id = self.s.held_inflight.pop(mid, None) if msg_id is None else None
            if msg_id is None and held_id is None:
                if mid in self.s.other_mids:
                    self.s.other_mids.discard(mid)
                else:
                    self.s.early[mid] = reason_code
                return
        if msg_id is not None:
            self.s.settle(msg_id, reason_code)
        elif held_id is not None:
            self.s.settle_held(held_id, reason_code)

    def on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Hand a control-room message to the gate; catches everything (the message is
        PUBACKed by paho when this returns, whatever it held)."""
        try:
            kind = next((k for k in IN_KINDS if msg.topic == self.s.topic(k)), None)
            payload = bytes(msg.payload)
            if kind is None:
                log.warning("ignoring a message on an unexpected topic (%d bytes)", len(payload))
                return
            self.s.gate.offer(kind, payload, bool(msg.retain))  # refusals counted, logged there
        except Exception:
            log.exception("on_message failed (message dropped)")
