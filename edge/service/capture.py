"""The capture thread: a frame source feeding a small bounded queue.

::

    capture = CaptureThread(source, maxsize=4, on_checkin=health.checkin_camera)
    capture.start()
    while True:
        item = capture.get(timeout=0.5)
        if item is None:           # nothing yet: check in, look at capture.status
            continue
        if item is END_OF_STREAM:  # file ended, capture stopped, or gave up
            break
        process(item)              # a Frame
    capture.stop()

- **A live source hands over the newest frame** (``mode="latest"``, the default for
  cameras, streams and files paced at their frame rate, :attr:`FrameSource.realtime`):
  a one-slot mailbox; a frame that inference has not taken when the next one arrives
  is dropped and counted (``status.drops``). A camera is never blocked and inference
  never works through a backlog: a queue of two 40 ms frames adds 80 ms to every alert
  (issue 20), the newest frame adds at most one frame period.
- **A file read flat out keeps every frame** (``mode="every"``: ``edge bench``, ``edge
  run`` on a clip with ``pace = "flat"``): a bounded queue of ``maxsize`` frames whose
  ``put`` waits for room (or for ``stop()``), so a clip is processed whole, in order.
- A lost source (``SourceError`` or any other exception from open/read) is
  closed and reopened with exponential backoff (``backoff_initial`` doubling up
  to ``backoff_max``); ``status.state`` is ``"reopening"`` meanwhile, with the
  attempt count and the last error. A source never crash-loops the process.
  ``max_attempts`` (default unlimited) ends the stream after that many
  consecutive failures; a :class:`~edge.service.sources.base.SourceFatalError` (a broken
  install, a camera another process keeps) ends it at once, state ``"failed"``.
- ``on_checkin()`` is called on every iteration and at least every
  ``checkin_interval_s`` while backing off, so a health monitor can tell a
  stuck thread from a camera that is being retried.
- The end of a non-looping file, ``stop()``, or giving up puts the sentinel
  :data:`END_OF_STREAM` after the last frame; it is never dropped.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

from edge.service.sources.base import FrameSource, SourceError
from edge.types import Frame

log = logging.getLogger(__name__)

CaptureState = Literal["idle", "opening", "ok", "reopening", "ended", "failed", "stopped"]
QueueMode = Literal["latest", "every"]


class EndOfStream:
    """Type of the :data:`END_OF_STREAM` sentinel."""

    _instance: EndOfStream | None = None

    def __new__(cls) -> EndOfStream:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END_OF_STREAM"


END_OF_STREAM: Final = EndOfStream()


@dataclass(frozen=True, slots=True)
class CaptureStatus:
    """A snapshot of the capture thread (safe to log or publish: counters only)."""

    state: CaptureState
    source: str
    frames: int = 0  # frames read from the source
    drops: int = 0  # frames dropped: a newer one arrived before inference took them
    reopens: int = 0  # successful reopens after a loss
    attempts: int = 0  # consecutive failed open/read attempts (0 when ok)
    last_error: str = ""
    next_retry_s: float = 0.0  # backoff delay before the next attempt
    queued: int = 0


class FrameQueue:
    """A bounded, thread-safe queue of frames.

    ``put`` drops the oldest frame when full (counted in ``drops``); ``put_wait``
    waits for room instead. ``FrameQueue(1)`` with ``put`` is the latest-frame mailbox.
    """

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._items: collections.deque[Frame] = collections.deque()
        self._ended = False
        self._cond = threading.Condition()
        self.drops = 0

    def put(self, frame: Frame) -> bool:
        """Add ``frame``; returns False when an older frame was dropped to make room."""
        with self._cond:
            if self._ended:
                return True  # nothing is accepted after the end; not a drop
            dropped = len(self._items) >= self.maxsize
            if dropped:
                self._items.popleft()
                self.drops += 1
            self._items.append(frame)
            self._cond.notify_all()
            return not dropped

    def put_wait(
        self,
        frame: Frame,
        stop: threading.Event,
        poll_s: float = 0.1,
        on_wait: Callable[[], None] | None = None,
    ) -> bool:
        """Add ``frame`` once there is room; False (frame not queued) if ``stop`` is set
        first. Never drops a frame. ``on_wait`` is called every ``poll_s`` while waiting."""
        with self._cond:
            while len(self._items) >= self.maxsize and not self._ended:
                if stop.is_set():
                    return False
                self._cond.wait(poll_s)
                if on_wait is not None and len(self._items) >= self.maxsize:
                    on_wait()
            if self._ended:
                return True
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def end(self) -> None:
        """Mark the end: ``get`` returns the remaining frames, then END_OF_STREAM."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | EndOfStream | None:
        """The oldest queued frame, END_OF_STREAM after the end, None on timeout."""
        with self._cond:
            if not self._items and not self._ended:
                self._cond.wait_for(lambda: bool(self._items) or self._ended, timeout)
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()  # room for a waiting put_wait
                return item
            if self._ended:
                return END_OF_STREAM
            return None

    def clear(self) -> int:
        """Drop every queued frame (e.g. at disarm); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class CaptureThread:
    """Reads ``source`` on a daemon thread into a :class:`FrameQueue`.

    ``mode`` (default: ``"latest"`` if ``source.realtime`` else ``"every"``, see the
    module doc): ``"latest"`` keeps one frame, the newest; ``"every"`` keeps up to
    ``maxsize`` and makes the source wait for room. The thread owns the source: it
    opens it (if it is not open), reopens it after a loss and closes it on exit.
    ``on_status`` is called with a :class:`CaptureStatus` whenever the state changes
    (from the capture thread; keep it quick). ``stop_event`` may be shared with the
    rest of the daemon.
    """

    def __init__(
        self,
        source: FrameSource,
        *,
        maxsize: int = 4,
        mode: QueueMode | None = None,
        on_checkin: Callable[[], None] | None = None,
        on_status: Callable[[CaptureStatus], None] | None = None,
        stop_event: threading.Event | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_attempts: int | None = None,
        checkin_interval_s: float = 1.0,
        name: str = "capture",
    ) -> None:
        if backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("need 0 < backoff_initial <= backoff_max")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        self.source = source
        self.mode: QueueMode = mode or ("latest" if source.realtime else "every")
        self.queue = FrameQueue(1 if self.mode == "latest" else maxsize)
        self.stop_event = stop_event or threading.Event()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_attempts = max_attempts
        self.checkin_interval_s = checkin_interval_s
        self._on_checkin = on_checkin
        self._on_status = on_status
        self._lock = threading.Lock()
        self._status = CaptureStatus(state="idle", source=source.name)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    # -- public API --------------------------------------------------------

    @property
    def status(self) -> CaptureStatus:
        with self._lock:
            return dataclasses.replace(self._status, drops=self.queue.drops, queued=len(self.queue))

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def get(self, timeout: float | None = None) -> Frame | EndOfStream | None:
        """The next frame, END_OF_STREAM when the stream is over, None on timeout."""
        return self.queue.get(timeout)

    def stop(self, timeout: float | None = 10.0) -> bool:
        """Ask the thread to stop and wait for it; True when it has ended."""
        self.stop_event.set()
        if self._thread.ident is None:  # never started: end the stream here
            self.source.close()
            self._set(state="stopped")
            self.queue.end()
            return True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the thread --------------------------------------------------------

    def backoff_delay(self, attempts: int) -> float:
        """Seconds to wait before attempt ``attempts + 1`` (exponential, capped)."""
        exponent = min(max(attempts - 1, 0), 30)
        return float(min(self.backoff_initial * (2.0**exponent), self.backoff_max))

    def _set(self, **changes: object) -> None:
        with self._lock:
            before = self._status.state
            self._status = dataclasses.replace(self._status, **changes)  # type: ignore[arg-type]
            snapshot = self._status
            changed = snapshot.state != before or "attempts" in changes
        if changed and self._on_status is not None:
            try:
                self._on_status(
                    dataclasses.replace(snapshot, drops=self.queue.drops, queued=len(self.queue))
                )
            except Exception:
                log.exception("capture status callback failed")

    def _checkin(self) -> None:
        if self._on_checkin is not None:
            try:
                self._on_checkin()
            except Exception:
                log.exception("capture check-in callback failed")

    def _run(self) -> None:
        final: CaptureState = "stopped"
        try:
            final = self._loop()
        except BaseException:  # a bug in this module: report it, end the stream
            log.exception("capture thread crashed")
            final = "failed"
            raise
        finally:
            try:
                self.source.close()
            except Exception as exc:
                log.warning("closing %s failed: %s", self.source.name, exc)
            self._set(state=final)
            self.queue.end()

    def _loop(self) -> CaptureState:
        attempts = 0
        frames = 0
        ever_ok = False
        self._set(state="opening")
        while not self.stop_event.is_set():
            self._checkin()
            try:
                if not self.source.is_open:
                    self.source.open()
                frame = self.source.read()
            except Exception as exc:
                attempts += 1
                message = _describe(exc)
                delay = self.backoff_delay(attempts)
                give_up = getattr(exc, "fatal", False) or (
                    self.max_attempts is not None and attempts >= self.max_attempts
                )
                if isinstance(exc, SourceError):
                    log.warning("%s (attempt %d)", message, attempts)
                else:
                    log.warning("capture failed (attempt %d)", attempts, exc_info=True)
                try:
                    self.source.close()
                except Exception as close_exc:
                    log.warning("closing %s failed: %s", self.source.name, close_exc)
                if give_up:
                    log.error("%s: giving up after %d attempts", self.source.name, attempts)
                    self._set(attempts=attempts, last_error=message, next_retry_s=0.0)
                    return "failed"
                self._set(
                    state="reopening", attempts=attempts, last_error=message, next_retry_s=delay
                )
                self._sleep(delay)
                continue
            if frame is None:
                log.info("%s: end of stream after %d frames", self.source.name, frames)
                return "ended"
            frames += 1
            if attempts:
                log.info("%s: recovered after %d attempts", self.source.name, attempts)
                self._set(
                    state="ok",
                    attempts=0,
                    next_retry_s=0.0,
                    frames=frames,
                    reopens=self._status.reopens + (1 if ever_ok else 0),
                )
                attempts = 0
            elif self._status.state != "ok":
                self._set(state="ok", frames=frames)
            else:
                with self._lock:
                    self._status = dataclasses.replace(self._status, frames=frames)
            ever_ok = True
            if self.mode == "latest":
                self.queue.put(frame)  # the newest frame replaces one not yet taken
            elif not self.queue.put_wait(frame, self.stop_event, on_wait=self._checkin):
                break  # stopped while waiting for room
        return "stopped"

    def _sleep(self, delay: float) -> None:
        """Wait ``delay`` seconds or until stopped, checking in every interval."""
        deadline = time.monotonic() + delay
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.stop_event.wait(min(remaining, self.checkin_interval_s)):
                return
            self._checkin()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SourceError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
