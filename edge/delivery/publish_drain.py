"""The publisher's outbox drain: pending rows and messages held in RAM handed to paho.

A part of the :class:`~edge.delivery.publish.Publisher`, working on its shared
:class:`~edge.delivery.publish_state.PublisherState`; the drain loop
(:meth:`~edge.delivery.publish.Publisher._run`) calls it each turn once the client has
been checked. Owns the handing over: at most ``inflight_max`` unacknowledged publishes
(outbox and held together); outbox rows in seq order after the connection's cursor,
skipping those in flight or refused on this connection, each stamped with its
first-publish time in the outbox (so a redelivery is byte-identical) and signed if an
alert (:func:`~edge.delivery.alert_sign.outgoing`); messages held in RAM moved into the
outbox as soon as it takes them, else published directly; a tampered row taken out of
the queue. Each publish paho took is recorded by
:meth:`~edge.delivery.publish_state.PublisherState.track` (in flight, or settled at once
if its PUBACK came first); what a PUBACK then settles is the state's.
"""

from __future__ import annotations

import logging
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from edge.delivery.outbox import OutboxError, OutboxItem, OutboxTampered
from edge.delivery.publish_state import LOGGER, PublisherState

log = logging.getLogger(LOGGER)


class OutboxDrainer:
    """Hands the outbox's pending rows and the held messages to paho, within the window."""

    def __init__(self, state: PublisherState) -> None:
        self.s = state

    def drain_held(self) -> None:
        """Move held messages into the outbox when it takes them; else publish directly."""
        s = self.s
        items = s.held.items()
        if not items:
            if s.persist_error is not None and self._outbox_writable():
                s.persist_error = None
            return
        with s.lock:
            busy = set(s.held_inflight.values())
        for item in items:
            if item.msg_id in busy:
                continue
            try:
                s.outbox.put(item.msg_id, item.topic, item.payload, item.retain,
                             reserved=item.topic == s.topic("audit"))  # fmt: skip
            except OutboxError as exc:
                s.persist_error = str(exc)
                break
            s.held.remove(item.msg_id)
            log.info("held message %s stored in the outbox", item.msg_id)
        else:
            s.persist_error = None
        with s.lock:
            if not s.connected:
                return
            gen = s.gen
            room = s.room()
            busy = set(s.held_inflight.values())
        for item in s.held.items():
            if room <= 0 or item.msg_id in busy:
                continue
            if item.first_published is None:
                item.first_published = time.time()
            payload = s.outgoing(item.topic, item.payload, item.first_published)
            info = s.client.publish(item.topic, payload, qos=1, retain=item.retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            if not s.track(info.mid, item.msg_id, gen, held=True):
                return
            room -= 1

    def _outbox_writable(self) -> bool:
        s = self.s
        probe = f"probe-{time.monotonic_ns()}"
        try:
            s.outbox.put(probe, s.topic("stats"), b"", False)
            s.outbox.ack(probe)
        except OutboxError:
            return False
        return True

    def drain_once(self) -> None:
        """Hand the pending outbox rows after the connection's cursor to paho."""
        s = self.s
        with s.lock:
            if not s.connected:
                return
            gen = s.gen
            cursor = s.cursor
            room = s.room()
            busy = set(s.inflight.values()) | s.rejected | set(s.acks)
        if room <= 0:
            return
        try:
            items = s.outbox.pending(limit=room + len(busy), after_seq=cursor)
        except OutboxTampered as exc:
            s.outbox.mark_bad(exc.msg_id)
            s.error(str(exc))
            log.error("%s; taken out of the queue", exc)
            s.wake.set()
            return
        todo: list[OutboxItem] = []
        for item in items:
            if len(todo) >= room:
                break
            if item.msg_id in busy:
                cursor = max(cursor, item.seq)
                continue
            todo.append(item)
        # One transaction stamps the whole turn's rows (not one commit each, issue 20).
        now = time.time()
        try:
            firsts = s.outbox.mark_sent_many([item.msg_id for item in todo], now)
        except OutboxError as exc:  # a full disk: publish anyway, stamps not stored
            s.persist_error = str(exc)
            firsts = [item.published_at or now for item in todo]
        for item, first in zip(todo, firsts, strict=True):
            if room <= 0 or s.stopping.is_set():
                break
            if first is None:  # acked or purged meanwhile
                cursor = max(cursor, item.seq)
                continue
            payload = s.outgoing(item.topic, item.payload, first)
            info = s.client.publish(item.topic, payload, qos=1, retain=item.retain)
            if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
                s.error(f"paho refused to queue {item.msg_id}: {mqtt.error_string(info.rc)}")
                break
            if not s.track(info.mid, item.msg_id, gen, held=False):
                return
            cursor = max(cursor, item.seq)
            room -= 1
        with s.lock:
            if s.gen == gen:
                s.cursor = max(s.cursor, cursor)
