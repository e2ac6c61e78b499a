"""What the device accepts from the control room before anything looks inside a message.

Messages arrive on paho's network thread (``lfr/<id>/commands`` and
``lfr/<id>/adjudications``). :class:`InboundGate` decides, in constant time and without
parsing, whether a message is let through to the daemon's bounded inbox:

- a payload larger than the kind's limit (:data:`MAX_BYTES`) is refused unread;
- a retained message is refused (the control room never retains commands or
  adjudications; a retained one would be replayed to every new session);
- adjudications are rate-limited by a token bucket (:data:`ADJUDICATION_RATE`), so
  a flood costs neither fsynced audit lines nor memory;
- the inbox is bounded (the caller's queue); a full inbox is a refusal too.

Every refusal is counted per reason (:attr:`InboundGate.refused`) and reported to the
caller's ``on_refused`` callback (the daemon audits the first of each reason and then
counts), and the message is still acknowledged (paho PUBACKs after the callback
returns), so a refused message is never redelivered. The payload is passed on as
bytes: signature and shape are checked by the receiver (:mod:`edge.watchlist`), with
:func:`edge.boundedjson.loads`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

MAX_BYTES: Final = {"commands": 64 * 1024, "adjudications": 4 * 1024}
"""Largest payload let through per inbound kind (a signed command or adjudication is
well under these)."""
ADJUDICATION_RATE: Final = (2.0, 20.0)
"""Adjudications: 2 per second sustained, bursts of 20 (officers decide by hand)."""
COMMAND_RATE: Final = (1.0, 10.0)
REFUSAL_LOG_S: Final = 10.0
"""A flood of refusals is one log line per kind and reason per this many seconds."""

log = logging.getLogger("edge.delivery.publish")


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message let through for the daemon's main loop."""

    kind: str  # "commands" | "adjudications"
    payload: bytes


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved; thread-safe."""

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst, self._clock = rate, burst, clock
        self._tokens = burst
        self._at = clock()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False


class InboundGate:
    """Size, retain and rate checks for inbound messages, then ``deliver`` (bounded)."""

    def __init__(
        self,
        deliver: Callable[[Inbound], bool],
        *,
        on_refused: Callable[[str, str, int], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``deliver(msg)`` returns False when the inbox is full; ``on_refused(kind,
        reason, size)`` is told about each refusal (never the payload)."""
        self._deliver = deliver
        self._on_refused = on_refused
        self._buckets = {
            "adjudications": TokenBucket(*ADJUDICATION_RATE, clock=clock),
            "commands": TokenBucket(*COMMAND_RATE, clock=clock),
        }
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()
        self.accepted: Counter[str] = Counter()
        self._clock = clock
        self._logged: dict[str, float] = {}

    def offer(self, kind: str, payload: bytes, retained: bool) -> str | None:
        """Let a message through or refuse it; returns the refusal reason or None."""
        reason = self._check(kind, payload, retained)
        if reason is None and not self._deliver(Inbound(kind, bytes(payload))):
            reason = "inbox_full"
        with self._lock:
            if reason is None:
                self.accepted[kind] += 1
            else:
                self.refused[f"{kind}:{reason}"] += 1
        if reason is not None:
            self._log_refusal(kind, reason, len(payload))
            if self._on_refused is not None:
                self._on_refused(kind, reason, len(payload))
        return reason

    def _log_refusal(self, kind: str, reason: str, size: int) -> None:
        key, now = f"{kind}:{reason}", self._clock()
        with self._lock:
            if now - self._logged.get(key, -REFUSAL_LOG_S) < REFUSAL_LOG_S:
                return
            self._logged[key] = now
        log.warning("refused a message on %s: %s (%d bytes; counted, logged at most every "
                    "%g s)", kind, reason, size, REFUSAL_LOG_S)  # fmt: skip

    def _check(self, kind: str, payload: bytes, retained: bool) -> str | None:
        limit = MAX_BYTES.get(kind)
        if limit is None:
            return "unknown_topic"
        if len(payload) > limit:
            return "too_large"
        if retained:
            return "retained"
        if not self._buckets[kind].take():
            return "rate_limited"
        return None
