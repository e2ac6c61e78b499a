"""The publisher's outbox drain: pending rows and messages held in RAM handed to paho.

Split from :mod:`edge.delivery.publish`; the drain loop
(:meth:`~edge.delivery.publish.Publisher._run`) calls these each turn once the client
has been checked. Owns the handing over: at most ``inflight_max`` unacknowledged
publishes (outbox and held together); outbox rows in seq order after the connection's
cursor, skipping those in flight or refused on this connection, each stamped with its
first-publish time in the outbox (so a redelivery is byte-identical) and signed if an
alert (:func:`~edge.delivery.alert_sign.outgoing`); messages held in RAM moved into the
outbox as soon as it takes them, else published directly; a tampered row taken out of
the queue. What a PUBACK then settles is :mod:`~edge.delivery.publish_state`'s.
"""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge.delivery.outbox import OutboxError, OutboxTampered
from edge.delivery.publish_state import LOGGER, PublisherState

log = logging.getLogger(LOGGER)


class OutboxDrain(PublisherState):
    """Hands the outbox's pending rows and the held messages to paho, within the window."""

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
