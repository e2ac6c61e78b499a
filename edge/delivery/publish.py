"""The MQTT publisher: drains the outbox to the control-room broker and receives its replies.

paho-mqtt 2 (``CallbackAPIVersion.VERSION2``), MQTT 5, mutual TLS (TLS 1.2+),
QoS 1. Topics are ``lfr/<device_id>/<kind>`` (see :func:`topic`).

Delivery contract (what the tests prove against a real mosquitto):

- A message is written to the :class:`~edge.delivery.outbox.Outbox` first (durable,
  encrypted); the publisher deletes it **only** in ``on_publish`` with a
  successful PUBACK reason code. A refused PUBACK (e.g. "Not authorized") keeps
  the row, records ``last_error`` and retries it on the next connection.
- "Connected" means a CONNACK with a success reason code, never just an open
  socket. paho's own loop reconnects with exponential backoff.
- While disconnected nothing is dropped: rows stay in the outbox. Rows that
  were handed to paho and not yet acknowledged are resent by paho on
  reconnect with the DUP flag; rows from an earlier process (crash, SIGKILL)
  are republished from the outbox by a new Publisher. Either way the payload
  is byte-identical (same ``alert_id`` and ``published_at``: the first-publish
  time is stored in the outbox row), so the control room deduplicates on
  ``alert_id``.
- ``lfr/<id>/status`` is retained JSON ``{"state": "online"|"offline",
  "armed": bool, "reason": str, "device_id": str, "at": RFC 3339, ...}``
  (extra keys from :meth:`Publisher.publish_status`); the last will
  (retained, QoS 1) is the offline form without ``at``, with reason
  ``"connection lost"`` and the ``armed`` state known when the connection was
  made (a will cannot change during a connection). :meth:`Publisher.stop`
  publishes ``offline`` with reason ``"stopped"``. The current status is
  republished on every (re)connect, so it is not queued in the outbox.
- ``stats`` are QoS 0 and not durable: dropped while offline.
- ``adjudications`` and ``commands`` are subscribed at QoS 1 in a persistent
  session (client id = device id, clean start off), so replies sent while
  the device was offline are delivered when it returns. Adjudications are
  parsed and checked (:func:`edge.delivery.alert.parse_adjudication`) and handed over
  as a dict; commands are checked to be a JSON object of at most 64 KiB and
  handed over parsed (the signature is verified by the caller). A bad
  payload is logged as one line and ignored. Callbacks run on paho's network
  thread (keep them short); their exceptions are logged, never propagated.

Health: :attr:`Publisher.last_checkin` (``time.monotonic()``) is updated by the
publisher's drain loop each turn (at least every ``drain_interval_s``) while
paho's network thread is alive, for the watchdog; :attr:`connected`,
:attr:`pending_count` and :attr:`last_error` describe the link.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.delivery.alert import (
    DEVICE_ID_RE,
    AlertFormatError,
    encode_alert,
    parse_adjudication,
    rfc3339,
    stamp_published_at,
)
from edge.delivery.outbox import Outbox, OutboxError, OutboxTampered
from edge.errors import BrokerError
from edge.types import AlertRecord

log = logging.getLogger(__name__)

OUT_KINDS: Final = ("status", "alerts", "stats", "deployment", "audit")
IN_KINDS: Final = ("adjudications", "commands")

AdjudicationCallback = Callable[[dict[str, Any]], None]
"""Gets a checked ``{alert_id, decision, officer, at}`` dict."""
CommandCallback = Callable[[dict[str, Any]], None]
"""Gets the parsed command envelope (a JSON object of at most MAX_COMMAND_BYTES); its
signature covers the ``body`` string inside, so re-serialising the envelope is safe."""
MAX_COMMAND_BYTES: Final = 64 * 1024


def topic(device_id: str, kind: str, prefix: str = "lfr") -> str:
    """``<prefix>/<device_id>/<kind>``; ValueError for an unknown kind or unsafe id.

    ``device_id`` may be ``+`` (any device) for subscriptions.
    """
    if kind not in OUT_KINDS + IN_KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if device_id != "+" and not DEVICE_ID_RE.match(device_id):
        raise ValueError(f"device id {device_id!r} is not a valid topic level")
    if not prefix or any(c in prefix for c in "+#") or prefix[0] == "/" or prefix[-1] == "/":
        raise ValueError(f"topic prefix {prefix!r} is not valid")
    return f"{prefix}/{device_id}/{kind}"


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to reach the broker.

    Mutual TLS needs ``ca``, ``cert`` and ``key``. Leaving all three None means
    plain MQTT, which is refused unless ``host`` is a loopback address (a local
    test broker); the device's only peer is the control room over mutual TLS.
    """

    host: str
    port: int
    ca: Path | None
    cert: Path | None
    key: Path | None
    keepalive: int = 30

    @property
    def tls(self) -> bool:
        return not (self.ca is None and self.cert is None and self.key is None)


def tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """A client TLS context: verify the broker against ``ca`` (and its name), TLS 1.2+,
    present ``cert``/``key``. BrokerError (one line) if a file is missing or unusable."""
    for what, path in (("CA certificate", ca), ("client certificate", cert), ("key", key)):
        if path is None:
            raise BrokerError(f"mutual TLS needs the MQTT {what}")
        if not Path(path).is_file():
            raise BrokerError(f"MQTT {what} {path} does not exist")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, OSError) as exc:
        raise BrokerError(f"cannot load the MQTT TLS files ({exc})") from None
    return ctx


def new_client(client_id: str, settings: BrokerSettings) -> mqtt.Client:
    """A paho MQTT 5 client (VERSION2 callbacks) with mutual TLS set, not connected."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if settings.tls:
        client.tls_set_context(tls_context(settings.ca, settings.cert, settings.key))
    else:
        try:
            loopback = ipaddress.ip_address(settings.host).is_loopback
        except ValueError:
            loopback = settings.host == "localhost"
        if not loopback:
            raise BrokerError(
                f"plain MQTT without TLS is allowed only to a loopback broker, not {settings.host}"
            )
    return client


def _json(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode("utf-8")


class Publisher:
    """Publishes the outbox to the broker and hands incoming replies to callbacks.

    ``start()`` connects in the background and returns at once; ``stop()``
    flushes (bounded), publishes the offline status and disconnects.
    """

    def __init__(
        self,
        device_id: str,
        broker: BrokerSettings,
        outbox: Outbox,
        *,
        on_adjudication: AdjudicationCallback | None = None,
        on_command: CommandCallback | None = None,
        client_id: str | None = None,
        inflight_max: int = 20,
        reconnect_min_s: int = 1,
        reconnect_max_s: int = 30,
        drain_interval_s: float = 0.5,
        session_expiry_s: int = 7 * 24 * 3600,
        stats_provider: Callable[[], Mapping[str, Any]] | None = None,
        stats_interval_s: float = 30.0,
        topic_prefix: str = "lfr",
    ) -> None:
        if not DEVICE_ID_RE.match(device_id):
            raise BrokerError(f"device id {device_id!r} is not a valid MQTT topic level")
        self.device_id = device_id
        self.topic_prefix = topic_prefix
        topic(device_id, "status", topic_prefix)  # ValueError now, not in a callback
        self.broker = broker
        self.outbox = outbox
        self.on_adjudication = on_adjudication
        self.on_command = on_command
        self.inflight_max = max(1, inflight_max)
        self.drain_interval_s = drain_interval_s
        self.stats_provider = stats_provider
        self.stats_interval_s = stats_interval_s
        self.last_checkin = time.monotonic()
        self.acked = 0  # messages deleted from the outbox on PUBACK, this process
        self.connect_count = 0  # successful CONNACKs, this process

        self._lock = threading.Lock()
        self._inflight: dict[int, str] = {}  # paho mid -> outbox msg_id, awaiting PUBACK
        self._early: dict[int, ReasonCode] = {}  # on_publish that beat publish()'s return
        self._other_mids: set[int] = set()  # status/stats publishes (not in the outbox)
        self._rejected: set[str] = set()  # refused by the broker on this connection
        self._cursor = 0  # highest outbox seq handed to paho on this connection
        self._gen = 0  # connection generation
        self._connected = False
        self._last_error: str | None = None
        self._status: dict[str, Any] = {"armed": False, "reason": "starting"}
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_stats = 0.0
        self._status_due = False

        self._client = new_client(client_id or device_id, broker)
        self._client.max_inflight_messages_set(self.inflight_max)
        self._client.max_queued_messages_set(0)
        self._client.reconnect_delay_set(max(1, reconnect_min_s), max(1, reconnect_max_s))
        self._client.enable_logger(logging.getLogger(f"{__name__}.paho"))
        self._client.on_pre_connect = self._on_pre_connect
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._client.on_message = self._on_message
        self._connect_props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        self._connect_props.SessionExpiryInterval = session_expiry_s
        self._set_will()

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
        """Messages in the outbox not yet acknowledged by the broker."""
        return self.outbox.count_pending()

    @property
    def inflight_count(self) -> int:
        with self._lock:
            return len(self._inflight)

    def start(self) -> None:
        """Connect in the background (paho's loop thread) and start the drain loop."""
        if self._thread is not None:
            return
        self._client.connect_async(
            self.broker.host,
            self.broker.port,
            keepalive=self.broker.keepalive,
            clean_start=False,
            properties=self._connect_props,
        )
        self._client.loop_start()
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
        """Put a message for ``lfr/<id>/<kind>`` in the outbox and wake the drain loop.

        Raises :class:`~edge.delivery.outbox.OutboxFull` (the caller audits it). Returns
        False if ``msg_id`` was already queued.
        """
        added = self.outbox.put(msg_id, self.topic(kind), payload, retain)
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

        The status is remembered and republished on every reconnect; the last
        will carries the ``armed`` value current at (re)connection. Returns
        whether the publisher is connected now (else it goes out on connect).
        The drain loop sends it, never a paho callback, so a status queued by
        paho before a disconnect and resent after the reconnect can never land
        after, and override, the current one.
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
        info = self._publish_other(self.topic("stats"), _json(body), qos=0, retain=False)
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def stop(self, flush_timeout: float = 5.0) -> bool:
        """Flush (bounded), publish the offline status, disconnect, stop the threads.

        Returns True if nothing was left pending in the outbox. Undelivered
        messages stay in the outbox for the next start.
        """
        deadline = time.monotonic() + max(0.0, flush_timeout)
        self._wake.set()
        while self._thread is not None and time.monotonic() < deadline:
            pending = self.outbox.count_pending()
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
        if self.connected:
            with self._lock:
                self._status = {**self._status, "reason": "stopped"}
            info = self._publish_other(
                self.topic("status"), self._status_payload("offline"), qos=1, retain=True
            )
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
        self._client.disconnect()
        self._client.loop_stop()
        with self._lock:
            self._connected = False
        return self.outbox.count_pending() == 0

    # -- drain loop -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            thread = self._client._thread
            if thread is not None and thread.is_alive():
                self.last_checkin = time.monotonic()
            else:
                self._error("the MQTT network thread is not running")
            try:
                self._maybe_status()
                self._drain_once()
                self._maybe_stats()
            except Exception as exc:
                log.exception("publisher drain failed")
                self._error(f"drain failed: {exc}")
            self._wake.wait(self.drain_interval_s)
            self._wake.clear()

    def _drain_once(self) -> None:
        with self._lock:
            if not self._connected:
                return
            gen = self._gen
            cursor = self._cursor
            room = self.inflight_max - len(self._inflight)
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
            first = self.outbox.mark_sent(item.msg_id, time.time())
            if first is None:  # acked or purged meanwhile
                cursor = max(cursor, item.seq)
                continue
            payload = stamp_published_at(item.payload, first)
            info = self._client.publish(item.topic, payload, qos=1, retain=item.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                self._error(f"paho refused to queue {item.msg_id}: {mqtt.error_string(info.rc)}")
                break
            with self._lock:
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
        return _json(body)

    def _send_status(self, state: str) -> bool:
        info = self._publish_other(
            self.topic("status"), self._status_payload(state), qos=1, retain=True
        )
        return info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _set_will(self) -> None:
        self._client.will_set(
            self.topic("status"), self._status_payload("offline", will=True), qos=1, retain=True
        )

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

    # -- paho callbacks (network thread) -----------------------------------------------------

    def _on_pre_connect(self, client: mqtt.Client, _userdata: Any) -> None:
        self._set_will()  # the will carries the latest armed state

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
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
        log.info(
            "connected to %s:%s (session present: %s)",
            self.broker.host, self.broker.port, flags.session_present,
        )  # fmt: skip
        with self._lock:
            self._status_due = True  # sent by the drain loop, after paho's resends
        try:
            client.subscribe([(self.topic(kind), 1) for kind in IN_KINDS])
        except Exception as exc:  # never let it escape into paho's thread
            log.exception("on_connect failed")
            self._error(f"on_connect failed: {exc}")
        self._wake.set()

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        self._error(f"cannot connect to the broker at {self.broker.host}:{self.broker.port}")

    def _on_disconnect(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
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
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties,
    ) -> None:
        # Called with paho's message lock held: only touch our own state here. Never
        # raise: an exception in a paho callback would stop its network thread.
        try:
            self._on_publish_inner(mid, reason_code)
        except Exception:
            log.exception("on_publish failed")

    def _on_publish_inner(self, mid: int, reason_code: ReasonCode) -> None:
        with self._lock:
            msg_id = self._inflight.pop(mid, None)
            if msg_id is None:
                if mid in self._other_mids:
                    self._other_mids.discard(mid)
                else:
                    self._early[mid] = reason_code
                return
        self._settle(msg_id, reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.topic("adjudications"):
                callback = self.on_adjudication
                body: dict[str, Any] = dict(parse_adjudication(bytes(msg.payload)))
            elif msg.topic == self.topic("commands"):
                raw = bytes(msg.payload)
                if len(raw) > MAX_COMMAND_BYTES:
                    raise AlertFormatError(f"command larger than {MAX_COMMAND_BYTES} bytes")
                command = json.loads(raw)
                if not isinstance(command, dict):
                    raise AlertFormatError("command is not a JSON object")
                if self.on_command is not None:
                    self._call(self.on_command, command, "commands")
                return
            else:
                log.warning("ignoring a message on unexpected topic %s", msg.topic)
                return
        except (AlertFormatError, ValueError) as exc:
            log.warning("ignoring a bad message on %s: %s", msg.topic, exc)
            return
        if callback is not None:
            self._call(callback, body, "adjudications")

    @staticmethod
    def _call(callback: Callable[[Any], None], arg: Any, what: str) -> None:
        try:
            callback(arg)
        except Exception:
            log.exception("the %s callback failed", what)
