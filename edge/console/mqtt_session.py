"""A lost MQTT session is an alarm, never a silent loss (safeguard 17, issue 21).

The console's MQTT session (a fixed client id, clean start off, a session expiry) is where
the broker keeps what it acknowledged to the vans until the console takes it: alerts and
audit entries the vans then delete from their outboxes. If the broker no longer has the
session when the console (re)connects (``session present`` false in the CONNACK), whatever
was queued in it is gone: a broker restarted without persistence, the session expired
while the console was away longer than its expiry, another client connected with the
console's identity and a clean start.

:class:`SessionWatch` knows when a session is expected: after this process's first
connection, and on that one if the database says this client id had a session before
(``mqtt_sessions``, refreshed every :data:`ALIVE_EVERY_S` while connected and at each
disconnect, so an instance that restarts expects its session too). A connection without
the expected session raises an alarm (``alarms``: a banner on every page until a
supervisor clears it, ``console_mqtt_session_lost`` in ``/metrics``), writes
``mqtt_session_lost`` on the console's trail and counts
``console_mqtt_sessions_lost_total``. The ingest worker calls it, in order with the
messages (:mod:`edge.console.ingest`). The runbook: ``docs/console.md``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from edge.console.events import Hub
from edge.console.metrics import Metrics
from edge.console.store import Store

log = logging.getLogger(__name__)

ALIVE_EVERY_S: Final = 30.0
ALARM_KIND: Final = "mqtt_session_lost"


class SessionWatch:
    def __init__(self, store: Store, metrics: Metrics, hub: Hub, client_id: str,
                 expiry_s: int, clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.store = store
        self.metrics = metrics
        self.hub = hub
        self.client_id = client_id
        self.expiry_s = expiry_s
        self.clock = clock
        self._connected_before = False
        self._alive_at = float("-inf")

    def connected(self, session_present: bool, expiry_s: int | None = None) -> bool:
        """A connection was accepted; ``expiry_s`` as the broker granted it (MQTT 5 may
        lower it in the CONNACK). Returns True if an expected session was missing."""
        now = self.clock()
        if expiry_s is not None:
            self.expiry_s = expiry_s
        known = self.store.fleet.mqtt_session(self.client_id)
        expected = self._connected_before or (known is not None and known["expiry_s"] > 0)
        self._connected_before = True
        lost = expected and not session_present
        if lost:
            self._raise(now, known)
        self._alive(now)
        return lost

    def _raise(self, now: float, known: dict[str, object] | None) -> None:
        away = None if known is None else max(0.0, now - float(known["alive_at"]))  # type: ignore[arg-type]
        expired = known is not None and away is not None and away > float(known["expiry_s"])  # type: ignore[arg-type]
        why = ("its session expired while the console was away" if expired
               else "the broker no longer held its session")  # fmt: skip
        detail = (f"MQTT session lost ({self.client_id}): {why}. Messages the broker had "
                  "acknowledged to the vans and queued for this console may be gone; see "
                  "the runbook (docs/console.md, A lost MQTT session).")  # fmt: skip
        log.error("%s", detail)
        self.metrics.inc("console_mqtt_sessions_lost_total")
        self.store.fleet.raise_alarm(ALARM_KIND, detail, now)
        self.store.log("console", ALARM_KIND, client_id=self.client_id,
                       reason="expired" if expired else "lost",
                       away_s=None if away is None else round(away))  # fmt: skip
        self.hub.publish("alarm", alarm=ALARM_KIND)

    def alive(self) -> None:
        """Connected: note it (at most every :data:`ALIVE_EVERY_S`)."""
        now = self.clock()
        if now - self._alive_at >= ALIVE_EVERY_S:
            self._alive(now)

    def disconnected(self) -> None:
        """The session expiry runs from now."""
        self._alive(self.clock())

    def _alive(self, now: float) -> None:
        self.store.fleet.mqtt_session_alive(self.client_id, now, self.expiry_s)
        self._alive_at = now
