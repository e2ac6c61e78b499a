"""Messages the outbox could not store, held in RAM until it can (a full or failing disk).

When :meth:`edge.delivery.outbox.Outbox.put` fails (``No space left on device``, an I/O
error, or the outbox's own limits), the publisher keeps the message here instead of
losing it: each drain turn first retries the outbox (the message becomes durable again
as soon as space returns), and while the disk still refuses, publishes held messages
directly when connected (QoS 1; a message leaves this queue only on a successful
PUBACK; redelivery is byte-identical, so the control room deduplicates by ``alert_id``).

Bounded by count and bytes: :meth:`HeldQueue.hold` raises :class:`HeldFull` when full,
and the caller counts and audits the refusal. What is held is lost if the process dies
before it is stored or delivered; that is the price of a disk that refuses writes, and
why the condition is on ``status``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from edge.delivery.outbox import OutboxFull

MAX_HELD_ITEMS: Final = 2000
MAX_HELD_BYTES: Final = 64 * 1024 * 1024


class HeldFull(OutboxFull):
    """Neither the outbox nor the in-memory queue can take the message."""


@dataclass(slots=True)
class HeldItem:
    msg_id: str
    topic: str
    payload: bytes
    retain: bool
    first_published: float | None = None


class HeldQueue:
    """A bounded FIFO of :class:`HeldItem` by ``msg_id``; thread-safe."""

    def __init__(self, max_items: int = MAX_HELD_ITEMS, max_bytes: int = MAX_HELD_BYTES) -> None:
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[str, HeldItem] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.refused = 0  # messages neither stored nor held, this process

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def hold(self, msg_id: str, topic: str, payload: bytes, retain: bool) -> bool:
        """Keep a message; False if already held; :class:`HeldFull` if full."""
        with self._lock:
            if msg_id in self._items:
                return False
            if len(self._items) + 1 > self.max_items or \
                    self._bytes + len(payload) > self.max_bytes:
                self.refused += 1
                raise HeldFull(
                    f"in-memory queue full ({len(self._items)} messages): message {msg_id} "
                    "neither stored nor held"
                )
            self._items[msg_id] = HeldItem(msg_id, topic, bytes(payload), retain)
            self._bytes += len(payload)
            return True

    def items(self) -> list[HeldItem]:
        with self._lock:
            return list(self._items.values())

    def remove(self, msg_id: str) -> bool:
        with self._lock:
            item = self._items.pop(msg_id, None)
            if item is None:
                return False
            self._bytes -= len(item.payload)
            return True

    def __contains__(self, msg_id: object) -> bool:
        with self._lock:
            return msg_id in self._items
