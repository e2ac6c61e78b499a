"""The event hub: the ingest thread announces changes, each open page's SSE stream hears them.

:meth:`Hub.publish` may be called from any thread; each subscriber is an
:class:`asyncio.Queue` on the web server's event loop, fed with
``loop.call_soon_threadsafe``. A subscriber that falls :data:`MAX_QUEUE` events behind
loses the oldest and is sent ``resync`` (the page then fetches its rows again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import Any, Final

MAX_QUEUE: Final = 500


class Hub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = {}
        self._next = 0

    def subscribe(self) -> tuple[int, asyncio.Queue[str]]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[str] = asyncio.Queue(MAX_QUEUE)
        with self._lock:
            self._next += 1
            self._subs[self._next] = (loop, q)
            return self._next, q

    def unsubscribe(self, sub_id: int) -> None:
        with self._lock:
            self._subs.pop(sub_id, None)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    def publish(self, kind: str, **data: Any) -> None:
        """Send ``{"type": kind, ...data}`` to every subscriber (JSON; never raises)."""
        message = json.dumps({"type": kind, **data}, default=str)
        with self._lock:
            subs = list(self._subs.values())
        for loop, q in subs:
            with contextlib.suppress(RuntimeError):  # loop closed
                loop.call_soon_threadsafe(_put, q, message)


def _put(q: asyncio.Queue[str], message: str) -> None:
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
        with contextlib.suppress(asyncio.QueueFull):
            q.put_nowait(json.dumps({"type": "resync"}))
        return
    q.put_nowait(message)
