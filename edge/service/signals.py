"""Signals become typed requests that the daemon's main loop waits for.

SIGTERM and SIGINT ask it to stop (flush, exit 0); SIGHUP asks it to reload the
watchlist (``systemctl reload edge``). The handlers only queue a request, so
nothing non-reentrant runs inside a signal handler; the main thread acts on it.

    with SignalRequests() as requests:
        while True:
            request = requests.wait(timeout=1.0)
            if request is Request.STOP:
                break
            if request is Request.RELOAD:
                reload_watchlist()
"""

from __future__ import annotations

import enum
import queue
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

__all__ = ["Request", "SignalRequests"]


class Request(enum.Enum):
    STOP = "stop"
    RELOAD = "reload"


_SIGNALS: dict[signal.Signals, Request] = {
    signal.SIGTERM: Request.STOP,
    signal.SIGINT: Request.STOP,
    signal.SIGHUP: Request.RELOAD,
}


class SignalRequests:
    """Installs the handlers (main thread only) and hands out requests in arrival order.

    :attr:`stop_requested` is also set on the first STOP, for threads that only need
    to know whether to wind down.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Request] = queue.SimpleQueue()
        self._previous: dict[signal.Signals, Any] = {}
        self.stop_requested = threading.Event()

    def install(self) -> None:
        for signum in _SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def __enter__(self) -> SignalRequests:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        request = _SIGNALS[signal.Signals(signum)]
        if request is Request.STOP:
            self.stop_requested.set()
        self._queue.put(request)  # SimpleQueue.put is safe in a signal handler

    def put(self, request: Request) -> None:
        """Queue a request from code (e.g. a signed end-deployment command)."""
        if request is Request.STOP:
            self.stop_requested.set()
        self._queue.put(request)

    def wait(self, timeout: float | None = None) -> Request | None:
        """The next request, or None after ``timeout`` seconds (None: wait for ever)."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def poll(self) -> Request | None:
        """The next request if one is queued, else None at once."""
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None
