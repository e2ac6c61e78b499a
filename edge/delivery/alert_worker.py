"""The alert worker: alerts leave the inference loop, in order, into the durable outbox.

::

    worker = AlertWorker(publisher, maxsize=64)
    worker.start()
    worker.submit(outcome.alerts)        # inference loop: returns at once (waits if full)
    for failure in worker.take_failures():
        audit(failure)                   # the main loop audits what could not be stored
    worker.stop()                        # stores everything submitted, then ends

Why (issue 20): an alert's own work (its JSON, the outbox's encryption and a commit
with an fsync, ``synchronous=FULL``) took 1-11 ms per alert on the inference thread, more
when the publisher's acknowledgement held the outbox meanwhile; at tens of alerts a
second every frame behind it waited. The worker takes every alert queued when it wakes
and stores them with one transaction (:meth:`~edge.delivery.publish.Publisher.enqueue_many`),
so a burst costs one commit, off the inference thread.

Guarantees:

- **Nothing is dropped.** The queue is bounded (``maxsize`` alerts): when it is full,
  :meth:`submit` waits for room, so the inference loop slows down (the capture thread
  keeps only the newest frame meanwhile, so the camera is never blocked) and no alert is
  lost. ``submit`` after :meth:`stop` raises :class:`AlertWorkerStopped`.
- **Order.** One thread, first in first out; a batch keeps its order in the outbox
  (``seq``), so the control room receives alerts in the order they were raised.
- **Durability.** An alert is durable when the outbox commit returns, as before; between
  ``submit`` and that commit (one batch, a few milliseconds) it is in RAM only, as the
  frame it came from was while it was processed. :meth:`stop` (SIGTERM, the end of a
  clip) stores everything submitted before it returns. If the outbox refuses a batch (a
  full disk, its limits) the batch is stored one by one through
  :meth:`~edge.delivery.publish.Publisher.enqueue`, which holds in RAM what the outbox
  refuses (and delivers it directly); only an alert neither can take is reported as a
  failure, never silently lost.
- **Failures are reported, not raised** (the audit log belongs to the main loop):
  :meth:`take_failures` returns ``(alert_id, kind, message)`` with kind ``"outbox_full"``
  or ``"queue"``.

Nothing here logs a face or a vector; the crop travels inside the alert record only.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from edge.delivery.alert import encode_alert
from edge.delivery.outbox import OutboxFull
from edge.types import AlertRecord

log = logging.getLogger(__name__)

DEFAULT_MAXSIZE = 64
DEFAULT_BATCH = 32


class AlertWorkerStopped(RuntimeError):  # noqa: N818 (a state, not a fault)
    """An alert was submitted after :meth:`AlertWorker.stop`."""


class AlertSink(Protocol):
    """What the worker stores alerts through (the :class:`~edge.delivery.publish.Publisher`)."""

    def enqueue_many(self, items: list[tuple[str, str, bytes]]) -> list[bool]: ...

    def enqueue(self, msg_id: str, kind: str, payload: bytes, retain: bool = False) -> bool: ...


Failure = tuple[str, str, str]
"""``(alert_id, kind, message)``: kind ``"outbox_full"`` or ``"queue"``."""

StoredCallback = Callable[[list[AlertRecord], float, float], None]
"""Told ``(batch, seconds encoding, seconds storing)`` after each stored batch (timings)."""


class AlertWorker:
    """Stores submitted alerts in the outbox on its own thread (see the module doc)."""

    def __init__(
        self,
        sink: AlertSink,
        *,
        maxsize: int = DEFAULT_MAXSIZE,
        batch: int = DEFAULT_BATCH,
        on_stored: StoredCallback | None = None,
        name: str = "alerts",
    ) -> None:
        if maxsize < 1 or batch < 1:
            raise ValueError("maxsize and batch must be at least 1")
        self.sink = sink
        self.maxsize = maxsize
        self.batch = batch
        self.on_stored = on_stored
        self._queue: collections.deque[AlertRecord] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._busy = 0  # alerts taken from the queue and not yet stored
        self._failures: list[Failure] = []
        self.stored = 0
        self.waits = 0  # submits that had to wait for room (the inference loop waited)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- the inference loop's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, alerts: Iterable[AlertRecord]) -> None:
        """Queue ``alerts`` in order; waits while the queue is full. Never drops one."""
        for alert in alerts:
            with self._cond:
                if self._stopping:
                    raise AlertWorkerStopped(f"alert {alert.alert_id} submitted after stop")
                if len(self._queue) >= self.maxsize:
                    self.waits += 1
                    self._cond.wait_for(
                        lambda: len(self._queue) < self.maxsize or self._stopping
                    )
                    if self._stopping:
                        raise AlertWorkerStopped(f"alert {alert.alert_id} submitted after stop")
                self._queue.append(alert)
                self._cond.notify_all()

    def take_failures(self) -> list[Failure]:
        """The alerts that could not be stored since the last call (for the audit log)."""
        with self._cond:
            failures, self._failures = self._failures, []
        return failures

    @property
    def pending(self) -> int:
        """Alerts submitted and not yet stored (queued or being stored)."""
        with self._cond:
            return len(self._queue) + self._busy

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted alert is stored; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                if not self._thread.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 0.5)
        return True

    def stop(self, timeout: float | None = None) -> bool:
        """Refuse new alerts, store every submitted one, end the thread; True when done.

        Never started: stores what was submitted on the caller's thread.
        """
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.ident is None:
            self._drain_all()
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the worker thread -------------------------------------------------------------------

    def _take(self) -> list[AlertRecord]:
        with self._cond:
            self._cond.wait_for(lambda: bool(self._queue) or self._stopping)
            n = min(len(self._queue), self.batch)
            batch = [self._queue.popleft() for _ in range(n)]
            self._busy = n
            self._cond.notify_all()  # room for a waiting submit
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:  # stopping and nothing left
                return
            self._store(batch)

    def _drain_all(self) -> None:
        while True:
            with self._cond:
                n = min(len(self._queue), self.batch)
                batch = [self._queue.popleft() for _ in range(n)]
                self._busy = n
            if not batch:
                return
            self._store(batch)

    def _store(self, batch: list[AlertRecord]) -> None:
        t0 = time.perf_counter()
        encoded: list[tuple[AlertRecord, bytes]] = []
        failures: list[Failure] = []
        for alert in batch:
            try:
                encoded.append((alert, encode_alert(alert)))
            except Exception as exc:  # a record the schema refuses: reported, never fatal
                failures.append((alert.alert_id, "queue", f"{type(exc).__name__}: {exc}"[:200]))
        t1 = time.perf_counter()
        try:
            self.sink.enqueue_many([(a.alert_id, "alerts", payload) for a, payload in encoded])
        except Exception as exc:  # nothing of the batch was stored: one by one, as before
            log.warning("outbox refused a batch of %d alerts (%s); storing one by one",
                        len(encoded), exc)  # fmt: skip
            for alert, payload in encoded:
                try:
                    self.sink.enqueue(alert.alert_id, "alerts", payload)
                except OutboxFull as one:
                    log.error("alert %s refused: %s", alert.alert_id, one)
                    failures.append((alert.alert_id, "outbox_full", str(one)[:200]))
                except Exception as one:
                    log.exception("alert %s could not be queued", alert.alert_id)
                    failures.append((alert.alert_id, "queue",
                                     f"{type(one).__name__}: {one}"[:200]))  # fmt: skip
        t2 = time.perf_counter()
        for alert, _ in encoded:
            log.info("alert %s queued (track %s)", alert.alert_id, alert.track_id)
        if self.on_stored is not None:
            try:
                self.on_stored(batch, t1 - t0, t2 - t1)
            except Exception:
                log.exception("alert timing callback failed")
        with self._cond:
            self.stored += len(batch) - len(failures)
            self._failures += failures
            self._busy = 0
            self._cond.notify_all()
